"""Every shipped plan passes on its healthy DUT on the emulated bench (README: "Every shipped plan
passes on its healthy DUT (`hil run PLAN --dut DUT`)").

- Each ``test_plans/*.yaml`` names its healthy DUT in its own ``dut:`` field (the DUT an emulated
  run uses without ``--dut``): ``HEALTHY`` is read from the plan files, so there is no second list
  to keep; a plan file without ``dut:`` fails here, naming it, and so does a ``dut:`` with no file
  in fixtures/duts/.
- A plan the truth tables already run whole on its healthy DUT (a ``Run(..., plan=...)`` in
  tests/test_truth_table_parallel.py or tests/test_truth_table_series.py, no scenario, every
  expectation PASS) is not run again: this file checks that the run is there and names only
  steps of the plan. Those tables assert exit status 0 for such a run, which ``hil run`` gives only
  when every step passed (harness/run.py), and PASS for each step they name.
- Every other plan is run here with ``hil run PLAN --dut DUT`` -- the real CLI, plugin, emulated
  station, drivers and result store -- two at a time through the truth tables' in-process driver
  (one Python process per share, so imports and compiled kernels are paid once per process), each
  run with its own SQLite store and reports folder; exit status 0 and every step of the plan
  recorded as passed in the store.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import pytest
import yaml

from test_truth_table_parallel import PASS, Outcome, Run, run_in_workers

pytestmark = pytest.mark.long(30)  # every shipped plan, whole: starts first (tests/conftest.py)

REPO = Path(__file__).resolve().parents[1]
PLANS_DIR = REPO / "test_plans"
DUTS_DIR = REPO / "fixtures" / "duts"


def shipped_plans(plans_dir: Path = PLANS_DIR) -> list[str]:
    return sorted(p.stem for p in plans_dir.glob("*.yaml"))


def plan_dut(plan: str, plans_dir: Path = PLANS_DIR) -> str | None:
    """The plan file's own ``dut:`` (the DUT of an emulated run without --dut), or None."""
    data = yaml.safe_load((plans_dir / f"{plan}.yaml").read_text(encoding="utf-8"))
    dut = data.get("dut") if isinstance(data, dict) else None
    return str(dut) if dut else None


def healthy_duts(plans_dir: Path = PLANS_DIR) -> dict[str, str]:
    """Plan stem -> the healthy DUT it passes on: each plan file's own ``dut:``."""
    return {plan: dut for plan in shipped_plans(plans_dir) if (dut := plan_dut(plan, plans_dir)) is not None}


HEALTHY: dict[str, str] = healthy_duts()
# the truth tables holding whole-plan healthy runs (module names on this folder's import path)
TRUTH_TABLES = ("test_truth_table_parallel", "test_truth_table_series", "test_truth_table_module")
# rough wall seconds per run on a quiet 2-core machine: the longest are dealt out first
WALL_S = {"rack_parallel_48v": 29, "parallel_bank_1s4p": 26, "bank_qualification_4s4p": 25, "bank_smoke": 4}


def plan_steps(plan: str) -> list[str]:
    data = yaml.safe_load((PLANS_DIR / f"{plan}.yaml").read_text(encoding="utf-8"))
    return [step["name"] for step in data["steps"]]


def truth_table_runs() -> dict[str, list[Run]]:
    """Table module -> its RUNS (an absent module has none: its plans count as not covered)."""
    out: dict[str, list[Run]] = {}
    for name in TRUTH_TABLES:
        try:
            out[name] = list(importlib.import_module(name).RUNS)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            out[name] = []
    return out


def healthy_runs(plan: str, tables: dict[str, list[Run]]) -> list[tuple[str, Run]]:
    """The truth-table runs of the whole shipped ``plan`` on its healthy DUT, every step expected PASS."""
    return [(table, run) for table, runs in tables.items() for run in runs
            if run.plan == plan and run.dut == HEALTHY.get(plan) and run.scenario is None
            and run.expects and all(e.verdict == PASS for e in run.expects)]


TABLES = truth_table_runs()
MAPPED = [p for p in shipped_plans() if p in HEALTHY]
COVERED = [p for p in MAPPED if healthy_runs(p, TABLES)]
TO_RUN = [p for p in MAPPED if p not in COVERED]


# ------------------------------------------------------------------------- (a) the mapping
def test_every_plan_has_a_healthy_dut() -> None:
    plans = shipped_plans()
    assert plans, f"no plan files in {PLANS_DIR}"
    missing = [p for p in plans if p not in HEALTHY]
    assert not missing, (f"plan file(s) without a healthy DUT: {', '.join(f'test_plans/{p}.yaml' for p in missing)} "
                         f"-- add 'dut: <stem>' to the plan (the DUT it passes on, fixtures/duts/<stem>.yaml)")
    no_dut = {p: d for p, d in HEALTHY.items() if not (DUTS_DIR / f"{d}.yaml").is_file()}
    assert not no_dut, f"plans name DUTs with no file in fixtures/duts/: {no_dut}"


def test_a_plans_dut_field_is_its_healthy_dut(tmp_path: Path) -> None:
    """Changing a plan's ``dut:`` changes the DUT it is run on here; a plan without one is
    reported missing (no hand-kept list to fall back on)."""
    (tmp_path / "a.yaml").write_text("name: a\ndut: parallel/1s4p_busbar\nsteps: []\n", encoding="utf-8")
    (tmp_path / "b.yaml").write_text("name: b\nsteps: []\n", encoding="utf-8")
    assert healthy_duts(tmp_path) == {"a": "parallel/1s4p_busbar"}
    (tmp_path / "a.yaml").write_text("name: a\ndut: rack_48v_3p\nsteps: []\n", encoding="utf-8")
    assert healthy_duts(tmp_path) == {"a": "rack_48v_3p"}


def test_healthy_comes_from_the_plan_files() -> None:
    """HEALTHY is what the plan files say, read as the harness reads a plan's ``dut:`` (the
    document against the plan schema; whether its steps fit their checks is another test's)."""
    from harness.config import load_document, validate_document
    from harness.config.plan import PlanFile

    for plan in shipped_plans():
        parsed = validate_document(PlanFile, load_document(PLANS_DIR / f"{plan}.yaml"))
        assert parsed.dut == HEALTHY.get(plan), plan


# ------------------------------------------------------------------------- (c) already run
@pytest.mark.parametrize("plan", COVERED)
def test_covered_by_a_truth_table(plan: str) -> None:
    """The truth table's run is the whole shipped plan on the healthy DUT, all PASS; the steps it
    names are steps of the plan (its exit-status test then asserts 0: every step passed)."""
    steps = set(plan_steps(plan))
    for table, run in healthy_runs(plan, TABLES):
        named = [e.step for e in run.expects]
        unknown = [s for s in named if s not in steps]
        assert not unknown, (f"{table} run '{run.name}' ({plan} on {run.dut}) expects steps the plan "
                             f"does not have: {unknown}; plan steps: {sorted(steps)}")



def test_coverage_split() -> None:
    """Which plans the truth tables cover and which this file runs (a table losing its healthy run
    of a plan moves that plan here instead of dropping it)."""
    assert sorted(COVERED + TO_RUN) == sorted(MAPPED)
    absent = [t for t, runs in TABLES.items() if not runs]
    if absent:
        warnings.warn(f"truth table module(s) not found or without RUNS: {absent}; "
                      f"their plans run here instead: {TO_RUN}")


# ------------------------------------------------------------------------- (b) run here
@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    root = tmp_path_factory.mktemp("shipped_plans")
    runs = [Run(plan, HEALTHY[plan], None, [], plan=plan) for plan in TO_RUN]
    return run_in_workers(root, runs, lambda run: WALL_S.get(run.name, 30))


@pytest.mark.parametrize("plan", TO_RUN)
def test_shipped_plan_passes_on_healthy_dut(outcomes: dict[str, Outcome], plan: str) -> None:
    outcome = outcomes[plan]
    where = f"hil run {plan} --dut {HEALTHY[plan]}"
    failed = {s: v for s, v in outcome.steps.items() if v != PASS}
    assert outcome.returncode == 0, (f"{where}: exit status {outcome.returncode}; steps not passed: {failed}; "
                                     f"failed measurements: {outcome.diagnoses}\n{outcome.output}")
    expected = plan_steps(plan)
    assert list(outcome.steps) == expected, \
        f"{where}: steps recorded in the store {list(outcome.steps)}, plan has {expected}\n{outcome.output}"
    assert not failed, f"{where}: steps not passed: {failed}; failed measurements: {outcome.diagnoses}"
