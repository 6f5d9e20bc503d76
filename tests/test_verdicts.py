"""Verdicts you can sign, through ``hil run`` end to end.

Every refusal of a plan that would otherwise judge wrongly (a misspelled limit, a limit or a
parameter in the wrong unit kind, a missing required limit, a ``setpoints:`` copy) ends with
exit status 2 and one line naming file, line, step and what is allowed -- before anything is
energised. Every verdict state is reached by a real run on the emulated bench, and the console,
the result store and the JUnit file say the same:

=========  ===========  =====================================================
state      exit status  reached here by
=========  ===========  =====================================================
PASS       0            bank_smoke on its healthy DUT
FAIL       1            bank_smoke with a 0.2 V low module
ERROR      3            a step whose bench time runs past its ``timeout``
RECORDED   4            a partial run (``-k``): measured, not qualified
ABORTED    130          SIGINT while a step runs
=========  ===========  =====================================================
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.measure import Limits, Recorder
from harness.store import ResultStore

REPO = Path(__file__).resolve().parents[1]
SMOKE = (REPO / "test_plans" / "bank_smoke.yaml").read_text()


def hil(tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    store = f"sqlite:///{tmp_path / 'results.sqlite'}"
    return subprocess.run([sys.executable, "-m", "harness.cli", "run", *args, "--results", store,
                           "--reports", str(tmp_path / "reports")],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


def plan_file(tmp_path: Path, text: str, name: str = "plan.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def last_run(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = ResultStore(f"sqlite:///{tmp_path / 'results.sqlite'}")
    runs = store.runs()
    return store, (runs[0] if runs else None)


# ============================================================================ refusals (exit 2)
REFUSALS = [
    pytest.param("imbalance: {le: 10 %}", "imbalanse: {le: 10 %}",
                 ["limits.imbalanse", "current_sharing does not measure", "imbalance"], id="misspelled-limit"),
    pytest.param("imbalance: {le: 10 %}", "imbalance: {le: 10 A}",
                 ["limits.imbalance", "a ratio"], id="limit-wrong-unit-kind"),
    pytest.param("ocv_spread: {le: 0.1 V}", "ocv_spread: {le: 0.1 A}",
                 ["limits.ocv_spread", "a voltage"], id="spread-limit-in-amps"),
    pytest.param("      imbalance: {le: 10 %}\n", "      {}\n",
                 ["current_sharing", "no limit on 'imbalance'"], id="missing-required-limit"),
    pytest.param("load_current: 200 A", "load_current: 5 V",
                 ["parameters.load_current", "a current"], id="parameter-wrong-unit"),
    pytest.param("settle_s: 10 s", "settle_s: 10 A",
                 ["parameters.settle_s", "a time"], id="settle-in-amps"),
    pytest.param("settle_s: 10 s", "settle_s: 10",
                 ["parameters.settle_s", "no unit"], id="time-without-unit"),
    pytest.param("settle_s: 10 s", "settle_s: 10 s, settle_time: 3 s",
                 ["parameters.settle_time", "does not take"], id="unknown-parameter"),
    pytest.param("    parameters: {load_current: 200 A, settle_s: 10 s}",
                 "    parameters: {load_current: 200 A, settle_s: 10 s}\n    setpoints: {load.current: 200 A}",
                 ["setpoints"], id="setpoints-copy-refused"),
    pytest.param("load_current: 200 A", "load_current: -200 A",
                 ["parameters.load_current", "a magnitude"], id="negative-setpoint"),
    pytest.param("load_current: 200 A", "load_current: 300 A",
                 ["parameters.load_current", "240 A"], id="parameter-above-the-load-rating"),
]


@pytest.mark.parametrize("old, new, expected", REFUSALS)
def test_bad_plan_is_refused_before_anything_is_energised(tmp_path: Path, old: str, new: str,
                                                         expected: list[str]) -> None:
    assert old in SMOKE, old
    if old.endswith("\n"):  # the whole limits block of current_sharing
        text = SMOKE.replace("    limits:\n" + old, "    limits:\n" + new)
    else:
        text = SMOKE.replace(old, new)
    assert text != SMOKE
    path = plan_file(tmp_path, text)
    result = hil(tmp_path, str(path), timeout=120)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{path}:"), lines[0]
    assert re.match(rf"{re.escape(str(path))}:\d+: ", lines[0]), lines[0]
    for text_part in expected:
        assert text_part in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    _, run = last_run(tmp_path)
    assert run is None  # nothing started, nothing energised


def test_module_plan_never_applies_to_a_bank(tmp_path: Path) -> None:
    result = hil(tmp_path, "eol_module", "--dut", "1s4p_diagonal", timeout=120)
    assert result.returncode == 2, result.stderr
    assert "applies_to" in result.stderr and "a module plan applies to one module" in result.stderr


# ============================================================================ the verdict states
def test_pass(tmp_path: Path) -> None:
    result = hil(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"^PASS\s", result.stdout, re.M)
    store, run = last_run(tmp_path)
    assert run.verdict == "pass"
    assert {s.verdict for s in store.steps(run.id)} == {"pass"}
    # a measurement without a limit is RECORDED, never PASS
    recorded = [m for m in store.measurements(run.id) if m.verdict == "recorded"]
    assert recorded and all(m.limit_kind in (None, "record") for m in recorded)
    assert "[(recorded)] RECORDED" in result.stdout


def test_fail_names_the_low_module(tmp_path: Path) -> None:
    result = hil(tmp_path, "--scenario", "ocv_mismatch_0v2")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"^FAIL\s", result.stdout, re.M)
    _, run = last_run(tmp_path)
    assert run.verdict == "fail"


def test_error_when_a_step_runs_past_its_timeout(tmp_path: Path) -> None:
    text = SMOKE.replace("    parameters: {load_current: 200 A, settle_s: 10 s}",
                         "    parameters: {load_current: 200 A, settle_s: 10 s}\n    timeout: 2 s")
    assert text != SMOKE
    result = hil(tmp_path, str(plan_file(tmp_path, text)))
    assert result.returncode == 3, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"^ERROR\s", result.stdout, re.M)
    assert "StepTimeout" in result.stdout and "timeout of 2 s" in result.stdout
    store, run = last_run(tmp_path)
    assert run.verdict == "error"
    steps = {s.name: s for s in store.steps(run.id)}
    assert steps["current_sharing"].verdict == "error"
    assert "timeout" in (steps["current_sharing"].error or "")
    junit = ET.parse(next(Path(run.extra["run_dir"]).glob("junit.xml"))).getroot()
    props = {p.get("value") for p in junit.iter("property") if p.get("name") == "verdict"}
    assert "error" in props
    # the bench was made safe when the step ended in error
    assert any("ended in error" in e.text for e in store.events(run.id))


def test_recorded_for_a_partial_run(tmp_path: Path) -> None:
    result = hil(tmp_path, "-k", "bms_identity or module_ocv")
    assert result.returncode == 4, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"^RECORDED\s", result.stdout, re.M)
    _, run = last_run(tmp_path)
    assert run.verdict == "recorded"


def test_aborted_on_sigint_while_a_step_runs(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'results.sqlite'}"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "parallel_bank_1s4p",
                             "--results", store_url, "--reports", str(tmp_path / "reports")],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    deadline = time.monotonic() + 240
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if "open_branch_current" in line or "ocv_" in line:
                proc.send_signal(signal.SIGINT)
                break
            assert time.monotonic() < deadline, "".join(seen[-40:])
        rest, _ = proc.communicate(timeout=120)
        seen.append(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(seen)
    assert proc.returncode == 130, output[-3000:]
    store, run = last_run(tmp_path)
    assert run.verdict == "aborted"
    assert "aborted" in {s.verdict for s in store.steps(run.id)}
    assert "PASS" not in output.splitlines()[-1]


# ============================================================================ the one judge
@pytest.mark.parametrize("limits, value, verdict", [
    (Limits(), 3.0, "recorded"),
    (Limits(), None, "error"),
    (Limits.at_most(0.1, "V"), 0.1, "pass"),
    (Limits.at_most(0.1, "V"), 0.1000001, "fail"),
    (Limits.at_least(1.0, "A"), 0.5, "fail"),
    (Limits.in_range(12.0, 14.6, "V"), 13.0, "pass"),
    (Limits.in_range(12.0, 14.6, "V"), float("nan"), "error"),
    (Limits.in_range(12.0, 14.6, "V", marginal_pct=10), 12.1, "marginal"),
    (Limits.within_pct(100.0, 5, "Ah"), 104.9, "pass"),
    (Limits.within_pct(100.0, 5, "Ah"), 105.1, "fail"),
    (Limits.equal_to(400.0), 400, "pass"),
    (Limits.equal_to(400.0), 400.0000000001, "pass"),
    (Limits.equal_to(400.0), 399.0, "fail"),
    (Limits.equal_to(True), True, "pass"),
    (Limits.equal_to(True), 1, "fail"),
    (Limits.equal_to("2.1"), "2.1", "pass"),
    (Limits.equal_to("2.1"), "2.1.0", "fail"),
    (Limits.at_most(0.0), True, "error"),
])
def test_one_judge_for_every_limit(limits: Limits, value: object, verdict: str) -> None:
    assert limits.judge(value) == verdict


def test_plan_limits_become_the_same_judge() -> None:
    from harness.config.plan import Limit
    limit = Limit.model_validate({"in_range": ["12 V", "14.6 V"]}).to_limits()
    assert (limit.low, limit.high, limit.unit) == (12.0, 14.6, "V")
    assert Limit.model_validate({"equals": 400}).to_limits().judge(400.0) == "pass"
    milli = Limit.model_validate({"le": "3 mohm"}).to_limits()
    assert milli.judge(0.0029) == "pass" and milli.judge(0.0031) == "fail"


def test_step_verdicts_from_measurements() -> None:
    rec = Recorder(lambda: 0.0)
    rec("a", 1.0, "V")
    assert rec.verdict() == "recorded"
    rec("b", 1.0, "V", Limits.at_most(2.0, "V"))
    assert rec.verdict() == "pass"
    rec("c", 3.0, "V", Limits.at_most(2.0, "V"))
    assert rec.verdict() == "fail"
    rec("d", None, "V", Limits.at_most(2.0, "V"))
    assert rec.verdict() == "error"
    assert "RECORDED" in rec.taken[0].line() and "PASS" not in rec.taken[0].line()


def test_overall_verdict_rules() -> None:
    from harness.plugin import overall_verdict
    steps = ["a", "b", "c"]
    assert overall_verdict(steps, {"a": "pass", "b": "pass", "c": "pass"}, False) == "pass"
    assert overall_verdict(steps, {"a": "pass", "b": "fail", "c": "error"}, False) == "fail"
    assert overall_verdict(steps, {"a": "pass", "b": "error", "c": "pass"}, False) == "error"
    assert overall_verdict(steps, {"a": "pass", "b": "recorded", "c": "pass"}, False) == "recorded"
    assert overall_verdict(steps, {"a": "pass", "b": "pass"}, False) == "recorded"  # c not run
    assert overall_verdict(steps, {"a": "pass", "b": "pass", "c": "pass"}, True) == "aborted"
    assert overall_verdict(steps, {}, False) == "error"
