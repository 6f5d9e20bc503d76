"""Module BMS protections: each trips at its threshold after its delay, and not before."""

from __future__ import annotations

import pytest

from emulator.bms import PROTECTIONS
from emulator.twin import build_twin


def tripped(twin, name: str, module: str = "s1p1") -> bool:  # type: ignore[no-untyped-def]
    return bool(twin.bms.tripped[PROTECTIONS.index(name), twin.module_index[module]])


def test_discharge_overcurrent_trips_after_its_delay_not_before():
    twin = build_twin("1s1p")
    twin.set_load(200)  # threshold 150 A, delay 1 s
    twin.load_input(True)
    twin.advance(0.9, max_step=0.01)
    assert not tripped(twin, "discharge_overcurrent")
    twin.advance(0.2, max_step=0.01)
    assert tripped(twin, "discharge_overcurrent")
    assert twin.fet_state("s1p1") == "discharge_off"
    assert abs(twin.load_reading()[1]) < 1.0  # the load dropped out: nothing flows


def test_below_threshold_never_trips():
    twin = build_twin("1s1p")
    twin.set_load(140)
    twin.load_input(True)
    twin.advance(30)
    assert not tripped(twin, "discharge_overcurrent")


def test_short_circuit_trips_in_microseconds():
    twin = build_twin("1s1p")
    twin.set_load(800)  # threshold 500 A, 200 us
    twin.load_input(True)
    twin.advance(150e-6, max_step=1e-6)
    assert not tripped(twin, "short_circuit")
    twin.advance(100e-6, max_step=1e-6)
    assert tripped(twin, "short_circuit")
    twin.advance(1e-3, max_step=1e-6)
    assert twin.fet_state("s1p1") == "off"


def test_undervoltage_ends_a_deep_discharge():
    twin = build_twin("1s1p")
    twin.set_module_soc("s1p1", 3.0)
    twin.set_load(50)
    twin.load_input(True)
    twin.advance(3600, max_step=1.0)
    assert tripped(twin, "cell_undervoltage")
    assert twin.fet_state("s1p1") == "discharge_off"
    assert twin.soc()[0] > -0.03


def test_overvoltage_ends_an_overcharge():
    twin = build_twin("1s1p")
    twin.set_module_soc("s1p1", 97.0)
    twin.set_supply(15.5, 50)  # a charger set too high: cells pass 3.65 V
    twin.supply_output(True)
    twin.advance(3600, max_step=1.0)
    assert tripped(twin, "cell_overvoltage")
    assert twin.fet_state("s1p1") == "charge_off"


def test_charge_overcurrent():
    twin = build_twin("1s1p")
    twin.set_module_soc("s1p1", 20.0)
    twin.set_supply(14.2, 130)  # threshold 110 A, 2 s
    twin.supply_output(True)
    twin.advance(1.5, max_step=0.01)
    assert not tripped(twin, "charge_overcurrent")
    twin.advance(1.0, max_step=0.01)
    assert tripped(twin, "charge_overcurrent")


@pytest.mark.parametrize("recovery_s", [30.0])
def test_overcurrent_recovers_after_its_recovery_time(recovery_s):
    twin = build_twin("1s1p")
    twin.set_load(200)
    twin.load_input(True)
    twin.advance(1.5, max_step=0.01)
    twin.load_input(False)
    assert tripped(twin, "discharge_overcurrent")
    twin.advance(recovery_s + 1)
    assert not tripped(twin, "discharge_overcurrent")
    assert twin.fet_state("s1p1") == "on"


def test_over_temperature_blocks_discharge():
    twin = build_twin("1s1p")
    twin.thermal.temperature[twin.thermal.index["s1p1"]] = 65.0  # discharge window -20..60 C
    twin.advance(3.0, max_step=0.1)
    assert tripped(twin, "discharge_over_temperature")
    assert twin.fet_state("s1p1") in ("discharge_off", "off")


def test_balancing_bleeds_the_high_cell_while_charging():
    twin = build_twin("1s1p")
    twin.cell_soc[0, :] = [0.96, 0.96, 0.96, 0.995]
    twin.set_supply(14.2, 5)
    twin.supply_output(True)
    twin.advance(600)
    assert twin.bms.balancing[0, 3]
    spread_before = 0.035
    assert twin.cell_soc[0].max() - twin.cell_soc[0].min() < spread_before
