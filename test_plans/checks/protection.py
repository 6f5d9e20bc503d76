"""Protection: a module's BMS protection trips (one module on the bench, 1S1P), and the thermal
limits of a bank's joints at its rated current.

001: "The BMS can protect against overvoltage, undervoltage, overcurrent, short circuit, and
temperature issues". DOMAIN.md section 3 gives a 12.8 V LFP module's typicals: cell OVP 3.65-3.75 V
after ~1 s, UVP 2.2-2.5 V after 1-4 s, discharge OCP ~1.5 x rating after ~1 s, short circuit
100-400 us, charge 0-45 degC, discharge -20-60 degC, balancing 30-180 mA. The plan carries the
module's specification as limits; ``protection_trip`` provokes each protection with the bench
and measures:

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

``thermal_rise`` (000: busbar cross-section such that the rise stays within 30 K at the maximum
rated current; 003/004: hot terminal or cable end; 002/003: module temperature spread) loads the
bank and judges the steady rise of its bus segments and terminals at the rated current
(:mod:`test_plans.checks.thermal_fit`), and the spread of its module bodies. Thermocouple points
(station channel map): a module body (``s1p2``), a terminal (``s1p2.+``) or a bus segment (any
point named ``...bus...``).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from bankmodel.positions import POSITION, TERMINAL, modules_of_branch, natural_key
from harness.measure import Limits
from test_plans.checks import Measure, Param, StepContext, check
from test_plans.checks.bench_helpers import connect_bank, outputs_off, poll_until
from test_plans.checks.branches import peer_mean, spread
from test_plans.checks.diagnosis import diagnose
from test_plans.checks.thermal_fit import estimate_rise, is_steady, scale_rise
from test_plans.checks.traces import TraceRows


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
        self.read_at = self.seen.origin

    def on(self, amps: float) -> float:
        """Drive ``amps``; returns the bench time by which the output is on (each command's
        error-queue query has been answered, so the instrument has acted on it)."""
        if self.side == "charge":
            self.bench.supply.set_voltage(self.cv)
            self.bench.supply.set_current(amps)
            self.bench.supply.output(True)
        else:
            self.bench.load.set_current(amps)
            self.bench.load.input(True)
        return self.bench.clock.now()

    def amps(self) -> float:
        """The drive's current, read now; :attr:`read_at` is when its answer arrived.

        The answer's arrival, not the moment the query left, dates a reading: the instrument
        sampled somewhere between the two, and on a wall-clock bench under load the wait is
        mostly the far end's (the query sits unread until its process runs). :meth:`on` is dated
        the same way, so the two lags cancel in a delay rather than add -- dating the query's
        departure read a 1.05 s over-current delay as 0.99 s with both cores busy."""
        inst = self.bench.supply if self.side == "charge" else self.bench.load
        value = abs(float(inst.measure_current()))
        self.read_at = self.bench.clock.now()
        self.seen.add(self.read_at, current=value)
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
    return set(bench.bms.status().warnings)


def _cell_extreme(bench: Any, which: str) -> float:
    t = bench.bms.telemetry()
    value = t.max_cell_v if which == "max" else t.min_cell_v
    return math.nan if value is None else float(value)


def _temperature(bench: Any) -> float:
    return float(bench.bms.telemetry().temperature_c)


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
                 "conducts_after_recovery": Measure("")},
       needs=("actuator", "bms"), uses=("load", "module_reports", "supply"))
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

    raised = tripped and poll_until(bench, alarm_seen, float(ctx.param("alarm_s", 5.0)), poll) is not None
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
    """Watch the drive until its current, once seen at or above ``cut``, falls below it: (time
    of the cut from now or None, time the condition first held or None, the last current seen
    before the cut).

    Why "once seen": a load or supply takes time to reach its setpoint (slew, and on a bench in
    wall-clock time the first reading may predate the step), so a low first reading is not yet
    a cut -- counting it measured a 1 s over-current delay as 0.2 ms on a real-time bench.
    """
    bench = ctx.bench
    coarse = float(ctx.param("coarse_poll_s", poll))
    start = bench.clock.now()
    seen_condition: float | None = None
    last = drive.amps()
    conducting = last >= cut
    while True:
        amps = drive.amps()
        now = drive.read_at - start
        if condition is not None and seen_condition is None and condition():
            seen_condition = now
        if amps >= cut:
            conducting = True
        elif conducting and now > 0:
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
    step = drive.on(amps)
    drive.moment("step_s", step)
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
    drive.seen.add(bench.clock.now(), temperature=temperature)
    step = drive.on(float(ctx.param("charge_current")))
    drive.moment("step_s", step)
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
    client = bench.bms
    try:
        took = poll_until(bench, lambda: alarm not in client.status().alarms, observe, coarse)
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


# ================================================================== thermal rise (000, 003, 004)
def thermocouple_kinds(points: list[str]) -> dict[str, list[str]]:
    """Thermocouple points by kind: module bodies, terminals, bus segments."""
    kinds: dict[str, list[str]] = {"module": [], "terminal": [], "bus": []}
    for point in points:
        if POSITION.match(point):
            kinds["module"].append(point)
        elif TERMINAL.match(point):
            kinds["terminal"].append(point)
        elif "bus" in point:
            kinds["bus"].append(point)
    return {k: sorted(v, key=natural_key) for k, v in kinds.items()}


def _soak(bench: Any, points: list[str], soak_s: float, sample_s: float, window_s: float,
          rate: float) -> tuple[float, bool]:
    """Rest with every output off until the points are steady (less than ``rate`` over
    ``window_s``) or ``soak_s`` has passed, so a rise starts from equilibrium, not from the
    warmth an earlier step left: (time rested, steady)."""
    if soak_s <= 0 or not points:
        return 0.0, False
    outputs_off(bench)
    times: list[float] = [0.0]
    first = bench.temperatures(points)
    history = {p: [first[p]] for p in points}
    elapsed = 0.0
    while soak_s - elapsed > 1e-9:
        chunk = min(sample_s, soak_s - elapsed)
        bench.clock.wait(chunk)
        elapsed += chunk
        now = bench.temperatures(points)
        times.append(elapsed)
        for p in points:
            history[p].append(now[p])
        if all(is_steady(times, history[p], window_s, rate) for p in points):
            return elapsed, True
    return elapsed, False


def _minutes(seconds: float) -> str:
    return f"{seconds / 60.0:.1f} min"


@check("thermal_rise",
       params={"load_current": Param("A", setpoint="load.current", doc="the current applied"),
               "rated_current": Param("A", doc="the current the rises are judged at (default: the DUT's "
                                           "parallel count x the module's discharge limit)"),
               "scale_to_rated": Param(kind="flag", doc="false: judge at load_current as measured"),
               "resistance_tempco": Param(kind="number", doc="per K, of the bus conductors (copper "
                                          "0.00393, IEC 60228): corrects the I² extrapolation"),
               "soak_s": Param("s", doc="longest rest before the load, ended once the bus is steady"),
               "duration_s": Param("s", doc="the longest run"),
               "sample_s": Param("s"),
               "steady_rate": Param("K", doc="steady: every bus segment changed less than this ..."),
               "steady_window": Param("s", doc="... over this much time (the run stops)"),
               "min_tau_covered": Param(kind="number", doc="extrapolate a joint from its fitted time "
                                        "constant only if the run lasted this many of them")},
       measures={"load_current_measured": Measure("A", doc="mean of the load's readings over the run"),
                 "rated_current": Measure("A"),
                 "current_scale": Measure("", doc="(rated / measured current)^2"),
                 "run_time": Measure("s"),
                 "rise_method": Measure("", doc="how the judged rises were obtained"),
                 "busbar_rise_measured": Measure("K", doc="hottest bus segment at the end, at the load current"),
                 "busbar_time_constant": Measure("s"),
                 # rise_<point>: point names hold '.', '+', '-' (s1p1.+, bus.pos.1, g1.bus.pos.1)
                 "rise_{module}.+": Measure("K"),
                 "rise_{module}.-": Measure("K"),
                 "rise_{segment}bus{rest}": Measure("K"),
                 "rise_{segment}bus.{polarity}.{k}": Measure("K"),
                 "rise_{group}.bus.{polarity}.{k}": Measure("K"),
                 "busbar_rise": Measure("K", required=True, doc="steady state at the rated current"),
                 "terminal_rise": Measure("K", required=True),
                 "terminal_excess": Measure("K", required=True, doc="terminal above its own module body "
                                            "(highest mean of three readings)"),
                 "temperature_{module}": Measure("degC"),
                 "module_spread": Measure("K", required=True)},
       needs=("actuator", "scanner"), uses=("load", "supply"))
def thermal_rise(ctx: StepContext) -> None:
    """Temperature rise of the bank's joints at its rated current (000: busbar cross-section such
    that the rise stays within 30 K at the maximum rated current; 003/004: hot terminal or cable
    end; 002/003: module temperature spread).

    First the bank rests, outputs off, until every bus segment is steady (``steady_rate`` over
    ``steady_window``) or ``soak_s`` has passed: the rise is counted from equilibrium, not from
    the warmth an earlier step left. Then ``load_current`` is applied (the station's load may sink less than the bank's
    ``rated_current``) for up to ``duration_s``, sampled every ``sample_s``; the run stops early
    once every bus segment's rise changed less than ``steady_rate`` over ``steady_window``.
    Each joint's final rise at the applied current is then

    - ``steady``: the rise the run ended at, when it had stopped changing;
    - ``fitted``: else ``T(t) = T_inf - (T_inf - T0) exp(-t/tau)`` fitted to its record, T_inf
      taken when the run covered ``min_tau_covered`` time constants;
    - ``end of run``: else the rise the run reached (a terminal rides on its module body, whose
      time constant of hours is longer than the bank can hold the current).

    With ``scale_to_rated`` (default) the rises are brought to ``rated_current``: heat is I² R,
    so x (rated / measured)², for the bus with its copper's ``resistance_tempco`` (the
    resistance follows the temperature: exact for a conductor cooled in proportion to its rise);
    the terminal's excess over its own module body (a loose lug's signature, ``terminal_excess``)
    the same way. A bus segment neither steady nor fitted is an ERROR (nothing to judge). The
    module bodies' spread is taken at the end of the run, as measured. ``rise_method`` says
    which method, time constant, fit and scale each judged figure came from.
    """
    bench, dut = ctx.bench, ctx.dut
    outputs_off(bench)
    connect_bank(bench)
    kinds = thermocouple_kinds(list(bench.channels.thermocouple_channels()))
    amps = float(ctx.param("load_current"))
    duration = float(ctx.param("duration_s", 1800.0))
    sample_s = float(ctx.param("sample_s", 60.0))
    window = float(ctx.param("steady_window", 300.0))
    rate = float(ctx.param("steady_rate", 0.1))
    min_cover = float(ctx.param("min_tau_covered", 1.0))
    joints = kinds["bus"] + kinds["terminal"]
    soaked = _soak(bench, kinds["bus"], float(ctx.param("soak_s", 0.0)), sample_s, window, rate)
    rows = TraceRows(bench.clock.now())
    t_start = bench.clock.now()
    start = bench.temperatures()
    rows.add(t_start, **start)
    times: list[float] = [0.0]
    history: dict[str, list[float]] = {p: [0.0] for p in joints}
    excess_rows: list[tuple[float, dict[str, float]]] = []   # (t, terminal -> above its module body)
    drawn: list[float] = []
    currents: dict[str, float] = {}
    steady = False
    bench.load.set_current(amps)
    bench.load.input(True)
    try:
        elapsed = 0.0
        while duration - elapsed > 1e-9:
            chunk = min(sample_s, duration - elapsed)
            bench.clock.wait(chunk)
            elapsed += chunk
            now = bench.temperatures()
            drawn.append(bench.load.measure_current())
            rows.add(bench.clock.now(), **now)
            times.append(elapsed)
            for point in joints:
                history[point].append(now[point] - start[point])
            excess_rows.append((elapsed, {t: now[t] - now[b] for t in kinds["terminal"]
                                          if (b := TERMINAL.match(t).group(1)) in now}))  # type: ignore[union-attr]
            if not currents and elapsed >= duration / 2:
                currents = bench.branch_currents()
            if kinds["bus"] and all(is_steady(times, history[p], window, rate) for p in kinds["bus"]):
                steady = True
                break
        if not currents:
            currents = bench.branch_currents()
        final = bench.temperatures()
    finally:
        bench.load.input(False)
    measured_a = sum(drawn) / len(drawn) if drawn else math.nan
    # a terminal's excess over its own body: its lug's heat shows within minutes (the terminal's
    # small heat capacity), before the module body warms under it; the highest of its readings
    # averaged three at a time (one noisy reading is no peak)
    excess: dict[str, float] = {}
    for terminal in kinds["terminal"]:
        series = [row[terminal] for _, row in excess_rows if terminal in row]
        runs = [sum(series[k:k + 3]) / len(series[k:k + 3]) for k in range(max(1, len(series) - 2))] if series else []
        if runs:
            excess[terminal] = max(runs)
    module_limit = dut.module_type.bms.limits.discharge_current_a if dut is not None else math.nan
    rated_param = ctx.params.get("rated_current")
    rated = float(rated_param) if rated_param is not None else (dut.dut.parallel * module_limit if dut else amps)
    scaled = bool(ctx.params.get("scale_to_rated", True))
    judged_at = rated if scaled else measured_a
    tempco = float(ctx.param("resistance_tempco", 0.0))
    factor = (judged_at / measured_a) ** 2 if measured_a > 0 else math.nan
    ctx.measure("load_current_measured", measured_a, "A")
    ctx.measure("rated_current", rated, "A")
    ctx.measure("current_scale", factor, "")
    ctx.measure("run_time", times[-1], "s")

    # the rise is I² R of a constant current: a load that could not hold it (a bank run empty, a
    # BMS that tripped) leaves nothing to extrapolate from
    held = bool(drawn) and min(drawn) >= 0.95 * amps
    estimates = {p: estimate_rise(p, times, history[p], window, rate, min_cover) for p in joints}
    if not held:
        for e in estimates.values():
            e.method = "end of run"
    judged: dict[str, float] = {}
    for point in kinds["bus"]:  # a segment whose time constant the run did not cover: its end-of-run rise
        judged[point] = scale_rise(estimates[point].final, measured_a, judged_at, start[point], tempco)
    for point in kinds["terminal"]:
        judged[point] = estimates[point].final * factor
    for point in joints:
        ctx.measure(f"rise_{point}", judged[point], "K")

    notes = [f"rest {_minutes(soaked[0])} before the load (bus {'steady' if soaked[1] else 'still settling'})",
             f"{amps:g} A applied ({measured_a:.1f} A read) for {_minutes(times[-1])}"
             + (" -- bus steady, run stopped" if steady else "")
             + ("" if held else f" -- the load fell to {min(drawn, default=0.0):.1f} A: not held, "
                                "nothing extrapolated")]
    if scaled:
        notes.append(f"judged at the rated {rated:g} A: x{factor:.3f} (I²)"
                     + (f", bus with its resistance at +{tempco * 100:.3g} %/K" if tempco else ""))
    else:
        notes.append("judged at the current applied (not scaled)")
    if kinds["bus"]:
        hottest = max(kinds["bus"], key=lambda p: estimates[p].measured)
        e = estimates[hottest]
        ctx.measure("busbar_rise_measured", e.measured, "K")
        ctx.measure("busbar_time_constant", e.tau_s, "s")
        how = {"steady": f"steady state ({e.measured:.2f} K, < {rate:g} K per {_minutes(window)})",
               "fitted": f"extrapolated from its time constant (tau {_minutes(e.tau_s)}, fit rms "
                         f"{e.rms:.3f} K over {_minutes(times[-1])}): {e.measured:.2f} K -> {e.final:.2f} K",
               "end of run": f"neither steady nor extrapolatable (tau {_minutes(e.tau_s)} > run / "
                             f"{min_cover:g}): {e.measured:.2f} K still rising"}[e.method]
        notes.append(f"bus {hottest}: {how}, {judged[hottest]:.2f} K judged")
        segment = diagnose("busbar_undersized", hottest,
                           f"{judged[hottest]:.1f} K at {judged_at:.0f} A ({e.measured:.1f} K after "
                           f"{_minutes(times[-1])} at {measured_a:.0f} A, {e.method})")
        # the hottest segment must be judged at its steady state: a rise still climbing is no answer
        ctx.measure("busbar_rise", judged[hottest] if e.method != "end of run" else math.nan, "K",
                    ctx.limit("busbar_rise"),
                    diagnosis=segment if e.method != "end of run" else
                    f"{hottest}: run too short to judge its steady rise -- {how}")
    if kinds["terminal"]:
        hottest = max(kinds["terminal"], key=lambda p: judged[p])
        e = estimates[hottest]
        notes.append(f"terminal {hottest}: {e.method}"
                     + (f" (tau {_minutes(e.tau_s)})" if not math.isnan(e.tau_s) else "")
                     + f", {e.measured:.2f} K -> {judged[hottest]:.2f} K judged")
        # a terminal hot because its module body is (not its joint) points at the module
        body = TERMINAL.match(hottest).group(1)  # type: ignore[union-attr]
        own = excess.get(hottest, math.nan)
        terminal_evidence = (f"{judged[hottest]:.1f} K at {judged_at:.0f} A ({e.measured:.1f} K after "
                             f"{_minutes(times[-1])} at {measured_a:.0f} A), {own:+.2f} K against its own module")
        if body in final and own <= 0.5 * max(e.measured, 0.0) and final[body] - peer_mean(
                {m: final[m] for m in kinds["module"]}, body) > 0.5 * max(e.measured, 0.0):
            terminal_diagnosis = diagnose("warm_module", body, terminal_evidence + f"; the module body itself is "
                                          f"{final[body] - peer_mean({m: final[m] for m in kinds['module']}, body):.1f} K "
                                          "above its peers")
        else:
            terminal_diagnosis = diagnose("hot_terminal", hottest, terminal_evidence)
        ctx.measure("terminal_rise", judged[hottest], "K", ctx.limit("terminal_rise"), diagnosis=terminal_diagnosis)
        hot_lug = max(excess, key=lambda p: excess[p]) if excess else hottest
        lug_excess = excess.get(hot_lug, math.nan) * factor
        notes.append(f"terminal excess over its module (highest 3-sample mean): {hot_lug} "
                     f"{excess.get(hot_lug, math.nan):+.2f} K -> {lug_excess:+.2f} K (I²)")
        ctx.measure("terminal_excess", lug_excess, "K", ctx.limit("terminal_excess"),
                    diagnosis=diagnose("hot_terminal", hot_lug,
                                       f"{lug_excess:+.1f} K above its own module body at {judged_at:.0f} A "
                                       f"({excess.get(hot_lug, math.nan):+.2f} K at {measured_a:.0f} A)"))
    if kinds["module"]:
        bodies = {m: final[m] for m in kinds["module"]}
        for module, value in bodies.items():
            ctx.measure(f"temperature_{module}", value, "degC")
        hottest = max(bodies, key=lambda m: bodies[m])
        notes.append(f"module spread at the end of the run, as measured at {measured_a:.0f} A")
        evidence = f"{bodies[hottest]:.1f} degC against {peer_mean(bodies, hottest):.1f} degC for its peers"
        branch = next((b for b in currents if hottest in modules_of_branch(b, list(bodies))), None)
        if branch is not None:
            evidence += (f"; its branch carried {abs(currents[branch]):.0f} A against "
                         f"{abs(peer_mean(currents, branch)):.0f} A")
        ctx.measure("module_spread", spread(bodies), "K", ctx.limit("module_spread"),
                    diagnosis=diagnose("warm_module", hottest, evidence))
    method = "; ".join(notes)
    ctx.measure("rise_method", method, "")
    hottest_bus = max(kinds["bus"], key=lambda p: estimates[p].measured) if kinds["bus"] else None
    short = (f"judged at {judged_at:.0f} A: x{factor:.2f}"
             + (f", bus {estimates[hottest_bus].method}" if hottest_bus else ""))
    _trace_thermal(ctx, rows, kinds, start, amps, short, factor)


def _trace_thermal(ctx: StepContext, rows: TraceRows, kinds: dict[str, list[str]],
                   start: dict[str, float], amps: float, method: str, factor: float) -> None:
    """The temperatures the check sampled, for the report: module bodies over time (a warm
    module is the line above the rest) and the rise of every bus segment and terminal at the
    current applied (the judged figures are at the rated current: ``rise_method``)."""
    columns = rows.columns()
    t = columns["t"]
    bodies = {f"temp_{m}": columns[m] for m in kinds["module"] if m in columns}
    if bodies:
        ctx.measure.trace("thermal_modules", "modules", {"t": t, **bodies},
                          units={"t": "s", **{name: "degC" for name in bodies}},
                          title=f"Module temperatures at {amps:g} A")
    joints = {f"rise_{p}": [None if v is None else v - start[p] for v in columns[p]]
              for p in kinds["bus"] + kinds["terminal"] if p in columns}
    if joints:
        ctx.measure.trace("thermal_joints", "xy", {"t": t, **joints},
                          units={"t": "s", **{name: "K" for name in joints}},
                          marks={"busbar_limit_at_this_current": _unscaled(ctx.limit("busbar_rise").high, factor),
                                 "terminal_limit_at_this_current": _unscaled(ctx.limit("terminal_rise").high, factor)},
                          title=f"Bus and terminal rise at {amps:g} A ({method})")


def _unscaled(limit: float | None, factor: float) -> float | None:
    """A limit at the rated current brought back to the current applied (plain I²)."""
    return None if limit is None or not factor or math.isnan(factor) else limit / factor
