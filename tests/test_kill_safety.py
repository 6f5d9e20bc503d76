"""Kill a run mid-step: the bench ends de-energised and what was measured stays stored.

A `hil emulate` process serves the bench (as hardware would: its own process, real sockets);
`hil run` drives it with a plan whose last step holds a 100 A load for a minute. We interrupt
the run (SIGINT = Ctrl-C, SIGTERM) while the load is on, then read the emulated instruments'
output states through the drivers, and the result store.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.store import ResultStore
from instruments.drivers import get_driver

REPO = Path(__file__).resolve().parents[1]

PLAN = """
name: kill_test
version: "1.0"
applies_to: [1s4p_diagonal]
steps:
  - name: module_ocv
    check: module_ocv_match
    parameters: {rest_s: 0.1 s}
    limits:
      module_ocv: {in_range: [12.0 V, 14.6 V]}
      ocv_spread: {le: 0.1 V}
  - name: long_load
    check: current_sharing
    parameters: {load_current: 100 A, settle_s: 60 s}
    limits:
      imbalance: {le: 10 %}
"""


def _wait_for(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def emulated_bench(tmp_path):  # type: ignore[no-untyped-def]
    station_path = tmp_path / "station.yaml"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "emulate", "--dut", "1s4p_diagonal",
                             "--write-station", str(station_path)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: station_path.exists() and station_path.stat().st_size > 0, 30, "hil emulate")
        time.sleep(0.3)
        yield station_path, yaml.safe_load(station_path.read_text())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)


@pytest.mark.parametrize("sig, expected_exit", [(signal.SIGINT, 130), (signal.SIGTERM, 130)])
def test_killed_run_leaves_outputs_off_and_keeps_measurements(tmp_path, emulated_bench, sig,
                                                               expected_exit):
    station_path, station = emulated_bench
    plan = tmp_path / "kill_test.yaml"
    plan.write_text(PLAN)
    store_url = f"sqlite:///{tmp_path / 'results.sqlite'}"
    run = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(plan), "--station",
                            str(station_path), "--results", store_url, "--reports", str(tmp_path / "rep")],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    load_cfg = station["instruments"]["load"]
    load = get_driver(load_cfg["driver"])(load_cfg["resource"], "probe-load",
                                          rating={"voltage_v": 24, "current_a": 240})
    supply_cfg = station["instruments"]["supply"]
    supply = get_driver(supply_cfg["driver"])(supply_cfg["resource"], "probe-supply",
                                              rating={"voltage_v": 20, "current_a": 100})
    try:
        _wait_for(lambda: load.is_on(), 90, "the run to switch the load on")
        time.sleep(1.0)
        run.send_signal(sig)
        out, err = run.communicate(timeout=60)
        assert run.returncode == expected_exit, out + err
        assert "Traceback" not in err
        assert not load.is_on(), "load input left on after the kill"
        assert not supply.is_on(), "supply output left on after the kill"
    finally:
        if run.poll() is None:
            run.kill()
        load.close()
        supply.close()
    store = ResultStore(store_url)
    runs = store.runs()
    assert len(runs) == 1
    measurements = store.measurements(runs[0].id)
    names = {m.name for m in measurements}
    assert "ocv_spread" in names and any(n.startswith("ocv_s1p") for n in names)
    events = store.events(runs[0].id)
    assert any(e.kind == "safety" for e in events), events
