"""Truth table of the module, matching and BMS-identity checks: bms_comm_health, bms_identity,
cell_balance, module_acir (with SoH), module_ocv_match, current_sharing's diagnosis, series_match
and string_match (test_plans/checks/module.py, bms_comm.py, protection.py, series.py).

DESIGN.md: "each check fails on the fault it exists to catch, passes on a healthy bank, and the
tests show both". For every check: the healthy DUT passes (a whole shipped plan, or the step on
its healthy DUT); a fault it exists to catch FAILS with the troubleshooting row
(test_plans/checks/troubleshooting.yaml) chosen from what was measured, naming the module, branch
or string; a case just inside its limit passes.

check                 fault (DUT, scenario)                         row, subject
--------------------  --------------------------------------------  -------------------------------
bms_comm_health       1s1p, series/silent_bms_at_start               comm_loss, BMS
                      series/1s1p_candidate (2.2.0-rc1)              firmware_release, BMS
bms_identity          series/1s4p_diagonal_candidate                 firmware_release, BMS
cell_balance          4s1p, ocv_mismatch_0v2                         series_mismatch, s4p1
module_acir           1s1p, series/high_ir_module (6.75 mohm)        ir_mismatch, s1p1
                      1s1p, aged_module (SoH 80 %, eol_module)       weak_module, s1p1
module_ocv_match      1s4p_diagonal, ocv_mismatch_0v2 (bank_smoke)   soc_mismatch, s1p4
                      4s1p, ocv_mismatch_0v2                         series_mismatch, s4p1
current_sharing       1s4p_diagonal, ocv_mismatch_0v2 (step alone)   soc_mismatch, s1p4
                      parallel/1s4p_busbar, unequal_cable            cable_resistance, s1p4
                      parallel/1s4p_busbar, aged_module              weak_module, s1p3
series_match          4s1p, ocv_mismatch_0v2 / soc_mismatch          series_mismatch, s4p1
                      4s1p, aged_module (capacity)                   series_mismatch, s3p1
                      series/4s2p_strings, ocv_mismatch_0v2          series_mismatch, s4p2
string_match          series/4s2p_strings, ocv_mismatch_0v2          unequal_strings, p2
                      series/4s2p_strings, aged_module               unequal_strings, p1
current_sharing       series/4s2p_strings, ocv_mismatch_0v2          soc_mismatch, p2
(two strings)         series/4s2p_strings, aged_module               weak_module, p1

Just inside: aged_module_mild (SoH 96 %, 3.2 mohm) passes module_acir; +15 cm on one string's leads
passes the strings' 2 % sharing; soc_mismatch (20 points of
SOC, only 72 mV) passes bank_smoke's 0.1 V OCV gate -- 000's figure on the flat LFP curve -- while
current sharing names the module's SOC (and series_match's 5 % SOC limit fails it in a string).

Faults the twin cannot express, so no case here: cells of one module apart (every fault sets a
module's cells alike, so cell_balance's within-module diagnosis, row cell_imbalance, is shown on
measured figures only in test_cell_spread_within_a_module_is_the_module); malformed CAN frames
(the emulated BMS sends none); another BMS manufacturer; strings of unequal module count (a DUT
file has one series count); AC-IR of several modules (the station's meter leads reach one module,
the channel map's ``acir_module``: module_acir's module-to-module spread is shown on readings in
test_acir_module_to_module).

How: as tests/test_truth_table_series.py -- every case's plan is built from the SHIPPED plan files'
steps (:data:`STEPS`: plan and step; only time parameters may be shortened, never limits) or is a
whole shipped plan; one ``hil run`` per (DUT, scenario) through the real CLI, two drivers, values
read back from each run's store. ``test_a_loosened_shipped_limit_flips_its_case`` shows a verdict
follows the shipped plan's limit.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.measure import Limits, Recorder
from test_truth_table_parallel import NOT_RUN, PASS, Expect, Fail, Outcome, StepRef, assert_expected, \
    assert_exit_status, run_in_workers, table_cases, whole_plan
from test_truth_table_series import TableRun, assert_shipped_limits, loosened_copy, table_step

pytestmark = pytest.mark.long(15)  # one run per module fault: starts first (tests/conftest.py)

EOL, SMOKE, S4P, STR, P1 = "eol_module", "bank_smoke", "series_string_4s1p", "series_strings_4s2p", "parallel_bank_1s4p"
STEPS: dict[str, StepRef] = {
    # end of line, one module (eol_module)
    "bms_comm": StepRef(EOL, "bms_comm"),
    "ocv_eol": StepRef(EOL, "ocv"),
    "acir": StepRef(EOL, "acir"),
    "balance": StepRef(EOL, "balance"),
    # a bank's first look (bank_smoke)
    "identity": StepRef(SMOKE, "bms_identity"),
    "module_ocv": StepRef(SMOKE, "module_ocv"),
    "sharing": StepRef(SMOKE, "current_sharing"),
    # 1S4P qualification's sharing step (busbar bank, 1 % limits)
    "sharing_p1": StepRef(P1, "current_sharing"),
    # series strings (001)
    "series_match": StepRef(S4P, "series_match"),
    "match_p1": StepRef(STR, "series_match_p1"),
    "match_p2": StepRef(STR, "series_match_p2"),
    "string_match": StepRef(STR, "string_match"),
    "strings_sharing": StepRef(STR, "current_sharing"),
}


def Case(name: str, dut: str, scenario: str | None, expects: list[Expect], plan: str | None = None) -> TableRun:  # noqa: N802
    return TableRun(name, dut, scenario, expects, plan, table=STEPS)


D4, B4, S4, STRINGS = "1s4p_diagonal", "parallel/1s4p_busbar", "4s1p", "series/4s2p_strings"
RUNS = [
    # ------------------------------------------------------------------ end of line (1S1P)
    # healthy: series table's plan_eol runs eol_module whole; here the fault cases
    Case("eol_aged", "1s1p", "aged_module", [
        Expect("bms_comm", PASS), Expect("ocv", PASS),
        Fail("acir", "weak_module", "s1p1", acir_delta=pytest.approx(0.0009, abs=2e-5), soh=80.0),
        Expect("balance", NOT_RUN), Expect("discharge_ocp_trip", NOT_RUN)], plan=EOL),  # acir is a gate
    Case("eol_high_ir", "1s1p", "series/high_ir_module", [Fail("acir", "ir_mismatch", "s1p1")]),
    Case("eol_aged_mild", "1s1p", "parallel/aged_module_mild", [Expect("acir", PASS)]),
    Case("eol_silent_bms", "1s1p", "series/silent_bms_at_start", [Fail("bms_comm", "comm_loss", "BMS")]),
    Case("eol_candidate", "series/1s1p_candidate", None, [Fail("bms_comm", "firmware_release", "BMS")]),
    # ------------------------------------------------------------------ bank_smoke (1S4P)
    Case("smoke_healthy", D4, None, whole_plan(SMOKE), plan=SMOKE),
    # the gate sees the fault: the OCVs read with the branches open, the low module named
    Case("smoke_ocv_mismatch", D4, "ocv_mismatch_0v2", [
        Expect("bms_identity", PASS), Fail("module_ocv", "soc_mismatch", "s1p4"),
        Expect("configuration", NOT_RUN), Expect("current_sharing", NOT_RUN)], plan=SMOKE),
    # current sharing alone: its own open-circuit voltages say why s1p4 carries less
    Case("sharing_ocv_mismatch", D4, "ocv_mismatch_0v2", [Fail("sharing", "soc_mismatch", "s1p4")]),
    # 20 points of SOC are 72 mV: inside 000's 0.1 V; sharing names the SOC
    Case("smoke_soc_mismatch", D4, "soc_mismatch", [Expect("module_ocv", PASS),
                                                    Fail("sharing", "soc_mismatch", "s1p4")]),
    Case("identity_candidate", "series/1s4p_diagonal_candidate", None,
         [Fail("identity", "firmware_release", "BMS")]),
    Case("sharing_unequal_cable", B4, "unequal_cable", [Fail("sharing_p1", "cable_resistance", "s1p4")]),
    Case("sharing_aged", B4, "aged_module", [Fail("sharing_p1", "weak_module", "s1p3")]),
    # ------------------------------------------------------------------ a 4S1P string
    Case("string_healthy", S4, None, [Expect("series_match", PASS), Expect("module_ocv", PASS),
                                      Expect("balance", PASS)]),
    Case("string_ocv_mismatch", S4, "ocv_mismatch_0v2", [
        Fail("series_match", "series_mismatch", "s4p1"), Fail("module_ocv", "series_mismatch", "s4p1"),
        Fail("balance", "series_mismatch", "s4p1")]),
    # 72 mV passes 0.1 V; the BMS's 20 points of SOC do not pass 5 %
    Case("string_soc_mismatch", S4, "soc_mismatch", [Fail("series_match", "series_mismatch", "s4p1")]),
    Case("string_aged", S4, "aged_module", [Fail("series_match", "series_mismatch", "s3p1")]),
    # ------------------------------------------------------------------ two 4S strings in parallel
    Case("strings_healthy", STRINGS, None, whole_plan(STR), plan=STR),
    Case("strings_ocv_mismatch", STRINGS, "ocv_mismatch_0v2", [
        Expect("match_p1", PASS), Fail("match_p2", "series_mismatch", "s4p2"),
        Fail("string_match", "unequal_strings", "p2"), Fail("strings_sharing", "soc_mismatch", "p2")]),
    Case("strings_aged", STRINGS, "aged_module", [
        Fail("match_p1", "series_mismatch", "s3p1"), Expect("match_p2", PASS),
        Fail("string_match", "unequal_strings", "p1"), Fail("strings_sharing", "weak_module", "p1")]),
    # +15 cm on one string's leads: ~0.4 % of a string's ~20 mohm, inside 2 %
    Case("strings_unequal_cable", STRINGS, "unequal_cable", [Expect("strings_sharing", PASS)]),
]


def _weight(run: TableRun) -> float:
    return 3.0 if run.plan is not None else 1.0 + 0.3 * len(run.expects)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    return run_in_workers(tmp_path_factory.mktemp("truth_table_module"), RUNS, _weight)


CASES = table_cases(RUNS)


@pytest.mark.parametrize("run, expect", CASES)
def test_truth_table(outcomes: dict[str, Outcome], run: TableRun, expect: Expect) -> None:
    assert_expected(outcomes[run.name], run, expect)


@pytest.mark.parametrize("run", RUNS, ids=[r.name for r in RUNS])
def test_exit_status(outcomes: dict[str, Outcome], run: TableRun) -> None:
    assert_exit_status(outcomes[run.name], run)


def test_the_gate_reads_open_circuit_voltages(outcomes: dict[str, Outcome]) -> None:
    """bank_smoke's gate opened every branch and read the low module ~0.2 V down -- with the
    branches closed the bus pulls it to within ~0.06 V, inside the limit (the finding)."""
    values = outcomes["smoke_ocv_mismatch"].values["module_ocv"]
    assert values["branches_opened"] == 4
    assert values["ocv_spread"] == pytest.approx(0.2, abs=0.02)
    assert values["ocv_s1p4"] < values["ocv_s1p1"] - 0.15


def test_sharing_takes_its_own_evidence(outcomes: dict[str, Outcome]) -> None:
    """Alone, current sharing read each branch open before loading, and each module's resistance
    under load: the low OCV explains s1p4's share, the aged module's resistance explains s1p3's."""
    ocv = outcomes["sharing_ocv_mismatch"].values["sharing"]
    assert ocv["ocv_s1p4"] < ocv["ocv_s1p1"] - 0.15 and abs(ocv["current_s1p4"]) < abs(ocv["current_s1p1"])
    aged = outcomes["sharing_aged"].values["sharing_p1"]
    assert aged["resistance_s1p3"] > 1.3 * aged["resistance_s1p1"]


# ----------------------------------------------------------------------- the plans are the shipped ones
@pytest.mark.parametrize("run", [r for r in RUNS if r.plan is None], ids=lambda r: r.name)
def test_cases_carry_the_shipped_limits(run: TableRun) -> None:
    assert_shipped_limits(run)


def test_every_step_key_names_a_shipped_step() -> None:
    for key in STEPS:
        assert table_step(STEPS, key)["name"] == key


def test_a_loosened_shipped_limit_flips_its_case(tmp_path: Path) -> None:
    """The high-IR module fails the shipped end-of-line AC-IR step (acir_delta <= 3 mohm: 003);
    with that one limit loosened in a copy of eol_module.yaml, the same case built the same way
    passes."""
    plans = loosened_copy(tmp_path / "plans", EOL, "acir_delta: {le: 3 mohm}", "acir_delta: {le: 5 mohm}")
    case = next(r for r in RUNS if r.name == "eol_high_ir")
    loosened = Case(f"{case.name}_loosened", case.dut, case.scenario, [Expect("acir", PASS)])
    loosened.plans_dir = plans
    assert loosened.plan_data()["steps"][0]["limits"]["acir_delta"] == {"le": "5 mohm"}
    assert case.plan_data()["steps"][0]["limits"]["acir_delta"] == {"le": "3 mohm"}
    outcome = run_in_workers(tmp_path / "runs", [loosened])[loosened.name]
    assert_expected(outcome, loosened, loosened.expects[0])
    assert outcome.values["acir"]["acir_delta"] == pytest.approx(0.00375, abs=5e-5)


# ----------------------------------------------------------------------- on figures the twin cannot make
def _context(check: str, limits: dict[str, Limits], params: dict | None = None):  # type: ignore[no-untyped-def]
    from test_plans.checks import SPECS, StepContext, known_checks

    known_checks()
    return StepContext(bench=None, params=params or {}, limits=limits, measure=Recorder(lambda: 0.0),
                       step_name=check, spec=SPECS[check])


def _failed(ctx) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {m.name: m.diagnosis for m in ctx.measure.taken if m.verdict == "fail"}


def test_acir_module_to_module() -> None:
    """Where the meter reads several modules they are judged with each other (003: within 3 mohm),
    not against the batch figure; the highest is named -- a weak module when its SoH is low."""
    from test_plans.checks.module import judge_acir

    limits = {"acir": Limits.in_range(0.001, 0.020, "ohm"), "acir_spread": Limits.at_most(0.003, "ohm"),
              "acir_delta": Limits.at_most(0.003, "ohm"), "soh": Limits.at_least(95.0, "%")}
    ctx = _context("module_acir", limits, {"acir_reference": 0.001})
    judge_acir(ctx, {"s1p1": 0.0030, "s1p2": 0.0031, "s1p3": 0.0068}, {"s1p1": 100.0, "s1p2": 100.0, "s1p3": 99.0})
    failed = _failed(ctx)
    assert set(failed) == {"acir_spread"}          # the far-off reference plays no part
    assert failed["acir_spread"].startswith("s1p3: mixed batch or aged module (003:")
    ctx = _context("module_acir", limits)
    judge_acir(ctx, {"s1p1": 0.0030, "s1p2": 0.0068}, {"s1p1": 100.0, "s1p2": 80.0})
    failed = _failed(ctx)
    assert failed["acir_spread"].startswith("s1p2: older (weak) module") and failed["soh"].startswith("s1p2: ")


def test_acir_single_module_against_the_batch() -> None:
    from test_plans.checks.module import judge_acir

    limits = {"acir": Limits.in_range(0.001, 0.020, "ohm"), "acir_delta": Limits.at_most(0.003, "ohm"),
              "acir_spread": Limits.at_most(0.0001, "ohm")}
    ctx = _context("module_acir", limits, {"acir_reference": 0.003})
    judge_acir(ctx, {"s1p1": 0.00675}, {"s1p1": 100.0})
    failed = _failed(ctx)
    assert set(failed) == {"acir_delta"} and failed["acir_delta"].startswith("s1p1: mixed batch or aged module")
    assert "acir_spread" not in {m.name for m in ctx.measure.taken}


def test_cell_spread_within_a_module_is_the_module() -> None:
    """Cells of one module apart (its own spread makes the bank's): cell_imbalance naming it; the
    same bank spread made by a module whose own cells agree: that module's charge."""
    from test_plans.checks.module import cell_spread_diagnosis

    apart = cell_spread_diagnosis({"s1p1": (3.262, 3.265), "s2p1": (3.230, 3.268), "s3p1": (3.263, 3.265)},
                                  3.230, 3.268)
    assert apart.startswith("s2p1: cell mismatch") and "(002: cells of one module out of balance)" in apart
    offset = cell_spread_diagnosis({"s1p1": (3.264, 3.265), "s2p1": (3.215, 3.216), "s3p1": (3.264, 3.265)},
                                   3.215, 3.265)
    assert offset.startswith("s2p1: modules not matched before series connection")
    parallel = cell_spread_diagnosis({"s1p1": (3.264, 3.265), "s1p2": (3.215, 3.216), "s1p3": (3.264, 3.265)},
                                     3.215, 3.265)
    assert parallel.startswith("s1p2: voltage or SOC mismatch")
    single = cell_spread_diagnosis({"s1p1": (3.240, 3.266)}, 3.240, 3.266)
    assert single.startswith("s1p1: cell mismatch")
