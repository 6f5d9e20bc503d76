"""``hil report [RUN]``: the Allure HTML report of a run, and its one-page summary.

The report generator is Allure 3, the npm package ``allure`` pinned in package.json (installed by
``npm ci`` in the repository). It reads the run's allure-results (labels, measurements as steps
and parameters, plots and CSV, the CAN log, environment, categories, executor) and writes one
self-contained ``index.html`` (``--multi-file`` for the usual folder). Each report adds its run to
``reports/allure-history.jsonl``, so the next report shows trends and what changed since.

Without Node.js nothing crashes: the message says what to install, and the summary page (made
from the result store alone) is still written.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.reporting.environment import CATEGORIES
from harness.reporting.runs import DEFAULT_RESULTS, REPO, RunNotFound, resolve_run
from harness.reporting.summary import summary_path, write_summary
from harness.store import ResultStore, RunRecord

ALLURE_CLI = REPO / "node_modules" / "allure" / "cli.js"
NODE_HINT = ("hil report: Node.js is needed to draw the Allure report (Allure 3 is an npm package). "
             "Install Node.js >= 20 (Debian: apt-get install nodejs npm), then run `npm ci` in "
             f"{REPO}.")
NPM_HINT = f"hil report: the Allure generator is not installed: run `npm ci` in {REPO}."


class ReportToolMissing(RuntimeError):
    """Node.js or the allure npm package is not there: a set-up step, not a bug."""


@dataclass
class Rendered:
    run: RunRecord
    report: Path | None  # None: Node.js or the allure package is missing (``missing`` says which)
    summary: Path
    missing: str = ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="?", default="last",
                        help="run number, run id (or unique prefix), 'last' or 'last~N' (default: last)")
    parser.add_argument("--results", default=None, help="result store URL (default: reports/results.sqlite)")
    parser.add_argument("--multi-file", action="store_true",
                        help="write the report as a folder of files instead of one index.html")
    parser.add_argument("--output", default=None, help="report folder (default: <run folder>/report)")
    parser.add_argument("--pdf", action="store_true",
                        help="also print the one-page summary to PDF (A4, headless Chromium)")


def allure_command() -> list[str]:
    """``node .../allure/cli.js``, or an explanation of what is missing."""
    node = shutil.which("node")
    if node is None:
        raise ReportToolMissing(NODE_HINT)
    cli = Path(os.environ.get("BANKHIL_ALLURE_CLI", ALLURE_CLI))
    if not cli.is_file():
        raise ReportToolMissing(NPM_HINT)
    return [node, str(cli)]


def allure_config(run: RunRecord, output: Path, history: Path, single_file: bool) -> dict:
    serial = ", ".join(run.serials) or "?"
    return {
        "name": f"{run.plan_name} {run.plan_version or ''} — {serial} — {(run.verdict or 'unfinished').upper()}",
        "output": str(output),
        "historyPath": str(history),
        "categories": {"rules": CATEGORIES},
        "plugins": {"awesome": {"options": {
            "singleFile": single_file, "reportLanguage": "en",
            "reportName": f"bankhil: {run.plan_name} on {serial}",
            "groupBy": ["epic", "feature", "story"]}}},
    }


def render(store: ResultStore, run: RunRecord, *, single_file: bool = True,
           output: Path | None = None, timeout_s: float = 300.0) -> Rendered:
    """Write the summary page, then the Allure report (``report`` None, ``missing`` the reason,
    without Node.js or the allure package)."""
    extra = run.extra or {}
    run_dir = Path(extra.get("run_dir") or REPO / "reports" / "runs" / run.uuid)
    summary = write_summary(store, run.id, summary_path(run_dir, (run.serials or ("dut",))[0]), run_dir)
    results = Path(extra.get("allure_dir") or run_dir / "allure-results")
    if not results.is_dir():
        raise FileNotFoundError(f"run {run.id} has no Allure results at {results} (was it run with "
                                f"`hil run`, or pytest without --alluredir?)")
    try:
        command = allure_command()
    except ReportToolMissing as missing:
        return Rendered(run, None, summary, str(missing))
    output = output or run_dir / "report"
    history = run_dir.parent.parent / "allure-history.jsonl"  # reports/allure-history.jsonl
    config = run_dir / "allurerc.json"
    config.write_text(json.dumps(allure_config(run, output, history, single_file), indent=2), encoding="utf-8")
    proc = subprocess.run([*command, "generate", "--config", str(config), str(results)], cwd=run_dir,
                          capture_output=True, text=True, timeout=timeout_s,
                          env={**os.environ, "NO_COLOR": "1", "ALLURE_NO_ANALYTICS": "true"})
    index = output / "index.html"
    if proc.returncode != 0 or not index.is_file():
        raise RuntimeError(f"allure generate failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
    without_analytics(index)
    return Rendered(run, index, summary)


# Allure 3's "awesome" page always embeds Google Analytics (its template has no switch; the
# other plugins read ALLURE_NO_ANALYTICS): a report opened on a factory PC or in a lab must not
# call out to the internet, so the tag and its set-up script are taken out of the page.
_ANALYTICS = (
    re.compile(r'<script async src="https://www\.googletagmanager\.com/[^"]*"></script>\s*'),  # pattern, not markup
    re.compile(r"<script>\s*window\.dataLayer = window\.dataLayer \|\| \[\];.*?</script>\s*",  # pattern, not markup
               re.S),
)


def without_analytics(index: Path) -> None:
    """Take the analytics tag out of a rendered report page (in place)."""
    text = index.read_text(encoding="utf-8")
    cleaned = text
    for pattern in _ANALYTICS:
        cleaned = pattern.sub("", cleaned)
    if cleaned != text:
        index.write_text(cleaned, encoding="utf-8")


def command(args: argparse.Namespace) -> int:
    store = ResultStore(args.results or DEFAULT_RESULTS)
    try:
        try:
            run = resolve_run(store, args.run)
        except RunNotFound as missing:
            print(f"hil report: {missing}", file=sys.stderr)
            return 2
        rendered = render(store, run, single_file=not args.multi_file,
                          output=Path(args.output).resolve() if args.output else None)
    finally:
        store.close()
    pdf_problem = None
    if getattr(args, "pdf", False):
        from harness.reporting.pdf import PdfToolMissing, print_pdf
        try:
            print(f"pdf:     {print_pdf(rendered.summary, rendered.summary.with_suffix('.pdf'))}")
        except (PdfToolMissing, RuntimeError, OSError) as exc:
            pdf_problem = str(exc)
            print(f"hil report: {exc}", file=sys.stderr)
    if rendered.report is None:
        print(rendered.missing, file=sys.stderr)
        print(f"summary: {rendered.summary}")
        return 1
    print(f"report:  {rendered.report}")
    print(f"summary: {rendered.summary}")
    return 1 if pdf_problem else 0
