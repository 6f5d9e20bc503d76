"""A bad DUT, scenario or program file stops ``hil simulate`` with one line and exit status 2.

The line names the file and line, the field path, what was found and what is allowed
(``bankmodel.files.FileError``); nothing is simulated and no traceback is shown. Each case writes
one bad file to tmp_path and calls ``harness.cli.main`` in-process (one case goes through a real
``python -m harness.cli`` subprocess, to cover the entry point and the exit status itself).
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from bankmodel.specs import scenario as scenario_model
from emulator import program as program_model
from harness.cli import main

REPO = Path(__file__).resolve().parents[1]

GOOD_DUT = """\
name: bad_file_test
module_type: lfp_12v8_100ah
series: 1
parallel: 2
"""
GOOD_SCENARIO = """\
name: ok
faults: []
"""
GOOD_PROGRAM = """\
name: ok
steps:
  - {kind: rest, seconds: 1}
"""


KINDS = sorted(
    {m.model_fields["kind"].annotation.__args__[0]
     for m in [*vars(scenario_model).values(), *vars(program_model).values()]
     if isinstance(m, type) and hasattr(m, "model_fields") and "kind" in m.model_fields})


@dataclass
class Case:
    id: str
    role: str                 # which file is bad: dut, scenario or program
    text: str | None          # file content; None: the file does not exist
    line: int | None          # expected line in the message (None: the file as a whole)
    field: str                # expected field path in the message ("" for the file itself)
    found: str                # a fragment of what the message says was found
    dut: str = "1s1p"         # DUT used when the bad file is the scenario or program
    item_line: int | None = None  # inside a list of tagged items: the item's line is accepted too


CASES = [
    # ------------------------------------------------------------------ DUT files
    Case("dut-yaml-syntax", "dut", "name: x\nmodule_type: lfp_12v8_100ah\nseries: 1\n  parallel: 1\n",
         4, "", "invalid YAML"),
    Case("dut-unknown-key", "dut", GOOD_DUT + "seriez: 4\n", 5, "seriez", "unknown key 'seriez'"),
    Case("dut-wrong-type", "dut", GOOD_DUT.replace("series: 1", "series: four"), 3, "series",
         "'four'"),
    Case("dut-missing-field", "dut", "name: x\nseries: 1\nparallel: 1\n", 1, "module_type",
         "field missing"),
    Case("dut-out-of-range", "dut", GOOD_DUT.replace("parallel: 2", "parallel: 17"), 4, "parallel",
         "17"),
    Case("dut-nested-negative", "dut",
         GOOD_DUT + "interconnect:\n  lead:\n    length_m: -1\n", 7, "interconnect.lead.length_m",
         "-1"),
    Case("dut-unknown-module-type", "dut", GOOD_DUT.replace("lfp_12v8_100ah", "lfp_nope"), 2,
         "module_type", "lfp_nope"),
    Case("dut-bad-arrangement", "dut", GOOD_DUT + "arrangement: mesh\n", 5, "arrangement",
         "'mesh'"),
    Case("dut-duplicate-key", "dut", GOOD_DUT + "series: 2\n", 5, "series", "'series' twice"),
    Case("dut-empty", "dut", "", 1, "", "an empty file"),
    Case("dut-missing-file", "dut", None, None, "", "no such DUT file"),
    # ------------------------------------------------------------------ scenario files
    Case("scenario-unknown-kind", "scenario",
         "name: s\nfaults:\n  - kind: solar_flare\n    module: last\n", 3, "faults[0]",
         "solar_flare"),
    Case("scenario-target-not-in-dut", "scenario",
         "name: s\nfaults:\n  - kind: soc_mismatch\n    module: s3p1\n    soc_pct: 90\n", 4,
         "faults[0].module", "'s3p1'", dut="1s4p_diagonal"),
    Case("scenario-soc-out-of-range", "scenario",
         "name: s\nfaults:\n  - kind: soc_mismatch\n    module: last\n    soc_pct: 150\n", 5,
         "faults[0].soc_pct", "150", item_line=3),
    Case("scenario-wrong-type", "scenario", "name: s\nfaults: none\n", 2, "faults", "'none'"),
    Case("scenario-missing-name", "scenario", "faults: []\n", 1, "name", "field missing"),
    Case("scenario-bad-terminal", "scenario",
         "name: s\nfaults:\n  - kind: loose_lug\n    terminal: last\n", 4,
         "faults[0].terminal", "'last'", item_line=3),
    Case("scenario-missing-file", "scenario", None, None, "", "no such scenario file"),
    # ------------------------------------------------------------------ program files
    Case("program-unknown-kind", "program",
         "name: p\nsteps:\n  - {kind: rest, seconds: 1}\n  - {kind: nap, seconds: 5}\n", 4,
         "steps[1]", "nap"),
    Case("program-missing-seconds", "program", "name: p\nsteps:\n  - kind: rest\n", 3,
         "steps[0].seconds", "field missing"),
    Case("program-negative-seconds", "program",
         "name: p\nsteps:\n  - kind: load\n    current_a: 10\n    seconds: -5\n", 5,
         "steps[0].seconds", "-5", item_line=3),
    Case("program-two-currents", "program",
         "name: p\nsteps:\n  - {kind: load, current_a: 10, c_rate: 0.5, seconds: 5}\n", 3,
         "steps[0]", "exactly one of current_a or c_rate"),
    Case("program-unknown-key", "program",
         "name: p\nsteps:\n  - kind: rest\n    seconds: 5\n    secs: 5\n", 5, "steps[0].secs",
         "unknown key 'secs'", item_line=3),
    Case("program-contactor-not-in-dut", "program",
         "name: p\nsteps:\n  - {kind: rest, seconds: 1}\n  - kind: open_contactor\n"
         "    contactor: s2p1\n", 5, "steps[1].contactor", "'s2p1'"),
    Case("program-module-not-in-dut", "program",
         "name: p\nsteps:\n  - kind: open_fets\n    module: s1p3\n", 4, "steps[0].module",
         "'s1p3'"),
    Case("program-too-many-steps", "program",
         "name: p\nsteps:\n  - {kind: rest, seconds: 100, max_step_s: 1.0e-6}\n", 3,
         "steps[0]", "internal steps"),
    Case("program-heartbeat-on-key", "program",  # the switch is `enabled:`, not `on:`
         "name: p\nsteps:\n  - kind: heartbeat\n    on: false\n", 4, "steps[0].on",
         "unknown key 'on'", item_line=3),
    Case("program-a-list", "program", "- {kind: rest, seconds: 1}\n", 1, "", "a list"),
    Case("program-missing-file", "program", None, None, "", "no such program file"),
]


def _write(tmp_path: Path, case: Case) -> dict[str, str]:
    """The three files for a case: the bad one written to tmp_path, the others good."""
    files: dict[str, str] = {}
    for role, good in (("dut", GOOD_DUT), ("scenario", GOOD_SCENARIO), ("program", GOOD_PROGRAM)):
        path = tmp_path / f"{role}.yaml"
        if role == case.role:
            if case.text is not None:
                path.write_text(case.text, encoding="utf-8")
            files[role] = str(path)
        elif role == "dut":
            files[role] = case.dut
        else:
            path.write_text(good, encoding="utf-8")
            files[role] = str(path)
    return files


def _argv(files: dict[str, str]) -> list[str]:
    return ["simulate", "--dut", files["dut"], "--scenario", files["scenario"],
            "--program", files["program"]]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_file_exits_2_with_one_line(case: Case, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    files = _write(tmp_path, case)
    code = main(_argv(files))
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == "", "nothing may be simulated or printed on stdout"
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    message = lines[0]
    assert "Traceback" not in err
    bad = files[case.role]
    if case.line is None:
        assert message.startswith(f"{bad}: "), message
    else:
        lines_ok = {case.line, case.item_line} - {None}
        assert any(message.startswith(f"{bad}:{n}: ") for n in lines_ok), message
    # pydantic puts a tagged union's tag in the path (faults[0].soc_mismatch.soc_pct); the
    # field named is the same either way
    path = re.sub(r"^(\w+\[\d+\])\.(" + "|".join(KINDS) + r")(?=\.|$)", r"\1",
                  message.split(": ")[1])
    assert path == (case.field or "(file)"), message
    assert case.found in message, message
    assert "; allowed: " in message and not message.endswith("allowed: "), message


def test_syntax_error_names_its_line(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """A YAML syntax error carries the line where the parser gave up."""
    path = tmp_path / "dut.yaml"
    path.write_text("name: x\nmodule_type: lfp_12v8_100ah\nseries: [1,\nparallel: 1\n")
    assert main(["simulate", "--dut", str(path)]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith(f"{path}:"), message
    line = message[len(str(path)) + 1:].split(":", 1)[0]
    assert line.isdigit() and 3 <= int(line) <= 5, message


def test_missing_bare_name_lists_what_exists(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["simulate", "--dut", "5s9p"]) == 2
    message = capsys.readouterr().err.strip()
    assert "5s9p.yaml" in message and "4s4p" in message and "1s1p" in message, message


def test_bad_file_through_the_entry_point(tmp_path: Path) -> None:
    """`python -m harness.cli` itself: exit status 2, one line on stderr, no traceback."""
    path = tmp_path / "scenario.yaml"
    path.write_text(textwrap.dedent("""\
        name: s
        faults:
          - kind: blown_fuse
            branch: s9p9
        """))
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "simulate", "--dut", "1s4p_diagonal",
                           "--scenario", str(path)], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(f"{path}:4: faults[0].branch: found 's9p9'"), proc.stderr


def test_other_errors_exit_1_without_traceback(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    import emulator.simulate as simulate

    def boom(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("solver diverged")

    monkeypatch.setattr(simulate, "run", boom)
    assert main(["simulate", "--dut", "1s1p"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip() == ("hil: error: RuntimeError: solver diverged "
                           "(run with --debug for the traceback)")
    with pytest.raises(RuntimeError, match="solver diverged"):
        main(["--debug", "simulate", "--dut", "1s1p"])
    with pytest.raises(RuntimeError, match="solver diverged"):
        main(["simulate", "--debug", "--dut", "1s1p"])


def test_debug_shows_the_file_error_too(tmp_path: Path) -> None:
    from bankmodel.files import FileError

    path = tmp_path / "dut.yaml"
    path.write_text(GOOD_DUT + "seriez: 4\n")
    with pytest.raises(FileError):
        main(["simulate", "--debug", "--dut", str(path)])


def test_unwritable_csv_is_refused_before_the_run(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "no_such_folder" / "run.csv"
    assert main(["simulate", "--dut", "1s1p", "--csv", str(target)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{target}: --csv: found a path that cannot be written"), err
