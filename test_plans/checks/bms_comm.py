"""Checks of BMS communication: comm loss on each side of the master BMS (004, DOMAIN.md section 4).

004: "BMS communication loss can make the system derate, split into standalone operation, lose
virtual-bank reporting, or stop charging coordination. The exact behavior depends on the
manufacturer, so installers should verify communication order, addresses, firmware, and inverter
battery protocol"; "master reports combined limits only for modules that are online and accepted
by the BMS network"; troubleshooting "one module stays offline -> BMS address, breaker or
contactor". DOMAIN.md section 4: battery-side implementations flag a missing inverter after 5 s
(some 60 s) of no 0x305; inverters stop if no 0x351 arrives within ~3 s.

- ``comm_loss_heartbeat``: the harness stops its inverter keep-alive; the BMS must reach the
  plan's ``behaviour`` (``zero_limits``, ``alarm``, ``open_contactor``, one or a list) within the
  plan's ``reaction_time`` limit, and return to normal once the keep-alive resumes.
- ``comm_loss_silent_module``: a module stops talking to the master -- made silent by a bench
  service command (``inject``; on a real bench the vendor's service tool or a relay in the link
  cable) or by the twin's ``silent_module`` fault -- and the master must mark it offline and drop
  its capacity and limits from the bank's totals within the plan's times.
- ``comm_loss_silent_bms``: the harness itself watches how long the BMS has been silent
  (``bench.bms.seconds_since_heard()``); past ``silence_timeout`` it brings the bench to its safe
  state through the session's safety supervisor and records that it did.
- ``aggregation``: the totals the master reports for a bank at rest -- installed and online
  capacity, charge/discharge limits, modules online -- against the DUT (Σ of accepted online
  modules; the weakest series position limits a string).
- ``bms_comm_health``: for end of line -- the BMS keeps talking, nothing malformed arrives, it
  names itself and its firmware.

Figures that change as the bank does (limits, alarms, modules online) are read from the SunSpec
client when the station has one -- a Modbus request is answered from the BMS as it is at that
moment -- and from the Bms role (CAN) otherwise.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from test_plans.checks import Measure, Param, StepContext, check
from test_plans.checks.basic import DIAG_OFFLINE, DIAG_REDUCED_CAPACITY, TraceRows
from test_plans.checks.diagnosis import diagnose
from test_plans.checks.parallel import (DIAG_COUNTED, DIAG_STARTUP, _countable, connect_bank,
                                        module_reports, outputs_off)
from test_plans.checks.series import module_order

DIAG_COMM_LOSS = ("BMS does not react to the lost inverter keep-alive as specified (004: communication "
                  "loss can derate, split into standalone operation, lose virtual-bank reporting or stop "
                  "charging coordination; DOMAIN.md 4: battery side flags a missing inverter after 5 s) "
                  "-- check firmware (comm-loss timeout and action), communication order, addresses, "
                  "inverter battery protocol")
DIAG_COMM_RECOVERY = ("BMS does not return to normal after the keep-alive resumes (004: communication "
                      "fault) -- check firmware (comm-loss recovery), inverter battery protocol")
DIAG_BMS_SILENT = ("BMS stopped reporting to the inverter (004: communication loss; DOMAIN.md 4: "
                   "inverters stop if no 0x351 within ~3 s) -- check BMS communication cable, "
                   "termination, addresses, firmware; the bench was brought to its safe state")
DIAG_SAFE_STATE = ("the bench was not de-energised after the BMS went silent -- check the safety "
                   "supervisor and the instruments' safe state")
COMM_ALARMS = {"bms_internal", "communication_error"}
BEHAVIOURS = ("zero_limits", "alarm", "open_contactor")


# ================================================================== helpers
def state_client(bench: Any) -> Any:
    """Where the BMS's present state is read: SunSpec (request/response, answered as the bank is
    now) when the station has it, else the Bms role."""
    client = getattr(bench, "sunspec", None)
    return client if client is not None else bench.bms


def poll_until(bench: Any, done: Callable[[], bool], timeout_s: float, poll_s: float) -> float | None:
    """Wait on the bench clock until ``done()``; the bench seconds it took, or None on timeout."""
    start = bench.clock.now()
    while True:
        if done():
            return bench.clock.now() - start
        if bench.clock.now() - start >= timeout_s - 1e-9:
            return None
        bench.clock.wait(min(poll_s, timeout_s - (bench.clock.now() - start)))


def _behaviours(ctx: StepContext) -> list[str]:
    raw = ctx.param("behaviour", "zero_limits")
    wanted = [raw] if isinstance(raw, str) else list(raw)
    unknown = [b for b in wanted if b not in BEHAVIOURS]
    if unknown or not wanted:
        raise ValueError(f"step '{ctx.step_name}': behaviour {unknown or wanted}: one or more of "
                         f"{', '.join(BEHAVIOURS)}")
    return wanted


def _connected(client: Any) -> bool | None:
    """The battery's main contactor as SunSpec 802 State says (None without SunSpec)."""
    state = getattr(client, "state", None)
    if state is None:
        return None
    symbol = state()
    return None if symbol is None else symbol == "CONNECTED"


class _BmsState:
    """One reading of what the comm-loss checks compare."""

    def __init__(self, client: Any, zero_a: float):
        limits, status = client.limits(), client.status()
        self.charge_a, self.discharge_a = float(limits.charge_current_a), float(limits.discharge_current_a)
        self.alarms = set(status.alarms)
        self.comm_alarm = bool(self.alarms & COMM_ALARMS)
        self.zero = self.charge_a <= zero_a and self.discharge_a <= zero_a
        self.connected = _connected(client)

    def reached(self, behaviour: str) -> bool:
        if behaviour == "zero_limits":
            return self.zero
        if behaviour == "alarm":
            return self.comm_alarm
        return self.connected is False

    def normal(self) -> bool:
        return not self.zero and not self.comm_alarm and self.connected is not False


# ================================================================== (a) inverter heartbeat lost
@check("comm_loss_heartbeat",
       params={"behaviour": Param(kind="any", doc="zero_limits, alarm, open_contactor: one or a list"),
               "zero_current": Param("A", doc="a current limit at most this counts as zero"),
               "poll_s": Param("s"),
               "observe_s": Param("s"),
               "recover_observe_s": Param("s")},
       measures={"charge_limit_before": Measure("A"),
                 "discharge_limit_before": Measure("A"),
                 "normal_before": Measure("", doc="judged true unless the plan limits it"),
                 "charge_limit_after_loss": Measure("A"),
                 "discharge_limit_after_loss": Measure("A"),
                 "comm_alarm_after_loss": Measure(""),
                 "zero_limits_after": Measure("s"),
                 "alarm_after": Measure("s"),
                 "open_contactor_after": Measure("s"),
                 "reaction_time": Measure("s", required=True),
                 "recovery_time": Measure("s", required=True)})
def comm_loss_heartbeat(ctx: StepContext) -> None:
    """The inverter goes quiet: the harness stops its keep-alive (CAN 0x305) and watches the BMS.

    First the BMS must be normal (limits above zero, no communication alarm; up to
    ``observe_s``). Then the keep-alive stops; every ``poll_s`` the BMS's state is read until each
    ``behaviour`` of the plan is reached -- ``zero_limits`` (charge and discharge current limits
    at most ``zero_current``), ``alarm`` (its communication alarm: CAN 0x359 BMS internal /
    SunSpec COMMUNICATION_ERROR), ``open_contactor`` (SunSpec 802 State not CONNECTED) -- or
    ``observe_s`` passes (``reaction_time`` is then ``observe_s``: not reached). The keep-alive
    resumes and the BMS must be normal again (``recovery_time``, up to ``recover_observe_s``).
    The keep-alive is resumed whatever happens."""
    bench = ctx.bench
    wanted = _behaviours(ctx)
    client = state_client(bench)
    zero_a = float(ctx.param("zero_current", 0.05))
    poll_s = float(ctx.param("poll_s", 0.5))
    observe_s = float(ctx.param("observe_s", 30.0))
    outputs_off(bench)
    rows = TraceRows(bench.clock.now())
    marks: dict[str, float | None] = {}

    def read(heartbeat: bool) -> _BmsState:
        state = _BmsState(client, zero_a)
        _keep(rows, bench, state, heartbeat)
        return state

    before = poll_until(bench, lambda: read(True).normal(), observe_s, poll_s)
    start = read(True)
    ctx.measure("charge_limit_before", start.charge_a, "A")
    ctx.measure("discharge_limit_before", start.discharge_a, "A")
    if before is None:
        ctx.measure("normal_before", False, "", ctx.limits.get("normal_before") or _true(),
                    diagnosis=DIAG_STARTUP + f" (alarms: {', '.join(sorted(start.alarms)) or 'none'})")
        _trace_heartbeat(ctx, rows, marks)
        return
    seen: dict[str, float] = {}
    bench.bms.heartbeat(False)
    try:
        t0 = bench.clock.now()
        marks["heartbeat_stopped_s"] = t0 - rows.origin

        def all_reached() -> bool:
            state = read(False)
            for b in wanted:
                if b not in seen and state.reached(b):
                    seen[b] = bench.clock.now() - t0
            return len(seen) == len(wanted)

        poll_until(bench, all_reached, observe_s, poll_s)
        after = read(False)
    finally:
        bench.bms.heartbeat(True)
    marks["heartbeat_restored_s"] = bench.clock.now() - rows.origin
    missing = [b for b in wanted if b not in seen]
    ctx.measure("charge_limit_after_loss", after.charge_a, "A")
    ctx.measure("discharge_limit_after_loss", after.discharge_a, "A")
    ctx.measure("comm_alarm_after_loss", after.comm_alarm, "")
    for b in wanted:
        ctx.measure(f"{b}_after", seen.get(b, observe_s), "s")
    reaction = max(seen.values()) if not missing else observe_s
    ctx.measure("reaction_time", reaction, "s", ctx.limit("reaction_time"),
                diagnosis=DIAG_COMM_LOSS + (f" (not reached within {observe_s:g} s: {', '.join(missing)})"
                                            if missing else f" ({', '.join(wanted)} after {reaction:.3g} s)"))
    recovery = poll_until(bench, lambda: read(True).normal(), float(ctx.param("recover_observe_s", 30.0)), poll_s)
    end = read(True)
    ctx.measure("recovery_time", recovery if recovery is not None else float(ctx.param("recover_observe_s", 30.0)),
                "s", ctx.limit("recovery_time"),
                diagnosis=DIAG_COMM_RECOVERY + (f" (limits {end.charge_a:g}/{end.discharge_a:g} A, alarms: "
                                                f"{', '.join(sorted(end.alarms)) or 'none'})"))
    marks["limit_s"] = _after(marks["heartbeat_stopped_s"], ctx.limit("reaction_time").high)
    marks["recovery_limit_s"] = _after(marks["heartbeat_restored_s"], ctx.limit("recovery_time").high)
    _trace_heartbeat(ctx, rows, marks)


def _keep(rows: TraceRows, bench: Any, state: _BmsState, heartbeat: bool) -> None:
    """One poll of the BMS, kept for the report's timeline."""
    rows.add(bench.clock.now(), heartbeat=heartbeat, charge_limit=state.charge_a,
             discharge_limit=state.discharge_a, comm_alarm=state.comm_alarm, contactor_closed=state.connected)


def _after(moment: float | None, seconds: float | None) -> float | None:
    return None if moment is None or seconds is None else moment + seconds


def _trace_heartbeat(ctx: StepContext, rows: TraceRows, marks: dict[str, float | None]) -> None:
    """What the BMS did while the inverter was quiet, poll by poll: keep-alive, the limits it
    published, its communication alarm and contactor, against the moments the keep-alive
    stopped and resumed and the plan's deadlines (``limit_s``: reaction, ``recovery_limit_s``)."""
    ctx.measure.trace("comm_loss_heartbeat", "timeline", rows.columns(),
                      units={"t": "s", "charge_limit": "A", "discharge_limit": "A"}, marks=marks,
                      title="BMS state with the inverter keep-alive stopped and resumed")


def _true() -> Any:
    from harness.measure import Limits
    return Limits.equal_to(True)


# ================================================================== (b) a silent module
def _module_ratings(ctx: StepContext) -> tuple[float, float]:
    """(capacity Ah, discharge current limit A) of one module: the plan's, else the DUT's."""
    dut = ctx.dut
    ah = ctx.params.get("module_capacity") or (dut.module_type.capacity_ah if dut is not None else None)
    amps = ctx.params.get("module_discharge_limit") or (dut.module_type.bms.limits.discharge_current_a
                                                        if dut is not None else None)
    if ah is None or amps is None:
        raise KeyError(f"step '{ctx.step_name}' needs module_capacity and module_discharge_limit (no DUT)")
    return float(ah), float(amps)


@check("comm_loss_silent_module",
       params={"module_capacity": Param("Ah", doc="one module's; default the DUT's"),
               "module_discharge_limit": Param("A", doc="one module's; default the DUT's"),
               "capacity_tolerance": Param("Ah"),
               "limit_tolerance": Param("A"),
               "inject": Param(kind="flag", doc="silence a module (else watch for one going silent)"),
               "module": Param(kind="text", doc="position to silence, e.g. s3p1"),
               "poll_s": Param("s"),
               "observe_s": Param("s"),
               "settle_s": Param("s"),
               "hold_s": Param("s"),
               "recover_observe_s": Param("s")},
       measures={"modules_online_before": Measure(""),
                 "online_capacity_before": Measure("Ah"),
                 "silenced_module": Measure(""),
                 "offline_detect_time": Measure("s"),
                 "totals_drop_time": Measure("s", required=True),
                 "modules_offline": Measure(""),
                 "capacity_overcounted": Measure("Ah", required=True),
                 "limit_overcounted": Measure("A", required=True),
                 "recovery_time": Measure("s")})
def comm_loss_silent_module(ctx: StepContext) -> None:
    """A module stops talking to its master (004: one module stays offline; combined limits only
    for modules online and accepted).

    With ``inject`` (default true) the check silences ``module`` (a position, default the middle
    one in bank order) with the bench service command ``bench.bms.silence_module`` at t0;
    without it, it watches for up to ``observe_s`` for a module to go offline (the twin's
    ``silent_module`` fault) and counts from there. Every ``poll_s``: modules offline (SunSpec
    805 models without data / CAN 0x372) and the totals the master reports (online capacity,
    discharge limit) against what may count: modules heard and admitted at the weakest series
    position (SunSpec 805), the silenced module never. Measured: ``offline_detect_time``,
    ``totals_drop_time`` (until capacity and limit exclude it; ``observe_s`` if never),
    ``capacity_overcounted`` and ``limit_overcounted`` at the end, then -- silence lifted --
    ``recovery_time`` until every module is online and counted again."""
    bench = ctx.bench
    client = state_client(bench)
    poll_s = float(ctx.param("poll_s", 0.5))
    observe_s = float(ctx.param("observe_s", 20.0))
    module_ah, module_a = _module_ratings(ctx)
    tol_ah = float(ctx.param("capacity_tolerance", 0.5))
    tol_a = float(ctx.param("limit_tolerance", 0.5))
    inject = bool(ctx.params.get("inject", True))
    order = module_order(bench)
    outputs_off(bench)
    if bench.channels.actuator:
        connect_bank(bench)
    bench.clock.wait(float(ctx.param("settle_s", 2.0)))
    first = client.status()
    total = len(order)
    ctx.measure("modules_online_before", first.modules_online, "")
    ctx.measure("online_capacity_before", first.online_capacity_ah, "Ah")
    target: str | None = None
    if inject:
        target = str(ctx.params.get("module") or order[len(order) // 2])
        if target not in order:
            raise KeyError(f"step '{ctx.step_name}': module '{target}' is not in this bank ({', '.join(order)})")

    def overcount() -> tuple[float, float, int]:
        status, limits = client.status(), client.limits()
        reports = module_reports(bench)
        if reports is not None:
            exclude = [target] if target else []
            may = _countable(reports, exclude)
        else:  # CAN only: every module offline counts against the bank
            may = 0 if (status.modules_offline or 0) else ctx.dut.dut.parallel if ctx.dut else 0
        online_ah = float(status.online_capacity_ah or 0.0)
        offline_now = int(status.modules_offline if status.modules_offline is not None
                          else total - int(status.modules_online or 0))
        rows.add(bench.clock.now(), modules_offline=offline_now, online_capacity=online_ah,
                 countable_capacity=may * module_ah, discharge_limit=float(limits.discharge_current_a),
                 countable_limit=may * module_a)
        return online_ah - may * module_ah, float(limits.discharge_current_a) - may * module_a, offline_now

    t0 = bench.clock.now()
    rows = TraceRows(t0)
    marks: dict[str, float | None] = {}
    if inject:
        bench.bms.silence_module(order.index(target), True)
    try:
        offline_at: float | None = None
        dropped_at: float | None = None
        cap_over = lim_over = 0.0
        offline = 0
        while True:
            cap_over, lim_over, offline = overcount()
            now = bench.clock.now()
            if offline and offline_at is None:
                offline_at = now
            if offline_at is not None and dropped_at is None and cap_over <= tol_ah and lim_over <= tol_a:
                dropped_at = now
            if dropped_at is not None and (not inject or now - t0 >= float(ctx.param("hold_s", 0.0))):
                break
            if now - t0 >= observe_s - 1e-9:
                break
            bench.clock.wait(poll_s)
        if inject or offline_at is not None:
            reference = t0 if inject else offline_at
            assert reference is not None
            ctx.measure("silenced_module", target or "(fault)", "")
            ctx.measure("offline_detect_time", (offline_at - t0) if offline_at is not None else observe_s, "s",
                        ctx.limit("offline_detect_time") if inject else None,
                        diagnosis=DIAG_OFFLINE + f" (the master still reports every module online after "
                                                 f"{observe_s:g} s)")
            ctx.measure("totals_drop_time", (dropped_at - reference) if dropped_at is not None else observe_s,
                        "s", ctx.limit("totals_drop_time"), diagnosis=DIAG_COUNTED)
        else:
            ctx.measure("silenced_module", "(none went silent)", "")
        ctx.measure("modules_offline", offline, "")
        ctx.measure("capacity_overcounted", cap_over, "Ah", ctx.limit("capacity_overcounted"),
                    diagnosis=DIAG_COUNTED)
        ctx.measure("limit_overcounted", lim_over, "A", ctx.limit("limit_overcounted"), diagnosis=DIAG_COUNTED)
    finally:
        if inject:
            bench.bms.silence_module(order.index(target), False)
    offline_s = None if offline_at is None else offline_at - t0
    silenced_s = 0.0 if inject else None
    marks.update(silenced_s=silenced_s, offline_s=offline_s,
                 detect_limit_s=_after(silenced_s, ctx.limit("offline_detect_time").high),
                 drop_limit_s=_after(silenced_s if inject else offline_s, ctx.limit("totals_drop_time").high))
    if not inject:
        _trace_silent_module(ctx, rows, marks, target)
        return
    marks["released_s"] = bench.clock.now() - rows.origin
    installed = first.online_capacity_ah

    def back() -> bool:
        status = client.status()
        offline_now = status.modules_offline if status.modules_offline is not None \
            else total - int(status.modules_online or 0)
        rows.add(bench.clock.now(), modules_offline=int(offline_now or 0),
                 online_capacity=float(status.online_capacity_ah or 0.0))
        return not offline_now and (installed is None
                                    or float(status.online_capacity_ah or 0.0) >= float(installed) - tol_ah)

    recovery = poll_until(bench, back, float(ctx.param("recover_observe_s", 30.0)), poll_s)
    ctx.measure("recovery_time", recovery if recovery is not None else float(ctx.param("recover_observe_s", 30.0)),
                "s", ctx.limit("recovery_time"),
                diagnosis=DIAG_OFFLINE + " (the module talks again but the master does not count it)")
    marks["recovery_limit_s"] = _after(marks["released_s"], ctx.limit("recovery_time").high)
    _trace_silent_module(ctx, rows, marks, target)


def _trace_silent_module(ctx: StepContext, rows: TraceRows, marks: dict[str, float | None],
                         target: str | None) -> None:
    """The master's view of the bank, poll by poll, while a module was silent and after: modules
    offline, the capacity and discharge limit it reported against what the modules heard and
    admitted may give (``countable_*``), with the moments of silence and release and the plan's
    deadlines."""
    ctx.measure.trace("comm_loss_silent_module", "timeline", rows.columns(),
                      units={"t": "s", "online_capacity": "Ah", "countable_capacity": "Ah",
                             "discharge_limit": "A", "countable_limit": "A"}, marks=marks,
                      title=f"Master BMS totals with {target or 'a module'} silent")


# ================================================================== (c) a silent BMS
@check("comm_loss_silent_bms",
       params={"silence_timeout": Param("s"),
               "load_current": Param("A", setpoint="load.current"),
               "poll_s": Param("s"),
               "observe_s": Param("s")},
       measures={"silence_timeout": Measure("s"),
                 "load_current_watched": Measure("A"),
                 "bms_silence": Measure("s", required=True, doc="the longest silence seen"),
                 "silence_at_safe_state": Measure("s", required=True),
                 "outputs_off_after": Measure("", required=True),
                 "safe_state_by": Measure("")})
def comm_loss_silent_bms(ctx: StepContext) -> None:
    """The BMS goes quiet: the harness must notice and make the bench safe by itself.

    The bank is connected and, with ``load_current``, discharged while the check watches
    ``bench.bms.seconds_since_heard()`` every ``poll_s`` for ``observe_s``. Once the silence
    passes ``silence_timeout`` (DOMAIN.md 4: an inverter stops after ~3 s without 0x351) the
    session's safety supervisor brings the bench to its safe state (load off, supply off,
    contactors open) and the check records it: ``bms_silence`` (the longest silence seen: the
    plan's limit fails a silent BMS), ``silence_at_safe_state`` (how long the BMS had been silent
    when the bench was safe) and ``outputs_off_after`` (load and supply report off)."""
    bench = ctx.bench
    bms = bench.bms
    timeout = float(ctx.param("silence_timeout", 3.0))
    poll_s = float(ctx.param("poll_s", 0.25))
    observe_s = float(ctx.param("observe_s", 30.0))
    supervisor = ctx.extras.get("supervisor")
    outputs_off(bench)
    if bench.channels.actuator:
        connect_bank(bench)
    amps = ctx.params.get("load_current")
    worst = 0.0
    drawn = 0.0
    detected_at: float | None = None
    safed = False
    try:
        if amps:
            bench.load.set_current(float(amps))
            bench.load.input(True)
        start = bench.clock.now()
        while bench.clock.now() - start < observe_s - 1e-9:
            bench.clock.wait(poll_s)
            if amps:  # watch the bench as well as the BMS: the load must still be drawing
                drawn = abs(bench.load.measure_current())
            silence = bms.seconds_since_heard()
            worst = max(worst, silence)
            if silence > timeout:
                detected_at = silence
                reason = f"BMS silent for {silence:.3g} s (> {timeout:g} s), step {ctx.step_name}"
                if supervisor is not None:
                    supervisor.safe_state(reason)
                else:
                    outputs_off(bench)
                safed = True
                break
    finally:
        if not safed:
            outputs_off(bench)
    ctx.measure("silence_timeout", timeout, "s")
    if amps:
        ctx.measure("load_current_watched", drawn, "A")
    ctx.measure("bms_silence", worst, "s", ctx.limit("bms_silence"), diagnosis=DIAG_BMS_SILENT)
    if detected_at is None:
        return
    ctx.measure("silence_at_safe_state", bms.seconds_since_heard(), "s", ctx.limit("silence_at_safe_state"),
                diagnosis=DIAG_SAFE_STATE)
    off = []
    if "load" in bench.instruments:
        off.append(not bench.load.is_on())
    if "supply" in bench.instruments:
        off.append(not bench.supply.is_on())
    ctx.measure("outputs_off_after", all(off), "", ctx.limit("outputs_off_after"), diagnosis=DIAG_SAFE_STATE)
    ctx.measure("safe_state_by", "safety supervisor" if supervisor is not None else "check", "")


# ================================================================== aggregation at rest
@check("aggregation",
       params={"module_capacity": Param("Ah", doc="one module's; default the DUT's"),
               "module_discharge_limit": Param("A", doc="one module's; default the DUT's"),
               "settle_s": Param("s")},
       measures={"installed_capacity": Measure("Ah"),
                 "installed_capacity_error": Measure("Ah", doc="against the DUT's nameplate"),
                 "online_capacity": Measure("Ah"),
                 "discharge_limit": Measure("A"),
                 "capacity_overcounted": Measure("Ah", required=True),
                 "capacity_not_counted": Measure("Ah"),
                 "limit_overcounted": Measure("A", required=True),
                 "limit_shortfall": Measure("A"),
                 "modules_missing": Measure("")})
def aggregation(ctx: StepContext) -> None:
    """004: "reports combined limits only for modules that are online and accepted"; the inverter
    reading reduced capacity means a module not accepted. At rest (``settle_s``): installed
    capacity (CAN 0x379) against the DUT's nameplate (``installed_capacity_error``), online
    capacity and the discharge limit against what the modules heard and admitted may give
    (``capacity_overcounted``/``capacity_not_counted``, ``limit_overcounted``/``limit_shortfall``:
    Σ per series position, the weakest position limiting a string), modules online against the
    DUT's count (``modules_missing``)."""
    bench, dut = ctx.bench, ctx.dut
    client = state_client(bench)
    module_ah, module_a = _module_ratings(ctx)
    outputs_off(bench)
    if bench.channels.actuator:
        connect_bank(bench)
    bench.clock.wait(float(ctx.param("settle_s", 5.0)))
    status, limits = client.status(), client.limits()
    can_status = bench.bms.status()
    reports = module_reports(bench)
    expected = dut.dut.series * dut.dut.parallel if dut is not None else len(module_order(bench))
    may = _countable(reports, []) if reports is not None else (dut.dut.parallel if dut is not None else 0)
    installed = can_status.installed_capacity_ah
    if installed is not None and dut is not None:
        nameplate = dut.dut.parallel * module_ah
        ctx.measure("installed_capacity", installed, "Ah")
        ctx.measure("installed_capacity_error", float(installed) - nameplate, "Ah",
                    ctx.limit("installed_capacity_error"), diagnosis=DIAG_REDUCED_CAPACITY)
    online_ah = float(status.online_capacity_ah or 0.0)
    ctx.measure("online_capacity", online_ah, "Ah")
    ctx.measure("discharge_limit", limits.discharge_current_a, "A")
    ctx.measure("capacity_overcounted", online_ah - may * module_ah, "Ah", ctx.limit("capacity_overcounted"),
                diagnosis=DIAG_COUNTED)
    ctx.measure("capacity_not_counted", may * module_ah - online_ah, "Ah", ctx.limit("capacity_not_counted"),
                diagnosis=DIAG_REDUCED_CAPACITY)
    ctx.measure("limit_overcounted", float(limits.discharge_current_a) - may * module_a, "A",
                ctx.limit("limit_overcounted"), diagnosis=DIAG_COUNTED)
    ctx.measure("limit_shortfall", may * module_a - float(limits.discharge_current_a), "A",
                ctx.limit("limit_shortfall"), diagnosis=DIAG_REDUCED_CAPACITY)
    online = status.modules_online if status.modules_online is not None else can_status.modules_online
    ctx.measure("modules_missing", expected - int(online or 0), "", ctx.limit("modules_missing"),
                diagnosis=DIAG_OFFLINE)


# ================================================================== end of line: comm health
@check("bms_comm_health",
       params={"observe_s": Param("s")},
       measures={"bms_silence": Measure("s", required=True),
                 "malformed_frames": Measure("", required=True),
                 "manufacturer": Measure(""),
                 "bms_firmware": Measure("", required=True),
                 "serial": Measure(""),
                 "master_firmware": Measure("", doc="SunSpec model 1 Vr")})
def bms_comm_health(ctx: StepContext) -> None:
    """The BMS talks and is understood (end of line): over ``observe_s`` the longest silence
    (``bms_silence``), malformed frames received (``malformed_frames``: unknown ID, wrong DLC,
    undecodable, error/remote frames), the manufacturer and firmware it reports (CAN 0x35E,
    0x35F; limits on ``bms_firmware``, ``manufacturer``) and the serial number over SunSpec
    model 1 when the station has it. A failure names the BMS: a silence or malformed frames are
    a communication loss (004), another version than the plan's a BMS not on its release (004:
    confirm firmware first), another maker a BMS of another model (004: same model)."""
    bench = ctx.bench
    bms = bench.bms
    counts: Callable[[], dict[str, int]] | None = getattr(bms, "malformed_counts", None)
    before = counts() if counts else {}
    observe_s = float(ctx.param("observe_s", 3.0))
    worst = 0.0
    for _ in range(max(int(math.ceil(observe_s)), 1)):
        bench.clock.wait(1.0)
        worst = max(worst, bms.seconds_since_heard())
    ctx.measure("bms_silence", worst, "s", ctx.limit("bms_silence"),
                diagnosis=diagnose("comm_loss", "BMS", f"silent for up to {worst:.1f} s while watched for "
                                   f"{observe_s:g} s (it reports every second)"))
    if counts is not None:
        after = counts()
        bad = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) - before.get(k, 0)}
        ctx.measure("malformed_frames", sum(bad.values()), "", ctx.limit("malformed_frames"),
                    diagnosis=diagnose("comm_loss", "BMS bus", "malformed frames: "
                                       + ", ".join(f"{n} {k}" for k, n in sorted(bad.items()))
                                       + " (termination, bit rate or protocol)"))
    maker = getattr(bms, "manufacturer", None)
    if maker is not None:
        name = maker()
        ctx.measure("manufacturer", name, "", ctx.limit("manufacturer"),
                    diagnosis=diagnose("module_mix", "BMS", f"CAN 0x35E names the maker '{name}'"
                                       + _expected(ctx, "manufacturer")))
    firmware = bms.firmware()
    ctx.measure("bms_firmware", firmware, "", ctx.limit("bms_firmware"),
                diagnosis=diagnose("firmware_release", "BMS", f"CAN 0x35F reports firmware {firmware}"
                                   + _expected(ctx, "bms_firmware")))
    sunspec = getattr(bench, "sunspec", None)
    if sunspec is not None:
        ctx.measure("serial", sunspec.serial(), "")
        version = sunspec.firmware()
        ctx.measure("master_firmware", version, "", ctx.limit("master_firmware"),
                    diagnosis=diagnose("firmware_release", "BMS", f"SunSpec model 1 reports firmware {version}"
                                       + _expected(ctx, "master_firmware")))


def _expected(ctx: StepContext, limit: str) -> str:
    """``, the plan expects X`` for an ``equals`` limit (empty otherwise)."""
    expected = ctx.limit(limit).equals
    return f", the plan expects '{expected}'" if expected is not None else ""
