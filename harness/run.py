"""``hil run``: a thin wrapper around pytest with the plan, station and DUT options.

Every option pytest knows passes through (``-k``, ``-m``, ``-x``, ``--lf`` ...). Each run gets
its folder reports/runs/<time>-<id>/ (allure-results, JUnit XML, plots with their CSV, the CAN
log, the one-page summary); the result store (reports/results.sqlite) holds every run. Exit status: 0 pass, 1 fail, 2 bad
input (a file that does not validate, before anything is energised), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REPORTS = REPO / "reports"
STEPS_MODULE = REPO / "test_plans" / "test_plan_steps.py"


OUR_VALUE_OPTIONS = {"--station", "--dut", "--serial", "--operator", "--scenario", "--results",
                     "--seed", "--reports", "--bms-profile", "--run-uuid"}
OUR_FLAGS = {"--debug", "-h", "--help"}


def _pytest_parser():  # type: ignore[no-untyped-def]
    """pytest's own option parser with the options of every installed plugin a run loads
    (allure ...) and the harness plugin's: it alone knows which of its options take a value.
    The plugins a run leaves out (:data:`PLUGINS_NOT_IN_A_RUN`) are left out here too: their
    options mean nothing to a run, and importing them cost every ``hil run`` ~0.3 s."""
    from _pytest.config import get_config

    config = get_config()
    for name in PLUGINS_NOT_IN_A_RUN:
        config.pluginmanager.set_blocked(name)
    config.pluginmanager.load_setuptools_entrypoints("pytest11")
    if not config.pluginmanager.has_plugin("harness.plugin"):
        config.pluginmanager.import_plugin("harness.plugin")
    return config._parser


def split_argv(tokens: list[str]) -> tuple[list[str], list[str]]:
    """Separate ``hil run``'s own arguments from pytest's.

    The plan is the first positional argument *as pytest parses the line* (so ``--log-file
    x.log``, ``-n 2`` or ``-k EXPR`` never become the plan); ``hil run``'s options are taken
    out first, everything else goes to pytest untouched.
    """
    ours: list[str] = []
    rest: list[str] = []
    k = 0
    while k < len(tokens):
        token = tokens[k]
        name = token.split("=", 1)[0]
        if name in OUR_VALUE_OPTIONS:
            ours.append(token)
            if "=" not in token and k + 1 < len(tokens):
                ours.append(tokens[k + 1])
                k += 1
        elif name in OUR_FLAGS:
            ours.append(token)
        else:
            rest.append(token)
        k += 1
    if any(token.startswith("-") for token in rest):
        namespace, _unknown = _pytest_parser().parse_known_and_unknown_args(list(rest))
        positionals = list(getattr(namespace, "file_or_dir", None) or [])
    else:  # no pytest option: nothing can take a value, every token is positional
        positionals = list(rest)
    if positionals:
        plan = positionals[0]
        index = rest.index(plan)
        ours.append(plan)
        del rest[index]
    return ours, rest


def _uuid_text(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a UUID") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("plan", nargs="?", default="bank_smoke",
                        help="plan file or stem in test_plans/ (default: bank_smoke)")
    parser.add_argument("--station", default=None, help="station file (default: the emulated station)")
    parser.add_argument("--dut", default=None, help="DUT file or stem (default: the station's)")
    parser.add_argument("--serial", default=None, help="DUT serial number")
    parser.add_argument("--operator", default=None)
    parser.add_argument("--scenario", default=None, help="twin fault scenario (emulated stations only)")
    parser.add_argument("--results", default=None, help="result store URL")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--reports", default=str(REPORTS), help="output folder (default: reports/)")
    parser.add_argument("--run-uuid", default=None, metavar="UUID", type=_uuid_text,
                        help="the run's id in the store (default: a new one); the end-of-line station "
                             "chooses it to follow the run as it goes")
    parser.add_argument("--bms-profile", default=None, metavar="NAME",
                        help="BMS profile of the station's CAN pack: a name in fixtures/bms_profiles/ or a "
                             "path (default: the station's bms.can.profile, else bankhil_full); an "
                             "emulated BMS plays it")


def new_run_dir(reports: Path, run_uuid: str | None = None) -> tuple[str, Path]:
    """A run id (fresh unless the caller chose one) and its folder, reports/runs/<UTC
    time>-<id[:8]>/: each run's Allure results stay apart, so a report shows one run and
    history links runs together."""
    run_uuid = str(uuid.UUID(run_uuid)) if run_uuid else str(uuid.uuid4())
    return run_uuid, reports / "runs" / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{run_uuid[:8]}"


# Plugins installed for the project's own test suite (or by a dependency) that a plan run has no
# use for: each costs start-up time (hypothesis alone ~1 s of imports, rewritten; anyio's, which
# the panel's FastAPI brings along, imports trio: ~0.6 s), and the unraisable-exception plugin
# collects garbage harder after every test (~5 % of a bank qualification). A random order would
# shuffle the plan's steps.
PLUGINS_NOT_IN_A_RUN = ("randomly", "hypothesispytest", "benchmark", "xdist", "xdist.looponfail",
                        "unraisableexception", "anyio")
NOT_IN_A_RUN = [arg for name in PLUGINS_NOT_IN_A_RUN for arg in ("-p", f"no:{name}")]


def pytest_args(args: argparse.Namespace, extra: list[str]) -> list[str]:
    reports = Path(args.reports).resolve()
    run_uuid, run_dir = new_run_dir(reports, getattr(args, "run_uuid", None))
    # split_argv imported the plugins to read pytest's options: they cannot be rewritten again
    out = [str(STEPS_MODULE), "--plan", args.plan, *NOT_IN_A_RUN,
           "-W", "ignore::pytest.PytestAssertRewriteWarning",
           *(["--tb=long"] if getattr(args, "debug", False) else []),
           f"--junitxml={run_dir / 'junit.xml'}", f"--alluredir={run_dir / 'allure-results'}",
           "--run-uuid", run_uuid, "--run-dir", str(run_dir),
           "--rootdir", str(REPO), "-v", "-rfE", ]
    for option in ("station", "dut", "serial", "operator", "scenario", "results", "seed"):
        value = getattr(args, option)
        if value is not None:
            out += [f"--{option}", str(value)]
    if getattr(args, "bms_profile", None) is not None:
        out += ["--bms-profile", str(args.bms_profile)]
    return out + list(extra)


class _RunVerdict:
    """A pytest plugin object that keeps the run's verdict when the session ends."""

    def __init__(self) -> None:
        self.verdict: str | None = None

    def pytest_unconfigure(self, config: object) -> None:
        ctx = getattr(config, "_bankhil", None)
        if ctx is not None:
            self.verdict = ctx.run_verdict or ("aborted" if ctx.aborted else None)


def run(args: argparse.Namespace, extra: list[str] | None = None) -> int:
    """Exit status from the run's verdict: 0 PASS, 1 FAIL, 3 ERROR, 4 RECORDED, 130 ABORTED;
    2 for a bad file or command line (nothing energised)."""
    import pytest

    from harness.plugin import EXIT_BY_VERDICT

    os.chdir(REPO)
    outcome = _RunVerdict()
    code = int(pytest.main(pytest_args(args, extra or []), plugins=[outcome]))
    if code == pytest.ExitCode.INTERRUPTED:
        return 130
    if code in (pytest.ExitCode.USAGE_ERROR, pytest.ExitCode.NO_TESTS_COLLECTED):
        return 2
    if outcome.verdict is not None:
        return EXIT_BY_VERDICT[outcome.verdict]
    return 0 if code == pytest.ExitCode.OK else 3
