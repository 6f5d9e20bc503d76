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
from typing import Any, Callable

from harness.measure import Limits
from test_plans.checks import Measure, Param, StepContext, check
from test_plans.checks.basic import TraceRows
from test_plans.checks.bms_comm import state_client
from test_plans.checks.parallel import connect_bank, outputs_off

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
@check("cell_balance",
       params={"rest_s": Param("s")},
       measures={"max_cell_voltage": Measure("V"),
                 "min_cell_voltage": Measure("V"),
                 "cell_spread": Measure("V", required=True),
                 "cells_balancing": Measure("", doc="SunSpec 805 NCellBal, summed")})
def cell_balance(ctx: StepContext) -> None:
    """Cell balance as the BMS reports it (end of line): after ``rest_s`` the spread between the
    highest and lowest cell voltage (``cell_spread``; SunSpec 802 CellVMax/CellVMin, else CAN
    0x373) and how many cells the BMS is balancing (SunSpec 805 NCellBal; ``cells_balancing``:
    a module at mid SOC has nothing to balance -- balancing starts near the top, 3.40 V)."""
    bench = ctx.bench
    outputs_off(bench)
    bench.clock.wait(float(ctx.param("rest_s", 1.0)))
    t = state_client(bench).telemetry()
    spread = (float(t.max_cell_v) - float(t.min_cell_v)) if t.max_cell_v is not None and t.min_cell_v is not None \
        else math.nan
    ctx.measure("max_cell_voltage", t.max_cell_v, "V")
    ctx.measure("min_cell_voltage", t.min_cell_v, "V")
    ctx.measure("cell_spread", spread, "V", ctx.limit("cell_spread"),
                diagnosis="cells out of balance (003: periodic health, BMS warnings; 004: weak module) "
                          "-- check the BMS balancing and the cells")
    client = getattr(bench, "sunspec", None)
    if client is None:
        return
    balancing = 0
    for ref in client.refs(805):
        value = client.read_model(ref).value("NCellBal")
        balancing += int(value or 0)
    ctx.measure("cells_balancing", balancing, "", ctx.limit("cells_balancing"),
                diagnosis="BMS balancing at mid SOC (balancing starts near the top of charge) -- check the "
                          "BMS balancing settings")


@check("module_acir",
       params={"rest_s": Param("s"),
               "acir_reference": Param("ohm", doc="the batch figure")},
       measures={"acir": Measure("ohm", required=True),
                 "acir_delta": Measure("ohm", doc="against acir_reference"),
                 "acir_voltage_error": Measure("V", doc="meter against scanner: leads on the terminals"),
                 "acir_{module}": Measure("ohm", doc="the same reading, named by module")})
def module_acir(ctx: StepContext) -> None:
    """1 kHz AC internal resistance of the module the AC-IR meter's leads are on (end of line;
    003: IR within +-3 mohm of the batch; module datasheets: <= 20 mohm): ``acir`` against the
    plan, ``acir_delta`` against the plan's ``acir_reference`` (the batch figure) and the voltage the
    meter reads against the scanner's (``acir_voltage_error``: a lead not on the terminals)."""
    bench = ctx.bench
    outputs_off(bench)
    bench.clock.wait(float(ctx.param("rest_s", 0.5)))
    ohm, volts = bench.acir.measure()
    module = bench.channels.acir_module or "module"
    ctx.measure(f"acir_{module}", ohm, "ohm")
    ctx.measure("acir", ohm, "ohm", ctx.limit("acir"),
                diagnosis="internal resistance out of range (003: mixed batches only if IR within 3 mohm; "
                          "004: weak module) -- check the cells, links and terminals")
    reference = ctx.params.get("acir_reference")
    if reference is not None:
        ctx.measure("acir_delta", abs(ohm - float(reference)), "ohm", ctx.limit("acir_delta"),
                    diagnosis="internal resistance differs from the batch (003: within +-3 mohm) -- check "
                              "the module's batch and health")
    scanned = bench.module_voltages().get(module)
    if scanned is not None:
        ctx.measure("acir_voltage_error", abs(volts - scanned), "V", ctx.limit("acir_voltage_error"),
                    diagnosis="AC-IR leads not on the module's terminals -- check the test leads and fixture")
