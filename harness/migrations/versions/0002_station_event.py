"""station_event: what happened at a station outside any run (the end-of-line station's lock
engaging and being lifted, calibration-overdue locks, serials refused, label and MES delivery
problems).

A new table only: the tables of 0001 are untouched, so a build from before migrations (which
checks ``schema_version`` in store_meta and writes only those tables) can still share a database
at this revision. ``schema_version`` therefore stays "1" (0001's rule: change it only for a
revision such builds must not write to).

Frozen, like every revision: do not edit it once released, and do not import ``harness.store``.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# what store_meta holds at this revision: unchanged from 0001 (see above)
SCHEMA_VERSION = "1"


def _time() -> sa.DateTime:
    """UTC times: SQLite keeps them naive, PostgreSQL as timestamptz (the store converts)."""
    return sa.DateTime(timezone=True)


def _station_event() -> list[sa.SchemaItem]:
    return [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("station", sa.Text, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("operator", sa.Text),
        sa.Column("serial", sa.Text),
        sa.Column("run_uuid", sa.String(36)),  # no foreign key: the run may be in another store
        sa.Column("at", _time(), nullable=False),
        sa.Index("ix_station_event_station_at", "station", "at"),
    ]


def upgrade() -> None:
    op.create_table("station_event", *_station_event())


def downgrade() -> None:
    op.drop_table("station_event")
