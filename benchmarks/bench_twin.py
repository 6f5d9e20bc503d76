"""Twin speed benchmarks (not tests: shared machines are noisy, so we report, not assert).

1. Simulated seconds per wall second for a 4S4P bank at 0.5C (200 A) with 1 s steps.
2. Wall time of a 100 ms parallel-inrush transient at 10 us resolution (1S4P, 0.2 V mismatch).
3. Wall time of a series-string FET opening, 10 ms at 1 us resolution (4S1P, 100 A).

Each figure is the median of several repeats. Run:  python benchmarks/bench_twin.py
"""

from __future__ import annotations

import json
import statistics
import time

from emulator.twin import build_twin


def _median_of(repeats: int, run) -> float:  # type: ignore[no-untyped-def]
    return statistics.median(run() for _ in range(repeats))


def steady_4s4p(sim_seconds: float = 3600.0) -> dict[str, float]:
    def run() -> float:
        twin = build_twin("4s4p")
        twin.set_load(200.0)  # 0.5C of a 400 Ah bank
        twin.load_input(True)
        twin.advance(30.0)  # past the switch-on transient, steps grown to 1 s
        start = time.perf_counter()
        twin.advance(sim_seconds, max_step=1.0)
        return time.perf_counter() - start
    wall = _median_of(3, run)
    return {"sim_s": sim_seconds, "wall_s": round(wall, 3),
            "sim_per_wall": round(sim_seconds / wall), "us_per_step": round(wall / sim_seconds * 1e6, 1)}


def inrush_1s4p() -> dict[str, float]:
    def run() -> float:
        twin = build_twin("1s4p_diagonal")
        twin.set_contactor("s1p4", False)
        twin.set_module_soc("s1p4", 95.0)  # ~0.2 V above its 50 % peers
        twin.advance(1.0)
        twin.set_contactor("s1p4", True)
        start = time.perf_counter()
        twin.advance(0.1, max_step=10e-6)
        return time.perf_counter() - start
    return {"transient_s": 0.1, "resolution_us": 10, "wall_s": round(_median_of(5, run), 3)}


def series_fet_open() -> dict[str, float]:
    def run() -> float:
        twin = build_twin("4s1p")
        twin.set_load(100.0)
        twin.load_input(True)
        twin.advance(5.0)
        twin.bms_force_off("s2p1")
        start = time.perf_counter()
        twin.advance(0.01, max_step=1e-6)
        return time.perf_counter() - start
    return {"transient_s": 0.01, "resolution_us": 1, "wall_s": round(_median_of(5, run), 3)}


def main() -> None:
    results = {"steady_4s4p_0.5C_1s_steps": steady_4s4p(),
               "inrush_100ms_at_10us": inrush_1s4p(),
               "series_fet_open_10ms_at_1us": series_fet_open()}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
