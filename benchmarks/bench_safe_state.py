"""Safe-state time with one instrument hung (README "What the harness guarantees").

The emulated bench's load stops answering; its driver would wait its 60 s VISA timeout; the
supervisor makes load, supply and relays safe concurrently within its bound. Reported, not
asserted (tests/test_reliability.py asserts the bound).

    python benchmarks/bench_safe_state.py [repeats]
"""

from __future__ import annotations

import statistics
import sys
import time

from emulator.emulate import start_emulated_station
from harness.supervisor import SafetySupervisor
from instruments.drivers import get_driver


def once() -> tuple[float, float]:
    station = start_emulated_station("1s4p_diagonal")
    try:
        res = station.station["instruments"]
        supply = get_driver(res["supply"]["driver"])(res["supply"]["resource"], "supply", options=res["supply"].get("options"),
                                              rating={"voltage_v": 20, "current_a": 100}, timeout_s=60)
        load = get_driver(res["load"]["driver"])(res["load"]["resource"], "load", options=res["load"].get("options"),
                                          rating={"voltage_v": 24, "current_a": 240}, timeout_s=60)
        actuator = get_driver(res["actuator"]["driver"])(res["actuator"]["resource"], "actuator", timeout_s=60)
        supply.set_voltage(14.0), supply.set_current(10.0), supply.output(True)
        load.set_current(50.0), load.input(True)
        sup = SafetySupervisor({"load": load, "supply": supply, "actuator": actuator})
        healthy_start = time.monotonic()
        sup.safe_state("healthy")
        healthy = time.monotonic() - healthy_start
        supply.output(True), load.input(True)
        station.scpi["load"][0].freeze()
        started = time.monotonic()
        sup.safe_state("frozen load")
        hung = time.monotonic() - started
        station.scpi["load"][0].thaw()
        return healthy, hung
    finally:
        station.stop()


if __name__ == "__main__":
    runs = [once() for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3)]
    print(f"safe state, all answering: median {statistics.median(r[0] for r in runs) * 1000:.0f} ms")
    print(f"safe state, load hung (60 s timeout): median {statistics.median(r[1] for r in runs):.2f} s, "
          f"max {max(r[1] for r in runs):.2f} s")
