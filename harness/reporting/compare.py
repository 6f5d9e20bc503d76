"""``hil compare RUN_A RUN_B``: one run against another, regressions first.

The question a firmware (or fixture, or harness) change asks of the bench is "what got worse?".
Plans already judge every measurement against limits, so the comparison does not re-judge: it
pairs the two runs' steps by name and their measurements by (step name, measurement name) and
classifies each pair from the verdicts the store recorded, looking at values only where the
verdicts agree:

    regression   B fails (or errors) where A did not: a step or measurement going from
                 pass/marginal to fail/error, a measurement that fails and is new in B, or a
                 measurement that disappeared from a step that passed in A (a check that stopped
                 looking at something is as bad as one that fails it)
    improvement  A failed, B passes
    changed      same verdict class, but the verdict itself moved (pass <-> marginal: into or
                 out of the limits' marginal band), the limits changed, or the value moved by
                 more than a relative tolerance (default 5 %) of the window the limits allow
                 (of the value itself for recorded-only measurements)
    only_in_a / only_in_b   a step or healthy measurement only one run has
    same         nothing worth a look

Pure functions (:func:`resolve_run`, :func:`compare_runs`) build a :class:`Comparison`; the writers
(CSV, JSON, HTML, Allure) and the console table only present it. ``add_arguments``/``command`` are
the subcommand's two entry points for harness/cli.py. Exit status: 0 no regression, 1 at least
one regression, 2 a run (or the store) not found.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import sys
import time
import uuid as uuid_module
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from sqlalchemy.engine import make_url

from harness.reporting.runs import DEFAULT_RESULTS, REPO, RunNotFound, resolve_run
from harness.reporting.templating import render_page
from harness.store import MeasurementRecord, ResultStore, RunRecord, StepRecord, StoreError

__all__ = [
    "KINDS", "DEFAULT_REL_TOL", "RunNotFound", "RunHeader", "Row", "Comparison",
    "ComparisonFiles", "resolve_run", "run_header", "compare_runs", "classify_step",
    "classify_measurement", "value_change", "describe_limits", "write_files", "write_csv",
    "render_html", "write_allure", "print_comparison", "add_arguments", "command", "main",
]

KINDS = ("regression", "improvement", "changed", "only_in_a", "only_in_b", "same")
_RANK = {kind: rank for rank, kind in enumerate(KINDS)}
DEFAULT_REL_TOL = 0.05
BAD = frozenset({"fail", "error", "aborted", "unfinished"})  # "unfinished": no verdict (killed, running)
# "recorded" (no limit) is neither: a move to or from it is a change, never a pass
GOOD = frozenset({"pass", "marginal"})
DEFAULT_OUT = REPO / "reports" / "compare"
DEFAULT_ALLUREDIR = REPO / "reports" / "allure-results"
EXIT_OK, EXIT_REGRESSION, EXIT_NOT_FOUND = 0, 1, 2


# --------------------------------------------------------------------------------------------
# What a comparison is made of


@dataclass(frozen=True)
class RunHeader:
    """Who and what a run was, for the heading of every output."""

    id: int
    uuid: str
    plan_name: str
    plan_version: str | None
    station: str
    operator: str
    emulated: bool
    started_at: str
    verdict: str
    serials: tuple[str, ...]
    models: tuple[str, ...]
    firmware: str | None
    firmware_source: str | None  # "dut", "modules", "measurement <name>" or None

    @property
    def label(self) -> str:
        return f"run {self.id}"

    def lines(self) -> list[tuple[str, str]]:
        """(field, value) pairs in the order every output shows them."""
        firmware = self.firmware or "-"
        if self.firmware and self.firmware_source and self.firmware_source != "dut":
            firmware += f" (from {self.firmware_source})"
        plan = self.plan_name + (f" v{self.plan_version}" if self.plan_version else "")
        return [
            ("run", f"{self.id}  {self.uuid}"),
            ("plan", plan),
            ("DUT serial", ", ".join(self.serials) or "-"),
            ("DUT model", ", ".join(self.models) or "-"),
            ("firmware", firmware),
            ("station", f"{self.station} ({'emulated' if self.emulated else 'hardware'} bench)"),
            ("date", self.started_at),
            ("verdict", self.verdict),
        ]


@dataclass(frozen=True)
class Row:
    """One compared pair: a step's own verdict (``measurement`` None) or one measurement."""

    kind: str
    step: str
    measurement: str | None
    verdict_a: str | None
    verdict_b: str | None
    value_a: Any = None
    value_b: Any = None
    unit: str | None = None
    limits_a: str | None = None
    limits_b: str | None = None
    delta: float | None = None
    delta_pct: float | None = None
    note: str = ""

    @property
    def what(self) -> str:
        return self.step if self.measurement is None else f"{self.step} / {self.measurement}"


@dataclass
class Comparison:
    """Run A (the reference) against run B, rows ordered regressions first."""

    run_a: RunHeader
    run_b: RunHeader
    rows: list[Row]
    rel_tol: float = DEFAULT_REL_TOL

    def of_kind(self, kind: str) -> list[Row]:
        return [row for row in self.rows if row.kind == kind]

    @property
    def regressions(self) -> list[Row]:
        return self.of_kind("regression")

    @property
    def counts(self) -> dict[str, int]:
        return {kind: len(self.of_kind(kind)) for kind in KINDS}

    @property
    def stem(self) -> str:
        """File name stem of the outputs: ``<a>-vs-<b>`` with the store's run ids."""
        return f"{self.run_a.id}-vs-{self.run_b.id}"

    @property
    def title(self) -> str:
        a, b = self.run_a, self.run_b
        if a.plan_name == b.plan_name:
            return f"Comparison: {a.plan_name} run {a.id} vs run {b.id}"
        return f"Comparison: {a.plan_name} run {a.id} vs {b.plan_name} run {b.id}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "run_a": asdict(self.run_a),
            "run_b": asdict(self.run_b),
            "relative_tolerance": self.rel_tol,
            "summary": self.counts,
            "rows": [{**asdict(row), "value_a": _json_value(row.value_a),
                      "value_b": _json_value(row.value_b)} for row in self.rows],
        }


# --------------------------------------------------------------------------------------------
# Finding the runs


# --------------------------------------------------------------------------------------------
# Run headers


def run_header(store: ResultStore, run: RunRecord) -> RunHeader:
    """The identity of a run; the firmware from the DUT rows, else from the modules' rows, else
    from the measurement a plan recorded it in (the harness does not always fill the DUT's)."""
    duts = store.duts(run.id)
    firmware, source = _firmware(store, run.id, duts)
    return RunHeader(
        id=run.id, uuid=run.uuid, plan_name=run.plan_name, plan_version=run.plan_version,
        station=run.station, operator=run.operator, emulated=run.emulated,
        started_at=run.started_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
        verdict=run.verdict or "unfinished",
        serials=tuple(d.serial for d in duts) or run.serials,
        models=tuple(d.model for d in duts if d.model),
        firmware=firmware, firmware_source=source)


_FIRMWARE_MEASUREMENTS = ("master_firmware", "bms_firmware", "firmware")


def _firmware(store: ResultStore, run_id: int,
              duts: Sequence[Any]) -> tuple[str | None, str | None]:
    own = _distinct(d.firmware for d in duts)
    if own:
        return own, "dut"
    modules = _distinct(m.firmware for d in duts for m in d.modules)
    if modules:
        return modules, "modules"
    for name in _FIRMWARE_MEASUREMENTS:
        found = _distinct(str(m.value) for m in store.measurements(run_id, name=name)
                          if m.value is not None)
        if found:
            return found, f"measurement {name}"
    return None, None


def _distinct(values: Iterable[str | None]) -> str | None:
    seen = list(dict.fromkeys(v for v in values if v))
    return ", ".join(seen) if seen else None


# --------------------------------------------------------------------------------------------
# The comparison itself (no I/O beyond reading the store)


def compare_runs(store: ResultStore, run_a_id: int, run_b_id: int, *,
                 rel_tol: float = DEFAULT_REL_TOL) -> Comparison:
    """Compare run B against run A (the reference): every step and measurement, classified and
    ordered regressions, improvements, changed, only_in_a, only_in_b, same (plan order within
    each). :class:`harness.store.UnknownRecord` if a run id is not in the store."""
    run_a, run_b = store.run(run_a_id), store.run(run_b_id)
    steps_a, steps_b = _last_attempts(store.steps(run_a_id)), _last_attempts(store.steps(run_b_id))
    meas_a, meas_b = _by_step(store.measurements(run_a_id)), _by_step(store.measurements(run_b_id))
    rows: list[Row] = []
    for name in _union(steps_a, steps_b):
        step_a, step_b = steps_a.get(name), steps_b.get(name)
        rows.append(classify_step(name, step_a, step_b))
        rows.extend(_measurement_rows(name, step_a, step_b,
                                      meas_a.get(step_a.id, []) if step_a else [],
                                      meas_b.get(step_b.id, []) if step_b else [], rel_tol))
    rows.sort(key=lambda row: _RANK[row.kind])  # stable: plan order within a kind
    return Comparison(run_header(store, run_a), run_header(store, run_b), rows, rel_tol)


def _last_attempts(steps: Sequence[StepRecord]) -> dict[str, StepRecord]:
    """Steps by name; a retried step counts by its last attempt, as its verdict does."""
    out: dict[str, StepRecord] = {}
    for step in steps:
        out.pop(step.name, None)  # re-insert: the order is that of the last attempt
        out[step.name] = step
    return out


def _by_step(measurements: Sequence[MeasurementRecord]) -> dict[int, list[MeasurementRecord]]:
    out: dict[int, list[MeasurementRecord]] = {}
    for m in measurements:
        out.setdefault(m.step_id, []).append(m)
    return out


def _union(first: Iterable[str], second: Iterable[str]) -> list[str]:
    """Keys of A in A's order, then those only B has, in B's order."""
    return list(dict.fromkeys([*first, *second]))


def _keyed(measurements: Sequence[MeasurementRecord]) -> dict[str, MeasurementRecord]:
    """Measurements by name; a name recorded twice in a step is paired by occurrence
    (``name``, ``name[2]`` ...), so a loop of readings compares reading by reading."""
    out: dict[str, MeasurementRecord] = {}
    seen: dict[str, int] = {}
    for m in measurements:
        seen[m.name] = seen.get(m.name, 0) + 1
        out[m.name if seen[m.name] == 1 else f"{m.name}[{seen[m.name]}]"] = m
    return out


def _verdict(record: StepRecord | MeasurementRecord | None) -> str | None:
    if record is None:
        return None
    return record.verdict or "unfinished"


def classify_step(name: str, a: StepRecord | None, b: StepRecord | None) -> Row:
    """The row of a step's own verdict. Notes give the reason only: the verdicts have columns."""
    va, vb = _verdict(a), _verdict(b)
    if a is None:
        if vb in BAD:
            return Row("regression", name, None, va, vb, note=_with_error("new step, failing", b))
        return Row("only_in_b", name, None, va, vb, note="not in run A")
    if b is None:
        return Row("only_in_a", name, None, va, vb, note="not in run B")
    kind, note = _verdict_change(va, vb)
    if kind == "regression":
        note = _with_error(note, b)
    return Row(kind, name, None, va, vb, note=note)


_MEASUREMENT_FAILED = "harness.measure.MeasurementFailed"


def _with_error(note: str, step: StepRecord | None) -> str:
    """The step's error, unless it only lists failed measurements: their own rows say that."""
    error = (step.error or "").strip().splitlines()[0] if step is not None and step.error else ""
    if not error or error.startswith(_MEASUREMENT_FAILED):
        return note
    return f"{note}: {error}" if note else error


def _verdict_change(va: str | None, vb: str | None) -> tuple[str, str]:
    """(kind, note) from two verdicts alone; ``same`` when they agree."""
    if vb in BAD and va not in BAD:
        return "regression", ""
    if va in BAD and vb in GOOD:
        return "improvement", ""
    if vb == "marginal" and va != vb:
        return "changed", "into the limits' marginal band"
    if va == "marginal" and va != vb:
        return "changed", "out of the limits' marginal band"
    if va != vb:
        return "changed", "verdict changed"
    return "same", ""


def _measurement_rows(step: str, step_a: StepRecord | None, step_b: StepRecord | None,
                      list_a: Sequence[MeasurementRecord], list_b: Sequence[MeasurementRecord],
                      rel_tol: float) -> list[Row]:
    a_by, b_by = _keyed(list_a), _keyed(list_b)
    step_a_passed = step_a is not None and _verdict(step_a) in GOOD
    return [classify_measurement(step, key, a_by.get(key), b_by.get(key), rel_tol,
                                 step_in_b=step_b is not None, step_a_passed=step_a_passed)
            for key in _union(a_by, b_by)]


def classify_measurement(step: str, name: str, a: MeasurementRecord | None,
                         b: MeasurementRecord | None, rel_tol: float = DEFAULT_REL_TOL, *,
                         step_in_b: bool = True, step_a_passed: bool = True) -> Row:
    """The row of one measurement pair (either side may be missing)."""
    base = dict(step=step, measurement=name, verdict_a=_verdict(a), verdict_b=_verdict(b),
                value_a=a.value if a else None, value_b=b.value if b else None,
                unit=(b or a).unit if (a or b) else None,
                limits_a=describe_limits(a) if a else None,
                limits_b=describe_limits(b) if b else None)
    if a is None:
        failing = base["verdict_b"] in BAD
        return Row("regression" if failing else "only_in_b", **base,
                   note=_diagnosed("new measurement, failing", b) if failing
                   else "not in run A")
    if b is None:
        if step_in_b and step_a_passed:
            return Row("regression", **base,
                       note="disappeared from a step that passed in run A")
        return Row("only_in_a", **base, note="not in run B")
    delta, pct, moved = value_change(a, b, rel_tol)
    kind, note = _verdict_change(base["verdict_a"], base["verdict_b"])
    if kind == "regression":
        note = _diagnosed(note, b)
    elif kind == "same" and _limits_key(a) != _limits_key(b):
        kind, note = "changed", f"limits changed: {base['limits_a']} -> {base['limits_b']}"
    elif kind == "same" and moved:
        kind, note = "changed", _moved_note(delta, rel_tol, b)
    return Row(kind, **base, delta=delta, delta_pct=pct, note=note)


def _diagnosed(note: str, m: MeasurementRecord | None) -> str:
    if m is None or not m.diagnosis:
        return note
    return f"{note} -- {m.diagnosis}" if note else m.diagnosis


def _moved_note(delta: float | None, rel_tol: float, b: MeasurementRecord) -> str:
    """Why a value counts as moved; the delta column has the size."""
    if delta is None:
        return "value changed"
    window = "the limits' window" if _limit_span(b) else "the value"
    return f"moved > {rel_tol * 100:g} % of {window}"


def value_change(a: MeasurementRecord, b: MeasurementRecord,
                 rel_tol: float) -> tuple[float | None, float | None, bool]:
    """(delta, delta in % of run A's value, moved beyond tolerance?) of B's value against A's.

    The percentage shown is always relative to run A's value (None when A is 0). Whether a
    value *moved* is judged against a scale: the window the limits allow (B's limits) where
    there is one, because what a move costs is margin; otherwise the larger magnitude of the
    two values. Non-numbers (text,
    booleans) have no delta: they moved when they differ.
    """
    va, vb = a.value, b.value
    if not (_is_number(va) and _is_number(vb)):
        return None, None, va != vb
    fa, fb = float(va), float(vb)
    if not (math.isfinite(fa) and math.isfinite(fb)):
        same = (math.isnan(fa) and math.isnan(fb)) or fa == fb
        return None, None, not same
    delta = fb - fa
    scale = _limit_span(b) or max(abs(fa), abs(fb))
    # the percentage shown is always one kind: the change relative to run A's value
    pct = delta / abs(fa) * 100.0 if fa else None
    if scale == 0:
        return delta, pct if delta else 0.0, False
    return delta, pct, abs(delta) > rel_tol * scale


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _limit_span(m: MeasurementRecord) -> float:
    """The width the limits allow: high-low, or the one bound's magnitude; 0 when none."""
    if m.low is not None and m.high is not None:
        return abs(m.high - m.low) if math.isfinite(m.high - m.low) else 0.0
    bound = m.high if m.high is not None else m.low
    return abs(bound) if bound is not None and math.isfinite(bound) else 0.0


def _limits_key(m: MeasurementRecord) -> tuple[Any, ...]:
    extra = m.limits_extra or {}
    return (m.limit_kind, m.low, m.high, m.nominal, extra.get("equals"), extra.get("pct"),
            extra.get("marginal_pct"))


def describe_limits(m: MeasurementRecord) -> str:
    """The limits in a line, as the console of ``hil run`` shows them."""
    unit = f" {m.unit}" if m.unit else ""
    kind = m.limit_kind or ""
    extra = m.limits_extra or {}
    if kind == "equals":
        return f"== {extra.get('equals')!r}"
    if kind == "le" and m.high is not None:
        return f"<= {m.high:g}{unit}"
    if kind == "ge" and m.low is not None:
        return f">= {m.low:g}{unit}"
    if m.low is not None and m.high is not None:
        return f"{m.low:g}..{m.high:g}{unit}"
    if m.high is not None:
        return f"<= {m.high:g}{unit}"
    if m.low is not None:
        return f">= {m.low:g}{unit}"
    return "(recorded)"


# --------------------------------------------------------------------------------------------
# Presenting values


def format_value(value: Any, unit: str | None = None) -> str:
    """A value as people read it: 6 significant digits, the unit after."""
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = str(value)
    return f"{text} {unit}" if unit else text


def _json_value(value: Any) -> Any:
    """JSON has no NaN/inf: those become their text, as the store keeps them."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _delta_text(row: Row) -> str:
    if row.delta is None:
        return ""
    from harness.numbers import eng
    text = eng(row.delta, row.unit or "") if row.delta else "0"
    text = text if text.startswith("-") or text == "0" else "+" + text
    if row.delta_pct is not None and row.delta and math.isfinite(row.delta_pct):
        text += f" ({row.delta_pct:+.1f} % of A)"
    return text


def _verdicts_text(row: Row) -> str:
    if row.verdict_a == row.verdict_b:
        return row.verdict_a or "-"
    return f"{row.verdict_a or '-'} -> {row.verdict_b or '-'}"


def _limits_text(row: Row) -> str:
    if row.limits_a and row.limits_b and row.limits_a != row.limits_b:
        return f"{row.limits_a} -> {row.limits_b}"
    return row.limits_b or row.limits_a or ""


CSV_COLUMNS = ("kind", "step", "measurement", "verdict_a", "verdict_b", "value_a", "value_b",
               "unit", "limits_a", "limits_b", "delta", "delta_pct", "note")


# --------------------------------------------------------------------------------------------
# Files: CSV, JSON, HTML


@dataclass
class ComparisonFiles:
    csv: Path
    json: Path
    html: Path
    allure: Path | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"csv": str(self.csv), "json": str(self.json), "html": str(self.html),
                "allure": str(self.allure) if self.allure else None}


def write_files(comparison: Comparison, out: Path) -> ComparisonFiles:
    """``<out>/<a>-vs-<b>.csv``, ``.json`` and ``.html``."""
    out.mkdir(parents=True, exist_ok=True)
    files = ComparisonFiles(out / f"{comparison.stem}.csv", out / f"{comparison.stem}.json",
                            out / f"{comparison.stem}.html")
    write_csv(comparison, files.csv)
    files.json.write_text(json.dumps(comparison.to_dict(), indent=2, default=str) + "\n",
                          encoding="utf-8")
    files.html.write_text(render_html(comparison), encoding="utf-8")
    return files


def write_csv(comparison: Comparison, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for row in comparison.rows:
            data = asdict(row)
            writer.writerow(["" if data[c] is None else data[c] for c in CSV_COLUMNS])


HTML_COLUMNS = ("kind", "step", "measurement", "A", "B", "value A", "value B", "limits", "delta",
                "note")


def render_html(comparison: Comparison) -> str:
    """A self-contained page (inline CSS, no script): headings, counts, every row; the template
    ``templates/compare.html.j2``, autoescaped like every page the harness writes."""
    a, b = comparison.run_a, comparison.run_b
    return render_page(
        "compare.html.j2", title=comparison.title,
        header=[(label, va, vb) for (label, va), (_, vb) in zip(a.lines(), b.lines())],
        counts=", ".join(f"{n} {kind}" for kind, n in comparison.counts.items() if n),
        tolerance=f"{comparison.rel_tol * 100:g}", columns=HTML_COLUMNS,
        rows=[{"kind": row.kind, "cells": _html_cells(row)} for row in comparison.rows])


def _html_cells(row: Row) -> list[tuple[str, str]]:
    """(text, CSS class) of a row's cells, in :data:`HTML_COLUMNS` order; numbers ``num``."""
    return [(row.kind, ""), (row.step, ""), (row.measurement or "(step)", ""),
            (row.verdict_a or "-", ""), (row.verdict_b or "-", ""),
            (format_value(row.value_a, row.unit), "num"),
            (format_value(row.value_b, row.unit), "num"),
            (_limits_text(row), ""), (_delta_text(row), "num"), (row.note, "")]


# --------------------------------------------------------------------------------------------
# Allure


def write_allure(comparison: Comparison, files: ComparisonFiles, alluredir: Path) -> Path | None:
    """One Allure test result for the comparison, with the HTML and CSV attached, so the
    qualification report carries the firmware verdict beside the runs it is made of. The path
    of the written ``*-result.json`` (None if it could not be told apart from others')."""
    from allure_commons.logger import AllureFileLogger
    from allure_commons.model2 import (Attachment, Label, Parameter, Status, StatusDetails,
                                       TestResult)

    start = int(time.time() * 1000)
    logger = AllureFileLogger(str(alluredir))
    attachments = []
    for path, name, mime in ((files.html, "comparison.html", "text/html"),
                             (files.csv, "comparison.csv", "text/csv")):
        source = f"{uuid_module.uuid4()}-attachment{path.suffix}"
        logger.report_attached_file(str(path), source)
        attachments.append(Attachment(name=name, source=source, type=mime))
    regressions = comparison.regressions
    plans = sorted({comparison.run_a.plan_name, comparison.run_b.plan_name})
    history = hashlib.md5(("hil compare:" + "|".join(plans)).encode()).hexdigest()
    result = TestResult(
        uuid=str(uuid_module.uuid4()), historyId=history, testCaseId=history,
        fullName=f"harness.reporting.compare#{comparison.stem}", name=comparison.title,
        status=Status.FAILED if regressions else Status.PASSED,
        statusDetails=StatusDetails(message=_status_message(comparison)),
        stage="finished", description=allure_description(comparison),
        labels=[Label("epic", "Firmware comparison"), Label("feature", "hil compare"),
                Label("story", " / ".join(plans)), Label("framework", "bankhil")],
        parameters=[Parameter("run A", _run_param(comparison.run_a)),
                    Parameter("run B", _run_param(comparison.run_b))],
        attachments=attachments, start=start, stop=int(time.time() * 1000))
    before = set(Path(alluredir).glob("*-result.json"))
    logger.report_result(result)
    return _written_result(Path(alluredir), before, result.uuid)


def _run_param(header: RunHeader) -> str:
    return (f"{header.id} ({header.uuid[:8]}) {', '.join(header.serials)} "
            f"firmware {header.firmware or '-'}: {header.verdict}")


def _status_message(comparison: Comparison) -> str:
    counts = comparison.counts
    return (f"{counts['regression']} regression(s), {counts['improvement']} improvement(s), "
            f"{counts['changed']} changed")


def allure_description(comparison: Comparison) -> str:
    """Markdown: both runs in a line each, then every regression."""
    lines = [f"**A** (reference): {_run_param(comparison.run_a)}",
             f"**B**: {_run_param(comparison.run_b)}", "", _status_message(comparison) + "."]
    if comparison.regressions:
        lines += ["", "Regressions:", ""]
        lines += [f"- {row.what}: {_verdicts_text(row)}" + (f" -- {row.note}" if row.note else "")
                  for row in comparison.regressions]
    return "\n".join(lines)


def _written_result(alluredir: Path, before: set[Path], result_uuid: str) -> Path | None:
    """AllureFileLogger names the file itself: find ours among the new ones by its uuid."""
    for path in set(alluredir.glob("*-result.json")) - before:
        try:
            if json.loads(path.read_text(encoding="utf-8")).get("uuid") == result_uuid:
                return path
        except (OSError, ValueError):
            continue
    return None


# --------------------------------------------------------------------------------------------
# Console


_STYLE = {"regression": "bold red", "improvement": "green", "changed": "yellow",
          "only_in_a": "cyan", "only_in_b": "cyan", "same": "dim"}


def _short(text: str, limit: int = 70) -> str:
    """The console shows the start of a note (a step's error lists every failed measurement
    with its diagnosis); the files keep it whole."""
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "\u2026"


def print_comparison(comparison: Comparison, stream: Any = None) -> None:
    """Both runs' identity side by side, then every row that is not ``same``."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(file=stream or sys.stdout)
    if not console.is_terminal:
        console.width = 160  # a pipe or a log: do not fold the table at 80 columns
    head = Table(title=escape(comparison.title), show_header=True)
    head.add_column("")
    head.add_column("A (reference)")
    head.add_column("B")
    for (label, va), (_, vb) in zip(comparison.run_a.lines(), comparison.run_b.lines()):
        head.add_row(label, escape(va), escape(vb))
    console.print(head)
    table = Table(show_header=True)
    for column in ("kind", "step", "measurement", "verdict A -> B", "value A", "value B",
                   "limits", "delta"):
        table.add_column(column, no_wrap=column in ("kind", "step", "measurement"))
    table.add_column("note", overflow="fold")
    shown = [row for row in comparison.rows if row.kind != "same"]
    for row in shown:
        style = _STYLE[row.kind]
        table.add_row(f"[{style}]{row.kind}[/]", escape(row.step),
                      escape(row.measurement or "(step)"), _verdicts_text(row),
                      escape(format_value(row.value_a, row.unit)),
                      escape(format_value(row.value_b, row.unit)), escape(_limits_text(row)),
                      _delta_text(row), escape(_short(row.note)))
    if shown:
        console.print(table)
    counts = comparison.counts
    summary = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
    verdict = "[bold red]REGRESSION[/]" if counts["regression"] else "[green]NO REGRESSION[/]"
    console.print(f"{verdict}  ({summary}; tolerance {comparison.rel_tol * 100:g} %)")


# --------------------------------------------------------------------------------------------
# The subcommand


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``hil compare``'s options."""
    ref_help = "a run id, a run uuid or uuid prefix, last or last~N (N-th before the latest)"
    parser.add_argument("run_a", help=f"the reference run: {ref_help}")
    parser.add_argument("run_b", help=f"the run compared with it: {ref_help}")
    parser.add_argument("--results", default=DEFAULT_RESULTS, metavar="URL",
                        help="result store URL (default: reports/results.sqlite)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), metavar="DIR",
                        help="folder for <a>-vs-<b>.csv/.json/.html (default: reports/compare)")
    parser.add_argument("--alluredir", default=None, metavar="DIR",
                        help="allure-results folder for the comparison's test result (default: "
                             "run B's, so `hil report` of run B shows it)")
    parser.add_argument("--no-allure", action="store_true", help="write no Allure result")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="console output: a table (text) or the comparison as JSON")
    parser.add_argument("--force", action="store_true",
                        help="compare runs of different plans or DUT models (refused otherwise)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_REL_TOL * 100, metavar="PCT",
                        help="relative move of a value that counts as changed, in %% of the "
                             "limits' window (default: %(default)g)")


def command(args: argparse.Namespace) -> int:
    """Compare, print, write the files (and the Allure result). 0 no regression, 1 regression,
    2 a run or the store not found (one line on stderr)."""
    try:
        store = _open_store(args.results)
    except (StoreError, RunNotFound) as exc:
        return _not_found(exc)
    try:
        try:
            run_a, run_b = resolve_run(store, args.run_a), resolve_run(store, args.run_b)
        except (RunNotFound, StoreError) as exc:
            return _not_found(exc)
        mismatch = _not_comparable(store, run_a, run_b)
        if mismatch and not getattr(args, "force", False):
            print(f"hil compare: {mismatch}; compare like with like, or give --force", file=sys.stderr)
            return EXIT_NOT_FOUND
        comparison = compare_runs(store, run_a.id, run_b.id, rel_tol=args.tolerance / 100.0)
    finally:
        store.close()
    files = write_files(comparison, Path(args.out))
    if not args.no_allure:
        alluredir = Path(args.alluredir or (run_b.extra or {}).get("allure_dir") or DEFAULT_ALLUREDIR)
        files.allure = write_allure(comparison, files, alluredir) or alluredir
    _print(comparison, files, args.format)
    return EXIT_REGRESSION if comparison.regressions else EXIT_OK


def _not_comparable(store: ResultStore, run_a: Any, run_b: Any) -> str | None:
    """Why two runs are not like for like (another plan, another DUT model), or None."""
    if run_a.plan_name != run_b.plan_name:
        return (f"run {run_a.id} is plan {run_a.plan_name}, run {run_b.id} is plan "
                f"{run_b.plan_name}")
    # the module model and topology (a candidate firmware on the same bank is like for like)
    kinds = [((r.extra or {}).get("module_model"), (r.extra or {}).get("topology")) for r in (run_a, run_b)]
    if all(all(kind) for kind in kinds) and kinds[0] != kinds[1]:
        return (f"run {run_a.id} is a {kinds[0][1]} of {kinds[0][0]}, run {run_b.id} a "
                f"{kinds[1][1]} of {kinds[1][0]}")
    return None


def _open_store(url: str) -> ResultStore:
    """The store, refusing to create a SQLite file that is not there (a typo would otherwise
    compare against an empty new database)."""
    path = _sqlite_path(url)
    if path is not None and not path.is_file():
        raise RunNotFound(f"no result store at {path}")
    return ResultStore(url)


def _sqlite_path(url: str) -> Path | None:
    text = str(url).strip()
    if "://" not in text:
        return Path(text)
    try:
        parsed = make_url(text)
    except Exception:  # noqa: BLE001 - ResultStore gives the proper message
        return None
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(parsed.database)


def _not_found(exc: BaseException) -> int:
    print(f"hil compare: {exc}", file=sys.stderr)
    return EXIT_NOT_FOUND


def _print(comparison: Comparison, files: ComparisonFiles, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps({**comparison.to_dict(), "files": files.as_dict()}, indent=2,
                         default=str))
        return
    print_comparison(comparison)
    for label, path in files.as_dict().items():
        if path:
            print(f"{label}: {path}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m harness.reporting.compare``: the subcommand before harness/cli.py wires it."""
    parser = argparse.ArgumentParser(prog="hil compare",
                                     description="Compare run B against run A, regressions first.")
    add_arguments(parser)
    return command(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
