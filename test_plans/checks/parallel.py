"""Checks of parallel banks: what 000, 001, 002, 003 and 004 ask before, while and after
modules are put in parallel -- the bank's configuration, matching before the parallel bus is
closed, the inrush when a module joins, current sharing and circulating current, SOC drift over
cycles, and 004's commissioning of a parallel bank (bank at rest, polarity, branch protection,
contactor proof, main disconnect, the bank as built).

Every check drives the bench through roles only (``bench.load``, ``bench.supply``,
``bench.set_contactor``, ``bench.branch_currents()``, ``bench.dmm(...)``, the BMS clients),
waits only on ``bench.clock``, takes every limit from the plan step, and gives each failed
measurement a diagnosis: a row of the troubleshooting tables (test_plans/checks/troubleshooting.yaml:
004 first, then 000, 001, 003) chosen from what the check measured -- which module or branch
stands out, and whether its open-circuit voltage, SOC, SoH or AC-IR says why -- naming it
(:mod:`test_plans.checks.evidence`, :mod:`test_plans.checks.sharing`). Expected *values* of the
bank (its NsMp configuration, module model, chemistry, nameplate capacity, per-module current
limit, batch) come from the DUT file (``ctx.dut``); tolerances come from the plan.

Conventions the wiring gives (station channel map): a module's terminal voltage is read between
``sXpY.+`` and ``sXpY.P-`` (its own side of the branch contactor, so it is the module's
open-circuit voltage while the branch is open); a branch shunt reads + = charging. Per-module
SOC, SoH, voltage and serial come from the ``module_reports`` protocol (SunSpec 805 on a Modbus
bus); a check that needs them declares it, and a station without it is refused at validation.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from bankmodel.channels import input_text
from bankmodel.positions import modules_of_branch, natural_key
from instruments.roles import Waveform
from test_plans.checks import Measure, Param, StepContext, check
from test_plans.checks.admission import not_admitted
from test_plans.checks.bench_helpers import (ah_while, branch_contactors, branches_opened, connect_bank,
                                             contactor_closed, module_resistances, outputs_off)
from test_plans.checks.bms_helpers import (ModuleReport, bms_alarm_note, bms_read, bms_soc,
                                           module_reports, require_reports, silent_modules)
from test_plans.checks.branches import (branch_values, branch_voltages, finite, peer_mean, series_groups,
                                        spread, standout)
from test_plans.checks.diagnosis import diagnose
from test_plans.checks.evidence import (DEAD_VOLTS, OPEN_FRACTION, SOC_EVIDENCE_PCT, SOH_EVIDENCE_PCT,
                                        branch_health, module_health, names, spread_diagnosis,
                                        voltage_diagnosis)
from test_plans.checks.identity import COUNT_MEASURES, IDENTITY_MEASURES, measure_counts, measure_identity
from test_plans.checks.sharing import imbalance_pct, sharing_diagnosis
from test_plans.checks.traces import TraceRows, waveform_columns


# ================================================================== configuration
@check("configuration",
       params={"rest_s": Param("s")},
       measures={"bank_voltage": Measure("V", required=True),
                 "installed_capacity": Measure("Ah", needs="capacity_report"),
                 "online_capacity": Measure("Ah"),
                 "configuration": Measure("", doc="NsMp of the DUT"),
                 "nominal_voltage": Measure("V"),
                 "nominal_capacity": Measure("Ah"),
                 "nominal_energy": Measure("kWh"),
                 "bank_voltage_deviation": Measure("%"),
                 "capacity_deviation": Measure("%"),
                 "energy": Measure("kWh", doc="nominal voltage x installed capacity"),
                 "energy_deviation": Measure("%"),
                 "modules_missing": Measure("", doc="DUT modules minus modules the BMS reports online")},
       needs=("bms", "load"), uses=("module_reports", "supply"))
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
    if bench.provides("capacity_report"):  # CAN 0x379, an extension a strict pack does not send
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


# ================================================================== pre-parallel matching
def _isolation(ctx: StepContext, branches: list[str]) -> bool:
    """Every branch contactor open: a light load must find no branch to draw from. False if a
    branch carried it (its contactor did not open)."""
    amps = float(ctx.param("isolation_current", 0.0))
    if amps <= 0:
        return True
    bench = ctx.bench
    bench.load.set_current(amps)
    bench.load.input(True)
    try:
        bench.clock.wait(float(ctx.param("isolation_s", 1.0)))
        currents = bench.branch_currents()
        volts = bench.module_voltages()
    finally:
        bench.load.input(False)
    results = []
    for branch in branches:
        if branch not in currents:
            continue
        carried = abs(currents[branch])
        module_v = branch_voltages(volts, [branch]).get(branch, math.nan)
        results.append(ctx.measure(
            f"open_current_{branch}", carried, "A", ctx.limit("open_branch_current"),
            diagnosis=diagnose("contactor_weld", branch,
                               f"{carried:.2f} A through the branch with its contactor commanded open "
                               f"(light load {amps:g} A, module at {module_v:.3f} V)")))
    return not any(m.verdict in ("fail", "error") for m in results)


def _ocv(ctx: StepContext, reports: dict[str, "ModuleReport"] | None = None) -> dict[str, float]:
    volts = ctx.bench.module_voltages()
    held = tuple(not_admitted(ctx.bench))
    for module in sorted(volts, key=natural_key):
        ctx.measure(f"ocv_{module}", volts[module], "V", ctx.limit("module_ocv"),
                    diagnosis=voltage_diagnosis(module, volts[module], volts, reports, held))
    ctx.measure("ocv_spread", spread(volts), "V", ctx.limit("ocv_spread"),
                diagnosis=spread_diagnosis(volts, reports, "V"))
    return volts


def _acir(ctx: StepContext, reports: dict[str, "ModuleReport"] | None = None) -> None:
    bench = ctx.bench
    if "acir" not in bench.instruments:
        return
    ohm, _ = bench.acir.measure()
    module = bench.channels.acir_module or "module"
    reference = ctx.params.get("acir_reference")
    evidence = f"AC-IR {ohm * 1e3:.2f} mOhm" + (f" against the reference {float(reference) * 1e3:.2f} mOhm"
                                                 if reference is not None else "")
    row, health = module_health(module, reports)
    diagnosis = diagnose("weak_module" if row == "weak_module" else "ir_mismatch", module,
                         evidence + (f"; {health}" if health else ""))
    ctx.measure(f"acir_{module}", ohm, "ohm", ctx.limit("acir"), diagnosis=diagnosis)
    if reference is not None:
        ctx.measure("acir_delta", abs(ohm - float(reference)), "ohm", ctx.limit("acir_delta"),
                    diagnosis=diagnosis)


def _soc(ctx: StepContext, reports: dict[str, "ModuleReport"] | None) -> None:
    if not require_reports(ctx, reports, "soc_spread"):
        return
    assert reports is not None
    socs = {m: r.soc_pct for m, r in reports.items()}
    for module, value in socs.items():
        ctx.measure(f"soc_{module}", value, "%")
    missing = [m for m, v in socs.items() if v is None]
    if missing:
        ctx.measure("soc_spread", math.nan, "%", ctx.limit("soc_spread"),
                    diagnosis=diagnose("module_offline", names(missing), "no SOC from the BMS for it"))
        return
    ctx.measure("soc_spread", spread(socs), "%", ctx.limit("soc_spread"),  # type: ignore[arg-type]
                diagnosis=spread_diagnosis(socs, reports, "%"))  # type: ignore[arg-type]


# what the helpers above read and record, merged into the declaration of each check calling them
ISOLATION_PARAMS: dict[str, Param] = {
    "isolation_current": Param("A", setpoint="load.current", doc="light load no open branch may carry"),
    "isolation_s": Param("s"),
}
ISOLATION_MEASURES: dict[str, Measure] = {
    "open_current_{branch}": Measure("A", limit="open_branch_current"),
}
OCV_MEASURES: dict[str, Measure] = {
    "ocv_{module}": Measure("V", limit="module_ocv", required=True),
    "ocv_spread": Measure("V", required=True, doc="worst per series position"),
}
ACIR_MEASURES: dict[str, Measure] = {
    "acir_{module}": Measure("ohm", limit="acir"),
    "acir_delta": Measure("ohm", doc="against acir_reference"),
}
SOC_MEASURES: dict[str, Measure] = {
    "soc_{module}": Measure("%"),
    "soc_spread": Measure("%", required=True, doc="worst per series position"),
}


@check("pre_parallel_match",
       params={"rest_s": Param("s"),
               **ISOLATION_PARAMS,
               "acir_reference": Param("ohm", doc="AC-IR the meter's module is compared with"),
               "close_gap_s": Param("s", doc="between re-closing contactors")},
       measures={**ISOLATION_MEASURES, **OCV_MEASURES, **ACIR_MEASURES, **SOC_MEASURES,
                 **IDENTITY_MEASURES, **COUNT_MEASURES},
       needs=("actuator", "bms", "module_reports", "scanner"), uses=("acir", "load", "supply"))
def pre_parallel_match(ctx: StepContext) -> None:
    """Before the parallel bus is closed (000, 001, 002, 003, 004).

    Every branch contactor is opened; with a light load (``isolation_current``) no branch may
    carry current (a welded contactor would). After ``rest_s`` each module's OCV (scanner) and
    their spread per series position (000: <= 0.1 V; 003: <= 0.05 V), the AC-IR of the module
    the meter is wired to (003: within 3 mohm of ``acir_reference``), the per-module SOC spread
    (002: within 5 %), identity against the DUT (model, chemistry, firmware, batch, SoH spread:
    000, 001, 004) and the parallel/series counts against the BMS limits (001, 003, 004).
    Contactors are restored to how they were found.
    """
    bench = ctx.bench
    outputs_off(bench)
    branches = branch_contactors(bench)
    was_closed = {b: contactor_closed(bench, b) for b in branches}
    for branch in branches:
        bench.set_contactor(branch, False)
    try:
        bench.clock.wait(float(ctx.param("rest_s", 30.0)))
        _isolation(ctx, branches)
        reports = module_reports(bench)
        _ocv(ctx, reports)
        _acir(ctx, reports)
        _soc(ctx, reports)
        measure_identity(ctx, reports)
        measure_counts(ctx, reports)
    finally:
        outputs_off(bench)
        for branch in branches:
            if was_closed[branch]:
                bench.set_contactor(branch, True)
                bench.clock.wait(float(ctx.param("close_gap_s", 0.5)))


@check("soc_alignment",
       params={"rest_s": Param("s")},
       measures={**SOC_MEASURES,
                 "ocv_spread": Measure("V", required=True)},
       needs=("module_reports", "scanner"), uses=("load", "supply"))
def soc_alignment(ctx: StepContext) -> None:
    """004 commissioning step 2 (002: SOC within 5 % before parallel connection): per-module SOC
    spread from the BMS and, at rest, the module voltage spread."""
    outputs_off(ctx.bench)
    ctx.bench.clock.wait(float(ctx.param("rest_s", 0.0)))
    reports = module_reports(ctx.bench)
    _soc(ctx, reports)
    volts = ctx.bench.module_voltages()
    ctx.measure("ocv_spread", spread(volts), "V", ctx.limit("ocv_spread"),
                diagnosis=spread_diagnosis(volts, reports, "V"))


# ================================================================== parallel inrush
def inrush_figures(amps: list[float], interval_s: float, threshold_a: float) -> tuple[float, float, float, bool]:
    """(peak |I| A, I^2 t A^2 s, settle time s from the first sample, settled within the capture)."""
    if not amps:
        return math.nan, math.nan, math.nan, False
    peak = max(abs(a) for a in amps)
    i2t = sum(a * a for a in amps) * interval_s
    above = [k for k, a in enumerate(amps) if abs(a) > threshold_a]
    if not above:
        return peak, i2t, 0.0, True
    last = above[-1]
    if last == len(amps) - 1:
        return peak, i2t, len(amps) * interval_s, False
    return peak, i2t, (last + 1) * interval_s, True


@check("parallel_inrush",
       params={"dmm": Param(kind="text", doc="digitiser on a branch shunt (channel map)", instrument="digitiser",
                            default="dmm_shunt"),
               "rest_s": Param("s"),
               **ISOLATION_PARAMS,
               "close_on_mismatch": Param(kind="flag", doc="close even if delta_v fails"),
               "interval": Param("s", doc="digitiser sample interval"),
               "samples": Param(kind="count"),
               "settle_threshold": Param("A")},
       measures={**ISOLATION_MEASURES,
                 "branch_voltage_{branch}": Measure("V"),
                 "bus_voltage": Measure("V"),
                 "delta_v": Measure("V", required=True),
                 "contactor_closed": Measure(""),
                 "peak_current": Measure("A", required=True),
                 "inrush_i2t": Measure("A2s", required=True),
                 "settle_time": Measure("s", required=True)},
       needs=("actuator", "digitiser", "scanner"), uses=("load", "module_reports", "supply"))
def parallel_inrush(ctx: StepContext) -> None:
    """The equalising surge when a module joins the bank (000, 001: it can weld contactors and
    trip BMSs; DOMAIN.md: 0.1 V alone gives ~10-15 A).

    The branch the digitiser's shunt is on (``dmm``, default ``dmm_shunt``; shunt resistance
    from the channel map) is opened and left ``rest_s``; the pre-check ΔV is that branch's
    open-circuit voltage minus the mean of its parallel peers (the bus). If ΔV is outside the
    plan's ``delta_v`` limit the contactor stays open (the check fails, nothing is surged)
    unless ``close_on_mismatch`` is true. Then the digitiser is armed (``interval``,
    ``samples``), the contactor closed, and the waveform gives the peak current, I²t (A²s) and
    the time from closing until the current stays below ``settle_threshold``. The waveform (A)
    is kept in ``ctx.extras["waveforms"]``.
    """
    bench = ctx.bench
    dmm_name = str(ctx.param("dmm", "dmm_shunt"))
    wired = bench.channels.dmm.get(dmm_name)
    if wired is None or wired.kind != "shunt":
        raise LookupError(f"{dmm_name} is not wired to a branch shunt in the channel map "
                          f"({input_text(wired) if wired is not None else 'absent'})")
    branch, shunt_ohm = wired.branch, wired.shunt_ohm
    outputs_off(bench)
    connect_bank(bench)
    bench.set_contactor(branch, False)
    bench.clock.wait(float(ctx.param("rest_s", 30.0)))
    if not _isolation(ctx, [branch]):
        bench.set_contactor(branch, True)
        return  # the branch never opened: there is no surge to capture
    volts = bench.module_voltages()
    peers = next(members for members in series_groups(branch_contactors(bench)).values() if branch in members)
    branch_v = branch_voltages(volts, peers)
    others = [b for b in peers if b != branch]
    bus = sum(branch_v[b] for b in others) / len(others) if others else math.nan
    delta = branch_v[branch] - bus
    ctx.measure(f"branch_voltage_{branch}", branch_v[branch], "V")
    ctx.measure("bus_voltage", bus, "V")
    reports = module_reports(bench)
    _, module, health = branch_health(branch, reports)
    evidence = (f"open-circuit {branch_v[branch]:.3f} V against the bus at {bus:.3f} V (ΔV {delta * 1e3:+.0f} mV)"
                + (f"; {module}: {health}" if health else ""))
    pre = ctx.measure("delta_v", abs(delta), "V", ctx.limit("delta_v"),
                      diagnosis=diagnose("startup_alarm", branch, evidence))
    if pre.verdict in ("fail", "error") and not ctx.params.get("close_on_mismatch", False):
        ctx.measure("contactor_closed", False, "", diagnosis="not closed onto a voltage mismatch")
        return
    interval = float(ctx.param("interval", 50e-6))
    count = int(ctx.param("samples", 2000))
    dmm = bench.dmm(dmm_name)
    dmm.arm_digitise(interval, count)
    t_close = bench.clock.now()
    bench.set_contactor(branch, True)
    bench.clock.wait(interval * count, resolution_s=interval)
    raw = dmm.fetch_waveform()
    amps = [v / shunt_ohm for v in raw.samples]
    wave = Waveform(raw.interval_s, amps, "A", t0_s=t_close)
    ctx.extras.setdefault("waveforms", {})[f"inrush_{branch}"] = wave
    threshold = float(ctx.param("settle_threshold", 5.0))
    peak, i2t, settle, settled = inrush_figures(amps, raw.interval_s, threshold)
    ctx.measure("contactor_closed", True, "")
    surge = (f"{peak:.0f} A peak, {i2t:.0f} A2s, closed at ΔV {delta * 1e3:+.0f} mV"
             + ("" if settled else f", still above {threshold:g} A at the end of the capture"))
    # the surge of closing onto a voltage difference (000: can weld contactors, trip BMS protection)
    surge_diagnosis = diagnose("startup_alarm", branch, surge)
    ctx.measure("peak_current", peak, "A", ctx.limit("peak_current"), diagnosis=surge_diagnosis)
    ctx.measure("inrush_i2t", i2t, "A2s", ctx.limit("inrush_i2t"), diagnosis=surge_diagnosis)
    ctx.measure("settle_time", settle, "s", ctx.limit("settle_time"), diagnosis=surge_diagnosis)
    ctx.measure.trace(f"inrush_{branch}", "inrush", waveform_columns(wave, "current"),
                      units={"t": "s", "current": "A"},
                      marks={"peak_limit": ctx.limit("peak_current").high, "settle_threshold": threshold,
                             "settle_limit_s": ctx.limit("settle_time").high},
                      title=f"Inrush: {branch} closed onto the bus at ΔV {delta:+.3g} V")


# ================================================================== current sharing
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
        bms_amps = bench.bms.telemetry().current_a if bench.bms is not None else None
        resistance = _module_resistance(evidence.ocv or {}, loaded, currents)
        per_module = _per_module_resistance(evidence.modules or {}, loaded, currents)
        for branch in sorted(resistance, key=natural_key):
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
    for branch, value in sorted(currents.items(), key=lambda kv: natural_key(kv[0])):
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
        for module in modules_of_branch(branch, list(loaded)):
            if module in ocv and module in loaded:
                out[module] = abs(ocv[module] - loaded[module]) / abs(amps)
    return out


def _trace_sharing(ctx: StepContext, side: str, amps: float, currents: dict[str, float],
                   tolerance_pct: float | None) -> None:
    """The branch currents of one operating point for the report: bars around their mean and
    the band the plan's imbalance limit allows, so the branch that carries more (or nothing)
    is seen at once. One mean over every branch: parallel groups of a series bank carry the
    same string current."""
    branches = sorted(currents, key=natural_key)
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
    for branch in sorted(ocv, key=natural_key):
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
                 "acir_{module}": Measure("ohm", doc="AC-IR with the branches open: evidence")},
       needs=("actuator", "scanner"), uses=("acir", "bms", "load", "module_reports", "supply"))
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


# ================================================================== circulating current
@check("circulating_current",
       params={"load_current": Param("A", setpoint="load.current"),
               "load_s": Param("s"),
               "rest_s": Param("s")},
       measures={"rest_current_{branch}": Measure("A"),
                 "circulating_current": Measure("A", required=True, doc="largest |branch current|"),
                 "rest_current_sum": Measure("A", required=True, doc="|sum| over the first group")},
       needs=("actuator", "scanner"), uses=("load", "module_reports", "supply"))
def circulating_current(ctx: StepContext) -> None:
    """Modules exchanging current at rest (004): after ``load_current`` for ``load_s`` (if given)
    the load is removed and after ``rest_s`` every branch current should be near zero."""
    bench = ctx.bench
    outputs_off(bench)
    connect_bank(bench)
    amps = ctx.params.get("load_current")
    if amps:
        bench.load.set_current(float(amps))
        bench.load.input(True)
        try:
            bench.clock.wait(float(ctx.param("load_s", 60.0)))
        finally:
            bench.load.input(False)
    bench.clock.wait(float(ctx.param("rest_s", 60.0)))
    currents = bench.branch_currents()
    for branch in sorted(currents, key=natural_key):
        ctx.measure(f"rest_current_{branch}", currents[branch], "A")
    branch = max(sorted(currents, key=natural_key), key=lambda b: abs(currents[b]))
    worst = abs(currents[branch])
    row, module, health = branch_health(branch, module_reports(bench))
    direction = "charged by its peers" if currents[branch] > 0 else "charging its peers"
    evidence = f"{currents[branch]:+.2f} A at rest ({direction})" + (f"; {module}: {health}" if health else "")
    ctx.measure("circulating_current", worst, "A", ctx.limit("circulating_current"),
                diagnosis=diagnose("weak_module" if row == "weak_module" else "soc_mismatch", branch, evidence))
    first = next(iter(series_groups(list(currents)).values()))
    total = sum(currents[b] for b in first)
    ctx.measure("rest_current_sum", abs(total), "A", ctx.limit("rest_current_sum"),
                diagnosis=diagnose("loads_not_off", ", ".join(first),
                                   f"the branches sum to {total:+.2f} A with the load and the supply off"))


# ================================================================== SOC drift
@check("soc_drift",
       params={"discharge_current": Param("A", setpoint="load.current"),
               "discharge_s": Param("s"),
               "charge_current": Param("A", setpoint="supply.current"),
               "charge_voltage": Param("V", setpoint="supply.voltage"),
               "charge_s": Param("s"),
               "rest_s": Param("s"),
               "cycles": Param(kind="count"),
               "sample_s": Param("s")},
       measures={"soc_spread_start": Measure("%", required=True),
                 "soc_spread_discharged_{cycle}": Measure("%"),
                 "soc_spread_cycle_{cycle}": Measure("%"),
                 "discharged_ah_{cycle}": Measure("Ah"),
                 "charged_ah_{cycle}": Measure("Ah"),
                 "bms_soc_{cycle}": Measure("%"),
                 "soc_spread_max": Measure("%", required=True),
                 "soc_spread_growth": Measure("%", doc="after the last cycle minus after the first"),
                 "bms_soc_error": Measure("%", required=True, doc="BMS SOC change vs coulomb count")},
       needs=("actuator", "bms", "module_reports"), uses=("load", "supply"))
def soc_drift(ctx: StepContext) -> None:
    """SOC drift over repeated charge/discharge cycles (004: "SOC drifts after each cycle ->
    initial SOC mismatch or weak module"; 002: SOC within 5 %).

    ``cycles`` times: discharge at ``discharge_current`` for ``discharge_s``, rest ``rest_s``,
    charge at ``charge_current`` (CV ``charge_voltage``) for ``charge_s``, rest. Per-module SOC
    (SunSpec 805) spread per series position before cycling (``soc_spread_start``), at the end
    of each discharge and after each rested charge (``soc_spread_max``: the worst;
    ``soc_spread_growth``: after the last cycle minus after the first). The BMS's SOC change
    over each half-cycle against the coulomb count of the load/supply readings over the DUT's
    nameplate capacity (``bms_soc_error``, points of SOC): a weak module makes the BMS SOC run
    faster than the nameplate says.
    """
    bench, dut = ctx.bench, ctx.dut
    reports = module_reports(bench)
    if not require_reports(ctx, reports, "soc_spread_max"):
        return
    outputs_off(bench)
    connect_bank(bench)
    nameplate_ah = dut.dut.parallel * dut.module_type.capacity_ah
    sample_s = float(ctx.param("sample_s", 60.0))
    rest_s = float(ctx.param("rest_s", 600.0))

    rows = TraceRows(bench.clock.now())

    snapshots: list[tuple[float, dict[str, float | None]]] = []  # (spread, per-module SOC)

    def soc_spread() -> float:
        now = module_reports(bench)
        assert now is not None
        rows.add(bench.clock.now(), **{f"soc_{m}": r.soc_pct for m, r in now.items()},
                 **{f"temp_{m}": r.temperature_c for m, r in now.items()})
        socs = {m: r.soc_pct for m, r in now.items()}
        value = math.nan if any(v is None for v in socs.values()) else spread(socs)  # type: ignore[arg-type]
        snapshots.append((value, socs))
        return value

    def bank_soc() -> float:
        value = bms_soc(bench)
        rows.add(bench.clock.now(), soc_bank=value)
        return value

    start = soc_spread()
    start_socs = snapshots[0][1]
    ctx.measure("soc_spread_start", start, "%", ctx.limit("soc_spread_start"),
                diagnosis=spread_diagnosis(start_socs, reports, "%"))  # type: ignore[arg-type]
    spreads, rested, errors = [start], [], []
    for cycle in range(1, int(ctx.param("cycles", 3)) + 1):
        soc0 = bank_soc()
        bench.load.set_current(float(ctx.param("discharge_current")))
        bench.load.input(True)
        try:
            ah_out = ah_while(bench, bench.load.measure_current, float(ctx.param("discharge_s")), sample_s)
            at_end = soc_spread()
        finally:
            bench.load.input(False)
        bench.clock.wait(rest_s)
        soc1 = bank_soc()
        errors.append(abs((soc0 - soc1) - ah_out / nameplate_ah * 100.0))
        bench.supply.set_voltage(float(ctx.param("charge_voltage", bms_read(bench, "limits").charge_voltage_v)))
        bench.supply.set_current(float(ctx.param("charge_current", ctx.param("discharge_current"))))
        bench.supply.output(True)
        try:
            ah_in = ah_while(bench, bench.supply.measure_current, float(ctx.param("charge_s")), sample_s)
        finally:
            bench.supply.output(False)
        bench.clock.wait(rest_s)
        soc2 = bank_soc()
        errors.append(abs((soc2 - soc1) - ah_in / nameplate_ah * 100.0))
        after = soc_spread()
        spreads += [at_end, after]
        rested.append(after)
        ctx.measure(f"soc_spread_discharged_{cycle}", at_end, "%")
        ctx.measure(f"soc_spread_cycle_{cycle}", after, "%")
        ctx.measure(f"discharged_ah_{cycle}", ah_out, "Ah")
        ctx.measure(f"charged_ah_{cycle}", ah_in, "Ah")
        ctx.measure(f"bms_soc_{cycle}", soc2, "%")
    end_reports = module_reports(bench)
    drift = _drift_diagnosis(snapshots, start_socs, end_reports)
    ctx.measure("soc_spread_max", max(spreads), "%", ctx.limit("soc_spread_max"), diagnosis=drift)
    ctx.measure("soc_spread_growth", rested[-1] - rested[0] if rested else 0.0, "%",
                ctx.limit("soc_spread_growth"), diagnosis=drift)
    worst_error = max(errors) if errors else 0.0
    soh = {m: r.soh_pct for m, r in (end_reports or {}).items()}
    weakest = min((m for m in soh if finite(soh[m])), key=lambda m: soh[m], default=None)  # type: ignore[arg-type,return-value]
    evidence = (f"the BMS's SOC moved {worst_error:.2f} points away from the coulomb count over "
                f"{nameplate_ah:g} Ah nameplate in a half cycle")
    if weakest is not None and peer_mean(soh, weakest) - float(soh[weakest]) > SOH_EVIDENCE_PCT:  # type: ignore[arg-type]
        error_diagnosis = diagnose("weak_module", weakest, f"{evidence}; SoH {soh[weakest]:.1f} % against "
                                   f"{peer_mean(soh, weakest):.1f} % for its peers (capacity missing)")
    else:
        error_diagnosis = diagnose("soc_drift", "BMS", evidence + "; every module's SoH alike")
    ctx.measure("bms_soc_error", worst_error, "%", ctx.limit("bms_soc_error"), diagnosis=error_diagnosis)
    _trace_modules(ctx, rows, "soc_drift", "Per-module SOC and temperature over the cycles (bank: BMS SOC)")


def _drift_diagnosis(snapshots: list[tuple[float, dict[str, float | None]]],
                     start_socs: dict[str, float | None],
                     reports: dict[str, ModuleReport] | None) -> str:
    """The module whose SOC strayed farthest at the worst moment of the cycling: an older (weak)
    module when its SoH is lower, a SOC mismatch when it already differed before cycling, else
    004's "SOC drifts after each cycle" naming it."""
    known = [(value, socs) for value, socs in snapshots if not math.isnan(value)]
    if not known:
        silent = [m for m, v in (snapshots[-1][1] if snapshots else {}).items() if v is None]
        return diagnose("module_offline", names(silent) or "bank", "no per-module SOC from the BMS")
    _, worst = max(known, key=lambda vs: vs[0])
    out = standout(worst)
    if out is None:
        return diagnose("soc_drift", "bank", "fewer than two modules report SOC")
    module, value, mean = out
    evidence = f"SOC {value:.1f} % against {mean:.1f} % for its peers at the widest point"
    before, before_mean = start_socs.get(module), peer_mean(start_socs, module)
    if finite(before) and not math.isnan(before_mean):
        evidence += f" ({before:.1f} % against {before_mean:.1f} % before cycling)"
    row, health = module_health(module, reports)
    if row == "weak_module":
        return diagnose("weak_module", module, f"{evidence}; {health}")
    if finite(before) and not math.isnan(before_mean) and abs(float(before) - before_mean) > SOC_EVIDENCE_PCT:  # type: ignore[arg-type]
        return diagnose("soc_mismatch", module, evidence)
    return diagnose("soc_drift", module, evidence + (f"; {health}" if health else ""))


def _trace_modules(ctx: StepContext, rows: TraceRows, name: str, title: str) -> None:
    """Per-module readings the check took (``soc_<pos>``, ``temp_<pos>``), for the report: SOC
    lines that fan out cycle after cycle are the drift 004 names."""
    columns = rows.columns()
    units = {"t": "s", **{c: "%" for c in columns if c.startswith("soc_")},
             **{c: "degC" for c in columns if c.startswith("temp_")}}
    ctx.measure.trace(name, "modules", columns, units=units, title=title)


# ================================================================== commissioning (004)
@check("bank_at_rest",
       params={"open_main": Param(kind="flag"),
               "rest_s": Param("s"),
               "isolation_current": Param("A", setpoint="load.current",
                                          doc="light load that must find no source behind the open main"),
               "isolation_s": Param("s")},
       measures={"load_on": Measure("", required=True),
                 "supply_on": Measure("", required=True),
                 "main_closed": Measure("", doc="the main contactor's coil drive"),
                 "main_open_current": Measure("A", doc="drawn through the main commanded open"),
                 "bank_current": Measure("A", required=True)},
       needs=("actuator", "bms"), uses=("load", "module_reports", "supply"))
def bank_at_rest(ctx: StepContext) -> None:
    """004 commissioning step 3: inverter, PV, charger and loads off before wiring. The load and
    the supply are switched off and must report off; with ``open_main`` the main disconnect is
    opened too (step 11 closes it once the BMS is normal) and, with ``isolation_current``, proved
    open: the load set to that light current for ``isolation_s`` must find no bank behind it
    (``main_open_current``: a welded main contactor feeds it; the coil drive being off proves
    nothing about the contacts). After ``rest_s`` the BMS must see (almost) no bank current."""
    bench = ctx.bench
    outputs_off(bench)
    open_main = bool(ctx.params.get("open_main", False))
    if open_main:
        bench.set_contactor("main", False)
    bench.clock.wait(float(ctx.param("rest_s", 2.0)))
    if "load" in bench.instruments:
        on = bench.load.is_on()
        ctx.measure("load_on", on, "", ctx.limit("load_on"),
                    diagnosis=diagnose("loads_not_off", "load", f"input reports {'on' if on else 'off'} after the off command"))
    if "supply" in bench.instruments:
        on = bench.supply.is_on()
        ctx.measure("supply_on", on, "", ctx.limit("supply_on"),
                    diagnosis=diagnose("loads_not_off", "supply", f"output reports {'on' if on else 'off'} after the off command"))
    if open_main:
        ctx.measure("main_closed", contactor_closed(bench, "main"), "", ctx.limit("main_closed"),
                    diagnosis=diagnose("contactor_weld", "main", "its coil drive is still on after the open command"))
        amps = float(ctx.param("isolation_current", 0.0))
        if amps > 0 and "load" in bench.instruments:
            bench.load.set_current(amps)
            bench.load.input(True)
            try:
                bench.clock.wait(float(ctx.param("isolation_s", 1.0)))
                drawn, volts = bench.load.measure_current(), bench.load.measure_voltage()
            finally:
                bench.load.input(False)
            ctx.measure("main_open_current", abs(drawn), "A", ctx.limit("main_open_current"),
                        diagnosis=diagnose("contactor_weld", "main",
                                           f"the load drew {abs(drawn):.2f} A at {volts:.2f} V through the main "
                                           f"contactor commanded open (set {amps:g} A)"))
    amps_now = bench.bms.telemetry().current_a
    ctx.measure("bank_current", abs(amps_now), "A", ctx.limit("bank_current"),
                diagnosis=diagnose("loads_not_off", "bank", f"the BMS reports {amps_now:+.2f} A with the load "
                                   "and the supply off"))


@check("polarity",
       params={"bank": Param(kind="flag", doc="also the bank voltage at the load terminals"),
               "open_branches": Param(kind="flag", doc="read each module with its branch open"),
               "rest_s": Param("s", doc="with the branches open, before the reading")},
       measures={"ocv_{module}": Measure("V", limit="module_ocv", required=True),
                 "reversed_modules": Measure("", required=True),
                 "bank_voltage": Measure("V")},
       needs=("actuator", "bms", "scanner"), uses=("load", "module_reports"))
def polarity(ctx: StepContext) -> None:
    """004 commissioning step 4: polarity of every module and of the bank. Each module's
    terminal voltage must lie in ``module_ocv`` (a reversed module reads negative, an open one
    nothing, a module far off its peers' voltage a voltage difference); the count of reversed
    modules and the bank voltage at the load terminals are measured too. With ``open_branches``
    every branch contactor is opened for the reading (after ``rest_s``): a module landed on the
    bus reads the bus, not itself (004: verify polarity before landing a cable). They are closed
    again only if every module read inside its window -- a module outside it is not put back
    onto the bus."""
    bench = ctx.bench
    branches = branch_contactors(bench) if ctx.params.get("open_branches", False) else []
    was_closed = {b: contactor_closed(bench, b) for b in branches}
    for branch in branches:
        bench.set_contactor(branch, False)
    if branches:
        bench.clock.wait(float(ctx.param("rest_s", 5.0)))
    volts = bench.module_voltages()
    reports = module_reports(bench)
    held = tuple(not_admitted(bench))
    results = [ctx.measure(f"ocv_{module}", volts[module], "V", ctx.limit("module_ocv"),
                           diagnosis=voltage_diagnosis(module, volts[module], volts, reports, held))
               for module in sorted(volts, key=natural_key)]
    if not any(m.verdict in ("fail", "error") for m in results):
        for branch in branches:
            if was_closed[branch]:
                bench.set_contactor(branch, True)
                bench.clock.wait(0.5)
    reversed_ = [m for m, v in volts.items() if v < 0]
    ctx.measure("reversed_modules", len(reversed_), "", ctx.limit("reversed_modules"),
                diagnosis=diagnose("reversed_polarity", names(reversed_) or "bank",
                                   ", ".join(f"{m} {volts[m]:.2f} V" for m in reversed_) or "none negative"))
    if "load" in bench.instruments and ctx.params.get("bank", True):
        bank_v = bench.load.measure_voltage()
        if bank_v < -DEAD_VOLTS:
            bank_diagnosis = diagnose("reversed_polarity", "bank", f"{bank_v:.2f} V at the load terminals")
        elif abs(bank_v) <= DEAD_VOLTS:
            bank_diagnosis = diagnose("module_offline", "main", f"{bank_v:.2f} V at the load terminals: the main "
                                      "path (fuse, breaker, contactor) is open")
        else:
            bank_diagnosis = diagnose("startup_alarm", "bank", f"{bank_v:.2f} V at the load terminals")
        ctx.measure("bank_voltage", bank_v, "V", ctx.limit("bank_voltage"), diagnosis=bank_diagnosis)


@check("branch_protection",
       params={"load_current": Param("A", setpoint="load.current"),
               "settle_s": Param("s")},
       measures={"branch_fuse_rating": Measure("A"),
                 "main_fuse_rating": Measure("A"),
                 "branch_fuse_margin": Measure("A", required=True),
                 "main_fuse_margin": Measure("A", required=True),
                 "current_{branch}": Measure("A"),
                 "branch_min_share": Measure("%")},
       needs=("actuator", "scanner"), uses=("bms", "load", "module_reports", "supply"))
def branch_protection(ctx: StepContext) -> None:
    """004 commissioning step 5, 000/003/004 sizing: a fuse or breaker per module positive lead,
    sized for the module's current; shared hardware for the whole bank's.

    From the DUT's as-built protection: ``branch_fuse_margin`` = branch fuse - module discharge
    limit and ``main_fuse_margin`` = main fuse - parallel x module discharge limit (004: "never
    size shared hardware as if only one module can supply current"). Functionally, with
    ``load_current`` for ``settle_s`` every branch must carry its share: ``branch_min_share`` is
    the smallest branch current as % of its peers' mean (a blown fuse or open breaker carries
    none)."""
    bench, dut = ctx.bench, ctx.dut
    if dut is not None:
        limit_a = dut.module_type.bms.limits.discharge_current_a
        protection = dut.dut.protection
        ctx.measure("branch_fuse_rating", protection.branch_fuse_a, "A")
        ctx.measure("main_fuse_rating", protection.main_fuse_a, "A")
        ctx.measure("branch_fuse_margin", protection.branch_fuse_a - limit_a, "A",
                    ctx.limit("branch_fuse_margin"),
                    diagnosis=diagnose("fuse_trips", "branch fuses", f"{protection.branch_fuse_a:g} A fitted to "
                                       f"modules allowed {limit_a:g} A each"))
        ctx.measure("main_fuse_margin", protection.main_fuse_a - dut.dut.parallel * limit_a, "A",
                    ctx.limit("main_fuse_margin"),
                    diagnosis=diagnose("fuse_trips", "main fuse", f"{protection.main_fuse_a:g} A fitted to a bank "
                                       f"of {dut.dut.parallel} x {limit_a:g} A"))
    amps = ctx.params.get("load_current")
    if not amps:
        return
    outputs_off(bench)
    connect_bank(bench)
    bench.load.set_current(float(amps))
    bench.load.input(True)
    try:
        bench.clock.wait(float(ctx.param("settle_s", 5.0)))
        currents = bench.branch_currents()
    finally:
        bench.load.input(False)
    shares = {b: (currents[b] / m * 100.0 if (m := peer_mean(currents, b)) else math.nan) for b in currents}
    low = min(sorted(shares, key=natural_key), key=lambda b: shares[b] if not math.isnan(shares[b]) else math.inf)
    for branch in sorted(currents, key=natural_key):
        ctx.measure(f"current_{branch}", currents[branch], "A")
    ctx.measure("branch_min_share", min(100.0, shares[low]), "%", ctx.limit("branch_min_share"),
                diagnosis=_low_branch_diagnosis(bench, low, currents))


def _low_branch_diagnosis(bench: Any, branch: str, currents: dict[str, float]) -> str:
    """A branch carrying less than its share: nothing at all is an open path -- its module
    silent or its BMS switched off (004: one module stays offline), else its fuse or breaker
    (004: branch fuse trips); some is a harder path (004: cable resistance) or its module."""
    mean = peer_mean(currents, branch)
    evidence = f"{currents[branch]:+.2f} A against {mean:+.2f} A for its peers"
    reports = module_reports(bench)
    row, module, health = branch_health(branch, reports)
    silent = [m for m in silent_modules(reports) if m in modules_of_branch(branch, list(reports or {}))]
    alarms = bms_alarm_note(bench)
    if mean and abs(currents[branch]) < OPEN_FRACTION * abs(mean):
        if silent:
            return diagnose("module_offline", branch, f"{evidence}; no BMS data from {names(silent)}{alarms}")
        return diagnose("fuse_trips", branch, f"{evidence}: the path is open with its module online{alarms}")
    if row is not None:
        return diagnose(row, module, f"{evidence}; {health}")
    return diagnose("cable_resistance", branch, evidence + " (the hardest path)")


@check("contactor_proof",
       params={"load_current": Param("A", setpoint="load.current", doc="light load the proof draws"),
               "settle_s": Param("s"),
               "rest_s": Param("s", doc="after each opening and closing, load off")},
       measures={"open_current_{branch}": Measure("A", limit="open_branch_current", required=True),
                 "open_sag_{branch}": Measure("V", limit="open_module_sag", required=True,
                                              doc="its module's terminal voltage below its rest value"),
                 "closed_share_{branch}": Measure("%", limit="closed_share", required=True,
                                                  doc="its current as % of its peers' mean, re-closed")},
       needs=("actuator", "scanner"), uses=("load", "supply"))
def contactor_proof(ctx: StepContext) -> None:
    """Every branch contactor opens and closes (004: one module stays offline -> breaker or
    contactor; 000: an equalising surge can weld contactors). The main disconnect closed, each
    branch in turn is commanded open and the bank loaded with ``load_current`` for
    ``settle_s``: the open branch must carry nothing (``open_current_<branch>``) and its module's
    terminal voltage must read open-circuit -- its value at rest before the load, not the loaded
    bus (``open_sag_<branch>``); then, load off, it is closed again and loaded: it must carry its
    share (``closed_share_<branch>``, % of its peers' mean). The coil drive being switched
    proves nothing about the contacts; only the current and voltage do."""
    bench = ctx.bench
    outputs_off(bench)
    connect_bank(bench)
    amps = float(ctx.param("load_current"))
    settle = float(ctx.param("settle_s", 5.0))
    rest = float(ctx.param("rest_s", 5.0))
    branches = branch_contactors(bench)

    def loaded() -> tuple[dict[str, float], dict[str, float]]:
        bench.load.set_current(amps)
        bench.load.input(True)
        try:
            bench.clock.wait(settle)
            return bench.branch_currents(), bench.module_voltages()
        finally:
            bench.load.input(False)
            bench.clock.wait(rest)

    for branch in branches:
        bench.clock.wait(rest)
        at_rest = branch_voltages(bench.module_voltages(), [branch])[branch]
        bench.set_contactor(branch, False)
        try:
            currents, volts = loaded()
        finally:
            bench.set_contactor(branch, True)
        carried = currents.get(branch, math.nan)
        sag = at_rest - branch_voltages(volts, [branch])[branch]
        peers = [b for b in currents if b != branch]
        proof = (f"{abs(carried):.2f} A through it and its module {sag * 1e3:+.0f} mV below rest with its "
                 f"contactor commanded open (load {amps:g} A; its peers carry "
                 f"{abs(peer_mean(currents, branch)):.1f} A each)") if peers else f"{abs(carried):.2f} A"
        ctx.measure(f"open_current_{branch}", abs(carried), "A", ctx.limit("open_branch_current"),
                    diagnosis=diagnose("contactor_weld", branch, proof))
        ctx.measure(f"open_sag_{branch}", sag, "V", ctx.limit("open_module_sag"),
                    diagnosis=diagnose("contactor_weld", branch, proof))
        currents, _ = loaded()
        mean = peer_mean(currents, branch)
        share = currents[branch] / mean * 100.0 if mean else math.nan
        ctx.measure(f"closed_share_{branch}", share, "%", ctx.limit("closed_share"),
                    diagnosis=diagnose("module_offline", branch,
                                       f"re-closed, it carries {currents[branch]:+.2f} A against {mean:+.2f} A "
                                       "for its peers: the contactor did not close (or its breaker is open)"))


@check("main_disconnect",
       params={"settle_s": Param("s")},
       measures={"bms_alarms": Measure("", required=True),
                 "capacity_not_counted": Measure("Ah", needs="capacity_report", required=True),
                 "charge_enable": Measure("", required=True),
                 "discharge_enable": Measure("", required=True),
                 "main_closed": Measure("", required=True),
                 "bank_voltage": Measure("V")},
       needs=("actuator", "bms"), uses=("load", "module_reports"))
def main_disconnect(ctx: StepContext) -> None:
    """004 commissioning step 11: close the main battery disconnect only after BMS status is
    normal -- no alarm, every module admitted (capacity counted = installed), charge and
    discharge enabled. If any of those fails the main contactor is left as it is; once closed,
    the bank's voltage must appear at the load terminals (the contacts made, not just the coil)."""
    bench = ctx.bench
    status = bms_read(bench, "status")
    alarms = sorted(status.alarms)
    installed, online = status.installed_capacity_ah, status.online_capacity_ah
    # no installed capacity reported (SunSpec has none): not measured, never a made-up zero
    shortfall = None if installed is None or online is None else float(installed) - float(online)
    held = not_admitted(bench)
    startup = diagnose("startup_alarm", "BMS", f"alarms: {', '.join(alarms) or 'none'}; charge "
                       f"{'enabled' if status.charge_enable else 'disabled'}, discharge "
                       f"{'enabled' if status.discharge_enable else 'disabled'}")
    normal = [
        ctx.measure("bms_alarms", len(alarms), "", ctx.limit("bms_alarms"), diagnosis=startup),
        ctx.measure("capacity_not_counted", shortfall, "Ah", ctx.limit("capacity_not_counted"),
                    diagnosis=diagnose("reduced_capacity", names(held) or "bank",
                                       f"{shortfall or 0:.0f} Ah of {float(installed or 0):.0f} Ah "
                                       "not counted" + (f"; {names(held)} not admitted" if held else ""))),
        ctx.measure("charge_enable", bool(status.charge_enable), "", ctx.limit("charge_enable"), diagnosis=startup),
        ctx.measure("discharge_enable", bool(status.discharge_enable), "", ctx.limit("discharge_enable"),
                    diagnosis=startup)]
    if any(m.verdict in ("fail", "error") for m in normal):
        ctx.measure("main_closed", contactor_closed(bench, "main"), "",
                    diagnosis="main disconnect not closed: BMS status not normal")
        return
    if not contactor_closed(bench, "main"):
        bench.set_contactor("main", True)
        bench.clock.wait(float(ctx.param("settle_s", 1.0)))
    ctx.measure("main_closed", contactor_closed(bench, "main"), "", ctx.limit("main_closed"),
                diagnosis=diagnose("module_offline", "main", "its coil drive did not close"))
    if "load" in bench.instruments:
        volts = bench.load.measure_voltage()
        ctx.measure("bank_voltage", volts, "V", ctx.limit("bank_voltage"),
                    diagnosis=diagnose("module_offline", "main", f"{volts:.2f} V at the load terminals with the "
                                       "main contactor commanded closed"))


# ================================================================== as built (000, 001, 003, 004)
@check("as_built_layout",
       params={"busbar_above": Param("A", doc="rated bank current above which busbars are needed")},
       measures={"lead_length_spread": Measure("m", required=True),
                 "lead_section_spread": Measure("mm2", required=True),
                 "diagonal_takeoff": Measure("", required=True),
                 "rated_bank_current": Measure("A"),
                 "bus_kind": Measure(""),
                 "busbar_where_needed": Measure("", required=True)},
       needs=())
def as_built_layout(ctx: StepContext) -> None:
    """004 commissioning steps 6-7, 000, 001, 003: the bank as built, from its record (the DUT
    file) -- equal-length, equal-gauge module leads (000: even 15 cm matters at 200 A+; figures
    in m and mm2, plain numbers), diagonal take-off (001, 003: positive at the first battery,
    negative at the last) and busbars where the bank's rated current (parallel x module limit)
    exceeds 200 A (000). Nothing is energised; the torque and lead lengths are verified under
    current later (terminal temperature, current sharing)."""
    dut = ctx.dut.dut
    ic = dut.interconnect
    lengths: dict[str, float] = {}
    sections: dict[str, float] = {}
    for p in range(1, dut.parallel + 1):
        for s in range(1, dut.series + 1):
            position = f"s{s}p{p}"
            override = ic.leads.get(position)
            lengths[position] = (override.length_m if override and override.length_m is not None
                                 else ic.lead.length_m)
            sections[position] = (override.cross_section_mm2 if override and override.cross_section_mm2 is not None
                                  else ic.lead.cross_section_mm2)

    def odd_one(values: dict[str, float], unit: str) -> str:
        out = standout(values)
        if out is None:
            return diagnose("cable_resistance", "bank", "one lead")
        module, value, mean = out
        easier = "easier" if (value < mean) == (unit == "m") else "harder"
        return diagnose("cable_resistance", module, f"its leads {value:g} {unit} against {mean:g} {unit} for "
                        f"the others (the {easier} path)")

    ctx.measure("lead_length_spread", max(lengths.values()) - min(lengths.values()), "m",
                ctx.limit("lead_length_spread"), diagnosis=odd_one(lengths, "m"))
    ctx.measure("lead_section_spread", max(sections.values()) - min(sections.values()), "mm2",
                ctx.limit("lead_section_spread"), diagnosis=odd_one(sections, "mm2"))
    first, last = "s1p1", f"s1p{dut.parallel}"
    ctx.measure("diagonal_takeoff", dut.takeoff == "diagonal", "", ctx.limit("diagonal_takeoff"),
                diagnosis=diagnose("cable_resistance", first,
                                   f"{dut.takeoff.replace('_', '-')} take-off: positive and negative both at "
                                   f"{first}, the nearest module has the easiest path (003: positive at the "
                                   f"first battery, negative at the last, {last})"))
    rated = dut.parallel * ctx.dut.module_type.bms.limits.discharge_current_a
    above = float(ctx.param("busbar_above", 200.0))
    ctx.measure("rated_bank_current", rated, "A")
    ctx.measure("bus_kind", ic.bus.kind, "")
    ctx.measure("busbar_where_needed", ic.bus.kind == "busbar" or rated <= above,
                "", ctx.limit("busbar_where_needed"),
                diagnosis=diagnose("busbar_undersized", "bus", f"{ic.bus.kind} bus for a bank rated {rated:g} A "
                                   f"(000: busbars above {above:g} A)"))
