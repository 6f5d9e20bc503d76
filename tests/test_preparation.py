"""Bench preparation (harness/preparation.py) on a bench of fakes: each rule, and what it must
not do. The wall-clock runs (tests/test_wall_clock_bench.py) show it on the emulated bench."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from bankmodel.channels import ChannelMap
from harness.preparation import BenchNotReady, StartState, over_voltage_level, prepare

START = StartState("closed", 0.1, 1.0, 5.0)
MODULES = ["s1p1", "s1p2", "s1p3"]


@dataclass
class Output:
    on: bool = True
    protection: tuple[float, float] | None = None
    refuse: bool = False

    def is_on(self) -> bool:
        return self.on

    def output(self, on: bool) -> None:
        self.on = on

    input = output

    def program_protection(self, ovp: float, uvl: float) -> None:
        if self.refuse:
            raise RuntimeError("-222,\"Data out of range\"")
        self.protection = (ovp, uvl)


@dataclass
class Relays:
    closed: dict[int, bool] = field(default_factory=dict)

    def is_closed(self, channel: int) -> bool:
        return self.closed.get(channel, False)


@dataclass
class Clock:
    now: float = 0.0

    def wait(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Status:
    alarms: set = field(default_factory=set)
    charge_enable: bool | None = True
    discharge_enable: bool | None = True


class Bench:
    def __init__(self, volts: dict[str, float], closed: set[str], alarms_until: float = 0.0):
        self.channels = ChannelMap.model_validate({
            "scanner": [{"channel": 101 + k, "kind": "voltage", "plus": f"{m}.+", "minus": f"{m}.P-"}
                        for k, m in enumerate(MODULES)],
            "actuator": [{"channel": 301 + k, "contactor": m} for k, m in enumerate(MODULES)]
            + [{"channel": 304, "contactor": "main"}]})
        self.supply, self.load = Output(), Output()
        self.relays = Relays({ch: name in closed for ch, name in self.channels.actuator_channels().items()})
        self.instruments = {"supply": self.supply, "load": self.load, "actuator": self.relays}
        self.volts, self.clock, self.alarms_until = volts, Clock(), alarms_until
        self.bms = self
        self.heartbeat_on = True
        self.closed_now: list[str] = []

    def status(self) -> Status:
        return Status({"discharge_over_current"} if self.clock.now < self.alarms_until else set())

    def provides(self, protocol: str) -> bool:
        return False

    def module_voltages(self) -> dict[str, float]:
        return dict(self.volts)

    def set_contactor(self, name: str, closed: bool) -> None:
        self.closed_now.append(name)


def test_a_bench_left_open_is_closed_again_outputs_off_protection_programmed() -> None:
    bench = Bench({"s1p1": 13.06, "s1p2": 13.05, "s1p3": 13.07}, closed=set())
    done = prepare(bench, START, MODULES, ovp_v=15.33)
    assert not bench.supply.on and not bench.load.on
    assert bench.supply.protection == (15.33, 0.0)
    assert bench.closed_now == ["s1p1", "s1p2", "s1p3", "main"]
    assert "main contactor closed" in done.text()


def test_a_mismatched_branch_is_never_closed_and_is_named() -> None:
    bench = Bench({"s1p1": 13.06, "s1p2": 13.05, "s1p3": 12.86}, closed=set())
    done = prepare(bench, START, MODULES)
    assert "s1p3" not in bench.closed_now and "s1p1" in bench.closed_now
    assert "contactor s1p3 left open: branch at 12.860 V" in done.text()


def test_a_bench_already_in_its_starting_state_is_not_touched() -> None:
    bench = Bench({"s1p1": 13.0, "s1p2": 14.0, "s1p3": 12.0}, closed={"s1p1", "s1p2", "s1p3", "main"})
    bench.supply.on = bench.load.on = False
    prepare(bench, START, MODULES)
    assert bench.closed_now == [] and bench.clock.now == 0.0


def test_the_bms_gets_its_recovery_time_before_anything_is_connected() -> None:
    bench = Bench({"s1p1": 13.06, "s1p2": 13.05, "s1p3": 13.07}, closed=set(), alarms_until=3.0)
    done = prepare(bench, START, MODULES)
    assert "BMS ready after 3 s" in done.text()
    bench = Bench({"s1p1": 13.06, "s1p2": 13.05, "s1p3": 13.07}, closed=set(), alarms_until=99.0)
    done = prepare(bench, START, MODULES)  # still alarmed after 5 s: noted, left to the checks
    assert "BMS still reports discharge_over_current after 5 s" in done.text()


def test_a_supply_refusing_its_protection_is_a_bench_fault() -> None:
    bench = Bench({"s1p1": 13.0, "s1p2": 13.0, "s1p3": 13.0}, closed=set())
    bench.supply.refuse = True
    with pytest.raises(BenchNotReady, match="refused its protection levels"):
        prepare(bench, START, MODULES, ovp_v=15.0)


@pytest.mark.parametrize("plan_v, dut_v, rating, expected", [
    (None, 14.6, 60.0, 15.33), (15.5, 14.6, 60.0, 16.275), (70.0, 58.4, 60.0, 60.0), (None, 14.6, None, 15.33)])
def test_over_voltage_level(plan_v, dut_v, rating, expected) -> None:  # type: ignore[no-untyped-def]
    assert over_voltage_level(plan_v, dut_v, rating) == pytest.approx(expected)
