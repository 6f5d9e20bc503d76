"""SCPI round-trip latency through a driver, over loopback to an emulated instrument.

A factory station reads hundreds of values per module, so the cost of one query bounds the
cycle time; the target is a median <= 0.3 ms for a query. Measured through the product path:
driver -> pyvisa -> pyvisa-py -> TCP loopback -> emulated N5700 -> twin (under the bench lock).

1. query: ``MEAS:VOLT?`` (``measure_voltage``), one round trip.
2. checked write: ``VOLT 14`` then ``SYST:ERR?`` (``set_voltage``), one send and one round trip.
3. scan: ``MEAS:VOLT:DC? (@101:108)`` on the DAQ970A, eight readings in one round trip.

Benchmarks report, they do not assert (shared machines are noisy). Run:
``python benchmarks/bench_scpi.py [repeats]``; prints JSON (milliseconds).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Callable

from emulator.bench import EmulatedBench
from emulator.endpoints import start_scpi_endpoints, stop_scpi_endpoints
from emulator.twin import build_twin
from instruments.drivers import get_driver


def latency_ms(call: Callable[[], object], repeats: int, warmup: int = 200) -> dict[str, float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    return {"median_ms": round(statistics.median(samples), 4),
            "p95_ms": round(samples[int(0.95 * (len(samples) - 1))], 4),
            "p99_ms": round(samples[int(0.99 * (len(samples) - 1))], 4),
            "n": repeats}


def main(repeats: int = 5000) -> dict[str, object]:
    bench = EmulatedBench(build_twin("1s4p_diagonal"))
    endpoints = start_scpi_endpoints(bench)
    supply = get_driver("keysight_n5700")(endpoints["supply"][1], "supply",
                                          {"voltage_v": 60.0, "current_a": 120.0}, 2.0)
    scanner = get_driver("keysight_daq970a")(endpoints["scanner"][1], "scanner", None, 2.0)
    try:
        result = {
            "query MEAS:VOLT?": latency_ms(supply.measure_voltage, repeats),
            "checked write VOLT + SYST:ERR?": latency_ms(lambda: supply.set_voltage(14.0), repeats),
            "scan 8 channels": latency_ms(lambda: scanner.voltages(list(range(101, 109))), repeats // 5),
            "target": "query median <= 0.3 ms",
        }
    finally:
        supply.close()
        scanner.close()
        stop_scpi_endpoints(endpoints)
    return result


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000), indent=2))
