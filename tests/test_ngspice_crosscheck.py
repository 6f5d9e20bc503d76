"""Cross-check the twin's circuit solver against ngspice on netlists written from the same DUT data.

The netlists come from tests/spice_netlists.py, which reads the raw YAML (fixtures/duts/*.yaml
and the module type each names) and builds the circuit with its own formulas and DOMAIN.md's
figures -- nothing from emulator.topology. The twin is driven only through its bench API.
Agreement required: 1 % (the twin's own time discretisation is the main source of difference).

1. 1S4P under a 200 A load with unequal leads, same-side and diagonal take-off: branch currents
   at 1 ms, 1 s and 30 s.
2. A module 0.2 V above a 1S4P bank closed onto it: peak current and the decay at 1 ms, 1 s,
   10 s, 60 s and 600 s (ngspice integrates SOC on a capacitor and looks OCV up with pwl()).
3. A 4S string carrying 100 A when one module's MOSFETs open: the clamped peak Vds and the
   settled Vds (sum of OCVs minus the bus voltage) and the avalanche energy.

Also: every shipped DUT under load (busbars, strings, 4S4P groups, the 16S rack module), and the
unequal_cable scenario against the same lead written into the DUT.

Set BANKHIL_REQUIRE_NGSPICE=1 (CI) to turn a missing ngspice into a failure instead of a skip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from required_tools import required
import yaml

from emulator.twin import build_twin
from spice_netlists import (FIXTURES, cell_ocv, load_bank_data, ngspice_path, run_transient,
                            soc_for_cell_ocv, write_bank)

NGSPICE = ngspice_path()
REQUIRED = required("BANKHIL_REQUIRE_NGSPICE")

pytestmark = [
    pytest.mark.ngspice,
    pytest.mark.skipif(NGSPICE is None and not REQUIRED,
                       reason="ngspice not found on PATH (Debian package 'ngspice'); "
                              "the twin-vs-ngspice cross-checks need it"),
]


@pytest.fixture(autouse=True)
def _ngspice_present():
    if NGSPICE is None:
        pytest.fail("BANKHIL_REQUIRE_NGSPICE is set but ngspice is not on PATH (apt-get install ngspice)")


TOLERANCE = 0.01  # relative agreement required between the twin and ngspice
# Once the inductive transient is over (1 s) and before the bus jumpers have self-heated by the
# 1 K that makes the twin re-evaluate them, the twin's time step no longer matters: its DC solution
# must match to 0.05 % (measured: ~1e-6). A missing fuse resistance or copper temperature
# coefficient moves the branch currents of these banks by 0.1-0.3 %, well outside 1 %'s reach.
QUASI_DC_TOLERANCE = 5e-4


def _rel(twin_value: float, spice_value: float) -> float:
    return abs(twin_value - spice_value) / abs(spice_value)


def _table(rows: list[tuple[str, float, float]]) -> str:
    lines = [f"{'quantity':<28} {'twin':>14} {'ngspice':>14} {'diff %':>9}"]
    for name, tw, sp in rows:
        lines.append(f"{name:<28} {tw:>14.6f} {sp:>14.6f} {100 * (tw - sp) / abs(sp):>+9.4f}")
    return "\n".join(lines)


def _check(rows: list[tuple[str, float, float]], result, tolerance: float = TOLERANCE) -> None:
    worst = max(_rel(tw, sp) for _, tw, sp in rows)
    assert worst <= tolerance, (
        f"twin and ngspice differ by {100 * worst:.3f} % (allowed {100 * tolerance:g} %)\n"
        f"{_table(rows)}\n{result.report()}")


# =============================================================================================
# 1. Four parallel modules with unequal leads under a 200 A load
# =============================================================================================
UNEQUAL_LEADS = {"s1p3": {"length_m": 1.15}, "s1p2": {"cross_section_mm2": 25}}
LOAD_A = 200.0
SAMPLES_1 = (1e-3, 1.0, 30.0)


def _unequal_dut(tmp_path: Path, stem: str) -> Path:
    """The shipped DUT with unequal leads, written to tmp_path/duts (module types resolve to fixtures)."""
    raw = yaml.safe_load((FIXTURES / "duts" / f"{stem}.yaml").read_text())
    raw["name"] = f"{stem}_unequal"
    raw.setdefault("interconnect", {})["leads"] = UNEQUAL_LEADS
    folder = tmp_path / "duts"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}_unequal.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.parametrize("stem", ["1s4p_same_side", "1s4p_diagonal"])
def test_parallel_branch_currents_with_unequal_leads(stem, tmp_path):
    dut = _unequal_dut(tmp_path, stem)
    bank = write_bank(load_bank_data(dut), load_a=LOAD_A)
    probes = {b: bank.shunt_probe(b) for b in bank.branches}
    result = run_transient(bank, tmp_path / "spice", stem, stop_s=SAMPLES_1[-1], max_step_s=0.25,
                           vectors=[*probes.values(), "v(bank_pos)"],
                           extra_breakpoints=list(SAMPLES_1))

    twin = build_twin(str(dut))
    assert sorted(twin.branch_currents()) == sorted(bank.branches)
    twin.set_load(LOAD_A)
    twin.load_input(True)
    rows = []
    for t in SAMPLES_1:
        twin.advance(t - twin.clock.now)
        currents = twin.branch_currents()
        for branch, vec in probes.items():
            rows.append((f"I {branch} @ {t:g} s [A]", currents[branch], result.at(vec, t)))
        rows.append((f"V bank+ @ {t:g} s [V]", twin.terminal_voltage, result.at("v(bank_pos)", t)))
        spice_total = sum(result.at(vec, t) for vec in probes.values())
        assert spice_total == pytest.approx(-LOAD_A, rel=1e-4), result.report()
    _check(rows, result)
    _check([row for row in rows if "@ 1 s" in row[0]], result, QUASI_DC_TOLERANCE)
    # the leads do matter: the shares are unequal well beyond the tolerance
    shares = [result.at(vec, 1.0) for vec in probes.values()]
    assert (max(shares) - min(shares)) / LOAD_A * len(shares) > 5 * TOLERANCE


SHIPPED_DUTS = sorted(p.stem for p in (FIXTURES / "duts").glob("*.yaml"))


@pytest.mark.parametrize("stem", SHIPPED_DUTS)
def test_every_shipped_dut_under_load(stem, tmp_path):
    """Branch currents and terminal voltage of each shipped DUT at 80 A per parallel branch
    (below every module's limits and OCP): busbars, cable jumpers, strings, groups in series."""
    data = load_bank_data(stem)
    load_a = 80.0 * int(data.dut["parallel"])
    bank = write_bank(data, load_a=load_a)
    probes = {b: bank.shunt_probe(b) for b in bank.branches}
    samples = (1.0, 10.0)
    result = run_transient(bank, tmp_path / "spice", stem, stop_s=samples[-1], max_step_s=0.25,
                           vectors=[*probes.values(), "v(bank_pos)"], extra_breakpoints=list(samples))
    twin = build_twin(stem)
    assert sorted(twin.branch_currents()) == sorted(bank.branches)
    twin.set_load(load_a)
    twin.load_input(True)
    rows = []
    for t in samples:
        twin.advance(t - twin.clock.now)
        currents = twin.branch_currents()
        rows += [(f"I {b} @ {t:g} s [A]", currents[b], result.at(v, t)) for b, v in probes.items()]
        rows.append((f"V bank+ @ {t:g} s [V]", twin.terminal_voltage, result.at("v(bank_pos)", t)))
    _check(rows, result)
    _check([row for row in rows if "@ 1 s" in row[0]], result, QUASI_DC_TOLERANCE)


def test_unequal_cable_scenario_matches_the_same_lead_in_the_dut(tmp_path):
    """The unequal_cable fault (+0.15 m on s1p3) is the same circuit as a 1.15 m lead."""
    scenario = tmp_path / "scenarios" / "longer_s1p3.yaml"
    scenario.parent.mkdir(parents=True)
    scenario.write_text(yaml.safe_dump({"name": "longer_s1p3", "faults": [
        {"kind": "unequal_cable", "branch": "s1p3", "extra_length_m": 0.15}]}))
    raw = yaml.safe_load((FIXTURES / "duts" / "1s4p_same_side.yaml").read_text())
    raw["interconnect"]["leads"] = {"s1p3": {"length_m": 1.15}}
    dut = tmp_path / "duts" / "1s4p_same_side_longer.yaml"
    dut.parent.mkdir(parents=True)
    dut.write_text(yaml.safe_dump(raw, sort_keys=False))

    bank = write_bank(load_bank_data(dut), load_a=LOAD_A)
    probes = {b: bank.shunt_probe(b) for b in bank.branches}
    result = run_transient(bank, tmp_path / "spice", "scenario", stop_s=1.0, max_step_s=0.25,
                           vectors=list(probes.values()), extra_breakpoints=[1.0])
    twin = build_twin("1s4p_same_side", scenario=str(scenario))
    twin.set_load(LOAD_A)
    twin.load_input(True)
    twin.advance(1.0)
    currents = twin.branch_currents()
    _check([(f"I {b} @ 1 s [A]", currents[b], result.at(vec, 1.0)) for b, vec in probes.items()],
           result, QUASI_DC_TOLERANCE)


# =============================================================================================
# 2. A module 0.2 V above the bank closed onto it
# =============================================================================================
MISMATCH_V = 0.2
SAMPLES_2 = (1e-3, 1.0, 10.0, 60.0, 600.0)


def test_closing_a_module_with_a_0v2_mismatch(tmp_path):
    stem, late = "1s4p_same_side", "s1p4"
    data = load_bank_data(stem)
    cells = int(data.module["cells_in_series"])
    base = data.dut["initial_soc_pct"] / 100.0
    high = soc_for_cell_ocv(cell_ocv(base) + MISMATCH_V / cells)

    twin = build_twin(stem)
    twin.set_contactor(late, False)
    k = twin.modules.index(late)
    twin.cell_soc[k, :] = high
    ocv = twin.ocv()
    assert ocv[k] - np.delete(ocv, k).mean() == pytest.approx(MISMATCH_V, abs=1e-6)
    twin.advance(0.1)          # open contactor: ~20 nA through G_OFF, nothing moves
    t0 = twin.clock.now
    twin.set_contactor(late, True)

    # ngspice starts at the closing instant: RC pairs discharged, inductors at 0 A
    bank = write_bank(data, soc={late: high})
    probes = {b: bank.shunt_probe(b) for b in bank.branches}
    result = run_transient(bank, tmp_path / "spice", "mismatch", stop_s=SAMPLES_2[-1],
                           max_step_s=0.5, vectors=list(probes.values()),
                           extra_breakpoints=[1e-4, 3e-4, *SAMPLES_2])
    rows = []
    for t in SAMPLES_2:
        twin.advance(t0 + t - twin.clock.now, max_step=0.5)
        currents = twin.branch_currents()
        for branch, vec in probes.items():
            rows.append((f"I {branch} @ {t:g} s [A]", currents[branch], result.at(vec, t)))
    late_i = result.vectors[probes[late]]
    rows.insert(0, (f"peak |I| {late} [A]", twin.peaks.current_a[late],
                    float(np.max(np.abs(late_i)))))
    _check(rows, result)
    # the decay is real (RC pairs charging, OCV falling with SOC): 600 s carries < 80 % of 1 ms
    assert abs(result.at(probes[late], 600.0)) < 0.8 * abs(result.at(probes[late], 1e-3))


# =============================================================================================
# 3. One module's MOSFETs opening in a 4S string under load
# =============================================================================================
STRING_LOAD_A = 100.0
T_OPEN = 1.0
SETTLED = (0.1, 1.0)  # s after the opening


@pytest.fixture(scope="module")
def string_opening(tmp_path_factory):
    """ngspice run of 4s1p: 100 A load from t = 0, s2p1's FETs open at T_OPEN."""
    data = load_bank_data("4s1p")
    bank = write_bank(data, load_a=STRING_LOAD_A, fet_opens={"s2p1": T_OPEN})
    p_neg, b_neg = bank.vds_nodes("s2p1")
    vectors = [f"v({p_neg})", f"v({b_neg})", bank.shunt_probe("p1")]
    # tmax 1 ms: ngspice's minimum step is 1e-11 * tmax, and when the clamp stops conducting
    # Vds falls by ~40 V within L * G_off (0.3 ns with spice_netlists.SPICE_FET_OFF_S), which
    # it follows with sub-ns steps.
    result = run_transient(bank, tmp_path_factory.mktemp("spice"), "string_opening",
                           stop_s=T_OPEN + SETTLED[-1], max_step_s=1e-3, vectors=vectors,
                           extra_breakpoints=[T_OPEN + t for t in SETTLED])
    vds = result.vectors[vectors[0]] - result.vectors[vectors[1]]
    return data, result, vds, bank.shunt_probe("p1")


def _run_string_twin(dt_min: float):
    twin = build_twin("4s1p", dt_min=dt_min)
    twin.set_load(STRING_LOAD_A)
    twin.load_input(True)
    twin.advance(T_OPEN, max_step=0.1)
    assert twin.shunt_current("p1") == pytest.approx(-STRING_LOAD_A, rel=1e-6)
    twin.bms_force_off("s2p1")
    return twin


@pytest.mark.parametrize("dt_min", [1e-6, 1e-7])
def test_string_fet_opening_peak_and_settled_vds(string_opening, dt_min):
    data, result, vds, _ = string_opening
    twin = _run_string_twin(dt_min)
    k = twin.modules.index("s2p1")
    rows = []
    for t in SETTLED:
        twin.advance(T_OPEN + t - twin.clock.now, max_step=0.1)
        rows.append((f"Vds s2p1 @ +{t:g} s [V]", twin.vds("s2p1"),
                     float(np.interp(T_OPEN + t, result.time, vds))))
    rows.insert(0, ("peak Vds s2p1 [V]", float(twin.peaks.vds_v[k]), float(np.max(vds))))
    _check(rows, result)
    # the figures themselves: clamp at Vc + R_clamp * I, settles at sum(OCV) - V_bus (~52 V)
    fet = data.module["bms"]["fet"]
    clamp_peak = fet["avalanche_clamp_v"] + fet["clamp_resistance_mohm"] * 1e-3 * STRING_LOAD_A
    assert float(np.max(vds)) == pytest.approx(clamp_peak, rel=1e-3), result.report()
    assert twin.vds("s2p1") == pytest.approx(sum(twin.ocv()) - twin.terminal_voltage, rel=1e-3)


def test_string_fet_opening_avalanche_energy(string_opening):
    data, result, vds, shunt = string_opening
    twin = _run_string_twin(1e-7)
    twin.advance(0.01, max_step=0.1)
    # the clamp carries the string current (the shunt reads it as discharge, i.e. negative)
    clamping = vds > data.module["bms"]["fet"]["avalanche_clamp_v"]
    power = np.where(clamping, vds * -result.vectors[shunt], 0.0)
    spice_j = float(np.sum(0.5 * (power[1:] + power[:-1]) * np.diff(result.time)))
    _check([("avalanche energy s2p1 [J]", twin.energy.clamp, spice_j)], result)
