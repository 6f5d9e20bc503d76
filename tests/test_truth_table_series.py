"""Truth table of the series-string, BMS-communication and protection checks
(test_plans/checks/series.py, bms_comm.py, protection.py).

DESIGN.md: "each check fails on the fault it exists to catch, passes on a healthy bank, and the
tests show both". For every check: the healthy DUT passes; each fault it exists to catch fails
with the cause its diagnosis names (000 for the BMS MOSFETs and mixed firmware, 004 for
communication and aggregation, 001/DOMAIN.md 3 for protections); a case just inside its limits
passes; the released and the candidate firmware give different verdicts on communication loss
and aggregation.

The cases run the SHIPPED plans' steps, as tests/test_truth_table_parallel.py does (its StepRef,
Expect/Run/Outcome, driver and store readers are reused): a whole plan runs as it ships
(``Run(plan=...)``); any other case's plan is built from the shipped plan files themselves --
:data:`STEPS` names, for each step a case uses, the plan under test_plans/ and the step in it
(series_string_4s1p, module_protection_1s1p, series_mosfet_4s4p, firmware_degraded_1s4p), and the
only thing a case may change is a parameter of dimension time (``durations``). Limits are never
touched: loosening a limit in a shipped plan changes these verdicts
(``test_a_loosened_shipped_limit_flips_its_case`` shows it, ``test_cases_carry_the_shipped_limits``
checks every case). Flow fields (``gate``, ``on_fail``) are dropped: each step is judged on its own.

How: one ``hil run`` per (DUT, scenario), two in-process drivers; verdicts, diagnoses and values
read back from each run's result store.

Fixtures beyond the shipped ones: fixtures/duts/series/ (4s1p_12v_bms, 4s1p_70v_bms,
4s1p_candidate, 1s4p_diagonal_candidate, 1s1p_bms_lax, 1s1p_bms_borderline; their module types in
fixtures/modules/series/) and fixtures/scenarios/series/silent_bms. The module, matching and
BMS-identity checks have their own table, tests/test_truth_table_module.py, built the same way
(it imports :class:`TableRun`, :func:`table_step` and the shipped-limit helpers from here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import test_truth_table_parallel as parallel_table
from test_truth_table_parallel import (FAIL, PASS, PLANS_DIR, Expect, Outcome, Run, StepRef,
                                       assert_exit_status, assert_expected, assert_shipped_limits,
                                       run_in_workers,
                                       table_cases, whole_plan)

pytestmark = pytest.mark.long(40)  # full charges and discharges in two processes: starts first (tests/conftest.py)


# what the diagnoses must name
NOT_SERIES_RATED = "not rated for series-stack operation"          # 000
FAILED_SHORT = "did not block after the disconnect"                  # 000
MIXED_FIRMWARE = "never mix BMS firmware versions"                   # 000
REDUCED = "inverter reports reduced capacity"                        # 004
COUNTED = "only for modules online and accepted"                     # 004
COMM_LOSS = "does not react to the lost inverter keep-alive"         # 004
BMS_SILENT = "BMS stopped reporting to the inverter"                 # 004, DOMAIN.md 4
OUT_OF_SPEC = "outside the module's specification"                   # 001, DOMAIN.md 3

# ----------------------------------------------------------------------- steps of shipped plans
S4P, MP, M44, FD = "series_string_4s1p", "module_protection_1s1p", "series_mosfet_4s4p", "firmware_degraded_1s4p"
EOL, FQ = "eol_module", "firmware_qualification"
STEPS: dict[str, StepRef] = {
    # ---------------------------------------------------------------- series string (000)
    "firmware": StepRef(S4P, "firmware_consistency"),
    "rating": StepRef(S4P, "mosfet_rating"),
    "stress": StepRef(S4P, "mosfet_stress"),
    # a 4S4P: the whole group s1 opens (one module alone leaves its peers carrying the string)
    "stress_group": StepRef(M44, "mosfet_stress_group"),
    # ---------------------------------------------------------------- BMS communication (004)
    "aggregation": StepRef(S4P, "aggregation"),
    # with one module silent on purpose: the totals must hold only the online modules; the
    # missing module itself is the silent-module check's business
    "aggregation_degraded": StepRef(FD, "aggregation"),
    "heartbeat": StepRef(S4P, "comm_loss_heartbeat"),
    "silent_module": StepRef(S4P, "comm_loss_silent_module"),
    # the twin's silent_module fault (middle module from t = 20 s): watched, not injected
    "silent_module_watch": StepRef(FD, "silent_module_watch"),
    # series/silent_bms goes quiet 30 s in: the watch must outlast it (the plan's 30 s starts later)
    "silent_bms": StepRef(S4P, "comm_loss_silent_bms", {"observe_s": "40 s"}),
    # ---------------------------------------------------------------- protections (001, DOMAIN.md 3)
    "ot": StepRef(MP, "over_temperature"),
    "discharge_ocp": StepRef(MP, "discharge_over_current"),
    "charge_ocp": StepRef(MP, "charge_over_current"),
    "ovp": StepRef(MP, "over_voltage"),
    "uvp": StepRef(MP, "under_voltage"),
}
PROTECTION_STEPS = ("discharge_ocp", "charge_ocp", "ovp", "uvp")


def table_step(table: dict[str, StepRef], key: str, plans_dir: Path = PLANS_DIR) -> dict[str, Any]:
    """The step ``table[key]`` as its shipped plan file has it, named ``key``, its durations
    shortened, its flow fields dropped -- tests/test_truth_table_parallel.py's
    ``step_from_shipped`` (the one place that rule lives), given this table's reference under a
    name of its own for the call."""
    probe = f"__{table_step.__module__}:{id(table)}:{key}"
    parallel_table.STEPS[probe] = table[key]
    try:
        entry = parallel_table.step_from_shipped(probe, plans_dir)
    finally:
        del parallel_table.STEPS[probe]
    entry["name"] = key
    return entry


@dataclass
class TableRun(Run):
    """A run of steps of the shipped plans that its table's ``STEPS`` names (or of a whole
    shipped plan). ``plans_dir``: where the plan files are read (a copy, to show a loosened
    limit changes a verdict)."""

    table: dict[str, StepRef] = field(default_factory=lambda: STEPS, repr=False)
    plans_dir: Path = PLANS_DIR

    def plan_data(self, plans_dir: Path | None = None) -> dict[str, Any]:
        folder = plans_dir or self.plans_dir
        steps = [table_step(self.table, e.step, folder) for e in self.expects]
        return {"name": f"truth_{self.name}", "version": "1", "applies_to": ["*"], "steps": steps}


SeriesRun = TableRun


def _all(steps: tuple[str, ...] | list[str], verdict: str, text: str = "") -> list[Expect]:
    return [Expect(s, verdict, text) for s in steps]


S4, CAND4 = "4s1p", "series/4s1p_candidate"
RUNS = [
    # ---- healthy: every check passes
    SeriesRun("4s1p_healthy", S4, None, [
        Expect("firmware", PASS), Expect("rating", PASS),
        Expect("stress", PASS, values={"switch_module": "s1p1"}), Expect("aggregation", PASS),
        Expect("heartbeat", PASS), Expect("silent_module", PASS), Expect("silent_bms", PASS)]),
    # ---- series MOSFETs (000)
    SeriesRun("4s1p_weak_fet", S4, "weak_fet_series", [
        Expect("rating", PASS),                  # the DUT's record says 80 V: only the dynamic test sees it
        Expect("stress", FAIL, FAILED_SHORT)]),
    SeriesRun("plan_mosfet_4s4p", "4s4p", None, whole_plan(M44), plan=M44),
    SeriesRun("4s4p_weak_fet", "4s4p", "weak_fet_series", [Expect("stress_group", FAIL, FAILED_SHORT)]),
    SeriesRun("4s1p_12v_bms", "series/4s1p_12v_bms", None, [
        Expect("rating", FAIL, NOT_SERIES_RATED), Expect("stress", FAIL, NOT_SERIES_RATED)]),
    SeriesRun("4s1p_70v_bms_borderline", "series/4s1p_70v_bms", None, [
        Expect("rating", PASS), Expect("stress", PASS)]),
    # ---- firmware (000, 004)
    SeriesRun("4s1p_firmware_mismatch", S4, "firmware_mismatch", [
        Expect("firmware", FAIL, MIXED_FIRMWARE), Expect("aggregation", FAIL, REDUCED)]),
    SeriesRun("4s1p_candidate", CAND4, None, [
        Expect("firmware", FAIL, MIXED_FIRMWARE),  # 2.2.0-rc1 is not the released 2.1.0
        Expect("aggregation", PASS),
        Expect("heartbeat", FAIL, COMM_LOSS), Expect("silent_module", FAIL, COUNTED)]),
    # ---- a silent module (the twin's fault, t = 20 s): released vs candidate firmware
    SeriesRun("silent_module_good", "1s4p_diagonal", "silent_module", [
        Expect("silent_module_watch", PASS),
        Expect("aggregation_degraded", PASS, values={"online_capacity": 300})]),
    SeriesRun("silent_module_candidate", "series/1s4p_diagonal_candidate", "silent_module", [
        Expect("silent_module_watch", FAIL, COUNTED), Expect("aggregation_degraded", FAIL, COUNTED)]),
    # ---- a silent BMS (t = 30 s): the harness makes the bench safe
    SeriesRun("4s1p_silent_bms", S4, "series/silent_bms", [
        Expect("silent_bms", FAIL, BMS_SILENT, values={"outputs_off_after": True,
                                                       "safe_state_by": "safety supervisor"})]),
    # ---- protections (1S1P)
    SeriesRun("1s1p_protection_plan", "1s1p", None,
              _all(("over_temperature", "discharge_over_current", "charge_over_current", "high_load_step",
                    "over_voltage", "under_voltage"), PASS), plan="module_protection_1s1p"),
    SeriesRun("1s1p_hot", "1s1p", "hot_module", [Expect("ot", PASS, values={"trip_expected": True})]),
    SeriesRun("1s1p_bms_lax", "series/1s1p_bms_lax", None, _all(PROTECTION_STEPS, FAIL, OUT_OF_SPEC)),
    SeriesRun("1s1p_bms_lax_hot", "series/1s1p_bms_lax", "hot_module", [Expect("ot", FAIL, OUT_OF_SPEC)]),
    SeriesRun("1s1p_bms_borderline", "series/1s1p_bms_borderline", None, _all(PROTECTION_STEPS, PASS)),
    # ---- shipped plans on their healthy DUTs; the candidate firmware fails its qualification
    SeriesRun("plan_series_string", S4, None, whole_plan(S4P), plan=S4P),
    SeriesRun("plan_eol", "1s1p", None, whole_plan(EOL), plan=EOL),
    SeriesRun("plan_firmware_degraded", "1s4p_diagonal", None, whole_plan(FD), plan=FD),
    SeriesRun("plan_firmware_good", "1s4p_diagonal", None,
              _all(("firmware_consistency", "aggregation", "admission", "comm_loss_heartbeat",
                    "comm_loss_silent_module"), PASS), plan="firmware_qualification"),
    SeriesRun("plan_firmware_candidate", "series/1s4p_diagonal_candidate", None,
              _all(("firmware_consistency", "aggregation", "admission"), PASS)
              + [Expect("comm_loss_heartbeat", FAIL, COMM_LOSS), Expect("comm_loss_silent_module", FAIL, COUNTED)],
              plan="firmware_qualification"),
]
# the long ones (a full charge and discharge) first, so both drivers end together
LONG = {"ovp", "uvp", "over_voltage", "under_voltage"}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    # the long ones (a full charge and discharge) weigh most
    return run_in_workers(tmp_path_factory.mktemp("truth_table_series"), RUNS,
                          lambda r: 1.0 + 10 * sum(e.step in LONG for e in r.expects))


CASES = table_cases(RUNS)


@pytest.mark.parametrize("run, expect", CASES)
def test_truth_table(outcomes: dict[str, Outcome], run: SeriesRun, expect: Expect) -> None:
    assert_expected(outcomes[run.name], run, expect)


@pytest.mark.parametrize("run", RUNS, ids=[r.name for r in RUNS])
def test_exit_status(outcomes: dict[str, Outcome], run: SeriesRun) -> None:
    assert_exit_status(outcomes[run.name], run)


def test_good_and_candidate_firmware_differ() -> None:
    """The table itself holds both firmware on communication loss and aggregation."""
    by_name = {r.name: {e.step: e.verdict for e in r.expects} for r in RUNS}
    assert by_name["4s1p_healthy"]["heartbeat"] != by_name["4s1p_candidate"]["heartbeat"]
    assert by_name["4s1p_healthy"]["silent_module"] != by_name["4s1p_candidate"]["silent_module"]
    assert by_name["silent_module_good"]["aggregation_degraded"] != \
        by_name["silent_module_candidate"]["aggregation_degraded"]
    assert by_name["plan_firmware_good"]["comm_loss_heartbeat"] != \
        by_name["plan_firmware_candidate"]["comm_loss_heartbeat"]


# ----------------------------------------------------------------------- the plans are the shipped ones
def loosened_copy(folder: Path, plan: str, tight: str, loose: str) -> Path:
    """Every shipped plan copied to ``folder``, the one text ``tight`` of ``plan`` (which must be
    there once) replaced by ``loose``."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in PLANS_DIR.glob("*.yaml"):
        (folder / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    text = (folder / f"{plan}.yaml").read_text(encoding="utf-8")
    assert text.count(tight) == 1, f"{plan}.yaml no longer has '{tight}' once"
    (folder / f"{plan}.yaml").write_text(text.replace(tight, loose), encoding="utf-8")
    return folder


@pytest.mark.parametrize("run", [r for r in RUNS if r.plan is None], ids=lambda r: r.name)
def test_cases_carry_the_shipped_limits(run: TableRun) -> None:
    assert_shipped_limits(run)


def test_every_step_key_names_a_shipped_step() -> None:
    for key in STEPS:
        assert table_step(STEPS, key)["name"] == key


def test_only_durations_may_be_shortened() -> None:
    table = {"probe": StepRef(S4P, "comm_loss_silent_bms", {"load_current": "5 A"})}
    with pytest.raises(ValueError, match="only parameters of dimension time"):
        table_step(table, "probe")
    assert not [k for k in parallel_table.STEPS if k.startswith("__")]  # the probe is gone again


def test_a_loosened_shipped_limit_flips_its_case(tmp_path: Path) -> None:
    """The silent-BMS case fails the shipped step (bms_silence <= 3 s: the BMS stayed silent
    longer before the harness made the bench safe); with that one limit loosened in a copy of
    the shipped plan, the same case built the same way passes: the table judges with the plan
    files' limits, not copies of its own."""
    plans = loosened_copy(tmp_path / "plans", S4P, "bms_silence: {le: 3 s}", "bms_silence: {le: 10 s}")
    case = next(r for r in RUNS if r.name == "4s1p_silent_bms")
    loosened = TableRun(f"{case.name}_loosened", case.dut, case.scenario, [Expect("silent_bms", PASS)],
                        plans_dir=plans)
    assert loosened.plan_data()["steps"][0]["limits"]["bms_silence"] == {"le": "10 s"}
    assert case.plan_data()["steps"][0]["limits"]["bms_silence"] == {"le": "3 s"}
    outcome = run_in_workers(tmp_path / "runs", [loosened])[loosened.name]
    assert_expected(outcome, loosened, loosened.expects[0])
    assert 3.0 < outcome.values["silent_bms"]["bms_silence"] < 10.0
