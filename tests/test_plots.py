"""Report plots (harness/reporting/plots.py) and the traces the checks keep for them.

Every kind renders to a 900 x 500 px PNG from a small synthetic trace, the same trace gives the
same bytes, and the CSV beside the picture reads back as the trace's columns with its marks.
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
from harness.reporting.plots import render, write_csv
from test_plans.checks.basic import TraceRows, peak_indices

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


# ====================================================================== a real check, emulated
@pytest.fixture(scope="module")
def bench_1s4p():  # type: ignore[no-untyped-def]
    """The shipped 1S4P plan's healthy busbar DUT with a 20-point SOC mismatch (a ~9 A surge)."""
    from emulator.config.loading import load_bank_spec
    from harness.bench import assemble
    from harness.config import load_station

    for name in ("can.interfaces.socketcand", "can.interfaces.socketcand.socketcand"):
        logging.getLogger(name).setLevel(logging.ERROR)
    dut, scenario = "parallel/1s4p_busbar", "soc_mismatch"
    assembled = assemble(load_station(REPO / "fixtures" / "stations" / "emulated.yaml"), dut, scenario)
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
