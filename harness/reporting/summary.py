"""The one-page qualification summary of one DUT's run: what a signatory reads and signs.

One self-contained HTML page (no script, no external file: pictures are embedded) built from the
result store alone, so it can be made again years later from the record: the overall verdict,
the verdict per requirement with its source document, the key measurements against their limits,
the diagnoses of what failed, safety events, the station with its instruments and calibration
dates, operator and date. The plots of failed steps are shown; the rest stay in the Allure report.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from harness.measure import Limits, Measurement
from harness.reporting.allure_labels import source_title
from harness.reporting.templating import render_page
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


# requirement order on the page: what needs a reader's attention first
_ORDER = {"fail": 0, "error": 1, "aborted": 2, "recorded": 3, "not run": 4, "skipped": 4, "pass": 5}


def _folded_events(store: ResultStore, run_id: int) -> list[str]:
    """Events, with the safety actions folded to one line per reason (what went safe, what failed)."""
    lines: list[str] = []
    safety: dict[str, dict[str, list[str]]] = {}
    for event in store.events(run_id):
        if event.kind == "attachment":
            continue
        if event.kind == "safety" and ": " in event.text:
            reason, _, rest = event.text.rpartition(": ")
            instrument, _, outcome = rest.partition(" ")
            bucket = safety.setdefault(reason, {"safe": [], "failed": []})
            bucket["safe" if outcome == "safe" else "failed"].append(instrument if outcome == "safe"
                                                                     else f"{instrument} ({outcome})")
            continue
        lines.append(f"{event.kind}: {event.text}")
    for reason, bucket in safety.items():
        text = f"safe state ({reason}): {', '.join(bucket['safe']) or 'nothing'} safe"
        if bucket["failed"]:
            text += f"; FAILED: {', '.join(bucket['failed'])}"
        lines.append(text)
    return lines


def render_summary(store: ResultStore, run_id: int, run_dir: Path | None = None) -> str:
    """The one-page qualification summary: a printable A4 document (Jinja2, autoescaped)."""
    run = store.run(run_id)
    duts = store.duts(run_id)
    dut = duts[0] if duts else None
    firmware = sorted({m.firmware for d in duts for m in d.modules if m.firmware}
                      | ({dut.firmware} if dut and dut.firmware else set()))
    reqs = sorted(requirements(store, run_id, run_dir), key=lambda r: _ORDER.get(r.verdict, 4))
    shown = []
    for r in reqs:
        judged = [{"name": m.name, "shown": _value(m), "limit": _limits(m), "verdict": m.verdict}
                  for m in r.measurements if (m.limit_kind or "record") != "record"]
        images = []
        if r.verdict in ("fail", "error"):
            images = [{"alt": p.stem, "data": base64.b64encode(p.read_bytes()).decode("ascii")}
                      for p in r.plots if p.is_file()]
        shown.append({"text": r.text, "step": r.step, "check": r.check, "verdict": r.verdict,
                      "source_titles": "; ".join(source_title(x) for x in r.sources),
                      "judged": judged, "diagnoses": r.diagnoses, "images": images})
    counts = ", ".join(f"{n} {v}" for v, n in sorted(
        {r.verdict: sum(x.verdict == r.verdict for x in reqs) for r in reqs}.items(),
        key=lambda kv: _ORDER.get(kv[0], 4)))
    instruments = [{"role": i.role, "identity": i.identity or "", "driver": i.driver or "",
                    "due": i.calibration_due or "not recorded",
                    "overdue": i.calibration_overdue(run.started_at)} for i in store.instruments(run_id)]
    serial = dut.serial if dut else "?"
    return render_page(
        "summary.html.j2", run=run, serial=serial, dut_model=dut.model if dut else "?",
        firmware=", ".join(firmware),
        started=run.started_at.strftime("%Y-%m-%d %H:%M:%S UTC"), requirements=shown, counts=counts,
        instruments=instruments, events=_folded_events(store, run_id),
        colour=lambda v: VERDICT_COLOUR.get((v or "not run").lower(), "#57606a"))


def summary_path(run_dir: Path, serial: str) -> Path:
    """Where a run keeps its summary page: one name for the run and for ``hil report``."""
    from harness.reporting.artifacts import safe_name
    return run_dir / f"summary-{safe_name(serial)}.html"


def write_summary(store: ResultStore, run_id: int, path: Path, run_dir: Path | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_summary(store, run_id, run_dir), encoding="utf-8")
    return path
