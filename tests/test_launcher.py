"""A unit forked from the station's warm process ends as a new ``hil run`` process would: the
same exit status and output for a pass, a fail and a bad file; SIGINT makes it safe and
ABORTED; and a hardware station's warm process imports nothing from the emulator
(harness/production/launcher.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.production.launcher import (PRELOAD_EMULATED, ColdLauncher, WarmLauncher,
                                         launcher_for)
from harness.store import ResultStore

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def warm() -> WarmLauncher:
    launcher = launcher_for(emulated=True)
    if not isinstance(launcher, WarmLauncher):
        pytest.skip("this process's forkserver imports something else")
    launcher.warm_up()
    return launcher


def _run(launcher, tmp_path: Path, *argv: str, timeout: float = 240) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    log_path = tmp_path / "log.txt"
    with open(log_path, "w", encoding="utf-8") as log:
        process = launcher.start(["run", *argv, "--results", f"sqlite:///{tmp_path / 'results.sqlite'}",
                                  "--reports", str(tmp_path / "reports")], log)
        deadline = time.monotonic() + timeout
        while process.poll() is None:
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.05)
    return process.returncode, log_path.read_text()


def _last_line(output: str) -> str:
    return [line for line in output.splitlines() if line.strip()][-1]


@pytest.mark.parametrize("argv, code", [
    (("bank_smoke",), 0),
    (("bank_smoke", "--dut", "1s4p_same_side"), 1),
    (("no_such_plan",), 2),
])
def test_a_forked_unit_ends_as_a_new_process_would(warm, tmp_path: Path, argv, code) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "warm").mkdir()
    (tmp_path / "cold").mkdir()
    warm_code, warm_output = _run(warm, tmp_path / "warm", *argv)
    cold_code, cold_output = _run(ColdLauncher(), tmp_path / "cold", *argv)
    assert warm_code == cold_code == code, warm_output[-3000:]
    # the verdict line (or the bad file's one line), minus the timing in it
    strip = str.maketrans("0123456789.", "###########")
    assert _last_line(warm_output).translate(strip) == _last_line(cold_output).translate(strip)
    if code == 2:
        assert "no_such_plan" in _last_line(warm_output) and "Traceback" not in warm_output


def test_sigint_makes_a_forked_unit_safe_and_aborted(warm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'results.sqlite'}"
    log_path = tmp_path / "log.txt"
    with open(log_path, "w", encoding="utf-8") as log:
        process = warm.start(["run", "parallel_bank_1s4p", "--results", url,
                              "--reports", str(tmp_path / "reports")], log)
        deadline = time.monotonic() + 240
        try:
            while "open_branch_current" not in log_path.read_text() and "ocv_" not in log_path.read_text():
                assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.05)
            process.send_signal(signal.SIGINT)
            while process.poll() is None:
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.05)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
    output = log_path.read_text()
    assert process.returncode == 130, output[-3000:]
    assert "safe" in output
    with ResultStore(url) as store:
        run = store.runs()[0]
        assert run.verdict == "aborted"
        assert "aborted" in {s.verdict for s in store.steps(run.id)}


def test_a_hardware_stations_warm_process_imports_no_emulator() -> None:
    code = ("import sys\n"
            "import harness.production.preload\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'emulator', 'numba'}))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"


def test_an_emulated_station_gets_the_twin_and_others_a_cold_start(warm) -> None:  # type: ignore[no-untyped-def]
    assert warm.preload == PRELOAD_EMULATED
    # this process's forkserver imports the twin: a hardware station here starts its units cold
    assert isinstance(launcher_for(emulated=False), ColdLauncher)
    assert isinstance(launcher_for(emulated=True, python="/usr/bin/python3-other"), ColdLauncher)


STATION_SCRIPT = """
import sys, time
open(sys.argv[1], "a").write("ran\\n")  # no __main__ guard: must run once, not once per unit
from harness.production.launcher import WarmLauncher, launcher_for
launcher = launcher_for(emulated=True)
assert isinstance(launcher, WarmLauncher)
with open(sys.argv[2], "w") as log:
    unit = launcher.start(["run", "no_such_plan"], log)
    while unit.poll() is None:
        time.sleep(0.05)
print(unit.returncode)
"""


@pytest.mark.parametrize("how", ["file", "stdin"])
def test_a_unit_does_not_run_the_station_script_again(tmp_path: Path, how: str) -> None:
    """A station driven by a script of its own (no main guard, or read from standard input):
    its units run ``hil run``, not the script."""
    marker, log = tmp_path / "ran.txt", tmp_path / "unit.log"
    script = tmp_path / "my_station.py"
    script.write_text(STATION_SCRIPT)
    if how == "file":
        result = subprocess.run([sys.executable, str(script), str(marker), str(log)], cwd=tmp_path,
                                capture_output=True, text=True, timeout=180)
    else:
        result = subprocess.run([sys.executable, "-", str(marker), str(log)], input=STATION_SCRIPT,
                                cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "2", log.read_text()[-3000:]  # the bad plan's exit status
    assert marker.read_text() == "ran\n"
    assert "no_such_plan" in log.read_text()
