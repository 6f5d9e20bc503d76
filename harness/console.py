"""The operator's console: a summary table at the end of a run, with the plain verdict."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

STYLE = {"pass": "green", "marginal": "yellow", "fail": "bold red", "error": "bold magenta",
         "recorded": "cyan", "aborted": "bold yellow", "skipped": "dim", "not run": "dim"}

# what the last line says for each run verdict (README "Verdicts")
MEANING = {"pass": "every step ran and passed against its limits",
           "fail": "the DUT failed a limit",
           "error": "an instrument or the harness failed: no verdict on the DUT",
           "recorded": "measurements recorded without a full set of limits or steps: not qualified",
           "aborted": "interrupted: not qualified"}


def summary_table(ctx: Any) -> str:
    """Steps with their verdicts and failed measurements (or error text), then the run's verdict."""
    from harness.plugin import _overall

    table = Table(title=f"{ctx.plan.name} v{ctx.plan.version} -- DUT {ctx.serial}")
    table.add_column("step")
    table.add_column("check")
    table.add_column("verdict")
    table.add_column("failed measurements / diagnosis / error", overflow="fold")
    by_step: dict[str, list[Any]] = {}
    for step_name, m in ctx.measurements:
        by_step.setdefault(step_name, []).append(m)
    for step in ctx.plan.steps:
        verdict = ctx.verdicts.get(step.name, "not run")
        lines = [escape(m.line()) for m in by_step.get(step.name, []) if m.verdict in ("fail", "error")]
        if verdict in ("error", "aborted") and step.name in ctx.errors:
            lines.append(escape(ctx.errors[step.name]))
        table.add_row(escape(step.name), escape(step.check),
                      f"[{STYLE.get(verdict, 'dim')}]{verdict.upper()}[/]", "\n".join(lines))
    overall = ctx.run_verdict or _overall(ctx)
    counts = {state: sum(v == state for v in ctx.verdicts.values())
              for state in ("pass", "fail", "error", "recorded", "aborted")}
    detail = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    ran = len(ctx.verdicts)
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False, width=120)
    console.print(table)
    extra = f"; interrupted during {ctx.running[0]}" if overall == "aborted" and ctx.running else ""
    console.print(f"[{STYLE.get(overall, 'bold red')}]{overall.upper()}[/]  ({detail or 'no steps'} of "
                  f"{len(ctx.plan.steps)} steps; {ran} ran{extra}) -- {MEANING[overall]}")
    return buffer.getvalue()
