"""Traces for the report: readings a check takes anyway, kept as timed rows or as a reduced
waveform for a picture (never judged).

:class:`TraceRows` files readings by bench time; :func:`waveform_columns` turns a captured
waveform into trace columns, keeping its peaks (:func:`peak_indices`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from instruments.roles import Waveform


# the most samples a trace keeps: a report picture shows no more, and a CSV stays small
TRACE_POINTS = 5000


def peak_indices(values: Sequence[float], limit: int = TRACE_POINTS) -> list[int]:
    """Indices of at most ``limit`` samples to keep of a long series: the first and the last
    (the span stays the capture's) and the lowest and the highest of each of equal slices, in
    time order. Every excursion survives -- the peak a measurement reports included -- where
    taking every n-th sample would step over a spike."""
    n = len(values)
    if n <= limit:
        return list(range(n))
    size = math.ceil(n / max((limit - 2) // 2, 1))
    keep = {0, n - 1}
    for start in range(0, n, size):
        chunk = range(start, min(start + size, n))
        keep.add(min(chunk, key=values.__getitem__))
        keep.add(max(chunk, key=values.__getitem__))
    return sorted(keep)


def waveform_columns(wave: Waveform, name: str, limit: int = TRACE_POINTS) -> dict[str, list[float]]:
    """A captured waveform as trace columns: ``t`` (s from the capture's start) and ``name``,
    reduced to ``limit`` samples with its peaks kept."""
    keep = peak_indices(wave.samples, limit)
    return {"t": [k * wave.interval_s for k in keep], name: [wave.samples[k] for k in keep]}


class TraceRows:
    """Readings a check takes anyway, kept as timed rows for a report trace (never judged).

    ``add(at, name=value, ...)`` files values under the bench time ``at``: readings of different
    quantities taken at the same moment share a row, a second reading of the same quantity gets
    a row of its own (a state that changed at that moment shows both sides). ``columns()`` gives
    ``t`` (s from ``origin``) and one column per name, None where a row has no reading of it,
    reduced to ``limit`` rows around the extremes of ``key`` when the check ran long."""

    def __init__(self, origin: float):
        self.origin = origin
        self.rows: list[dict[str, Any]] = []

    def add(self, at: float, **values: Any) -> None:
        t = at - self.origin
        last = self.rows[-1] if self.rows else None
        if last is not None and abs(last["t"] - t) < 1e-9 and not values.keys() & last.keys():
            last.update(values)
        else:
            self.rows.append({"t": t, **values})

    def columns(self, key: str | None = None, limit: int = TRACE_POINTS) -> dict[str, list[Any]]:
        names = list(dict.fromkeys(n for row in self.rows for n in row if n != "t"))
        rows = self.rows
        if key is not None and len(rows) > limit:
            series = [math.nan if row.get(key) is None else float(row[key]) for row in rows]
            rows = [rows[k] for k in peak_indices(series, limit)]
        elif len(rows) > limit:
            rows = rows[::math.ceil(len(rows) / limit)]
        out = {"t": [row["t"] for row in rows]}
        for name in names:
            values = [row.get(name) for row in rows]
            if any(v is not None for v in values):
                out[name] = values
        return out
