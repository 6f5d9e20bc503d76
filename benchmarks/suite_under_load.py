"""The whole suite, several times in a row, with every core kept busy by a bounded CPU burner.

Why: virtual time used to lean on wall-clock slack (frames in flight, keep-alives late), and the
suite was flaky on a loaded host. Advancing the emulated bench is now a barrier over the real
sockets (harness/emulated.py), so a busy machine may only make the suite slower, never red.

The burners are separate processes that spin for at most ``--burn-s`` seconds each (they also
stop themselves with SIGALRM, and are killed in ``finally``): nothing is left running.

    python benchmarks/suite_under_load.py --runs 5 --burners 2 -- -n 3 --dist loadgroup

prints one JSON line per run and a summary: passed runs, wall seconds.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _burn(seconds: float) -> None:
    signal.alarm(int(seconds) + 1)  # the burner ends itself even if its parent dies
    deadline = time.monotonic() + seconds
    x = 0
    while time.monotonic() < deadline:
        x = (x * 1103515245 + 12345) % 2**31


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--burners", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--burn-s", type=float, default=3600.0, help="upper bound of each burner's life")
    parser.add_argument("pytest_args", nargs="*", help="after --: extra pytest arguments (e.g. -n 3 --dist loadgroup)")
    args = parser.parse_args(argv)
    burners = [multiprocessing.Process(target=_burn, args=(args.burn_s,), daemon=True)
               for _ in range(args.burners)]
    results = []
    try:
        for burner in burners:
            burner.start()
        for k in range(1, args.runs + 1):
            started = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", *args.pytest_args],
                                  cwd=REPO, capture_output=True, text=True)
            tail = proc.stdout.strip().splitlines()[-1:] or [""]
            result = {"run": k, "exit": proc.returncode, "wall_s": round(time.monotonic() - started, 1),
                      "summary": tail[0], "burners": args.burners}
            results.append(result)
            print(json.dumps(result), flush=True)
            if proc.returncode != 0:
                print(proc.stdout[-6000:], file=sys.stderr)
    finally:
        for burner in burners:
            burner.kill()
            burner.join(timeout=5)
    green = sum(r["exit"] == 0 for r in results)
    print(json.dumps({"green_runs": green, "runs": len(results),
                      "wall_s": [r["wall_s"] for r in results]}), flush=True)
    return 0 if green == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
