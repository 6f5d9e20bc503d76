"""Twin speed benchmarks (not tests: shared machines are noisy, so we report, not assert).

1. Simulated seconds per wall second for a 4S4P bank at 0.5C (200 A) with 1 s steps.
2. Wall time of a 100 ms parallel-inrush transient at 10 us resolution (1S4P, 0.2 V mismatch).
3. Wall time of a series-string FET opening, 10 ms at 1 us resolution (4S1P, 100 A).
4. First call: seconds for a fresh process to import the twin, build one and run it for a
   second of bench time -- with an empty numba cache (cold: the kernels compile, once per
   machine and source change) and with the cache that run filled (warm: every later process).

Figures 1-3 are medians of several repeats (after a warm-up, so compilation is not counted).
Run:  python benchmarks/bench_twin.py   (--no-compile skips figure 4, ~15 s)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


_FIRST_CALL = """
import time
start = time.perf_counter()
from emulator.twin import build_twin
twin = build_twin("1s1p")
twin.set_load(50.0)
twin.load_input(True)
twin.advance(1.0)
print(time.perf_counter() - start)
"""


def first_call() -> dict[str, float]:
    """Import + build + one second of bench time in a fresh process, cold and warm cache."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        seconds = []
        for _ in range(2):  # the first run fills the empty cache, the second loads from it
            done = subprocess.run([sys.executable, "-c", _FIRST_CALL], cwd=root, env=env,
                                  capture_output=True, text=True, check=True)
            seconds.append(float(done.stdout.split()[-1]))
    return {"cold_cache_s": round(seconds[0], 2), "warm_cache_s": round(seconds[1], 2)}


def main() -> None:
    build_twin("1s1p").advance(1.0)  # compile (or load) the kernels before timing anything
    results = {"steady_4s4p_0.5C_1s_steps": steady_4s4p(),
               "inrush_100ms_at_10us": inrush_1s4p(),
               "series_fet_open_10ms_at_1us": series_fet_open()}
    if "--no-compile" not in sys.argv[1:]:
        results["first_call_1s1p"] = first_call()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
