"""``hil station``: the end-of-line loop on one station file and one plan.

Serials come from standard input (``--panel`` also opens the operator page on 127.0.0.1) or
from a scripted shift (``--shift``). Ctrl-C, SIGTERM, ``quit`` or the end of input end the loop;
running units are interrupted and their benches made safe by their own runs. Exit status: 0
when the loop ended normally, 2 for a bad file, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from harness.run import REPORTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("plan", nargs="?", default="eol_module", help="plan file or stem (default: eol_module)")
    parser.add_argument("--station", default="eol_emulated",
                        help="station file with an eol: section (default: the emulated EOL station)")
    parser.add_argument("--results", default=None, help="result store URL (default: reports/results.sqlite)")
    parser.add_argument("--reports", default=str(REPORTS), help="output folder: runs, labels, MES spool, logs")
    parser.add_argument("--operator", default="operator")
    parser.add_argument("--panel", action="store_true", help="serve the operator panel on 127.0.0.1")
    parser.add_argument("--panel-port", type=int, default=0, help="the panel's port (default: a free one)")
    parser.add_argument("--shift", default=None, metavar="FILE",
                        help="a scripted shift (fixtures/shifts/): scans without a person (emulated stations)")
    parser.add_argument("--quiet", action="store_true", help="only verdicts, refusals and the lock")


def command(args: argparse.Namespace) -> int:
    from harness.plugin import REPO, _resolve
    from harness.production.console import ConsoleView, read_serials
    from harness.production.setup import open_station
    from harness.production.shift import load_shift, run_shift, unit_args_for

    reports = Path(args.reports)
    results = args.results or f"sqlite:///{(reports / 'results.sqlite').resolve()}"
    shift = load_shift(_resolve(args.shift, REPO / "fixtures" / "shifts")) if args.shift else None
    opened = open_station(args.station, args.plan, results=results, reports=reports, operator=args.operator,
                          unit_args=unit_args_for(shift) if shift is not None else None)
    station = opened.station
    view = ConsoleView(verbose=not args.quiet)
    station.subscribe(view)
    panel = None
    if args.panel:
        from harness.production.panel import PanelServer
        panel = PanelServer(station, port=args.panel_port)
        view.console.print(f"operator panel: {panel.start()}")
    snapshot = station.snapshot()
    view.console.print(f"{snapshot.station}: plan {snapshot.plan} v{snapshot.plan_version}, sockets "
                       f"{', '.join(s.name for s in snapshot.sockets)}; serial pattern {snapshot.serial_pattern}")
    if snapshot.lock.locked:
        view.console.print(f"[bold red]station locked:[/] {snapshot.lock.reason}  (type 'unlock: REASON')")
    try:
        if shift is not None:
            log = run_shift(station, shift)
            summary = _summary(station)
            view.console.print(f"shift '{shift.name}': {len(station.results)} attempts in {log.wall_s:.1f} s; "
                               f"{summary}; {log.unlocks} unlock(s)")
        else:
            reader = threading.Thread(target=read_serials, args=(station, sys.stdin, args.operator, view.console),
                                      daemon=True)
            reader.start()
            # without a panel the input is the loop; with one, the panel's "End shift" (or Ctrl-C)
            while not station.stopped and (reader.is_alive() or panel is not None):
                reader.join(0.2)
            station.wait_idle()
        station.stop("end of input" if shift is None else "end of shift")
        return 0
    except KeyboardInterrupt:
        station.stop("interrupted (Ctrl-C)")
        return 130
    finally:
        if panel is not None:
            panel.stop()
        opened.close()


def _summary(station: object) -> str:
    counts: dict[str, int] = {}
    for result in station.results:  # type: ignore[attr-defined]
        counts[result.verdict] = counts.get(result.verdict, 0) + 1
    return ", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items()))
