"""One unit through the end-of-line station: what every output of the line (console, panel,
label, MES file, store) says about it, in one shape.

Why one shape: the operator's screen, the label on the box and the MES record must never
disagree; each is rendered from the same :class:`UnitResult`, built once from the result store
after the unit's run (:func:`unit_result`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

# the verdict words of the line (harness/plugin.py run verdicts, upper case), plus the line's own
VERDICTS = ("PASS", "FAIL", "ERROR", "ABORTED", "RECORDED")


@dataclass(frozen=True)
class MeasuredValue:
    """One measurement as the MES and the panel show it."""

    step: str
    name: str
    value: Any
    unit: str
    limits: dict[str, Any] | None
    verdict: str


@dataclass(frozen=True)
class UnitResult:
    """The outcome of one attempt at one unit."""

    serial: str
    verdict: str                    # one of VERDICTS
    attempt: int                    # 1-based attempt number of this unit at this station
    attempts_allowed: int
    run_uuid: str                   # the run's UUID in the store (the label's 2D code)
    station: str
    socket: str
    operator: str
    plan: str
    plan_version: str
    firmware: str | None            # as the unit's BMS reported it
    started_at: datetime
    finished_at: datetime
    takt_s: float                   # scan to verdict, wall seconds
    failed_step: str | None = None
    diagnosis: str | None = None    # the failed step's diagnosis or error, as the operator reads it
    measurements: tuple[MeasuredValue, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: datetimes as ISO 8601 (UTC), everything else as is."""
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["finished_at"] = self.finished_at.isoformat()
        data["measurements"] = [asdict(m) for m in self.measurements]
        return data
