"""The end-of-line station: a scripted emulated shift through the station loop, no person, and
the rules it runs on (retest policy, lock) as pure functions.

The shift (fixtures/shifts/eol_demo_shift.yaml, 20 units of eol_module on the emulated station,
one socket): 17 good units, an aged module, a BMS with lax protection settings, a unit whose BMS
reports another serial than its label, and one harness error (the AC-IR meter stops answering)
that is retested. The aged module is the second unit in a row to stop at acir, so the station
locks (consecutive_failures: 2) and the shift lead lifts it with a reason. Then: the store, the
labels (printed to a listener on 127.0.0.1 and kept as files) and the MES documents hold exactly
the expected verdicts and attempts.
"""

from __future__ import annotations

import json
import socket
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from harness.config.production import LockPolicy, RetestPolicy
from harness.production.policy import Attempt, decide, streak_lock

pytestmark = pytest.mark.long(70)  # the 20-unit shift waits on 21 `hil run` processes (forked): starts early (tests/conftest.py)

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 11, 30, 8, 0, tzinfo=timezone.utc)


# ------------------------------------------------------------------ the rules, without a bench
def attempt(verdict: str, step: str | None = None) -> Attempt:
    return Attempt("0123456789abcdef", verdict, step, T0)


def test_first_test_is_attempt_one() -> None:
    d = decide("U1", [], RetestPolicy(), {})
    assert d.allowed and d.attempt == 1 and d.history == "first test, attempt 1 of 3"


def test_a_fail_is_retested_and_the_operator_hears_the_history() -> None:
    d = decide("U1", [attempt("fail", "parallel_inrush")], RetestPolicy(), {"parallel_inrush": "major"})
    assert d.allowed and d.attempt == 2
    assert d.history == "failed parallel_inrush on 2026-11-30, retest 2 of 3"


def test_an_error_is_always_retested_while_attempts_remain() -> None:
    policy = RetestPolicy(retest_on=["fail"])
    assert decide("U1", [attempt("error", "acir")], policy, {}).allowed
    assert not decide("U1", [attempt("error", "acir")] * 3, policy, {}).allowed


def test_a_fail_at_a_critical_or_never_retested_step_is_not_retested() -> None:
    d = decide("U1", [attempt("fail", "discharge_ocp_trip")], RetestPolicy(), {"discharge_ocp_trip": "critical"})
    assert not d.allowed and "never retested" in (d.refusal or "")
    d = decide("U1", [attempt("fail", "unit_serial")], RetestPolicy(never_retest=["unit_serial"]), {})
    assert not d.allowed


def test_attempts_run_out_and_a_passed_unit_is_not_retested() -> None:
    d = decide("U1", [attempt("fail", "ocv")] * 3, RetestPolicy(), {})
    assert not d.allowed and "all 3 attempts" in (d.refusal or "")
    d = decide("U1", [attempt("fail", "ocv"), attempt("pass")], RetestPolicy(), {})
    assert not d.allowed and "already passed" in (d.refusal or "")


def test_the_lock_engages_on_the_same_step_only() -> None:
    policy = LockPolicy(consecutive_failures=3)
    assert streak_lock([("a", "ocv"), ("b", "ocv")], policy) is None
    assert streak_lock([("a", "ocv"), ("b", "acir"), ("c", "ocv")], policy) is None
    assert streak_lock([("a", "ocv"), ("b", None), ("c", "ocv"), ("d", "ocv")], policy) is None
    reason = streak_lock([("z", None), ("a", "ocv"), ("b", "ocv"), ("c", "ocv")], policy)
    assert reason is not None and "3 consecutive units failed at ocv (a, b, c)" in reason


# ------------------------------------------------------------------ the shift
class Printer:
    """A Zebra on 127.0.0.1: keeps each label it receives (raw TCP, one connection per label)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.labels: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                chunks = []
                while True:
                    data = conn.recv(65536)
                    if not data:
                        break
                    chunks.append(data)
                self.labels.append(b"".join(chunks))

    def close(self) -> None:
        self.server.close()


EXPECTED = {f"BH12-B0001-{k:03d}": ["PASS"] for k in range(1, 21)}
EXPECTED.update({"BH12-B0001-006": ["ERROR", "PASS"], "BH12-B0001-007": ["FAIL"],
                 "BH12-B0001-012": ["FAIL"], "BH12-B0001-016": ["FAIL"]})
FAILED_AT = {("BH12-B0001-006", 1): "acir", ("BH12-B0001-007", 1): "acir",
             ("BH12-B0001-012", 1): "discharge_ocp_trip", ("BH12-B0001-016", 1): "unit_serial"}


@pytest.fixture(scope="module")
def shift(tmp_path_factory):  # type: ignore[no-untyped-def]
    from harness.production.setup import open_station
    from harness.production.shift import load_shift, run_shift, unit_args_for

    folder = tmp_path_factory.mktemp("shift")
    printer = Printer()
    (folder / "mes").mkdir()
    station = yaml.safe_load((REPO / "fixtures" / "stations" / "eol_emulated.yaml").read_text())
    station["eol"]["label"] = {"printer": f"tcp://127.0.0.1:{printer.port}", "folder": "labels"}
    station["eol"]["mes"] = {"folder": "mes"}
    (folder / "labels").mkdir()
    station_file = folder / "eol_station.yaml"
    station_file.write_text(yaml.safe_dump(station, sort_keys=False))
    script = load_shift(REPO / "fixtures" / "shifts" / "eol_demo_shift.yaml")
    opened = open_station(station_file, "eol_module", results=f"sqlite:///{folder / 'results.sqlite'}",
                          reports=folder / "reports", operator="ci", unit_args=unit_args_for(script))
    events: list = []
    opened.station.subscribe(events.append)
    try:
        log = run_shift(opened.station, script, timeout_s=1800)
    finally:
        opened.close()
        printer.close()
    return folder, opened.station, log, printer, events


def test_the_store_holds_every_attempt_with_its_verdict(shift) -> None:  # type: ignore[no-untyped-def]
    folder, station, log, printer, events = shift
    store = station.store
    for serial, verdicts in EXPECTED.items():
        runs = sorted(store.runs(serial, plan_name="eol_module", limit=None), key=lambda r: r.started_at)
        assert [(r.verdict or "").upper() for r in runs] == verdicts, serial
    by_attempt = {(r.serial, r.attempt): r for r in station.results}
    assert len(station.results) == 21
    for key, step in FAILED_AT.items():
        assert by_attempt[key].failed_step == step, key
    assert "outside the module's specification" in (by_attempt[("BH12-B0001-012", 1)].diagnosis or "")
    assert "BMS reports BH12-B0001-001" in (by_attempt[("BH12-B0001-016", 1)].diagnosis or "")
    assert "no reply" in (by_attempt[("BH12-B0001-006", 1)].diagnosis or "")
    takts = [e for e in store.station_events(station.name, kind="unit", limit=None)]
    assert len(takts) == 21 and all("takt" in e.text for e in takts)


def test_labels_are_printed_and_kept_one_per_attempt(shift) -> None:  # type: ignore[no-untyped-def]
    folder, station, log, printer, events = shift
    files = sorted((folder / "labels").glob("*.zpl"))
    assert len(files) == 21 and len(printer.labels) == 21
    printed = {label.decode("utf-8") for label in printer.labels}
    assert {f.read_text(encoding="utf-8") for f in files} == printed
    for result in station.results:
        zpl = (folder / "labels" / f"{result.serial}-{result.run_uuid[:8]}.zpl").read_text(encoding="utf-8")
        assert f"^FD{result.verdict}^FS" in zpl and result.run_uuid in zpl
        assert result.serial.replace("-", "-") in zpl.replace("_2D", "-")


def test_mes_documents_hold_the_verdicts_and_attempts(shift) -> None:  # type: ignore[no-untyped-def]
    folder, station, log, printer, events = shift
    documents = [json.loads(p.read_text(encoding="utf-8")) for p in (folder / "mes").glob("*.json")]
    assert len(documents) == 21
    seen: dict[str, list[tuple[int, str]]] = {}
    for doc in documents:
        seen.setdefault(doc["serial"], []).append((doc["attempt"], doc["verdict"]))
        assert doc["schema"] == "bankhil.unit-result/1" and doc["takt_s"] > 0
        assert doc["measurements"] or doc["verdict"] == "ERROR"
    assert {s: [v for _, v in sorted(a)] for s, a in seen.items()} == EXPECTED


def test_the_lock_engaged_and_was_lifted_with_a_stored_reason(shift) -> None:  # type: ignore[no-untyped-def]
    folder, station, log, printer, events = shift
    store = station.store
    locked = store.station_events(station.name, kind="locked", limit=None)
    unlocked = store.station_events(station.name, kind="unlocked", limit=None)
    assert len(locked) == 1 and "2 consecutive units failed at acir (BH12-B0001-006, BH12-B0001-007)" in locked[0].text
    assert len(unlocked) == 1 and unlocked[0].operator == "shift lead"
    assert "AC-IR Kelvin clips checked and reseated" in unlocked[0].text
    assert log.unlocks == 1
    refused = [e.text for e in store.station_events(station.name, kind="serial_refused", limit=None)]
    assert any(t.startswith("station locked") for t in refused)
    assert any("BH12-B0001-016" in t and "never retested" in t for t in refused)
    assert any("BH12-B0001-001 already passed" in t for t in refused)
    assert [o for s, o in log.outcomes if o != "started"][-2:] == [
        next(t for t in refused if "016" in t), next(t for t in refused if "already passed" in t)]
    kinds = [e.kind for e in events]
    assert kinds.index("locked") < kinds.index("unlocked")


def test_the_history_of_a_retested_unit_is_what_the_operator_was_told(shift) -> None:  # type: ignore[no-untyped-def]
    folder, station, log, printer, events = shift
    started = [e.data for e in events if e.kind == "unit_started" and e.data["serial"] == "BH12-B0001-006"]
    assert [s["attempt"] for s in started] == [1, 2]
    assert started[1]["history"].startswith("ended in error at acir on ") and started[1]["history"].endswith(
        "retest 2 of 3")


def test_four_sockets_test_four_units_side_by_side(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """fixtures/stations/eol_emulated_4.yaml: each socket its own twin and instruments; four units
    at once, each on its own socket, their runs overlapping in time."""
    from harness.production.setup import open_station
    from harness.production.shift import ShiftFile, run_shift

    opened = open_station("eol_emulated_4", "eol_module", results=f"sqlite:///{tmp_path / 'r.sqlite'}",
                          reports=tmp_path / "reports", operator="ci")
    shift = ShiftFile.model_validate({"scans": [{"serial": f"BH12-B0001-{k:03d}"} for k in range(401, 405)]})
    try:
        run_shift(opened.station, shift, timeout_s=600)
    finally:
        opened.close()
    results = opened.station.results
    assert sorted(r.verdict for r in results) == ["PASS"] * 4
    assert sorted(r.socket for r in results) == ["1", "2", "3", "4"]
    latest_start = max(r.started_at for r in results)
    earliest_end = min(r.finished_at for r in results)
    assert latest_start < earliest_end  # all four were on their sockets at the same time
