"""The safe state is never skipped: after a failed step and at the end of every session the
twin's load and supply are off and its contactor relays open.

A check that deliberately leaves everything energised (tests/plugins/leave_energised.py) runs
through the real plugin on the emulated station; the twin is observed, not driven, after each
step and after the session. With ``on_fail: continue`` the load stays on after the failed step --
which proves the observation can see a skipped safe state -- and the end of the session still
makes the bench safe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]

PLAN = """\
name: leave_energised
version: "1.0"
applies_to: [1s4p_diagonal]
steps:
  - name: energise
    check: leave_energised
    parameters: {{load_current: 20 A, supply_voltage: 14.0 V, supply_current: 5 A, hold_s: 2 s}}
    limits:
      load_left_on: {{le: {limit}}}
{extra}"""


def run_plan(tmp_path: Path, limit: int, extra: str = "") -> list[dict]:
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN.format(limit=limit, extra=extra))
    snapshot = tmp_path / "snapshot.json"
    env = {**os.environ, "BANKHIL_SNAPSHOT": str(snapshot)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "test_plans/test_plan_steps.py", "-p", "tests.plugins.leave_energised",
         "--plan", str(plan), "--dut", "1s4p_diagonal", "--results", f"sqlite:///{tmp_path / 'r.sqlite'}",
         "--run-dir", str(tmp_path / "run"), "-q", "-p", "no:randomly", "-p", "no:cacheprovider"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert snapshot.is_file(), result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(snapshot.read_text())


def safe(snap: dict) -> bool:
    return not snap["load_on"] and not snap["supply_on"] and not snap["closed"]


def test_failed_step_leaves_the_bench_safe(tmp_path: Path) -> None:
    after_step, after_session = run_plan(tmp_path, limit=0)
    assert after_step["when"] == "after energise"
    assert safe(after_step), after_step
    assert safe(after_session), after_session


def test_safe_state_is_observable_when_a_plan_skips_it(tmp_path: Path) -> None:
    after_step, after_session = run_plan(tmp_path, limit=0, extra="    on_fail: continue\n")
    assert after_step["load_on"] and after_step["supply_on"], after_step
    assert safe(after_session), after_session


def test_passing_step_that_leaves_outputs_on_is_made_safe_at_session_end(tmp_path: Path) -> None:
    after_step, after_session = run_plan(tmp_path, limit=1)
    assert after_step["load_on"], after_step  # a pass does not trigger the safe state ...
    assert safe(after_session), after_session  # ... the end of the session does
