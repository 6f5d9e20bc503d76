"""Report plots (harness/reporting/plots.py) and the traces the checks keep for them.

Every kind renders to a 900 x 500 px PNG from a small synthetic trace, the same trace gives the
same bytes, and the CSV beside the picture reads back as the trace's columns with its marks.
Plots that show the fault, each from a case seen in a report: 14 joint rises drawn in 10 colours
(the loose lug and a busbar alike), a trip a second long lost on an hour's axis, a 0.74 A inrush
flattened by its 110 A limit. Checked on the pure helpers (styles, faulty series, zoom window,
event delay, y range) and on the drawn figure's artists.
Then a real check on the emulated bench: ``parallel_inrush`` and ``current_sharing`` of the
shipped 1S4P plan leave an inrush trace (peak kept through decimation) and sharing traces.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

import pytest
from matplotlib.image import imread

from harness.measure import Recorder, Trace
from harness.reporting.plots import (event_delay, faulty_series, figure, fit_range, render, style_cycle,
                                     write_csv, zoom_window)
from test_plans.checks.traces import TraceRows, peak_indices

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _trace(name: str, kind: str, columns: dict[str, list[Any]], units: dict[str, str] | None = None,
           marks: dict[str, float | None] | None = None) -> Trace:
    return Recorder(lambda: 0.0).trace(name, kind, columns, units, marks, title=f"{kind} test")


def _synthetic() -> list[Trace]:
    t = [k * 50e-6 for k in range(400)]
    ms = [k * 20e-6 for k in range(300)]
    polls = [k * 0.5 for k in range(12)]
    hours = [0.0, 900.0, 1500.0, 3300.0]
    return [
        _trace("inrush_p4", "inrush", {"t": t, "current": [90 * math.exp(-x / 2e-3) for x in t]},
               {"t": "s", "current": "A"}, {"peak_limit": 110.0, "settle_threshold": 15.0, "settle_limit_s": 0.01}),
        _trace("sharing_load", "sharing", {"branch": ["p1", "p2", "p3", "p4"], "current": [-50.1, -49.8, -58.0, -42.1]},
               {"current": "A"}, {"mean": -50.0, "tolerance_pct": 1.0}),
        _trace("comm_loss", "timeline",
               {"t": polls, "heartbeat": [k < 4 for k in range(12)],
                "charge_limit": [100.0 if k < 6 else 0.0 for k in range(12)],
                "discharge_limit": [100.0 if k < 6 else 0.0 for k in range(12)],
                "comm_alarm": [k >= 6 for k in range(12)], "modules_offline": [0] * 6 + [1] * 6},
               {"t": "s", "charge_limit": "A", "discharge_limit": "A"},
               {"heartbeat_stopped_s": 2.0, "limit_s": 9.0, "recovery_limit_s": None}),
        _trace("vds_s1p1", "vds", {"t": ms, "vds": [0.0 if k < 10 else 52 + 15 * math.exp(-(k - 10) / 5) for k in range(300)]},
               {"t": "s", "vds": "V"}, {"rating": 80.0, "derated_limit": 64.0}),
        _trace("soc_drift", "modules",
               {"t": hours, "soc_s1p1": [50.0, 30.1, None, 50.2], "soc_s1p2": [50.1, 30.3, None, 50.0],
                "soc_bank": [50.0, None, 30.5, 50.1], "temp_s1p1": [25.0, 27.2, None, 25.4],
                "temp_s1p2": [25.1, 27.9, None, 25.6]},
               {"t": "s", "soc_s1p1": "%", "soc_s1p2": "%", "soc_bank": "%", "temp_s1p1": "degC", "temp_s1p2": "degC"}),
        _trace("thermal_joints", "xy", {"t": [0.0, 60.0, 120.0], "rise_bus.pos.1": [0.0, 1.5, 2.7],
                                        "rise_s1p1.+": [0.0, 0.4, 0.9]},
               {"t": "s", "rise_bus.pos.1": "K", "rise_s1p1.+": "K"}, {"busbar_rise_limit": 30.0}),
        _trace("something_new", "histogram", {"x": [1, 2, 3], "y": [3.0, 1.0, 2.0]}, {"y": "V"}, {"lim": 2.5}),
        _trace("by_name", "xy", {"module": ["s1p1", "s1p2"], "acir": [3.1e-3, None]}, {"acir": "ohm"}),
        _trace("gaps", "vds", {"t": [0.0, 1e-5, 2e-5], "vds": [None, math.nan, None]}, {"t": "s", "vds": "V"}),
        _trace("nothing", "inrush", {"t": [], "current": []}, {"t": "s", "current": "A"}),
    ]


def _png_size(path: Path) -> tuple[int, int]:
    height, width = imread(path).shape[:2]
    return width, height


@pytest.mark.parametrize("trace", _synthetic(), ids=lambda t: f"{t.kind}-{t.name}")
def test_every_kind_renders_a_900x500_png(trace: Trace, tmp_path: Path) -> None:
    path = render(trace, tmp_path / "plots" / f"{trace.name}.png")
    assert path.exists()
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert _png_size(path) == (900, 500)


def test_the_same_trace_gives_the_same_bytes(tmp_path: Path) -> None:
    for trace in _synthetic()[:3]:
        first = render(trace, tmp_path / f"a_{trace.name}.png").read_bytes()
        second = render(trace, tmp_path / f"b_{trace.name}.png").read_bytes()
        assert first == second, trace.name
        assert b"Software" not in first and b"matplotlib" not in first


def _read_csv(path: Path) -> tuple[list[str], list[str], list[list[str]]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    comments = [line for line in lines if line.startswith("#")]
    rows = list(csv.reader(line for line in lines if not line.startswith("#")))
    return comments, rows[0], rows[1:]


def test_csv_holds_marks_header_and_one_row_per_sample(tmp_path: Path) -> None:
    inrush = _synthetic()[0]
    comments, header, rows = _read_csv(write_csv(inrush, tmp_path / "inrush.csv"))
    assert comments == ["# peak_limit=110 A", "# settle_threshold=15 A", "# settle_limit_s=0.01 s"]
    assert header == ["t [s]", "current [A]"]
    assert len(rows) == len(inrush.columns["t"])
    assert [float(v) for v in rows[7]] == [inrush.columns["t"][7], inrush.columns["current"][7]]


def test_csv_round_trips_categories_states_and_gaps(tmp_path: Path) -> None:
    sharing, timeline, modules = _synthetic()[1], _synthetic()[2], _synthetic()[4]
    comments, header, rows = _read_csv(write_csv(sharing, tmp_path / "sharing.csv"))
    assert comments == ["# mean=-50 A", "# tolerance_pct=1 %"]
    assert header == ["branch", "current [A]"]
    assert [r[0] for r in rows] == ["p1", "p2", "p3", "p4"] and float(rows[2][1]) == -58.0
    comments, header, rows = _read_csv(write_csv(timeline, tmp_path / "timeline.csv"))
    assert comments == ["# heartbeat_stopped_s=2 s", "# limit_s=9 s"]  # a None mark is left out
    assert header == ["t [s]", "heartbeat", "charge_limit [A]", "discharge_limit [A]", "comm_alarm",
                      "modules_offline"]
    assert rows[0] == ["0.0", "True", "100.0", "100.0", "False", "0"] and len(rows) == 12
    _, header, rows = _read_csv(write_csv(modules, tmp_path / "modules.csv"))
    assert header[:2] == ["t [s]", "soc_s1p1 [%]"] and header[-1] == "temp_s1p2 [degC]"
    assert rows[2][1] == ""  # no reading: an empty cell


def test_decimation_keeps_the_peak_and_at_most_the_limit() -> None:
    samples = [math.sin(k / 50.0) for k in range(20001)]
    samples[12345] = 7.5
    samples[777] = -9.0
    keep = peak_indices(samples, 5000)
    assert len(keep) <= 5000 and keep == sorted(keep)
    assert {0, 777, 12345, 20000} <= set(keep)
    assert peak_indices(samples[:100], 5000) == list(range(100))


def test_trace_rows_share_a_moment_but_not_a_quantity() -> None:
    rows = TraceRows(origin=10.0)
    rows.add(10.0, current=5.0)
    rows.add(10.0, cell_min=3.2)          # another quantity, same moment: same row
    rows.add(10.0, current=0.0)           # the same quantity again: its own row
    rows.add(10.5, current=0.0, alarm=True)
    assert rows.columns() == {"t": [0.0, 0.0, 0.5], "current": [5.0, 0.0, 0.0],
                              "cell_min": [3.2, None, None], "alarm": [None, None, True]}


# ====================================================================== plots that show the fault
def _joints(marks: dict[str, float | None] | None = None, lug: str | None = "s1p4.+") -> Trace:
    """``thermal_joints`` as a loose-lug run records it: 6 busbar segments (the end ones warm by
    design) and 8 terminals, the lug warming fast to about a busbar's rise -- not the highest line."""
    t = [60.0 * k for k in range(41)]

    def rise(final: float, tau: float) -> list[float]:
        return [round(final * (1 - math.exp(-x / tau)) / (1 - math.exp(-t[-1] / tau)), 4) for x in t]

    columns: dict[str, list[Any]] = {"t": t}
    for side in ("neg", "pos"):
        for k, final in enumerate((0.7, 2.8, 6.4) if side == "neg" else (6.2, 2.8, 0.7), start=1):
            columns[f"rise_bus.{side}.{k}"] = rise(final, 900.0)
    for k in range(1, 5):
        for pole in "+-":
            name = f"s1p{k}.{pole}"
            columns[f"rise_{name}"] = rise(6.1, 300.0) if name == lug else rise(3.5 + 0.03 * k, 900.0)
    units = {"t": "s", **{c: "K" for c in columns if c != "t"}}
    limits: dict[str, float | None] = {"busbar_limit_at_this_current": 10.8, "terminal_limit_at_this_current": 10.8}
    return _trace("thermal_joints", "xy", columns, units, {**limits, **(marks or {})})


def _trip() -> Trace:
    """``trip_under_voltage``: an hour's discharge read every 30 s, then every 50 ms near the end;
    the BMS warns at 3620 s and cuts 1.02 s later (plan: 1-4 s after the warning)."""
    t = [30.0 * k for k in range(120)] + [3600.0 + 0.05 * k for k in range(600)]
    warning, cut = 3620.0, 3621.02
    return _trace("trip_under_voltage", "timeline",
                  {"t": t, "current": [100.0 if x < cut else 0.0 for x in t],
                   "cell_min": [round(3.3 - 0.9 * min(x, cut) / 3630, 5) for x in t]},
                  {"t": "s", "current": "A", "cell_min": "V"},
                  {"warning_s": warning, "threshold_s": warning + 0.3, "trip_s": cut,
                   "delay_min_s": warning + 1.0, "delay_max_s": warning + 4.0})


def _small_inrush() -> Trace:
    """``inrush_s1p4`` of a healthy bank: a 0.75 A surge against a 110 A peak limit."""
    t = [k * 50e-6 for k in range(2000)]
    return _trace("inrush_s1p4", "inrush", {"t": t, "current": [0.75 * math.exp(-x / 1e-4) - 0.01 for x in t]},
                  {"t": "s", "current": "A"}, {"peak_limit": 110.0, "settle_threshold": 15.0, "settle_limit_s": 0.05})


def _many(n: int) -> Trace:
    t = [float(k) for k in range(60)]
    columns: dict[str, list[Any]] = {"t": t}
    for k in range(n):
        columns[f"v_{k:02d}"] = [round(k + 0.5 * math.sin(x / 7 + k), 4) for x in t]
    return _trace(f"many_{n}", "xy", columns, {"t": "s", **{c: "V" for c in columns if c != "t"}})


def _series_lines(fig: Any) -> dict[str, Any]:
    return {line.get_gid().split(":", 1)[1]: line for ax in fig.axes for line in ax.get_lines()
            if (line.get_gid() or "").startswith("series:")}


def _texts(fig: Any) -> list[str]:
    from matplotlib.text import Text
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def test_style_cycle_gives_40_series_distinct_colour_and_line_style() -> None:
    styles = style_cycle(40)
    assert len({(s.colour, s.linestyle) for s in styles}) == 40
    assert len({s.colour for s in styles}) == 10  # a qualitative cycle, then the line style
    more = style_cycle(280)
    assert len({(s.colour, s.linestyle, s.marker) for s in more}) == 280  # beyond 40 the marker differs
    assert style_cycle(0) == []


def test_thermal_joints_draws_14_series_in_14_styles() -> None:
    """Seen: 14 joint rises in 10 colours, the loose lug and a busbar alike."""
    lines = _series_lines(figure(_joints()))
    assert len(lines) == 14
    assert len({(line.get_color(), line.get_linestyle()) for line in lines.values()}) == 14


def test_40_series_each_their_own_style_and_a_legend_that_fits() -> None:
    fig = figure(_many(40))
    lines = _series_lines(fig)
    assert len({(line.get_color(), line.get_linestyle()) for line in lines.values()}) == 40
    fig.draw_without_rendering()
    (ax,) = fig.axes
    legend = ax.get_legend()
    assert len(legend.get_texts()) == 40 and legend._ncols >= 2  # beside the axes, in columns
    box, whole = legend.get_window_extent(), fig.bbox
    assert box.x0 >= whole.x0 - 1 and box.x1 <= whole.x1 + 1 and box.y0 >= whole.y0 - 1 and box.y1 <= whole.y1 + 1
    assert not box.overlaps(ax.get_window_extent())  # it does not cover the data


def test_faulty_series_is_the_one_across_a_limit_or_the_clear_outlier() -> None:
    assert faulty_series({"a": [0, 1, 2], "b": [0, 5, 12.5], "c": [0, 1, 11]}, {"limit": 10.0}) == "b"
    assert faulty_series({"a": [3.3, 3.2], "b": [3.3, 2.4], "c": [3.3, 3.25]}, {"min_limit": 2.5}) == "b"
    warm = {f"temp_s1p{k}": [25.0, 26.0 + 0.05 * k, 27.0] for k in range(1, 5)}
    assert faulty_series(warm, {"limit": 45.0}) is None  # nothing stands out: nothing highlighted
    warm["temp_s1p3"] = [28.9, 30.5, 32.4]
    assert faulty_series(warm, {"limit": 45.0}) == "temp_s1p3"
    noisy = {f"temp_s1p{k}": [25.0 + 0.2 * r + 0.01 * k for r in range(12)] for k in range(1, 5)}
    noisy["temp_s1p2"][5] += 0.8  # one noisy reading is no fault
    assert faulty_series(noisy) is None
    assert faulty_series({"a": [1.0, 2.0], "b": [1.0, 9.0]}) is None  # two lines: no outlier
    trace = _joints()
    assert faulty_series({c: v for c, v in trace.columns.items() if c != "t"}) == "rise_s1p4.+"
    healthy = _joints(lug=None)
    assert faulty_series({c: v for c, v in healthy.columns.items() if c != "t"}) is None


def _check_in_front(fig: Any, column: str) -> None:
    lines = _series_lines(fig)
    ax = lines[column].axes
    front = lines[column]
    others = [line for name, line in lines.items() if name != column]
    assert front.get_linewidth() > max(line.get_linewidth() for line in others)
    assert front.get_zorder() > max(line.get_zorder() for line in others)
    assert [line for line in ax.get_lines() if (line.get_gid() or "").startswith("series:")][-1] is front
    assert all((line.get_alpha() or 1.0) < 1.0 for line in others)  # the others muted
    label = column.removeprefix("rise_")
    assert any(label in text and "(faulty)" not in text for text in _texts(fig))  # named on the plot


def test_the_loose_lug_is_drawn_in_front_and_named() -> None:
    fig = figure(_joints())
    _check_in_front(fig, "rise_s1p4.+")
    assert any("s1p4.+: 6.10 K" in text for text in _texts(fig))


def test_a_mark_names_the_faulty_series(tmp_path: Path) -> None:
    trace = _joints({"faulty_s1p2.-": 1.0})  # a unique ending of the column's name will do
    fig = figure(trace)
    _check_in_front(fig, "rise_s1p2.-")
    gids = {line.get_gid() for ax in fig.axes for line in ax.get_lines()}
    assert not any("faulty" in (gid or "") for gid in gids if not (gid or "").startswith("series:"))
    comments, _, _ = _read_csv(write_csv(trace, tmp_path / "joints.csv"))
    assert "# faulty_s1p2.-=1" in comments


def test_a_healthy_plot_highlights_nothing() -> None:
    fig = figure(_joints(lug=None))
    widths = {line.get_linewidth() for line in _series_lines(fig).values()}
    assert len(widths) == 1 and not any(":" in t and " K" in t for t in _texts(fig))


def test_zoom_window_holds_the_event_not_the_hour_before() -> None:
    times = [30.0 * k for k in range(122)]
    marks = {"warning_s": 3620.0, "trip_s": 3621.02, "delay_max_s": 3624.0}
    low, high = zoom_window(times, marks)
    assert low < 3620.0 and high > 3624.0  # a margin either side
    assert high - low < 0.01 * times[-1] and low > 3610.0
    assert zoom_window(times, {"trip_s": 3621.0}) is None  # one moment: no window
    assert zoom_window(times, {"stopped_s": 100.0, "limit_s": 3500.0}) is None  # spans the record
    assert zoom_window(times, [3620.0, 3640.0])[1] > 3640.0  # a deadline beyond the last reading


def test_event_delay_runs_from_the_trigger_to_the_trip() -> None:
    trip = _trip().marks
    start, end, seconds = event_delay(trip)
    assert (start, end) == ("warning_s", "trip_s") and seconds == pytest.approx(1.02)
    current = {"below_step_s": 0.0, "step_s": 125.0, "trip_s": 126.5, "delay_min_s": 125.5, "delay_max_s": 127.0}
    assert event_delay(current) == ("step_s", "trip_s", pytest.approx(1.5))
    assert event_delay({"heartbeat_stopped_s": 2.0, "limit_s": 9.0}) is None  # no reaction marked


def test_trip_timeline_is_zoomed_to_the_event_with_its_delay_written() -> None:
    """Seen: 0-60 min with every marker stacked at 60.5 min."""
    trace = _trip()
    fig = figure(trace)
    axes = fig.axes
    assert axes[-1].get_xlabel().startswith("time [s]")
    low, high = axes[0].get_xlim()
    assert all(axis.get_xlim() == (low, high) for axis in axes)
    assert low <= min(trace.marks.values()) and high >= max(trace.marks.values())
    assert high - low < 0.05 * trace.columns["t"][-1]  # the empty hour is not shown
    assert any("trip delay 1.02 s" in text for text in _texts(fig))
    assert axes[1].get_ylim()[0] > 2.0  # cell voltage fitted to the window, not to the hour


def test_fit_range_leaves_a_far_limit_off_scale() -> None:
    small = [0.75 * math.exp(-k / 2) - 0.01 for k in range(50)]
    fit = fit_range(small, {"peak_limit": 110.0, "settle_threshold": 15.0})
    assert set(fit.off_scale) == {"peak_limit", "settle_threshold"} and fit.high < 1.0 and fit.low > -0.1
    big = [90 * math.exp(-k / 2) for k in range(50)]
    fit = fit_range(big, {"peak_limit": 110.0, "settle_threshold": 15.0})
    assert fit.off_scale == {} and fit.high >= 110.0
    flat = fit_range([0.0, 0.0], {"limit": 0.5})
    assert flat.off_scale == {} and flat.low < 0.0 < 0.5 < flat.high
    assert math.isnan(fit_range([], {}).low)


def test_small_inrush_is_scaled_to_its_data_with_the_limit_written() -> None:
    """Seen: a 0.74 A inrush drawn on a 110 A scale (a flat line)."""
    fig = figure(_small_inrush())
    (ax,) = fig.axes
    assert ax.get_ylim()[1] < 1.0
    assert not any((line.get_gid() or "") == "level:peak_limit" for line in ax.get_lines())
    texts = _texts(fig)
    assert any("peak limit 110 A (off scale" in text for text in texts)
    assert any("peak 740 mA" in text for text in texts)
    fig = figure(_synthetic()[0])  # a 90 A surge: the 110 A limit is drawn as a line
    assert any((line.get_gid() or "") == "level:peak_limit" for line in fig.axes[0].get_lines())


def test_fault_plots_are_deterministic(tmp_path: Path) -> None:
    for trace in (_joints(), _trip(), _small_inrush()):
        first = render(trace, tmp_path / f"a_{trace.name}.png").read_bytes()
        second = render(trace, tmp_path / f"b_{trace.name}.png").read_bytes()
        assert first == second, trace.name
        assert _png_size(tmp_path / f"a_{trace.name}.png") == (900, 500)


# ====================================================================== a real check, emulated
@pytest.fixture(scope="module")
def bench_1s4p(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The shipped 1S4P plan's healthy busbar DUT with a 20-point SOC mismatch (a ~9 A surge);
    its CAN log in a folder of its own, not reports/can/."""
    from bankmodel.specs.loading import load_bank_spec
    from harness.bench import assemble
    from harness.config import load_station

    for name in ("can.interfaces.socketcand", "can.interfaces.socketcand.socketcand"):
        logging.getLogger(name).setLevel(logging.ERROR)
    dut, scenario = "parallel/1s4p_busbar", "soc_mismatch"
    assembled = assemble(load_station(REPO / "fixtures" / "stations" / "emulated.yaml"), dut, scenario,
                         log_dir=tmp_path_factory.mktemp("bench_1s4p"))
    try:
        yield assembled.bench, load_bank_spec(dut, scenario)
    finally:
        assembled.close()


def _run_step(bench_and_dut: Any, check: str) -> Recorder:
    from harness.config import load_plan
    from harness.plugin import step_limits, step_params
    from test_plans.checks import StepContext, known_checks, load_all

    bench, dut = bench_and_dut
    plan = load_plan(REPO / "test_plans" / "parallel_bank_1s4p.yaml", known_checks())
    step = next(s for s in plan.steps if s.check == check)
    recorder = Recorder(bench.clock.now)
    ctx = StepContext(bench, step_params(step, plan), step_limits(step), recorder, step.name, dut)
    load_all()[check](ctx)
    return recorder


def test_parallel_inrush_keeps_its_waveform_as_a_trace(bench_1s4p: Any, tmp_path: Path) -> None:
    recorder = _run_step(bench_1s4p, "parallel_inrush")
    peak = next(m.value for m in recorder.taken if m.name == "peak_current")
    (trace,) = [t for t in recorder.traces if t.kind == "inrush"]
    assert trace.name == "inrush_s1p4"
    assert trace.units == {"t": "s", "current": "A"}
    assert trace.marks == {"peak_limit": 110.0, "settle_threshold": 15.0, "settle_limit_s": 0.5}
    assert 1000 < len(trace.columns["t"]) <= 5000  # 20000 samples, decimated
    assert peak > 1.0 and max(abs(a) for a in trace.columns["current"]) == pytest.approx(peak, rel=1e-12)
    assert trace.columns["t"][0] == 0.0 and trace.columns["t"][-1] == pytest.approx(19999 * 50e-6)
    assert _png_size(render(trace, tmp_path / "inrush.png")) == (900, 500)


def test_current_sharing_keeps_branch_currents_per_operating_point(bench_1s4p: Any) -> None:
    recorder = _run_step(bench_1s4p, "current_sharing")
    traces = {t.name: t for t in recorder.traces}
    assert set(traces) == {"sharing_load", "sharing_charge"}
    for name, prefix in (("sharing_load", ""), ("sharing_charge", "charge_")):
        trace = traces[name]
        assert trace.kind == "sharing" and trace.columns["branch"] == ["s1p1", "s1p2", "s1p3", "s1p4"]
        measured = [next(m.value for m in recorder.taken if m.name == f"{prefix}current_{b}")
                    for b in trace.columns["branch"]]
        assert trace.columns["current"] == measured
        assert trace.marks == {"mean": pytest.approx(sum(measured) / 4), "tolerance_pct": 1.0}
