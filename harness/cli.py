"""The ``hil`` command: parse the top-level command line and dispatch to a subcommand.

Each subcommand lives with the code it drives and contributes two functions: one that adds its
options to an argparse sub-parser and one that runs it from the parsed arguments and returns an
exit status. This module only wires them up and turns failures into one line on stderr:

- a bad input file (``bankmodel.files.FileError``): ``file:line: field: found ...; allowed: ...``,
  exit status 2;
- any other error: ``hil: error: ...``, exit status 1;
- Ctrl-C: exit status 130.

No traceback reaches the user unless ``--debug`` is given.

Subcommands: ``run`` (a plan on a station; ``hil`` alone runs the default plan), ``simulate``
(a bench program on the twin), ``emulate`` (serve the twin), ``report`` (a run's Allure report
and summary page), ``compare`` (two runs, regressions first).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Callable, Sequence

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM (and SIGINT) anywhere in ``hil`` -- while importing, assembling, after a run's
    teardown -- unwinds as KeyboardInterrupt, so every interrupt ends with exit status 130 and no
    traceback. The run's own safety supervisor takes over while a bench is assembled."""
    raise KeyboardInterrupt(signal.Signals(signum).name)

Handler = Callable[[argparse.Namespace], int]


def _add_simulate(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser,
                  full: bool = True) -> None:
    parser = subparsers.add_parser(
        "simulate", parents=[common],
        help="run a bench program on the emulated bank and print what happened as JSON",
        description="Run a bench program (fixtures/programs/) on the twin of a DUT "
                    "(fixtures/duts/) with an optional fault scenario (fixtures/scenarios/); "
                    "print the final state, peaks, master BMS report and events as JSON.")
    if full:  # the twin is imported only when this command runs (harness/emulated.py)
        from harness import emulated
        emulated.add_simulate_arguments(parser)


def _add_emulate(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser,
                 full: bool = True) -> None:
    parser = subparsers.add_parser(
        "emulate", parents=[common],
        help="serve an emulated bench (SCPI, CAN, Modbus/SunSpec) on loopback until stopped",
        description="Start the twin of a DUT with emulated instruments and BMS buses on "
                    "127.0.0.1, print their endpoints, optionally write a station file pointing "
                    "at them, and follow wall time (times --speed) until Ctrl-C or SIGTERM.")
    if full:
        from harness import emulated
        emulated.add_emulate_arguments(parser)


def _add_run(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser,
            full: bool = True) -> None:
    parser = subparsers.add_parser(
        "run", parents=[common],
        help="run a test plan on a station (default: bank_smoke on the emulated station)",
        description="Run a plan (test_plans/) on a station (fixtures/stations/) through pytest. "
                    "Unknown options pass through to pytest (-k, -m, -x, --lf ...).")
    if full:
        from harness import run
        run.add_arguments(parser)
        parser.set_defaults(handler=run.run, passthrough=True)


def _add_report(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser,
               full: bool = True) -> None:
    parser = subparsers.add_parser(
        "report", parents=[common],
        help="render a run's Allure report (one HTML file) and its one-page summary",
        description="Render the Allure 3 HTML report of a run (default: the last one) from its "
                    "allure-results, with history from the earlier reports, and write the run's "
                    "one-page qualification summary; print both paths. Needs Node.js and `npm ci`.")
    if full:
        from harness.reporting import render
        render.add_arguments(parser)
        parser.set_defaults(handler=render.command)


def _add_compare(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser,
                full: bool = True) -> None:
    parser = subparsers.add_parser(
        "compare", parents=[common],
        help="compare two runs step by step and measurement by measurement, regressions first",
        description="Compare run B against run A (e.g. a candidate firmware against the released "
                    "one): verdicts and values per step and measurement, regressions first; write "
                    "CSV, JSON and HTML to reports/compare/ and attach the comparison to Allure. "
                    "Exit 1 when B regresses.")
    if full:
        from harness.reporting import compare
        compare.add_arguments(parser)
        parser.set_defaults(handler=compare.command)


def _add_station(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser,
                full: bool = True) -> None:
    parser = subparsers.add_parser(
        "station", parents=[common],
        help="the end-of-line loop: scan a unit, test it, label it, store it, next (default: eol_module)",
        description="Run one plan on one unit after another: serials from standard input (a barcode "
                    "scanner), the operator panel (--panel) or a scripted shift (--shift); retest "
                    "policy, station lock, labels and MES hand-off from the station file's eol: section.")
    if full:
        from harness.production import command
        command.add_arguments(parser)
        parser.set_defaults(handler=command.command)


# name -> function adding the subcommand
SUBCOMMANDS: dict[str, Callable[..., None]] = {
    "simulate": _add_simulate,
    "emulate": _add_emulate,
    "run": _add_run,
    "report": _add_report,
    "compare": _add_compare,
    "station": _add_station,
}


# commands that start the twin: their options (and the emulator) are loaded only when one runs,
# so a hardware ``hil run`` never imports the emulator. Every other command's module is loaded
# when it runs or when help lists them all: a `hil run` does not import the report renderer,
# the comparison or the station loop (a refused plan: 0.60 s, was 0.87 s).
_EMULATOR_COMMANDS = ("simulate", "emulate")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``hil`` parser; ``command`` is the subcommand about to run (None: all, for help)."""
    # --debug is accepted before and after the subcommand; SUPPRESS keeps the sub-parser's
    # default from overwriting a top-level --debug.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback on an error")
    parser = argparse.ArgumentParser(
        prog="hil", parents=[common],
        description="Hardware-in-the-loop tests for LiFePO4 modules and banks, on a bench or "
                    "on the emulated twin.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, add in SUBCOMMANDS.items():
        if name in _EMULATOR_COMMANDS:
            add(subparsers, common, full=(name == command))  # type: ignore[call-arg]
        else:
            add(subparsers, common, full=command is None or name == command)  # type: ignore[call-arg]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if threading_main():
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, _interrupt)
    try:
        return _main(argv)
    except KeyboardInterrupt:
        if "--debug" in (argv if argv is not None else sys.argv[1:]):
            raise
        print("hil: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def threading_main() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _main(argv: Sequence[str] | None = None) -> int:
    from harness.emulated import single_threaded_blas
    single_threaded_blas()  # before numpy is first imported
    from bankmodel.files import FileError

    argv = list(argv) if argv is not None else sys.argv[1:]
    if not argv:
        argv = ["run"]  # `hil` alone: the default plan on the embedded emulated station
    parser = build_parser(next((token for token in argv if not token.startswith("-")), None))
    run_index = next((k for k, token in enumerate(argv) if not token.startswith("-")), None)
    if run_index is not None and argv[run_index] == "run":
        from harness.run import split_argv
        ours, extra = split_argv(argv[run_index + 1:])
        args = parser.parse_args(argv[:run_index + 1] + ours)
    else:
        args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    debug = getattr(args, "debug", False)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_OK
    try:
        if getattr(args, "passthrough", False):
            return int(handler(args, extra) or 0)
        return int(handler(args) or 0)
    except FileError as err:
        if debug:
            raise
        print(str(err), file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        if debug:
            raise
        print("hil: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (hil simulate ... | head): stop quietly, and keep Python's
        # final flush of stdout from raising again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - the user gets one line, --debug the traceback
        if debug:
            raise
        text = str(exc) or exc.__class__.__name__
        print(f"hil: error: {exc.__class__.__name__}: {text} (run with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
