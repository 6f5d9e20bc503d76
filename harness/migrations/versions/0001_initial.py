"""The schema as the store made it before it used Alembic: run, dut, dut_module, instrument, step,
measurement, event and store_meta (with ``schema_version`` 1).

Frozen, like every revision: do not edit it once released, and do not import ``harness.store``
here, whose tables move on with later revisions while a database at 0001 keeps these. The store
also uses :func:`schema` to recognise a database made by a build before migrations (same tables,
no ``alembic_version``) and stamp it at this revision instead of refusing it.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

from typing import Callable

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# what store_meta holds at this revision; builds before Alembic read it and refuse anything else,
# so a later revision they must not write to can lock them out by changing it
SCHEMA_VERSION = "1"


def _time() -> sa.DateTime:
    """UTC times: SQLite keeps them naive, PostgreSQL as timestamptz (the store converts)."""
    return sa.DateTime(timezone=True)


def _json() -> sa.types.TypeEngine:
    """JSON, as JSONB on PostgreSQL so reports can index into it."""
    return sa.JSON().with_variant(JSONB(), "postgresql")


def _run_fk(nullable: bool = False) -> sa.Column:
    return sa.Column("run_id", sa.Integer, sa.ForeignKey("run.id", ondelete="CASCADE"),
                     nullable=nullable)


def _store_meta() -> list[sa.SchemaItem]:
    return [
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    ]


def _run() -> list[sa.SchemaItem]:
    return [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("uuid", sa.String(36), nullable=False, unique=True),
        sa.Column("station", sa.Text, nullable=False),
        sa.Column("operator", sa.Text, nullable=False),
        sa.Column("plan_name", sa.Text, nullable=False),
        sa.Column("plan_version", sa.Text),
        sa.Column("plan_hash", sa.Text),
        sa.Column("harness_version", sa.Text),
        sa.Column("emulated", sa.Boolean, nullable=False),
        sa.Column("started_at", _time(), nullable=False),
        sa.Column("ended_at", _time()),
        sa.Column("verdict", sa.String(16)),
        sa.Column("extra", _json()),
        sa.Index("ix_run_started_at", "started_at"),
        sa.Index("ix_run_station", "station"),
        sa.Index("ix_run_plan", "plan_name", "plan_version"),
    ]


def _dut() -> list[sa.SchemaItem]:
    return [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _run_fk(),
        sa.Column("serial", sa.Text, nullable=False),
        sa.Column("model", sa.Text),
        sa.Column("firmware", sa.Text),
        sa.Index("ix_dut_run", "run_id"),
        sa.Index("ix_dut_serial", "serial"),
    ]


def _dut_module() -> list[sa.SchemaItem]:
    return [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("dut_id", sa.Integer, sa.ForeignKey("dut.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("position", sa.Text, nullable=False),
        sa.Column("serial", sa.Text),
        sa.Column("model", sa.Text),
        sa.Column("firmware", sa.Text),
        sa.Index("ix_dut_module_dut", "dut_id"),
        sa.Index("ix_dut_module_serial", "serial"),
    ]


def _instrument() -> list[sa.SchemaItem]:
    return [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _run_fk(),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("driver", sa.Text),
        sa.Column("resource", sa.Text),
        sa.Column("identity", sa.Text),
        sa.Column("calibration_due", sa.Date),
        sa.Index("ix_instrument_run", "run_id"),
    ]


def _step() -> list[sa.SchemaItem]:
    return [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _run_fk(),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("check_name", sa.Text),
        sa.Column("parameters", _json()),
        sa.Column("started_at", _time(), nullable=False),
        sa.Column("ended_at", _time()),
        sa.Column("verdict", sa.String(16)),
        sa.Column("duration_s", sa.Double),
        sa.Column("error", sa.Text),
        sa.Index("ix_step_run", "run_id"),
    ]


def _measurement() -> list[sa.SchemaItem]:
    return [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _run_fk(),
        sa.Column("step_id", sa.Integer, sa.ForeignKey("step.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("value", sa.Double),
        sa.Column("value_text", sa.Text),
        sa.Column("value_type", sa.String(8), nullable=False),
        sa.Column("unit", sa.Text),
        sa.Column("limit_low", sa.Double),
        sa.Column("limit_high", sa.Double),
        sa.Column("limit_nominal", sa.Double),
        sa.Column("limit_kind", sa.Text),
        sa.Column("limits_extra", _json()),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("diagnosis", sa.Text),
        sa.Column("at", _time(), nullable=False),
        sa.Column("clock_s", sa.Double),
        sa.Index("ix_measurement_run", "run_id"),
        sa.Index("ix_measurement_step", "step_id"),
        sa.Index("ix_measurement_name", "name"),
    ]


def _event() -> list[sa.SchemaItem]:
    return [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _run_fk(),
        sa.Column("step_id", sa.Integer, sa.ForeignKey("step.id", ondelete="CASCADE")),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("at", _time(), nullable=False),
        sa.Column("clock_s", sa.Double),
        sa.Index("ix_event_run", "run_id"),
    ]


# each table's columns, indexes and constraints, fresh objects on every call (a Column belongs to
# one table); in creation order, a table after those its foreign keys point to
TABLES: dict[str, Callable[[], list[sa.SchemaItem]]] = {
    "store_meta": _store_meta,
    "run": _run,
    "dut": _dut,
    "dut_module": _dut_module,
    "instrument": _instrument,
    "step": _step,
    "measurement": _measurement,
    "event": _event,
}


def schema() -> sa.MetaData:
    """This revision's tables as metadata, to compare a database without ``alembic_version``
    against (alembic's ``compare_metadata``)."""
    metadata = sa.MetaData()
    for name, items in TABLES.items():
        sa.Table(name, metadata, *items())
    return metadata


def upgrade() -> None:
    for name, items in TABLES.items():
        op.create_table(name, *items())
    store_meta = sa.table("store_meta", sa.column("key", sa.String), sa.column("value", sa.Text))
    op.bulk_insert(store_meta, [{"key": "schema_version", "value": SCHEMA_VERSION}])


def downgrade() -> None:
    for name in reversed(TABLES):
        op.drop_table(name)
