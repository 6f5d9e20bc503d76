"""The result store (harness/store.py) on SQLite and, when BANKHIL_PG_URL is set, on PostgreSQL.

Every test that takes the ``url`` fixture runs on both backends. The PostgreSQL half is skipped
when BANKHIL_PG_URL is not set (start a server with ``eval "$(bash .ci/postgres.sh)"``) and fails
instead when BANKHIL_REQUIRE_POSTGRES=1, as in CI. Each PostgreSQL test gets a schema of its own
(through the URL's ``options=-csearch_path=...``), dropped afterwards.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from required_tools import required
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from harness.store import (
    DEFAULT_URL, MEASUREMENT_VERDICTS, ResultStore, StoreError, UnknownRecord, mask_url,
)

ROOT = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("BANKHIL_PG_URL", "").strip()
REQUIRE_PG = required("BANKHIL_REQUIRE_POSTGRES")
T0 = datetime(2026, 3, 1, 8, 0, 0, tzinfo=timezone.utc)


def _plain(url) -> str:
    """A URL as text with its password (str(URL) hides it)."""
    return url.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_admin():
    if not PG_URL:
        message = ("PostgreSQL tests need BANKHIL_PG_URL; start a local server with "
                   "eval \"$(bash .ci/postgres.sh)\"")
        if REQUIRE_PG:
            pytest.fail(f"BANKHIL_REQUIRE_POSTGRES=1 but BANKHIL_PG_URL is not set. {message}")
        pytest.skip(message)
    url = make_url(PG_URL)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    engine = sa.create_engine(url, connect_args={"connect_timeout": 10})
    yield engine
    engine.dispose()


@pytest.fixture
def pg_url(pg_admin):
    """A URL whose connections see only a fresh schema of this test."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with pg_admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    yield _plain(make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"}))
    with pg_admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{(tmp_path / 'results.sqlite').as_posix()}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(url):
    with ResultStore(url) as s:
        yield s


def _run(store: ResultStore, **overrides) -> int:
    fields = dict(station="eol-1", operator="ana", plan_name="module_eol", plan_version="3",
                  plan_hash="sha256:ab12", harness_version="0.1.0", emulated=True, started_at=T0)
    fields.update(overrides)
    return store.start_run(**fields)


# ---------------------------------------------------------------------------------------------
# A whole run, written and read back


def test_a_whole_run_reads_back_as_written(store):
    run_id = _run(store, extra={"seed": 7, "scenario": "healthy"})
    dut_id = store.add_dut(run_id, "BANK-0001", "LFP-48V-2P", firmware="master 2.1.0", modules=[
        {"position": "S1P1", "serial": "MOD-1001", "firmware": "bms 1.4.2"},
        {"position": "S1P2", "serial": "MOD-1002", "firmware": "bms 1.4.3", "model": "LFP-12"},
    ])
    store.add_instrument(run_id, "supply", "keysight_n5700", "TCPIP::127.0.0.1::5025::SOCKET",
                         "KEYSIGHT,N5767A,US1234,A.01", date(2027, 1, 31))
    store.add_instrument(run_id, "dmm", "keysight_34465a", "TCPIP::127.0.0.1::5026::SOCKET",
                         "Keysight,34465A,MY5,A.03", "2026-02-01")
    step_id = store.start_step(run_id, "open_circuit_voltage", "checks.ocv",
                               {"rest_s": 60, "channels": [1, 2]}, started_at=T0)
    m1 = store.record_measurement(step_id, "ocv_module_1", 13.31, "V",
                                  {"low": 13.0, "high": 13.6, "nominal": 13.3, "kind": "range"},
                                  "pass", at=T0 + timedelta(seconds=61), clock_s=61.0)
    m2 = store.record_measurement(step_id, "ocv_module_2", 12.71, "V",
                                  {"low": 13.0, "high": 13.6, "kind": "range"}, "fail",
                                  diagnosis="low OCV: a weak or self-discharging cell",
                                  at=T0 + timedelta(seconds=62))
    event_id = store.record_event(run_id, "safe_state", "load off, supply off, contactors open",
                                  at=T0 + timedelta(seconds=63), step_id=step_id, clock_s=63.0)
    store.finish_step(step_id, "fail", 63.5, "ocv_module_2 below 13.0 V",
                      ended_at=T0 + timedelta(seconds=63.5))
    store.finish_run(run_id, "fail", ended_at=T0 + timedelta(seconds=64))

    run = store.run(run_id)
    assert (run.station, run.operator, run.plan_name, run.plan_version, run.plan_hash,
            run.harness_version, run.emulated) == \
        ("eol-1", "ana", "module_eol", "3", "sha256:ab12", "0.1.0", True)
    assert run.started_at == T0 and run.ended_at == T0 + timedelta(seconds=64)
    assert run.verdict == "fail" and run.finished and run.serials == ("BANK-0001",)
    assert run.extra == {"seed": 7, "scenario": "healthy"}
    assert len(run.uuid) == 36 and store.run_by_uuid(run.uuid) == run

    (dut,) = store.duts(run_id)
    assert (dut.id, dut.serial, dut.model, dut.firmware) == \
        (dut_id, "BANK-0001", "LFP-48V-2P", "master 2.1.0")
    assert [(m.position, m.serial, m.model, m.firmware) for m in dut.modules] == [
        ("S1P1", "MOD-1001", None, "bms 1.4.2"), ("S1P2", "MOD-1002", "LFP-12", "bms 1.4.3")]

    supply, dmm = store.instruments(run_id)
    assert (supply.role, supply.driver, supply.identity, supply.calibration_due) == \
        ("supply", "keysight_n5700", "KEYSIGHT,N5767A,US1234,A.01", date(2027, 1, 31))
    assert dmm.calibration_due == date(2026, 2, 1)
    assert dmm.calibration_overdue(T0) and not supply.calibration_overdue(T0)

    (step,) = store.steps(run_id)
    assert (step.id, step.name, step.check, step.parameters) == \
        (step_id, "open_circuit_voltage", "checks.ocv", {"rest_s": 60, "channels": [1, 2]})
    assert (step.verdict, step.duration_s, step.error) == \
        ("fail", 63.5, "ocv_module_2 below 13.0 V")
    assert step.started_at == T0 and step.ended_at == T0 + timedelta(seconds=63.5)

    first, second = store.measurements(run_id)
    assert (first.id, first.name, first.value, first.unit, first.verdict, first.diagnosis) == \
        (m1, "ocv_module_1", 13.31, "V", "pass", None)
    assert first.limits == {"low": 13.0, "high": 13.6, "nominal": 13.3, "kind": "range"}
    assert first.step_name == "open_circuit_voltage" and first.step_id == step_id
    assert first.at == T0 + timedelta(seconds=61) and first.clock_s == 61.0
    assert (second.id, second.verdict, second.diagnosis) == \
        (m2, "fail", "low OCV: a weak or self-discharging cell")
    assert second.nominal is None and second.clock_s is None
    assert [m.id for m in store.measurements(run_id, name="ocv_module_2")] == [m2]
    assert [m.id for m in store.measurements(run_id, step_id=step_id)] == [m1, m2]

    (event,) = store.events(run_id)
    assert (event.id, event.kind, event.text, event.step_id, event.at, event.clock_s) == \
        (event_id, "safe_state", "load off, supply off, contactors open", step_id,
         T0 + timedelta(seconds=63), 63.0)


def test_a_run_never_finished_reads_as_unfinished(store):
    run_id = _run(store)
    step_id = store.start_step(run_id, "s", "c", {})
    store.record_measurement(step_id, "v", 1.0, "V", None, "pass")
    run = store.run(run_id)
    assert run.verdict is None and run.ended_at is None and not run.finished
    (step,) = store.steps(run_id)
    assert step.verdict is None and step.ended_at is None


def test_defaults_harness_version_uuid_and_times(store):
    before = datetime.now(timezone.utc)
    run_id = store.start_run(station="s", operator="o", plan_name="p", emulated=False)
    step_id = store.start_step(run_id, "s")
    store.record_measurement(step_id, "v", 1.0, None, None, "pass")
    store.finish_run(run_id, "pass")
    after = datetime.now(timezone.utc)
    run = store.run(run_id)
    from importlib.metadata import version
    assert run.harness_version == version("bankhil")
    assert run.emulated is False
    assert before <= run.started_at <= run.ended_at <= after
    assert before <= store.measurements(run_id)[0].at <= after
    assert store.steps(run_id)[0].parameters is None


def test_station_and_plan_files_as_yaml_gives_them(store):
    # YAML reads `version: 1.2` as a float and `calibration_due: 2027-01-31` as a date; a station
    # entry may leave driver, resource or calibration_due empty; a step may have no parameters
    run_id = _run(store, plan_version=1.2)
    assert store.run(run_id).plan_version == "1.2"
    store.add_instrument(run_id, "load", "", "", "(no answer: timeout)", "")
    store.add_instrument(run_id, "dmm", "keysight_34465a", None, None, date(2027, 1, 31))
    assert [(i.driver, i.resource, i.calibration_due) for i in store.instruments(run_id)] == [
        ("", "", None), ("keysight_34465a", None, date(2027, 1, 31))]
    step_id = store.start_step(run_id, "idn", "", {})
    assert store.steps(run_id)[0].parameters == {}
    # limits as the harness's Limits.as_dict() gives them: extra keys kept, empty ones dropped
    store.record_measurement(step_id, "firmware", "1.4.2", "", {
        "kind": "equals", "low": None, "high": None, "nominal": None, "pct": None,
        "equals": "1.4.2", "marginal_pct": None, "unit": ""}, "pass")
    store.record_measurement(step_id, "capacity", 99.1, "Ah", {
        "kind": "within_pct", "low": 95.0, "high": 105.0, "nominal": 100.0, "pct": 5.0,
        "equals": None, "marginal_pct": 10.0, "unit": "Ah"}, "marginal")
    firmware, capacity = store.measurements(run_id)
    assert firmware.value == "1.4.2" and firmware.limits == {
        "low": None, "high": None, "nominal": None, "kind": "equals", "equals": "1.4.2",
        "unit": ""}
    assert capacity.limits == {"low": 95.0, "high": 105.0, "nominal": 100.0,
                               "kind": "within_pct", "pct": 5.0, "marginal_pct": 10.0,
                               "unit": "Ah"}


# ---------------------------------------------------------------------------------------------
# Values, limits and times


def test_values_of_every_kind_come_back_as_recorded(store):
    run_id = _run(store)
    step_id = store.start_step(run_id, "values")
    cases = {
        "float": 3.25, "nan": float("nan"), "inf": math.inf, "-inf": -math.inf, "none": None,
        "int": 12, "big_int": 2**62 + 1, "bool": True, "false": False, "text": "1.4.2",
        "np_float32": np.float32(0.5), "np_int": np.int64(-7), "np_nan": np.float64("nan"),
        "np_bool": np.bool_(True), "zero_d": np.array(2.5),
    }
    for name, value in cases.items():
        store.record_measurement(step_id, name, value, "", None,
                                 "error" if value is None else "pass")
    got = {m.name: m.value for m in store.measurements(run_id)}
    assert math.isnan(got.pop("nan")) and math.isnan(got.pop("np_nan"))
    assert got == {"float": 3.25, "inf": math.inf, "-inf": -math.inf, "none": None, "int": 12,
                   "big_int": 2**62 + 1, "bool": True, "false": False, "text": "1.4.2",
                   "np_float32": 0.5, "np_int": -7, "np_bool": True, "zero_d": 2.5}
    assert type(got["int"]) is int and type(got["bool"]) is bool and type(got["float"]) is float


def test_nan_readings_do_not_poison_sql_aggregates(store):
    run_id = _run(store)
    step_id = store.start_step(run_id, "noise")
    for value in (1.0, float("nan"), 3.0, None):
        store.record_measurement(step_id, "v", value, "V", None, "pass")
    with store.engine.connect() as conn:
        mean = conn.execute(sa.text("SELECT AVG(value) FROM measurement WHERE run_id = :r"),
                            {"r": run_id}).scalar()
    assert float(mean) == 2.0


@dataclass
class _Limits:
    low: float | None = None
    high: float | None = None
    nominal: float | None = None
    kind: str | None = None
    tolerance_pct: float | None = None


class _Verdict(enum.Enum):
    PASS = "pass"
    MARGINAL = "marginal"


def test_limits_in_any_shape(store):
    run_id = _run(store)
    step_id = store.start_step(run_id, "limits")
    store.record_measurement(step_id, "max_only", 1.0, "A", {"high": 5}, "pass")
    store.record_measurement(step_id, "extra", 1.0, "A",
                             {"nominal": 1.0, "kind": "tolerance", "tolerance_pct": 2.5,
                              "guard_band": np.float64(0.1)}, "pass")
    store.record_measurement(step_id, "object", 1.0, "A", _Limits(low=0, high=math.inf), "pass")
    store.record_measurement(step_id, "nan_limit", 1.0, "A", {"low": float("nan")}, "pass")
    store.record_measurement(step_id, "none", 1.0, "A", None, _Verdict.MARGINAL)
    got = {m.name: m for m in store.measurements(run_id)}
    assert got["max_only"].limits == {"low": None, "high": 5.0, "nominal": None, "kind": None}
    assert got["extra"].limits == {"low": None, "high": None, "nominal": 1.0, "kind": "tolerance",
                                   "tolerance_pct": 2.5, "guard_band": 0.1}
    assert (got["object"].low, got["object"].high) == (0.0, math.inf)
    assert got["nan_limit"].low is None
    assert got["none"].limits == {"low": None, "high": None, "nominal": None, "kind": None}
    assert got["none"].verdict == "marginal"


def test_times_are_stored_as_utc_and_read_back_aware(store):
    run_id = _run(store, started_at=datetime(2026, 3, 1, 10, 0,
                                             tzinfo=timezone(timedelta(hours=2))))
    assert store.run(run_id).started_at == T0
    assert store.run(run_id).started_at.tzinfo == timezone.utc
    naive = datetime(2026, 3, 1, 9, 30, 15, 250000)  # local time, as datetime.now() gives
    step_id = store.start_step(run_id, "t")
    store.record_measurement(step_id, "v", 1.0, "V", None, "pass", at=naive)
    assert store.measurements(run_id)[0].at == naive.astimezone(timezone.utc)


def test_parameters_are_kept_as_plain_json(store):
    run_id = _run(store)
    step_id = store.start_step(run_id, "p", "c", {
        "current_a": np.float64(2.5), "cycles": np.int32(3), "nan": float("nan"),
        "path": Path("fixtures/x.yaml"), "nested": {"list": (1, 2), "arr": np.array([1.5, 2])},
        "verdict": _Verdict.PASS,
    })
    assert store.steps(run_id)[0].id == step_id
    assert store.steps(run_id)[0].parameters == {
        "current_a": 2.5, "cycles": 3, "nan": "nan", "path": "fixtures/x.yaml",
        "nested": {"list": [1, 2], "arr": [1.5, 2.0]}, "verdict": "pass"}


# ---------------------------------------------------------------------------------------------
# Queries for reports and compare


def test_runs_newest_first_with_filters(store):
    ids = []
    for i, (station, serial, emulated) in enumerate(
            [("eol-1", "MOD-1", True), ("eol-2", "MOD-2", False), ("eol-1", "MOD-1", False)]):
        run_id = _run(store, station=station, emulated=emulated,
                      started_at=T0 + timedelta(minutes=i))
        store.add_dut(run_id, serial, "LFP-12")
        ids.append(run_id)
    bank = _run(store, station="lab-1", plan_name="bank_qual",
               started_at=T0 + timedelta(minutes=10))
    store.add_dut(bank, "BANK-9", "LFP-48V", modules=[{"position": 1, "serial": "MOD-1"},
                                                       {"position": 2, "serial": "MOD-3"}])
    assert [r.id for r in store.runs()] == [bank, ids[2], ids[1], ids[0]]
    assert [r.id for r in store.runs(limit=2)] == [bank, ids[2]]
    assert [r.id for r in store.runs("MOD-1")] == [bank, ids[2], ids[0]]
    assert [r.id for r in store.runs("MOD-1", station="eol-1")] == [ids[2], ids[0]]
    assert [r.id for r in store.runs(plan_name="bank_qual")] == [bank]
    assert [r.id for r in store.runs(emulated=False)] == [ids[2], ids[1]]
    assert store.runs("NOPE") == []
    assert store.runs("MOD-3")[0].serials == ("BANK-9",)


def test_find_by_serial_shows_a_module_alone_and_in_a_bank(store):
    alone = _run(store, started_at=T0)
    store.add_dut(alone, "MOD-7", "LFP-12", modules=[{"position": "M", "serial": "MOD-7",
                                                      "firmware": "1.0"}])
    bank = _run(store, plan_name="bank", started_at=T0 + timedelta(hours=1))
    store.add_dut(bank, "BANK-1", "LFP-24V", modules=[
        {"position": "S1", "serial": "MOD-6", "firmware": "1.1"},
        {"position": "S2", "serial": "MOD-7", "firmware": "1.1"}])
    hits = store.find_by_serial("MOD-7")
    assert [(h.run.id, h.dut.serial, h.module and h.module.position) for h in hits] == [
        (bank, "BANK-1", "S2"), (alone, "MOD-7", None), (alone, "MOD-7", "M")]
    assert hits[0].module.firmware == "1.1"
    assert store.find_by_serial("BANK-1")[0].module is None
    assert store.find_by_serial("unknown") == []


# ---------------------------------------------------------------------------------------------
# Committed as measured


def test_each_write_is_visible_to_another_connection_at_once(url):
    writer, reader = ResultStore(url), ResultStore(url)
    try:
        run_id = _run(writer)
        step_id = writer.start_step(run_id, "s")
        for i in range(3):
            writer.record_measurement(step_id, f"v{i}", float(i), "V", None, "pass")
            assert len(reader.measurements(run_id)) == i + 1
        writer.record_event(run_id, "safe_state", "all off")
        assert [e.kind for e in reader.events(run_id)] == ["safe_state"]
    finally:
        writer.close()
        reader.close()


WRITER = textwrap.dedent("""
    import sys
    from harness.store import ResultStore
    store = ResultStore(sys.argv[1])
    run_id = store.start_run(station="kill", operator="ci", plan_name="loop", emulated=True)
    store.add_dut(run_id, "KILL-1", "LFP-12")
    step_id = store.start_step(run_id, "loop", "kill", {})
    print("run", run_id, flush=True)
    for i in range(200_000):
        mid = store.record_measurement(step_id, f"m{i}", float(i), "V", {"low": 0.0}, "pass")
        print(mid, flush=True)
""")


def test_a_killed_writer_keeps_every_committed_measurement(url, tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.Popen([sys.executable, str(script), url], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while len(lines) < 40 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(lines) >= 40, f"writer wrote {len(lines)} lines: {proc.stderr.read()}"
        run_id = int(lines[0].split()[1])
        with ResultStore(url) as peek:  # readers see the rows while the writer still writes
            assert len(peek.measurements(run_id)) >= 30
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        reader.join(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    acknowledged = [int(line) for line in lines[1:]
                    if line.endswith("\n") and line[:-1].isdigit()]  # whole lines only
    assert len(acknowledged) >= 39

    with ResultStore(url) as store:
        rows = store.measurements(run_id)
        ids = [m.id for m in rows]
        assert set(acknowledged) <= set(ids)  # nothing acknowledged was lost
        assert len(ids) <= len(acknowledged) + 1  # at most the one in flight, whole
        assert [m.name for m in rows] == [f"m{i}" for i in range(len(rows))]
        assert all(m.value == float(i) and m.low == 0.0 for i, m in enumerate(rows))
        assert not store.run(run_id).finished
        assert store.runs("KILL-1")[0].id == run_id
        if store.dialect == "sqlite":
            with store.engine.connect() as conn:
                assert conn.execute(sa.text("PRAGMA integrity_check")).scalar() == "ok"


def test_threads_share_one_store(store):
    run_id = _run(store)
    steps = [store.start_step(run_id, f"s{i}") for i in range(4)]
    errors: list[BaseException] = []

    def work(step_id: int) -> None:
        try:
            for j in range(15):
                store.record_measurement(step_id, f"v{j}", float(j), "V", None, "pass")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in steps]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert len(store.measurements(run_id)) == 60


def test_stations_opening_a_fresh_database_together(url):
    stores: list[ResultStore] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def open_one(n: int) -> None:
        try:
            s = ResultStore(url)
            with lock:
                stores.append(s)
            _run(s, station=f"st-{n}")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=open_one, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert not errors, errors
        assert sorted(r.station for r in stores[0].runs()) == [f"st-{n}" for n in range(4)]
    finally:
        for s in stores:
            s.close()


def test_reopening_keeps_the_data(url):
    with ResultStore(url) as first:
        run_id = _run(first)
    with ResultStore(url) as second:
        assert second.run(run_id).station == "eol-1"


# ---------------------------------------------------------------------------------------------
# Bad input: a clear error, nothing already stored lost


def test_bad_arguments_are_refused_clearly(store):
    run_id = _run(store)
    step_id = store.start_step(run_id, "s")
    store.record_measurement(step_id, "kept", 1.0, "V", None, "pass")
    with pytest.raises(ValueError, match=r"verdict must be one of pass, fail, marginal, recorded, error; "
                                         r"got 'ok'"):
        store.record_measurement(step_id, "v", 1.0, "V", None, "ok")
    with pytest.raises(ValueError, match="skipped"):
        store.finish_step(step_id, "passed")
    with pytest.raises(ValueError, match="aborted"):
        store.finish_run(run_id, "skipped")
    with pytest.raises(TypeError, match="single value"):
        store.record_measurement(step_id, "v", np.array([1.0, 2.0]), "V", None, "pass")
    with pytest.raises(TypeError, match="must be a number, bool, string or None"):
        store.record_measurement(step_id, "v", [1.0], "V", None, "pass")
    with pytest.raises(TypeError, match="limits.high must be a number"):
        store.record_measurement(step_id, "v", 1.0, "V", {"high": "5 V"}, "pass")
    with pytest.raises(TypeError, match="must be a datetime"):
        store.record_measurement(step_id, "v", 1.0, "V", None, "pass", at=12.5)
    with pytest.raises(ValueError, match=r"module 0: unknown key\(s\) fw; allowed: position"):
        store.add_dut(run_id, "B", "m", modules=[{"position": 1, "fw": "1.0"}])
    with pytest.raises(ValueError, match="calibration_due must be an ISO date"):
        store.add_instrument(run_id, "dmm", "d", calibration_due="next spring")
    with pytest.raises(ValueError, match="station must not be empty"):
        _run(store, station=" ")
    with pytest.raises(TypeError, match="emulated must be True or False"):
        _run(store, emulated="yes")
    with pytest.raises(UnknownRecord, match="has no step 999999"):
        store.record_measurement(999999, "v", 1.0, "V", None, "pass")
    with pytest.raises(UnknownRecord, match="has no run 999999"):
        store.start_step(999999, "s")
    with pytest.raises(UnknownRecord, match="has no run 999999"):
        store.finish_run(999999, "pass")
    with pytest.raises(UnknownRecord):
        store.run(999999)
    other = _run(store)
    with pytest.raises(ValueError, match=f"step {step_id} does not belong to run {other}"):
        store.record_event(other, "safe_state", "x", step_id=step_id)
    assert [m.name for m in store.measurements(run_id)] == ["kept"]
    assert store.duts(run_id) == [] and store.instruments(run_id) == []
    assert sorted(MEASUREMENT_VERDICTS) == ["error", "fail", "marginal", "pass", "recorded"]


def test_a_failed_write_names_the_store_without_the_password(store):
    run_id = _run(store)
    step_id = store.start_step(run_id, "s")
    with store.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE measurement"))
    with pytest.raises(StoreError) as err:
        store.record_measurement(step_id, "v", 1.0, "V", None, "pass")
    message = str(err.value)
    assert "could not record measurement 'v'" in message and store.display_url in message
    if store.url.password:
        assert store.url.password not in message and "***" in message


# ---------------------------------------------------------------------------------------------
# Opening: default file, paths, bad URLs


def test_default_store_is_reports_results_sqlite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert DEFAULT_URL == "sqlite:///reports/results.sqlite"
    with ResultStore() as store:
        _run(store)
        assert store.dialect == "sqlite"
        with store.engine.connect() as conn:  # durable commits, readers beside the writer
            pragma = lambda name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
            assert (pragma("journal_mode"), pragma("synchronous"), pragma("foreign_keys")) == \
                ("wal", 2, 1)
    assert (tmp_path / "reports" / "results.sqlite").is_file()


def test_a_plain_path_is_a_sqlite_file(tmp_path):
    for target in (tmp_path / "a" / "b.sqlite", str(tmp_path / "c" / "d.sqlite")):
        with ResultStore(target) as store:
            _run(store)
        assert Path(target).is_file()


def test_bad_urls_fail_clearly(tmp_path):
    with pytest.raises(StoreError, match="not a database URL"):
        ResultStore("no such scheme://x")
    with pytest.raises(StoreError, match="unsupported database 'mysql'"):
        ResultStore("mysql://user:hunter2@db.example/results")
    with pytest.raises(StoreError, match="in-memory database"):
        ResultStore("sqlite://")
    with pytest.raises(StoreError, match="URL is empty"):
        ResultStore("  ")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot create folder"):
        ResultStore(blocker / "sub" / "r.sqlite")
    not_a_db = tmp_path / "notes.sqlite"
    not_a_db.write_text("this is not a database, it is a text file that is long enough " * 20)
    with pytest.raises(StoreError, match=r"notes\.sqlite.*cannot open"):
        ResultStore(not_a_db)


def test_an_unreachable_server_fails_fast_without_the_password():
    url = "postgresql://station:s3cret-pw@127.0.0.1:1/results"
    started = time.monotonic()
    with pytest.raises(StoreError) as err:
        ResultStore(url)
    message = str(err.value)
    assert "postgresql+psycopg://station:***@127.0.0.1:1/results" in message
    assert "s3cret-pw" not in message and "cannot open" in message
    assert time.monotonic() - started < 15
    assert mask_url(url) == "postgresql://station:***@127.0.0.1:1/results"
    assert mask_url("not a url at all") == "not a url at all"


def test_a_database_of_another_schema_version_is_refused(url):
    # no alembic_version: taken as made before migrations only with the version those builds wrote
    with ResultStore(url) as store:
        with store.engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE alembic_version"))
            conn.execute(sa.text("UPDATE store_meta SET value = '999' "
                                 "WHERE key = 'schema_version'"))
    with pytest.raises(StoreError, match="schema version 999; this harness knows version 1"):
        ResultStore(url)


def test_a_database_missing_a_column_is_refused(url):
    with ResultStore(url) as store:
        with store.engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE measurement DROP COLUMN clock_s"))
    with pytest.raises(StoreError, match="table measurement lacks column.s. clock_s"):
        ResultStore(url)


def test_postgres_urls_use_psycopg(pg_url):
    for scheme in ("postgresql://", "postgres://", "postgresql+psycopg://"):
        text = scheme + pg_url.split("://", 1)[1]
        with ResultStore(text) as store:
            assert store.url.drivername == "postgresql+psycopg"
            assert store.dialect == "postgresql"
            assert "***" in repr(store) and store.url.password not in repr(store)


# ---------------------------------------------------------------------------------------------
# Station events: what happens at a station outside any run (revision 0002)


def test_station_events_read_back_newest_first_with_filters(store):
    from harness.store import StationEventRecord

    run_uuid = store.run(_run(store)).uuid
    locked = store.record_station_event(
        "eol-1", "locked", "3 consecutive FAIL at discharge_ocp_trip", run_uuid=run_uuid,
        serial="BANK-0003", at=T0)
    refused = store.record_station_event(
        "eol-1", "serial_refused", "serial 'bank 7' does not match ^BANK-\\d{4}$ (attempt 2 of 3)",
        operator="ana", at=T0 + timedelta(minutes=1))
    store.record_station_event("eol-2", "mes", "MES timed out after 10 s", at=T0 + timedelta(
        minutes=2))
    unlocked = store.record_station_event(
        "eol-1", "unlocked", "fixture contact cleaned, OCP trip re-verified", operator="bo",
        at=T0 + timedelta(minutes=3))
    assert len({locked, refused, unlocked}) == 3

    events = store.station_events("eol-1")
    assert [e.id for e in events] == [unlocked, refused, locked]  # newest first
    assert all(isinstance(e, StationEventRecord) for e in events)
    assert events[2] == StationEventRecord(
        id=locked, station="eol-1", kind="locked", text="3 consecutive FAIL at discharge_ocp_trip",
        operator=None, serial="BANK-0003", run_uuid=run_uuid, at=T0)
    assert (events[0].operator, events[0].serial, events[0].run_uuid) == ("bo", None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        events[0].kind = "x"

    assert [e.id for e in store.station_events("eol-1", kind="locked")] == [locked]
    assert [e.id for e in store.station_events("eol-1", since=T0 + timedelta(minutes=1))] == \
        [unlocked, refused]  # since is inclusive
    assert [e.id for e in store.station_events("eol-1", kind="unlocked",
                                               since=T0 + timedelta(minutes=4))] == []
    assert [e.id for e in store.station_events("eol-1", limit=2)] == [unlocked, refused]
    assert len(store.station_events("eol-1", limit=None)) == 3
    assert [e.kind for e in store.station_events("eol-2")] == ["mes"]
    assert store.station_events("eol-9") == []


def test_station_event_times_are_utc(store):
    at = datetime(2026, 3, 1, 10, 0, tzinfo=timezone(timedelta(hours=2)))  # = T0
    store.record_station_event("eol-1", "label", "printer out of labels", at=at)
    naive = datetime(2026, 3, 1, 9, 30, 15, 250000)  # local time
    store.record_station_event("eol-1", "label", "label printed late", at=naive)
    before = datetime.now(timezone.utc)
    store.record_station_event("eol-1", "mes", "no answer")  # at: now
    after = datetime.now(timezone.utc)
    newest, *rest = store.station_events("eol-1")
    assert newest.kind == "mes" and before - timedelta(seconds=1) <= newest.at <= after
    assert sorted(e.at for e in rest) == sorted([T0, naive.astimezone(timezone.utc)])
    assert all(e.at.tzinfo == timezone.utc for e in [newest, *rest])
    # since: an aware time in another zone means the same instant as in UTC
    assert [e.text for e in store.station_events("eol-1", kind="label", since=at)] == \
        [e.text for e in store.station_events("eol-1", kind="label", since=T0)]


def test_station_events_are_committed_and_seen_by_another_store(url):
    with ResultStore(url) as writer, ResultStore(url) as reader:
        event_id = writer.record_station_event("eol-1", "locked", "calibration overdue: dmm",
                                               at=T0)
        (seen,) = reader.station_events("eol-1")
        assert seen.id == event_id and seen.text == "calibration overdue: dmm"


def test_station_event_bad_arguments_are_refused_clearly(store):
    with pytest.raises(ValueError, match="station is required"):
        store.record_station_event(None, "locked", "x")
    with pytest.raises(ValueError, match="station must not be empty"):
        store.record_station_event(" ", "locked", "x")
    with pytest.raises(ValueError, match="station event kind must not be empty"):
        store.record_station_event("eol-1", "", "x")
    with pytest.raises(ValueError, match="at most 32 characters"):
        store.record_station_event("eol-1", "k" * 33, "x")
    with pytest.raises(ValueError, match="at most 36 characters"):
        store.record_station_event("eol-1", "locked", "x", run_uuid="u" * 37)
    with pytest.raises(TypeError, match="at must be a datetime"):
        store.record_station_event("eol-1", "locked", "x", at="2026-03-01")
    with pytest.raises(ValueError, match="limit must be"):
        store.station_events("eol-1", limit=-1)
    assert store.station_events("eol-1") == []
    event_id = store.record_station_event("eol-1", "k" * 32, None,
                                          run_uuid=uuid.UUID(int=7))  # text None: empty
    (event,) = store.station_events("eol-1")
    assert (event.id, event.kind, event.text, event.run_uuid) == \
        (event_id, "k" * 32, "", "00000000-0000-0000-0000-000000000007")
