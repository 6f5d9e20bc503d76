"""Units per hour and takt time of the end-of-line station on the emulated bench (reported, not
asserted): N good units of eol_module through ``hil station``'s loop on one socket
(fixtures/stations/eol_emulated.yaml) and on four (eol_emulated_4.yaml).

Takt is scan to verdict per unit (what the operator waits); units per hour is units over the
shift's wall time. Each unit is a ``hil run`` process with its own twin, so the figure includes
validation and emulator start -- what a unit costs on this machine; ``--cold`` also measures each
unit started as a new interpreter (harness/production/launcher.py's ColdLauncher, how the
station started units before the warm process), for the before/after ratio. The machine has 2
cores: four sockets share them (stated with the figures).

    python benchmarks/bench_station.py [--units 12] [--cold]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def one_shift(station_file: str, units: int, folder: Path, cold: bool = False) -> dict[str, object]:
    from harness.production.launcher import ColdLauncher
    from harness.production.setup import open_station
    from harness.production.shift import ShiftFile, run_shift

    shift = ShiftFile.model_validate({"name": "bench", "scans": [{"serial": f"BH12-B0001-{k:03d}"}
                                                                 for k in range(500, 500 + units)]})
    opened = open_station(station_file, "eol_module", results=f"sqlite:///{folder / 'results.sqlite'}",
                          reports=folder / "reports", operator="bench",
                          launcher=ColdLauncher() if cold else None)
    try:
        log = run_shift(opened.station, shift, timeout_s=3600)
    finally:
        opened.close()
    results = opened.station.results
    takts = [r.takt_s for r in results]
    return {"station": station_file, "start": "cold" if cold else "warm", "sockets": len(opened.station.snapshot().sockets), "units": len(results),
            "all_pass": all(r.verdict == "PASS" for r in results), "wall_s": round(log.wall_s, 1),
            "units_per_hour": round(len(results) / log.wall_s * 3600.0),
            "takt_median_s": round(statistics.median(takts), 2), "takt_max_s": round(max(takts), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=12)
    parser.add_argument("--cold", action="store_true", help="also with each unit a new interpreter")
    args = parser.parse_args(argv)
    out = {"cores": os.cpu_count(), "runs": []}
    for cold in ([False, True] if args.cold else [False]):
        for station in ("eol_emulated", "eol_emulated_4"):
            with tempfile.TemporaryDirectory() as tmp:
                out["runs"].append(one_shift(station, args.units, Path(tmp), cold))
    one, four = out["runs"][:2]
    out["throughput_ratio_4_to_1"] = round(four["units_per_hour"] / one["units_per_hour"], 2)
    if args.cold:
        out["takt_ratio_warm_to_cold"] = [round(w["takt_median_s"] / c["takt_median_s"], 2)
                                          for w, c in zip(out["runs"][:2], out["runs"][2:])]
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
