"""The result store: every run, DUT, instrument, step, measurement and safety event, in SQL.

SQLite by default (``reports/results.sqlite``), PostgreSQL by URL for a factory with many stations
writing into one database. The schema follows TestStand's UUT_RESULT / STEP_RESULT split::

    run          one execution of a plan on a station: station, operator, plan name/version/hash,
                 harness version, emulated or hardware, start/end, verdict (NULL while running, and
                 forever for a run that was killed)
    dut          the unit(s) under test in a run: serial, model, firmware (e.g. the master BMS)
    dut_module   the modules of a DUT (a bank): position, serial, model, firmware
    instrument   what measured: role, driver, resource, identity (*IDN?), calibration due date
    step         one plan step (one pytest test): name, check, parameters, verdict, duration, error
    measurement  one measured value: name, value, unit, limits (low/high/nominal/kind), verdict,
                 diagnosis, time
    event        what the safety supervisor (or the harness) did: kind, text, time
    station_event  what happened at a station outside any run (its lock engaging or lifted, a
                 serial refused, a label or MES delivery problem): station, kind, text, operator,
                 serial, run UUID (no foreign key), time
    store_meta   the schema version that builds before migrations check (still written, so such
                 a station sharing a database keeps working, or is locked out by a later revision)

The schema is made and moved on by the Alembic migrations in ``harness/migrations`` (configured in
code, no alembic.ini): opening a store brings an empty database to the newest revision, recognises
a database made before migrations (same tables, no ``alembic_version``) and stamps it, and refuses
one of a revision this code does not know or whose tables are not the ones it writes.

Every write is its own short transaction, committed before the call returns: a run that is killed
(SIGKILL, power cut with SQLite's ``synchronous=FULL``) keeps every measurement whose
``record_measurement`` returned. SQLite runs in WAL mode, so ``hil report`` can read while a
station writes.

Values: a measurement's value may be a float (NaN and +-inf included: an instrument error is
stored, not dropped), an int, a bool, a string, or None. Numbers go to ``value`` (DOUBLE) so SQL can
aggregate them; NaN/inf are kept in ``value_text`` with ``value`` NULL (SQLite cannot store NaN,
and a NaN in PostgreSQL would poison AVG), strings in ``value_text``; ``value_type`` tells which,
and :class:`MeasurementRecord.value` gives back what was recorded.

Times are stored as UTC and come back timezone-aware (UTC). A naive datetime given to the store is
taken as local time, as :meth:`datetime.astimezone` does.

The store knows no limits and no physics: it records the verdict it is given.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import numbers
import os
import sqlite3
import threading
import time
import uuid as uuid_module
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import event as sa_event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

__all__ = [
    "DEFAULT_URL", "SCHEMA_VERSION",
    "MEASUREMENT_VERDICTS", "STEP_VERDICTS", "RUN_VERDICTS", "LIMIT_KEYS",
    "StoreError", "UnknownRecord",
    "ResultStore",
    "RunRecord", "DutRecord", "ModuleRecord", "InstrumentRecord", "StepRecord",
    "MeasurementRecord", "EventRecord", "StationEventRecord", "SerialHit",
    "mask_url", "alembic_config",
]

DEFAULT_PATH = Path("reports") / "results.sqlite"
DEFAULT_URL = f"sqlite:///{DEFAULT_PATH.as_posix()}"
# what store_meta says at the newest revision: written by the migrations, read by builds before
# migrations (a revision that such a station must not write to changes it, and this)
SCHEMA_VERSION = 1
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BASELINE_REVISION = "0001"  # the schema of databases made before the store used migrations

# the verdict states (README "Verdicts"): a measurement is pass (marginal: a pass near its edge),
# fail, recorded (no limit) or error; a step or run can also be aborted, a step also skipped
MEASUREMENT_VERDICTS = ("pass", "fail", "marginal", "recorded", "error")
STEP_VERDICTS = MEASUREMENT_VERDICTS + ("aborted", "skipped")
RUN_VERDICTS = MEASUREMENT_VERDICTS + ("aborted",)
LIMIT_KEYS = ("low", "high", "nominal", "kind")
MODULE_KEYS = ("position", "serial", "firmware", "model")

_SQLITE_BUSY_TIMEOUT_MS = 10_000
_PG_CONNECT_TIMEOUT_S = 10
_PG_ADVISORY_LOCK = 0x62616E6B  # "bank": serialises schema migration between stations
# alembic's `context` and `op` are module-wide proxies: two threads migrating two databases at
# once would swap them, so one migration at a time in a process
_MIGRATION_LOCK = threading.Lock()


class StoreError(RuntimeError):
    """The result store could not be opened or written; the message names the URL (no password)."""


class UnknownRecord(StoreError, LookupError):
    """A run or step id that is not in the store."""


# --------------------------------------------------------------------------------------------
# Schema


class UTCDateTime(sa.types.TypeDecorator):
    """A point in time, stored as UTC, read back timezone-aware (UTC) on every backend."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = _utc(value, "time")
        if dialect.name == "sqlite":  # SQLite has no zone: store naive UTC
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


_JSON = sa.JSON().with_variant(JSONB(), "postgresql")
_FK = dict(ondelete="CASCADE")

metadata = sa.MetaData()

store_meta = sa.Table(
    "store_meta", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

run_table = sa.Table(
    "run", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("uuid", sa.String(36), nullable=False, unique=True),
    sa.Column("station", sa.Text, nullable=False),
    sa.Column("operator", sa.Text, nullable=False),
    sa.Column("plan_name", sa.Text, nullable=False),
    sa.Column("plan_version", sa.Text),
    sa.Column("plan_hash", sa.Text),
    sa.Column("harness_version", sa.Text),
    sa.Column("emulated", sa.Boolean, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("ended_at", UTCDateTime),
    sa.Column("verdict", sa.String(16)),
    sa.Column("extra", _JSON),
    sa.Index("ix_run_started_at", "started_at"),
    sa.Index("ix_run_station", "station"),
    sa.Index("ix_run_plan", "plan_name", "plan_version"),
)

dut_table = sa.Table(
    "dut", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("run.id", **_FK), nullable=False),
    sa.Column("serial", sa.Text, nullable=False),
    sa.Column("model", sa.Text),
    sa.Column("firmware", sa.Text),
    sa.Index("ix_dut_run", "run_id"),
    sa.Index("ix_dut_serial", "serial"),
)

module_table = sa.Table(
    "dut_module", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dut_id", sa.Integer, sa.ForeignKey("dut.id", **_FK), nullable=False),
    sa.Column("position", sa.Text, nullable=False),
    sa.Column("serial", sa.Text),
    sa.Column("model", sa.Text),
    sa.Column("firmware", sa.Text),
    sa.Index("ix_dut_module_dut", "dut_id"),
    sa.Index("ix_dut_module_serial", "serial"),
)

instrument_table = sa.Table(
    "instrument", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("run.id", **_FK), nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("driver", sa.Text),
    sa.Column("resource", sa.Text),
    sa.Column("identity", sa.Text),
    sa.Column("calibration_due", sa.Date),
    sa.Index("ix_instrument_run", "run_id"),
)

step_table = sa.Table(
    "step", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("run.id", **_FK), nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("check_name", sa.Text),
    sa.Column("parameters", _JSON),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("ended_at", UTCDateTime),
    sa.Column("verdict", sa.String(16)),
    sa.Column("duration_s", sa.Double),
    sa.Column("error", sa.Text),
    sa.Index("ix_step_run", "run_id"),
)

measurement_table = sa.Table(
    "measurement", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("run.id", **_FK), nullable=False),
    sa.Column("step_id", sa.Integer, sa.ForeignKey("step.id", **_FK), nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("value", sa.Double),
    sa.Column("value_text", sa.Text),
    sa.Column("value_type", sa.String(8), nullable=False),
    sa.Column("unit", sa.Text),
    sa.Column("limit_low", sa.Double),
    sa.Column("limit_high", sa.Double),
    sa.Column("limit_nominal", sa.Double),
    sa.Column("limit_kind", sa.Text),
    sa.Column("limits_extra", _JSON),
    sa.Column("verdict", sa.String(16), nullable=False),
    sa.Column("diagnosis", sa.Text),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("clock_s", sa.Double),
    sa.Index("ix_measurement_run", "run_id"),
    sa.Index("ix_measurement_step", "step_id"),
    sa.Index("ix_measurement_name", "name"),
)

event_table = sa.Table(
    "event", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("run.id", **_FK), nullable=False),
    sa.Column("step_id", sa.Integer, sa.ForeignKey("step.id", **_FK)),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("clock_s", sa.Double),
    sa.Index("ix_event_run", "run_id"),
)

# station-wide events that belong to no run (revision 0002): the end-of-line station's lock
# ("3 consecutive FAIL at discharge_ocp_trip"), its lifting with the operator's reason, serials
# refused, label/MES delivery problems. run_uuid is plain text, not a foreign key: the run it
# names may be in another store, or not recorded at all
station_event_table = sa.Table(
    "station_event", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("station", sa.Text, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("operator", sa.Text),
    sa.Column("serial", sa.Text),
    sa.Column("run_uuid", sa.String(36)),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Index("ix_station_event_station_at", "station", "at"),
)


# --------------------------------------------------------------------------------------------
# What the queries give back


@dataclass(frozen=True)
class RunRecord:
    id: int
    uuid: str
    station: str
    operator: str
    plan_name: str
    plan_version: str | None
    plan_hash: str | None
    harness_version: str | None
    emulated: bool
    started_at: datetime
    ended_at: datetime | None
    verdict: str | None
    extra: dict[str, Any] | None
    serials: tuple[str, ...] = ()  # the DUT serials of the run, in the order they were added

    @property
    def finished(self) -> bool:
        """False for a run still going, or one that was killed before ``finish_run``."""
        return self.verdict is not None


@dataclass(frozen=True)
class ModuleRecord:
    id: int
    position: str
    serial: str | None
    model: str | None
    firmware: str | None


@dataclass(frozen=True)
class DutRecord:
    id: int
    run_id: int
    serial: str
    model: str | None
    firmware: str | None
    modules: tuple[ModuleRecord, ...] = ()


@dataclass(frozen=True)
class InstrumentRecord:
    id: int
    run_id: int
    role: str
    driver: str | None
    resource: str | None
    identity: str | None
    calibration_due: date | None

    def calibration_overdue(self, on: date | datetime | None = None) -> bool:
        """True when the calibration was due before ``on`` (default: the run's caller's today)."""
        if self.calibration_due is None:
            return False
        day = on.date() if isinstance(on, datetime) else (on or date.today())
        return self.calibration_due < day


@dataclass(frozen=True)
class StepRecord:
    id: int
    run_id: int
    name: str
    check: str | None
    parameters: dict[str, Any] | None
    started_at: datetime
    ended_at: datetime | None
    verdict: str | None
    duration_s: float | None
    error: str | None


@dataclass(frozen=True)
class MeasurementRecord:
    id: int
    run_id: int
    step_id: int
    step_name: str
    name: str
    value: float | int | bool | str | None
    unit: str | None
    low: float | None
    high: float | None
    nominal: float | None
    limit_kind: str | None
    limits_extra: dict[str, Any] | None
    verdict: str
    diagnosis: str | None
    at: datetime
    clock_s: float | None = None

    @property
    def limits(self) -> dict[str, Any]:
        """The limits as recorded: low/high/nominal/kind (None where not set) and any extra keys."""
        out: dict[str, Any] = {"low": self.low, "high": self.high, "nominal": self.nominal,
                               "kind": self.limit_kind}
        out.update(self.limits_extra or {})
        return out


@dataclass(frozen=True)
class EventRecord:
    id: int
    run_id: int
    step_id: int | None
    kind: str
    text: str
    at: datetime
    clock_s: float | None = None


@dataclass(frozen=True)
class StationEventRecord:
    """Something that happened at a station outside any run (kind e.g. ``locked``,
    ``unlocked``, ``serial_refused``, ``label``, ``mes``)."""

    id: int
    station: str
    kind: str
    text: str
    operator: str | None
    serial: str | None
    run_uuid: str | None
    at: datetime


@dataclass(frozen=True)
class SerialHit:
    """One appearance of a serial number: as a DUT (``module`` None) or as a module of a DUT."""

    run: RunRecord
    dut: DutRecord
    module: ModuleRecord | None = None


# --------------------------------------------------------------------------------------------
# Helpers


def mask_url(url: str | URL) -> str:
    """The URL as text with its password replaced by ``***`` (for messages and logs)."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not parseable: hide anything between ':' and '@'
        text = str(url)
        scheme, sep, rest = text.partition("://")
        if sep and "@" in rest:
            creds, _, host = rest.rpartition("@")
            user = creds.split(":", 1)[0]
            return f"{scheme}://{user}:***@{host}" if ":" in creds else text
        return text


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _utc(value: Any, what: str) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, got {type(value).__name__}: {value!r}")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        value = value.astimezone()  # naive: local time
    return value.astimezone(timezone.utc)


def _date(value: Any, what: str) -> date | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"{what} must be an ISO date (YYYY-MM-DD), got {value!r}") from None
    raise TypeError(f"{what} must be a date or an ISO date string, got {type(value).__name__}")


def _text(value: Any, what: str, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise ValueError(f"{what} is required")
        return None
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, (Path, os.PathLike)):
        value = os.fspath(value)
    if isinstance(value, bool) or not isinstance(value, (str, numbers.Real, Decimal)):
        raise TypeError(f"{what} must be text, got {type(value).__name__}: {value!r}")
    value = str(value)  # a number is taken as its text (YAML reads `version: 1.2` as a float)
    if required and not value.strip():
        raise ValueError(f"{what} must not be empty")
    return value


def _verdict(value: Any, allowed: Sequence[str], what: str) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, str) and value.strip().lower() in allowed:
        return value.strip().lower()
    raise ValueError(f"{what} must be one of {', '.join(allowed)}; got {value!r}")


def _number(value: Any, what: str) -> float | None:
    """A limit: a finite or infinite float, or None."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalar
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, Decimal)):
        raise TypeError(f"{what} must be a number or None, got {type(value).__name__}: {value!r}")
    value = float(value)
    if math.isnan(value):
        return None  # a NaN limit is no limit
    return value


def _encode_value(value: Any, what: str) -> tuple[float | None, str | None, str]:
    """(value, value_text, value_type) for the measurement columns."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()  # numpy scalar or 0-d array
        except (ValueError, TypeError):
            raise TypeError(f"{what} must be a single value, got an array of shape "
                            f"{getattr(value, 'shape', '?')}") from None
    if value is None:
        return None, None, "none"
    if isinstance(value, bool):
        return float(value), None, "bool"
    if isinstance(value, numbers.Integral):
        return float(value), str(int(value)), "int"
    if isinstance(value, (numbers.Real, Decimal)):
        number = float(value)
        if math.isfinite(number):
            return number, None, "float"
        return None, ("nan" if math.isnan(number) else ("inf" if number > 0 else "-inf")), "float"
    if isinstance(value, str):
        return None, value, "str"
    raise TypeError(f"{what} must be a number, bool, string or None; got {type(value).__name__}: "
                    f"{value!r}")


def _decode_value(value: float | None, text: str | None, kind: str) -> Any:
    if kind == "none":
        return None
    if kind == "bool":
        return bool(value)
    if kind == "int":
        return int(text) if text is not None else int(value or 0)
    if kind == "str":
        return text
    if value is None:
        return float(text) if text is not None else None
    return float(value)


def _jsonable(value: Any, what: str) -> Any:
    """Plain JSON: numpy scalars unwrapped, non-finite floats as strings, paths/enums as text."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, enum.Enum):
        return _jsonable(value.value, what)
    if hasattr(value, "item") and not isinstance(value, (bytes, bytearray)) and \
            getattr(value, "ndim", 0) == 0:
        return _jsonable(value.item(), what)
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist(), what)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, (numbers.Real, Decimal)):
        number = float(value)
        return number if math.isfinite(number) else str(number)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, what) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v, what) for v in value]
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (Path, os.PathLike)):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value), what)
    if hasattr(value, "model_dump"):  # pydantic model
        return _jsonable(value.model_dump(), what)
    return str(value)


def _fields(obj: Any, allowed: Sequence[str], what: str) -> dict[str, Any]:
    """A mapping, a dataclass, a pydantic model or a plain object, as a dict of ``allowed`` keys.

    A mapping with keys outside ``allowed`` is an error (a typo would otherwise lose data);
    objects are read by attribute, missing attributes being None.
    """
    if obj is None:
        return {}
    if isinstance(obj, Mapping):
        unknown = sorted(str(k) for k in obj if k not in allowed)
        if unknown:
            raise ValueError(f"{what}: unknown key(s) {', '.join(unknown)}; "
                             f"allowed: {', '.join(allowed)}")
        return dict(obj)
    return {key: getattr(obj, key, None) for key in allowed}


def _limits(limits: Any, what: str) -> dict[str, Any]:
    """Limits as columns: low/high/nominal as floats, kind as text, anything else as JSON."""
    if limits is None:
        return {"limit_low": None, "limit_high": None, "limit_nominal": None,
                "limit_kind": None, "limits_extra": None}
    if isinstance(limits, Mapping):
        data = dict(limits)
    elif hasattr(limits, "model_dump"):
        data = limits.model_dump()
    elif dataclasses.is_dataclass(limits) and not isinstance(limits, type):
        data = dataclasses.asdict(limits)
    else:
        data = {key: getattr(limits, key, None) for key in LIMIT_KEYS}
    extra = {str(k): v for k, v in data.items() if k not in LIMIT_KEYS and v is not None}
    return {
        "limit_low": _number(data.get("low"), f"{what}: limits.low"),
        "limit_high": _number(data.get("high"), f"{what}: limits.high"),
        "limit_nominal": _number(data.get("nominal"), f"{what}: limits.nominal"),
        "limit_kind": _text(data.get("kind"), f"{what}: limits.kind"),
        "limits_extra": _jsonable(extra, what) if extra else None,
    }


def _resolve_url(url: str | os.PathLike[str] | URL | None) -> URL:
    if url is None:
        url = DEFAULT_URL
    if isinstance(url, os.PathLike):
        url = f"sqlite:///{Path(url).as_posix()}"
    if isinstance(url, str):
        text = url.strip()
        if not text:
            raise StoreError("result store URL is empty; give sqlite:///PATH or "
                             "postgresql://USER:PASSWORD@HOST/DB, or None for " + DEFAULT_URL)
        if "://" not in text:  # a plain path to a SQLite file
            text = f"sqlite:///{Path(text).as_posix()}"
        try:
            url = make_url(text)
        except ArgumentError as exc:
            raise StoreError(f"result store URL {mask_url(text)!r} is not a database URL: {exc}; "
                             "expected sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB") \
                from None
    # postgresql:// and postgres:// mean psycopg 3, the driver this project installs
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


# --------------------------------------------------------------------------------------------
# Migrations


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic configured in code: an installed harness has no alembic.ini and needs no
    ``alembic`` command. The scripts are the ones shipped beside this module; ``connection``,
    if given, is the one ``env.py`` migrates (inside the caller's transaction)."""
    config = Config()
    # ConfigParser would read a '%' in the install path as interpolation
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@dataclass(frozen=True)
class _Revisions:
    """What the shipped migration scripts say, read once per process."""

    head: str
    known: frozenset[str]
    baseline: sa.MetaData  # the tables at BASELINE_REVISION
    baseline_version: str  # what store_meta says at BASELINE_REVISION


@functools.cache
def _revisions() -> _Revisions:
    """The scripts ship with the code, so they cannot change while it runs: read them once."""
    script = ScriptDirectory.from_config(alembic_config())
    baseline = script.get_revision(BASELINE_REVISION).module
    return _Revisions(head=script.get_current_head(),
                      known=frozenset(s.revision for s in script.walk_revisions()),
                      baseline=baseline.schema(), baseline_version=baseline.SCHEMA_VERSION)


def _differences(conn: Connection, expected: sa.MetaData) -> list[str]:
    """How the database's tables differ from ``expected``, in words; empty when they match.

    Extra tables (another application's, in a shared database) and extra plain indexes (a DBA's,
    for reports) change nothing the store reads or writes, so they are not differences.
    """
    found: list[str] = []
    missing_columns: dict[str, list[str]] = {}
    for diff in compare_metadata(MigrationContext.configure(conn), expected):
        for change in (diff if isinstance(diff, list) else [diff]):
            kind = change[0]
            if kind == "add_column":
                missing_columns.setdefault(change[2], []).append(change[3].name)
            elif kind == "remove_table" or (kind == "remove_index" and not change[1].unique):
                continue
            else:
                found.append(_describe(change))
    return [f"table {table} lacks column(s) {', '.join(columns)}"
            for table, columns in missing_columns.items()] + found


def _describe(change: tuple[Any, ...]) -> str:
    """One of alembic's autogenerate differences (what would turn the database into the expected
    schema) as a phrase about the database."""
    kind = change[0]
    if kind in ("modify_type", "modify_nullable", "modify_default", "modify_comment"):
        _, _, table, column, _, is_now, expected = change
        return f"column {table}.{column} has {kind[7:]} {is_now!r}, expected {expected!r}"
    if kind == "add_table":
        return f"table {change[1].name} is missing"
    if kind == "remove_column":
        return f"table {change[2]} has an unknown column {change[3].name}"
    item = change[1]
    table = getattr(getattr(item, "table", None), "name", "?")
    what = type(item).__name__
    name = f" {item.name}" if getattr(item, "name", None) else ""
    columns = ", ".join(c.name for c in getattr(item, "columns", ()))
    where = f"{what}{name} on {table}({columns})"
    return f"{where} is missing" if kind.startswith("add_") else f"unexpected {where}"


def _current_revisions(conn: Connection) -> tuple[str, ...]:
    """The revision(s) in ``alembic_version``; empty when the table is missing (an empty database,
    or one made before migrations). Only reads: creates no table."""
    return tuple(MigrationContext.configure(conn).get_current_heads())


# --------------------------------------------------------------------------------------------
# The store


class ResultStore:
    """Runs, DUTs, instruments, steps, measurements and events, committed as they happen.

    ``url``: None for ``sqlite:///reports/results.sqlite`` (relative to the working directory),
    a SQLite URL or a plain file path, or a PostgreSQL URL (``postgresql://user:pw@host/db``;
    psycopg 3 is used). The database is reached and brought to the newest schema revision (or
    checked, or refused) here, so a bad or unreachable URL, or a database this code cannot write,
    fails before anything is energised, with a :class:`StoreError` that names the URL without its
    password.

    The store is safe to share between threads. Each write is one short transaction, committed
    before the method returns.
    """

    def __init__(self, url: str | os.PathLike[str] | URL | None = None, *,
                 echo: bool = False) -> None:
        self.url: URL = _resolve_url(url)
        self.display_url: str = mask_url(self.url)
        self._step_runs: dict[int, int] = {}
        self._engine = self._create_engine(echo)
        try:
            self._open_schema()
        except BaseException:
            self._engine.dispose()
            raise

    # ---- opening

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._engine.dialect.name

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, for ad-hoc queries in reports (read-only use, please)."""
        return self._engine

    def _create_engine(self, echo: bool) -> Engine:
        url = self.url
        backend = url.get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo}
        connect_args: dict[str, Any] = {}
        if backend == "sqlite":
            database = url.database or ""
            if database in ("", ":memory:") or database.startswith("file:"):
                raise StoreError(f"result store {self.display_url!r}: give a SQLite file path "
                                 "(an in-memory database would lose every result at exit)")
            path = Path(database)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"result store {self.display_url!r}: cannot create folder "
                                 f"{str(path.parent)!r}: {exc.strerror or exc}") from None
            connect_args["timeout"] = _SQLITE_BUSY_TIMEOUT_MS / 1000
        elif backend == "postgresql":
            if "connect_timeout" not in url.query:
                connect_args["connect_timeout"] = _PG_CONNECT_TIMEOUT_S
            kwargs["pool_pre_ping"] = True
        else:
            raise StoreError(f"result store {self.display_url!r}: unsupported database "
                             f"{backend!r}; use sqlite:///PATH or postgresql://...")
        try:
            engine = sa.create_engine(url, connect_args=connect_args, **kwargs)
        except (ArgumentError, NoSuchModuleError, ImportError) as exc:
            raise StoreError(f"result store {self.display_url!r}: cannot use this URL: "
                             f"{self._clean(exc)}") from None
        if backend == "sqlite":
            sa_event.listen(engine, "connect", _sqlite_on_connect)
        return engine

    def _open_schema(self) -> None:
        """Bring the database to the schema this code writes, or refuse it, before a run starts.

        A database already at the newest revision, the usual case, is only read: no write lock,
        so a report can open the store a station is writing, and a read-only copy opens too.
        Anything else is migrated under the schema lock. Should that fail because another opener
        made the tables in between (a file system whose locks SQLite cannot trust, a tool that
        takes no lock), the revision is read again: at head is as good as migrated here.
        """
        try:
            if self._at_head():
                return
            try:
                self._migrate_locked()
            except (SQLAlchemyError, CommandError):
                if not self._at_head():
                    raise
        except (SQLAlchemyError, CommandError) as exc:
            raise StoreError(f"result store {self.display_url!r}: cannot open: "
                             f"{self._clean(exc)}") from None

    def _at_head(self) -> bool:
        """True for a database at the newest revision whose tables are the ones this code writes
        (:class:`StoreError` if they are not: a hand-edited database would fail mid-run)."""
        with self._engine.connect() as conn:
            current = _current_revisions(conn)
            self._check_known(current)  # refused here, before any lock is asked for
            if current != (_revisions().head,):
                return False
            self._check_tables(conn)
            return True

    def _migrate_locked(self) -> None:
        """Migrate in one transaction that holds the schema lock, so two stations opening a new
        database together take turns: the second finds the revision written and does nothing."""
        with _MIGRATION_LOCK, self._engine.connect() as conn:
            if self.dialect == "sqlite":
                # pysqlite runs DDL outside transactions: take the write lock first (other
                # openers wait for it up to busy_timeout), then the DDL is inside it
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"),
                             {"k": _PG_ADVISORY_LOCK})
            self._migrate(conn)
            self._check_tables(conn)  # a migration that does not end at `metadata` rolls back
            conn.commit()

    def _migrate(self, conn: Connection) -> None:
        """Bring the database to head: empty, made before migrations, or at an older revision."""
        revisions = _revisions()
        current = _current_revisions(conn)
        self._check_known(current)
        if current == (revisions.head,):
            return  # another station migrated it while this one waited for the lock
        config = alembic_config(conn)
        if not current and self._has_tables(conn, revisions.baseline):
            self._check_baseline(conn, revisions)
            command.stamp(config, BASELINE_REVISION)
        command.upgrade(config, "head")

    def _check_known(self, current: tuple[str, ...]) -> None:
        """A revision this code does not know was written by a newer harness: its tables may
        have columns this code would leave empty, or lack ones it writes."""
        revisions = _revisions()
        unknown = sorted(set(current) - revisions.known)
        if unknown:
            raise StoreError(
                f"result store {self.display_url!r} is at schema revision {', '.join(unknown)}, "
                f"which this harness does not know (its newest is {revisions.head}; a newer "
                "harness wrote it?): use a newer harness or another database")

    def _has_tables(self, conn: Connection, schema: sa.MetaData) -> bool:
        """Whether any table of ``schema`` exists (none: an empty database, or another app's)."""
        return bool(set(sa.inspect(conn).get_table_names()) & set(schema.tables))

    def _check_baseline(self, conn: Connection, revisions: _Revisions) -> None:
        """A database without ``alembic_version`` is taken as made before migrations only if it is
        exactly that: the baseline tables, and the schema version those builds wrote."""
        differences = _differences(conn, revisions.baseline)
        if differences:
            raise StoreError(
                f"result store {self.display_url!r} has no migration revision and its tables are "
                f"not those of revision {BASELINE_REVISION}: {'; '.join(differences[:5])}: use "
                "another database or migrate it by hand")
        found = conn.execute(sa.text(  # as those builds read it, whatever store_meta becomes
            "SELECT value FROM store_meta WHERE key = 'schema_version'")).scalar()
        if found != revisions.baseline_version:
            raise StoreError(
                f"result store {self.display_url!r} has schema version {found}; this harness "
                f"knows version {revisions.baseline_version} (revision {BASELINE_REVISION}) and "
                "later revisions: use another database or migrate it by hand")

    def _check_tables(self, conn: Connection) -> None:
        """The tables must be the ones this code writes, or a run would fail after it started."""
        differences = _differences(conn, metadata)
        if differences:
            raise StoreError(
                f"result store {self.display_url!r} is at schema revision {_revisions().head} but "
                f"its tables differ: {'; '.join(differences[:5])}: use another database or "
                "repair it")

    def _clean(self, exc: BaseException) -> str:
        """The error's own words, first line only, with the password (if any) hidden."""
        orig = getattr(exc, "orig", None) or exc
        text = (str(orig).strip() or type(orig).__name__).splitlines()[0]
        password = self.url.password
        if password:
            text = text.replace(str(password), "***")
        return text

    def close(self) -> None:
        """Release the connections (the data is already committed)."""
        self._engine.dispose()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResultStore({self.display_url!r})"

    # ---- writing

    def _write(self, what: str, statement: Any) -> int:
        """Run one statement in its own transaction, committed on return; the new row's id."""
        try:
            with self._engine.begin() as conn:
                result = conn.execute(statement)
                key = result.inserted_primary_key if result.is_insert else None
                return int(key[0]) if key else result.rowcount
        except SQLAlchemyError as exc:
            raise StoreError(f"result store {self.display_url!r}: could not {what}: "
                             f"{self._clean(exc)}") from None

    def _check_run(self, run_id: int) -> int:
        if not isinstance(run_id, int) or isinstance(run_id, bool):
            raise TypeError(f"run_id must be an int, got {type(run_id).__name__}: {run_id!r}")
        found = self._read(lambda conn: conn.execute(
            sa.select(run_table.c.id).where(run_table.c.id == run_id)).scalar())
        if found is None:
            raise UnknownRecord(f"result store {self.display_url!r} has no run {run_id}")
        return run_id

    def _run_of_step(self, step_id: int) -> int:
        if not isinstance(step_id, int) or isinstance(step_id, bool):
            raise TypeError(f"step_id must be an int, got {type(step_id).__name__}: {step_id!r}")
        run_id = self._step_runs.get(step_id)
        if run_id is None:
            run_id = self._read(lambda conn: conn.execute(
                sa.select(step_table.c.run_id).where(step_table.c.id == step_id)).scalar())
            if run_id is None:
                raise UnknownRecord(f"result store {self.display_url!r} has no step {step_id}")
            self._step_runs[step_id] = run_id
        return run_id

    def start_run(self, *, station: str, operator: str, plan_name: str,
                  plan_version: str | None = None, plan_hash: str | None = None,
                  harness_version: str | None = None, emulated: bool,
                  started_at: datetime | None = None, uuid: str | None = None,
                  extra: Mapping[str, Any] | None = None) -> int:
        """Record the start of a run; its id. ``harness_version`` defaults to bankhil's version.

        ``extra``: anything else worth keeping with the run (seed, scenario, git commit), as JSON.
        """
        if not isinstance(emulated, bool):
            raise TypeError(f"emulated must be True or False, got {emulated!r}")
        if harness_version is None:
            harness_version = _package_version()
        values = {
            "uuid": _text(uuid, "uuid") or str(uuid_module.uuid4()),
            "station": _text(station, "station", required=True),
            "operator": _text(operator, "operator", required=True),
            "plan_name": _text(plan_name, "plan_name", required=True),
            "plan_version": _text(plan_version, "plan_version"),
            "plan_hash": _text(plan_hash, "plan_hash"),
            "harness_version": _text(harness_version, "harness_version"),
            "emulated": emulated,
            "started_at": _utc(started_at, "started_at") if started_at is not None else _now(),
            "extra": _jsonable(dict(extra), "extra") if extra else None,
        }
        return self._write("start the run", run_table.insert().values(**values))

    def add_dut(self, run_id: int, serial: str, model: str | None = None,
                modules: Iterable[Mapping[str, Any] | Any] = (), *,
                firmware: str | None = None) -> int:
        """Record a DUT of the run and its modules; the DUT's id.

        ``modules``: for a bank, one entry per module, a mapping (or object) with ``position``
        (default: its index in the list), ``serial``, ``firmware`` and ``model``; a mapping with
        any other key is refused (a typo would lose data). ``firmware``: the DUT's own firmware
        (a master BMS), if any. All rows go in one transaction.
        """
        self._check_run(run_id)
        serial_text = _text(serial, "serial", required=True)
        rows = []
        for index, module in enumerate(modules):
            what = f"DUT {serial_text}: module {index}"
            data = _fields(module, MODULE_KEYS, what)
            position = data.get("position")
            rows.append({
                "position": _text(position if position is not None else index,
                                  f"{what}: position", required=True),
                "serial": _text(data.get("serial"), f"{what}: serial"),
                "model": _text(data.get("model"), f"{what}: model"),
                "firmware": _text(data.get("firmware"), f"{what}: firmware"),
            })
        values = {"run_id": run_id, "serial": serial_text, "model": _text(model, "model"),
                  "firmware": _text(firmware, "firmware")}
        try:
            with self._engine.begin() as conn:
                dut_id = int(conn.execute(dut_table.insert().values(**values))
                             .inserted_primary_key[0])
                if rows:
                    conn.execute(module_table.insert(), [dict(r, dut_id=dut_id) for r in rows])
                return dut_id
        except SQLAlchemyError as exc:
            raise StoreError(f"result store {self.display_url!r}: could not add DUT "
                             f"{serial_text}: {self._clean(exc)}") from None

    def add_instrument(self, run_id: int, role: str, driver: str, resource: str | None = None,
                       identity: str | None = None,
                       calibration_due: date | str | None = None) -> int:
        """Record an instrument used in the run (identity: its ``*IDN?`` answer); its id."""
        self._check_run(run_id)
        values = {
            "run_id": run_id,
            "role": _text(role, "role", required=True),
            "driver": _text(driver, "driver"),
            "resource": _text(resource, "resource"),
            "identity": _text(identity, "identity"),
            "calibration_due": _date(calibration_due, "calibration_due"),
        }
        return self._write(f"add instrument {values['role']}",
                           instrument_table.insert().values(**values))

    def start_step(self, run_id: int, name: str, check: str | None = None,
                   parameters: Mapping[str, Any] | None = None,
                   started_at: datetime | None = None) -> int:
        """Record the start of a plan step; its id. ``parameters`` are kept as JSON."""
        self._check_run(run_id)
        values = {
            "run_id": run_id,
            "name": _text(name, "step name", required=True),
            "check_name": _text(check, "check"),
            "parameters": (_jsonable(dict(parameters), "parameters")
                           if parameters is not None else None),
            "started_at": _utc(started_at, "started_at") if started_at is not None else _now(),
        }
        step_id = self._write(f"start step {values['name']!r}",
                              step_table.insert().values(**values))
        self._step_runs[step_id] = run_id
        return step_id

    def record_measurement(self, step_id: int, name: str, value: Any, unit: str | None,
                           limits: Mapping[str, Any] | Any | None, verdict: str,
                           diagnosis: str | None = None, at: datetime | None = None, *,
                           clock_s: float | None = None) -> int:
        """Record one measurement, committed before this returns; its id.

        ``value``: float (NaN/inf kept), int, bool, str or None (no reading). ``limits``: a
        mapping or object with ``low``/``high``/``nominal``/``kind`` (any of them None); other
        keys are kept as JSON. ``verdict``: pass, fail, marginal or error. ``at``: wall time
        (default now); ``clock_s``: the run clock's time in seconds (virtual under emulation, so
        the same inputs give the same value).
        """
        run_id = self._run_of_step(step_id)
        name_text = _text(name, "measurement name", required=True)
        what = f"measurement {name_text!r}"
        number, text, kind = _encode_value(value, what)
        values = {
            "run_id": run_id, "step_id": step_id, "name": name_text,
            "value": number, "value_text": text, "value_type": kind,
            "unit": _text(unit, f"{what}: unit"),
            **_limits(limits, what),
            "verdict": _verdict(verdict, MEASUREMENT_VERDICTS, f"{what}: verdict"),
            "diagnosis": _text(diagnosis, f"{what}: diagnosis"),
            "at": _utc(at, f"{what}: at") if at is not None else _now(),
            "clock_s": _number(clock_s, f"{what}: clock_s"),
        }
        return self._write(f"record {what}", measurement_table.insert().values(**values))

    def finish_step(self, step_id: int, verdict: str, duration_s: float | None = None,
                    error: str | None = None, ended_at: datetime | None = None) -> None:
        """Record how a step ended: pass, fail, marginal, error or skipped."""
        self._run_of_step(step_id)
        values = {
            "verdict": _verdict(verdict, STEP_VERDICTS, f"step {step_id}: verdict"),
            "duration_s": _number(duration_s, f"step {step_id}: duration_s"),
            "error": _text(error, f"step {step_id}: error"),
            "ended_at": _utc(ended_at, "ended_at") if ended_at is not None else _now(),
        }
        self._write(f"finish step {step_id}",
                    step_table.update().where(step_table.c.id == step_id).values(**values))

    def finish_run(self, run_id: int, verdict: str, ended_at: datetime | None = None) -> None:
        """Record how the run ended: pass, fail, marginal, error or aborted."""
        values = {
            "verdict": _verdict(verdict, RUN_VERDICTS, f"run {run_id}: verdict"),
            "ended_at": _utc(ended_at, "ended_at") if ended_at is not None else _now(),
        }
        self._check_run(run_id)
        self._write(f"finish run {run_id}",
                    run_table.update().where(run_table.c.id == run_id).values(**values))

    def abort_dead_runs(self, host: str, alive: Callable[[int], bool]) -> list[int]:
        """Mark ABORTED every open run (no verdict) started on ``host`` whose process is gone.

        A run records its host and process id in ``extra`` when it starts; a run killed with
        SIGKILL (or whose machine lost power) never writes its verdict, so the next start on the
        same host closes it, with an event saying why. Returns the ids it closed.
        """
        query = sa.select(run_table).where(run_table.c.verdict.is_(None))
        closed = []
        for run in self._read(lambda conn: self._run_records(conn, query)):
            extra = run.extra or {}
            pid = extra.get("pid")
            if extra.get("host") != host or not isinstance(pid, int) or alive(pid):
                continue
            self.finish_run(run.id, "aborted")
            self.record_event(run.id, "aborted", f"process {pid} on {host} ended without closing "
                              "the run (killed); marked aborted by the next run")
            closed.append(run.id)
        return closed

    def record_event(self, run_id: int, kind: str, text: str, at: datetime | None = None, *,
                     step_id: int | None = None, clock_s: float | None = None) -> int:
        """Record what was done to the bench (e.g. kind ``safe_state``: "load off, supply off,
        contactors open"); committed before this returns; its id. ``clock_s`` as for
        :meth:`record_measurement`."""
        if step_id is not None and self._run_of_step(step_id) != run_id:
            raise ValueError(f"step {step_id} does not belong to run {run_id}")
        values = {
            "run_id": run_id, "step_id": step_id,
            "kind": _text(kind, "event kind", required=True),
            "text": _text(text, "event text") or "",
            "at": _utc(at, "at") if at is not None else _now(),
            "clock_s": _number(clock_s, "event clock_s"),
        }
        if step_id is None:
            self._check_run(run_id)
        return self._write(f"record event {values['kind']!r}",
                           event_table.insert().values(**values))

    def record_station_event(self, station: str, kind: str, text: str, *,
                             operator: str | None = None, serial: str | None = None,
                             run_uuid: str | None = None, at: datetime | None = None) -> int:
        """Record something that happened at ``station`` outside any run (kind e.g. ``locked``:
        "3 consecutive FAIL at discharge_ocp_trip", ``unlocked`` with the operator's reason,
        ``serial_refused``, ``label``, ``mes``); committed before this returns; its id.

        ``kind``: at most 32 characters. ``run_uuid``: the UUID of the run it concerns, if any
        (stable across databases; not checked against this store's runs, as
        :meth:`run_by_uuid` would find it). ``at``: default now; a naive time is local time.
        """
        kind_text = _text(kind, "station event kind", required=True)
        if len(kind_text) > 32:
            raise ValueError(f"station event kind must be at most 32 characters, got "
                             f"{kind_text!r}")
        if isinstance(run_uuid, uuid_module.UUID):
            run_uuid = str(run_uuid)
        uuid_text = _text(run_uuid, "station event run_uuid")
        if uuid_text is not None and len(uuid_text) > 36:  # SQLite would not enforce String(36)
            raise ValueError(f"station event run_uuid must be a run's UUID (at most 36 "
                             f"characters), got {run_uuid!r}")
        values = {
            "station": _text(station, "station", required=True),
            "kind": kind_text,
            "text": _text(text, "station event text") or "",
            "operator": _text(operator, "station event operator"),
            "serial": _text(serial, "station event serial"),
            "run_uuid": uuid_text,
            "at": _utc(at, "at") if at is not None else _now(),
        }
        return self._write(f"record station event {kind_text!r}",
                           station_event_table.insert().values(**values))

    # ---- reading

    def _read(self, fn: Any) -> Any:
        try:
            with self._engine.connect() as conn:
                return fn(conn)
        except SQLAlchemyError as exc:
            raise StoreError(f"result store {self.display_url!r}: could not read: "
                             f"{self._clean(exc)}") from None

    def _serials(self, conn: Connection, run_ids: Sequence[int]) -> dict[int, tuple[str, ...]]:
        out: dict[int, list[str]] = {}
        if run_ids:
            rows = conn.execute(sa.select(dut_table.c.run_id, dut_table.c.serial)
                                .where(dut_table.c.run_id.in_(run_ids)).order_by(dut_table.c.id))
            for run_id, serial in rows:
                out.setdefault(run_id, []).append(serial)
        return {k: tuple(v) for k, v in out.items()}

    def _run_records(self, conn: Connection, query: sa.Select) -> list[RunRecord]:
        rows = conn.execute(query).mappings().all()
        serials = self._serials(conn, [row["id"] for row in rows])
        return [RunRecord(**dict(row), serials=serials.get(row["id"], ())) for row in rows]

    def _serial_filter(self, serial: str) -> sa.ColumnElement[bool]:
        as_dut = sa.select(dut_table.c.run_id).where(dut_table.c.serial == serial)
        as_module = (sa.select(dut_table.c.run_id)
                     .join(module_table, module_table.c.dut_id == dut_table.c.id)
                     .where(module_table.c.serial == serial))
        return run_table.c.id.in_(sa.union(as_dut, as_module))

    def runs(self, serial: str | None = None, *, station: str | None = None,
             plan_name: str | None = None, emulated: bool | None = None,
             limit: int | None = 100) -> list[RunRecord]:
        """Runs, newest first: all, or those where ``serial`` was a DUT or one of its modules."""
        query = sa.select(run_table)
        if serial is not None:
            query = query.where(self._serial_filter(serial))
        if station is not None:
            query = query.where(run_table.c.station == station)
        if plan_name is not None:
            query = query.where(run_table.c.plan_name == plan_name)
        if emulated is not None:
            query = query.where(run_table.c.emulated == emulated)
        query = query.order_by(run_table.c.started_at.desc(), run_table.c.id.desc())
        if limit is not None:
            query = query.limit(limit)
        return self._read(lambda conn: self._run_records(conn, query))

    def run(self, run_id: int) -> RunRecord:
        """One run by id (:class:`UnknownRecord` if absent)."""
        found = self._read(lambda conn: self._run_records(
            conn, sa.select(run_table).where(run_table.c.id == run_id)))
        if not found:
            raise UnknownRecord(f"result store {self.display_url!r} has no run {run_id}")
        return found[0]

    def run_by_uuid(self, run_uuid: str) -> RunRecord:
        """One run by its UUID (stable across databases; :class:`UnknownRecord` if absent)."""
        found = self._read(lambda conn: self._run_records(
            conn, sa.select(run_table).where(run_table.c.uuid == str(run_uuid))))
        if not found:
            raise UnknownRecord(f"result store {self.display_url!r} has no run {run_uuid}")
        return found[0]

    def _dut_records(self, conn: Connection, where: sa.ColumnElement[bool]) -> list[DutRecord]:
        duts = conn.execute(sa.select(dut_table).where(where).order_by(dut_table.c.id)) \
            .mappings().all()
        modules: dict[int, list[ModuleRecord]] = {}
        if duts:
            rows = conn.execute(sa.select(module_table)
                                .where(module_table.c.dut_id.in_([d["id"] for d in duts]))
                                .order_by(module_table.c.id)).mappings().all()
            for row in rows:
                modules.setdefault(row["dut_id"], []).append(ModuleRecord(
                    id=row["id"], position=row["position"], serial=row["serial"],
                    model=row["model"], firmware=row["firmware"]))
        return [DutRecord(**dict(d), modules=tuple(modules.get(d["id"], ()))) for d in duts]

    def duts(self, run_id: int) -> list[DutRecord]:
        """The DUTs of a run with their modules, in the order they were added."""
        return self._read(lambda conn: self._dut_records(conn, dut_table.c.run_id == run_id))

    def instruments(self, run_id: int) -> list[InstrumentRecord]:
        """The instruments of a run, in the order they were added."""
        query = (sa.select(instrument_table).where(instrument_table.c.run_id == run_id)
                 .order_by(instrument_table.c.id))
        return self._read(lambda conn: [InstrumentRecord(**dict(row))
                                        for row in conn.execute(query).mappings()])

    def steps(self, run_id: int) -> list[StepRecord]:
        """The steps of a run, in the order they started."""
        query = sa.select(step_table).where(step_table.c.run_id == run_id).order_by(step_table.c.id)

        def fetch(conn: Connection) -> list[StepRecord]:
            out = []
            for row in conn.execute(query).mappings():
                data = dict(row)
                data["check"] = data.pop("check_name")
                out.append(StepRecord(**data))
            return out
        return self._read(fetch)

    def measurements(self, run_id: int, *, step_id: int | None = None,
                     name: str | None = None) -> list[MeasurementRecord]:
        """The measurements of a run (or of one step, or with one name), in recorded order."""
        m = measurement_table
        query = (sa.select(m, step_table.c.name.label("step_name"))
                 .join(step_table, step_table.c.id == m.c.step_id)
                 .where(m.c.run_id == run_id).order_by(m.c.id))
        if step_id is not None:
            query = query.where(m.c.step_id == step_id)
        if name is not None:
            query = query.where(m.c.name == name)

        def fetch(conn: Connection) -> list[MeasurementRecord]:
            out = []
            for row in conn.execute(query).mappings():
                out.append(MeasurementRecord(
                    id=row["id"], run_id=row["run_id"], step_id=row["step_id"],
                    step_name=row["step_name"], name=row["name"],
                    value=_decode_value(row["value"], row["value_text"], row["value_type"]),
                    unit=row["unit"], low=row["limit_low"], high=row["limit_high"],
                    nominal=row["limit_nominal"], limit_kind=row["limit_kind"],
                    limits_extra=row["limits_extra"], verdict=row["verdict"],
                    diagnosis=row["diagnosis"], at=row["at"], clock_s=row["clock_s"]))
            return out
        return self._read(fetch)

    def events(self, run_id: int) -> list[EventRecord]:
        """The events of a run, in recorded order."""
        query = sa.select(event_table).where(event_table.c.run_id == run_id) \
            .order_by(event_table.c.id)
        return self._read(lambda conn: [EventRecord(**dict(row))
                                        for row in conn.execute(query).mappings()])

    def station_events(self, station: str, *, kind: str | None = None,
                       since: datetime | None = None,
                       limit: int | None = 100) -> list[StationEventRecord]:
        """The events of a station outside runs, newest first: all kinds or one, those at or
        after ``since`` (a naive time is local time), at most ``limit`` (None: all)."""
        t = station_event_table
        query = sa.select(t).where(t.c.station == _text(station, "station", required=True))
        if kind is not None:
            query = query.where(t.c.kind == _text(kind, "station event kind"))
        if since is not None:
            query = query.where(t.c.at >= _utc(since, "since"))
        query = query.order_by(t.c.at.desc(), t.c.id.desc())
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
            query = query.limit(limit)
        return self._read(lambda conn: [StationEventRecord(**dict(row))
                                        for row in conn.execute(query).mappings()])

    def find_by_serial(self, serial: str) -> list[SerialHit]:
        """Every appearance of a serial number, newest run first: as a DUT, or as a module of a
        DUT (a module tested alone, then in a bank, shows up twice)."""

        def fetch(conn: Connection) -> list[SerialHit]:
            runs = self._run_records(conn, sa.select(run_table)
                                     .where(self._serial_filter(serial))
                                     .order_by(run_table.c.started_at.desc(),
                                               run_table.c.id.desc()))
            if not runs:
                return []
            by_run = {r.id: r for r in runs}
            duts = self._dut_records(conn, dut_table.c.run_id.in_(list(by_run)))
            hits: dict[int, list[SerialHit]] = {}
            for dut in duts:
                if dut.serial == serial:
                    hits.setdefault(dut.run_id, []).append(SerialHit(by_run[dut.run_id], dut))
                for module in dut.modules:
                    if module.serial == serial:
                        hits.setdefault(dut.run_id, []).append(
                            SerialHit(by_run[dut.run_id], dut, module))
            return [hit for r in runs for hit in hits.get(r.id, [])]
        return self._read(fetch)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_MS}")
        _switch_to_wal(cursor)  # readers never block the station's writes
        cursor.execute("PRAGMA synchronous = FULL")  # a commit survives a power cut too
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _switch_to_wal(cursor: Any) -> None:
    """Put the database in WAL mode, waiting out other openers as long as ``busy_timeout``.

    SQLite does not call its busy handler here: the switch reads the file header, then needs
    the exclusive lock, and a connection that already reads is refused at once when another
    holds the write lock (so that the two cannot deadlock). That happens when stations open
    one new database at the same moment: two convert it together, one is told "database is
    locked" in no time at all. WAL is a property of the file, so after a refusal another
    opener may already have switched it; trying again is enough.
    """
    deadline = time.monotonic() + _SQLITE_BUSY_TIMEOUT_MS / 1000
    pause = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


_VERSION: list[str | None] = []


def _package_version() -> str | None:
    if not _VERSION:
        try:
            from importlib.metadata import PackageNotFoundError, version
            try:
                _VERSION.append(version("bankhil"))
            except PackageNotFoundError:
                _VERSION.append(None)
        except ImportError:  # pragma: no cover
            _VERSION.append(None)
    return _VERSION[0]
