"""First checks of a bank: identity, open-circuit voltages, configuration, current sharing.

Diagnoses come from the troubleshooting table of 004_580db881af34243e.txt (DOMAIN.md section 2).
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

from instruments.roles import InstrumentError, Waveform
from test_plans.checks import Measure, Param, StepContext, check
from test_plans.checks.diagnosis import diagnose, outlier, sharing_cause

DIAG_REDUCED_CAPACITY = ("module not accepted by the BMS (004: inverter reports reduced capacity) "
                         "-- check CAN/RS485 order, firmware, protocol")
DIAG_OFFLINE = ("BMS address, breaker or contactor issue (004: one module stays offline) "
                "-- check address setting, branch breaker, communication cable")
# a branch carrying less than this fraction of the mean is open, not just unequal
OPEN_BRANCH_FRACTION = 0.05
# a module reading less than this (V) reads nothing: an open BMS switch or lead, not a low charge
DEAD_VOLTS = 0.5
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


def contactor_is_closed(bench: Any, name: str) -> bool:
    return bool(bench.actuator.is_closed(bench.channels.contactor_channel(name)))


@contextmanager
def branches_opened(bench: Any, gap_s: float = 0.5, restore: bool = True) -> Iterator[list[str]]:
    """Every branch contactor that is closed is opened through the actuator role (load and
    supply first off); the block runs with the branches open; on leaving, the ones opened here
    are closed again, one every ``gap_s`` (``restore``), whatever happened. Yields the branches
    opened. A bank without branch contactors yields ``[]`` (nothing to open)."""
    outputs_off(bench)
    opened = []
    if bench.channels.actuator:
        for name in branch_contactors(bench):
            if contactor_is_closed(bench, name):
                bench.set_contactor(name, False)
                opened.append(name)
    try:
        yield opened
    finally:
        if restore:
            outputs_off(bench)
            for name in opened:
                bench.set_contactor(name, True)
                bench.clock.wait(gap_s)


def can_open_modules(bench: Any) -> bool:
    """Whether every module's terminals can be read open-circuit: the bank has branch contactors
    the actuator drives, or no module has a parallel peer (one module, or one string)."""
    if bench.channels.actuator and branch_contactors(bench):
        return True
    positions = [_POSITION.match(m) for m in bench.channels.module_voltage_channels()]
    series = [int(m.group(1)) for m in positions if m]
    return len(series) == len(set(series))


def modules_of(branch: str, modules: Sequence[str]) -> list[str]:
    """The modules a branch carries: itself (``sXpY``, a bank of parallel groups) or, for a
    string ``pY``, every ``s*pY`` in series order."""
    if _POSITION.match(branch):
        return [branch]
    p = branch[1:]
    return sorted((m for m in modules if (hit := _POSITION.match(m)) and hit.group(2) == p), key=_natural)


def branch_values(values: Mapping[str, float], branches: Sequence[str]) -> dict[str, float]:
    """Per-module figures as per-branch ones: a module branch its module's; a string the sum
    (voltages, resistances in series) of its modules' -- a branch with a module unread is left
    out."""
    out = {}
    for branch in branches:
        members = modules_of(branch, list(values))
        if members and all(m in values for m in members):
            out[branch] = sum(float(values[m]) for m in members)
    return out


def module_resistances(bench: Any) -> dict[str, float]:
    """AC-IR (ohm) of the modules the station's AC-IR meter reaches (its leads: the channel map's
    ``acir_module``), read while the branches are open; ``{}`` without an ``acir`` role. A
    station whose meter reaches one module gives one reading: module-to-module evidence needs at
    least two."""
    if "acir" not in bench.instruments or not bench.channels.acir_module:
        return {}
    ohm, _ = bench.acir.measure()
    return {bench.channels.acir_module: float(ohm)}


def module_bms_reports(bench: Any) -> Any:
    """Per-module SOC/SoH from the BMS (SunSpec 805) by position, None without SunSpec."""
    from test_plans.checks.parallel import module_reports  # parallel.py imports this module

    return module_reports(bench)


def bms_module_evidence(module: str, reports: Any, soc: bool = True) -> str:
    """What the BMS says of one module against its peers (SOC, SoH), for a diagnosis's evidence."""
    if not reports or module not in reports:
        return ""
    parts = []
    for label, attr, wanted in (("SOC", "soc_pct", soc), ("SoH", "soh_pct", True)):
        own = getattr(reports[module], attr)
        peers = [getattr(r, attr) for m, r in reports.items() if m != module and getattr(r, attr) is not None]
        if not wanted or own is None or (isinstance(own, float) and math.isnan(own)):
            continue
        if peers:
            mean = sum(peers) / len(peers)
            if label == "SoH" and abs(own - mean) < 0.5:
                continue
            parts.append(f"BMS {label} {own:.1f} % against {mean:.1f} %")
        else:
            parts.append(f"BMS {label} {own:.1f} %")
    return "; ".join(parts)


def has_parallel_peer(module: str, modules: Sequence[str]) -> bool:
    """A module with another at its series position (a parallel group) -- else it sits in a string."""
    hit = _POSITION.match(module)
    if hit is None:
        return False
    return any((other := _POSITION.match(m)) and other.group(1) == hit.group(1) and m != module for m in modules)


def ocv_diagnosis(module: str, volts: Mapping[str, float], reports: Any = None) -> str:
    """One module's open-circuit voltage against the others': negative is a reversed lead,
    (almost) nothing an open BMS switch or lead (004: one module stays offline); otherwise a
    charge difference -- between parallel peers 004's "modules exchange current at rest"
    (voltage or SOC mismatch), in a string 001's series mismatch. The BMS's SOC/SoH of the
    module are the evidence."""
    value = float(volts[module])
    peers = [float(v) for m, v in volts.items() if m != module]
    evidence = f"open-circuit {value:.3f} V"
    if peers:
        mean = sum(peers) / len(peers)
        evidence += f" against {mean:.3f} V for the others ({(value - mean) * 1e3:+.0f} mV)"
    health = bms_module_evidence(module, reports)
    if health:
        evidence += f"; {health}"
    if value < -DEAD_VOLTS:
        return diagnose("reversed_polarity", module, evidence + " (negative)")
    if abs(value) <= DEAD_VOLTS:
        return diagnose("module_offline", module, evidence + ": its terminals read nothing (BMS switch or lead open)")
    if len(volts) > 1 and not has_parallel_peer(module, list(volts)):
        return diagnose("series_mismatch", module, evidence)
    return diagnose("soc_mismatch", module, evidence)


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


def sharing_diagnosis(currents: dict[str, float], bench: Any, ocv: Mapping[str, float] | None = None,
                      resistance: Mapping[str, float] | None = None, discharging: bool = True,
                      module_ocv: Mapping[str, float] | None = None,
                      module_resistance: Mapping[str, float] | None = None) -> str:
    """The row for an unequal split, chosen from what was measured and naming the branch
    (troubleshooting.yaml, test_plans/checks/diagnosis.py), in the group of parallel branches
    whose split is worst:

    - a branch carrying (almost) nothing is open: with a BMS alarm its module's BMS switch
      (004: one module stays offline), without one its fuse, breaker or contactor (004: branch
      fuse trips);
    - otherwise :func:`sharing_cause` on the branches' current magnitudes with the evidence the
      check took before loading -- each branch's open-circuit voltage (``ocv``, branches open)
      and its module resistance (``resistance``, AC-IR): a voltage that explains the current is
      a SOC mismatch, a resistance that explains it a weak module, neither the path (004: one
      module current much higher -> unequal cable resistance).

    Two branches (two strings) are each as far from their mean as the other: the one named is
    the string whose own modules disagree (``module_ocv``, ``module_resistance``: a module unlike
    its string-mates), compared with the other string by the same rules (:func:`_pair_cause`)."""
    groups = series_groups(list(currents))
    members = max(groups.values(), key=lambda b: _imbalance_or_zero({k: currents[k] for k in b}))
    magnitude = {b: abs(float(currents[b])) for b in members}
    mean = sum(magnitude.values()) / len(magnitude)
    alarms = bms_alarm_note(bench)
    low = min(magnitude, key=lambda b: (magnitude[b], _natural(b)))
    if mean and magnitude[low] < OPEN_BRANCH_FRACTION * mean:
        evidence = f"{low} carries {magnitude[low]:.1f} A against a mean of {mean:.1f} A"
        if alarms:
            return diagnose("module_offline", low, evidence + f"; its BMS switch is open{alarms}")
        return diagnose("fuse_trips", low, evidence + "; no BMS alarm: its fuse, breaker or contactor is open")
    ocv_in = {b: v for b, v in (ocv or {}).items() if b in magnitude} or None
    r_in = {b: v for b, v in (resistance or {}).items() if b in magnitude} or None
    odd = _odd_string(list(magnitude), module_ocv or {}, module_resistance or {}) if len(magnitude) == 2 else None
    if odd is not None:
        row_id, subject, evidence = _pair_cause(magnitude, odd, ocv_in, discharging)
    else:
        row_id, subject, evidence = sharing_cause(magnitude, ocv=ocv_in, resistance=r_in, discharging=discharging)
    if ocv is None:
        evidence += " (open-circuit voltages not measured)"
    return diagnose(row_id, subject or None, evidence) + alarms


def _odd_string(branches: list[str], module_ocv: Mapping[str, float], module_r: Mapping[str, float],
                ocv_tolerance_v: float = 0.02, r_tolerance: float = 0.15) -> tuple[str, str, str] | None:
    """Of two strings, the one with a module unlike its string-mates -- where the other string's
    modules agree: ``(string, "ocv" | "resistance", what sets it apart)``; else None. A module's
    open-circuit voltage more than ``ocv_tolerance_v`` off its string-mates' mean, or its
    resistance more than ``r_tolerance`` (relative) off theirs."""
    def worst(branch: str, values: Mapping[str, float], relative: bool) -> tuple[float, str, float, float]:
        members = [m for m in modules_of(branch, list(values)) if m in values]
        best = (0.0, "", math.nan, math.nan)
        for m in members if len(members) > 1 else []:
            mates = sum(values[o] for o in members if o != m) / (len(members) - 1)
            off = abs(values[m] / mates - 1.0) if relative and mates else abs(values[m] - mates)
            if off > best[0]:
                best = (off, m, values[m], mates)
        return best

    for kind, values, tolerance, relative in (("ocv", module_ocv, ocv_tolerance_v, False),
                                              ("resistance", module_r, r_tolerance, True)):
        found = {b: worst(b, values, relative) for b in branches}
        odd = max(branches, key=lambda b: (found[b][0], _natural(b)))
        if found[odd][0] > tolerance and all(found[b][0] <= tolerance for b in branches if b != odd):
            _, module, own, mates = found[odd]
            text = (f"its module {module} at {own:.3f} V against {mates:.3f} V for its string-mates" if kind == "ocv"
                    else f"its module {module} at {own * 1e3:.2f} mOhm against {mates * 1e3:.2f} mOhm for its "
                         "string-mates")
            return odd, kind, text
    return None


def _pair_cause(magnitude: Mapping[str, float], odd: tuple[str, str, str], ocv: Mapping[str, float] | None,
                discharging: bool) -> tuple[str, str, str]:
    """:func:`sharing_cause`'s rules for two strings, naming the odd one (chosen by its modules,
    :func:`_odd_string`) against the other: its open-circuit voltage differing in the direction
    that explains its current -> soc_mismatch; a module of higher resistance where it carries
    less -> weak_module; else the path -> cable_resistance."""
    import inspect

    name, kind, why = odd
    ocv_tol = inspect.signature(sharing_cause).parameters["ocv_tolerance_v"].default
    other = next(b for b in magnitude if b != name)
    high = magnitude[name] > magnitude[other]
    share = f"{name} carries {magnitude[name]:.1f} A against {magnitude[other]:.1f} A in {other}"
    if kind == "ocv" and ocv and name in ocv and other in ocv:
        delta = ocv[name] - ocv[other]
        if abs(delta) > ocv_tol and (delta > 0) == (high == discharging):
            return "soc_mismatch", name, f"{share}; its open-circuit voltage is {delta * 1000:+.0f} mV from {other}'s, {why}"
    if kind == "resistance" and not high:
        return "weak_module", name, f"{share}; {why}"
    return "cable_resistance", name, f"{share} ({'the easiest' if high else 'the hardest'} path)"


def _imbalance_or_zero(currents: dict[str, float]) -> float:
    value = imbalance_pct(currents) if len(currents) > 1 else 0.0
    return 0.0 if math.isnan(value) else value


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
    """The BMS answers and reports the firmware the plan expects (000, 004: one firmware,
    confirmed before connecting). A version other than the plan's names the BMS with the
    version it reported (``firmware_release`` row)."""
    firmware = ctx.bench.bms.firmware()
    expected = ctx.limit("bms_firmware").equals
    ctx.measure("bms_firmware", firmware, "", ctx.limit("bms_firmware"),
                diagnosis=diagnose("firmware_release", "BMS", f"CAN 0x35F reports firmware {firmware}"
                                   + (f", the plan releases {expected}" if expected is not None else "")))


@check("module_ocv_match",
       params={"rest_s": Param("s", doc="with the branches open, before the reading"),
               "close_gap_s": Param("s", doc="between re-closing the branch contactors")},
       measures={"ocv_{module}": Measure("V", limit="module_ocv", required=True),
                 "ocv_spread": Measure("V", required=True, doc="highest minus lowest module"),
                 "branches_opened": Measure("", doc="branch contactors opened for the reading")})
def module_ocv_match(ctx: StepContext) -> None:
    """Every module's open-circuit voltage and their spread, measured open (000: "measure
    open-circuit voltage on every unit before closing the parallel bus", <= 0.1 V; 003: +-0.05 V).

    A closed bank forces one bus voltage on its parallel modules: a module 0.2 V low reads a
    few tens of mV low while current flows into it. So load and supply are switched off and
    every closed branch contactor is opened through the actuator role; after ``rest_s`` the
    scanner reads each module's terminals (``sXpY.+`` to ``sXpY.P-``, its own side of the branch
    contactor: no current, its open-circuit voltage); then the contactors opened are closed
    again, one every ``close_gap_s``, as they were found. ``ocv_spread`` is the highest minus the
    lowest module. A failed reading names the module farthest from the others with its voltage
    and its SOC/SoH from the BMS (SunSpec 805): a charge difference (004: modules exchange
    current at rest -> voltage or SOC mismatch; in a string 001's series mismatch), nothing on
    its terminals (004: one module stays offline) or a reversed lead. A bank of parallel
    modules without an actuator cannot be read open: the spread is an ERROR, not a guess."""
    bench = ctx.bench
    if not can_open_modules(bench):
        volts = bench.module_voltages()
        for module in sorted(volts, key=_natural):
            ctx.measure(f"ocv_{module}", volts[module], "V")
        ctx.measure("ocv_spread", None, "V", ctx.limit("ocv_spread"),
                    diagnosis="the branches cannot be opened (no actuator role): a closed bank's module "
                              "voltages are the bus voltage, not open-circuit voltages")
        return
    with branches_opened(bench, float(ctx.param("close_gap_s", 0.5))) as opened:
        bench.clock.wait(float(ctx.param("rest_s", 1.0)))
        volts = bench.module_voltages()
        reports = module_bms_reports(bench)
    ctx.measure("branches_opened", len(opened), "")
    for module in sorted(volts, key=_natural):
        ctx.measure(f"ocv_{module}", volts[module], "V", ctx.limit("module_ocv"),
                    diagnosis=ocv_diagnosis(module, volts, reports))
    spread = max(volts.values()) - min(volts.values())
    odd = outlier(volts)
    ctx.measure("ocv_spread", spread, "V", ctx.limit("ocv_spread"),
                diagnosis=ocv_diagnosis(odd.name, volts, reports) if odd is not None else None)
    modules = sorted(volts, key=_natural)
    ctx.measure.trace("module_ocv", "xy", {"module": modules, "ocv": [volts[m] for m in modules]},
                      units={"ocv": "V"}, marks={"mean": sum(volts.values()) / len(volts)},
                      title="Module open-circuit voltages, branches open")


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
    capacity_cause = _capacity_cause(ctx, status)
    ctx.measure("installed_capacity", status.installed_capacity_ah, "Ah",
                ctx.limit("installed_capacity"), diagnosis=capacity_cause)
    ctx.measure("online_capacity", status.online_capacity_ah, "Ah",
                ctx.limit("online_capacity"), diagnosis=capacity_cause)
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
    online = status.modules_online
    expected = dut.series * dut.parallel
    ctx.measure("bank_voltage_deviation", (volts - nominal_v) / nominal_v * 100.0, "%",
                ctx.limit("bank_voltage_deviation"),
                diagnosis=diagnose("module_offline", "bank", f"{volts:.2f} V against {nominal_v:.1f} V "
                                   f"nominal for {dut.series} in series; {online if online is not None else '?'} "
                                   f"of {expected} modules online"))
    installed = status.installed_capacity_ah
    if installed is not None:
        ctx.measure("capacity_deviation", (installed - nominal_ah) / nominal_ah * 100.0, "%",
                    ctx.limit("capacity_deviation"), diagnosis=capacity_cause)
        energy = nominal_v * installed / 1000.0
        ctx.measure("energy", energy, "kWh")
        ctx.measure("energy_deviation", (energy - nominal_kwh) / nominal_kwh * 100.0, "%",
                    ctx.limit("energy_deviation"), diagnosis=capacity_cause)
    if online is not None:
        ctx.measure("modules_missing", expected - online, "",
                    ctx.limit("modules_missing"),
                    diagnosis=diagnose("module_offline", "bank", f"{online} of {expected} modules online"))


def _capacity_cause(ctx: StepContext, status: Any) -> str:
    """Why the BMS reports less capacity than the DUT has, from what it reports: modules missing
    from the online set -> a module not accepted (004); every module online but one with a low
    SoH -> a weak module, named; else the capacity itself."""
    if ctx.dut is None:
        return diagnose("reduced_capacity", "bank")
    dut = ctx.dut.dut
    expected = dut.series * dut.parallel
    online = status.modules_online
    if online is not None and online < expected:
        return diagnose("reduced_capacity", "bank", f"{online} of {expected} modules online and accepted")
    try:
        from test_plans.checks.parallel import module_reports
        reports = module_reports(ctx.bench) or {}
    except Exception:  # noqa: BLE001 - no per-module data: the capacity alone is the evidence
        reports = {}
    soh = {pos: r.soh_pct for pos, r in reports.items() if r.soh_pct is not None}
    if len(soh) > 1:
        weakest = min(soh, key=soh.get)
        peers = [v for k, v in soh.items() if k != weakest]
        if soh[weakest] < sum(peers) / len(peers) - 2.0:
            return diagnose("weak_module", weakest, f"every module online; its SoH {soh[weakest]:.0f} % "
                            f"against {sum(peers) / len(peers):.0f} % for its peers")
    return diagnose("reduced_capacity", "bank", f"{online if online is not None else '?'} of {expected} "
                    f"modules online; installed {status.installed_capacity_ah} Ah")


def _sharing_phase(ctx: StepContext, phase: str, amps: float, evidence: "_Evidence") -> None:
    """One operating point: per-branch currents, imbalance per series group, the total against
    the instrument and the BMS. ``phase`` is ``""`` (load) or ``"charge_"`` (supply); the
    diagnosis is chosen with the evidence taken before loading."""
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
        loaded = bench.module_voltages() if evidence.ocv else {}
        total = bench.supply.measure_current() if charging else -bench.load.measure_current()
        bms_amps = bms_now(bench).telemetry().current_a if bench.bms is not None else None
        resistance = _module_resistance(evidence.ocv or {}, loaded, currents)
        per_module = _per_module_resistance(evidence.modules or {}, loaded, currents)
        for branch in sorted(resistance, key=_natural):
            ctx.measure(f"{phase}resistance_{branch}", resistance[branch], "ohm")
        if evidence.resistance and set(currents) <= set(evidence.resistance):  # the meter reached every branch
            resistance = dict(evidence.resistance)
        diagnosis = sharing_diagnosis(currents, bench, evidence.ocv, resistance, discharging=not charging,
                                      module_ocv=evidence.modules, module_resistance=per_module)
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


def _module_resistance(ocv: Mapping[str, float], loaded: Mapping[str, float],
                       currents: Mapping[str, float]) -> dict[str, float]:
    """Each branch's module resistance at the operating point (ohm): its open-circuit voltage
    (branches open, before loading) minus its terminal voltage now (``sXpY.+`` to ``sXpY.P-``:
    the module's own side, so its leads, lugs and the bus are not in it), over its current. A
    branch carrying (almost) nothing has none."""
    volts = branch_values(loaded, list(currents))
    out = {}
    for branch, amps in currents.items():
        if branch in ocv and branch in volts and abs(amps) > 1.0:
            out[branch] = abs(ocv[branch] - volts[branch]) / abs(amps)
    return out


def _per_module_resistance(ocv: Mapping[str, float], loaded: Mapping[str, float],
                           currents: Mapping[str, float]) -> dict[str, float]:
    """Each module's resistance at the operating point (ohm): its open-circuit minus its terminal
    voltage over its branch's current (every module of a string carries the string's)."""
    out = {}
    for branch, amps in currents.items():
        if abs(amps) <= 1.0:
            continue
        for module in modules_of(branch, list(loaded)):
            if module in ocv and module in loaded:
                out[module] = abs(ocv[module] - loaded[module]) / abs(amps)
    return out


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


class _Evidence:
    """What current sharing measures before it loads the bank, to choose a diagnosis with:
    each branch's open-circuit voltage (branches open) and module resistance (AC-IR)."""

    def __init__(self, ocv: dict[str, float] | None = None, resistance: dict[str, float] | None = None,
                 modules: dict[str, float] | None = None):
        self.ocv = ocv
        self.resistance = resistance
        self.modules = modules


def _open_circuit_evidence(ctx: StepContext) -> _Evidence:
    """With load and supply off, every branch contactor is opened; after ``ocv_rest_s`` each
    branch's open-circuit voltage (its module, or the sum of its string's modules) and the AC-IR
    of the modules the meter reaches are read. Recorded as ``ocv_{branch}`` / ``acir_{module}``.
    Nothing to open (no actuator, one branch) or ``ocv_rest_s: 0 s``: no evidence."""
    bench = ctx.bench
    rest = float(ctx.param("ocv_rest_s", 2.0))
    branches = branch_contactors(bench) if bench.channels.actuator else []
    if rest <= 0 or len(branches) < 2:
        return _Evidence()
    with branches_opened(bench, restore=False):
        bench.clock.wait(rest)
        volts = bench.module_voltages()
        acir = module_resistances(bench)
    ocv = branch_values(volts, branches)
    for branch in sorted(ocv, key=_natural):
        ctx.measure(f"ocv_{branch}", ocv[branch], "V")
    for module, ohm in sorted(acir.items()):
        ctx.measure(f"acir_{module}", ohm, "ohm")
    return _Evidence(ocv, branch_values(acir, branches), dict(volts))


@check("current_sharing",
       params={"load_current": Param("A", setpoint="load.current"),
               "charge_current": Param("A", setpoint="supply.current"),
               "charge_voltage": Param("V", setpoint="supply.voltage", doc="default: the BMS's charge voltage limit"),
               "settle_s": Param("s"),
               "rest_s": Param("s", doc="between the load and the charge point"),
               "ocv_rest_s": Param("s", doc="branches open before loading, for their open-circuit voltages "
                                           "(default 2 s; 0 s: not measured)")},
       # {phase} is "" (load) or "charge_"; the specific patterns come before current_{branch}
       measures={"imbalance": Measure("%", required=True),
                 "charge_imbalance": Measure("%"),
                 "{phase}shunt_total_error": Measure("A", limit="shunt_total_error"),
                 "{phase}bms_current_error": Measure("A", limit="bms_current_error"),
                 "{phase}bms_current": Measure("A"),
                 "{phase}bank_current": Measure("A", doc="the instrument's own reading"),
                 "{phase}current_{branch}": Measure("A", limit="{phase}branch_current"),
                 "ocv_{branch}": Measure("V", doc="open-circuit, branches open, before loading: evidence"),
                 "{phase}resistance_{branch}": Measure("ohm", doc="(open-circuit - terminal voltage) / current: evidence"),
                 "acir_{module}": Measure("ohm", doc="AC-IR with the branches open: evidence")})
def current_sharing(ctx: StepContext) -> None:
    """Per-branch currents from the shunts at a load (``load_current``) and, if the plan gives
    ``charge_current``, at a charge from the supply (CV ``charge_voltage``, default the BMS's
    charge voltage limit); imbalance = max|I - mean| / |mean| within each group of parallel
    branches (the worst group); the total from the shunts and from the BMS (0x356) against the
    instrument's own reading (001, 004: equal cables, one module carrying more).

    Before loading, the check takes its own evidence for a diagnosis: every branch contactor is
    opened and after ``ocv_rest_s`` each branch's open-circuit voltage is read (and the AC-IR of
    the modules the meter reaches); then the bank is connected. At each operating point the
    modules' terminal voltages give each branch's module resistance ((open-circuit - terminal
    voltage) / current; the AC-IR instead where the meter reaches every branch). A branch that
    carries less (or more) than its share is then named with the cause its evidence gives
    (004's table, see :func:`sharing_diagnosis`): its open-circuit voltage lower on discharge ->
    SOC mismatch; its module resistance higher -> weak module; neither -> the cable path."""
    outputs_off(ctx.bench)
    evidence = _open_circuit_evidence(ctx)
    if ctx.bench.channels.actuator:
        connect_bank(ctx.bench)
    amps = ctx.params.get("load_current")
    if amps is not None:
        _sharing_phase(ctx, "", float(amps), evidence)
    charge = ctx.params.get("charge_current")
    if charge is not None:
        if amps is not None:
            ctx.bench.clock.wait(float(ctx.param("rest_s", 0.0)))
        _sharing_phase(ctx, "charge_", float(charge), evidence)
