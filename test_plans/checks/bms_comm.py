"""Checks of BMS communication: the BMS's identity and firmware, what the master BMS counts and
admits, communication loss on each side of the master (004, DOMAIN.md section 4), and 004's
commissioning of the BMS network and the inverter link.

004: "BMS communication loss can make the system derate, split into standalone operation, lose
virtual-bank reporting, or stop charging coordination. The exact behavior depends on the
manufacturer, so installers should verify communication order, addresses, firmware, and inverter
battery protocol"; "master reports combined limits only for modules that are online and accepted
by the BMS network"; troubleshooting "one module stays offline -> BMS address, breaker or
contactor". DOMAIN.md section 4: battery-side implementations flag a missing inverter after 5 s
(some 60 s) of no 0x305; inverters stop if no 0x351 arrives within ~3 s.

- ``bms_identity``: the BMS answers and reports the firmware the plan expects (000, 004).
- ``firmware_consistency`` (000: "Never mix BMS firmware versions across a series string"; 004
  asks for the same firmware in a parallel bank): the master's firmware (CAN 0x35F carries
  major.minor only; SunSpec model 1 ``Vr`` the full version) against the plan, and every module
  admitted by the master. A module's own firmware is not on either bus (SunSpec 805 has no
  version point): the master compares it and leaves a module with another version out of the
  bank, so a module not admitted although its voltage is within the admission window of its
  peers -- and capacity not counted -- is how a mixed firmware shows.
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
- ``bms_sync_gating``: master/slave sync (004) -- a module too far in voltage from the bank stays
  pending, not counted, until the difference is safe; once admitted it counts.
- ``bms_network`` and ``inverter_recognition`` (004 commissioning steps 8-10 and 12): the BMS
  keeps talking, every module visible on its own address, the firmware the DUT's; the inverter's
  keep-alive runs and the BMS publishes the bank's limits.
- ``bms_comm_health``: for end of line -- the BMS keeps talking, nothing malformed arrives, it
  names itself and its firmware.

Figures that change as the bank does (limits, alarms, modules online) are read from the SunSpec
client when the station has one -- a Modbus request is answered from the BMS as it is at that
moment -- and from the Bms role (CAN) otherwise.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from bankmodel.positions import natural_key, position
from test_plans.checks import Measure, Param, StepContext, check
from test_plans.checks.admission import countable, gate_state, not_admitted, peer_delta_v
from test_plans.checks.bench_helpers import ah_while, connect_bank, module_order, outputs_off, poll_until
from test_plans.checks.bms_helpers import (ModuleReport, bms_alarm_note, bms_firmware, bms_read,
                                           module_reports, require_reports, silent_modules)
from test_plans.checks.diagnosis import diagnose
from test_plans.checks.evidence import names
from test_plans.checks.traces import TraceRows


DIAG_REDUCED_CAPACITY = ("module not accepted by the BMS (004: inverter reports reduced capacity) "
                         "-- check CAN/RS485 order, firmware, protocol")
DIAG_OFFLINE = ("BMS address, breaker or contactor issue (004: one module stays offline) "
                "-- check address setting, branch breaker, communication cable")
DIAG_STARTUP = ("voltage difference or communication fault (004: alarm during startup) "
                "-- check pre-connect voltage and BMS status")
DIAG_COUNTED = ("capacity or limits counted for a module that is not online and accepted (004: "
                "master reports combined limits only for modules online and accepted) "
                "-- check firmware, protocol")
DIAG_FIRMWARE = ("BMS firmware differs (000: never mix BMS firmware versions across a series string; "
                 "004: inverter reports reduced capacity -> module not accepted by BMS: check "
                 "CAN/RS485 order, firmware, protocol) -- check every module's firmware version")
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


# ================================================================== identity and firmware
@check("bms_identity",
       measures={"bms_firmware": Measure("", required=True,
                                         doc="CAN 0x35F major.minor, else SunSpec model 1 Vr")},
       needs=("bms",))
def bms_identity(ctx: StepContext) -> None:
    """The BMS answers and reports the firmware the plan expects (000, 004: one firmware,
    confirmed before connecting). A version other than the plan's names the BMS with the
    version it reported (``firmware_release`` row). The version is read where the BMS carries
    it (:func:`bms_firmware`: CAN 0x35F, else SunSpec model 1); a BMS that reports it on no bus
    of the station leaves it unknown -- recorded as missing (ERROR), with why."""
    firmware, source = bms_firmware(ctx.bench)
    expected = ctx.limit("bms_firmware").equals
    evidence = f"{source} reports firmware {firmware}" if firmware is not None else source
    ctx.measure("bms_firmware", firmware, "", ctx.limit("bms_firmware"),
                diagnosis=diagnose("firmware_release", "BMS", evidence
                                   + (f", the plan releases {expected}" if expected is not None else "")))


def _strings_not_enabled(bench: Any, reports: dict[str, ModuleReport]) -> dict[str, list[str]]:
    """SunSpec 804 strings the master has not enabled -> their modules."""
    return {string: [m for m in reports if position(m)[1] == int(string[1:])]
            for string, enabled in bench.module_reports.string_enabled().items() if not enabled}


def _delta_to_peers(module: str, reports: dict[str, ModuleReport], exclude: set[str]) -> float:
    s = position(module)[0]
    peers = [r.voltage_v for m, r in reports.items()
             if m != module and m not in exclude and position(m)[0] == s and r.voltage_v is not None]
    own = reports[module].voltage_v
    if own is None or not peers:
        return math.nan
    return own - sum(peers) / len(peers)


@check("firmware_consistency",
       params={"settle_s": Param("s"),
               "admission_delta_v": Param("V", doc="a held-back module this close to its peers points at firmware")},
       measures={"bms_firmware": Measure("", doc="CAN 0x35F major.minor"),
                 "master_firmware": Measure("", doc="SunSpec model 1 Vr"),
                 "as_built_versions": Measure("", required=True),
                 "capacity_not_counted": Measure("Ah", needs="capacity_report"),
                 "delta_v_{module}": Measure("V", doc="a held-back module against its series-position peers"),
                 "strings_not_admitted": Measure("", required=True)},
       needs=("bms", "module_reports"), uses=("load", "supply"))
def firmware_consistency(ctx: StepContext) -> None:
    """One BMS firmware across the string and the bank (000, 004).

    The master's version over CAN 0x35F (``bms_firmware``, major.minor: the protocol carries no
    patch) and SunSpec model 1 ``Vr`` (``master_firmware``, full) against the plan. After
    ``settle_s`` at rest, every module must be admitted by the master: ``strings_not_admitted``
    counts SunSpec 804 strings not enabled; a string held back while each of its modules is
    within ``admission_delta_v`` of its series-position peers is not a voltage matter, so the
    diagnosis names the firmware. ``capacity_not_counted`` is the installed capacity (CAN 0x379)
    minus the capacity the master counts online. ``as_built_versions`` is the number of
    different versions in the DUT's record (module entries, else its firmware profile).
    """
    bench, dut = ctx.bench, ctx.dut
    outputs_off(bench)
    bench.clock.wait(float(ctx.param("settle_s", 2.0)))
    bms = bench.bms
    ctx.measure("bms_firmware", bms.firmware(), "", ctx.limit("bms_firmware"), diagnosis=DIAG_FIRMWARE)
    if bench.provides("module_reports"):
        ctx.measure("master_firmware", bench.module_reports.bank_identity().firmware, "",
                    ctx.limit("master_firmware"), diagnosis=DIAG_FIRMWARE)
    if dut is not None:
        positions = [f"s{s}p{p}" for s in range(1, dut.dut.series + 1) for p in range(1, dut.dut.parallel + 1)]
        recorded = {pos: (dut.dut.modules[pos].firmware if pos in dut.dut.modules
                          and dut.dut.modules[pos].firmware else dut.firmware.version) for pos in positions}
        versions = sorted(set(recorded.values()))
        ctx.measure("as_built_versions", len(versions), "", ctx.limit("as_built_versions"),
                    diagnosis=DIAG_FIRMWARE + f" (record: {', '.join(versions)})")
    status = bms.status()
    online = status.online_capacity_ah
    installed = status.installed_capacity_ah
    if installed is not None and online is not None:
        ctx.measure("capacity_not_counted", float(installed) - float(online), "Ah",
                    ctx.limit("capacity_not_counted"), diagnosis=DIAG_FIRMWARE + "; " + DIAG_REDUCED_CAPACITY)
    reports = module_reports(bench)
    if reports is None:
        ctx.measure("strings_not_admitted", None, "", ctx.limit("strings_not_admitted"),
                    diagnosis="no per-module BMS data: the station has no SunSpec (Modbus) bus")
        return
    held = _strings_not_enabled(bench, reports)
    window = float(ctx.param("admission_delta_v", 0.5))
    pending = {m for members in held.values() for m in members}
    notes = []
    firmware_like = False
    for string, members in sorted(held.items(), key=lambda kv: natural_key(kv[0])):
        deltas = {m: _delta_to_peers(m, reports, pending - {m}) for m in members}
        for m, d in deltas.items():
            if not math.isnan(d):  # no peer to compare with: nothing measured (a NaN would be ERROR)
                ctx.measure(f"delta_v_{m}", d, "V")
        close = all(not math.isnan(d) and abs(d) <= window for d in deltas.values()) \
            or all(math.isnan(d) for d in deltas.values())
        firmware_like = firmware_like or close
        notes.append(f"{string} ({', '.join(members)}): " + ("voltages within the admission window"
                                                             if close else "a voltage outside the window"))
    cause = DIAG_FIRMWARE if firmware_like or not held else (
        "module pending on a voltage difference (004: alarm during startup -> voltage difference) -- "
        "check pre-connect voltage and SOC; " + DIAG_FIRMWARE)
    ctx.measure("strings_not_admitted", len(held), "", ctx.limit("strings_not_admitted"),
                diagnosis=cause + (f" [{'; '.join(notes)}]" if notes else ""))


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
                 "reaction_time": Measure("s", required=True, doc="from the last keep-alive sent to the last reaction seen"),
                 "recovery_time": Measure("s", required=True)},
       needs=("bms",), uses=("load", "module_reports", "supply"))
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
    client = bench.bms
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
        stopped = bench.clock.now()
        # the battery's comm-loss timer runs from the last keep-alive it got, which went out up
        # to one keep-alive period before the stop: count from there (else the reaction reads
        # short by whatever that phase happened to be -- on a wall clock, anything up to 1 s)
        last = getattr(bench.bms, "last_keepalive_s", None)
        period = float(getattr(bench.bms, "period_s", 1.0))
        t0 = last if last is not None and stopped - period <= last <= stopped else stopped
        marks["heartbeat_stopped_s"] = stopped - rows.origin
        marks["last_keepalive_s"] = t0 - rows.origin

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
                 "recovery_time": Measure("s")},
       needs=("actuator", "bms", "bms_service"), uses=("load", "module_reports", "supply"))
def comm_loss_silent_module(ctx: StepContext) -> None:
    """A module stops talking to its master (004: one module stays offline; combined limits only
    for modules online and accepted).

    With ``inject`` (default true) the check silences ``module`` (a position, default the middle
    one in bank order) with the bench service command ``bench.bms_service.silence_module`` at t0;
    without it, it watches for up to ``observe_s`` for a module to go offline (the twin's
    ``silent_module`` fault) and counts from there. Every ``poll_s``: modules offline (SunSpec
    805 models without data / CAN 0x372) and the totals the master reports (online capacity,
    discharge limit) against what may count: modules heard and admitted at the weakest series
    position (SunSpec 805), the silenced module never. Measured: ``offline_detect_time``,
    ``totals_drop_time`` (until capacity and limit exclude it; ``observe_s`` if never),
    ``capacity_overcounted`` and ``limit_overcounted`` at the end, then -- silence lifted --
    ``recovery_time`` until every module is online and counted again."""
    bench = ctx.bench
    client = bench.bms
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
            may = countable(reports, exclude)
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
        bench.bms_service.silence_module(order.index(target), True)
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
            bench.bms_service.silence_module(order.index(target), False)
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
                 "safe_state_by": Measure("")},
       needs=("actuator", "bms"), uses=("load", "supply"))
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
       measures={"installed_capacity": Measure("Ah", needs="capacity_report"),
                 "installed_capacity_error": Measure("Ah", needs="capacity_report", doc="against the DUT's nameplate"),
                 "online_capacity": Measure("Ah"),
                 "discharge_limit": Measure("A"),
                 "capacity_overcounted": Measure("Ah", required=True),
                 "capacity_not_counted": Measure("Ah"),
                 "limit_overcounted": Measure("A", required=True),
                 "limit_shortfall": Measure("A"),
                 "modules_missing": Measure("")},
       needs=("actuator", "bms"), uses=("load", "module_reports", "supply"))
def aggregation(ctx: StepContext) -> None:
    """004: "reports combined limits only for modules that are online and accepted"; the inverter
    reading reduced capacity means a module not accepted. At rest (``settle_s``): installed
    capacity (CAN 0x379) against the DUT's nameplate (``installed_capacity_error``), online
    capacity and the discharge limit against what the modules heard and admitted may give
    (``capacity_overcounted``/``capacity_not_counted``, ``limit_overcounted``/``limit_shortfall``:
    Σ per series position, the weakest position limiting a string), modules online against the
    DUT's count (``modules_missing``)."""
    bench, dut = ctx.bench, ctx.dut
    client = bench.bms
    module_ah, module_a = _module_ratings(ctx)
    outputs_off(bench)
    if bench.channels.actuator:
        connect_bank(bench)
    bench.clock.wait(float(ctx.param("settle_s", 5.0)))
    status, limits = client.status(), client.limits()
    can_status = bench.bms.status()
    reports = module_reports(bench)
    expected = dut.dut.series * dut.dut.parallel if dut is not None else len(module_order(bench))
    may = countable(reports, []) if reports is not None else (dut.dut.parallel if dut is not None else 0)
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


# ================================================================== BMS sync gating
@check("bms_sync_gating",
       params={"observe_s": Param("s"),
               "safe_delta_v": Param("V"),
               "align_current": Param("A", setpoint=("supply.current", "load.current"), doc="also the load's when discharging"),
               "align_s": Param("s"),
               "rest_s": Param("s"),
               "admit_s": Param("s"),
               "sample_s": Param("s"),
               "max_steps": Param(kind="count"),
               "charge_voltage": Param("V", setpoint="supply.voltage")},
       measures={"modules_online": Measure(""),
                 "modules_offline": Measure("", required=True),
                 "modules_pending_start": Measure(""),
                 "pending_{module}_delta_v": Measure("V"),
                 "pending_{module}_delta_v_final": Measure("V"),
                 "capacity_overcounted": Measure("Ah", required=True),
                 "pending_limit_counted": Measure("A", required=True),
                 "alignment_charge": Measure("Ah", required=True),
                 "modules_pending_end": Measure("", required=True),
                 "online_capacity": Measure("Ah"),
                 "capacity_not_counted": Measure("Ah", needs="capacity_report", required=True),
                 "discharge_limit": Measure("A"),
                 "discharge_limit_shortfall": Measure("A", required=True)},
       needs=("actuator", "module_reports"), uses=("bms", "load", "supply"))
def bms_sync_gating(ctx: StepContext) -> None:
    """Master/slave BMS sync (004): a module whose voltage is too far from the bank stays
    pending -- not counted in capacity or limits -- until the difference is safe; once admitted
    it counts; nobody drops offline.

    The BMS is watched for ``observe_s`` (every module online, capacity counted only for modules
    online). A module the BMS holds back (its SunSpec string not enabled) has its ΔV to its
    peers recorded; while ΔV is above ``safe_delta_v`` the bank is charged (module higher) or
    discharged (module lower) at ``align_current`` for ``align_s`` and left ``rest_s`` (the master
    compares at rest), up to ``max_steps`` times; once ΔV is within ``safe_delta_v`` the BMS has
    ``admit_s`` to admit it. Measured: capacity and discharge limit counted beyond the modules
    heard and admitted (``capacity_overcounted``, ``pending_limit_counted``: must be none -- a
    pending module, or one gone silent, that still counts), the charge moved to align them,
    modules still pending, the capacity not counted at the end (004: reduced capacity = module
    not accepted) and the discharge limit against the DUT's parallel count x the module's limit.
    """
    bench, dut = ctx.bench, ctx.dut
    module_ah = dut.module_type.capacity_ah
    module_limit_a = dut.module_type.bms.limits.discharge_current_a
    reports = module_reports(bench)
    if not require_reports(ctx, reports, "modules_pending_end"):
        return
    outputs_off(bench)
    connect_bank(bench)
    worst_offline, overcounted, over_limit = 0, 0.0, 0.0
    offline_seen: set[str] = set()
    uncountable: set[str] = set()      # silent or pending while something counted beyond the rest
    for _ in range(max(int(float(ctx.param("observe_s", 5.0))), 1)):
        bench.clock.wait(1.0)
        reports = module_reports(bench)
        assert reports is not None
        state = gate_state(bench, reports)
        may_count = countable(reports, state.pending)
        worst_offline = max(worst_offline, state.modules_offline)
        offline_seen.update(silent_modules(reports))
        over_ah = state.online_ah - may_count * module_ah
        over_a = state.discharge_limit_a - may_count * module_limit_a
        if over_ah > 0 or over_a > 0:
            uncountable.update(silent_modules(reports) + state.pending)
        overcounted = max(overcounted, over_ah)
        over_limit = max(over_limit, over_a)
    ctx.measure("modules_online", state.modules_online, "")
    ctx.measure("modules_offline", worst_offline, "", ctx.limit("modules_offline"),
                diagnosis=diagnose("module_offline", names(list(offline_seen)) or "bank",
                                   f"the BMS reports {worst_offline} module(s) offline"
                                   + (f"; no data from {names(list(offline_seen))}" if offline_seen else "")
                                   + bms_alarm_note(bench)))
    ctx.measure("modules_pending_start", len(state.pending), "")
    for module in state.pending:
        ctx.measure(f"pending_{module}_delta_v", peer_delta_v(module, reports, state.pending), "V")
    # nothing may count beyond the modules heard and admitted (the weakest series position)
    counted = diagnose("counted_not_accepted", names(list(uncountable)) or "bank",
                       f"up to {overcounted:.1f} Ah and {over_limit:.1f} A counted beyond the modules "
                       f"heard and admitted" + (f" ({names(list(uncountable))} silent or pending)"
                                                if uncountable else ""))
    ctx.measure("capacity_overcounted", overcounted, "Ah", ctx.limit("capacity_overcounted"), diagnosis=counted)
    ctx.measure("pending_limit_counted", over_limit, "A", ctx.limit("pending_limit_counted"), diagnosis=counted)
    moved_ah = _align(ctx, state.pending) if state.pending else 0.0
    ctx.measure("alignment_charge", moved_ah, "Ah", ctx.limit("alignment_charge"),
                diagnosis=diagnose("startup_alarm", names(state.pending) or "bank",
                                   f"{moved_ah:.1f} Ah moved to bring the pending module(s) within "
                                   f"{float(ctx.param('safe_delta_v', 0.5)):g} V of the bank"))
    reports = module_reports(bench)
    assert reports is not None
    end = gate_state(bench, reports)
    held = end.pending + [m for m in silent_modules(reports) if m not in end.pending]
    deltas = "; ".join(f"{m} ΔV {peer_delta_v(m, reports, end.pending) * 1e3:+.0f} mV" for m in end.pending
                       if not math.isnan(peer_delta_v(m, reports, end.pending)))
    not_accepted = diagnose("reduced_capacity", names(held) or "bank",
                            (f"{names(end.pending)} not admitted" if end.pending else "every module admitted")
                            + (f" ({deltas}, within the safe {float(ctx.param('safe_delta_v', 0.5)):g} V: "
                               "not a voltage difference)" if deltas else "")
                            + (f"; no data from {names(silent_modules(reports))}" if silent_modules(reports) else ""))
    ctx.measure("modules_pending_end", len(end.pending), "", ctx.limit("modules_pending_end"), diagnosis=not_accepted)
    ctx.measure("online_capacity", end.online_ah, "Ah")
    ctx.measure("capacity_not_counted", end.installed_ah - end.online_ah, "Ah",
                ctx.limit("capacity_not_counted"), diagnosis=not_accepted)
    ctx.measure("discharge_limit", end.discharge_limit_a, "A")
    shortfall = dut.dut.parallel * module_limit_a - end.discharge_limit_a
    alarms = bms_alarm_note(bench)
    if held or not alarms:
        limit_diagnosis = diagnose("reduced_capacity", names(held) or "bank",
                                   f"discharge limit {end.discharge_limit_a:.0f} A against {dut.dut.parallel} x "
                                   f"{module_limit_a:g} A{alarms}")
    else:
        limit_diagnosis = diagnose("startup_alarm", "BMS", f"discharge limit {end.discharge_limit_a:.0f} A with "
                                   f"every module admitted{alarms}")
    ctx.measure("discharge_limit_shortfall", shortfall, "A", ctx.limit("discharge_limit_shortfall"),
                diagnosis=limit_diagnosis)


def _align(ctx: StepContext, pending: list[str]) -> float:
    """Charge or discharge the bank towards the pending module(s) until the BMS admits them
    (or ``max_steps`` run out); returns the charge moved (Ah)."""
    bench = ctx.bench
    safe_v = float(ctx.param("safe_delta_v", 0.5))
    amps = float(ctx.param("align_current", 50.0))
    step_s = float(ctx.param("align_s", 300.0))
    rest_s = float(ctx.param("rest_s", 120.0))
    admit_s = float(ctx.param("admit_s", 10.0))
    sample_s = float(ctx.param("sample_s", 60.0))
    moved = 0.0
    for _ in range(int(ctx.param("max_steps", 10))):
        reports = module_reports(bench)
        assert reports is not None
        state = gate_state(bench, reports)
        if not state.pending:
            break
        deltas = {m: peer_delta_v(m, reports, state.pending) for m in state.pending}
        worst = max(deltas.values(), key=lambda d: abs(d) if not math.isnan(d) else -1.0)
        if math.isnan(worst) or abs(worst) <= safe_v:
            bench.clock.wait(admit_s)  # at rest, close enough: the master must admit now
            reports = module_reports(bench)
            assert reports is not None
            if gate_state(bench, reports).pending:
                for module, delta in deltas.items():
                    ctx.measure(f"pending_{module}_delta_v_final", delta, "V")
                break
            continue
        if worst > 0:  # the module is higher: charge the bank up towards it
            bench.supply.set_voltage(float(ctx.param("charge_voltage", bms_read(bench, "limits").charge_voltage_v)))
            bench.supply.set_current(amps)
            bench.supply.output(True)
            try:
                moved += ah_while(bench, bench.supply.measure_current, step_s, sample_s)
            finally:
                bench.supply.output(False)
        else:
            bench.load.set_current(amps)
            bench.load.input(True)
            try:
                moved += ah_while(bench, bench.load.measure_current, step_s, sample_s)
            finally:
                bench.load.input(False)
        bench.clock.wait(rest_s)
    return moved


# ================================================================== commissioning (004): BMS network
@check("bms_network",
       params={"observe_s": Param("s")},
       measures={"bms_silence": Measure("s", required=True),
                 "bms_firmware": Measure("", required=True),
                 "modules_missing": Measure("", required=True),
                 "modules_offline": Measure("", required=True),
                 "modules_visible_missing": Measure("", required=True),
                 "duplicate_serials": Measure("", required=True)},
       needs=("module_reports",), uses=("bms",))
def bms_network(ctx: StepContext) -> None:
    """004 commissioning steps 8-10: BMS communication in order, addresses set, every module
    visible. Watched for ``observe_s``: the BMS keeps talking (``bms_silence``), reports every
    module of the DUT online (``modules_missing``, ``modules_offline``), each module answers with
    its own serial over SunSpec (``modules_visible`` missing, ``duplicate_serials``: two modules
    on one address), and the firmware is the DUT's (``bms_firmware``)."""
    bench, dut = ctx.bench, ctx.dut
    expected = dut.dut.series * dut.dut.parallel
    missing_worst, offline_worst, silence_worst = 0, 0, 0.0
    for _ in range(max(int(float(ctx.param("observe_s", 5.0))), 1)):
        bench.clock.wait(1.0)
        status = bench.bms.status()
        missing_worst = max(missing_worst, expected - int(status.modules_online or 0))
        offline_worst = max(offline_worst, int(status.modules_offline or 0))
        silence_worst = max(silence_worst, bench.bms.seconds_since_heard())
    reports = module_reports(bench)
    silent = silent_modules(reports)
    ctx.measure("bms_silence", silence_worst, "s", ctx.limit("bms_silence"),
                diagnosis=diagnose("startup_alarm", "BMS", f"silent for {silence_worst:.1f} s (communication fault)"))
    firmware = bms_read(bench, "firmware")
    ctx.measure("bms_firmware", firmware, "", ctx.limit("bms_firmware"),
                diagnosis=diagnose("firmware_mix", "master BMS", f"reports firmware '{firmware}'"))
    offline = diagnose("module_offline", names(silent) or "bank",
                       f"the BMS reports {expected - missing_worst} of {expected} modules online"
                       + (f"; no data from {names(silent)}" if silent else "") + bms_alarm_note(bench))
    ctx.measure("modules_missing", missing_worst, "", ctx.limit("modules_missing"), diagnosis=offline)
    ctx.measure("modules_offline", offline_worst, "", ctx.limit("modules_offline"), diagnosis=offline)
    if not require_reports(ctx, reports, "modules_visible_missing"):
        return
    assert reports is not None
    visible = [m for m, r in reports.items() if r.voltage_v is not None]
    ctx.measure("modules_visible_missing", expected - len(visible), "", ctx.limit("modules_visible_missing"),
                diagnosis=diagnose("module_offline", names(silent) or "bank",
                                   f"{len(visible)} of {expected} modules answer over SunSpec"))
    serials = [r.serial for r in reports.values() if r.serial]
    twice = sorted({m for m, r in reports.items() if r.serial and serials.count(r.serial) > 1}, key=natural_key)
    ctx.measure("duplicate_serials", len(serials) - len(set(serials)), "", ctx.limit("duplicate_serials"),
                diagnosis=diagnose("module_offline", names(twice) or "bank",
                                   "the same serial at two addresses (address setting)"))


@check("inverter_recognition",
       params={"observe_s": Param("s")},
       measures={"keepalive_on": Measure("", required=True),
                 "bms_silence": Measure("s", required=True),
                 "bms_identity": Measure(""),
                 "charge_current_limit": Measure("A", required=True),
                 "discharge_current_limit": Measure("A", required=True),
                 "charge_voltage_limit": Measure("V", required=True),
                 "discharge_voltage_limit": Measure("V", required=True)},
       needs=(), uses=("bms", "module_reports"))
def inverter_recognition(ctx: StepContext) -> None:
    """004 commissioning step 12: the inverter (the harness) recognises the battery: its
    keep-alive runs, the BMS answers within ``bms_silence``, publishes non-zero charge and
    discharge limits for the bank and the voltage window of this bank."""
    bench, dut = ctx.bench, ctx.dut
    bench.clock.wait(float(ctx.param("observe_s", 3.0)))
    bms = bench.bms
    heartbeat = bool(getattr(bms, "heartbeat_on", True))
    ctx.measure("keepalive_on", heartbeat, "", ctx.limit("keepalive_on"),
                diagnosis=diagnose("startup_alarm", "inverter keep-alive", "the harness's keep-alive is not running"))
    silence = bms.seconds_since_heard()
    ctx.measure("bms_silence", silence, "s", ctx.limit("bms_silence"),
                diagnosis=diagnose("startup_alarm", "BMS", f"silent for {silence:.1f} s (communication fault)"))
    ctx.measure("bms_identity", bms.identity(), "")
    limits = bms_read(bench, "limits")
    held = not_admitted(bench)
    alarms = bms_alarm_note(bench)
    per_module = dut.module_type.bms.limits if dut is not None else None
    for name, value, module_value in (
            ("charge_current_limit", limits.charge_current_a, per_module.charge_current_a if per_module else None),
            ("discharge_current_limit", limits.discharge_current_a,
             per_module.discharge_current_a if per_module else None)):
        expected = f" against {dut.dut.parallel} x {module_value:g} A" if dut is not None else ""
        if held:
            diagnosis = diagnose("reduced_capacity", names(held), f"{value:.0f} A published{expected}; "
                                 f"{names(held)} not online and accepted{alarms}")
        elif alarms or not value:
            diagnosis = diagnose("startup_alarm", "BMS", f"{value:.0f} A published{expected} with every module "
                                 f"online{alarms or ' (no alarm reported)'}")
        else:
            diagnosis = diagnose("reduced_capacity", "bank", f"{value:.0f} A published{expected} with every "
                                 "module online")
        ctx.measure(name, value, "A", ctx.limit(name), diagnosis=diagnosis)
    window = diagnose("module_mix", "bank", f"voltage window {limits.discharge_voltage_v:.1f}..."
                      f"{limits.charge_voltage_v:.1f} V published: another voltage class or chemistry")
    ctx.measure("charge_voltage_limit", limits.charge_voltage_v, "V", ctx.limit("charge_voltage_limit"),
                diagnosis=window)
    ctx.measure("discharge_voltage_limit", limits.discharge_voltage_v, "V",
                ctx.limit("discharge_voltage_limit"), diagnosis=window)


# ================================================================== end of line: comm health
@check("bms_comm_health",
       params={"observe_s": Param("s")},
       measures={"bms_silence": Measure("s", required=True),
                 "malformed_frames": Measure("", required=True),
                 "manufacturer": Measure(""),
                 "bms_firmware": Measure("", required=True, doc="CAN 0x35F, else SunSpec model 1 Vr"),
                 "serial": Measure(""),
                 "master_firmware": Measure("", doc="SunSpec model 1 Vr")},
       needs=("bms",), uses=("module_reports",))
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
    firmware, source = bms_firmware(bench)  # CAN 0x35F, else SunSpec model 1 (a pack without 0x35F)
    evidence = f"{source} reports firmware {firmware}" if firmware is not None else source
    ctx.measure("bms_firmware", firmware, "", ctx.limit("bms_firmware"),
                diagnosis=diagnose("firmware_release", "BMS", evidence + _expected(ctx, "bms_firmware")))
    if bench.provides("module_reports"):
        identity = bench.module_reports.bank_identity()
        ctx.measure("serial", identity.serial, "")
        version = identity.firmware
        ctx.measure("master_firmware", version, "", ctx.limit("master_firmware"),
                    diagnosis=diagnose("firmware_release", "BMS", f"SunSpec model 1 reports firmware {version}"
                                       + _expected(ctx, "master_firmware")))


def _expected(ctx: StepContext, limit: str) -> str:
    """``, the plan expects X`` for an ``equals`` limit (empty otherwise)."""
    expected = ctx.limit(limit).equals
    return f", the plan expects '{expected}'" if expected is not None else ""
