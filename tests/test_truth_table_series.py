"""Truth table of the series-string, BMS-communication and protection checks
(test_plans/checks/series.py, bms_comm.py, protection.py).

DESIGN.md: "each check fails on the fault it exists to catch, passes on a healthy bank, and the
tests show both". For every check: the healthy DUT passes; each fault it exists to catch fails
with the cause its diagnosis names (000 for the BMS MOSFETs and mixed firmware, 004 for
communication and aggregation, 001/DOMAIN.md 3 for protections); a case just inside its limits
passes; the released and the candidate firmware give different verdicts on communication loss
and aggregation.

How: as tests/test_truth_table_parallel.py (its Expect/Run/Outcome, driver and store readers are
reused): one ``hil run`` per (DUT, scenario) of a small plan of the steps that pair is about, or
of a shipped plan; two in-process drivers; verdicts, diagnoses and values read back from each
run's result store. Steps follow the shipped plans (series_string_4s1p, firmware_qualification,
module_protection_1s1p, eol_module) without their gates, so every step of a run is judged.

Fixtures beyond the shipped ones: fixtures/duts/series/ (4s1p_12v_bms, 4s1p_70v_bms,
4s1p_candidate, 1s4p_diagonal_candidate, 1s1p_bms_lax, 1s1p_bms_borderline; their module types in
fixtures/modules/series/) and fixtures/scenarios/series/silent_bms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from test_truth_table_parallel import FAIL, PASS, Expect, Outcome, Run, assert_expected, run_in_workers


# what the diagnoses must name
NOT_SERIES_RATED = "not rated for series-stack operation"          # 000
FAILED_SHORT = "did not block after the disconnect"                  # 000
MIXED_FIRMWARE = "never mix BMS firmware versions"                   # 000
REDUCED = "inverter reports reduced capacity"                        # 004
COUNTED = "only for modules online and accepted"                     # 004
COMM_LOSS = "does not react to the lost inverter keep-alive"         # 004
BMS_SILENT = "BMS stopped reporting to the inverter"                 # 004, DOMAIN.md 4
OUT_OF_SPEC = "outside the module's specification"                   # 001, DOMAIN.md 3

_FW = {"bms_firmware": {"equals": "2.1"}, "master_firmware": {"equals": "2.1.0"},
       "as_built_versions": {"le": 1}, "capacity_not_counted": {"le": "0.5 Ah"},
       "strings_not_admitted": {"le": 0}}
_RECOVERED = {"alarm_cleared": {"equals": True}, "conducts_after_recovery": {"equals": True}}
STEPS: dict[str, dict[str, Any]] = {
    # ---------------------------------------------------------------- series string (000)
    "firmware": {"check": "firmware_consistency", "source": "000_b9e4f7d000b6acbf.txt",
                 "parameters": {"settle_s": "2 s"}, "limits": _FW},
    "rating": {"check": "series_mosfet_rating", "source": "000_b9e4f7d000b6acbf.txt",
               "limits": {"vds_rating": {"ge": "60 V"}, "vds_rating_ratio": {"ge": 1.0}}},
    "stress": {"check": "series_mosfet_stress", "source": "000_b9e4f7d000b6acbf.txt",
               "parameters": {"load_current": "100 A", "load_s": "5 s", "interval": "20 us", "samples": 10000},
               "limits": {"peak_vds_utilisation": {"le": "100 %"}, "settled_vds_utilisation": {"le": "80 %"},
                          "blocked_current": {"le": "1 A"}}},
    # a 4S4P: the whole group s1 opens (one module alone leaves its peers carrying the string)
    "stress_group": {"check": "series_mosfet_stress", "source": "000_b9e4f7d000b6acbf.txt",
                     "parameters": {"load_current": "200 A", "load_s": "5 s", "interval": "20 us",
                                    "samples": 10000, "open_group": True},
                     "limits": {"peak_vds_utilisation": {"le": "100 %"}, "settled_vds_utilisation": {"le": "80 %"},
                                "blocked_current": {"le": "1 A"}}},
    # ---------------------------------------------------------------- BMS communication (004)
    "aggregation": {"check": "aggregation", "source": "004_580db881af34243e.txt",
                    "parameters": {"settle_s": "2 s"},
                    "limits": {"installed_capacity_error": {"in_range": ["-0.5 Ah", "0.5 Ah"]},
                               "capacity_overcounted": {"le": "0.5 Ah"}, "capacity_not_counted": {"le": "0.5 Ah"},
                               "limit_overcounted": {"le": "0.5 A"}, "limit_shortfall": {"le": "1 A"},
                               "modules_missing": {"le": 0}}},
    # with one module silent on purpose: the totals must hold only the online modules; the
    # missing module itself is the silent-module check's business
    "aggregation_degraded": {"check": "aggregation", "source": "004_580db881af34243e.txt",
                             "parameters": {"settle_s": "2 s"},
                             "limits": {"installed_capacity_error": {"in_range": ["-0.5 Ah", "0.5 Ah"]},
                                        "capacity_overcounted": {"le": "0.5 Ah"},
                                        "limit_overcounted": {"le": "0.5 A"}}},
    "heartbeat": {"check": "comm_loss_heartbeat", "source": "004_580db881af34243e.txt",
                  "parameters": {"behaviour": ["zero_limits", "alarm"], "observe_s": "20 s", "poll_s": "0.5 s"},
                  "limits": {"reaction_time": {"le": "7 s"}, "recovery_time": {"le": "5 s"}}},
    "silent_module": {"check": "comm_loss_silent_module", "source": "004_580db881af34243e.txt",
                      "parameters": {"inject": True, "observe_s": "15 s", "poll_s": "0.5 s"},
                      "limits": {"offline_detect_time": {"le": "5 s"}, "totals_drop_time": {"le": "5 s"},
                                 "capacity_overcounted": {"le": "0.5 Ah"}, "limit_overcounted": {"le": "0.5 A"},
                                 "recovery_time": {"le": "10 s"}}},
    # the twin's silent_module fault (middle module from t = 20 s): watched, not injected
    "silent_module_watch": {"check": "comm_loss_silent_module", "source": "004_580db881af34243e.txt",
                            "parameters": {"inject": False, "observe_s": "35 s", "poll_s": "0.5 s",
                                           "hold_s": "0 s"},
                            "limits": {"totals_drop_time": {"le": "2 s"}, "capacity_overcounted": {"le": "0.5 Ah"},
                                       "limit_overcounted": {"le": "0.5 A"}}},
    "silent_bms": {"check": "comm_loss_silent_bms", "source": "004_580db881af34243e.txt",
                   "parameters": {"load_current": "20 A", "observe_s": "40 s", "poll_s": "0.25 s",
                                  "silence_timeout": "3 s"},
                   "limits": {"bms_silence": {"le": "3 s"}, "silence_at_safe_state": {"le": "4 s"},
                              "outputs_off_after": {"equals": True}}},
    # ---------------------------------------------------------------- protections (001, DOMAIN.md 3)
    "ot": {"check": "protection_trip", "source": "001_2fd46f2e26d35757.txt",
           "parameters": {"protection": "over_temperature", "charge_voltage": "14.2 V", "charge_current": "20 A",
                          "max_temperature": "45 degC", "observe_s": "10 s", "poll_s": "0.1 s", "recover": False},
           "limits": {"protection_correct": {"equals": True}, "trip_temperature": {"ge": "45 degC"},
                      "trip_delay": {"le": "3 s"}, "alarm_raised": {"equals": True},
                      "current_after_trip": {"le": "1 A"}}},
    "discharge_ocp": {"check": "protection_trip", "source": "001_2fd46f2e26d35757.txt",
                      "parameters": {"protection": "discharge_over_current", "below_current": "140 A",
                                     "below_s": "3 s", "trip_current": "170 A", "observe_s": "5 s",
                                     "poll_s": "0.05 s", "recover_observe_s": "120 s"},
                      "limits": {"no_trip_below": {"equals": True}, "tripped": {"equals": True},
                                 "trip_delay": {"in_range": ["0.5 s", "1.5 s"]}, "alarm_raised": {"equals": True},
                                 "current_after_trip": {"le": "1 A"}, **_RECOVERED,
                                 "recovery_time": {"in_range": ["20 s", "60 s"]}}},
    "charge_ocp": {"check": "protection_trip", "source": "001_2fd46f2e26d35757.txt",
                   "parameters": {"protection": "charge_over_current", "charge_voltage": "14.6 V",
                                  "below_current": "100 A", "below_s": "4 s", "trip_current": "120 A",
                                  "observe_s": "6 s", "poll_s": "0.05 s", "recover_observe_s": "120 s"},
                   "limits": {"no_trip_below": {"equals": True}, "tripped": {"equals": True},
                              "trip_delay": {"in_range": ["1 s", "3 s"]}, "alarm_raised": {"equals": True},
                              "current_after_trip": {"le": "1 A"}, **_RECOVERED,
                              "recovery_time": {"in_range": ["20 s", "60 s"]}}},
    "ovp": {"check": "protection_trip", "source": "001_2fd46f2e26d35757.txt",
            "parameters": {"protection": "over_voltage", "charge_voltage": "16.0 V", "charge_current": "50 A",
                           "threshold": "3.65 V", "approach": "3.55 V", "observe_s": "3 h", "poll_s": "0.1 s",
                           "coarse_poll_s": "10 s", "recovery_current": "50 A", "recover_observe_s": "600 s"},
            "limits": {"tripped": {"equals": True}, "trip_cell_voltage": {"in_range": ["3.60 V", "3.75 V"]},
                       "trip_delay": {"in_range": ["0.5 s", "2 s"]}, "alarm_raised": {"equals": True},
                       "current_after_trip": {"le": "1 A"}, **_RECOVERED, "recovery_time": {"le": "300 s"}}},
    "uvp": {"check": "protection_trip", "source": "001_2fd46f2e26d35757.txt",
            "parameters": {"protection": "under_voltage", "load_current": "100 A", "threshold": "2.5 V",
                           "approach": "2.8 V", "observe_s": "3 h", "poll_s": "0.1 s", "coarse_poll_s": "10 s",
                           "recovery_current": "50 A", "recovery_voltage": "14.2 V", "recover_observe_s": "900 s"},
            "limits": {"tripped": {"equals": True}, "trip_cell_voltage": {"in_range": ["2.2 V", "2.55 V"]},
                       "trip_delay": {"in_range": ["1 s", "4 s"]}, "alarm_raised": {"equals": True},
                       "current_after_trip": {"le": "1 A"}, **_RECOVERED, "recovery_time": {"le": "600 s"}}},
}
PROTECTION_STEPS = ("discharge_ocp", "charge_ocp", "ovp", "uvp")


@dataclass
class SeriesRun(Run):
    """A run of this table's STEPS (or of a shipped plan)."""

    def plan_data(self) -> dict[str, Any]:
        steps = [{"name": e.step, **STEPS[e.step]} for e in self.expects]
        return {"name": f"truth_{self.name}", "version": "1", "applies_to": ["*"], "steps": steps}


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
    SeriesRun("4s4p_group_open", "4s4p", None, [Expect("stress_group", PASS)]),
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
    SeriesRun("plan_series_string", S4, None,
              _all(("firmware_consistency", "configuration", "mosfet_rating", "aggregation", "mosfet_stress",
                    "comm_loss_heartbeat", "comm_loss_silent_module", "comm_loss_silent_bms"), PASS),
              plan="series_string_4s1p"),
    SeriesRun("plan_eol", "1s1p", None,
              _all(("bms_comm", "identity", "ocv", "acir", "balance", "discharge_ocp_trip"), PASS),
              plan="eol_module"),
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


CASES = [pytest.param(run, expect, id=f"{expect.step}-{run.name}") for run in RUNS for expect in run.expects]


@pytest.mark.parametrize("run, expect", CASES)
def test_truth_table(outcomes: dict[str, Outcome], run: SeriesRun, expect: Expect) -> None:
    assert_expected(outcomes[run.name], run, expect)


@pytest.mark.parametrize("run", RUNS, ids=[r.name for r in RUNS])
def test_exit_status(outcomes: dict[str, Outcome], run: SeriesRun) -> None:
    """``hil run`` exits 0 exactly when every step it ran passed, 1 when one failed."""
    outcome = outcomes[run.name]
    failed = any(e.verdict == FAIL for e in run.expects)
    assert outcome.returncode == (1 if failed else 0), outcome.output


def test_good_and_candidate_firmware_differ() -> None:
    """The table itself holds both firmware on communication loss and aggregation."""
    by_name = {r.name: {e.step: e.verdict for e in r.expects} for r in RUNS}
    assert by_name["4s1p_healthy"]["heartbeat"] != by_name["4s1p_candidate"]["heartbeat"]
    assert by_name["4s1p_healthy"]["silent_module"] != by_name["4s1p_candidate"]["silent_module"]
    assert by_name["silent_module_good"]["aggregation_degraded"] != \
        by_name["silent_module_candidate"]["aggregation_degraded"]
    assert by_name["plan_firmware_good"]["comm_loss_heartbeat"] != \
        by_name["plan_firmware_candidate"]["comm_loss_heartbeat"]
