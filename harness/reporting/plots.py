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
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from harness.measure import Trace

WIDTH_IN, HEIGHT_IN, DPI = 9.0, 5.0, 100  # 900 x 500 px: readable in Allure without zooming
DATA_COLOUR = "tab:blue"
OUTSIDE_COLOUR = "tab:red"
BAND_COLOUR = "tab:green"
MARK_COLOURS = ("tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:gray", "tab:olive", "tab:cyan")
UNIT_LABELS = {"degC": "°C", "us": "µs", "ohm": "Ω", "mohm": "mΩ", "A2s": "A²s"}
# (largest span shown in this unit, unit, factor from seconds)
TIME_UNITS = ((2e-3, "us", 1e6), (2.0, "ms", 1e3), (300.0, "s", 1.0), (3 * 3600.0, "min", 1 / 60.0),
              (math.inf, "h", 1 / 3600.0))
LINE_STYLES = ("-", "--", "-.", ":")
MANY_POINTS = 40  # a line with fewer samples gets markers: a sparse series is read point by point
FEW_READINGS = 10  # a timeline quantity read this seldom gets markers: one reading is no line

Renderer = Callable[[Figure, Trace], None]


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
    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    if _row_count(trace):
        RENDERERS.get(trace.kind, _xy)(fig, trace)
    else:
        _empty(fig)
    fig.suptitle(trace.title or trace.name.replace("_", " "), fontsize=12)
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    return path


def column_header(name: str, unit: str) -> str:
    return f"{name} [{unit}]" if unit else name


def mark_unit(trace: Trace, name: str) -> str:
    """A mark's unit: the trace's own entry for it if any, else that of what it is drawn against
    (``*_pct``: %, a moment or any mark of a timeline: the x column, a level: the first data
    column)."""
    if name in trace.units and name not in trace.columns:
        return trace.units[name]
    if name.endswith("_pct"):
        return "%"
    names = list(trace.columns)
    if not names:
        return ""
    if name.endswith("_s") or trace.kind == "timeline":
        return trace.units.get(names[0], "")
    return trace.units.get(names[1], "") if len(names) > 1 else ""


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
    until the next reading; marks are moments (keep-alive stopped, deadline) across all panels."""
    x, xunit = _time_axis(trace, None)
    panels = _panels(trace)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, columns in zip(axes, panels):
        for k, column in enumerate(columns):  # dashes keep a line visible where another covers it
            xs, ys = _readings(x, trace.columns[column])
            ax.step(xs, ys, where="post", color=f"C{k}", lw=1.2, ls=LINE_STYLES[k % len(LINE_STYLES)],
                    marker="o" if len(xs) < FEW_READINGS else None, ms=4, label=column.replace("_", " "))
        _panel_axis(ax, trace, columns)
    handles = _vertical_marks(list(axes), trace.marks, _time_factor(trace, xunit), xunit)
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), fontsize=8)
    axes[-1].set_xlabel(_label("time", xunit))


def _modules(fig: Figure, trace: Trace) -> None:
    """Per-module SOC and temperature over time, one line per module: drift shows as lines that
    fan out, a warm module as the one line above the rest."""
    x, xunit = _time_axis(trace, None)
    families = _module_families(trace)
    axes = fig.subplots(len(families), 1, sharex=True, squeeze=False)[:, 0]
    marker = "o" if len(x) < MANY_POINTS else None
    for ax, (prefix, what, columns) in zip(axes, families):
        for k, column in enumerate(columns):
            ax.plot(*_readings(x, trace.columns[column]), marker=marker, ms=4, lw=1.2, color=f"C{k % 10}",
                    label=column[len(prefix):] or column)
        unit = trace.units.get(columns[0], "")
        ax.set_ylabel(_label(what, unit))
        levels = {n: v for n, v in trace.marks.items() if not n.endswith("_s") and n.startswith(prefix)}
        _horizontal_marks(ax, levels, unit)
        _legend(ax, len(columns) + len(levels))
        ax.grid(True, alpha=0.3)
    _vertical_marks(list(axes), _moments(trace.marks), _time_factor(trace, xunit), xunit, legend=True)
    axes[-1].set_xlabel(_label("time", xunit))


def _xy(fig: Figure, trace: Trace) -> None:
    """Anything else: every value column against the first, marks as levels or moments."""
    ax = fig.add_subplot()
    x, xunit = _x_values(trace)
    if x and all(math.isnan(v) for v in x):  # names, not numbers: one position each
        ax.set_xticks(range(len(x)), [str(v) for v in _first(trace)], rotation=30, ha="right")
        x = [float(k) for k in range(len(x))]
    columns = _value_columns(trace)
    marker = "o" if len(x) < MANY_POINTS else None
    for k, column in enumerate(columns):
        ax.plot(*_readings(x, trace.columns[column]), marker=marker, ms=4, lw=1.2, color=f"C{k % 10}",
                label=column.replace("_", " "))
    units = {trace.units.get(c, "") for c in columns}
    unit = units.pop() if len(units) == 1 else ""
    ax.set_ylabel(_label(os.path.commonprefix(columns).strip("_ ") or "value", unit))
    first = list(trace.columns)[0]
    ax.set_xlabel(_label("time" if trace.units.get(first) == "s" else first, xunit))
    levels = {n: v for n, v in trace.marks.items() if not n.endswith("_s")}
    _horizontal_marks(ax, levels, unit)
    _vertical_marks([ax], _moments(trace.marks), _time_factor(trace, xunit), xunit, first=len(levels))
    _legend(ax, len(columns) + len(trace.marks))
    ax.grid(True, alpha=0.3)


RENDERERS: dict[str, Renderer] = {"inrush": _inrush, "vds": _vds, "sharing": _sharing,
                                  "timeline": _timeline, "modules": _modules, "xy": _xy}


# ====================================================================== shared drawing
def _waveform(fig: Figure, trace: Trace, time_unit: str | None) -> None:
    """One captured quantity against time, its levels as dashed lines and its peak (largest
    magnitude, the figure a measurement reports) annotated."""
    ax = fig.add_subplot()
    x, xunit = _time_axis(trace, time_unit)
    column = _value_columns(trace)[0]
    unit = trace.units.get(column, "")
    y = _numbers(trace.columns[column])
    ax.plot(x, y, color=DATA_COLOUR, lw=1.0, label=column.replace("_", " "))
    levels = {n: v for n, v in trace.marks.items() if not n.endswith("_s")}
    _horizontal_marks(ax, levels, unit)
    _vertical_marks([ax], _moments(trace.marks), _time_factor(trace, xunit), xunit, first=len(levels))
    _annotate_peak(ax, x, y, unit, xunit)
    ax.set_xlabel(_label("time", xunit))
    ax.set_ylabel(_label(column, unit))
    _legend(ax, 1 + len(trace.marks))
    ax.grid(True, alpha=0.3)


def _bars_with_band(ax: Axes, names: list[str], values: list[float], mean: float,
                    tolerance_pct: float | None, unit: str) -> None:
    band = abs(mean) * tolerance_pct / 100.0 if tolerance_pct is not None and not math.isnan(mean) else None
    colours = [OUTSIDE_COLOUR if band is not None and abs(v - mean) > band else DATA_COLOUR for v in values]
    bars = ax.bar(names, values, color=colours, width=0.6)
    ax.bar_label(bars, fmt="%.4g", fontsize=8, padding=2)
    if not math.isnan(mean):
        ax.axhline(mean, color="0.2", ls="--", lw=1, label=f"mean {mean:.4g} {_unit(unit)}")
    if band is not None:
        ax.axhspan(mean - band, mean + band, color=BAND_COLOUR, alpha=0.15,
                   label=f"mean ± {tolerance_pct:g} %")
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, axis="y", alpha=0.3)


def _annotate_peak(ax: Axes, x: list[float], y: list[float], unit: str, xunit: str) -> None:
    finite = [k for k, v in enumerate(y) if not math.isnan(v)]
    if not finite:
        return
    k = max(finite, key=lambda i: abs(y[i]))
    ax.plot([x[k]], [y[k]], "o", color=OUTSIDE_COLOUR, ms=5)
    ax.annotate(f"peak {y[k]:.4g} {_unit(unit)}\nat {x[k]:.4g} {_unit(xunit)}", xy=(x[k], y[k]),
                xytext=(18, -28 if y[k] >= 0 else 18), textcoords="offset points", fontsize=9,
                arrowprops={"arrowstyle": "->", "color": "0.3"})


def _horizontal_marks(ax: Axes, marks: dict[str, float], unit: str) -> None:
    for k, (name, value) in enumerate(marks.items()):
        ax.axhline(value, color=MARK_COLOURS[k % len(MARK_COLOURS)], ls="--", lw=1.2,
                   label=f"{name.replace('_', ' ')} {value:.4g} {_unit(unit)}".rstrip())


def _vertical_marks(axes: list[Axes], marks: dict[str, float], factor: float, xunit: str,
                    legend: bool = False, first: int = 0) -> list[Any]:
    """Moments as dotted vertical lines on every panel; their legend entries come back (once).
    ``first``: the marks already drawn as levels, whose colours these must not repeat."""
    handles = []
    for k, (name, value) in enumerate(marks.items(), start=first):
        label = f"{name.removesuffix('_s').replace('_', ' ')} {value * factor:.4g} {_unit(xunit)}"
        for n, ax in enumerate(axes):
            line = ax.axvline(value * factor, color=MARK_COLOURS[k % len(MARK_COLOURS)], ls=":", lw=1.5,
                              label=label if n == 0 else None)
            if n == 0:
                handles.append(line)
    if legend and handles:
        axes[0].legend(fontsize=7, loc="best")
    return handles


def _panel_axis(ax: Axes, trace: Trace, columns: list[str]) -> None:
    """A timeline panel's y axis: yes/no for a state, the quantity and unit otherwise."""
    if all(_is_flag(trace.columns[c]) for c in columns):
        ax.set_yticks([0, 1], ["no", "yes"])
        ax.set_ylim(-0.25, 1.25)
    elif all(_is_count(trace.columns[c]) for c in columns):
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    unit = trace.units.get(columns[0], "")
    name = columns[0] if len(columns) == 1 else ""
    ax.set_ylabel(_label(name.replace("_", " "), unit), fontsize=8, rotation=0, ha="right", va="center")
    if len(columns) > 1:
        ax.legend(fontsize=7, loc="upper right")
    ax.grid(True, alpha=0.3)


def _legend(ax: Axes, entries: int) -> None:
    if entries > 1:
        ax.legend(fontsize=7 if entries > 6 else 8, ncols=1 + entries // 8, loc="best")


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


def _moments(marks: dict[str, float]) -> dict[str, float]:
    return {n: v for n, v in marks.items() if n.endswith("_s")}


def _time_axis(trace: Trace, unit: str | None) -> tuple[list[float], str]:
    """The first column as a time in ``unit`` (or the unit its span reads best in)."""
    name = list(trace.columns)[0]
    x = _numbers(trace.columns[name])
    if trace.units.get(name, "s") != "s":
        return x, trace.units.get(name, "")
    if unit is None:
        finite = [v for v in x if not math.isnan(v)]
        span = (max(finite) - min(finite)) if finite else 0.0
        unit = next(u for limit, u, _ in TIME_UNITS if span <= limit)
    factor = _factor(unit)
    return [v * factor for v in x], unit


def _x_values(trace: Trace) -> tuple[list[float], str]:
    """The x axis of a plain plot: a time if its unit says so, else as given."""
    name = list(trace.columns)[0]
    if trace.units.get(name) == "s":
        return _time_axis(trace, None)
    return _numbers(trace.columns[name]), trace.units.get(name, "")


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
