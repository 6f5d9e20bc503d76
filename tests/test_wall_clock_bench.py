"""A bench in wall-clock time, run after run: the emulator as a separate ``hil emulate`` process
(real time, as hardware), the harness on its own wall clock, over the real transports.

What a lab does on a real bench, and what used to fail (issue "A real bench, run after run"):

- the same plan twice in a row: the second run found the bank disconnected by the first run's
  end-of-session safe state (``bank_voltage = 3.67 V [12..14.6 V]``), or the module still in
  the over-current lockout the first run's trip step left (``eol_module``: its second run now
  waits in bench preparation for the BMS to release it, ~30 s) -- harness/preparation.py;
- a run interrupted (SIGINT) in the middle of a step, then the next run: it passes;
- every timing a check measures is right in wall-clock time as in virtual time: the same plan's
  timing measurements (trip delays, reaction times) agree between a virtual-time run and a
  wall-clock run within what the poll period allows (an over-current trip used to read 0.2 ms
  instead of 1 s in wall-clock time: the first, stale reading after the load step counted as
  the cut).

Each plan plays a sequence (:data:`SEQUENCES`) that together cover both findings: ``eol_module``
twice in a row, ``series_string_4s1p`` (a minute of bench time per run) interrupted then run,
``bank_smoke`` both. Every plan's first whole run is compared with a virtual-time run.

These tests sleep more than they compute (each run is its plan's bench time, 10-60 s, in real
time), so every sequence and the rehearsal run side by side, in threads of one module fixture,
and the module starts first in the suite (``long``, tests/conftest.py): one worker waits on the
bench clocks while the others compute. Each plan is still its own test.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# plan -> (DUT, what happens on its wall-clock bench in turn: "run" a whole run, "interrupt" a
# run stopped by SIGINT in its second step)
SEQUENCES = {"eol_module": ("1s1p", ("run", "run")),
             "series_string_4s1p": ("4s1p", ("interrupt", "run")),
             "bank_smoke": ("1s4p_diagonal", ("run", "run", "interrupt", "run"))}
pytestmark = pytest.mark.long(220)
# measurements that are times a check measured on the bench clock (not parameters it chose)
TIMING = re.compile(r"(delay|reaction|detect|settle|_time)(_s)?$")
# timings seen through the BMS's own reports (once a second, on the BMS's schedule, not the
# harness's): on a wall clock the phase between the harness's action and the next report is
# whatever it happens to be, as on a real bench -- they agree to one report period
REPORT_QUANTISED = {name: 1.05 for name in ("reaction_time", "recovery_time", "offline_detect_time",
                                            "totals_drop_time")}


def _start_emulator(folder: Path, dut: str) -> subprocess.Popen:
    station = folder / "station.yaml"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "emulate", "--dut", dut,
                             "--write-station", str(station)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if station.exists() and station.stat().st_size > 0 and yaml.safe_load(station.read_text()):
            return proc
        if proc.poll() is not None:
            pytest.fail(f"hil emulate --dut {dut} exited: {proc.stderr.read()}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"hil emulate --dut {dut} wrote no station file within 60 s")


def _run_argv(folder: Path, plan: str, station: str | None = None, dut: str | None = None) -> list[str]:
    argv = [sys.executable, "-m", "harness.cli", "run", plan, "--results",
            f"sqlite:///{folder / 'results.sqlite'}", "--reports", str(folder / "reports")]
    if station is not None:
        argv += ["--station", station]
    if dut is not None:
        argv += ["--dut", dut]
    return argv


def _run(folder: Path, plan: str, **kw: str) -> subprocess.CompletedProcess:
    return subprocess.run(_run_argv(folder, plan, **kw), cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def _interrupt_mid_step(folder: Path, plan: str, station: str) -> int:
    """Start a run, wait until its second step has started, SIGINT it; its exit status."""
    proc = subprocess.Popen(_run_argv(folder, plan, station=station), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    started = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        if "test_step[" in line and "PASSED" in line:
            started += 1
        if started >= 1:
            time.sleep(0.5)  # inside the second step
            proc.send_signal(signal.SIGINT)
            break
    rest, _ = proc.communicate(timeout=120)
    return proc.returncode


def _timings(db: Path, run_index: int) -> dict[str, float]:
    """Timing measurements of the ``run_index``-th whole run in a store (interrupted ones are
    not counted), by step and name."""
    with sqlite3.connect(db) as con:
        runs = [r[0] for r in con.execute("select id from run where verdict = 'pass' order by id")]
        rows = con.execute("select s.name, m.name, m.value from measurement m join step s on m.step_id = s.id "
                           "where s.run_id = ?", (runs[run_index],)).fetchall()
    out = {}
    for step, name, value in rows:
        if TIMING.search(name):
            try:
                out[f"{step}.{name}"] = float(value)
            except (TypeError, ValueError):
                continue
    return out


@dataclass
class Campaign:
    """What one plan did on its wall-clock bench, in turn, then once in virtual time."""

    folder: Path
    steps: list[tuple[str, int, str]]  # (what, exit status, output tail) in order
    virtual: subprocess.CompletedProcess


def _campaign(folder: Path, plan: str, dut: str, sequence: tuple[str, ...]) -> Campaign:
    emulator = _start_emulator(folder, dut)
    station = str(folder / "station.yaml")
    steps: list[tuple[str, int, str]] = []
    try:
        for what in sequence:
            if what == "interrupt":
                steps.append((what, _interrupt_mid_step(folder, plan, station), ""))
            else:
                result = _run(folder, plan, station=station)
                steps.append((what, result.returncode, result.stdout[-4000:]))
            if steps[-1][1] not in (0, 130):
                break  # the bench is in no state to go on; the test says which step
    finally:
        os.killpg(emulator.pid, signal.SIGTERM)
        emulator.wait(timeout=30)
    return Campaign(folder, steps, _run(folder, plan, dut=dut))


@pytest.fixture(scope="module")
def campaigns(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Every plan's sequence and the rehearsal, started at once in threads (each mostly waits
    on its bench clock)."""
    with ThreadPoolExecutor(len(SEQUENCES) + 1) as pool:
        futures = {plan: pool.submit(_campaign, tmp_path_factory.mktemp(plan), plan, dut, sequence)
                   for plan, (dut, sequence) in SEQUENCES.items()}
        futures["rehearsal"] = pool.submit(_rehearsal, tmp_path_factory.mktemp("rehearsal"))
        yield futures


@pytest.mark.parametrize("plan", list(SEQUENCES))
def test_plan_runs_again_and_again_on_a_wall_clock_bench(campaigns: dict[str, Future], plan: str) -> None:
    campaign: Campaign = campaigns[plan].result(timeout=900)
    assert [what for what, _, _ in campaign.steps] == list(SEQUENCES[plan][1]), campaign.steps
    for k, (what, status, output) in enumerate(campaign.steps):
        before = ", ".join(w for w, _, _ in campaign.steps[:k]) or "nothing"
        if what == "interrupt":
            assert status == 130, f"{plan} interrupted after {before}: exit {status}"
        else:
            assert status == 0, f"{plan} on a wall-clock bench after {before}:\n{output}"
            assert "PASS" in output
    # the same plan in virtual time: every timing it measured agrees with the wall-clock runs
    assert campaign.virtual.returncode == 0, campaign.virtual.stdout[-4000:]
    db = campaign.folder / "results.sqlite"
    wall, virt = _timings(db, 0), _timings(db, -1)
    assert wall.keys() == virt.keys()
    for name, value in virt.items():
        # wall-clock polls are coarser (a socket round trip per reading): 50 ms or 5 %; a
        # reaction the BMS can only show in its next report is known to its report period
        tolerance = REPORT_QUANTISED.get(name.rsplit(".", 1)[-1], 0.05)
        assert wall[name] == pytest.approx(value, abs=tolerance, rel=0.05), name


def _rehearsal(folder: Path) -> float:
    """``eol_module`` against ``hil emulate --speed 10``: the trip delay it measured (s)."""
    station = folder / "station.yaml"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "emulate", "--dut", "1s1p", "--speed", "10",
                             "--write-station", str(station)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (station.exists() and station.stat().st_size and yaml.safe_load(station.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, "hil emulate wrote no station file"
            time.sleep(0.2)
        assert yaml.safe_load(station.read_text())["time_scale"] == 10
        result = _run(folder, "eol_module", station=str(station))
        assert result.returncode == 0, result.stdout[-4000:]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    return _timings(folder / "results.sqlite", 0)["discharge_ocp_trip.trip_delay"]


def test_a_rehearsal_at_ten_times_real_time_measures_in_bench_seconds(campaigns: dict[str, Future]) -> None:
    """``hil emulate --speed 10`` writes ``time_scale: 10`` into its station file; the harness's
    wall clock runs as fast, so the over-current trip still reads its ~1 s (bench seconds)."""
    assert campaigns["rehearsal"].result(timeout=300) == pytest.approx(1.0, abs=0.15)
