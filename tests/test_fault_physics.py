"""Fault physics of the twin: each test fails if the physics behind a fault is taken out.

Fuses. A branch fuse in the twin is a time-delay fuse with an I^2 t melting integral: it carries
``FUSE_CONTINUOUS`` x its rating for ever, and above that it melts once the integral of
(I^2 - (1.1 x rating)^2) dt reaches ``FUSE_MELT_S`` x rating^2 (emulator/twin.py). At a constant
current I the melting time is therefore, by hand,

    t = FUSE_MELT_S x R^2 / (I^2 - (FUSE_CONTINUOUS x R)^2)

e.g. a 40 A fuse at 80 A: 20 x 1600 / (6400 - 1936) = 7.17 s; at 120 A: 32000 / 12464 = 2.57 s.
The tests drive a 1S1P's branch fuse (rated 40 A here, so the load stays under the module BMS's
150 A discharge over-current) with the emulated load in constant current, the way ``hil simulate``
runs a program (keep-alive every second), and read the blow time from the twin's events.

Hot module. ``hot_module`` (fixtures/scenarios/hot_module.yaml) starts its module at 50 C *and*
adds 30 W of internal heat. With the heat but not the raised start the module must still warm
above its peers; with the raised start but not the heat it must end cooler than with both; with
neither the twin must equal the healthy one.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bankmodel.specs.loading import FIXTURES, load_bank_spec
from emulator.twin import FUSE_CONTINUOUS, FUSE_MELT_S, Twin

# ------------------------------------------------------------------------------ fuses

FUSE_A = 40.0
BRANCH = "p1"          # a 1S1P is one string, p1: its positive lead carries the branch fuse


def fused_1s1p() -> Twin:
    """A 1S1P whose branch fuse is rated FUSE_A (the DUT file's 200 A default otherwise)."""
    spec = load_bank_spec("1s1p")
    protection = spec.dut.protection.model_copy(update={"branch_fuse_a": FUSE_A})
    twin = Twin(replace(spec, dut=spec.dut.model_copy(update={"protection": protection})))
    assert twin.layout.branches == [BRANCH]
    assert twin.layout.fuses[BRANCH] == FUSE_A and twin.layout.fuses["main"] > 3 * FUSE_A
    return twin


def run_load(twin: Twin, amps: float, seconds: float, max_step: float) -> float | None:
    """Constant-current discharge with the keep-alive every second; the time the branch fuse
    blew (from the load switching on), or None."""
    twin.set_load(amps)
    twin.load_input(True)
    start = twin.clock.now
    while twin.clock.now - start < seconds - 1e-9 and not twin.fuse_blown[BRANCH]:
        twin.inverter_heartbeat()
        twin.advance(min(1.0, seconds - (twin.clock.now - start)), max_step=max_step)
    blown = [t for t, what in twin.events if re.match(rf"fuse {BRANCH} \(.*\) blown", what)]
    return blown[0] - start if blown else None


def hand_melting_time(rating_a: float, amps: float) -> float:
    """I^2 t by hand: the melting integral over the excess of I^2 above the continuous rating."""
    melt_i2t = FUSE_MELT_S * rating_a ** 2                 # A^2 s
    return melt_i2t / (amps ** 2 - (FUSE_CONTINUOUS * rating_a) ** 2)


def test_hand_figures_are_what_the_docstring_says():
    assert (FUSE_MELT_S, FUSE_CONTINUOUS) == (20.0, 1.1)
    assert hand_melting_time(40.0, 80.0) == pytest.approx(7.168, abs=1e-3)
    assert hand_melting_time(40.0, 120.0) == pytest.approx(2.567, abs=1e-3)


@pytest.mark.parametrize("multiple", [2.0, 3.0])
def test_fuse_melts_at_its_i2t(multiple):
    twin = fused_1s1p()
    amps = multiple * FUSE_A
    expected = hand_melting_time(FUSE_A, amps)
    blew_after = run_load(twin, amps, seconds=3 * expected, max_step=0.005)
    assert blew_after is not None, f"fuse never blew at {amps:.0f} A (hand I2t: {expected:.2f} s)"
    assert blew_after == pytest.approx(expected, rel=0.03)
    # the branch carried the asked current until then, and nothing else tripped first
    assert twin.peaks.current_a[BRANCH] == pytest.approx(amps, rel=0.01)
    assert not twin.bms.active_trips()
    # once blown the branch is open: the module is off the bank
    twin.advance(0.1, max_step=0.01)
    assert abs(twin.shunt_current(BRANCH)) < 1e-3


def test_fuse_below_its_rating_holds_for_an_hour():
    twin = fused_1s1p()
    blew_after = run_load(twin, 0.95 * FUSE_A, seconds=3600.0, max_step=5.0)
    assert blew_after is None and not twin.fuse_blown[BRANCH]
    assert twin.clock.now == pytest.approx(3600.0)
    assert abs(twin.shunt_current(BRANCH)) == pytest.approx(0.95 * FUSE_A, rel=1e-3)


# ------------------------------------------------------------------------------ hot module

HOT_DUT = "1s4p_diagonal"          # middle = s1p3, between s1p2 and s1p4
HOT = "s1p3"
HOURS = (0.25, 0.5, 1.0, 2.0)


def scenario(folder: Path, name: str, fields: str) -> Path:
    """A hot_module variant on the middle module with the given fields (YAML lines)."""
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\ndescription: test variant of hot_module\nfaults:\n"
                    f"  - kind: hot_module\n    module: middle\n{fields}")
    return path


def temperatures_over_time(scenario_path: Path | str | None) -> tuple[Twin, list[dict[str, float]]]:
    """The 1S4P at rest (no load), keep-alive every second; module thermocouples after each of
    HOURS."""
    twin = Twin(load_bank_spec(HOT_DUT, scenario_path))
    samples, elapsed = [], 0.0
    for hours in HOURS:
        while elapsed < hours * 3600 - 1e-9:
            twin.inverter_heartbeat()
            twin.advance(1.0, max_step=1.0)
            elapsed += 1.0
        samples.append({m: twin.thermocouple(m) for m in twin.modules})
    return twin, samples


@pytest.fixture(scope="module")
def hot_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Twin, list[dict[str, float]]]]:
    folder = tmp_path_factory.mktemp("hot_module_variants")
    shipped = FIXTURES / "scenarios" / "hot_module.yaml"
    text = shipped.read_text()
    assert "extra_heat_w: 30" in text and "initial_temperature_c: 50" in text
    variants = {
        "healthy": None,
        "shipped": shipped,
        "heat_only": scenario(folder, "heat_only", "    extra_heat_w: 30\n"),
        "start_only": scenario(folder, "start_only", "    extra_heat_w: 0\n    initial_temperature_c: 50\n"),
        "neither": scenario(folder, "neither", "    extra_heat_w: 0\n"),
    }
    return {name: temperatures_over_time(path) for name, path in variants.items()}


def _peers(sample: dict[str, float]) -> float:
    return max(t for m, t in sample.items() if m != HOT)


def test_extra_heat_alone_warms_the_module_above_its_peers(hot_runs):
    _, samples = hot_runs["heat_only"]
    excess = [s[HOT] - _peers(s) for s in samples]
    assert samples[0][HOT] > 25.0 + 0.5                      # it started at ambient, like its peers
    assert all(b > a for a, b in zip(excess, excess[1:])), excess   # and keeps pulling away
    # 30 W into ~11 kJ/K: ~2.4 K in the first quarter hour, several K after two hours
    assert excess[0] == pytest.approx(30 * 900 / 11000, rel=0.25)
    assert excess[-1] > 5.0
    _, healthy = hot_runs["healthy"]
    assert all(s[HOT] - h[HOT] > 0.5 for s, h in zip(samples, healthy))


def test_the_shipped_fault_is_hotter_than_its_raised_start_alone(hot_runs):
    """The 50 C start decays towards ambient; the 30 W keep the faulted module well above that."""
    _, shipped = hot_runs["shipped"]
    _, start_only = hot_runs["start_only"]
    gaps = [a[HOT] - b[HOT] for a, b in zip(shipped, start_only)]
    assert all(g > 0.5 for g in gaps) and all(b > a for a, b in zip(gaps, gaps[1:])), gaps
    assert start_only[-1][HOT] < start_only[0][HOT]          # the start alone only cools
    assert all(s[HOT] > _peers(s) for s in shipped)


def test_neither_heat_nor_start_is_healthy(hot_runs):
    twin, samples = hot_runs["neither"]
    healthy_twin, healthy = hot_runs["healthy"]
    assert samples == healthy
    assert np.array_equal(twin.thermal.temperature, healthy_twin.thermal.temperature)
    assert np.array_equal(twin.extra_heat_w, healthy_twin.extra_heat_w)


# ------------------------------------------------------------------------------ the public twin API

def _under_load(twin: Twin, seconds: float = 20.0) -> dict[str, float]:
    """Branch currents and the module temperatures after a 100 A discharge, keep-alive each second."""
    twin.set_load(100.0)
    twin.load_input(True)
    for _ in range(int(seconds)):
        twin.inverter_heartbeat()
        twin.advance(1.0)
    return {**twin.branch_currents(), **{m: twin.thermocouple(m) for m in twin.modules}}


def _lead_length(twin: Twin, branch: str) -> float:
    ic = twin.spec.dut.interconnect
    override = ic.leads.get(branch)
    return ic.lead.length_m if override is None or override.length_m is None else override.length_m


def test_the_public_twin_api_reproduces_each_resistive_scenario():
    """The methods faults use (emulator/faults.py) are the twin's public API: a healthy twin set
    up through them behaves as the shipped scenario's twin does."""
    dut = "1s4p_diagonal"
    healthy = Twin(load_bank_spec(dut))
    last, middle = healthy.layout.branches[-1], healthy.modules[len(healthy.modules) // 2]
    lugs = healthy.lug_parts(f"{healthy.modules[-1]}.+")
    assert lugs and all(part.startswith("lug") for _, part in lugs)

    def loose(twin: Twin) -> None:
        for element, part in twin.lug_parts(f"{twin.modules[-1]}.+"):
            twin.set_part_resistance(element, part, 0.5e-3)

    def longer(twin: Twin) -> None:
        length = _lead_length(twin, last)
        twin.lengthen_lead(last, (length + 0.15) / length)

    def aged(twin: Twin) -> None:
        twin.age_module(middle, capacity_factor=0.8, resistance_factor=1.6)

    for scenario, set_up in (("loose_lug", loose), ("unequal_cable", longer), ("aged_module", aged)):
        faulted = Twin(load_bank_spec(dut, scenario))
        by_api = Twin(load_bank_spec(dut))
        set_up(by_api)
        assert _under_load(by_api) == pytest.approx(_under_load(faulted), rel=1e-9, abs=1e-9), scenario
    element, part = lugs[0]
    assert faulted.part_resistance(element, part) == healthy.part_resistance(element, part)
    assert by_api.part_resistance(f"{last}.lead+", "cable") == healthy.part_resistance(f"{last}.lead+", "cable")
    with pytest.raises(KeyError, match="no part 'bolt'"):
        healthy.set_part_resistance(element, "bolt", 1.0)


def test_a_stuck_contactor_stays_where_it_is_stuck():
    twin = Twin(load_bank_spec("1s4p_diagonal"))
    branch = twin.layout.branches[-1]
    twin.stick_contactor(branch, "closed")
    twin.set_contactor(branch, False)
    assert twin.contactor_closed[branch]
    twin.stick_contactor(branch, "open")
    twin.set_contactor(branch, True)
    assert not twin.contactor_closed[branch]
    twin.advance(1.0)
    assert abs(twin.shunt_current(branch)) < 1e-3
    twin.stick_contactor(branch, None)
    twin.set_contactor(branch, True)
    assert twin.contactor_closed[branch]
