"""Wall time of a whole emulated plan run, and the bench time it stands for (reported, not asserted).

Runs ``hil run bank_qualification_4s4p --dut 4s4p`` (or the plan/DUT given) ``--runs`` times (3 by
default), each in a subprocess with its own result store and reports folder, and prints JSON with,
per run and as the median over the runs:

- ``wall_s_command``: wall seconds of the whole command (interpreter start-up and imports included);
- ``wall_s_session``: the session's own wall seconds, from its closing line
  (``bench time 3.1 h in 27.4 s wall (407x)``), and ``bench_s``, the bench time printed there (to
  its 0.1 h);
- ``cpu_s``: CPU seconds of the command (user + system, all threads), less sensitive than wall
  time to whatever else the shared machine is running;
- the verdict line and exit status (``all_passed``: every run PASS, every step run).

The machine is shared and noisy: compare medians of interleaved runs, never one run.

    python benchmarks/bench_plan.py [PLAN] [DUT] [--runs N] [--keep-output DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# the session's closing line (harness/plugin.py): "bench time 3.1 h in 27.4 s wall (407x)"
CLOSING = re.compile(r"bench time ([\d.]+) (s|min|h) in ([\d.]+) s wall \((\d+)x\)")
UNIT_S = {"s": 1.0, "min": 60.0, "h": 3600.0}
VERDICT = re.compile(r"^(PASS|FAIL|ERROR|ABORTED|INCOMPLETE)\s+\((\d+) pass\b.*? of (\d+) steps", re.MULTILINE)


def one_run(plan: str, dut: str, keep: Path | None = None) -> dict[str, Any]:
    """One ``hil run`` in a subprocess: its wall time and what its closing lines say."""
    with tempfile.TemporaryDirectory() as tmp:
        out = keep or Path(tmp)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "harness.cli", "run", plan, "--dut", dut,
                                 "--results", f"sqlite:///{out}/results.sqlite", "--reports", str(out)],
                                cwd=REPO, capture_output=True, text=True, env=os.environ.copy())
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    closing = CLOSING.search(result.stdout)
    verdict = VERDICT.search(result.stdout)
    return {
        "exit": result.returncode,
        "verdict": verdict.group(1) if verdict else None,
        "steps_passed": int(verdict.group(2)) if verdict else None,
        "steps": int(verdict.group(3)) if verdict else None,
        "wall_s_command": round(wall, 2),
        "wall_s_session": float(closing.group(3)) if closing else None,
        "cpu_s": round(cpu, 2),
        "bench_s": round(float(closing.group(1)) * UNIT_S[closing.group(2)]) if closing else None,
        "closing_line": closing.group(0) if closing else None,
    }


def _median(values: list[Any]) -> float | None:
    numbers = [v for v in values if isinstance(v, (int, float))]
    return round(statistics.median(numbers), 2) if numbers else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("plan", nargs="?", default="bank_qualification_4s4p")
    parser.add_argument("dut", nargs="?", default="4s4p")
    parser.add_argument("--runs", type=int, default=3, help="runs to take the median of (default 3)")
    parser.add_argument("--keep-output", type=Path, default=None,
                        help="write each run's store and reports under this folder (run-1, run-2, ...)")
    args = parser.parse_args(argv)
    runs = []
    for k in range(max(args.runs, 1)):
        keep = None
        if args.keep_output is not None:
            keep = (args.keep_output / f"run-{k + 1}").resolve()
            keep.mkdir(parents=True, exist_ok=True)
        runs.append(one_run(args.plan, args.dut, keep))
    wall = _median([r["wall_s_command"] for r in runs])
    bench_s = _median([r["bench_s"] for r in runs])
    print(json.dumps({
        "plan": args.plan, "dut": args.dut, "runs": len(runs),
        "all_passed": all(r["exit"] == 0 and r["verdict"] == "PASS" and r["steps_passed"] == r["steps"]
                          for r in runs),
        "median_wall_s_command": wall,
        "median_wall_s_session": _median([r["wall_s_session"] for r in runs]),
        "median_cpu_s": _median([r["cpu_s"] for r in runs]),
        "median_bench_s": bench_s,
        "bench_per_wall": round(bench_s / wall) if wall and bench_s else None,
        "each": runs,
    }, indent=2))
    return 0 if all(r["exit"] == 0 for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
