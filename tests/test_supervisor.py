"""The safety supervisor: every instrument made safe on its own, and a hung one trips the watchdog."""

from __future__ import annotations

import time

import pytest

from emulator.emulate import start_emulated_station
from harness.supervisor import HungInstrument, SafetySupervisor
from instruments.drivers import get_driver


@pytest.fixture
def station():  # type: ignore[no-untyped-def]
    running = start_emulated_station("1s4p_diagonal")
    try:
        yield running
    finally:
        running.stop()


def _drivers(station):  # type: ignore[no-untyped-def]
    res = station.station["instruments"]  # the drivers and options the emulated station names

    def connect(role: str, rating: dict) -> object:
        entry = res[role]
        return get_driver(entry["driver"])(entry["resource"], role, rating=rating, timeout_s=0.5,
                                           options=entry.get("options"))
    return (connect("supply", {"voltage_v": 20, "current_a": 100}),
            connect("load", {"voltage_v": 24, "current_a": 240}))


def test_safe_state_turns_everything_off_and_records_it(station):
    supply, load = _drivers(station)
    recorded = []
    supervisor = SafetySupervisor({"supply": supply, "load": load}, record=recorded.append)
    supply.set_voltage(14.0)
    supply.set_current(10.0)
    supply.output(True)
    load.set_current(50.0)
    load.input(True)
    twin = station.bench.twin
    assert twin.supply.on and twin.load.on
    actions = supervisor.safe_state("test")
    assert not twin.supply.on and not twin.load.on
    assert [a.instrument for a in actions] == ["load", "supply"]  # stop the load first
    assert all(a.ok for a in actions) and len(recorded) == 2
    supply.close()
    load.close()


def test_hung_instrument_trips_the_watchdog_and_the_rest_is_made_safe(station):
    supply, load = _drivers(station)
    supply.set_voltage(14.0)
    supply.set_current(10.0)
    supply.output(True)
    supervisor = SafetySupervisor({"supply": supply, "load": load})
    supervisor.start_watchdog(0.2, lambda role, inst: inst.identity())
    try:
        station.scpi["load"][0].freeze()  # the load stops answering
        deadline = time.monotonic() + 10
        while supervisor.tripped is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert supervisor.tripped and "load" in supervisor.tripped
        assert not station.bench.twin.supply.on  # the supply was still made safe
        failed = [a for a in supervisor.actions if not a.ok]
        assert [a.instrument for a in failed] == ["load"]
        with pytest.raises(HungInstrument):
            supervisor.check()
    finally:
        supervisor.stop_watchdog()
        station.scpi["load"][0].thaw()
        supply.close()
        load.close()
