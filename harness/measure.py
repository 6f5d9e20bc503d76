"""Measurements: named, unit-carrying values judged against limits, recorded as they are taken.

``measure("ocv_spread", 0.04, "V", limits)`` judges the value, and immediately: writes a
result-store row (committed, so a killed run keeps it), adds an Allure step with the value and
limits as parameters, and tells the console. A failed measurement carries a diagnosis -- the
likely cause and the first thing to check, from the troubleshooting table of 004 -- and makes
its step fail when the check returns (or at once with ``stop=True``), so one failure does not
hide the measurements after it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

# A measurement ends PASS (within its limit; "marginal" is a pass close to the edge), FAIL,
# RECORDED (no limit: taken and kept, never shown or counted as a pass) or ERROR (no value).
Verdict = Literal["pass", "marginal", "fail", "recorded", "error"]
# A step or a run additionally ends ABORTED (interrupted) or is not run (a gate stopped the plan).
StepVerdict = Literal["pass", "fail", "recorded", "error", "aborted", "not run"]
VERDICT_STATES: tuple[str, ...] = ("pass", "fail", "recorded", "error", "aborted")
Kind = Literal["in_range", "le", "ge", "within_pct", "equals", "record"]


@dataclass(frozen=True)
class Limits:
    """Limits in SI units. ``marginal_pct`` is a band inside the limits that passes with a flag."""

    kind: Kind = "record"
    low: float | None = None
    high: float | None = None
    nominal: float | None = None
    pct: float | None = None
    equals: Any = None
    marginal_pct: float | None = None
    unit: str = ""

    @classmethod
    def in_range(cls, low: float, high: float, unit: str = "", marginal_pct: float | None = None) -> "Limits":
        return cls("in_range", low=low, high=high, unit=unit, marginal_pct=marginal_pct)

    @classmethod
    def at_most(cls, high: float, unit: str = "", marginal_pct: float | None = None) -> "Limits":
        return cls("le", high=high, unit=unit, marginal_pct=marginal_pct)

    @classmethod
    def at_least(cls, low: float, unit: str = "", marginal_pct: float | None = None) -> "Limits":
        return cls("ge", low=low, unit=unit, marginal_pct=marginal_pct)

    @classmethod
    def within_pct(cls, nominal: float, pct: float, unit: str = "") -> "Limits":
        span = abs(nominal) * pct / 100.0
        return cls("within_pct", low=nominal - span, high=nominal + span, nominal=nominal,
                   pct=pct, unit=unit)

    @classmethod
    def equal_to(cls, value: Any) -> "Limits":
        return cls("equals", equals=value)

    def judge(self, value: Any) -> Verdict:
        """The one verdict function: every limit of a plan is judged here, in SI units.

        A missing value (None, NaN) is ERROR whatever the limit: nothing was measured. Numbers
        compare equal within 1e-9 relative (``equals: 400`` against 400.0000000001 Ah); text,
        flags and identities compare exactly (``True`` is not ``1``).
        """
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "error"
        if self.kind == "record":
            return "recorded"
        if self.kind == "equals":
            return "pass" if _same(value, self.equals) else "fail"
        if isinstance(value, (bool, str)) or not isinstance(value, (int, float)):
            return "error"  # a flag or text against a numeric bound: a check bug, not a pass
        if self.low is not None and value < self.low:
            return "fail"
        if self.high is not None and value > self.high:
            return "fail"
        if self.marginal_pct:
            span = self._span()
            band = span * self.marginal_pct / 100.0
            if ((self.low is not None and value < self.low + band)
                    or (self.high is not None and value > self.high - band)):
                return "marginal"
        return "pass"

    def resolution(self) -> float | None:
        """A hundredth of the finest digit the limit is written with (14.6 V -> 1 mV): the
        resolution a value is shown with beside it, so it reads against the limit."""
        places = []
        for bound in (self.low, self.high, self.nominal):
            if isinstance(bound, (int, float)) and not isinstance(bound, bool) and bound and math.isfinite(bound):
                mantissa, exponent = f"{abs(float(bound)):.6e}".split("e")
                digits = len(mantissa.replace(".", "").rstrip("0")) or 1
                places.append(int(exponent) - digits + 1)
        return 10.0 ** (min(places) - 2) if places else None

    @property
    def judged(self) -> bool:
        """True when the limit judges (anything but record-only)."""
        return self.kind != "record"

    def _span(self) -> float:
        if self.low is not None and self.high is not None:
            return abs(self.high - self.low)
        bound = self.high if self.high is not None else self.low
        return abs(bound or 0.0)

    def describe(self) -> str:
        """The limit in engineering form, as the console, Allure and the summary show it."""
        from harness.numbers import compact

        u = self.unit
        if self.kind == "within_pct":
            return f"{compact(self.nominal, u)} ± {self.pct:g} %"
        if self.kind == "in_range":
            return f"{compact(self.low, u)} .. {compact(self.high, u)}"
        if self.kind == "le":
            return f"<= {compact(self.high, u)}"
        if self.kind == "ge":
            return f">= {compact(self.low, u)}"
        if self.kind == "equals":
            return f"== {self.equals!r}" if isinstance(self.equals, str) else f"== {compact(self.equals, u)}"
        return "(recorded)"

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "low": self.low, "high": self.high, "nominal": self.nominal,
                "pct": self.pct, "equals": self.equals, "marginal_pct": self.marginal_pct,
                "unit": self.unit}


def _same(value: Any, expected: Any) -> bool:
    numeric = (int, float)
    if isinstance(value, bool) or isinstance(expected, bool):
        return isinstance(value, bool) and isinstance(expected, bool) and value == expected
    if isinstance(value, numeric) and isinstance(expected, numeric):
        return math.isclose(float(value), float(expected), rel_tol=1e-9, abs_tol=1e-12)
    return value == expected


@dataclass
class Measurement:
    name: str
    value: Any
    unit: str
    limits: Limits
    verdict: Verdict
    diagnosis: str | None
    at: float
    wall_time: float = field(default_factory=time.time)

    @property
    def shown(self) -> str:
        """The value in engineering form with its unit (``11.5 uV``, ``3.00 mOhm``)."""
        from harness.numbers import eng

        if isinstance(self.value, str):
            return repr(self.value)
        resolution = self.limits.resolution()
        digits = None
        if resolution and isinstance(self.value, (int, float)) and self.value:
            import math
            if math.isfinite(self.value):
                digits = max(3, int(math.floor(math.log10(abs(self.value))))
                             - int(math.floor(math.log10(resolution))) + 1)
        return eng(self.value, self.unit, digits=digits)

    def line(self) -> str:
        text = f"{self.name} = {self.shown} [{self.limits.describe()}] {self.verdict.upper()}"
        return text + (f" -- {self.diagnosis}" if self.diagnosis and self.verdict == "fail" else "")


class MeasurementFailed(AssertionError):
    """A step's measurement(s) failed: the message lists each with its diagnosis."""


Sink = Callable[[Measurement], None]


@dataclass
class Trace:
    """A recorded series (waveform, per-branch table, timeline) that a picture explains better
    than a number: the report draws it (harness/reporting/plots.py, by ``kind``) and keeps a CSV
    beside the picture.

    ``columns`` are equal-length sequences, the first one the x axis (or the category names);
    ``units`` gives each column's unit; ``marks`` holds the values to draw against -- limits,
    ratings, means, thresholds -- in the same units as the columns they belong to.
    """

    name: str
    kind: str  # inrush | sharing | timeline | vds | modules | xy
    columns: dict[str, list[Any]]
    units: dict[str, str] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)
    title: str = ""
    step: str = ""
    at: float = 0.0


TraceSink = Callable[[Trace], None]


class Recorder:
    """The ``measure`` fixture: judges, records to every sink at once, collects failures."""

    def __init__(self, clock_now: Callable[[], float], sinks: list[Sink] | None = None):
        self._now = clock_now
        self.sinks: list[Sink] = list(sinks or [])
        self.trace_sinks: list[TraceSink] = []
        self.taken: list[Measurement] = []
        self.traces: list[Trace] = []

    def __call__(self, name: str, value: Any, unit: str = "", limits: Limits | None = None,
                 diagnosis: str | None = None, stop: bool = False) -> Measurement:
        limits = limits or Limits()
        verdict = limits.judge(value)
        m = Measurement(name, value, unit or limits.unit, limits, verdict,
                        diagnosis if verdict in ("fail", "error", "marginal") else None, self._now())
        self.taken.append(m)
        for sink in self.sinks:
            sink(m)
        if stop and verdict in ("fail", "error"):
            raise MeasurementFailed(m.line())
        return m

    def trace(self, name: str, kind: str, columns: dict[str, Any], units: dict[str, str] | None = None,
              marks: dict[str, float | None] | None = None, title: str = "") -> Trace:
        """Keep a series for the report (plot + CSV). Never judges: verdicts come from measurements."""
        cols = {key: [_plain(v) for v in values] for key, values in columns.items()}
        lengths = {len(v) for v in cols.values()}
        if len(lengths) > 1:
            raise ValueError(f"trace '{name}': columns of different lengths {sorted(lengths)}")
        t = Trace(name, kind, cols, dict(units or {}),
                  {k: float(v) for k, v in (marks or {}).items() if v is not None}, title, at=self._now())
        self.traces.append(t)
        for sink in self.trace_sinks:
            sink(t)
        return t

    @property
    def failures(self) -> list[Measurement]:
        return [m for m in self.taken if m.verdict in ("fail", "error")]

    def verdict(self, since: int = 0) -> str:
        """The step's verdict from its measurements (from index ``since``): ERROR if a value is
        missing, FAIL if any failed, RECORDED if none was judged against a limit, else PASS."""
        taken = self.taken[since:]
        if any(m.verdict == "error" for m in taken):
            return "error"
        if any(m.verdict == "fail" for m in taken):
            return "fail"
        if not any(m.limits.judged for m in taken):
            return "recorded"
        return "pass"

    def raise_if_failed(self) -> None:
        if self.failures:
            raise MeasurementFailed("; ".join(m.line() for m in self.failures))


def _plain(value: Any) -> Any:
    """numpy scalars and the like as plain Python values (CSV and JSON friendly)."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    try:
        return value.item()
    except AttributeError:
        return str(value)
