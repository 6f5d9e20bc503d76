"""Truth table of the parallel-bank checks (test_plans/checks/parallel.py, with the sharing
diagnosis of sharing.py, as the parallel plans use them).

DESIGN.md: "each check fails on the fault it exists to catch, passes on a healthy bank, and the
tests show both". For every check: the healthy DUT passes; each fault it exists to catch fails
with the troubleshooting row (test_plans/checks/troubleshooting.yaml) chosen for it from what
was measured, naming the module, branch or part it points at; a case just inside its limit
passes.

The cases run the SHIPPED plans' steps. A whole plan runs as it ships (``Run(plan=...)``); any
other case's plan is built from the shipped plan files themselves: :data:`STEPS` names, for
each step a case uses, the plan file under test_plans/ and the step in it, and the only thing a
case may change are parameters of dimension time, where the physics allows a shorter wait
(``durations``; :func:`step_from_shipped` refuses anything else). Limits are never touched:
loosening a limit in a shipped plan changes these verdicts (``test_a_loosened_shipped_limit_*``
shows it, ``test_cases_carry_the_shipped_limits`` checks every case). Flow fields (``gate``,
``on_fail``) are dropped: a case's steps are cells of the table, each judged on its own.

How: one ``hil run`` per (DUT, scenario) -- the real CLI, plugin, emulated station, drivers and
result store -- of the shipped plan or of a plan of its steps written to a temporary folder, so
each pair costs one emulator start-up. Two runs at a time (two cores); hours of bench time pass
on the virtual clock. Verdicts, diagnoses and values are read back from each run's SQLite
result store.

Fixtures used beyond the shipped ones: fixtures/duts/parallel/ (1s4p_busbar: the healthy 1S4P
on busbars; _undersized / _marginal / _200a busbars; _mixed_batch; _candidate firmware; rack_48v_3p
variants: _mixed_batch, _small_fuse, _long_lead, rack_48v_4p) and fixtures/scenarios/parallel/
(soc_full, soc_mismatch_4pct, unequal_cable_10cm, aged_module_mild, thermal_borderline,
group_low, group_low_borderline, silent_module_at_start, main_welded, module_discharged).

Faults the twin cannot express, so no case here: a reversed module or cable (polarity,
reversed_polarity row; the twin has no reversed-lead fault), a module of another model or
chemistry inside a bank (module_identity's model/chemistry_match: the twin builds every module
and the BMS identity from the DUT's one module type), a load or charger that does not switch
off (bank_at_rest's load_on/supply_on/bank_current: the emulated instruments always obey; a
current circulating between modules nets to zero in the BMS's bank current -- the
circulating_current step is the one that sees it), and a surge beyond its limit through the
shipped inrush step (its pre-check refuses to close onto more than 0.1 V, and within 0.1 V the
twin's surge is ~12 A). bank_at_rest fails here on a welded main contactor (its new proof by
current), polarity on a module read off the bus outside its window (discharged, or held open by
the master).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from harness.store import ResultStore

REPO = Path(__file__).resolve().parents[1]
PLANS_DIR = REPO / "test_plans"
PASS, FAIL, NOT_RUN = "pass", "fail", "not run"
pytestmark = pytest.mark.long(60)  # hours of bench time in two processes: starts first (tests/conftest.py)


# ----------------------------------------------------------------------- steps of shipped plans
@dataclass(frozen=True)
class StepRef:
    """A step of a shipped plan: ``plan`` (stem in test_plans/), ``step`` (its name there) and
    the time parameters a case may shorten (``durations``: name -> text with a time unit)."""

    plan: str
    step: str
    durations: dict[str, str] = field(default_factory=dict)


P1, P4, PC, PR = "parallel_bank_1s4p", "bank_qualification_4s4p", "commissioning_parallel", "rack_parallel_48v"
STEPS: dict[str, StepRef] = {
    # 1S4P qualification (12.8 V)
    "configuration": StepRef(P1, "configuration"),
    "pre_parallel": StepRef(P1, "pre_parallel_match", {"rest_s": "30 s"}),
    "sync": StepRef(P1, "bms_sync_gating"),
    "inrush": StepRef(P1, "parallel_inrush", {"rest_s": "30 s"}),
    "sharing": StepRef(P1, "current_sharing"),
    "branch_protection": StepRef(P1, "branch_protection"),
    "circulating": StepRef(P1, "circulating_current"),
    "drift": StepRef(P1, "soc_drift"),
    "thermal": StepRef(P1, "thermal_rise"),
    # 4S4P assembly order and identity (000)
    "identity_4s4p": StepRef(P4, "module_identity"),
    "assembly": StepRef(P4, "assembly_groups"),
    "balance": StepRef(P4, "assembly_group_balance"),
    # 48 V rack: 004's commissioning sequence, one step at a time
    "c01_modules": StepRef(PC, "c01_confirm_modules"),
    "c02_soc": StepRef(PC, "c02_align_soc"),
    "c03_off": StepRef(PC, "c03_system_off"),
    "c04_polarity": StepRef(PC, "c04_polarity"),
    "c05_fuses": StepRef(PC, "c05_branch_fuses"),
    "c06_layout": StepRef(PC, "c06_c07_leads_and_terminals"),
    "c08_network": StepRef(PC, "c08_c10_bms_network"),
    "c11_main": StepRef(PC, "c11_main_disconnect"),
    "c11b_contactors": StepRef(PC, "c11b_branch_contactors"),
    "c12_inverter": StepRef(PC, "c12_inverter_recognition"),
}
FLOW_FIELDS = ("gate", "on_fail")


def _time_params() -> Callable[[str, str], bool]:
    """``is_time(check, parameter)`` from the checks' declarations."""
    from test_plans.checks import known_checks

    specs = known_checks()

    def is_time(check: str, name: str) -> bool:
        param = specs[check].params.get(name)
        return param is not None and param.dimension == "time"
    return is_time


def shipped_step(plan: str, step: str, plans_dir: Path = PLANS_DIR) -> dict[str, Any]:
    data = yaml.safe_load((plans_dir / f"{plan}.yaml").read_text(encoding="utf-8"))
    for entry in data["steps"]:
        if entry["name"] == step:
            return entry
    raise KeyError(f"no step '{step}' in {plans_dir / plan}.yaml")


def step_from_shipped(key: str, plans_dir: Path = PLANS_DIR) -> dict[str, Any]:
    """The step ``STEPS[key]`` as the shipped plan file has it, named ``key``, its durations
    shortened, its flow fields dropped; anything but a time parameter refused."""
    ref = STEPS[key]
    entry = copy.deepcopy(shipped_step(ref.plan, ref.step, plans_dir))
    is_time = _time_params()
    parameters = dict(entry.get("parameters") or {})
    for name, value in ref.durations.items():
        if not is_time(entry["check"], name):
            raise ValueError(f"STEPS['{key}'] overrides '{name}' of {ref.plan}.{ref.step}: only parameters "
                             f"of dimension time may be shortened, never limits or other parameters")
        parameters[name] = value
    if parameters:
        entry["parameters"] = parameters
    for name in FLOW_FIELDS:
        entry.pop(name, None)
    entry["name"] = key
    return entry


# ----------------------------------------------------------------------- expectations
@dataclass
class Expect:
    step: str
    verdict: str
    text: str = ""                                    # in a failed measurement's diagnosis
    values: dict[str, Any] = field(default_factory=dict)  # measurement name -> exact value
    row: str | None = None                            # troubleshooting row of a failed measurement
    subject: str | None = None                        # what that diagnosis names first


def Fail(step: str, row: str, subject: str | None = None, **values: Any) -> Expect:  # noqa: N802
    """A failed step whose diagnosis is troubleshooting row ``row`` naming ``subject`` first."""
    return Expect(step, FAIL, values=values, row=row, subject=subject)


@dataclass
class Run:
    name: str
    dut: str
    scenario: str | None
    expects: list[Expect]
    plan: str | None = None                      # a whole shipped plan instead of STEPS

    def plan_data(self, plans_dir: Path = PLANS_DIR) -> dict[str, Any]:
        steps = [step_from_shipped(e.step, plans_dir) for e in self.expects]
        return {"name": f"truth_{self.name}", "version": "1", "applies_to": ["*"], "steps": steps}


def row_text(row_id: str) -> str:
    """What a diagnosis of that row quotes: ``(<doc>: <symptom>)``."""
    from test_plans.checks.diagnosis import row

    r = row(row_id)
    return f"({r.document}: {r.symptom})"


B, R = "parallel/1s4p_busbar", "rack_48v_3p"


def whole_plan(plan: str) -> list[Expect]:
    """Every step of a shipped plan, PASS."""
    data = yaml.safe_load((PLANS_DIR / f"{plan}.yaml").read_text(encoding="utf-8"))
    return [Expect(step["name"], PASS) for step in data["steps"]]


RUNS = [
    # ------------------------------------------------------------------ healthy: whole plans
    Run("healthy", B, None, [e if e.step != "bms_sync_gating" else
                             Expect("bms_sync_gating", PASS, values={"modules_pending_start": 0})
                             for e in whole_plan(P1)], plan=P1),
    Run("rack_healthy", R, None, whole_plan(PR), plan=PR),
    Run("commissioning_healthy", R, None, whole_plan(PC), plan=PC),
    # ------------------------------------------------------------------ 1S4P faults
    Run("soc_mismatch", B, "soc_mismatch", [
        Fail("pre_parallel", "soc_mismatch", "s1p4"),   # 20 points of SOC, only 0.07 V
        Expect("inrush", PASS),                                 # borderline: 0.07 V of 0.1 V, ~9 A surge
        Fail("circulating", "soc_mismatch", "s1p4"),
        Fail("drift", "soc_mismatch", "s1p4")]),
    Run("ocv_mismatch_0v2", B, "ocv_mismatch_0v2", [
        Fail("pre_parallel", "soc_mismatch", "s1p4"),
        Fail("inrush", "startup_alarm", "s1p4", contactor_closed=False),
        Fail("circulating", "soc_mismatch", "s1p4")]),
    # an older module: every diagnosis chosen from its SoH / its faster SOC drop, naming it
    Run("aged_module", B, "aged_module", [
        Fail("pre_parallel", "weak_module", "s1p3"),
        Fail("sharing", "weak_module", "s1p3"),         # sharing.py: its smaller share, its resistance
        Expect("branch_protection", PASS),                      # borderline: ~80 % share
        Fail("drift", "weak_module", "s1p3")]),
    Run("aged_module_plan", B, "aged_module", [
        Fail("pre_parallel_match", "weak_module", "s1p3"),
        Expect("configuration", NOT_RUN)], plan=P1),            # the plan stops at the named module
    Run("unequal_cable", B, "unequal_cable", [Fail("sharing", "cable_resistance")]),
    Run("loose_lug", B, "loose_lug", [Fail("sharing", "cable_resistance"),
                                      Fail("thermal", "hot_terminal", "s1p4.+")]),
    Run("hot_module", B, "hot_module", [Fail("sharing", "module_offline"),  # charge blocked at 50 C
                                        Fail("thermal", "warm_module", "s1p3")]),
    Run("blown_fuse", B, "blown_fuse", [Fail("sharing", "fuse_trips"),
                                        Fail("branch_protection", "fuse_trips", "s1p4")]),
    Run("stuck_contactor", B, "stuck_contactor", [Fail("pre_parallel", "contactor_weld", "s1p4"),
                                                  Fail("inrush", "contactor_weld", "s1p4")]),
    Run("firmware_mismatch", B, "firmware_mismatch", [Fail("sync", "reduced_capacity", "s1p4")]),
    Run("silent_module", B, "parallel/silent_module_at_start", [Fail("sync", "module_offline", "s1p3")]),
    Run("candidate_silent", "parallel/1s4p_busbar_candidate", "parallel/silent_module_at_start",
        [Fail("sync", "counted_not_accepted", "s1p3")]),
    Run("mixed_batch", "parallel/1s4p_busbar_mixed_batch", None, [Fail("pre_parallel", "batch_mix", "s1p4")]),
    Run("undersized_busbar", "parallel/1s4p_busbar_undersized", None,
        [Fail("thermal", "busbar_undersized", "bus.")]),
    Run("daisy_chain_bus", "1s4p_diagonal", None, [Fail("thermal", "busbar_undersized", "bus.")]),
    # inside 30 K after 30 min at 200 A (what the step once ran), far beyond it at the rated 400 A
    Run("busbar_sized_for_200a", "parallel/1s4p_busbar_200a", None,
        [Fail("thermal", "busbar_undersized", "bus.", rated_current=400.0)]),
    # ------------------------------------------------------------------ 4S4P
    Run("4s4p_healthy", "4s4p", None, [Expect("identity_4s4p", PASS), Expect("assembly", PASS),
                                       Expect("balance", PASS)]),
    Run("4s4p_aged", "4s4p", "aged_module", [Fail("identity_4s4p", "weak_module", "s3p1")]),
    Run("4s4p_ocv_mismatch", "4s4p", "ocv_mismatch_0v2", [Fail("assembly", "startup_alarm", "s4p4")]),
    Run("4s4p_group_low", "4s4p", "parallel/group_low", [Expect("assembly", PASS),
                                                        Fail("balance", "series_mismatch", "s2")]),
    # ------------------------------------------------------------------ 48 V rack: commissioning
    # a module the master will not accept: read off the bus before it is landed (step 4), its BMS
    # holds its switch open; the sequence stops there, naming it
    Run("commissioning_firmware_mismatch", R, "firmware_mismatch",
        [Expect("c03_system_off", PASS), Fail("c04_polarity", "reduced_capacity", "s1p3"),
         Expect("c11_main_disconnect", NOT_RUN), Expect("c12_inverter_recognition", NOT_RUN),
         Expect("c15_increase_load", NOT_RUN)], plan=PC),
    # ... and step by step: step 11 will not close the main disconnect onto it either
    Run("rack_firmware_mismatch", R, "firmware_mismatch",
        [Expect("c08_network", PASS), Fail("c11_main", "reduced_capacity", "s1p3"),
         Fail("c12_inverter", "reduced_capacity", "s1p3")]),
    Run("commissioning_stuck_contactor", R, "stuck_contactor",
        [Expect("c11_main_disconnect", PASS), Fail("c11b_branch_contactors", "contactor_weld", "s1p3"),
         Expect("c12_inverter_recognition", NOT_RUN), Expect("c15_increase_load", NOT_RUN)], plan=PC),
    Run("rack_aged", R, "aged_module", [Fail("c01_modules", "weak_module", "s1p2")]),
    Run("rack_mixed_batch", "parallel/rack_48v_3p_mixed_batch", None,
        [Fail("c01_modules", "batch_mix", "s1p3")]),
    Run("rack_4p", "parallel/rack_48v_4p", None, [Fail("c01_modules", "parallel_count_exceeded", "bank")]),
    Run("rack_soc_mismatch", R, "soc_mismatch", [Fail("c02_soc", "soc_mismatch", "s1p3")]),
    Run("rack_main_welded", R, "parallel/main_welded", [Fail("c03_off", "contactor_weld", "main")]),
    Run("rack_module_discharged", R, "parallel/module_discharged",
        [Fail("c04_polarity", "soc_mismatch", "s1p3")]),
    Run("rack_small_fuse", "parallel/rack_48v_3p_small_fuse", None,
        [Fail("c05_fuses", "fuse_trips", "branch fuses")]),
    Run("rack_long_lead", "parallel/rack_48v_3p_long_lead", None,
        [Fail("c06_layout", "cable_resistance", "s1p2")]),
    Run("same_side_takeoff", "1s4p_same_side", None, [Fail("c06_layout", "cable_resistance", "s1p1")]),
    Run("jumper_bus", "1s4p_diagonal", None, [Fail("c06_layout", "busbar_undersized", "bus")]),
    Run("rack_silent_module", R, "parallel/silent_module_at_start",
        [Fail("c08_network", "module_offline", "s1p2"),
         Fail("c12_inverter", "reduced_capacity", "s1p2")]),
    Run("rack_blown_fuse", R, "blown_fuse", [Expect("c11_main", PASS),
                                             Fail("c11b_contactors", "module_offline", "s1p3")]),
    # ------------------------------------------------------------------ just inside the limits
    Run("soc_full", B, "parallel/soc_full", [
        Expect("sync", PASS, values={"modules_pending_start": 1, "modules_pending_end": 0})]),
    Run("soc_mismatch_4pct", B, "parallel/soc_mismatch_4pct", [Expect("pre_parallel", PASS),
                                                              Expect("circulating", PASS)]),
    Run("unequal_cable_10cm", B, "parallel/unequal_cable_10cm", [Expect("sharing", PASS)]),
    Run("aged_module_mild", B, "parallel/aged_module_mild", [Expect("configuration", PASS),
                                                            Expect("pre_parallel", PASS), Expect("drift", PASS)]),
    Run("thermal_borderline", "parallel/1s4p_busbar_marginal", "parallel/thermal_borderline",
        [Expect("thermal", PASS)]),
    Run("4s4p_group_low_borderline", "4s4p", "parallel/group_low_borderline", [Expect("balance", PASS)]),
]


@dataclass
class Outcome:
    returncode: int
    output: str
    steps: dict[str, str]                            # step -> verdict
    diagnoses: dict[str, list[str]]                  # step -> "name: diagnosis" of failed measurements
    values: dict[str, dict[str, Any]]                # step -> measurement -> value


# One Python process runs a share of the `hil run`s one after another through the CLI's own entry
# point (harness.cli.main: argument split, pytest, plugin, emulated station, store), so the
# imports and compiled kernels are paid once per process, not once per run.
DRIVER = """
import contextlib, json, sys
from harness.cli import main
jobs = json.loads(open(sys.argv[1]).read())
for job in jobs:
    with open(job["log"], "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            code = main(job["argv"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:
            print(f"driver: {type(exc).__name__}: {exc}")
            code = 3
    open(job["rc"], "w").write(str(code))
"""
WORKERS = 2


def _argv(run: Run, folder: Path, plans_dir: Path = PLANS_DIR) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    if run.plan is None:
        plan = folder / "plan.yaml"
        # a table of its own (tests/test_truth_table_series.py) may build its plans its own way
        data = run.plan_data(plans_dir) if type(run).plan_data is Run.plan_data else run.plan_data()
        plan.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
        plan_arg = str(plan)
    else:
        plan_arg = run.plan
    argv = ["run", plan_arg, "--dut", run.dut, "--results", f"sqlite:///{folder / 'results.sqlite'}",
            "--reports", str(folder / "reports"), "-p", "no:logging", "-p", "no:cacheprovider"]
    return argv + (["--scenario", run.scenario] if run.scenario else [])


def _outcome(folder: Path) -> Outcome:
    rc_file, log = folder / "rc", folder / "log.txt"
    code = int(rc_file.read_text()) if rc_file.exists() else -1
    output = log.read_text(errors="replace")[-8000:] if log.exists() else "(no output)"
    steps: dict[str, str] = {}
    diagnoses: dict[str, list[str]] = {}
    values: dict[str, dict[str, Any]] = {}
    if (folder / "results.sqlite").exists():
        store = ResultStore(f"sqlite:///{folder / 'results.sqlite'}")
        try:
            runs = store.runs()
            if runs:
                steps = {s.name: s.verdict or "" for s in store.steps(runs[0].id)}
                for m in store.measurements(runs[0].id):
                    values.setdefault(m.step_name, {})[m.name] = m.value
                    if m.verdict in ("fail", "error"):
                        diagnoses.setdefault(m.step_name, []).append(f"{m.name}: {m.diagnosis}")
        finally:
            store.close()
    return Outcome(code, output, steps, diagnoses, values)


def run_in_workers(root: Path, runs: list[Run], weight: Callable[[Run], float] = lambda run: 1.0,
                   plans_dir: Path = PLANS_DIR,
                   station_of: Callable[[Run], Path | None] = lambda run: None) -> dict[str, Outcome]:
    """Run every ``hil run`` of ``runs`` in WORKERS driver processes, heaviest first, each to
    the process with the least work so far, so they end at about the same time; the outcomes
    by run name."""
    shares: list[list[dict[str, Any]]] = [[] for _ in range(WORKERS)]
    load = [0.0] * WORKERS
    for run in sorted(runs, key=lambda r: -weight(r)):
        k = load.index(min(load))
        load[k] += weight(run)
        folder = root / run.name
        station = station_of(run)
        argv = _argv(run, folder, plans_dir) + (["--station", str(station)] if station else [])
        shares[k].append({"argv": argv, "log": str(folder / "log.txt"),
                          "rc": str(folder / "rc")})
    procs = []
    for k, share in enumerate(s for s in shares if s):
        jobs = root / f"jobs{k}.json"
        jobs.write_text(json.dumps(share), encoding="utf-8")
        with open(root / f"jobs{k}.err", "w") as err:  # a driver that dies says why (below)
            procs.append(subprocess.Popen([sys.executable, "-c", DRIVER, str(jobs)], cwd=REPO,
                                          stdout=subprocess.DEVNULL, stderr=err))
    try:
        for proc in procs:
            proc.wait(timeout=900)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    outcomes = {run.name: _outcome(root / run.name) for run in runs}
    drivers = "".join(path.read_text(errors="replace")[-4000:] for path in sorted(root.glob("jobs*.err")))
    for outcome in outcomes.values():
        if outcome.returncode == -1 and drivers:
            outcome.output += f"\ndriver process: {drivers}"
    return outcomes


def assert_expected(outcome: Outcome, run: Run, expect: Expect) -> None:
    """One cell of a truth table: the step's verdict; when failed, a failed measurement whose
    diagnosis is the expected row naming the expected subject; named values."""
    verdict = outcome.steps.get(expect.step, NOT_RUN)
    found = outcome.diagnoses.get(expect.step, [])
    where = f"{run.name} ({run.dut}, {run.scenario or 'healthy'}) step {expect.step}"
    assert verdict == expect.verdict, \
        f"{where}: {verdict}, expected {expect.verdict}; failed: {found}\n{outcome.output}"
    if expect.verdict == FAIL and expect.text:
        assert any(expect.text in d for d in found), f"{where}: no diagnosis with '{expect.text}' in {found}"
    if expect.verdict == FAIL and expect.row is not None:
        quoted = row_text(expect.row)
        hits = [d for d in found if quoted in d]
        assert hits, f"{where}: no diagnosis of row '{expect.row}' {quoted} in {found}"
        if expect.subject is not None:
            named = [d for d in hits if d.split(": ", 1)[1].startswith(expect.subject)]
            assert named, f"{where}: row '{expect.row}' does not name '{expect.subject}' first: {hits}"
    for name, value in expect.values.items():
        assert outcome.values.get(expect.step, {}).get(name) == value, \
            f"{where}: {name} = {outcome.values.get(expect.step, {}).get(name)!r}, expected {value!r}"


def _weight(run: Run) -> float:
    """Rough wall cost: whole plans and the long steps (SOC drift, thermal rise) weigh most."""
    if run.plan is not None:
        return 6.0
    return 1.0 + sum(e.step in ("drift", "thermal") for e in run.expects)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    return run_in_workers(tmp_path_factory.mktemp("truth_table"), RUNS, _weight)


def table_cases(runs: list[Any]) -> list[Any]:
    """One pytest case per (run, expected step verdict): the cells of a truth table."""
    return [pytest.param(run, expect, id=f"{expect.step}-{run.name}") for run in runs for expect in run.expects]


def assert_exit_status(outcome: Outcome, run: Any) -> None:
    """``hil run`` exits 0 exactly when every step it ran passed, 1 when one failed."""
    failed = any(e.verdict == FAIL for e in run.expects)
    assert outcome.returncode == (1 if failed else 0), outcome.output


CASES = table_cases(RUNS)


@pytest.mark.parametrize("run, expect", CASES)
def test_truth_table(outcomes: dict[str, Outcome], run: Run, expect: Expect) -> None:
    assert_expected(outcomes[run.name], run, expect)


@pytest.mark.parametrize("run", RUNS, ids=[r.name for r in RUNS])
def test_exit_status(outcomes: dict[str, Outcome], run: Run) -> None:
    assert_exit_status(outcomes[run.name], run)


def test_thermal_rise_is_judged_at_the_rated_current(outcomes: dict[str, Outcome]) -> None:
    """000's 30 K is at the maximum rated current: the healthy 1S4P (4 x 100 A) is loaded with
    the station's 240 A and judged at 400 A -- the busbar's steady rise extrapolated from its
    fitted time constant (or reached), scaled by I² with copper's temperature coefficient -- and
    the report says how."""
    values = outcomes["healthy"].values["thermal_rise"]
    assert values["rated_current"] == 400.0
    assert values["load_current_measured"] == pytest.approx(240.0, rel=0.01)
    assert values["current_scale"] == pytest.approx((400 / 240) ** 2, rel=0.02)
    method = values["rise_method"]
    assert "judged at the rated 400 A" in method and "+0.393 %/K" in method, method
    assert "extrapolated from its time constant" in method or "steady state" in method, method
    # the judged rise is the measured one brought to 400 A: well above it, below 000's 30 K
    assert 2.5 * values["busbar_rise_measured"] < values["busbar_rise"] < 30.0
    assert values["busbar_time_constant"] > 0


# ----------------------------------------------------------------------- the plans are the shipped ones
def assert_shipped_limits(run: Any, table: dict[str, StepRef] | None = None) -> None:
    """Each step of the case's plan is its shipped plan's step: the same check, the same limits,
    the same parameters but for the time parameters its reference shortens."""
    table = table if table is not None else getattr(run, "table", STEPS)
    is_time = _time_params()
    for step in run.plan_data()["steps"]:
        ref = table[step["name"]]
        shipped = shipped_step(ref.plan, ref.step)
        assert step["check"] == shipped["check"]
        assert step.get("limits") == shipped.get("limits"), f"{run.name}: {step['name']} limits differ"
        ours, theirs = step.get("parameters") or {}, shipped.get("parameters") or {}
        for name in set(ours) | set(theirs):
            if ours.get(name) != theirs.get(name):
                assert is_time(step["check"], name) and name in ref.durations, \
                    f"{run.name}: {step['name']} changes parameter {name} ({theirs.get(name)!r} -> {ours.get(name)!r})"


@pytest.mark.parametrize("run", [r for r in RUNS if r.plan is None], ids=lambda r: r.name)
def test_cases_carry_the_shipped_limits(run: Run) -> None:
    assert_shipped_limits(run, STEPS)


def test_only_durations_may_be_shortened() -> None:
    STEPS["_probe"] = StepRef(P1, "thermal_rise", {"load_current": "100 A"})
    try:
        with pytest.raises(ValueError, match="only parameters of dimension time"):
            step_from_shipped("_probe")
    finally:
        del STEPS["_probe"]


def test_a_loosened_shipped_limit_flips_its_case(tmp_path: Path) -> None:
    """The rack_long_lead case fails the shipped as-built step (lead_length_spread <= 0.05 m);
    with that one limit loosened in a copy of the shipped plan, the same case built the same way
    passes: the truth table judges with the plan files' limits, not with copies of its own."""
    plans = tmp_path / "plans"
    plans.mkdir()
    for path in PLANS_DIR.glob("*.yaml"):
        (plans / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    shipped = (plans / f"{PC}.yaml").read_text(encoding="utf-8")
    tight = "lead_length_spread: {le: 0.05}"
    assert shipped.count(tight) == 1, f"{PC}.yaml no longer limits lead_length_spread as this test expects"
    (plans / f"{PC}.yaml").write_text(shipped.replace(tight, "lead_length_spread: {le: 1}"), encoding="utf-8")
    case = next(r for r in RUNS if r.name == "rack_long_lead")
    loosened = Run(f"{case.name}_loosened", case.dut, case.scenario, [Expect("c06_layout", PASS)])
    assert loosened.plan_data(plans)["steps"][0]["limits"]["lead_length_spread"] == {"le": 1}
    assert case.plan_data()["steps"][0]["limits"]["lead_length_spread"] == {"le": 0.05}
    outcome = run_in_workers(tmp_path / "runs", [loosened], plans_dir=plans)[loosened.name]
    assert_expected(outcome, loosened, loosened.expects[0])
    assert outcome.values["c06_layout"]["lead_length_spread"] == pytest.approx(0.3)
