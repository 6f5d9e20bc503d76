"""Pictures and tables of recorded traces, for the qualification report.

A trace (:class:`harness.measure.Trace`) is a series a picture explains better than a number:
an inrush waveform, the branch currents of a sharing test, what the BMS did while the inverter
was quiet. The report attaches, for every trace, the PNG drawn here and a CSV of the same
columns, so a reader can check the picture against the data it was drawn from.

Drawing uses matplotlib's object API on an Agg canvas, never pyplot: no global figure registry
and no display, so each call owns its figure and a sink may render while a run goes on
(matplotlib promises no thread safety beyond that: a sink rendering from several threads at
once should take a lock around ``render``).
PNG metadata carries no software version (and Agg writes no date), so the same trace gives the
same bytes -- an emulated run's report is reproducible down to its pictures.

Conventions the renderers share: the first column is the x axis (or the category names); a
column whose unit is ``s`` is a time and is shown in µs, ms, s, min or h by its span; a mark
whose name ends in ``_s`` is a moment (a vertical line), any other mark a level in the unit of
the data it is drawn against (a horizontal line). On a timeline every mark is a moment.

What makes a fault readable (each rule a small pure helper, so it can be tested alone):

- every series of a plot its own (colour, line style) pair, for up to 40 series, and a marker
  beyond (:func:`style_cycle`); a long legend goes beside the axes, in columns;
- the faulty series in front: thicker, drawn last, labelled at its end, the others muted. It is
  the one a mark ``faulty_<column>`` (or ``highlight_<column>``; the column's name or a unique
  ending of it) names, else the one farthest across a limit level, else the clear outlier among
  series of one family (:func:`faulty_series`);
- a time axis zoomed to the event: with two or more moments lying in a small part of the record
  the x range is the moments' window with a margin (:func:`zoom_window`), in the unit that fits
  it, and the delay from the triggering moment to the trip/cut/reaction is written on a bracket
  (:func:`event_delay`);
- a y range that fits the data: a level far outside it (more than the data's own span away) is
  written as text, "limit 110 A (off scale)", instead of squashing the trace (:func:`fit_range`).

:func:`figure` gives the drawn figure without saving it; its lines carry a gid naming what they
show (``series:<column>``, ``level:<mark>``, ``moment:<mark>``; the faulty series' name is the
text ``faulty-label``), so a test can read a picture's artists rather than its pixels.
"""

from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from harness.measure import Trace
from harness.numbers import duration, eng

WIDTH_IN, HEIGHT_IN, DPI = 9.0, 5.0, 100  # 900 x 500 px: readable in Allure without zooming
DATA_COLOUR = "tab:blue"
OUTSIDE_COLOUR = "tab:red"
BAND_COLOUR = "tab:green"
MARK_COLOURS = ("tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:gray", "tab:olive", "tab:cyan")
UNIT_LABELS = {"degC": "°C", "us": "µs", "ohm": "Ω", "mohm": "mΩ", "A2s": "A²s"}
# (largest span shown in this unit, unit, factor from seconds)
TIME_UNITS = ((2e-3, "us", 1e6), (2.0, "ms", 1e3), (300.0, "s", 1.0), (3 * 3600.0, "min", 1 / 60.0),
              (math.inf, "h", 1 / 3600.0))
MANY_POINTS = 40  # a line with fewer samples gets markers: a sparse series is read point by point
FEW_READINGS = 10  # a timeline quantity read this seldom gets markers: one reading is no line

# Series styles: a qualitative cycle (tab10), then the line style, then a marker, so the first
# 40 series differ in (colour, line style) and the next ones also in their marker (7 is prime
# to 40: (colour, line style, marker) repeats only after 280 series).
SERIES_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
                  "tab:gray", "tab:olive", "tab:cyan")
LINE_STYLES = ("-", "--", "-.", ":")
SERIES_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
DISTINCT_LINES = len(SERIES_COLOURS) * len(LINE_STYLES)
# levels and moments in dash patterns no series uses, so no legend entry looks like a series'
LEVEL_DASHES = (0, (7.0, 2.5))
MOMENT_DASHES = (0, (3.0, 1.5, 1.0, 1.5, 1.0, 1.5))
FAULTY_WIDTH, NORMAL_WIDTH, MUTED_WIDTH, MUTED_ALPHA = 2.8, 1.2, 1.0, 0.45
LEGEND_INSIDE = 8  # more legend entries than this go beside the axes, in columns
LEGEND_ROW_PX = 13  # one legend row at fontsize 7
HIGHLIGHT_PREFIXES = ("faulty_", "highlight_")
# a mark is a limit the faulty series may cross when its name says so (a mean or threshold is not)
LIMIT_WORDS = ("limit", "rating", "max", "min")
OUTLIER_SCORE = 3.0  # distance from the family's median, in the family's own spread
OUTLIER_SHARE = 0.05  # ... and at least this share of the family's whole range
OUTLIER_FLOOR = 0.02  # a spread counts as at least this share of it (identical peers: no noise)
OUTLIER_ROWS = 0.25  # ... in at least this share of the rows compared: a fault lasts, a noisy reading not
OUTLIER_FAMILY = 4  # a family needs this many members to have an outlier
# zoom: the moments' window with this share of their span each side, if it is at most
# ZOOM_GAIN of the record (else the whole record is shown)
ZOOM_MARGIN, ZOOM_GAIN = 0.3, 0.5
# moments that bound a delay: the triggering one, the reaction, and deadlines (no event)
START_WORDS = ("warning", "onset", "step", "stopped", "silenced", "start", "threshold")
END_WORDS = ("trip", "cut", "react", "response", "alarm")
DEADLINE_WORDS = ("limit", "delay_min", "delay_max", "deadline")
OFF_SCALE_REACH = 1.0  # a level more than this many data spans outside the data is off scale

Renderer = Callable[[Figure, Trace], None]


class Style(NamedTuple):
    colour: str
    linestyle: str
    marker: str


class Fit(NamedTuple):
    """A y range (``low``, ``high``; NaN when there is nothing to fit) and the levels left out."""

    low: float
    high: float
    off_scale: dict[str, float]


# ====================================================================== public API
def write_csv(trace: Trace, path: Path) -> Path:
    """The trace's columns as CSV: one ``# name=value unit`` line per mark first (so the limits
    travel with the data), then a ``column [unit]`` header and one row per sample."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        for name, value in trace.marks.items():
            unit = mark_unit(trace, name)
            handle.write(f"# {name}={value:.10g}{' ' + unit if unit else ''}\n")
        writer = csv.writer(handle)
        writer.writerow([column_header(name, trace.units.get(name, "")) for name in trace.columns])
        writer.writerows(zip(*trace.columns.values()))
    return path


def render(trace: Trace, path: Path) -> Path:
    """The trace as a 900 x 500 px PNG, drawn by the renderer for its ``kind`` (an unknown kind
    gets a plain x-y plot rather than no picture)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure(trace).savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    return path


def figure(trace: Trace) -> Figure:
    """The trace drawn on a new 900 x 500 px figure (what :func:`render` saves)."""
    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    if _row_count(trace):
        RENDERERS.get(trace.kind, _xy)(fig, trace)
    else:
        _empty(fig)
    fig.suptitle(trace.title or trace.name.replace("_", " "), fontsize=12)
    return fig


def column_header(name: str, unit: str) -> str:
    return f"{name} [{unit}]" if unit else name


def mark_unit(trace: Trace, name: str) -> str:
    """A mark's unit: the trace's own entry for it if any, else that of what it is drawn against
    (``*_pct``: %, a moment or any mark of a timeline: the x column, a level: the first data
    column; a ``faulty_<column>`` mark names a series and has none)."""
    if name in trace.units and name not in trace.columns:
        return trace.units[name]
    if name.startswith(HIGHLIGHT_PREFIXES):
        return ""
    if name.endswith("_pct"):
        return "%"
    names = list(trace.columns)
    if not names:
        return ""
    if name.endswith("_s") or trace.kind == "timeline":
        return trace.units.get(names[0], "")
    return trace.units.get(names[1], "") if len(names) > 1 else ""


# ====================================================================== pure helpers
def style_cycle(n: int) -> list[Style]:
    """``n`` series styles: no two of the first 40 share (colour, line style), no two of the
    first 280 share (colour, line style, marker)."""
    return [Style(SERIES_COLOURS[k % len(SERIES_COLOURS)],
                  LINE_STYLES[(k // len(SERIES_COLOURS)) % len(LINE_STYLES)],
                  SERIES_MARKERS[k % len(SERIES_MARKERS)]) for k in range(max(n, 0))]


def fit_range(values: Iterable[float], limits: Mapping[str, float] | None = None,
              reach: float = OFF_SCALE_REACH) -> Fit:
    """The y range for ``values`` and the ``limits`` worth showing with them: a limit within
    ``reach`` times the data's span of the data is in range (so the data keeps at least half
    the axis), one farther away is returned in ``off_scale`` and left out of the range."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    levels = {n: float(v) for n, v in (limits or {}).items() if v is not None and math.isfinite(float(v))}
    if not finite:
        finite = list(levels.values())
        if not finite:
            return Fit(math.nan, math.nan, {})
    low, high = min(finite), max(finite)
    span = high - low if high > low else abs(high)
    near = {n: v for n, v in levels.items() if low - reach * span <= v <= high + reach * span}
    low, high = min([low, *near.values()]), max([high, *near.values()])
    pad = 0.05 * (high - low) if high > low else (0.1 * abs(high) or 1.0)
    low, high = low - pad, high + pad
    off = {n: v for n, v in levels.items() if n not in near and not low <= v <= high}
    return Fit(low, high, off)


def zoom_window(times: Iterable[float], marks: Mapping[str, float] | Iterable[float]) -> tuple[float, float] | None:
    """The x range to show for a record at ``times`` with moments ``marks`` (same unit): from
    the first moment to the last with ``ZOOM_MARGIN`` of their span either side, kept within the
    record (but for a moment beyond it: a deadline after the last reading). None -- show it
    all -- with fewer than two moments or when that window is more than ``ZOOM_GAIN`` of it."""
    moments = sorted(float(v) for v in (marks.values() if isinstance(marks, Mapping) else marks)
                     if v is not None and math.isfinite(float(v)))
    finite = [float(t) for t in times if t is not None and math.isfinite(float(t))]
    if len(moments) < 2 or not finite:
        return None
    first, last = moments[0], moments[-1]
    whole = max(max(finite), last) - min(min(finite), first)
    margin = ZOOM_MARGIN * (last - first) if last > first else 0.01 * whole
    # no margin before the record's start or after its end, unless a moment lies beyond
    low = first - margin if first < min(finite) else max(first - margin, min(finite))
    high = last + margin if last > max(finite) else min(last + margin, max(finite))
    if whole <= 0 or high - low > ZOOM_GAIN * whole:
        return None
    return low, high


def event_delay(marks: Mapping[str, float]) -> tuple[str, str, float] | None:
    """(start, end, seconds) of the event the moments describe: ``end`` the first trip, cut or
    reaction (by name), ``start`` the latest trigger before it (a warning, onset or step rather
    than a threshold, else the latest moment); deadlines (``*limit*``, ``delay_min/max``) are
    none of these. None when the moments hold no such pair."""
    events = {n: float(v) for n, v in marks.items()
              if v is not None and math.isfinite(float(v)) and not any(w in n for w in DEADLINE_WORDS)}
    ends = [n for n in events if any(w in n.removesuffix("_s") for w in END_WORDS)]
    if not ends:
        return None
    end = min(ends, key=lambda n: (events[n], n))
    before = {n: v for n, v in events.items() if n != end and v <= events[end]}
    if not before:
        return None
    start = next((max(named, key=lambda n: (before[n], n)) for word in START_WORDS
                  if (named := [n for n in before if word in n])), None)
    start = start or max(before, key=lambda n: (before[n], n))
    return start, end, events[end] - before[start]


def faulty_series(series: Mapping[str, Sequence[Any]], limits: Mapping[str, float] | None = None) -> str | None:
    """The series a reader should look at first, inferred (rows aligned, None/NaN for a gap):

    1. the one farthest across a limit (``limits``: an upper one when it lies above the data's
       median, a lower one below it);
    2. else the clear outlier of a family (names alike but for their digits: ``temp_s1p3``
       among ``temp_s1p1..4``; at least 4 members): farther from the median of the others than
       ``OUTLIER_SCORE`` times their spread and ``OUTLIER_SHARE`` of the family's range, in at
       least ``OUTLIER_ROWS`` of the rows (a noisy reading is no fault);
    3. else None: nothing stands out, nothing is highlighted.
    """
    data = {name: np.array(_numbers(values), dtype=float) for name, values in series.items()}
    data = {name: values for name, values in data.items() if np.isfinite(values).any()}
    if not data:
        return None
    crossed = _farthest_across(data, limits or {})
    if crossed is not None:
        return crossed
    return _clear_outlier(data)


# ====================================================================== one renderer per kind
def _inrush(fig: Figure, trace: Trace) -> None:
    """Current against time in ms (contactor closing at 0): the surge's height against the peak
    limit and how long it stays above the settle threshold are what the reader looks for."""
    _waveform(fig, trace, time_unit="ms")


def _vds(fig: Figure, trace: Trace) -> None:
    """Vds across the opened switch against its rating and the derated limit: whether the
    turn-off spike and the settled string voltage stay under them. A turn-off lasts µs, the
    settled part ms: the time unit follows the capture's span."""
    _waveform(fig, trace, time_unit=None)


def _sharing(fig: Figure, trace: Trace) -> None:
    """One bar per branch with the mean and the tolerance band around it; a branch outside the
    band is red, so the one carrying too much (or nothing) stands out without reading numbers.
    Several value columns (e.g. load and charge) get a panel each."""
    names = [str(v) for v in _first(trace)]
    columns = _value_columns(trace)
    axes = fig.subplots(1, len(columns), squeeze=False)[0]
    for ax, column in zip(axes, columns):
        values = _numbers(trace.columns[column])
        mean = _mark_for(trace, "mean", column, len(columns))
        mean = _mean(values) if mean is None else mean
        tolerance = _mark_for(trace, "tolerance_pct", column, len(columns))
        _bars_with_band(ax, names, values, mean, tolerance, trace.units.get(column, ""))
        if len(columns) > 1:
            ax.set_title(column.replace("_", " "), fontsize=10)
        ax.set_ylabel(_label(column, trace.units.get(column, "")))


def _timeline(fig: Figure, trace: Trace) -> None:
    """What happened when, on one time axis: a panel per quantity (quantities sharing a unit,
    such as charge and discharge limit, share a panel), states drawn as steps because they hold
    until the next reading; marks are moments (keep-alive stopped, deadline) across all panels.
    An event in a small part of a long record (a trip after an hour's discharge) is zoomed to,
    its delay written on a bracket."""
    moments = _drawn_marks(trace)
    x, xunit, window = _time_x(trace, moments, default_s=True)
    panels = _panels(trace)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, columns in zip(axes, panels):
        visible: list[float] = []
        for k, column in enumerate(columns):  # dashes keep a line visible where another covers it
            xs, ys = _readings(x, trace.columns[column])
            shown = _visible(xs, ys, window)
            visible += shown
            ax.step(xs, ys, where="post", color=SERIES_COLOURS[k % len(SERIES_COLOURS)], lw=1.2,
                    ls=LINE_STYLES[k % len(LINE_STYLES)], marker="o" if len(shown) < FEW_READINGS else None,
                    ms=4, label=column.replace("_", " "), gid=f"series:{column}")
        _panel_axis(ax, trace, columns, visible if window else None)
    factor = _time_factor(trace, xunit)
    handles = _vertical_marks(list(axes), moments, factor, xunit, step=_step(x, window))
    _zoom(list(axes), trace, moments, factor, xunit, window)
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), fontsize=8)
    axes[-1].set_xlabel(_time_label(trace, xunit, window))


def _modules(fig: Figure, trace: Trace) -> None:
    """Per-module SOC and temperature over time, one line per module: drift shows as lines that
    fan out, a warm module as the one line above the rest (drawn in front and named)."""
    moments = _moments(_drawn_marks(trace))
    x, xunit, window = _time_x(trace, moments, default_s=True)
    families = _module_families(trace)
    axes = fig.subplots(len(families), 1, sharex=True, squeeze=False)[:, 0]
    entries = []
    for ax, (prefix, what, columns) in zip(axes, families):
        unit = trace.units.get(columns[0], "")
        levels = {n: v for n, v in _levels(trace).items() if n.startswith(prefix)}
        handles, visible = _draw_series(ax, x, trace, columns, [c[len(prefix):] or c for c in columns],
                                        unit, levels, window)
        entries.append(handles + _level_marks(ax, visible, levels, unit))
        ax.set_ylabel(_label(what, unit))
        ax.grid(True, alpha=0.3)
    factor = _time_factor(trace, xunit)
    entries[0] += _vertical_marks(list(axes), moments, factor, xunit, step=_step(x, window))
    for ax, handles in zip(axes, entries):
        _legend(ax, handles, len(families))
    _zoom(list(axes), trace, moments, factor, xunit, window)
    axes[-1].set_xlabel(_time_label(trace, xunit, window))


def _xy(fig: Figure, trace: Trace) -> None:
    """Anything else: every value column against the first, marks as levels or moments; many
    series each their own style, the faulty one in front and named."""
    ax = fig.add_subplot()
    moments = _moments(_drawn_marks(trace))
    first = list(trace.columns)[0]
    timed = trace.units.get(first) == "s"
    if timed:
        x, xunit, window = _time_x(trace, moments, default_s=False)
    else:
        x, xunit, window = _numbers(trace.columns[first]), trace.units.get(first, ""), None
    if x and all(math.isnan(v) for v in x):  # names, not numbers: one position each
        ax.set_xticks(range(len(x)), [str(v) for v in _first(trace)], rotation=30, ha="right")
        x = [float(k) for k in range(len(x))]
    columns = _value_columns(trace)
    units = {trace.units.get(c, "") for c in columns}
    unit = units.pop() if len(units) == 1 else ""
    levels = _levels(trace)
    handles, visible = _draw_series(ax, x, trace, columns, [c.replace("_", " ") for c in columns], unit,
                                    levels, window)
    handles += _level_marks(ax, visible, levels, unit)
    ax.set_ylabel(_label(os.path.commonprefix(columns).strip("_ ") or "value", unit))
    factor = _time_factor(trace, xunit) if timed else 1.0
    handles += _vertical_marks([ax], moments, factor, xunit, first=len(levels), step=_step(x, window))
    _zoom([ax], trace, moments, factor, xunit, window)
    ax.set_xlabel(_time_label(trace, xunit, window) if timed else _label(first, xunit))
    _legend(ax, handles)
    ax.grid(True, alpha=0.3)


RENDERERS: dict[str, Renderer] = {"inrush": _inrush, "vds": _vds, "sharing": _sharing,
                                  "timeline": _timeline, "modules": _modules, "xy": _xy}


# ====================================================================== shared drawing
def _waveform(fig: Figure, trace: Trace, time_unit: str | None) -> None:
    """One captured quantity against time, its levels as dashed lines (or written, when far off
    the data's scale) and its peak (largest magnitude, the figure a measurement reports)
    annotated."""
    ax = fig.add_subplot()
    x, xunit = _time_axis(trace, time_unit)
    column = _value_columns(trace)[0]
    unit = trace.units.get(column, "")
    y = _numbers(trace.columns[column])
    handles = ax.plot(x, y, color=DATA_COLOUR, lw=1.0, label=column.replace("_", " "), gid=f"series:{column}")
    levels = _levels(trace)
    handles += _level_marks(ax, y, levels, unit)
    handles += _vertical_marks([ax], _moments(_drawn_marks(trace)), _time_factor(trace, xunit), xunit,
                               first=len(levels), step=_step(x, None))
    timed = trace.units.get(list(trace.columns)[0], "s") == "s"
    _annotate_peak(ax, x, y, unit, xunit, _time_factor(trace, xunit) if timed else None)
    ax.set_xlabel(_label("time", xunit))
    ax.set_ylabel(_label(column, unit))
    _legend(ax, handles)
    ax.grid(True, alpha=0.3)


def _draw_series(ax: Axes, x: list[float], trace: Trace, columns: list[str], labels: list[str], unit: str,
                 levels: dict[str, float], window: tuple[float, float] | None) -> tuple[list[Any], list[float]]:
    """Every column as a line of its own style; the faulty one (:func:`_faulty`) last, thicker and
    named at its end, the others muted. Returns the legend handles (in column order) and the
    values inside ``window`` (all of them without one), for the y range."""
    styles = style_cycle(len(columns))
    faulty = _faulty(trace, columns, levels)
    many = len(columns) > DISTINCT_LINES  # beyond (colour, line style) pairs: markers tell them apart
    handles: dict[str, Any] = {}
    visible: list[float] = []
    for k in sorted(range(len(columns)), key=lambda i: columns[i] == faulty):  # the faulty one last
        column, style = columns[k], styles[k]
        xs, ys = _readings(x, trace.columns[column])
        visible += _visible(xs, ys, window)
        sparse = len(xs) < MANY_POINTS
        marker = style.marker if sparse or many else None
        if column == faulty:
            width, alpha, zorder = FAULTY_WIDTH, 1.0, 4
        elif faulty is None:
            width, alpha, zorder = NORMAL_WIDTH, 1.0, 2
        else:
            width, alpha, zorder = MUTED_WIDTH, MUTED_ALPHA, 2
        (line,) = ax.plot(xs, ys, color=style.colour, ls=style.linestyle, lw=width, alpha=alpha, zorder=zorder,
                          marker=marker, ms=5 if column == faulty else 4,
                          markevery=None if sparse else max(1, len(xs) // 12),
                          label=labels[k] + (" (faulty)" if column == faulty else ""), gid=f"series:{column}")
        handles[column] = line
        if column == faulty and xs:
            _label_end(ax, xs, ys, labels[k], unit, style.colour, window)
    return [handles[c] for c in columns], visible


def _label_end(ax: Axes, xs: list[float], ys: list[float], label: str, unit: str, colour: str,
               window: tuple[float, float] | None) -> None:
    """The faulty series' name and last value, written at its last point (inside the window)."""
    inside = [k for k, a in enumerate(xs) if window is None or window[0] <= a <= window[1]] or [len(xs) - 1]
    k = inside[-1]
    ax.annotate(f"{label}: {_value_text(ys[k], unit)}", xy=(xs[k], ys[k]), xytext=(-4, 7), gid="faulty-label",
                textcoords="offset points", ha="right", va="bottom", fontsize=9, fontweight="bold",
                color=colour, zorder=6, bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": colour,
                                              "alpha": 0.85, "lw": 0.8})


def _bars_with_band(ax: Axes, names: list[str], values: list[float], mean: float,
                    tolerance_pct: float | None, unit: str) -> None:
    band = abs(mean) * tolerance_pct / 100.0 if tolerance_pct is not None and not math.isnan(mean) else None
    colours = [OUTSIDE_COLOUR if band is not None and abs(v - mean) > band else DATA_COLOUR for v in values]
    bars = ax.bar(names, values, color=colours, width=0.6)
    ax.bar_label(bars, fmt="%.4g", fontsize=8, padding=2)
    if not math.isnan(mean):
        ax.axhline(mean, color="0.2", ls="--", lw=1, label=f"mean {_value_text(mean, unit)}")
    if band is not None:
        ax.axhspan(mean - band, mean + band, color=BAND_COLOUR, alpha=0.15,
                   label=f"mean ± {tolerance_pct:g} %")
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, axis="y", alpha=0.3)


def _annotate_peak(ax: Axes, x: list[float], y: list[float], unit: str, xunit: str, factor: float | None) -> None:
    """The largest magnitude, its value and when (``factor``: seconds to the x unit; None: the x
    axis is no time)."""
    finite = [k for k, v in enumerate(y) if not math.isnan(v)]
    if not finite:
        return
    k = max(finite, key=lambda i: abs(y[i]))
    at = eng(x[k] / factor, "s") if factor else f"{x[k]:.4g} {_unit(xunit)}".rstrip()
    ax.plot([x[k]], [y[k]], "o", color=OUTSIDE_COLOUR, ms=5)
    ax.annotate(f"peak {_value_text(y[k], unit)}\nat {at}", xy=(x[k], y[k]),
                xytext=(18, -28 if y[k] >= 0 else 18), textcoords="offset points", fontsize=9,
                arrowprops={"arrowstyle": "->", "color": "0.3"})


def _level_marks(ax: Axes, values: list[float], levels: dict[str, float], unit: str) -> list[Any]:
    """Levels as dashed lines with the y range fitted to ``values`` (:func:`fit_range`); a level
    far off that scale is written above the axes instead ("peak limit 110 A (off scale ↑)").
    Returns the legend handles of the lines."""
    fit = fit_range(values, levels)
    handles = []
    off = []
    for k, (name, value) in enumerate(levels.items()):
        colour = MARK_COLOURS[k % len(MARK_COLOURS)]
        text = f"{name.replace('_', ' ')} {_value_text(value, unit)}"
        if name in fit.off_scale:
            off.append(f"{text} (off scale {'↑' if value > fit.high else '↓'})")
            continue
        handles.append(ax.axhline(value, color=colour, ls=LEVEL_DASHES, lw=1.3, label=text, gid=f"level:{name}"))
    if not math.isnan(fit.low):
        ax.set_ylim(fit.low, fit.high)
    if off:
        ax.set_title("; ".join(off), loc="right", fontsize=8, color=MARK_COLOURS[0])
    return handles


def _vertical_marks(axes: list[Axes], marks: dict[str, float], factor: float, xunit: str,
                    first: int = 0, step: float = 0.0) -> list[Any]:
    """Moments as dotted vertical lines on every panel; their legend entries come back (once).
    ``first``: the marks already drawn as levels, whose colours these must not repeat; ``step``:
    the resolution the moments are written with (in the axis unit)."""
    handles = []
    decimals = max(0, min(6, -math.floor(math.log10(step)))) if step > 0 else 0
    for k, (name, value) in enumerate(marks.items(), start=first):
        label = f"{name.removesuffix('_s').replace('_', ' ')} {value * factor:.{decimals}f} {_unit(xunit)}".rstrip()
        for n, ax in enumerate(axes):
            line = ax.axvline(value * factor, color=MARK_COLOURS[k % len(MARK_COLOURS)], ls=MOMENT_DASHES, lw=1.3,
                              label=label if n == 0 else None, gid=f"moment:{name}")
            if n == 0:
                handles.append(line)
    return handles


def _zoom(axes: list[Axes], trace: Trace, moments: dict[str, float], factor: float, xunit: str,
          window: tuple[float, float] | None) -> None:
    """The x range set to ``window`` (shared axes follow), and the event's delay on a bracket
    across the top panel."""
    if window is not None:
        axes[0].set_xlim(*window)
        for ax in axes:
            ax.ticklabel_format(axis="x", useOffset=False, style="plain")
    delay = event_delay(moments)
    if delay is None:
        return
    start, end, seconds = delay
    ax = axes[0]
    a, b = moments[start] * factor, moments[end] * factor
    where = ax.get_xaxis_transform()  # x in data, y in axes fraction
    ax.annotate("", xy=(b, 0.9), xytext=(a, 0.9), xycoords=where, textcoords=where, zorder=6,
                arrowprops={"arrowstyle": "|-|,widthA=0.4,widthB=0.4", "color": "0.1", "lw": 1.3,
                            "shrinkA": 0, "shrinkB": 0})
    name = end.removesuffix("_s").replace("_", " ")
    ax.annotate(f"{name} delay {_delay_text(seconds)}", xy=((a + b) / 2, 0.93), xycoords=where,
                ha="center", va="bottom", fontsize=10, fontweight="bold", zorder=6,
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.85})
    ax.annotate(f"from {start.removesuffix('_s').replace('_', ' ')}", xy=((a + b) / 2, 0.87), xycoords=where,
                ha="center", va="top", fontsize=8, zorder=6, color="0.25")


def _panel_axis(ax: Axes, trace: Trace, columns: list[str], visible: list[float] | None = None) -> None:
    """A timeline panel's y axis: yes/no for a state, the quantity and unit otherwise (fitted to
    ``visible``, the readings in a zoomed window)."""
    if all(_is_flag(trace.columns[c]) for c in columns):
        ax.set_yticks([0, 1], ["no", "yes"])
        ax.set_ylim(-0.25, 1.25)
    else:
        if all(_is_count(trace.columns[c]) for c in columns):
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        fit = fit_range(visible or [])
        if visible and not math.isnan(fit.low):
            ax.set_ylim(fit.low, fit.high)
    unit = trace.units.get(columns[0], "")
    name = columns[0] if len(columns) == 1 else ""
    ax.set_ylabel(_label(name.replace("_", " "), unit), fontsize=8, rotation=0, ha="right", va="center")
    if len(columns) > 1:
        ax.legend(fontsize=7, loc="upper right")
    ax.grid(True, alpha=0.3)


def _legend(ax: Axes, handles: list[Any], panels: int = 1) -> None:
    """A legend that fits: inside for a few entries, else beside the axes in as many columns as
    the panel's height needs."""
    if len(handles) <= 1:
        return
    if len(handles) <= LEGEND_INSIDE:
        ax.legend(handles=handles, fontsize=8 if len(handles) <= 6 else 7, loc="best")
        return
    rows = max(4, int(HEIGHT_IN * DPI * 0.8 / panels / LEGEND_ROW_PX))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
              ncols=math.ceil(len(handles) / rows), handlelength=2.6, columnspacing=1.0)


def _empty(fig: Figure) -> None:
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, "no samples recorded", ha="center", va="center", fontsize=14, transform=ax.transAxes)
    ax.set_axis_off()


# ====================================================================== data helpers
def _row_count(trace: Trace) -> int:
    return min((len(v) for v in trace.columns.values()), default=0) if len(trace.columns) > 1 else 0


def _first(trace: Trace) -> list[Any]:
    return next(iter(trace.columns.values()))


def _value_columns(trace: Trace) -> list[str]:
    return list(trace.columns)[1:]


def _numbers(values: Sequence[Any]) -> list[float]:
    """Plottable floats: True/False as 1/0 (states), None and text as NaN (a gap)."""
    out = []
    for value in values:
        if isinstance(value, bool):
            out.append(1.0 if value else 0.0)
            continue
        try:
            out.append(float(value))
        except (TypeError, ValueError):
            out.append(math.nan)
    return out


def _readings(x: list[float], values: Sequence[Any]) -> tuple[list[float], list[float]]:
    """The (x, y) pairs where the column has a reading. A row without one is another quantity's
    reading at that moment, not a gap: a line joins a quantity's own readings (a state holds)."""
    pairs = [(a, b) for a, b in zip(x, _numbers(values)) if not (math.isnan(a) or math.isnan(b))]
    return [a for a, _ in pairs], [b for _, b in pairs]


def _visible(xs: list[float], ys: list[float], window: tuple[float, float] | None) -> list[float]:
    """The readings a window shows: those inside it and the one either side (a line or a held
    state reaches into the window from them)."""
    if window is None:
        return list(ys)
    inside = [k for k, a in enumerate(xs) if window[0] <= a <= window[1]]
    before = [k for k, a in enumerate(xs) if a < window[0]][-1:]
    after = [k for k, a in enumerate(xs) if a > window[1]][:1]
    return [ys[k] for k in before + inside + after]


def _is_count(values: Sequence[Any]) -> bool:
    return all(isinstance(v, int) for v in values if v is not None)


def _is_flag(values: Sequence[Any]) -> bool:
    present = [v for v in values if v is not None]
    return bool(present) and all(isinstance(v, bool) for v in present)


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _mark_for(trace: Trace, name: str, column: str, columns: int) -> float | None:
    """``<name>_<column>`` for one of several value columns, else ``<name>``."""
    specific = trace.marks.get(f"{name}_{column}")
    if specific is not None or (columns > 1 and name == "mean"):
        return specific
    return trace.marks.get(name)


def _drawn_marks(trace: Trace) -> dict[str, float]:
    """The marks drawn as lines: all but those naming the faulty series."""
    return {n: v for n, v in trace.marks.items() if not n.startswith(HIGHLIGHT_PREFIXES)}


def _moments(marks: dict[str, float]) -> dict[str, float]:
    return {n: v for n, v in marks.items() if n.endswith("_s")}


def _levels(trace: Trace) -> dict[str, float]:
    return {n: v for n, v in _drawn_marks(trace).items() if not n.endswith("_s")}


def _faulty(trace: Trace, columns: list[str], levels: dict[str, float]) -> str | None:
    """The series of ``columns`` to draw in front: the one a ``faulty_<column>`` (or
    ``highlight_<column>``) mark names -- a trace naming one names none by inference -- else the
    one :func:`faulty_series` finds against the limit levels."""
    named = [n.split("_", 1)[1] for n in trace.marks if n.startswith(HIGHLIGHT_PREFIXES)]
    if named:
        for target in named:
            if target in columns:
                return target
            ending = [c for c in columns if c.endswith(target)]
            if len(ending) == 1:
                return ending[0]
        return None
    limits = {n: v for n, v in levels.items() if any(w in n for w in LIMIT_WORDS)}
    return faulty_series({c: trace.columns[c] for c in columns}, limits)


def _farthest_across(data: dict[str, np.ndarray], limits: Mapping[str, float]) -> str | None:
    if not limits:
        return None
    median = float(np.median(np.concatenate([v[np.isfinite(v)] for v in data.values()])))
    best: tuple[float, str] | None = None
    for limit in limits.values():
        if limit is None or not math.isfinite(limit):
            continue
        for name, values in data.items():
            finite = values[np.isfinite(values)]
            beyond = float(finite.max() - limit) if limit > median else float(limit - finite.min())
            if beyond > 0 and (best is None or beyond > best[0]):
                best = (beyond, name)
    return best[1] if best else None


def _clear_outlier(data: dict[str, np.ndarray]) -> str | None:
    families: dict[str, list[str]] = {}
    for name in data:
        families.setdefault(re.sub(r"\d+", "#", name), []).append(name)
    best: tuple[float, str] | None = None
    for members in families.values():
        if len(members) < OUTLIER_FAMILY:
            continue
        rows = np.column_stack([data[m] for m in members])
        whole = float(np.nanmax(rows) - np.nanmin(rows))
        if not whole > 0:
            continue
        for k, member in enumerate(members):
            others = np.delete(rows, k, axis=1)
            enough = (np.isfinite(others).sum(axis=1) >= OUTLIER_FAMILY - 1) & np.isfinite(rows[:, k])
            if not enough.any():
                continue
            others, own = others[enough], rows[enough, k]
            deviation = np.abs(own - np.nanmedian(others, axis=1))
            spread = np.maximum(np.nanmax(others, axis=1) - np.nanmin(others, axis=1), OUTLIER_FLOOR * whole)
            score = np.where(deviation >= OUTLIER_SHARE * whole, deviation / spread, 0.0)
            top = float(score.max())
            lasting = float((score >= OUTLIER_SCORE).mean()) >= OUTLIER_ROWS
            if lasting and (best is None or top > best[0]):
                best = (top, member)
    return best[1] if best else None


def _time_axis(trace: Trace, unit: str | None) -> tuple[list[float], str]:
    """The first column as a time in ``unit`` (or the unit its span reads best in)."""
    name = list(trace.columns)[0]
    x = _numbers(trace.columns[name])
    if trace.units.get(name, "s") != "s":
        return x, trace.units.get(name, "")
    if unit is None:
        finite = [v for v in x if not math.isnan(v)]
        span = (max(finite) - min(finite)) if finite else 0.0
        unit = _unit_for_span(span)
    factor = _factor(unit)
    return [v * factor for v in x], unit


def _time_x(trace: Trace, moments: dict[str, float],
            default_s: bool) -> tuple[list[float], str, tuple[float, float] | None]:
    """The x axis of a plot against time, and the window to zoom to (in the axis unit) if the
    moments make an event of a small part of the record (:func:`zoom_window`). A zoomed axis
    shows the window in the unit its span reads best in, but never in one whose numbers run
    past 5 digits (a 1 s trip after an hour: 3630.0 .. 3631.5 s, not 3630000 ms)."""
    name = list(trace.columns)[0]
    unit = trace.units.get(name, "s" if default_s else "")
    raw = _numbers(trace.columns[name])
    window = zoom_window(raw, moments)
    if unit != "s":
        return raw, unit, window
    if window is None:
        x, shown = _time_axis(trace, None)
        return x, shown, None
    shown = _unit_for_span(window[1] - window[0])
    while max(abs(window[0]), abs(window[1])) * _factor(shown) >= 1e5 and shown != TIME_UNITS[-1][1]:
        shown = TIME_UNITS[[u for _, u, _ in TIME_UNITS].index(shown) + 1][1]
    factor = _factor(shown)
    return [v * factor for v in raw], shown, (window[0] * factor, window[1] * factor)


def _unit_for_span(span: float) -> str:
    return next(u for limit, u, _ in TIME_UNITS if span <= limit)


def _step(x: list[float], window: tuple[float, float] | None) -> float:
    """The resolution moments are written with: a 100th of what the axis shows."""
    if window is not None:
        return (window[1] - window[0]) / 100.0
    finite = [v for v in x if not math.isnan(v)]
    return (max(finite) - min(finite)) / 100.0 if len(finite) > 1 else 0.0


def _time_label(trace: Trace, unit: str, window: tuple[float, float] | None) -> str:
    label = _label("time", unit)
    if window is None:
        return label
    name = list(trace.columns)[0]
    times = [v for v in _numbers(trace.columns[name]) if not math.isnan(v)]
    whole = max(times) - min(times) if times else 0.0
    record = duration(whole) if trace.units.get(name, "s") == "s" else f"{whole:.4g} {_unit(unit)}".rstrip()
    return f"{label} -- zoomed to the event, of a record of {record}"


def _delay_text(seconds: float) -> str:
    return eng(seconds, "s") if abs(seconds) < 120 else duration(seconds)


def _value_text(value: float, unit: str) -> str:
    """A value in engineering form, its unit as the axes write it (°C, not degC)."""
    text = eng(value, unit)
    for raw, shown in (("degC", "°C"),):
        if text.endswith(" " + raw):
            text = text[: -len(raw)] + shown
    return text


def _time_factor(trace: Trace, shown: str) -> float:
    """Seconds to the unit the axis shows (1 when the x column is not in seconds)."""
    name = list(trace.columns)[0]
    return _factor(shown) if trace.units.get(name, "s") == "s" else 1.0


def _factor(unit: str) -> float:
    return next((f for _, u, f in TIME_UNITS if u == unit), 1.0)


def _panels(trace: Trace) -> list[list[str]]:
    """Timeline panels: columns with the same (non-empty) unit together, each state alone."""
    panels: list[list[str]] = []
    by_unit: dict[str, list[str]] = {}
    for column in _value_columns(trace):
        unit = trace.units.get(column, "")
        if not unit:
            panels.append([column])
        elif unit in by_unit:
            by_unit[unit].append(column)
        else:
            by_unit[unit] = [column]
            panels.append(by_unit[unit])
    return panels


def _module_families(trace: Trace) -> list[tuple[str, str, list[str]]]:
    """(prefix, quantity, columns) panels of a modules trace: SOC, temperature, then the rest."""
    columns = _value_columns(trace)
    soc = [c for c in columns if c.startswith("soc_")]
    temp = [c for c in columns if c.startswith("temp_")]
    other = [c for c in columns if c not in soc and c not in temp]
    families = [("soc_", "SOC", soc), ("temp_", "temperature", temp), ("", "value", other)]
    return [f for f in families if f[2]]


def _label(name: str, unit: str) -> str:
    if not unit:
        return name
    return f"{name} [{_unit(unit)}]" if name else f"[{_unit(unit)}]"


def _unit(unit: str) -> str:
    return UNIT_LABELS.get(unit, unit)
