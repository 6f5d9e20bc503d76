"""Wall time of a whole emulated plan run, and the bench time it stands for (reported, not asserted).

Runs ``hil run bank_qualification_4s4p --dut 4s4p`` (or the plan/DUT given) in a subprocess, with
its own result store and reports folder, and prints JSON: wall seconds of the whole command
(start-up included), and the bench time from the run's closing line.

    python benchmarks/bench_plan.py [PLAN] [DUT]
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    plan = sys.argv[1] if len(sys.argv) > 1 else "bank_qualification_4s4p"
    dut = sys.argv[2] if len(sys.argv) > 2 else "4s4p"
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "harness.cli", "run", plan, "--dut", dut,
                                 "--results", f"sqlite:///{tmp}/results.sqlite", "--reports", tmp],
                                cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - start
    match = re.search(r"bench time ([\d.]+) h \((\d+) s\) in ([\d.]+) s wall", result.stdout)
    print(json.dumps({
        "plan": plan, "dut": dut, "exit": result.returncode,
        "wall_s_command": round(wall, 1),
        "wall_s_session": float(match.group(3)) if match else None,
        "bench_h": float(match.group(1)) if match else None,
        "bench_per_wall": round(int(match.group(2)) / wall) if match else None,
    }, indent=2))


if __name__ == "__main__":
    main()
