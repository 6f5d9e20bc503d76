"""The one-page qualification summary of one DUT's run: what a signatory reads and signs.

One self-contained HTML page (no script, no external file: pictures are embedded) built from the
result store alone, so it can be made again years later from the record: the overall verdict,
the verdict per requirement with its source document, the key measurements against their limits,
the diagnoses of what failed, safety events, the station with its instruments and calibration
dates, operator and date. The plots of failed steps are shown; the rest stay in the Allure report.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.measure import Limits, Measurement
from harness.reporting.allure_labels import source_title
from harness.store import MeasurementRecord, ResultStore

VERDICT_COLOUR = {"pass": "#1a7f37", "fail": "#cf222e", "error": "#8250df", "skipped": "#57606a",
                  "marginal": "#9a6700", "recorded": "#0969da", "aborted": "#bc4c00"}


@dataclass
class Requirement:
    step: str
    check: str
    text: str
    sources: list[str]
    verdict: str
    measurements: list[MeasurementRecord]
    diagnoses: list[str]
    plots: list[Path]


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _verdict(verdict: str | None) -> str:
    v = (verdict or "not run").lower()
    return f'<span class="v" style="background:{VERDICT_COLOUR.get(v, "#57606a")}">{_e(v.upper())}</span>'


def record_limits(m: MeasurementRecord) -> Limits:
    """The stored limit as the one limit type the harness judges and prints with."""
    extra = m.limits_extra or {}
    return Limits(kind=m.limit_kind or "record", low=m.low, high=m.high, nominal=m.nominal,
                  pct=extra.get("pct"), equals=extra.get("equals"),
                  marginal_pct=extra.get("marginal_pct"), unit=m.unit or "")


def _value(m: MeasurementRecord) -> str:
    return Measurement(m.name, m.value, m.unit or "", record_limits(m), m.verdict, None, 0.0).shown


def _limits(m: MeasurementRecord) -> str:
    text = record_limits(m).describe()
    return "recorded" if text == "(recorded)" else text


def requirements(store: ResultStore, run_id: int, run_dir: Path | None) -> list[Requirement]:
    run = store.run(run_id)
    plan_steps = ((run.extra or {}).get("steps") or {})
    plots: dict[str, list[Path]] = {}
    for event in store.events(run_id):
        if event.kind == "attachment" and event.text.startswith("plot "):
            _, step, path = event.text.split(" ", 2)
            plots.setdefault(step, []).append(Path(path))
    out = []
    for step in store.steps(run_id):
        meta = plan_steps.get(step.name, {})
        taken = store.measurements(run_id, step_id=step.id)
        out.append(Requirement(
            step.name, step.check or "", meta.get("description") or step.name.replace("_", " "),
            list(meta.get("source") or []), step.verdict or "not run", taken,
            [f"{m.name}: {m.diagnosis}" for m in taken if m.verdict in ("fail", "error") and m.diagnosis]
            + ([step.error] if step.verdict in ("error", "aborted") and step.error else []),
            plots.get(step.name, [])))
    return out


def _key_measurements(req: Requirement) -> str:
    judged = [m for m in req.measurements if (m.limit_kind or "record") != "record"]
    rows = "".join(
        f"<tr><td>{_e(m.name)}</td><td>{_e(_value(m))}</td><td>{_e(_limits(m))}</td>"
        f"<td>{_verdict(m.verdict)}</td></tr>" for m in judged)
    return f'<table class="m">{rows}</table>' if rows else "<em>recorded only</em>"


def _plot_images(req: Requirement) -> str:
    if req.verdict not in ("fail", "error"):
        return ""
    images = []
    for path in req.plots:
        if path.is_file():
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            images.append(f'<img alt="{_e(path.stem)}" src="data:image/png;base64,{data}">')
    return "".join(images)


STYLE = """
body{font:13px/1.4 system-ui,sans-serif;margin:24px;color:#1f2328;max-width:1100px}
h1{font-size:20px;margin:0 0 4px} .v{color:#fff;border-radius:3px;padding:1px 6px;font-weight:600}
table{border-collapse:collapse;width:100%} td,th{border-bottom:1px solid #d0d7de;padding:4px 6px;
text-align:left;vertical-align:top} table.m td{border:0;padding:0 8px 0 0;font-size:12px}
.big{font-size:28px;padding:4px 14px} .diag{color:#cf222e} img{max-width:520px;margin:4px 8px 0 0}
.meta td{border:0;padding:1px 12px 1px 0}
"""


def render_summary(store: ResultStore, run_id: int, run_dir: Path | None = None) -> str:
    run = store.run(run_id)
    duts = store.duts(run_id)
    dut = duts[0] if duts else None
    firmware = sorted({m.firmware for d in duts for m in d.modules if m.firmware}
                      | ({dut.firmware} if dut and dut.firmware else set()))
    reqs = requirements(store, run_id, run_dir)
    rows = "".join(
        f"<tr><td><b>{_e(r.text)}</b><br><small>{_e('; '.join(source_title(x) for x in r.sources) or 'no source given')}"
        f" · step {_e(r.step)} · {_e(r.check)}</small></td><td>{_verdict(r.verdict)}</td>"
        f"<td>{_key_measurements(r)}</td><td class='diag'>{'<br>'.join(_e(d) for d in r.diagnoses)}"
        f"{_plot_images(r)}</td></tr>" for r in reqs)
    instruments = "".join(
        f"<tr><td>{_e(i.role)}</td><td>{_e(i.identity or '')}</td><td>{_e(i.driver or '')}</td>"
        f"<td>{_e(i.calibration_due or 'not recorded')}"
        f"{' <b class=diag>OVERDUE</b>' if i.calibration_overdue(run.started_at) else ''}</td></tr>"
        for i in store.instruments(run_id))
    events = "".join(f"<li>{_e(e.kind)}: {_e(e.text)}</li>" for e in store.events(run_id)
                     if e.kind not in ("attachment",))
    serial = dut.serial if dut else "?"
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>Qualification summary {_e(serial)} {_e(run.plan_name)}</title><style>{STYLE}</style></head><body>
<h1>Qualification summary — {_e(serial)} {_verdict(run.verdict)}</h1>
<table class="meta">
<tr><td>DUT</td><td>{_e(serial)} · {_e(dut.model if dut else '?')} · firmware {_e(', '.join(firmware) or '?')}</td></tr>
<tr><td>Plan</td><td>{_e(run.plan_name)} {_e(run.plan_version or '')} (sha256 {_e(run.plan_hash or '?')})</td></tr>
<tr><td>Station</td><td>{_e(run.station)} ({'emulated' if run.emulated else 'hardware'}), harness {_e(run.harness_version or '?')}</td></tr>
<tr><td>Operator</td><td>{_e(run.operator)}</td></tr>
<tr><td>Date</td><td>{_e(run.started_at.strftime('%Y-%m-%d %H:%M:%S UTC'))} · run {run.id} · {_e(run.uuid)}</td></tr>
</table>
<h2>Requirements</h2>
<table><tr><th>Requirement</th><th>Verdict</th><th>Key measurements against limits</th><th>Diagnosis</th></tr>
{rows}</table>
<h2>Station and instruments</h2>
<table><tr><th>Role</th><th>Identity</th><th>Driver</th><th>Calibration due</th></tr>{instruments}</table>
<h2>Events</h2><ul>{events or '<li>none</li>'}</ul>
<p><small>Made from the result store by bankhil; the Allure report of the same run has every
measurement, plot and the CAN log.</small></p></body></html>"""


def summary_path(run_dir: Path, serial: str) -> Path:
    """Where a run keeps its summary page: one name for the run and for ``hil report``."""
    from harness.reporting.artifacts import safe_name
    return run_dir / f"summary-{safe_name(serial)}.html"


def write_summary(store: ResultStore, run_id: int, path: Path, run_dir: Path | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_summary(store, run_id, run_dir), encoding="utf-8")
    return path
