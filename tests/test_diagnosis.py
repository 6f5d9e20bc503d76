"""The troubleshooting rows (test_plans/checks/troubleshooting.yaml) and the choice among them.

A diagnosis is chosen from what was measured and names the module or branch: the same low
branch is a SOC mismatch when its open-circuit voltage is low, a weak module when its
resistance is high, and the path (cable, lug) when neither differs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from test_plans.checks.diagnosis import diagnose, row, rows, sharing_cause

REPO = Path(__file__).resolve().parents[1]
CURRENTS_LOW_P4 = {"p1": 51.0, "p2": 50.0, "p3": 50.5, "p4": 40.0}


def only_row(text: str) -> str:
    """The one row whose symptom the text quotes (fails if none or several)."""
    hits = [r.id for r in rows().values() if f"{r.document}: {r.symptom})" in text]
    assert len(hits) == 1, (hits, text)
    return hits[0]


def test_every_row_is_complete_and_cites_a_seed() -> None:
    seeds = {p.name for p in (REPO.parent / "shared" / "seeds").glob("*.txt")}
    for r in rows().values():
        assert r.symptom and r.cause and r.first_check, r
        assert re.fullmatch(r"\d{3}_[0-9a-f]{16}\.txt", r.source), r
        if seeds:
            assert r.source in seeds, r


def test_low_branch_with_low_open_circuit_voltage_is_a_soc_mismatch() -> None:
    ocv = {"p1": 13.20, "p2": 13.21, "p3": 13.20, "p4": 13.00}
    text = diagnose(*sharing_cause(CURRENTS_LOW_P4, ocv=ocv))
    assert only_row(text) == "soc_mismatch" and text.startswith("p4: ")
    assert "-203 mV" in text


def test_low_branch_with_high_resistance_is_a_weak_module() -> None:
    ocv = {"p1": 13.20, "p2": 13.20, "p3": 13.20, "p4": 13.20}
    resistance = {"p1": 0.0030, "p2": 0.0030, "p3": 0.0031, "p4": 0.0048}
    text = diagnose(*sharing_cause(CURRENTS_LOW_P4, ocv=ocv, resistance=resistance))
    assert only_row(text) == "weak_module" and text.startswith("p4: ")


def test_high_branch_with_equal_modules_is_the_cable() -> None:
    currents = {"p1": 62.0, "p2": 46.0, "p3": 46.0, "p4": 46.0}
    ocv = dict.fromkeys(currents, 13.2)
    resistance = dict.fromkeys(currents, 0.003)
    text = diagnose(*sharing_cause(currents, ocv=ocv, resistance=resistance))
    assert only_row(text) == "cable_resistance" and text.startswith("p1: ")


def test_a_voltage_difference_that_does_not_explain_the_current_is_not_blamed() -> None:
    # p4 is low in current but HIGH in open-circuit voltage: on discharge that cannot be why
    ocv = {"p1": 13.20, "p2": 13.20, "p3": 13.20, "p4": 13.40}
    text = diagnose(*sharing_cause(CURRENTS_LOW_P4, ocv=ocv))
    assert only_row(text) == "cable_resistance"


def test_on_charge_a_low_voltage_module_takes_more() -> None:
    currents = {"p1": 40.0, "p2": 40.0, "p3": 40.0, "p4": 55.0}
    ocv = {"p1": 13.20, "p2": 13.20, "p3": 13.20, "p4": 13.05}
    text = diagnose(*sharing_cause(currents, ocv=ocv, discharging=False))
    assert only_row(text) == "soc_mismatch" and text.startswith("p4: ")


@pytest.mark.parametrize("row_id", sorted(rows()))
def test_each_row_reads_as_itself_and_only_itself(row_id: str) -> None:
    text = diagnose(row_id, "s1p2", "x")
    assert only_row(text) == row_id
    assert text.startswith("s1p2: ") and text.endswith(row(row_id).first_check)


def test_an_unknown_row_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="no troubleshooting row 'nope'"):
        row("nope")


CONFIGURATION_PLAN = """\
name: configuration_probe
version: "1"
applies_to: [1S4P]
steps:
  - name: configuration
    check: configuration
    parameters: {rest_s: 2 s}
    limits:
      bank_voltage: {in_range: [12.0 V, 14.6 V]}
      capacity_deviation: {in_range: [-3 %, 3 %]}
      modules_missing: {le: 0}
"""


def test_reduced_capacity_with_every_module_online_names_the_weak_module(tmp_path: Path) -> None:
    """004's "inverter reports reduced capacity" points at a module not accepted; with every
    module online and one module's SoH low, the evidence says weak module, and names it."""
    import subprocess
    import sys

    from harness.store import ResultStore

    plan = tmp_path / "plan.yaml"
    plan.write_text(CONFIGURATION_PLAN)
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    result = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(plan), "--dut", "parallel/1s4p_busbar",
                             "--scenario", "aged_module", "--results", url, "--reports", str(tmp_path / "rep")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    store = ResultStore(url)
    failed = [m for m in store.measurements(store.runs()[0].id) if m.verdict == "fail"]
    assert failed and all(only_row(m.diagnosis or "") == "weak_module" for m in failed)
    assert all((m.diagnosis or "").startswith("s1p3: ") for m in failed)
