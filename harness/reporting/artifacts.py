"""Files a run keeps beside its Allure results, and their attachment to the report.

Each trace a check records (harness.measure.Trace) becomes a PNG and a CSV in the run's folder
(``reports/runs/<run>/plots/<step>/``), both attached to the running Allure test and noted in the
result store as an ``attachment`` event, so the one-page summary and a later ``hil report`` find
them without Allure. A plot that cannot be drawn costs the picture, never the run: the CSV is
written first and the failure is noted instead.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

from harness.measure import Trace


def _allure() -> Any:
    try:
        import allure
    except ImportError:
        return None
    return allure


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "unnamed"


def attach_file(path: Path, name: str, kind: str) -> None:
    """Attach a file to the running Allure test (or fixture) if Allure is on."""
    allure = _allure()
    if allure is None or not path.is_file():
        return
    types = {"png": allure.attachment_type.PNG, "csv": allure.attachment_type.CSV,
             "json": allure.attachment_type.JSON, "html": allure.attachment_type.HTML,
             "text": allure.attachment_type.TEXT}
    allure.attach.file(str(path), name=name, attachment_type=types[kind])


def attach_json(data: Any, name: str) -> None:
    allure = _allure()
    if allure is not None:
        allure.attach(json.dumps(data, indent=2, default=str), name=name,
                      attachment_type=allure.attachment_type.JSON)


class TraceArtifacts:
    """The trace sink of one step: write the CSV at once, draw the plot when the step's check
    is done (:meth:`finish`), attach both and tell the store.

    Drawing waits for the end of the step so that a check is never held up mid-measurement
    (~0.2 s of CPU per plot). It is done in this process: a drawing process of its own (the
    harness had one) cost each run ~0.6 CPU-s more to start and import matplotlib, and no plan
    ran faster for it, measured (README, Measured figures)."""

    def __init__(self, folder: Path, step_name: str, note: Callable[[str], None] | None = None):
        self.folder = folder / "plots" / safe_name(step_name)
        self.step_name = step_name
        self.note = note or (lambda text: None)
        self.written: list[Path] = []
        self._pending: list[tuple[Trace, str, Path, Path]] = []

    def __call__(self, trace: Trace) -> None:
        from harness.reporting import plots

        trace.step = trace.step or self.step_name
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = self.folder / safe_name(trace.name)
        csv_path = plots.write_csv(trace, stem.with_suffix(".csv"))
        self.written.append(csv_path)
        title = trace.title or trace.name.replace("_", " ")
        self._pending.append((trace, title, csv_path, stem.with_suffix(".png")))

    def finish(self, draw: bool = True) -> None:
        """Draw the step's plots and attach each with its CSV, noting both in the store.
        ``draw=False`` (an interrupted step: the bench goes safe first) attaches the CSVs only."""
        from harness.reporting import plots

        pending, self._pending = self._pending, []
        for trace, title, csv_path, png_wanted in pending:
            png_path: Path | None = None
            if draw:
                try:
                    png_path = Path(plots.render(trace, png_wanted))
                except Exception as exc:  # noqa: BLE001 - a picture is not worth a run
                    self.note(f"plot {trace.name} of step {self.step_name} not drawn: {exc}")
            if png_path is not None:
                self.written.append(png_path)
                attach_file(png_path, f"{title} (plot)", "png")
                self.note(f"plot {self.step_name} {png_path}")
            attach_file(csv_path, f"{title} (CSV)", "csv")
            self.note(f"csv {self.step_name} {csv_path}")
