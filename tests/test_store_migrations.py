"""The result store's schema comes from the Alembic migrations in harness/migrations.

A new database is brought to head; a database made before migrations (the tables, no
``alembic_version``) is stamped at the baseline and upgraded, its rows kept; a database at head is
only read; one at a revision this code does not know, or whose tables are not the expected ones,
is refused with a one-line :class:`StoreError`. The ``url`` fixture (from test_store.py) runs each
test on SQLite and on PostgreSQL, the latter skipped without BANKHIL_PG_URL as there.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.dialects.postgresql import JSONB
from test_store import pg_admin, pg_url, url  # noqa: F401,F811 - test_store.py's backends

from harness.store import BASELINE_REVISION, ResultStore, StoreError, alembic_config, metadata

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 3, 1, 8, 0, 0, tzinfo=timezone.utc)
HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


# ---------------------------------------------------------------------------------------------
# A database as the store made it before migrations: a frozen copy of its tables, written here
# independently of the 0001 script so that the test checks the script against the real thing


def _pre_alembic_metadata() -> sa.MetaData:
    """The tables of harness/store.py as they were when the store ran ``metadata.create_all``."""
    time_type = sa.DateTime(timezone=True)
    json_type = sa.JSON().with_variant(JSONB(), "postgresql")
    fk = dict(ondelete="CASCADE")
    md = sa.MetaData()
    sa.Table("store_meta", md,
             sa.Column("key", sa.String(64), primary_key=True),
             sa.Column("value", sa.Text, nullable=False))
    sa.Table("run", md,
             sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
             sa.Column("uuid", sa.String(36), nullable=False, unique=True),
             sa.Column("station", sa.Text, nullable=False),
             sa.Column("operator", sa.Text, nullable=False),
             sa.Column("plan_name", sa.Text, nullable=False),
             sa.Column("plan_version", sa.Text),
             sa.Column("plan_hash", sa.Text),
             sa.Column("harness_version", sa.Text),
             sa.Column("emulated", sa.Boolean, nullable=False),
             sa.Column("started_at", time_type, nullable=False),
             sa.Column("ended_at", time_type),
             sa.Column("verdict", sa.String(16)),
             sa.Column("extra", json_type),
             sa.Index("ix_run_started_at", "started_at"),
             sa.Index("ix_run_station", "station"),
             sa.Index("ix_run_plan", "plan_name", "plan_version"))
    sa.Table("dut", md,
             sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
             sa.Column("run_id", sa.Integer, sa.ForeignKey("run.id", **fk), nullable=False),
             sa.Column("serial", sa.Text, nullable=False),
             sa.Column("model", sa.Text),
             sa.Column("firmware", sa.Text),
             sa.Index("ix_dut_run", "run_id"),
             sa.Index("ix_dut_serial", "serial"))
    sa.Table("dut_module", md,
             sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
             sa.Column("dut_id", sa.Integer, sa.ForeignKey("dut.id", **fk), nullable=False),
             sa.Column("position", sa.Text, nullable=False),
             sa.Column("serial", sa.Text),
             sa.Column("model", sa.Text),
             sa.Column("firmware", sa.Text),
             sa.Index("ix_dut_module_dut", "dut_id"),
             sa.Index("ix_dut_module_serial", "serial"))
    sa.Table("instrument", md,
             sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
             sa.Column("run_id", sa.Integer, sa.ForeignKey("run.id", **fk), nullable=False),
             sa.Column("role", sa.Text, nullable=False),
             sa.Column("driver", sa.Text),
             sa.Column("resource", sa.Text),
             sa.Column("identity", sa.Text),
             sa.Column("calibration_due", sa.Date),
             sa.Index("ix_instrument_run", "run_id"))
    sa.Table("step", md,
             sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
             sa.Column("run_id", sa.Integer, sa.ForeignKey("run.id", **fk), nullable=False),
             sa.Column("name", sa.Text, nullable=False),
             sa.Column("check_name", sa.Text),
             sa.Column("parameters", json_type),
             sa.Column("started_at", time_type, nullable=False),
             sa.Column("ended_at", time_type),
             sa.Column("verdict", sa.String(16)),
             sa.Column("duration_s", sa.Double),
             sa.Column("error", sa.Text),
             sa.Index("ix_step_run", "run_id"))
    sa.Table("measurement", md,
             sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
             sa.Column("run_id", sa.Integer, sa.ForeignKey("run.id", **fk), nullable=False),
             sa.Column("step_id", sa.Integer, sa.ForeignKey("step.id", **fk), nullable=False),
             sa.Column("name", sa.Text, nullable=False),
             sa.Column("value", sa.Double),
             sa.Column("value_text", sa.Text),
             sa.Column("value_type", sa.String(8), nullable=False),
             sa.Column("unit", sa.Text),
             sa.Column("limit_low", sa.Double),
             sa.Column("limit_high", sa.Double),
             sa.Column("limit_nominal", sa.Double),
             sa.Column("limit_kind", sa.Text),
             sa.Column("limits_extra", json_type),
             sa.Column("verdict", sa.String(16), nullable=False),
             sa.Column("diagnosis", sa.Text),
             sa.Column("at", time_type, nullable=False),
             sa.Column("clock_s", sa.Double),
             sa.Index("ix_measurement_run", "run_id"),
             sa.Index("ix_measurement_step", "step_id"),
             sa.Index("ix_measurement_name", "name"))
    sa.Table("event", md,
             sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
             sa.Column("run_id", sa.Integer, sa.ForeignKey("run.id", **fk), nullable=False),
             sa.Column("step_id", sa.Integer, sa.ForeignKey("step.id", **fk)),
             sa.Column("kind", sa.Text, nullable=False),
             sa.Column("text", sa.Text, nullable=False),
             sa.Column("at", time_type, nullable=False),
             sa.Column("clock_s", sa.Double),
             sa.Index("ix_event_run", "run_id"))
    return md


def _engine(db_url: str) -> sa.Engine:
    """A plain engine on the test's database, the way the store reaches it (psycopg 3)."""
    parsed = sa.engine.make_url(db_url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return sa.create_engine(parsed, poolclass=sa.pool.NullPool)


def _make_pre_alembic_store(db_url: str, *, without: str | None = None) -> int:
    """Write the database the old store wrote (tables, schema_version 1) and one run; its id.
    ``without``: a table to leave out, for a database that is not quite that."""
    md = _pre_alembic_metadata()
    if without:
        md.remove(md.tables[without])
    engine = _engine(db_url)
    try:
        with engine.begin() as conn:
            md.create_all(conn)
            conn.execute(md.tables["store_meta"].insert().values(key="schema_version", value="1"))
            run_id = conn.execute(md.tables["run"].insert().values(
                uuid="00000000-0000-4000-8000-000000000001", station="eol-old", operator="ana",
                plan_name="module_eol", plan_version="2", emulated=False,
                started_at=T0,
                verdict="pass", extra={"seed": 3})).inserted_primary_key[0]
            if "step" in md.tables and "measurement" in md.tables:
                step_id = conn.execute(md.tables["step"].insert().values(
                    run_id=run_id, name="ocv", started_at=T0)).inserted_primary_key[0]
                conn.execute(md.tables["measurement"].insert().values(
                    run_id=run_id, step_id=step_id, name="ocv_1", value=13.3, value_type="float",
                    unit="V", verdict="pass", at=T0))
        return int(run_id)
    finally:
        engine.dispose()


def _tables(db_url: str) -> set[str]:
    engine = _engine(db_url)
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


def _versions(db_url: str) -> list[str]:
    engine = _engine(db_url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return []
            return list(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars())
    finally:
        engine.dispose()


def _schema_differences(db_url: str, expected: sa.MetaData) -> list:
    engine = _engine(db_url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), expected)
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------------
# (1) a store made before migrations is stamped and upgraded, its rows kept


def test_a_store_made_before_migrations_is_stamped_and_keeps_its_rows(url):
    old_run = _make_pre_alembic_store(url)
    assert _versions(url) == []
    with ResultStore(url) as store:
        assert _versions(url) == [HEAD]
        run = store.run(old_run)
        assert (run.station, run.plan_version, run.emulated, run.verdict, run.extra) == \
            ("eol-old", "2", False, "pass", {"seed": 3})
        assert run.started_at == T0 and run.uuid == "00000000-0000-4000-8000-000000000001"
        (old,) = store.measurements(old_run)
        assert (old.name, old.value, old.unit, old.step_name) == ("ocv_1", 13.3, "V", "ocv")
        new_run = store.start_run(station="eol-new", operator="bo", plan_name="module_eol",
                                  emulated=True)
        step_id = store.start_step(new_run, "ocv")
        store.record_measurement(step_id, "ocv_1", 13.31, "V", {"low": 13.0}, "pass",
                                 clock_s=1.0)
        store.finish_run(new_run, "pass")
        assert [r.id for r in store.runs()] == [new_run, old_run]
    with ResultStore(url) as again:  # and it stays at head, opened as any other
        assert again.run(new_run).verdict == "pass" and _versions(url) == [HEAD]


def test_a_store_made_before_migrations_but_incomplete_is_refused_untouched(url):
    _make_pre_alembic_store(url, without="event")
    with pytest.raises(StoreError) as err:
        ResultStore(url)
    message = str(err.value)
    assert "\n" not in message
    assert "has no migration revision and its tables are not those of revision 0001" in message
    assert "table event is missing" in message
    assert _versions(url) == []  # nothing stamped, nothing created
    assert "event" not in _tables(url)


# ---------------------------------------------------------------------------------------------
# (2) a fresh store ends at head; a store at head is only read


def test_a_fresh_store_ends_at_head(url):
    with ResultStore(url) as store:
        store.start_run(station="s", operator="o", plan_name="p", emulated=True)
        with store.engine.connect() as conn:
            assert conn.execute(sa.text(
                "SELECT value FROM store_meta WHERE key = 'schema_version'")).scalar() == "1"
    assert _versions(url) == [HEAD]


def test_a_store_at_head_opens_without_writing(url):
    ResultStore(url).close()
    statements: list[str] = []

    def seen(conn, cursor, statement, *args) -> None:
        statements.append(statement)

    sa.event.listen(sa.Engine, "before_cursor_execute", seen)
    try:
        ResultStore(url).close()
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", seen)
    verbs = {s.split(None, 1)[0].upper() for s in statements}
    assert statements and verbs.isdisjoint(
        {"CREATE", "INSERT", "UPDATE", "DELETE", "ALTER", "DROP", "BEGIN"}), statements
    assert not any("advisory" in s.lower() for s in statements)  # no schema lock asked for


# ---------------------------------------------------------------------------------------------
# (3) a revision this code does not know, or tables that are not the expected ones, are refused


def test_a_store_of_an_unknown_revision_is_refused(url):
    ResultStore(url).close()
    engine = _engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = 'f00dcafe9999'"))
    finally:
        engine.dispose()
    with pytest.raises(StoreError) as err:
        ResultStore(url)
    message = str(err.value)
    assert "\n" not in message and message.startswith("result store ")
    assert f"is at schema revision f00dcafe9999, which this harness does not know (its newest " \
        f"is {HEAD}; a newer harness wrote it?)" in message
    assert _versions(url) == ["f00dcafe9999"]  # left as it was


def test_a_store_at_head_with_other_tables_is_refused(url):
    with ResultStore(url) as store:
        with store.engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE step DROP COLUMN error"))
            conn.execute(sa.text("CREATE TABLE someone_elses (x INTEGER)"))  # tolerated
            conn.execute(sa.text("CREATE INDEX ix_reports ON run (verdict)"))  # tolerated
    with pytest.raises(StoreError, match=r"is at schema revision \w+ but its tables differ: "
                                         r"table step lacks column\(s\) error: use another "
                                         r"database or repair it$"):
        ResultStore(url)


# ---------------------------------------------------------------------------------------------
# (4) the migrations make exactly the tables the store's code declares


def test_the_migrations_make_exactly_the_store_metadata(url):
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            command.upgrade(alembic_config(conn), "head")
            conn.commit()
    finally:
        engine.dispose()
    assert _versions(url) == [HEAD]
    assert _schema_differences(url, metadata) == []


def test_the_baseline_revision_is_the_schema_of_stores_made_before_migrations(url):
    _make_pre_alembic_store(url)
    baseline = ScriptDirectory.from_config(alembic_config()).get_revision(BASELINE_REVISION)
    assert _schema_differences(url, baseline.module.schema()) == []


def test_downgrade_to_base_and_up_again(url):
    ResultStore(url).close()
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            command.downgrade(alembic_config(conn), "base")
            conn.commit()
            assert set(sa.inspect(conn).get_table_names()) == {"alembic_version"}
    finally:
        engine.dispose()
    with ResultStore(url) as store:  # an emptied database is a new one
        store.start_run(station="s", operator="o", plan_name="p", emulated=True)
    assert _versions(url) == [HEAD]


# ---------------------------------------------------------------------------------------------
# Stations (processes) opening one new database at the same moment


OPENER = textwrap.dedent("""
    import sys, time
    from harness.store import ResultStore
    url, go, n = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    time.sleep(max(0.0, go - time.time()))
    with ResultStore(url) as store:
        store.start_run(station=f"st-{n}", operator="ci", plan_name="p", emulated=True)
    print("ok", flush=True)
""")


def test_processes_opening_one_new_database_together_all_succeed(url, tmp_path):
    script = tmp_path / "opener.py"
    script.write_text(OPENER)
    go = time.time() + 3.0  # after every interpreter has imported the harness
    procs = [subprocess.Popen([sys.executable, str(script), url, str(go), str(n)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n in range(4)]
    results = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, [err for _, err in results]
    assert _versions(url) == [HEAD]
    with ResultStore(url) as store:
        assert sorted(r.station for r in store.runs()) == [f"st-{n}" for n in range(4)]


def test_a_new_sqlite_file_another_opener_is_writing_is_waited_for_not_refused(tmp_path):
    """The race behind the test above, made certain: another connection holds the write lock of
    a new file (in its old journal mode) while this store opens it. SQLite refuses the switch to
    WAL at once, without its busy handler; the store waits the lock out instead."""
    path = tmp_path / "results.sqlite"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.3, other.execute, ("COMMIT",))
        release.start()
        started = time.monotonic()
        with ResultStore(f"sqlite:///{path}") as store:
            store.start_run(station="st", operator="ci", plan_name="p", emulated=True)
        assert time.monotonic() - started >= 0.25  # it did wait for the other writer
        release.join()
    finally:
        other.close()
    assert _versions(f"sqlite:///{path}") == [HEAD]


# ---------------------------------------------------------------------------------------------
# (5) revision 0002: station_event, a table of events at a station outside any run


def _make_store_at(db_url: str, revision: str) -> int:
    """A database brought to ``revision`` by the shipped migrations (as a harness of that
    revision made it), with one run, step and measurement written into 0001's tables; the
    run's id."""
    tables = ScriptDirectory.from_config(alembic_config()).get_revision(
        BASELINE_REVISION).module.schema().tables
    engine = _engine(db_url)
    try:
        with engine.connect() as conn:
            command.upgrade(alembic_config(conn), revision)
            run_id = conn.execute(tables["run"].insert().values(
                uuid="00000000-0000-4000-8000-000000000002", station="eol-1", operator="ana",
                plan_name="module_eol", plan_version="3", emulated=False, started_at=T0,
                verdict="fail", extra={"seed": 5})).inserted_primary_key[0]
            step_id = conn.execute(tables["step"].insert().values(
                run_id=run_id, name="discharge_ocp_trip", started_at=T0)).inserted_primary_key[0]
            conn.execute(tables["measurement"].insert().values(
                run_id=run_id, step_id=step_id, name="ocp_trip_a", value=151.0,
                value_type="float", unit="A", verdict="fail", at=T0))
            conn.commit()
        return int(run_id)
    finally:
        engine.dispose()


def test_a_store_at_0001_is_upgraded_to_0002_with_its_runs_intact(url):
    old_run = _make_store_at(url, "0001")
    assert _versions(url) == ["0001"] and "station_event" not in _tables(url)
    with ResultStore(url) as store:
        assert _versions(url) == [HEAD]  # 0002, or whatever is newest
        run = store.run(old_run)
        assert (run.uuid, run.station, run.verdict, run.extra, run.started_at) == \
            ("00000000-0000-4000-8000-000000000002", "eol-1", "fail", {"seed": 5}, T0)
        (m,) = store.measurements(old_run)
        assert (m.step_name, m.name, m.value, m.unit, m.verdict) == \
            ("discharge_ocp_trip", "ocp_trip_a", 151.0, "A", "fail")
        event_id = store.record_station_event(
            "eol-1", "locked", "3 consecutive FAIL at discharge_ocp_trip", run_uuid=run.uuid,
            at=T0)
        (event,) = store.station_events("eol-1")
        assert (event.id, event.kind, event.run_uuid, event.at) == \
            (event_id, "locked", run.uuid, T0)
        with store.engine.connect() as conn:  # builds before migrations can still share it
            assert conn.execute(sa.text(
                "SELECT value FROM store_meta WHERE key = 'schema_version'")).scalar() == "1"
    assert _schema_differences(url, metadata) == []
    with ResultStore(url) as again:
        assert [e.id for e in again.station_events("eol-1")] == [event_id]


def test_a_store_made_before_migrations_gets_station_event(url):
    old_run = _make_pre_alembic_store(url)
    with ResultStore(url) as store:
        assert "station_event" in _tables(url) and _versions(url) == [HEAD]
        assert store.run(old_run).station == "eol-old"
        store.record_station_event("eol-old", "mes", "MES refused the result: HTTP 503",
                                   serial="BANK-0001", at=T0)
        assert [e.serial for e in store.station_events("eol-old")] == ["BANK-0001"]


def test_a_fresh_store_has_station_event(url):
    with ResultStore(url) as store:
        assert store.station_events("eol-1") == []
        with store.engine.connect() as conn:
            inspector = sa.inspect(conn)
            columns = {c["name"]: c for c in inspector.get_columns("station_event")}
            indexes = {i["name"]: i["column_names"] for i in inspector.get_indexes("station_event")}
    assert list(columns) == ["id", "station", "kind", "text", "operator", "serial", "run_uuid",
                             "at"]
    assert [name for name, c in columns.items() if c["nullable"]] == \
        ["operator", "serial", "run_uuid"]
    assert indexes == {"ix_station_event_station_at": ["station", "at"]}


def test_downgrade_to_0001_drops_only_station_event(url):
    old_run = _make_store_at(url, "head")
    with ResultStore(url) as store:
        store.record_station_event("eol-1", "unlocked", "reason: fixture cleaned", operator="bo")
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            command.downgrade(alembic_config(conn), "0001")
            conn.commit()
    finally:
        engine.dispose()
    assert _versions(url) == ["0001"] and "station_event" not in _tables(url)
    baseline = ScriptDirectory.from_config(alembic_config()).get_revision(BASELINE_REVISION)
    assert _schema_differences(url, baseline.module.schema()) == []
    with ResultStore(url) as store:  # and up again, the run kept, the table new and empty
        assert store.run(old_run).verdict == "fail" and store.station_events("eol-1") == []
