"""Truth table of the parallel-bank checks (test_plans/checks/parallel.py, basic.py).

DESIGN.md: "each check fails on the fault it exists to catch, passes on a healthy bank, and the
tests show both". For every check: the healthy DUT passes; each fault scenario it exists to catch
fails with the diagnosis the troubleshooting table of 004 gives for it (text in the result store);
a case just inside its limit passes.

How: one ``hil run`` per (DUT, scenario) -- the real CLI, plugin, emulated station, drivers and
result store -- of a small plan written to a temporary folder holding only the steps that pair is
about, so each pair costs one emulator start-up. Two runs at a time (two cores); hours of bench
time pass on the virtual clock. Verdicts, diagnoses and values are read back from each run's
SQLite result store. The step definitions follow the shipped plans (test_plans/*.yaml) with
shorter durations where the physics allows.

Fixtures used beyond the shipped ones: fixtures/duts/parallel/ (1s4p_busbar: the healthy 1S4P
on busbars; _undersized / _marginal busbars; _mixed_batch; _candidate firmware) and
fixtures/scenarios/parallel/ (soc_full, soc_mismatch_4pct, unequal_cable_10cm,
aged_module_mild, thermal_borderline, group_low, group_low_borderline).
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
PASS, FAIL, NOT_RUN = "pass", "fail", "not run"

# 004 troubleshooting rows (and the failure-mode table of the same document) the diagnoses quote
AT_REST = "modules exchange current at rest"
STARTUP = "alarm during startup"
SURGE = "equalising surge too large"
CABLE = "one module current much higher"
OLDER = "one module discharges faster"
OFFLINE = "one module stays offline"
FUSE = "branch fuse trips"
CONTACTOR = "branch contactor did not open"
REDUCED = "inverter reports reduced capacity"
COUNTED = "only for modules online and accepted"
DRIFT = "SOC drifts after each cycle"
HOT_TERMINAL = "hot terminal or cable end"
WARM_MODULE = "one module runs warmer"
BUSBAR = "busbar or bus cable undersized"
BATCH = "mixed batch or older module"

# ----------------------------------------------------------------------- steps (1S4P, 12.8 V)
STEPS: dict[str, dict[str, Any]] = {
    "configuration": {
        "check": "configuration", "source": "000_b9e4f7d000b6acbf.txt",
        "parameters": {"rest_s": "2 s"},
        "limits": {"bank_voltage": {"in_range": ["12.0 V", "14.6 V"]},
                   "bank_voltage_deviation": {"in_range": ["-10 %", "15 %"]},
                   "capacity_deviation": {"in_range": ["-3 %", "3 %"]},
                   "energy_deviation": {"in_range": ["-3 %", "3 %"]},
                   "modules_missing": {"le": 0}}},
    "pre_parallel": {
        "check": "pre_parallel_match", "source": ["000_b9e4f7d000b6acbf.txt", "002_8dc5b6de39bda77d.txt",
                                                  "003_78892c1f5328bdb3.txt"],
        "parameters": {"rest_s": "30 s", "isolation_current": "5 A", "acir_reference": "3 mohm"},
        "limits": {"open_branch_current": {"le": "0.5 A"}, "module_ocv": {"in_range": ["12.0 V", "14.6 V"]},
                   "ocv_spread": {"le": "0.05 V"}, "acir": {"in_range": ["1 mohm", "20 mohm"]},
                   "acir_delta": {"le": "3 mohm"}, "soc_spread": {"le": "5 %"},
                   "model_match": {"equals": True}, "chemistry_match": {"equals": True},
                   "firmware_match": {"equals": True}, "batch_mismatches": {"le": 0},
                   "soh_spread": {"le": "5 %"}, "parallel_count": {"le": 16}, "series_count": {"le": 4},
                   "count_match": {"equals": True}}},
    "sync": {
        "check": "bms_sync_gating", "source": "004_580db881af34243e.txt",
        "parameters": {"observe_s": "25 s", "safe_delta_v": "0.5 V", "align_current": "50 A",
                       "align_s": "300 s", "rest_s": "120 s", "admit_s": "10 s", "max_steps": 6,
                       "charge_voltage": "14.2 V"},
        "limits": {"modules_offline": {"le": 0}, "capacity_overcounted": {"le": "0.5 Ah"},
                   "pending_limit_counted": {"le": "0.5 A"}, "modules_pending_end": {"le": 0},
                   "capacity_not_counted": {"le": "0.5 Ah"}, "discharge_limit_shortfall": {"le": "1 A"},
                   "alignment_charge": {"le": "60 Ah"}}},
    "inrush": {
        "check": "parallel_inrush", "source": "000_b9e4f7d000b6acbf.txt",
        "parameters": {"rest_s": "30 s", "isolation_current": "5 A", "interval": "50 us",
                       "samples": 20000, "settle_threshold": "15 A"},
        "limits": {"open_branch_current": {"le": "0.5 A"}, "delta_v": {"le": "0.1 V"},
                   "peak_current": {"le": "110 A"}, "inrush_i2t": {"le": 200},
                   "settle_time": {"le": "0.5 s"}}},
    "sharing": {
        "check": "current_sharing", "source": "004_580db881af34243e.txt",
        "parameters": {"load_current": "200 A", "charge_current": "100 A", "charge_voltage": "14.2 V",
                       "settle_s": "10 s"},
        "limits": {"imbalance": {"le": "1 %"}, "charge_imbalance": {"le": "1 %"},
                   "shunt_total_error": {"le": "1 A"}, "bms_current_error": {"le": "1 A"}}},
    "circulating": {
        "check": "circulating_current", "source": "004_580db881af34243e.txt",
        "parameters": {"load_current": "200 A", "load_s": "60 s", "rest_s": "120 s"},
        "limits": {"circulating_current": {"le": "2 A"}, "rest_current_sum": {"le": "0.5 A"}}},
    "branch_protection": {
        "check": "branch_protection", "source": "004_580db881af34243e.txt",
        "parameters": {"load_current": "40 A", "settle_s": "5 s"},
        "limits": {"branch_fuse_margin": {"ge": "0 A"}, "main_fuse_margin": {"ge": "0 A"},
                   "branch_min_share": {"ge": "75 %"}}},
    "bms_network": {
        "check": "bms_network", "source": "004_580db881af34243e.txt",
        "parameters": {"observe_s": "25 s"},
        "limits": {"bms_silence": {"le": "5 s"}, "bms_firmware": {"equals": "2.1"},
                   "modules_missing": {"le": 0}, "modules_offline": {"le": 0},
                   "modules_visible_missing": {"le": 0}, "duplicate_serials": {"le": 0}}},
    "drift": {
        "check": "soc_drift", "source": ["002_8dc5b6de39bda77d.txt", "004_580db881af34243e.txt"],
        "parameters": {"discharge_current": "200 A", "discharge_s": "15 min", "charge_current": "100 A",
                       "charge_voltage": "14.2 V", "charge_s": "30 min", "rest_s": "5 min", "cycles": 1},
        # half the shipped plan's cycle (50 Ah, not 100 Ah): half its drift tolerances
        "limits": {"soc_spread_start": {"le": "5 %"}, "soc_spread_max": {"le": "0.8 %"},
                   "bms_soc_error": {"le": "0.3 %"}}},
    "thermal": {
        "check": "thermal_rise", "source": "000_b9e4f7d000b6acbf.txt",
        "parameters": {"load_current": "200 A", "duration_s": "20 min"},
        "limits": {"busbar_rise": {"le": "30 K"}, "terminal_rise": {"le": "30 K"},
                   "terminal_excess": {"le": "1 K"}, "module_spread": {"le": "5 K"}}},
    # 4S4P assembly order (000)
    "assembly": {
        "check": "group_assembly", "source": "000_b9e4f7d000b6acbf.txt",
        "parameters": {"rest_s": "30 s", "close_gap_s": "1 s"},
        "limits": {"delta_v": {"le": "0.1 V"}, "group_voltage": {"in_range": ["12.0 V", "14.6 V"]},
                   "branches_left_open": {"le": 0}}},
    "balance": {
        "check": "group_voltage_match", "source": "000_b9e4f7d000b6acbf.txt",
        "parameters": {"settle_s": "2 s"},
        "limits": {"group_spread": {"le": "0.1 V"}, "series_voltage": {"in_range": ["48.0 V", "58.4 V"]},
                   "series_voltage_error": {"le": "0.1 V"}}},
}
# the surge itself, closing onto a 0.2 V mismatch on purpose (a lab characterisation step)
STEPS["inrush_forced"] = copy.deepcopy(STEPS["inrush"])
STEPS["inrush_forced"]["parameters"]["close_on_mismatch"] = True
STEPS["inrush_forced"]["limits"].update(delta_v={"le": "0.5 V"}, peak_current={"le": "20 A"})


@dataclass
class Expect:
    step: str
    verdict: str
    text: str = ""                                   # in a failed measurement's diagnosis
    values: dict[str, Any] = field(default_factory=dict)  # measurement name -> exact value


@dataclass
class Run:
    name: str
    dut: str
    scenario: str | None
    expects: list[Expect]
    plan: str | None = None                          # a shipped plan instead of STEPS

    def plan_data(self) -> dict[str, Any]:
        steps = [{"name": e.step, **STEPS[e.step]} for e in self.expects]
        return {"name": f"truth_{self.name}", "version": "1", "applies_to": ["*"], "steps": steps}


B = "parallel/1s4p_busbar"
RUNS = [
    # healthy: every check passes
    Run("healthy", B, None, [Expect("configuration", PASS), Expect("pre_parallel", PASS),
                             Expect("sync", PASS, values={"modules_pending_start": 0}),
                             Expect("inrush", PASS), Expect("sharing", PASS), Expect("circulating", PASS),
                             Expect("branch_protection", PASS), Expect("bms_network", PASS),
                             Expect("drift", PASS), Expect("thermal", PASS)]),
    # faults
    Run("soc_mismatch", B, "soc_mismatch", [
        Expect("pre_parallel", FAIL, AT_REST),        # 20 points of SOC, only 0.07 V
        Expect("inrush", PASS),                       # borderline: 0.07 V of 0.1 V, ~9 A surge
        Expect("circulating", FAIL, AT_REST), Expect("drift", FAIL, DRIFT)]),
    Run("ocv_mismatch_0v2", B, "ocv_mismatch_0v2", [
        Expect("pre_parallel", FAIL, STARTUP), Expect("inrush_forced", FAIL, SURGE),
        Expect("inrush", FAIL, STARTUP, values={"contactor_closed": False}),
        Expect("circulating", FAIL, AT_REST)]),
    Run("aged_module", B, "aged_module", [
        Expect("configuration", FAIL, REDUCED), Expect("pre_parallel", FAIL, OLDER),
        Expect("sharing", FAIL, CABLE), Expect("branch_protection", PASS),  # borderline: ~80 % share
        Expect("drift", FAIL, DRIFT)]),
    Run("unequal_cable", B, "unequal_cable", [Expect("sharing", FAIL, CABLE)]),
    Run("loose_lug", B, "loose_lug", [Expect("sharing", FAIL, CABLE), Expect("thermal", FAIL, HOT_TERMINAL)]),
    Run("hot_module", B, "hot_module", [Expect("sharing", FAIL, OFFLINE),  # charge blocked at 50 C
                                        Expect("thermal", FAIL, WARM_MODULE)]),
    Run("blown_fuse", B, "blown_fuse", [Expect("sharing", FAIL, FUSE), Expect("branch_protection", FAIL, FUSE)]),
    Run("stuck_contactor", B, "stuck_contactor", [Expect("pre_parallel", FAIL, CONTACTOR),
                                                  Expect("inrush", FAIL, CONTACTOR)]),
    Run("firmware_mismatch", B, "firmware_mismatch", [Expect("sync", FAIL, REDUCED)]),
    Run("silent_module", B, "silent_module", [Expect("sync", FAIL, OFFLINE), Expect("bms_network", FAIL, OFFLINE)]),
    Run("candidate_silent", "parallel/1s4p_busbar_candidate", "silent_module", [Expect("sync", FAIL, COUNTED)]),
    Run("mixed_batch", "parallel/1s4p_busbar_mixed_batch", None, [Expect("pre_parallel", FAIL, BATCH)]),
    Run("undersized_busbar", "parallel/1s4p_busbar_undersized", None, [Expect("thermal", FAIL, BUSBAR)]),
    Run("daisy_chain_bus", "1s4p_diagonal", None, [Expect("thermal", FAIL, BUSBAR)]),
    Run("4s4p_ocv_mismatch", "4s4p", "ocv_mismatch_0v2", [Expect("assembly", FAIL, STARTUP)]),
    Run("4s4p_group_low", "4s4p", "parallel/group_low", [Expect("assembly", PASS), Expect("balance", FAIL, STARTUP)]),
    # just inside the limits
    Run("soc_full", B, "parallel/soc_full", [
        Expect("sync", PASS, values={"modules_pending_start": 1, "modules_pending_end": 0})]),
    Run("soc_mismatch_4pct", B, "parallel/soc_mismatch_4pct", [Expect("pre_parallel", PASS),
                                                              Expect("circulating", PASS)]),
    Run("unequal_cable_10cm", B, "parallel/unequal_cable_10cm", [Expect("sharing", PASS)]),
    Run("aged_module_mild", B, "parallel/aged_module_mild", [Expect("configuration", PASS),
                                                            Expect("pre_parallel", PASS), Expect("drift", PASS)]),
    Run("thermal_borderline", "parallel/1s4p_busbar_marginal", "parallel/thermal_borderline",
        [Expect("thermal", PASS)]),
    Run("4s4p_healthy", "4s4p", None, [Expect("assembly", PASS), Expect("balance", PASS)]),
    Run("4s4p_group_low_borderline", "4s4p", "parallel/group_low_borderline", [Expect("balance", PASS)]),
    # 004's commissioning sequence, gated: a module the BMS will not accept stops it at step 11
    Run("commissioning_healthy", "rack_48v_3p", None, [Expect("c15_increase_load", PASS)],
        plan="commissioning_parallel"),
    Run("commissioning_firmware_mismatch", "rack_48v_3p", "firmware_mismatch",
        [Expect("c08_c10_bms_network", PASS), Expect("c11_main_disconnect", FAIL, REDUCED),
         Expect("c12_inverter_recognition", NOT_RUN), Expect("c15_increase_load", NOT_RUN)],
        plan="commissioning_parallel"),
]


@dataclass
class Outcome:
    returncode: int
    output: str
    steps: dict[str, str]                            # step -> verdict
    diagnoses: dict[str, list[str]]                  # step -> diagnoses of failed measurements
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


def _argv(run: Run, folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    if run.plan is None:
        plan = folder / "plan.yaml"
        plan.write_text(yaml.safe_dump(run.plan_data(), sort_keys=False), encoding="utf-8")
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


def run_in_workers(root: Path, runs: list[Run], weight: Callable[[Run], float] = lambda run: 1.0
                   ) -> dict[str, Outcome]:
    """Run every ``hil run`` of ``runs`` in WORKERS driver processes, heaviest first, each to
    the process with the least work so far, so they end at about the same time; the outcomes
    by run name."""
    shares: list[list[dict[str, Any]]] = [[] for _ in range(WORKERS)]
    load = [0.0] * WORKERS
    for run in sorted(runs, key=lambda r: -weight(r)):
        k = load.index(min(load))
        load[k] += weight(run)
        folder = root / run.name
        shares[k].append({"argv": _argv(run, folder), "log": str(folder / "log.txt"), "rc": str(folder / "rc")})
    procs = []
    for k, share in enumerate(s for s in shares if s):
        jobs = root / f"jobs{k}.json"
        jobs.write_text(json.dumps(share), encoding="utf-8")
        procs.append(subprocess.Popen([sys.executable, "-c", DRIVER, str(jobs)], cwd=REPO,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        for proc in procs:
            proc.wait(timeout=600)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return {run.name: _outcome(root / run.name) for run in runs}


def assert_expected(outcome: Outcome, run: Run, expect: Expect) -> None:
    """One cell of a truth table: the step's verdict, its diagnosis when failed, named values."""
    verdict = outcome.steps.get(expect.step, NOT_RUN)
    found = outcome.diagnoses.get(expect.step, [])
    where = f"{run.name} ({run.dut}, {run.scenario or 'healthy'}) step {expect.step}"
    assert verdict == expect.verdict, \
        f"{where}: {verdict}, expected {expect.verdict}; failed: {found}\n{outcome.output}"
    if expect.verdict == FAIL:
        assert any(expect.text in d for d in found), f"{where}: no diagnosis with '{expect.text}' in {found}"
    for name, value in expect.values.items():
        assert outcome.values.get(expect.step, {}).get(name) == value, \
            f"{where}: {name} = {outcome.values.get(expect.step, {}).get(name)!r}, expected {value!r}"


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    # the long runs (SOC drift, thermal rise) weigh most
    return run_in_workers(tmp_path_factory.mktemp("truth_table"), RUNS,
                          lambda r: 1.0 + sum(e.step in ("drift", "thermal") for e in r.expects))


CASES = [pytest.param(run, expect, id=f"{expect.step}-{run.name}") for run in RUNS for expect in run.expects]


@pytest.mark.parametrize("run, expect", CASES)
def test_truth_table(outcomes: dict[str, Outcome], run: Run, expect: Expect) -> None:
    assert_expected(outcomes[run.name], run, expect)


@pytest.mark.parametrize("run", RUNS, ids=[r.name for r in RUNS])
def test_exit_status(outcomes: dict[str, Outcome], run: Run) -> None:
    """``hil run`` exits 0 exactly when every step it ran passed, 1 when one failed."""
    outcome = outcomes[run.name]
    failed = any(e.verdict == FAIL for e in run.expects)
    assert outcome.returncode == (1 if failed else 0), outcome.output
