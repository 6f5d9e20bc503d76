"""Reliability of the ways out: signals that cannot be lost, a safe state bounded in time, no
run left open.

- A SIGTERM whose KeyboardInterrupt lands in a garbage-collector callback is printed as
  "Exception ignored" and dropped by Python; the request stays pending, the next check point
  raises it again, and the supervisor makes the bench safe by itself if the run does not unwind.
- A frozen instrument with a 60 s timeout does not keep the others energised: every other
  output is safe within the bound (< 3 s).
- A run killed with SIGKILL is marked ABORTED by the next run on the same host.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest

from harness.clock import WallClock
from harness.store import ResultStore
from harness.supervisor import SafetySupervisor

REPO = Path(__file__).resolve().parents[1]


class FakeOutput:
    """A unit-test stand-in for one instrument (no transport): records its safe-state calls."""

    def __init__(self, name: str, hang_s: float = 0.0):
        self.name, self.resource, self.hang_s = name, "fake", hang_s
        self.safe_calls: list[float] = []
        self.before_io = None

    def identity(self) -> str:
        return self.name

    def safe_state(self) -> None:
        if self.hang_s:
            time.sleep(self.hang_s)
        self.safe_calls.append(time.monotonic())

    def close(self) -> None:
        pass


class _Target:
    pass


@pytest.fixture
def supervisor():  # type: ignore[no-untyped-def]
    outputs = {"load": FakeOutput("load"), "supply": FakeOutput("supply"), "actuator": FakeOutput("actuator")}
    sup = SafetySupervisor(outputs, unwind_bound_s=1.0)
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    sup.install_signal_handlers()
    try:
        yield sup, outputs
    finally:
        sup.restore_signal_handlers()
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


def _sigterm_inside_a_gc_callback() -> None:
    """Deterministic repro: the handler's exception is raised inside a weakref callback."""
    target = _Target()
    keep = weakref.ref(target, lambda ref: os.kill(os.getpid(), signal.SIGTERM))
    del target
    gc.collect()
    time.sleep(0.05)  # the signal is delivered; its KeyboardInterrupt is "ignored" by Python
    assert keep() is None


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_sigterm_swallowed_by_a_gc_callback_is_raised_again(supervisor) -> None:  # type: ignore[no-untyped-def]
    sup, _ = supervisor
    _sigterm_inside_a_gc_callback()  # no exception reaches us here
    assert sup.interrupt == "SIGTERM"
    clock = WallClock()
    clock.interrupt_check = sup.check_interrupt
    with pytest.raises(KeyboardInterrupt):
        clock.wait(0.2)  # the next bench wait raises it again
    sup.acknowledge_interrupt()
    clock.wait(0.01)  # once the run unwinds, teardown waits are not interrupted again


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_the_bench_is_made_safe_when_the_run_does_not_unwind(supervisor) -> None:  # type: ignore[no-untyped-def]
    sup, outputs = supervisor
    started = time.monotonic()
    _sigterm_inside_a_gc_callback()
    deadline = time.monotonic() + 5
    while not outputs["actuator"].safe_calls and time.monotonic() < deadline:
        time.sleep(0.05)  # a main thread that never reaches a check point
    assert outputs["load"].safe_calls and outputs["supply"].safe_calls and outputs["actuator"].safe_calls
    assert outputs["actuator"].safe_calls[0] - started < sup.unwind_bound_s + 1.0
    assert any("did not unwind" in a.reason for a in sup.actions)
    # load and supply before the relays
    assert max(outputs["load"].safe_calls[0], outputs["supply"].safe_calls[0]) <= outputs["actuator"].safe_calls[0]


def test_a_hung_instrument_does_not_delay_the_others() -> None:
    outputs = {"load": FakeOutput("load", hang_s=30.0), "supply": FakeOutput("supply"),
               "actuator": FakeOutput("actuator")}
    sup = SafetySupervisor(outputs)
    started = time.monotonic()
    actions = sup.safe_state("test")
    elapsed = time.monotonic() - started
    assert elapsed < 3.0
    by_role = {a.instrument: a for a in actions}
    assert not by_role["load"].ok and "hung" in by_role["load"].detail
    assert by_role["supply"].ok and by_role["actuator"].ok


def test_frozen_load_with_a_60_s_timeout_on_the_emulated_bench() -> None:
    """Real drivers over real sockets: the load stops answering mid-run, its driver would wait
    60 s; the supply is off and every relay open well within 3 s."""
    from emulator.emulate import start_emulated_station
    from instruments.drivers import get_driver

    station = start_emulated_station("1s4p_diagonal")
    try:
        res = station.station["instruments"]
        supply = get_driver(res["supply"]["driver"])(res["supply"]["resource"], "supply", options=res["supply"].get("options"),
                                              rating={"voltage_v": 20, "current_a": 100}, timeout_s=60)
        load = get_driver(res["load"]["driver"])(res["load"]["resource"], "load", options=res["load"].get("options"),
                                          rating={"voltage_v": 24, "current_a": 240}, timeout_s=60)
        actuator = get_driver(res["actuator"]["driver"])(res["actuator"]["resource"], "actuator", timeout_s=60)
        twin = station.bench.twin
        supply.set_voltage(14.0)
        supply.set_current(10.0)
        supply.output(True)
        load.set_current(50.0)
        load.input(True)
        assert twin.supply.on and twin.load.on and any(twin.contactor_closed.values())
        station.scpi["load"][0].freeze()
        sup = SafetySupervisor({"load": load, "supply": supply, "actuator": actuator})
        started = time.monotonic()
        actions = sup.safe_state("frozen load")
        elapsed = time.monotonic() - started
        assert elapsed < 3.0, elapsed
        assert not twin.supply.on
        assert not any(twin.contactor_closed.values())
        assert [a.instrument for a in actions if not a.ok] == ["load"]
    finally:
        station.scpi["load"][0].thaw()
        station.stop()


def test_a_killed_run_is_marked_aborted_by_the_next_start(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'results.sqlite'}"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "parallel_bank_1s4p", "--results", url,
                             "--reports", str(tmp_path / "reports")],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 240
        for line in proc.stdout:
            if " = " in line and "[" in line:  # a measurement was printed (and stored)
                break
            assert time.monotonic() < deadline
        proc.kill()  # SIGKILL: no handler, no teardown
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    store = ResultStore(url)
    killed = store.runs()[0]
    assert killed.verdict is None  # left open by the kill ...
    result = subprocess.run([sys.executable, "-m", "harness.cli", "run", "-k", "bms_identity", "--results", url,
                             "--reports", str(tmp_path / "reports")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 4, result.stdout[-2000:] + result.stderr[-2000:]
    killed = store.run(killed.id)
    assert killed.verdict == "aborted" and killed.ended_at is not None  # ... closed by the next start
    assert any("killed" in e.text for e in store.events(killed.id))
    assert store.measurements(killed.id)  # what it measured before the kill is kept


def test_sigterm_after_teardown_still_exits_130() -> None:
    """The CLI converts SIGTERM anywhere (here: before any run) into exit 130, no traceback."""
    code = ("import os, signal, sys, threading, time\n"
            "from harness.cli import main\n"
            "threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()\n"
            "sys.argv = ['hil', 'simulate', '--help']\n"
            "import harness.cli as c\n"
            "orig = c._main\n"
            "c._main = lambda argv=None: (time.sleep(5), 0)[1]\n"
            "sys.exit(main([]))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr
