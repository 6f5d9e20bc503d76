"""The rooms import one way: a hardware run never loads the twin.

``bankmodel`` (what every room shares) imports none of the others; nothing outside ``emulator/``
imports the emulator except its one door, ``harness/emulated.py``; and a real ``hil run``
against a bench served by another process (``hil emulate``, as hardware) imports no module of
``emulator`` nor numba (``python -X importtime`` lists every module a process imported).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ROOMS = ("bankmodel", "harness", "instruments", "test_plans", "emulator")
EMULATOR_DOOR = REPO / "harness" / "emulated.py"


def _imports(path: Path) -> set[str]:
    """Top-level package of every module ``path`` imports, wherever the import statement is."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _sources(*rooms: str) -> list[Path]:
    return [path for room in rooms for path in sorted((REPO / room).rglob("*.py"))]


def test_bankmodel_depends_on_no_other_room() -> None:
    offenders = {str(p.relative_to(REPO)): sorted(_imports(p) & set(ROOMS) - {"bankmodel"})
                 for p in _sources("bankmodel")}
    assert not {k: v for k, v in offenders.items() if v}


def test_only_the_emulated_station_entry_point_imports_the_emulator() -> None:
    importers = [str(p.relative_to(REPO)) for p in _sources("harness", "instruments", "test_plans")
                 + [REPO / "conftest.py"] if "emulator" in _imports(p)]
    assert importers == [str(EMULATOR_DOOR.relative_to(REPO))]


def test_instruments_know_no_harness_and_no_plan() -> None:
    offenders = [str(p.relative_to(REPO)) for p in _sources("instruments")
                 if _imports(p) & {"harness", "test_plans", "emulator"}]
    assert offenders == []


def test_the_emulator_never_imports_the_harness() -> None:
    offenders = [str(p.relative_to(REPO)) for p in _sources("emulator")
                 if _imports(p) & {"harness", "test_plans", "instruments"}]
    assert offenders == []


def _serve(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    station = tmp_path / "bench.yaml"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "emulate", "--dut", "1s4p_diagonal",
                             "--write-station", str(station)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if station.exists() and station.stat().st_size and yaml.safe_load(station.read_text()):
            return proc, station
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"hil emulate did not start: {proc.communicate()[1]}")


def test_a_hardware_run_imports_nothing_from_the_emulator(tmp_path: Path) -> None:
    proc, station = _serve(tmp_path)
    try:
        run = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "harness.cli", "run", "bank_smoke",
             "--station", str(station), "--results", str(tmp_path / "results.db"),
             "--run-dir", str(tmp_path / "run"), "-k", "bms_identity", "-p", "no:randomly", "-s"],
            cwd=REPO, capture_output=True, text=True, timeout=240)  # -s: importtime writes to fd 2
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    imported = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines()
                if line.startswith("import time:")}
    assert "harness.bench" in imported and "instruments.can_bms" in imported  # it did run
    assert "bms_identity PASS" in run.stdout or run.returncode in (0, 4), run.stdout + run.stderr
    leaked = sorted(m for m in imported if m.split(".")[0] in ("emulator", "numba"))
    assert leaked == []


def test_the_harness_never_imports_the_checks() -> None:
    """No cycle between rooms: the checks use the harness; the harness loads them by name
    (harness/check_registry.py)."""
    offenders = [str(p.relative_to(REPO)) for p in _sources("harness") if "test_plans" in _imports(p)]
    assert offenders == []


# what each room may import (README: "The rooms and how they import")
ALLOWED = {"test_plans": {"harness", "instruments", "bankmodel"},
           "harness": {"instruments", "bankmodel"},   # + emulator, through harness/emulated.py only
           "instruments": {"bankmodel"},
           "emulator": {"bankmodel"},
           "bankmodel": set()}


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_each_room_imports_only_what_the_readme_says(room: str) -> None:
    offenders = {}
    for path in _sources(room):
        allowed = ALLOWED[room] | {room} | ({"emulator"} if path == EMULATOR_DOOR else set())
        wrong = (_imports(path) & set(ROOMS)) - allowed
        if wrong:
            offenders[str(path.relative_to(REPO))] = sorted(wrong)
    assert offenders == {}
