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
                     "--seed", "--reports"}
OUR_FLAGS = {"--debug", "-h", "--help"}
# pytest options that take a separate value: their value must not be taken for the plan
PYTEST_VALUE_OPTIONS = {"-k", "-m", "-p", "-c", "-o", "-W", "-r", "--maxfail", "--deselect",
                        "--ignore", "--tb", "--durations", "--junitxml", "--alluredir",
                        "--log-level", "--basetemp", "--rootdir", "--confcutdir"}


def split_argv(tokens: list[str]) -> tuple[list[str], list[str]]:
    """Separate ``hil run``'s own arguments from pytest's, so ``-k EXPR`` never becomes the plan."""
    ours: list[str] = []
    extra: list[str] = []
    plan_seen = False
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
        elif name in PYTEST_VALUE_OPTIONS:
            extra.append(token)
            if "=" not in token and k + 1 < len(tokens):
                extra.append(tokens[k + 1])
                k += 1
        elif token.startswith("-"):
            extra.append(token)
        elif not plan_seen:
            ours.append(token)
            plan_seen = True
        else:
            extra.append(token)
        k += 1
    return ours, extra


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


def new_run_dir(reports: Path) -> tuple[str, Path]:
    """A fresh run id and its folder, reports/runs/<UTC time>-<id[:8]>/: each run's Allure
    results stay apart, so a report shows one run and history links runs together."""
    run_uuid = str(uuid.uuid4())
    return run_uuid, reports / "runs" / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{run_uuid[:8]}"


def pytest_args(args: argparse.Namespace, extra: list[str]) -> list[str]:
    reports = Path(args.reports).resolve()
    run_uuid, run_dir = new_run_dir(reports)
    out = [str(STEPS_MODULE), "--plan", args.plan, "-p", "no:randomly",
           f"--junitxml={run_dir / 'junit.xml'}", f"--alluredir={run_dir / 'allure-results'}",
           "--run-uuid", run_uuid, "--run-dir", str(run_dir),
           "--rootdir", str(REPO), "-v", "-rfE", ]
    for option in ("station", "dut", "serial", "operator", "scenario", "results", "seed"):
        value = getattr(args, option)
        if value is not None:
            out += [f"--{option}", str(value)]
    return out + list(extra)


def run(args: argparse.Namespace, extra: list[str] | None = None) -> int:
    import pytest

    os.chdir(REPO)
    code = int(pytest.main(pytest_args(args, extra or [])))
    if code == pytest.ExitCode.INTERRUPTED:
        return 130
    if code in (pytest.ExitCode.USAGE_ERROR, pytest.ExitCode.NO_TESTS_COLLECTED):
        return 2
    return 0 if code == pytest.ExitCode.OK else 1
