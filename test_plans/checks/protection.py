"""Module BMS protection trips and balancing, one module on the bench (1S1P).

001: "The BMS can protect against overvoltage, undervoltage, overcurrent, short circuit, and
temperature issues". DOMAIN.md section 3 gives a 12.8 V LFP module's typicals: cell OVP 3.65-3.75 V
after ~1 s, UVP 2.2-2.5 V after 1-4 s, discharge OCP ~1.5 x rating after ~1 s, short circuit
100-400 us, charge 0-45 degC, discharge -20-60 degC, balancing 30-180 mA. The plan carries the
module's specification as limits; the check provokes each protection with the bench and measures:

- the threshold -- the BMS-reported extreme cell voltage at the trip (OVP, UVP), the current step
  that trips it and one below that must not (OCP), the module temperature (OTP);
- the delay -- from the condition to the cut, the cut seen by the bench as the supply or load
  current falling below ``cut_current``; the condition is the current step, charging a module
  above ``max_temperature``, or for a cell voltage the BMS's own onset: its warning bit (0x359
  byte 2-3 / SunSpec Evt1 ``*_WARNING``: condition present, debounce running), else the cell
  passing the plan's nominal ``threshold``;
- the alarm bit -- CAN 0x359 through ``bench.bms.status().alarms``;
- recovery -- the alarm clearing and the switch conducting again, the protection's own way: a
  discharge after an over-voltage cut, a charge after an under-voltage cut, the over-current
  recovery time, cooling.

The condition is watched every ``poll_s`` once it is near (``approach``) and every
``coarse_poll_s`` before, so an hour of charging costs little; delays are resolved to ``poll_s``.
Extreme cell voltages and the module temperature are read where the BMS's present state is
(SunSpec when the station has it, else CAN 0x373/0x356).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from harness.measure import Limits
from test_plans.checks import Measure, Param, StepContext, check
from test_plans.checks.basic import (TraceRows, _natural, branches_opened, has_parallel_peer,
                                     module_bms_reports)
from test_plans.checks.diagnosis import diagnose, outlier
from test_plans.checks.bms_comm import state_client
from test_plans.checks.parallel import SOH_EVIDENCE_PCT, connect_bank, outputs_off

# protection -> (the 0x359 alarm the role names, what drives it)
PROTECTIONS = {
    "over_voltage": ("over_voltage", "charge"),
    "under_voltage": ("under_voltage", "discharge"),
    "charge_over_current": ("charge_over_current", "charge"),
    "discharge_over_current": ("discharge_over_current", "discharge"),
    "short_circuit": ("discharge_over_current", "discharge"),
    "over_temperature": ("over_temperature", "charge"),
}
SPEC = ("DOMAIN.md 3: cell OVP 3.65-3.75 V after ~1 s, UVP 2.2-2.5 V after 1-4 s, discharge OCP "
        "~1.5 x rating after ~1 s, short circuit 100-400 us, charge 0-45 degC")


def _diag(what: str) -> str:
    return (f"BMS {what} protection outside the module's specification (001: the BMS protects against "
            f"over-voltage, under-voltage, over-current, short circuit and temperature; {SPEC}) -- check "
            "the BMS's protection settings and firmware")


DIAG_ALARM = ("protection acted without its alarm on the bus (004: battery alarm -> BMS status; "
              "DOMAIN.md 4: 0x359 alarm bits) -- check the BMS firmware and protocol")
DIAG_RECOVERY = ("protection does not release as specified (001; 004: battery alarm during startup -> "
                 "BMS status) -- check the BMS release thresholds and recovery time")


class _Drive:
    """The source or sink that provokes a protection, and the current the bench sees through it.

    It keeps what it saw -- every current reading, and what the check adds (cell voltage, alarm,
    moments such as the cut) -- for the report's timeline of the trip: the reading is taken
    anyway, keeping it costs nothing."""

    def __init__(self, ctx: StepContext, side: str):
        self.bench, self.side = ctx.bench, side
        self.cv = float(ctx.param("charge_voltage", 14.6)) if side == "charge" else None
        self.seen = TraceRows(ctx.bench.clock.now())
        self.moments: dict[str, float | None] = {}

    def on(self, amps: float) -> None:
        if self.side == "charge":
            self.bench.supply.set_voltage(self.cv)
            self.bench.supply.set_current(amps)
            self.bench.supply.output(True)
        else:
            self.bench.load.set_current(amps)
            self.bench.load.input(True)

    def amps(self) -> float:
        inst = self.bench.supply if self.side == "charge" else self.bench.load
        value = abs(float(inst.measure_current()))
        self.seen.add(self.bench.clock.now(), current=value)
        return value

    def off(self) -> None:
        """Output off; the timeline drops to zero here (an open output carries nothing), not at
        the next reading -- which may be seconds later, or never."""
        outputs_off(self.bench)
        self.seen.add(self.bench.clock.now(), current=0.0)

    def moment(self, name: str, at: float | None) -> None:
        """A bench time worth a line on the timeline (``name`` ends in ``_s``)."""
        self.moments[name] = None if at is None else at - self.seen.origin

    def delay_window(self, start: float | None, limit: Limits) -> None:
        """Where the plan's ``trip_delay`` wants the cut, counted from ``start``."""
        for name, bound in (("delay_min_s", limit.low), ("delay_max_s", limit.high)):
            self.moment(name, None if start is None or bound is None else start + bound)


def _alarms(bench: Any) -> set[str]:
    return set(bench.bms.status().alarms)


def _warnings(bench: Any) -> set[str]:
    """Protections whose condition the BMS sees with its debounce running (0x359 / Evt1 warnings)."""
    return set(state_client(bench).status().warnings)


def _wait_for(bench: Any, done: Callable[[], bool], timeout_s: float, poll_s: float) -> float | None:
    start = bench.clock.now()
    while True:
        if done():
            return bench.clock.now() - start
        if bench.clock.now() - start >= timeout_s - 1e-9:
            return None
        bench.clock.wait(min(poll_s, timeout_s - (bench.clock.now() - start)))


def _cell_extreme(bench: Any, which: str) -> float:
    t = state_client(bench).telemetry()
    value = t.max_cell_v if which == "max" else t.min_cell_v
    return math.nan if value is None else float(value)


def _temperature(bench: Any) -> float:
    return float(state_client(bench).telemetry().temperature_c)


# Which output a current drives depends on ``protection``: recovery_current and probe_current
# (small) are rated against both; trip_current and below_current (up to a short circuit) against
# the load only -- a charge_over_current step's supply current is not rated by the station check.
@check("protection_trip",
       params={"protection": Param(kind="text", doc="over_voltage, under_voltage, charge_over_current, "
                                                    "discharge_over_current, short_circuit, over_temperature"),
               "recover": Param(kind="flag", doc="measure the recovery after a trip (default true)"),
               "rest_s": Param("s"),
               "charge_voltage": Param("V", setpoint="supply.voltage", doc="CV of a charge drive"),
               "charge_current": Param("A", setpoint="supply.current"),
               "load_current": Param("A", setpoint="load.current"),
               "trip_current": Param("A", setpoint="load.current", doc="the over-current step"),
               "below_current": Param("A", setpoint="load.current", doc="a step that must not trip"),
               "below_s": Param("s"),
               "between_s": Param("s"),
               "cut_current": Param("A", doc="below this the drive counts as cut"),
               "threshold": Param("V", doc="nominal cell trip voltage"),
               "approach": Param("V", doc="cell voltage from which poll_s applies"),
               "max_temperature": Param("degC", doc="charge temperature limit"),
               "poll_s": Param("s"),
               "coarse_poll_s": Param("s"),
               "observe_s": Param("s"),
               "alarm_s": Param("s"),
               "recover_observe_s": Param("s"),
               "recover_poll_s": Param("s"),
               "recovery_voltage": Param("V", setpoint="supply.voltage"),
               "recovery_current": Param("A", setpoint=("supply.current", "load.current")),
               "probe_current": Param("A", setpoint=("supply.current", "load.current"),
                                      doc="must flow again after recovery"),
               "probe_s": Param("s")},
       measures={"drive_current": Measure("A", doc="last current before the cut"),
                 "below_current": Measure("A"),
                 "no_trip_below": Measure(""),
                 "trip_current": Measure("A"),
                 "module_temperature": Measure("degC"),
                 "trip_expected": Measure(""),
                 "charge_current_drawn": Measure("A"),
                 "protection_correct": Measure("", doc="cut exactly when above max_temperature"),
                 "tripped": Measure(""),
                 "trip_cell_voltage": Measure("V"),
                 "trip_temperature": Measure("degC"),
                 "trip_delay": Measure("s", required=True),
                 "alarms": Measure(""),
                 "alarm_raised": Measure("", required=True),
                 "current_after_trip": Measure("A", required=True),
                 "alarm_cleared": Measure(""),
                 "recovery_time": Measure("s"),
                 "probe_current_after": Measure("A"),
                 "conducts_after_recovery": Measure("")})
def protection_trip(ctx: StepContext) -> None:
    """Provoke one protection of a module's BMS (``protection``: over_voltage, under_voltage,
    charge_over_current, discharge_over_current, short_circuit, over_temperature) and measure
    threshold, delay, alarm and recovery against the plan (see the module doc for how)."""
    protection = str(ctx.param("protection"))
    if protection not in PROTECTIONS:
        raise ValueError(f"step '{ctx.step_name}': protection '{protection}': one of {', '.join(PROTECTIONS)}")
    alarm, side = PROTECTIONS[protection]
    bench = ctx.bench
    outputs_off(bench)
    if bench.channels.actuator:
        connect_bank(bench)
    bench.clock.wait(float(ctx.param("rest_s", 1.0)))
    drive = _Drive(ctx, side)
    try:
        tripped = _provoke(ctx, drive, protection, alarm)
    finally:
        drive.off()
    _trace_trip(ctx, protection, drive)
    if tripped and ctx.params.get("recover", True):
        _recovery(ctx, protection, alarm)


def _provoke(ctx: StepContext, drive: _Drive, protection: str, alarm: str) -> bool | None:
    """Drive the module into the protection and measure the trip and its alarm: whether it
    tripped, or None when nothing was expected to trip (over-temperature below its limit)."""
    bench = ctx.bench
    cut = float(ctx.param("cut_current", 1.0))
    poll = float(ctx.param("poll_s", 0.05))
    if protection in ("over_voltage", "under_voltage"):
        tripped = _voltage_trip(ctx, drive, protection, cut, poll)
    elif protection == "over_temperature":
        tripped = _temperature_trip(ctx, drive, cut, poll)
    else:
        tripped = _current_trip(ctx, drive, protection, cut, poll)
    if tripped is None:
        return None

    def alarm_seen() -> bool:
        drive.amps()  # keep watching the bench while the BMS reports
        present = alarm in _alarms(bench)
        drive.seen.add(bench.clock.now(), alarm=present)
        return present

    raised = tripped and _wait_for(bench, alarm_seen, float(ctx.param("alarm_s", 5.0)), poll) is not None
    ctx.measure("alarms", ", ".join(sorted(_alarms(bench))) or "(none)", "")
    ctx.measure("alarm_raised", raised, "", ctx.limit("alarm_raised"),
                diagnosis=DIAG_ALARM + f" (expected 0x359 {alarm})")
    after = drive.amps()
    ctx.measure("current_after_trip", after, "A", ctx.limit("current_after_trip"), diagnosis=_diag(protection))
    return tripped


def _trace_trip(ctx: StepContext, protection: str, drive: _Drive) -> None:
    """The provocation as the bench saw it, for the report: the drive current (the cut is where
    it falls), the BMS's extreme cell voltage or temperature where the check read them, its
    alarm while the check waited for it, and the moments -- step, onset, cut -- against the
    plan's delay window."""
    ctx.measure.trace(f"trip_{protection}", "timeline", drive.seen.columns(key="current"),
                      units={"t": "s", "current": "A", "cell_max": "V", "cell_min": "V", "temperature": "degC"},
                      marks=drive.moments, title=f"{protection.replace('_', ' ').capitalize()} trip")


def _trip_watch(ctx: StepContext, drive: _Drive, cut: float, poll: float, observe: float,
                near: Callable[[], bool] | None = None,
                condition: Callable[[], bool] | None = None) -> tuple[float | None, float | None, float]:
    """Watch the drive until its current falls below ``cut``: (time of the cut from now or None,
    time the condition first held or None, the last current seen before the cut)."""
    bench = ctx.bench
    coarse = float(ctx.param("coarse_poll_s", poll))
    start = bench.clock.now()
    seen_condition: float | None = None
    last = drive.amps()
    while True:
        now = bench.clock.now() - start
        amps = drive.amps()
        if condition is not None and seen_condition is None and condition():
            seen_condition = now
        if amps < cut and now > 0:
            return now, seen_condition, last
        last = amps
        if now >= observe - 1e-9:
            return None, seen_condition, last
        step = poll if (near is None or near()) else coarse
        bench.clock.wait(min(step, observe - now))


def _voltage_trip(ctx: StepContext, drive: _Drive, protection: str, cut: float, poll: float) -> bool:
    bench = ctx.bench
    over = protection == "over_voltage"
    which = "max" if over else "min"
    threshold = float(ctx.param("threshold"))
    approach = float(ctx.param("approach", threshold - 0.1 if over else threshold + 0.3))
    amps = float(ctx.param("charge_current" if over else "load_current"))
    observe = float(ctx.param("observe_s", 7200.0))
    extreme = {"v": _cell_extreme(bench, which)}
    onset: dict[str, float] = {}

    def near() -> bool:
        value = _cell_extreme(bench, which)
        if math.isnan(value):
            return False
        extreme["v"] = max(extreme["v"], value) if over else min(extreme["v"], value)
        drive.seen.add(bench.clock.now(), **{f"cell_{which}": value})
        close = value >= approach if over else value <= approach
        if close:  # the BMS's own onset (its warning: debounce running) and the plan's level
            now = bench.clock.now()
            if "warning" not in onset and protection in _warnings(bench):
                onset["warning"] = now
            if "level" not in onset and (value >= threshold if over else value <= threshold):
                onset["level"] = now
        return close

    drive.on(amps)
    started = bench.clock.now()
    t_cut, _, before = _trip_watch(ctx, drive, cut, poll, observe, near=near)
    ctx.measure("drive_current", before, "A")
    ctx.measure("tripped", t_cut is not None, "", ctx.limit("tripped"),
                diagnosis=_diag(protection) + f" (no cut within {observe:g} s; cell {which} reached "
                                              f"{extreme['v']:.4g} V)")
    ctx.measure("trip_cell_voltage", extreme["v"], "V", ctx.limit("trip_cell_voltage"), diagnosis=_diag(protection))
    drive.moment("warning_s", onset.get("warning"))
    drive.moment("threshold_s", onset.get("level"))
    if t_cut is not None:
        at = onset.get("warning", onset.get("level"))
        drive.moment("trip_s", started + t_cut)
        drive.delay_window(at, ctx.limit("trip_delay"))
        what = "the BMS's warning" if "warning" in onset else f"the cell passed {threshold:g} V"
        delay = started + t_cut - at if at is not None else math.nan
        ctx.measure("trip_delay", delay, "s", ctx.limit("trip_delay"),
                    diagnosis=_diag(protection) + f" (cut {delay:.3g} s after {what})")
    return t_cut is not None


def _current_trip(ctx: StepContext, drive: _Drive, protection: str, cut: float, poll: float) -> bool:
    bench = ctx.bench
    below = ctx.params.get("below_current")
    if below is not None:
        drive.moment("below_step_s", bench.clock.now())
        drive.on(float(below))
        t_cut, _, before = _trip_watch(ctx, drive, cut, poll, float(ctx.param("below_s", 5.0)))
        ctx.measure("below_current", before, "A")
        ctx.measure("no_trip_below", t_cut is None, "", ctx.limit("no_trip_below"),
                    diagnosis=_diag(protection) + f" (tripped at {float(below):g} A after {t_cut or 0:.3g} s)")
        drive.off()
        if t_cut is not None:  # it tripped already: let it recover before the real step
            bench.clock.wait(float(ctx.param("recover_observe_s", 120.0)))
        bench.clock.wait(float(ctx.param("between_s", 2.0)))
    amps = float(ctx.param("trip_current"))
    step = bench.clock.now()
    drive.moment("step_s", step)
    drive.on(amps)
    observe = float(ctx.param("observe_s", 10.0))
    t_cut, _, before = _trip_watch(ctx, drive, cut, poll, observe)
    drive.moment("trip_s", None if t_cut is None else step + t_cut)
    drive.delay_window(step, ctx.limit("trip_delay"))
    ctx.measure("trip_current", before, "A")
    ctx.measure("tripped", t_cut is not None, "", ctx.limit("tripped"),
                diagnosis=_diag(protection) + f" (still {before:.4g} A after {observe:g} s)")
    if t_cut is not None:
        ctx.measure("trip_delay", t_cut, "s", ctx.limit("trip_delay"),
                    diagnosis=_diag(protection) + f" (cut {t_cut:.3g} s after the {amps:g} A step)")
    return t_cut is not None


def _temperature_trip(ctx: StepContext, drive: _Drive, cut: float, poll: float) -> bool | None:
    """Charging above the charge temperature limit must be cut; below it must not be."""
    bench = ctx.bench
    limit_c = float(ctx.param("max_temperature"))
    temperature = _temperature(bench)
    expected = temperature > limit_c
    ctx.measure("module_temperature", temperature, "degC")
    ctx.measure("trip_expected", expected, "")
    step = bench.clock.now()
    drive.seen.add(step, temperature=temperature)
    drive.moment("step_s", step)
    drive.on(float(ctx.param("charge_current")))
    observe = float(ctx.param("observe_s", 10.0))
    t_cut, _, before = _trip_watch(ctx, drive, cut, poll, observe)
    drive.moment("trip_s", None if t_cut is None else step + t_cut)
    ctx.measure("charge_current_drawn", before, "A")
    ctx.measure("protection_correct", (t_cut is not None) == expected, "", ctx.limit("protection_correct"),
                diagnosis=_diag("over-temperature") + (
                    f" (charging at {temperature:.3g} degC, above {limit_c:g} degC, not cut within {observe:g} s)"
                    if expected else f" (charging cut at {temperature:.3g} degC, below {limit_c:g} degC)"))
    if not expected:
        return None
    if t_cut is not None:
        at_trip = _temperature(bench)
        drive.seen.add(bench.clock.now(), temperature=at_trip)
        drive.delay_window(step, ctx.limit("trip_delay"))
        ctx.measure("trip_temperature", at_trip, "degC", ctx.limit("trip_temperature"),
                    diagnosis=_diag("over-temperature"))
        ctx.measure("trip_delay", t_cut, "s", ctx.limit("trip_delay"), diagnosis=_diag("over-temperature"))
    return t_cut is not None


def _recovery(ctx: StepContext, protection: str, alarm: str) -> None:
    """The alarm clears and the switch conducts again: by time (over-current: the BMS's recovery
    delay; over-temperature once cooler) or, after a voltage cut, by moving the cells back inside
    the window the way the BMS still allows -- a discharge after an over-voltage cut, a charge
    after an under-voltage cut (``recovery_current``; charging at ``recovery_voltage``). The alarm
    is watched where the BMS's present state is read (SunSpec Evt1 when the station has it, else
    0x359); once it clears, ``probe_current`` in the direction that was cut must flow again
    (``conducts_after_recovery``, for ``probe_s``)."""
    bench = ctx.bench
    observe = float(ctx.param("recover_observe_s", 600.0))
    coarse = float(ctx.param("recover_poll_s", 1.0))
    if protection == "under_voltage":
        bench.supply.set_voltage(float(ctx.param("recovery_voltage", 14.2)))
        bench.supply.set_current(float(ctx.param("recovery_current", 10.0)))
        bench.supply.output(True)
    elif protection == "over_voltage":
        bench.load.set_current(float(ctx.param("recovery_current", 10.0)))
        bench.load.input(True)
    client = state_client(bench)
    try:
        took = _wait_for(bench, lambda: alarm not in client.status().alarms, observe, coarse)
    finally:
        outputs_off(bench)
    ctx.measure("alarm_cleared", took is not None, "", ctx.limit("alarm_cleared"),
                diagnosis=DIAG_RECOVERY + f" ({alarm} still set after {observe:g} s)")
    ctx.measure("recovery_time", took if took is not None else observe, "s", ctx.limit("recovery_time"),
                diagnosis=DIAG_RECOVERY)
    probe = float(ctx.param("probe_current", 5.0))
    if took is None or probe <= 0:
        return
    drive = _Drive(ctx, PROTECTIONS[protection][1])
    try:
        drive.on(probe)
        bench.clock.wait(float(ctx.param("probe_s", 1.0)))
        flowing = drive.amps()
    finally:
        drive.off()
    ctx.measure("probe_current_after", flowing, "A")
    ctx.measure("conducts_after_recovery", flowing >= 0.5 * probe, "", ctx.limit("conducts_after_recovery"),
                diagnosis=DIAG_RECOVERY + f" (alarm cleared, but {probe:g} A does not flow: {flowing:.3g} A)")


# ================================================================== balancing (end of line)
def module_cell_voltages(bench: Any) -> dict[str, tuple[float, float]]:
    """(lowest, highest) cell voltage of each module as its BMS reports it (SunSpec 805
    CellVMin/CellVMax), by position; ``{}`` without SunSpec or where a module does not report."""
    client = getattr(bench, "sunspec", None)
    if client is None:
        return {}
    out = {}
    for ref in client.refs(805):
        block = client.read_model(ref)
        low, high = block.value("CellVMin"), block.value("CellVMax")
        s, p = block.value("ModIdx"), block.value("StrIdx")
        if None not in (low, high, s, p):
            out[f"s{int(s)}p{int(p)}"] = (float(low), float(high))
    return dict(sorted(out.items(), key=lambda kv: _natural(kv[0])))


def cell_spread_diagnosis(cells: dict[str, tuple[float, float]], low_v: float | None, high_v: float | None) -> str:
    """Whose cells the spread is: within one module (its own lowest to highest cell makes the
    spread -- 002: cell mismatch its balancing must manage) or between modules whose own cells
    agree (a module at another charge than the rest: parallel peers 004's voltage or SOC
    mismatch, a string 001's series mismatch). Chosen from the BMS's per-module cell figures
    and naming the module."""
    if not cells:
        return diagnose("cell_imbalance", "module", f"cells {low_v} V to {high_v} V (no per-module cell data)")
    own = {m: hi - lo for m, (lo, hi) in cells.items()}
    lowest = min(cells, key=lambda m: cells[m][0])
    highest = max(cells, key=lambda m: cells[m][1])
    across = cells[highest][1] - cells[lowest][0]
    inner = max(own, key=lambda m: (own[m], _natural(m)))
    if len(cells) == 1 or own[inner] >= across / 2:
        lo, hi = cells[inner]
        return diagnose("cell_imbalance", inner, f"its cells {lo:.3f} V to {hi:.3f} V "
                        f"({(hi - lo) * 1e3:.0f} mV apart within the module)")
    means = {m: (lo + hi) / 2 for m, (lo, hi) in cells.items()}
    odd = outlier(means)
    assert odd is not None
    lo, hi = cells[odd.name]
    peers = [v for m, v in means.items() if m != odd.name]
    evidence = (f"its cells {lo:.3f}-{hi:.3f} V against {sum(peers) / len(peers):.3f} V in the other modules "
                f"(each module's own cells within {max(own.values()) * 1e3:.0f} mV): the module is at another charge")
    row = "soc_mismatch" if has_parallel_peer(odd.name, list(cells)) else "series_mismatch"
    return diagnose(row, odd.name, evidence)


@check("cell_balance",
       params={"rest_s": Param("s")},
       measures={"max_cell_voltage": Measure("V"),
                 "min_cell_voltage": Measure("V"),
                 "cell_spread": Measure("V", required=True),
                 "cell_spread_{module}": Measure("V", doc="within the module, SunSpec 805"),
                 "cells_balancing": Measure("", doc="SunSpec 805 NCellBal, summed")})
def cell_balance(ctx: StepContext) -> None:
    """Cell balance as the BMS reports it (end of line): after ``rest_s`` the spread between the
    highest and lowest cell voltage (``cell_spread``; SunSpec 802 CellVMax/CellVMin, else CAN
    0x373) and how many cells the BMS is balancing (SunSpec 805 NCellBal; ``cells_balancing``:
    a module at mid SOC has nothing to balance -- balancing starts near the top, 3.40 V).

    Each module's own spread (805 CellVMin/CellVMax, ``cell_spread_{module}``) tells whose the
    spread is: cells of one module apart (002: cell mismatch) or, on a bank, one module's cells
    all away from the others' (the module is at another charge: 004 voltage or SOC mismatch
    between parallel peers, 001 series mismatch in a string); the diagnosis names it."""
    bench = ctx.bench
    outputs_off(bench)
    bench.clock.wait(float(ctx.param("rest_s", 1.0)))
    t = state_client(bench).telemetry()
    spread = (float(t.max_cell_v) - float(t.min_cell_v)) if t.max_cell_v is not None and t.min_cell_v is not None \
        else math.nan
    cells = module_cell_voltages(bench)
    ctx.measure("max_cell_voltage", t.max_cell_v, "V")
    ctx.measure("min_cell_voltage", t.min_cell_v, "V")
    for module, (lo, hi) in cells.items():
        ctx.measure(f"cell_spread_{module}", hi - lo, "V")
    ctx.measure("cell_spread", spread, "V", ctx.limit("cell_spread"),
                diagnosis=cell_spread_diagnosis(cells, t.min_cell_v, t.max_cell_v))
    client = getattr(bench, "sunspec", None)
    if client is None:
        return
    balancing: dict[str, int] = {}
    for ref in client.refs(805):
        block = client.read_model(ref)
        value = int(block.value("NCellBal") or 0)
        if value:
            balancing[f"s{int(block.value('ModIdx'))}p{int(block.value('StrIdx'))}"] = value
    busy = max(balancing, key=lambda m: balancing[m]) if balancing else "module"
    ctx.measure("cells_balancing", sum(balancing.values()), "", ctx.limit("cells_balancing"),
                diagnosis=diagnose("cell_imbalance", busy, f"{balancing.get(busy, 0)} cell(s) balancing at rest, "
                                   f"mid SOC (balancing starts near the top of charge, 3.40 V): its cells are "
                                   f"apart or its balancing settings are wrong"))


# ================================================================== AC-IR and SoH (end of line)
def _acir_readings(bench: Any) -> tuple[dict[str, float], dict[str, float]]:
    """(module -> AC-IR ohm, module -> the voltage the meter read) of every module the AC-IR
    meter's leads reach -- on a station of today one, the channel map's ``acir_module``."""
    ohm, volts = bench.acir.measure()
    module = bench.channels.acir_module or "module"
    return {module: float(ohm)}, {module: float(volts)}


def _soh_by_module(bench: Any, modules: list[str]) -> dict[str, float]:
    """SoH (%) of each module from its BMS: SunSpec 805 per module where the station has it,
    else, for a single module, the BMS's own SOH (CAN 0x355 / SunSpec 802)."""
    reports = module_bms_reports(bench)
    if reports:
        return {m: float(r.soh_pct) for m, r in reports.items()
                if r.soh_pct is not None and not math.isnan(r.soh_pct)}
    if len(modules) == 1 and bench.bms is not None:
        soh = state_client(bench).telemetry().soh_pct
        if soh is not None and not math.isnan(soh):
            return {modules[0]: float(soh)}
    return {}


def _weak(module: str, soh: dict[str, float], soh_limit: Limits) -> bool:
    """Its SoH says the module is old: below its peers' by more than SOH_EVIDENCE_PCT, or, with no
    peer, outside the plan's ``soh`` limit."""
    if module not in soh:
        return False
    peers = [v for m, v in soh.items() if m != module]
    if peers:
        return sum(peers) / len(peers) - soh[module] > SOH_EVIDENCE_PCT
    return soh_limit.judged and soh_limit.judge(soh[module]) == "fail"


def acir_diagnosis(module: str, evidence: str, soh: dict[str, float], soh_limit: Limits) -> str:
    """A module's resistance too high or too far from its peers / the batch: an older (weak)
    module when its SoH says so (004), else a mixed batch or aged module (003: IR within 3 mohm)."""
    if module in soh:
        evidence += f"; BMS SoH {soh[module]:.1f} %"
    return diagnose("weak_module" if _weak(module, soh, soh_limit) else "ir_mismatch", module, evidence)


def judge_acir(ctx: StepContext, readings: dict[str, float], soh: dict[str, float]) -> None:
    """Record and judge AC-IR readings (ohm, by module) and SoH (%, by module): each module and
    ``acir`` (the highest) against the plan's range; with several modules ``acir_spread`` (003:
    modules within 3 mohm of each other), with one ``acir_delta`` against ``acir_reference`` (the
    batch figure); ``soh`` the lowest SoH. Every diagnosis names the module."""
    soh_limit = ctx.limit("soh")
    reference = ctx.params.get("acir_reference")
    for module in sorted(readings, key=_natural):
        ctx.measure(f"acir_{module}", readings[module], "ohm")
    worst = max(readings, key=lambda m: (readings[m], _natural(m)))
    others = [v for m, v in readings.items() if m != worst]
    if others:
        against = f"{min(readings.values()) * 1e3:.2f} mOhm for the lowest module"
    elif reference is not None:
        against = f"the batch reference {float(reference) * 1e3:.2f} mOhm"
    else:
        against = "no reference"
    evidence = f"AC-IR {readings[worst] * 1e3:.2f} mOhm against {against}"
    diagnosis = acir_diagnosis(worst, evidence, soh, soh_limit)
    ctx.measure("acir", readings[worst], "ohm", ctx.limit("acir"), diagnosis=diagnosis)
    if others:
        ctx.measure("acir_spread", max(readings.values()) - min(readings.values()), "ohm",
                    ctx.limit("acir_spread"), diagnosis=diagnosis)
    elif reference is not None:
        ctx.measure("acir_delta", abs(readings[worst] - float(reference)), "ohm", ctx.limit("acir_delta"),
                    diagnosis=diagnosis)
    for module in sorted(soh, key=_natural):
        ctx.measure(f"soh_{module}", soh[module], "%")
    if soh:
        low = min(soh, key=lambda m: (soh[m], _natural(m)))
        ohm = readings.get(low)
        ctx.measure("soh", soh[low], "%", soh_limit,
                    diagnosis=diagnose("weak_module", low, f"BMS SoH {soh[low]:.1f} %"
                                       + (f", AC-IR {ohm * 1e3:.2f} mOhm" if ohm is not None else "")
                                       + (f" against the batch reference {float(reference) * 1e3:.2f} mOhm"
                                          if ohm is not None and reference is not None and not others else "")))


@check("module_acir",
       params={"rest_s": Param("s"),
               "acir_reference": Param("ohm", doc="the batch figure a module measured alone is judged against")},
       measures={"acir": Measure("ohm", required=True, doc="the highest module reading"),
                 "acir_spread": Measure("ohm", doc="highest minus lowest, where several modules are read"),
                 "acir_delta": Measure("ohm", doc="against acir_reference, where one module is read"),
                 "acir_voltage_error": Measure("V", doc="meter against scanner: leads on the terminals"),
                 "acir_{module}": Measure("ohm", doc="each module's reading"),
                 "soh": Measure("%", doc="the lowest module SoH the BMS reports"),
                 "soh_{module}": Measure("%", doc="SunSpec 805 SoH (else CAN 0x355 for a single module)")})
def module_acir(ctx: StepContext) -> None:
    """1 kHz AC internal resistance and SoH of the modules (end of line; 003: "if mixed, ensure
    internal resistance differs by <= +-3 mohm"; module datasheets: <= 20 mohm; 004: module
    health data, SOH and AC-IR, for an older module).

    003's figure compares modules with each other, so where the AC-IR meter reads several
    modules they are judged module to module: ``acir_spread``, the highest minus the lowest.
    Where it reads one -- one module on the end-of-line fixture, or a station whose meter leads
    sit on one module -- there is nobody to compare it with on the bench, and it is judged
    against the batch figure the plan gives (``acir_reference``, with its unit): ``acir_delta``.
    ``acir`` (the highest reading) is judged against the plan's range. Load and supply are off;
    on a bank the branches are opened for the reading (the meter must see the module alone) and
    closed again. ``soh`` is the lowest SoH the BMS reports for the modules (SunSpec 805; a
    single module's CAN 0x355 without SunSpec), the other half of 004's module health data.
    ``acir_voltage_error``: the meter's voltage against the scanner's (a lead not on the
    terminals). A failed figure names the module: an older (weak) module when its SoH is low
    (004), else a mixed batch or aged module (003)."""
    bench = ctx.bench
    several = len(bench.channels.module_voltage_channels()) > 1
    with branches_opened(bench) if several else _nothing_opened(bench):
        bench.clock.wait(float(ctx.param("rest_s", 0.5)))
        readings, meter_volts = _acir_readings(bench)
        scanned = bench.module_voltages()
    judge_acir(ctx, readings, _soh_by_module(bench, list(readings)))
    for module, volts in meter_volts.items():
        if module in scanned:
            ctx.measure("acir_voltage_error", abs(volts - scanned[module]), "V", ctx.limit("acir_voltage_error"),
                        diagnosis=f"{module}: AC-IR leads not on the module's terminals -- measured: the meter "
                                  f"reads {volts:.3f} V, the scanner {scanned[module]:.3f} V -- check the test "
                                  "leads and fixture")


@contextmanager
def _nothing_opened(bench: Any) -> Iterator[list[str]]:
    outputs_off(bench)
    yield []
