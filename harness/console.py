"""The operator's console: a summary table at the end of a run, with the plain verdict."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

STYLE = {"pass": "green", "marginal": "yellow", "fail": "bold red", "error": "bold red",
         "skipped": "dim"}


def summary_table(ctx: Any) -> str:
    """Steps with their verdicts and failed measurements, then PASS or FAIL in large type."""
    table = Table(title=f"{ctx.plan.name} v{ctx.plan.version} -- DUT {ctx.serial}")
    table.add_column("step")
    table.add_column("check")
    table.add_column("verdict")
    table.add_column("failed measurements / diagnosis", overflow="fold")
    by_step: dict[str, list[Any]] = {}
    for step_name, m in ctx.measurements:
        by_step.setdefault(step_name, []).append(m)
    for step in ctx.plan.steps:
        verdict = ctx.verdicts.get(step.name, "not run")
        failed = [escape(m.line()) for m in by_step.get(step.name, []) if m.verdict in ("fail", "error")]
        table.add_row(escape(step.name), escape(step.check),
                      f"[{STYLE.get(verdict, 'dim')}]{verdict.upper()}[/]", "\n".join(failed))
    overall = "PASS" if ctx.verdicts and all(v == "pass" for v in ctx.verdicts.values()) else "FAIL"
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False, width=120)
    console.print(table)
    console.print(f"[{'green' if overall == 'PASS' else 'bold red'}]{overall}[/]  "
                  f"({sum(v == 'pass' for v in ctx.verdicts.values())}/{len(ctx.plan.steps)} steps passed)")
    return buffer.getvalue()
