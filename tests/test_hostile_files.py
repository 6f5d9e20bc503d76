"""Hostile input files: each is refused before anything starts, with one line, never a hang.

Every case here was seen to break ``hil run`` (a Python traceback, a pytest INTERNALERROR, a run
that failed only after the bench was assembled, or a run that never ended) and is now refused by
the loaders: ``bankmodel.files.load_yaml`` (shared by station, plan, DUT, module, firmware,
scenario and program files), the strict models and the bounded values. A refusal is a
``FileError`` whose message is ONE line starting with the file's path:
``file:line: field: found ...; allowed: ...`` -- ``hil run`` prints it and exits with status 2.

Most cases are checked at loader level (fast); a few go through ``python -m harness.cli run``
end to end, bounded by a subprocess timeout so that a hang fails the test instead of hanging it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from bankmodel.specs.loading import load_bank_spec
from emulator.faults import load_bank
from bankmodel.files import MAX_FILE_BYTES, FileError
from harness.config import load_plan, load_station, validate_run

REPO = Path(__file__).resolve().parents[1]
STATION = REPO / "fixtures" / "stations" / "emulated.yaml"
DUT = REPO / "fixtures" / "duts" / "1s4p_diagonal.yaml"
PLAN = REPO / "test_plans" / "bank_smoke.yaml"
SCENARIO = REPO / "fixtures" / "scenarios" / "soc_mismatch.yaml"
MODULE = REPO / "fixtures" / "modules" / "lfp_12v8_100ah.yaml"
FIRMWARE = REPO / "fixtures" / "firmware" / "good.yaml"
SERIAL_40 = "a" * 40

RECURSIVE_ALIAS = "loop: &a [*a]\n"
# billion laughs, 9 levels of 9 aliases: 9**9 = 387 million values once expanded
BOMB = "".join(["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"]
               + [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n" for i in range(1, 9)])


@pytest.fixture(scope="module")
def checks():  # type: ignore[no-untyped-def]
    from test_plans.checks import known_checks
    return known_checks()


# ====================================================================== helpers
def refused(load: Callable[[], object], path: Path | str, seconds: float = 10.0) -> FileError:
    """``load()`` raises FileError naming ``path`` on one line, within ``seconds``."""
    started = time.monotonic()
    with pytest.raises(FileError) as info:
        load()
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert elapsed < seconds, f"took {elapsed:.1f} s: {message}"
    assert "\n" not in message and "\r" not in message, message
    assert message.startswith(f"{path}:"), message
    assert "; allowed: " in message and "Traceback" not in message, message
    return info.value


def loader(kind: str, path: Path, checks: object) -> Callable[[], object]:
    """The loader ``hil run`` uses for one of the four file types (plugin.RunContext.load)."""
    if kind == "station":
        return lambda: load_station(path)
    if kind == "plan":
        return lambda: load_plan(path, checks)  # type: ignore[arg-type]
    if kind == "dut":
        return lambda: load_bank_spec(path)
    if kind == "scenario":
        return lambda: load_bank_spec(DUT, path)
    raise ValueError(kind)


BASE = {"station": STATION, "plan": PLAN, "dut": DUT, "scenario": SCENARIO}
KINDS = list(BASE)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def replaced(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# ====================================================================== not a regular file
@pytest.mark.parametrize("kind", KINDS)
def test_a_fifo_is_refused_without_blocking(tmp_path: Path, kind: str, checks) -> None:  # type: ignore[no-untyped-def]
    fifo = tmp_path / f"{kind}.yaml"
    os.mkfifo(fifo)  # nobody ever writes to it: opening it for reading would block forever
    err = refused(loader(kind, fifo, checks), fifo, seconds=5)
    assert "FIFO" in err.found and err.allowed == "a regular YAML file"


@pytest.mark.parametrize("kind", KINDS)
def test_dev_zero_is_refused_without_reading(kind: str, checks) -> None:  # type: ignore[no-untyped-def]
    err = refused(loader(kind, Path("/dev/zero"), checks), "/dev/zero", seconds=5)
    assert "character device" in err.found


@pytest.mark.parametrize("kind", KINDS)
def test_a_directory_is_refused(tmp_path: Path, kind: str, checks) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / f"{kind}.yaml"
    folder.mkdir()
    assert "directory" in refused(loader(kind, folder, checks), folder).found


@pytest.mark.parametrize("kind", KINDS)
def test_a_file_too_large_is_refused_before_parsing(tmp_path: Path, kind: str, checks) -> None:  # type: ignore[no-untyped-def]
    path = write(tmp_path, f"{kind}.yaml", BASE[kind].read_text()
                 + "".join(f"# padding {i:08d} " + "x" * 60 + "\n" for i in range(MAX_FILE_BYTES // 70 + 1)))
    err = refused(loader(kind, path, checks), path, seconds=5)
    assert f"at most {MAX_FILE_BYTES} bytes" in err.allowed


def test_a_dut_naming_a_device_as_its_module_type_is_refused(tmp_path: Path) -> None:
    """A stem is a file name in fixtures/modules/, never a path out of it."""
    path = write(tmp_path, "duts/d.yaml", replaced(DUT.read_text(), "module_type: lfp_12v8_100ah",
                                                   "module_type: ../../../../dev/zero"))
    err = refused(lambda: load_bank_spec(path), path)
    assert err.field == "module_type"


# ====================================================================== aliases, depth, tags
@pytest.mark.parametrize("kind", KINDS)
def test_a_recursive_alias_is_refused_with_its_line(tmp_path: Path, kind: str, checks) -> None:  # type: ignore[no-untyped-def]
    text = BASE[kind].read_text()
    path = write(tmp_path, f"{kind}.yaml", text + RECURSIVE_ALIAS)
    err = refused(loader(kind, path, checks), path)
    assert "recursive alias" in err.found
    assert err.line == len(text.splitlines()) + 1 and err.field == "loop[0]"


@pytest.mark.parametrize("kind", KINDS)
def test_a_billion_laughs_is_refused_without_expanding_it(tmp_path: Path, kind: str, checks) -> None:  # type: ignore[no-untyped-def]
    path = write(tmp_path, f"{kind}.yaml", BASE[kind].read_text() + BOMB)
    err = refused(loader(kind, path, checks), path, seconds=5)
    assert "once aliases are expanded" in err.found


@pytest.mark.parametrize("kind", KINDS)
def test_deep_nesting_is_refused(tmp_path: Path, kind: str, checks) -> None:  # type: ignore[no-untyped-def]
    path = write(tmp_path, f"{kind}.yaml", BASE[kind].read_text()
                 + "deep: " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert "nested too deeply" in refused(loader(kind, path, checks), path, seconds=5).found


@pytest.mark.parametrize("kind", KINDS)
def test_a_python_tag_is_refused_and_never_run(tmp_path: Path, kind: str, checks) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "PWNED"
    path = write(tmp_path, f"{kind}.yaml", BASE[kind].read_text()
                 + f'x: !!python/object/apply:os.system ["touch {marker}"]\n')
    err = refused(loader(kind, path, checks), path)
    assert "python/object/apply:os.system" in err.found and err.field == "x"
    assert not marker.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_an_impossible_date_is_refused_with_its_line(tmp_path: Path, kind: str, checks) -> None:  # type: ignore[no-untyped-def]
    text = BASE[kind].read_text()
    path = write(tmp_path, f"{kind}.yaml", text + "when: 2026-02-30\n")
    err = refused(loader(kind, path, checks), path)
    assert err.line == len(text.splitlines()) + 1 and "2026-02-30" in err.found


def test_a_key_with_a_line_break_still_gives_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "dut.yaml", DUT.read_text() + '"bad\\nkey\\rhere": 1\n')
    err = refused(lambda: load_bank_spec(path), path)
    assert "unknown key" in err.found


# ====================================================================== strict types
@pytest.mark.parametrize("kind, old, new, field", [
    ("plan", "    gate: true", '    gate: "yes"', "steps[0].gate"),
    ("plan", "    gate: true", "    gate: 1", "steps[0].gate"),
    ("plan", "    gate: true", "    gate: true\n    retries: \"2\"", "steps[0].retries"),
    ("dut", "parallel: 4", 'parallel: "4"', "parallel"),
    ("dut", "series: 1", "series: 1.0", "series"),
    ("dut", "series: 1", "series: true", "series"),
    ("dut", "initial_soc_pct: 50", 'initial_soc_pct: "50"', "initial_soc_pct"),
    ("station", "emulated: true", 'emulated: "yes"', "emulated"),
    ("scenario", "soc_pct: 70", 'soc_pct: "70"', "faults[0].soc_pct"),
])
def test_values_are_not_coerced(tmp_path: Path, checks, kind: str, old: str, new: str, field: str) -> None:  # type: ignore[no-untyped-def]
    path = write(tmp_path, f"{kind}.yaml", replaced(BASE[kind].read_text(), old, new))
    err = refused(loader(kind, path, checks), path)
    assert err.field.replace(".soc_mismatch", "") == field, str(err)


def test_firmware_flags_are_not_coerced(tmp_path: Path) -> None:
    firmware = write(tmp_path, "firmware/fw.yaml", replaced(FIRMWARE.read_text(), "recover: true",
                                                             'recover: "yes"'))
    dut = write(tmp_path, "duts/d.yaml", replaced(DUT.read_text(), "firmware: good", "firmware: fw"))
    err = refused(lambda: load_bank_spec(dut), firmware)
    assert err.field == "heartbeat.recover"


# ====================================================================== bounded values
@pytest.mark.parametrize("kind, old, new, field", [
    ("plan", "settle_s: 10 s", 'settle_s: "1e308 s"', "steps[3].parameters.settle_s"),
    ("plan", "settle_s: 10 s", 'settle_s: "1e400 s"', "steps[3].parameters.settle_s"),
    ("plan", "    gate: true", '    gate: true\n    timeout: "1e308 s"', "steps[0].timeout"),
    ("plan", "{le: 0.1 V}", '{le: "1e308 V"}', "steps[1].limits.ocv_spread.le"),
    ("plan", "{le: 0.1 V}", "{le: .nan}", "steps[1].limits.ocv_spread.le"),
    ("station", "    options: {mode: source}", '    options: {mode: source}\n    timeout: "1e308 s"',
     "instruments.supply.timeout"),
    ("station", "    options: {mode: source}", '    options: {mode: source}\n    timeout: "1 ns"',
     "instruments.supply.timeout"),
    ("station", 'rating: {voltage: "80 V", current: "120 A"}', 'rating: {voltage: "80 V", current: "1e308 A"}',
     "instruments.supply.rating.current"),
    ("dut", "initial_soc_pct: 50", "initial_soc_pct: .nan", "initial_soc_pct"),
    ("dut", "branch_fuse_a: 200", "branch_fuse_a: .inf", "protection.branch_fuse_a"),
    ("dut", "branch_fuse_a: 200", "branch_fuse_a: 1.0e-9", "protection.branch_fuse_a"),
    ("dut", "lead: {length_m: 1.0", "lead: {length_m: 1.0e+308", "interconnect.lead.length_m"),
    ("dut", "cross_section_mm2: 35}\n  bus", "cross_section_mm2: 1.0e-300}\n  bus",
     "interconnect.lead.cross_section_mm2"),
    ("scenario", "soc_pct: 70", "soc_pct: 1.0e+308", "faults[0].soc_pct"),
])
def test_values_are_finite_and_bounded(tmp_path: Path, checks, kind: str, old: str, new: str, field: str) -> None:  # type: ignore[no-untyped-def]
    path = write(tmp_path, f"{kind}.yaml", replaced(BASE[kind].read_text(), old, new))
    err = refused(loader(kind, path, checks), path)
    assert err.field.replace(".soc_mismatch", "") == field, str(err)


def test_a_module_type_with_an_absurd_figure_is_refused(tmp_path: Path) -> None:
    module = write(tmp_path, "modules/m.yaml", replaced(MODULE.read_text(), "capacity_ah: 100",
                                                        "capacity_ah: 1.0e-9"))
    dut = write(tmp_path, "duts/d.yaml", replaced(DUT.read_text(), "module_type: lfp_12v8_100ah",
                                                  "module_type: m"))
    assert refused(lambda: load_bank_spec(dut), module).field == "cell.capacity_ah"


def test_a_scenario_target_missing_from_the_dut_is_refused_before_the_twin(tmp_path: Path) -> None:
    """Targets used to be resolved when the twin was built: in ``hil run``, after assembly."""
    path = write(tmp_path, "scenario.yaml", replaced(SCENARIO.read_text(), "module: last", "module: s1p9"))
    err = refused(lambda: load_bank(DUT, path), path)
    assert err.field == "faults[0].module" and "s1p1..s1p4" in err.allowed


# ====================================================================== serial_pattern
def _plan_with_pattern(tmp_path: Path, pattern: str) -> Path:
    return write(tmp_path, "plan.yaml", replaced(PLAN.read_text(), "dut: 1s4p_diagonal",
                                                 f"dut: 1s4p_diagonal\nserial_pattern: '{pattern}'"))


@pytest.mark.parametrize("pattern", ["(a+)+b", "(a|aa)+b", "(a|a)+b", "(a*)*b", "((a+)+)+b"])
def test_a_catastrophic_serial_pattern_ends_in_a_file_error_not_a_hang(
        tmp_path: Path, checks, pattern: str) -> None:  # type: ignore[no-untyped-def]
    path = _plan_with_pattern(tmp_path, pattern)
    err = refused(lambda: validate_run(path, STATION, DUT, checks, serial=SERIAL_40), path,
                  seconds=10)
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1)
                if text.startswith("serial_pattern:"))
    assert err.field == "serial_pattern" and err.line == line


@pytest.mark.parametrize("pattern", ["((a{1000}){1000}){1000}", "(a{65535}){65535}", "x{4294967295}",
                                     "a" * 201, "BH12-[0-9"])
def test_a_serial_pattern_that_cannot_compile_quickly_is_refused_at_load(
        tmp_path: Path, checks, pattern: str) -> None:  # type: ignore[no-untyped-def]
    path = _plan_with_pattern(tmp_path, pattern)
    assert refused(lambda: load_plan(path, checks), path, seconds=5).field == "serial_pattern"


def test_a_good_serial_pattern_still_matches(tmp_path: Path, checks) -> None:  # type: ignore[no-untyped-def]
    plan = load_plan(_plan_with_pattern(tmp_path, "BH12-[0-9]{6}"), checks)
    assert plan.serial_matches("BH12-000123") and not plan.serial_matches("BH12-00012")


# ====================================================================== end to end
def hil_run(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    store = f"sqlite:///{tmp_path / 'results.sqlite'}"
    return subprocess.run([sys.executable, "-m", "harness.cli", "run", *args, "--results", store,
                           "--reports", str(tmp_path / "reports")],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _end_to_end_case(tmp_path: Path, case: str) -> tuple[list[str], Path]:
    """Command-line arguments of `hil run` for one repro, and the file that must be named."""
    if case == "station-fifo":
        path = tmp_path / "station.yaml"
        os.mkfifo(path)
        return [str(PLAN), "--station", str(path)], path
    if case == "dut-dev-zero":
        return [str(PLAN), "--dut", "/dev/zero"], Path("/dev/zero")
    if case == "station-recursive-alias":
        path = write(tmp_path, "station.yaml", STATION.read_text() + RECURSIVE_ALIAS)
        return [str(PLAN), "--station", str(path)], path
    if case == "plan-recursive-alias":
        path = write(tmp_path, "plan.yaml", PLAN.read_text() + RECURSIVE_ALIAS)
        return [str(path)], path
    if case == "dut-billion-laughs":
        path = write(tmp_path, "dut.yaml", DUT.read_text() + BOMB)
        return [str(PLAN), "--dut", str(path)], path
    if case == "scenario-billion-laughs":
        path = write(tmp_path, "scenario.yaml", SCENARIO.read_text() + BOMB)
        return [str(PLAN), "--scenario", str(path)], path
    if case == "plan-settle-1e308":
        path = write(tmp_path, "plan.yaml", replaced(PLAN.read_text(), "settle_s: 10 s", 'settle_s: "1e308 s"'))
        return [str(path)], path
    if case == "plan-catastrophic-serial-pattern":
        path = _plan_with_pattern(tmp_path, "(a+)+b")
        return [str(path), "--serial", SERIAL_40], path
    if case == "plan-gate-yes":
        path = write(tmp_path, "plan.yaml", replaced(PLAN.read_text(), "gate: true", 'gate: "yes"'))
        return [str(path)], path
    if case == "dut-parallel-text":
        path = write(tmp_path, "dut.yaml", replaced(DUT.read_text(), "parallel: 4", 'parallel: "4"'))
        return [str(PLAN), "--dut", str(path)], path
    if case == "scenario-target-missing":
        path = write(tmp_path, "scenario.yaml", replaced(SCENARIO.read_text(), "module: last", "module: s1p9"))
        return [str(PLAN), "--scenario", str(path)], path
    raise ValueError(case)


# End to end, one case per way `hil run` used to fail: a hang on a FIFO, MemoryError on
# /dev/zero, an INTERNALERROR RecursionError on a recursive alias, 48 s into MemoryError on an
# alias bomb, a hang on a backtracking serial_pattern, "yes" coerced to true, a scenario that
# failed only after the bench was assembled. The other cases of _end_to_end_case (each subprocess
# costs a few seconds) are covered at loader level above; add them here to run them too.
END_TO_END = ["station-fifo", "dut-dev-zero", "plan-recursive-alias", "scenario-billion-laughs",
              "plan-catastrophic-serial-pattern", "plan-gate-yes", "scenario-target-missing"]


@pytest.mark.parametrize("case", END_TO_END)
def test_hil_run_refuses_with_exit_2_and_one_line(tmp_path: Path, case: str) -> None:
    args, bad = _end_to_end_case(tmp_path, case)
    result = hil_run(tmp_path, *args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"{bad}:"), lines[0]
    assert "Traceback" not in result.stderr + result.stdout and "INTERNALERROR" not in result.stdout
    assert "passed" not in result.stdout and "failed" not in result.stdout  # nothing ran


def test_shipped_files_still_load(checks) -> None:  # type: ignore[no-untyped-def]
    """The limits and strict types refuse nothing the project ships."""
    station = load_station(STATION)
    for plan_path in sorted((REPO / "test_plans").glob("*.yaml")):
        load_plan(plan_path, checks)
    duts = sorted((REPO / "fixtures" / "duts").rglob("*.yaml"))
    for dut in duts:
        load_bank_spec(dut)

    def applies(dut: Path, scenario: Path) -> bool:
        try:
            load_bank_spec(dut, scenario)
        except FileError:
            return False
        return True

    for scenario in sorted((REPO / "fixtures" / "scenarios").rglob("*.yaml")):
        assert any(applies(dut, scenario) for dut in duts), scenario
    validate_run(PLAN, station, DUT, checks, serial="BH12-B0001")
