"""First checks of a bank: identity, open-circuit voltages, configuration, current sharing.

Diagnoses come from the troubleshooting table of 004_580db881af34243e.txt (DOMAIN.md section 2).
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

from instruments.roles import InstrumentError, Waveform
from test_plans.checks import Measure, Param, StepContext, check

DIAG_REDUCED_CAPACITY = ("module not accepted by the BMS (004: inverter reports reduced capacity) "
                         "-- check CAN/RS485 order, firmware, protocol")
DIAG_MISMATCH = ("voltage or SOC mismatch (004: modules exchange current at rest) "
                 "-- check pre-connect voltage and SOC")
DIAG_SHARING = ("unequal cable resistance (004: one module current much higher) "
                "-- check cable length, gauge, busbar landing")
DIAG_OLDER_MODULE = ("lower resistance path or older module (004: one module discharges faster) "
                     "-- check cable length, gauge and module health")
DIAG_OFFLINE = ("BMS address, breaker or contactor issue (004: one module stays offline) "
                "-- check address setting, branch breaker, communication cable")
DIAG_FUSE = ("overcurrent or wrong fuse rating (004: branch fuse trips) "
             "-- check branch current and fuse specification")

# a branch carrying less than this fraction of the mean is open, not just unequal
OPEN_BRANCH_FRACTION = 0.05
# the most samples a trace keeps: a report picture shows no more, and a CSV stays small
TRACE_POINTS = 5000
_POSITION = re.compile(r"^s(\d+)p(\d+)$")


def series_groups(branches: list[str]) -> dict[str, list[str]]:
    """Branches that share current, by series position: ``sXpY`` branches (a bank of series
    groups) grouped by X; ``pY`` strings (a bank of parallel strings) all in one group."""
    groups: dict[str, list[str]] = {}
    for branch in branches:
        match = _POSITION.match(branch)
        key = f"s{match.group(1)}" if match else "strings"
        groups.setdefault(key, []).append(branch)
    return {k: sorted(v, key=_natural) for k, v in sorted(groups.items(), key=lambda kv: _natural(kv[0]))}


def _natural(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def imbalance_pct(currents: dict[str, float]) -> float:
    """max |I - mean| / |mean| of parallel branches, in percent (nan if the mean is zero)."""
    mean = sum(currents.values()) / len(currents)
    if not mean:
        return math.nan
    return max(abs(i - mean) for i in currents.values()) / abs(mean) * 100.0


def outputs_off(bench: Any) -> None:
    """Load input and supply output off (roles the station has)."""
    if "load" in bench.instruments:
        bench.load.input(False)
    if "supply" in bench.instruments:
        bench.supply.output(False)


def branch_contactors(bench: Any) -> list[str]:
    """Branch contactors the actuator drives (every one but ``main``), in bank order."""
    return sorted((name for name in bench.channels.actuator.values() if name != "main"), key=_natural)


def connect_bank(bench: Any, gap_s: float = 0.5) -> list[str]:
    """Close every branch contactor that is open, then the main one: the bank as built.

    A check that needs the whole bank calls this first, so it runs after an earlier step (or the
    safety supervisor) opened something. Gated plans stop before it when a step failed.
    """
    closed = []
    for name in branch_contactors(bench) + ["main"]:
        try:
            channel = bench.channels.contactor_channel(name)
        except KeyError:
            continue
        if not bench.actuator.is_closed(channel):
            bench.set_contactor(name, True)
            closed.append(name)
            bench.clock.wait(gap_s)
    return closed


def bms_now(bench: Any) -> Any:
    """The BMS client that answers with the bank's present state: the SunSpec (Modbus) client
    when the station has one -- a request is answered from the BMS as it is now -- else the Bms
    role. The CAN client keeps the frames it has decoded so far; on an emulated bench under CPU
    load its receive thread can trail the virtual clock by seconds (a minute of bench time passes
    in milliseconds), so a value that just changed is read where it cannot be stale."""
    client = getattr(bench, "sunspec", None)
    return client if client is not None else bench.bms


def bms_read(bench: Any, what: str, client: Any = None, tries: int = 10) -> Any:
    """``client.<what>()`` (default the Bms role), waiting while the BMS has not yet sent the
    frame it needs: a BMS reports about once a second after power-up. Of the role's calls only
    ``firmware()`` waits for the battery's first report (the driver's own bounded wait, in the
    time the frame needs to cross the bus); so that is asked first, then the bench clock is
    given time. On an emulated bench under CPU load the CAN client may not have decoded its
    first frames when step 1 starts."""
    client = client if client is not None else bench.bms
    for attempt in range(tries):
        try:
            return getattr(client, what)()
        except InstrumentError as exc:
            if "received yet" not in exc.problem or attempt == tries - 1:
                raise
            if attempt == 0 and what != "firmware":
                try:
                    client.firmware()
                except InstrumentError:
                    pass
            bench.clock.wait(0.5)
    raise AssertionError("unreachable")


def bms_alarm_note(bench: Any) -> str:
    """`` (BMS alarms: ...)`` when the BMS reports any, for a diagnosis; empty otherwise."""
    try:
        alarms = sorted(bench.bms.status().alarms) if bench.bms is not None else []
    except Exception:  # noqa: BLE001 - a diagnosis never fails a check on its own
        return ""
    return f" (BMS alarms: {', '.join(alarms)})" if alarms else ""


def sharing_diagnosis(currents: dict[str, float], bench: Any) -> str:
    """A branch carrying (almost) nothing is open (fuse, breaker, contactor or its BMS switch);
    otherwise the split is unequal (cable, joint or an older module)."""
    mean = sum(currents.values()) / len(currents)
    if mean and min(abs(i) for i in currents.values()) < OPEN_BRANCH_FRACTION * abs(mean):
        text = f"{DIAG_OFFLINE}; {DIAG_FUSE}"
    else:
        text = f"{DIAG_SHARING}; {DIAG_OLDER_MODULE}"
    return text + bms_alarm_note(bench)


# ================================================================== traces for the report
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


@check("bms_identity",
       measures={"bms_firmware": Measure("", required=True, doc="CAN 0x35F major.minor")})
def bms_identity(ctx: StepContext) -> None:
    """The BMS answers and reports the firmware the plan expects (000, 004: no mixed firmware)."""
    bms = ctx.bench.bms
    ctx.measure("bms_firmware", bms.firmware(), "", ctx.limit("bms_firmware"),
                diagnosis=DIAG_REDUCED_CAPACITY)


@check("module_ocv_match",
       params={"rest_s": Param("s")},
       measures={"ocv_{module}": Measure("V", limit="module_ocv", required=True),
                 "ocv_spread": Measure("V", required=True)})
def module_ocv_match(ctx: StepContext) -> None:
    """Every module's open-circuit voltage and their spread (000: <= 0.1 V before paralleling)."""
    ctx.bench.clock.wait(float(ctx.param("rest_s", 1.0)))
    volts = ctx.bench.module_voltages()
    for module, value in sorted(volts.items()):
        ctx.measure(f"ocv_{module}", value, "V", ctx.limit("module_ocv"))
    spread = max(volts.values()) - min(volts.values())
    ctx.measure("ocv_spread", spread, "V", ctx.limit("ocv_spread"), diagnosis=DIAG_MISMATCH)


@check("configuration",
       params={"rest_s": Param("s")},
       measures={"bank_voltage": Measure("V", required=True),
                 "installed_capacity": Measure("Ah"),
                 "online_capacity": Measure("Ah"),
                 "configuration": Measure("", doc="NsMp of the DUT"),
                 "nominal_voltage": Measure("V"),
                 "nominal_capacity": Measure("Ah"),
                 "nominal_energy": Measure("kWh"),
                 "bank_voltage_deviation": Measure("%"),
                 "capacity_deviation": Measure("%"),
                 "energy": Measure("kWh", doc="nominal voltage x installed capacity"),
                 "energy_deviation": Measure("%"),
                 "modules_missing": Measure("", doc="DUT modules minus modules the BMS reports online")})
def configuration(ctx: StepContext) -> None:
    """Bank voltage and the BMS-reported capacity match the DUT's NsMp configuration (000).

    Nominal voltage, capacity and energy come from the DUT file (N x module voltage, M x module
    Ah); the bank's open-circuit voltage at the load terminals and the BMS's installed and
    online capacity are measured against them as deviations, so a plan limits the deviation
    (``bank_voltage_deviation``, ``capacity_deviation``, ``energy_deviation`` in %) and the same
    plan fits a 1S4P and a 4S4P. ``modules_missing`` is the DUT's module count minus the
    modules the BMS reports online.
    """
    bench = ctx.bench
    bench.load.input(False)
    if "supply" in bench.instruments:
        bench.supply.output(False)
    ctx.bench.clock.wait(float(ctx.param("rest_s", 0.0)))
    volts = bench.load.measure_voltage()
    ctx.measure("bank_voltage", volts, "V", ctx.limit("bank_voltage"))
    status = bms_read(bench, "status")
    ctx.measure("installed_capacity", status.installed_capacity_ah, "Ah",
                ctx.limit("installed_capacity"), diagnosis=DIAG_REDUCED_CAPACITY)
    ctx.measure("online_capacity", status.online_capacity_ah, "Ah",
                ctx.limit("online_capacity"), diagnosis=DIAG_REDUCED_CAPACITY)
    if ctx.dut is None:
        return
    dut, module = ctx.dut.dut, ctx.dut.module_type
    nominal_v = dut.series * module.nominal_voltage_v
    nominal_ah = dut.parallel * module.capacity_ah
    nominal_kwh = nominal_v * nominal_ah / 1000.0
    ctx.measure("configuration", f"{dut.series}S{dut.parallel}P", "")
    ctx.measure("nominal_voltage", nominal_v, "V")
    ctx.measure("nominal_capacity", nominal_ah, "Ah")
    ctx.measure("nominal_energy", nominal_kwh, "kWh")
    ctx.measure("bank_voltage_deviation", (volts - nominal_v) / nominal_v * 100.0, "%",
                ctx.limit("bank_voltage_deviation"),
                diagnosis="series count or a module off the bank (000: series adds voltage) "
                          + "-- " + DIAG_OFFLINE)
    installed = status.installed_capacity_ah
    if installed is not None:
        ctx.measure("capacity_deviation", (installed - nominal_ah) / nominal_ah * 100.0, "%",
                    ctx.limit("capacity_deviation"), diagnosis=DIAG_REDUCED_CAPACITY)
        energy = nominal_v * installed / 1000.0
        ctx.measure("energy", energy, "kWh")
        ctx.measure("energy_deviation", (energy - nominal_kwh) / nominal_kwh * 100.0, "%",
                    ctx.limit("energy_deviation"), diagnosis=DIAG_REDUCED_CAPACITY)
    if status.modules_online is not None:
        ctx.measure("modules_missing", dut.series * dut.parallel - status.modules_online, "",
                    ctx.limit("modules_missing"), diagnosis=DIAG_OFFLINE)


def _sharing_phase(ctx: StepContext, phase: str, amps: float) -> None:
    """One operating point: per-branch currents, imbalance per series group, the total against
    the instrument and the BMS. ``phase`` is ``""`` (load) or ``"charge_"`` (supply)."""
    bench = ctx.bench
    charging = phase == "charge_"
    if charging:
        volts = ctx.params.get("charge_voltage")
        bench.supply.set_voltage(float(volts) if volts is not None else bms_read(bench, "limits").charge_voltage_v)
        bench.supply.set_current(amps)
        bench.supply.output(True)
    else:
        bench.load.set_current(amps)
        bench.load.input(True)
    try:
        bench.clock.wait(float(ctx.param("settle_s", 5.0)))
        currents = bench.branch_currents()
        total = bench.supply.measure_current() if charging else -bench.load.measure_current()
        bms_amps = bms_now(bench).telemetry().current_a if bench.bms is not None else None
        diagnosis = sharing_diagnosis(currents, bench)
    finally:
        if charging:
            bench.supply.output(False)
        else:
            bench.load.input(False)
    branch_limit = ctx.limits.get(f"{phase}branch_current") or ctx.limit("branch_current")
    for branch, value in sorted(currents.items(), key=lambda kv: _natural(kv[0])):
        ctx.measure(f"{phase}current_{branch}", value, "A", branch_limit, diagnosis=diagnosis)
    groups = series_groups(list(currents))
    worst = max(imbalance_pct({b: currents[b] for b in members}) for members in groups.values())
    limit = ctx.limits.get(f"{phase}imbalance") or ctx.limit("imbalance")
    ctx.measure(f"{phase}imbalance", worst, "%", limit, diagnosis=diagnosis)
    first = next(iter(groups.values()))
    ctx.measure(f"{phase}bank_current", total, "A")
    ctx.measure(f"{phase}shunt_total_error", abs(sum(currents[b] for b in first) - total), "A",
                ctx.limit("shunt_total_error"), diagnosis=diagnosis)
    if bms_amps is not None:
        ctx.measure(f"{phase}bms_current", bms_amps, "A")
        ctx.measure(f"{phase}bms_current_error", abs(bms_amps - total), "A",
                    ctx.limit("bms_current_error"),
                    diagnosis="BMS current disagrees with the bench (004: inverter reports reduced "
                              "capacity / module not counted) -- check CAN/RS485 order, firmware, protocol")
    _trace_sharing(ctx, "charge" if charging else "load", amps, currents, limit.high)


def _trace_sharing(ctx: StepContext, side: str, amps: float, currents: dict[str, float],
                   tolerance_pct: float | None) -> None:
    """The branch currents of one operating point for the report: bars around their mean and
    the band the plan's imbalance limit allows, so the branch that carries more (or nothing)
    is seen at once. One mean over every branch: parallel groups of a series bank carry the
    same string current."""
    branches = sorted(currents, key=_natural)
    values = [currents[b] for b in branches]
    ctx.measure.trace(f"sharing_{side}", "sharing", {"branch": branches, "current": values},
                      units={"current": "A"},
                      marks={"mean": sum(values) / len(values), "tolerance_pct": tolerance_pct},
                      title=f"Branch currents at {amps:g} A {side} (+ = charging)")


@check("current_sharing",
       params={"load_current": Param("A", setpoint="load.current"),
               "charge_current": Param("A", setpoint="supply.current"),
               "charge_voltage": Param("V", setpoint="supply.voltage", doc="default: the BMS's charge voltage limit"),
               "settle_s": Param("s"),
               "rest_s": Param("s", doc="between the load and the charge point")},
       # {phase} is "" (load) or "charge_"; the specific patterns come before current_{branch}
       measures={"imbalance": Measure("%", required=True),
                 "charge_imbalance": Measure("%"),
                 "{phase}shunt_total_error": Measure("A", limit="shunt_total_error"),
                 "{phase}bms_current_error": Measure("A", limit="bms_current_error"),
                 "{phase}bms_current": Measure("A"),
                 "{phase}bank_current": Measure("A", doc="the instrument's own reading"),
                 "{phase}current_{branch}": Measure("A", limit="{phase}branch_current")})
def current_sharing(ctx: StepContext) -> None:
    """Per-branch currents from the shunts at a load (``load_current``) and, if the plan gives
    ``charge_current``, at a charge from the supply (CV ``charge_voltage``, default the BMS's
    charge voltage limit); imbalance = max|I - mean| / |mean| within each group of parallel
    branches (the worst group); the total from the shunts and from the BMS (0x356) against the
    instrument's own reading (001, 004: equal cables, one module carrying more)."""
    outputs_off(ctx.bench)
    if ctx.bench.channels.actuator:
        connect_bank(ctx.bench)
    amps = ctx.params.get("load_current")
    if amps is not None:
        _sharing_phase(ctx, "", float(amps))
    charge = ctx.params.get("charge_current")
    if charge is not None:
        if amps is not None:
            ctx.bench.clock.wait(float(ctx.param("rest_s", 0.0)))
        _sharing_phase(ctx, "charge_", float(charge))
