"""Checks of parallel banks: what 000, 001, 002, 003 and 004 ask before, while and after
modules are put in parallel.

Every check drives the bench through roles only (``bench.load``, ``bench.supply``,
``bench.set_contactor``, ``bench.branch_currents()``, ``bench.dmm(...)``, the BMS clients),
waits only on ``bench.clock``, takes every limit from the plan step, and gives each failed
measurement a diagnosis: a row of the troubleshooting tables (test_plans/checks/troubleshooting.yaml:
004 first, then 000, 001, 003) chosen from what the check measured -- which module or branch
stands out, and whether its open-circuit voltage, SOC, SoH or AC-IR says why -- naming it
(:func:`test_plans.checks.diagnosis.diagnose`). Expected *values* of the bank (its NsMp configuration, module model, chemistry,
nameplate capacity, per-module current limit, batch) come from the DUT file (``ctx.dut``);
tolerances come from the plan.

Conventions the wiring gives (station channel map): a module's terminal voltage is read between
``sXpY.+`` and ``sXpY.P-`` (its own side of the branch contactor, so it is the module's
open-circuit voltage while the branch is open); a branch shunt reads + = charging; a
thermocouple point is a module body (``s1p2``), a terminal (``s1p2.+``) or a bus segment (any
point named ``...bus...``). Per-module SOC, SoH, voltage and serial come from SunSpec model 805
through ``bench.sunspec`` (the station's Modbus bus); a check that needs them and finds no
SunSpec client records an ``error`` rather than guessing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from instruments.roles import Waveform
from instruments.sunspec_bms import normalise_chemistry
from test_plans.checks import Measure, Param, StepContext, check
from test_plans.checks.basic import (TraceRows, _natural, bms_alarm_note, bms_now, bms_read,
                                     branch_contactors, connect_bank, outputs_off, series_groups,
                                     waveform_columns)
from test_plans.checks.diagnosis import diagnose

# ------------------------------------------------------------------ diagnoses
# Every failed measurement of this module is explained by a row of troubleshooting.yaml (004's
# tables first, then 000, 001, 003), CHOSEN from what the check measured and naming the module,
# branch, bus segment or terminal it points at (test_plans/checks/diagnosis.py). The thresholds
# below only choose between rows -- which module stands out, and in what -- they never judge:
# every limit comes from the plan.
SOH_EVIDENCE_PCT = 3.0    # SoH this many points below its peers' mean: an older (weak) module
SOC_EVIDENCE_PCT = 2.0    # SOC this many points from its peers' mean: a SOC mismatch
OPEN_FRACTION = 0.05      # a branch carrying less than this share of its peers' mean is open
DEAD_VOLTS = 0.5          # a module or bank reading below this (V) reads nothing: open, not low

# Kept for test_plans/checks/bms_comm.py, which quotes them (its owner moves it to diagnose());
# this module no longer uses them.
DIAG_STARTUP = ("voltage difference or communication fault (004: alarm during startup) "
                "-- check pre-connect voltage and BMS status")
DIAG_COUNTED = ("capacity or limits counted for a module that is not online and accepted (004: "
                "master reports combined limits only for modules online and accepted) "
                "-- check firmware, protocol")

# SunSpec model 802 ``Typ`` families (kept for readers of older runs; chemistry is compared as chemistry)
CHEMISTRY_TYPES = {"LFP": "LITHIUM_ION", "LIFEPO4": "LITHIUM_ION", "NMC": "LITHIUM_ION",
                   "LTO": "LITHIUM_ION", "LI-ION": "LITHIUM_ION", "PB": "LEAD_ACID",
                   "AGM": "LEAD_ACID", "LEAD_ACID": "LEAD_ACID"}
_POSITION = re.compile(r"^s(\d+)p(\d+)$")
_TERMINAL = re.compile(r"^(s\d+p\d+)\.[+-]$")


# ================================================================== bench helpers
def contactor_closed(bench: Any, name: str) -> bool:
    return bool(bench.actuator.is_closed(bench.channels.contactor_channel(name)))


def module_position(module: str) -> tuple[int, int]:
    match = _POSITION.match(module)
    if match is None:
        raise ValueError(f"'{module}' is not a module position like s1p2")
    return int(match.group(1)), int(match.group(2))


def modules_of_branch(branch: str, modules: list[str]) -> list[str]:
    """The modules a branch carries: itself (``sXpY``) or the string ``pY``'s ``s*pY``."""
    if _POSITION.match(branch):
        return [branch]
    p = int(branch[1:])
    return sorted((m for m in modules if module_position(m)[1] == p), key=_natural)


def by_series_position(values: dict[str, float]) -> dict[int, dict[str, float]]:
    """Per-module values grouped by series position (modules that sit in parallel)."""
    groups: dict[int, dict[str, float]] = {}
    for module, value in values.items():
        groups.setdefault(module_position(module)[0], {})[module] = value
    return dict(sorted(groups.items()))


def spread(values: dict[str, float]) -> float:
    """max - min, worst over the series positions (parallel modules only compare with each other)."""
    worst = 0.0
    for group in by_series_position(values).values():
        present = [v for v in group.values() if v is not None and not math.isnan(v)]
        if len(present) > 1:
            worst = max(worst, max(present) - min(present))
    return worst


@dataclass
class ModuleReport:
    """One module as its BMS reports it over SunSpec model 805 (None where unimplemented); the
    voltage is the sum of its cell voltages (1 mV each) where reported, else 805 V (0.1 V)."""

    position: str
    volts: float | None
    soc_pct: float | None
    soh_pct: float | None
    serial: str | None
    temperature_c: float | None


def module_reports(bench: Any) -> dict[str, ModuleReport] | None:
    """Model 805 of every module, by position (``s{ModIdx}p{StrIdx}``); None without SunSpec."""
    client = getattr(bench, "sunspec", None)
    if client is None:
        return None
    out: dict[str, ModuleReport] = {}
    for ref in client.refs(805):
        block = client.read_model(ref)
        s, p = block.value("ModIdx"), block.value("StrIdx")
        position = f"s{int(s)}p{int(p)}"

        def num(name: str) -> float | None:
            value = block.value(name)
            return None if value is None else float(value)

        cells = [c.value("CellV") for c in next(iter(block.groups.values()), [])]
        volts = sum(cells) if cells and all(v is not None for v in cells) else num("V")
        serial = block.value("SN")
        out[position] = ModuleReport(position, volts, num("SoC"), num("SoH"),
                                     None if serial is None else str(serial).strip("\0 "),
                                     num("CellTmpAvg"))
    return dict(sorted(out.items(), key=lambda kv: _natural(kv[0])))


def _require(ctx: StepContext, reports: dict[str, ModuleReport] | None, name: str) -> bool:
    """Record an error (not a guess) when a per-module figure needs SunSpec and there is none."""
    if reports is None:
        ctx.measure(name, None, "", ctx.limits.get(name) or _ERROR_LIMIT,
                    diagnosis="no per-module BMS data: the station has no SunSpec (Modbus) bus")
        return False
    return True


def _error_limit() -> Any:
    from harness.measure import Limits
    return Limits.at_most(0.0)


_ERROR_LIMIT = _error_limit()


def _ah_while(bench: Any, read_amps: Callable[[], float], seconds: float, sample_s: float) -> float:
    """Wait ``seconds`` of bench time, integrating an instrument's current reading (Ah): one
    reading in the middle of every ``sample_s`` (midpoint rule: exact for a constant current,
    second-order for a tapering one, and never a reading taken as the output switches)."""
    total, left = 0.0, seconds
    while left > 1e-9:
        chunk = min(sample_s, left)
        bench.clock.wait(chunk / 2)
        amps = read_amps()
        bench.clock.wait(chunk / 2)
        total += amps * chunk / 3600.0
        left -= chunk
    return total


def bms_soc(bench: Any) -> float:
    """The bank SOC the BMS reports: SunSpec 802 SoC (0.1 %) when the station has it, else the
    Bms role's (CAN 0x355 carries whole percent)."""
    return float(bms_now(bench).telemetry().soc_pct)


# ================================================================== evidence for a diagnosis
def _finite(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def peer_mean(values: Mapping[str, float | None], name: str) -> float:
    """Mean of the other values -- of the modules at the same series position when the names
    are module positions (parallel modules only compare with each other)."""
    position = _POSITION.match(name)
    same = [float(v) for k, v in values.items()
            if k != name and _finite(v)
            and (position is None or not _POSITION.match(k) or module_position(k)[0] == module_position(name)[0])]
    return sum(same) / len(same) if same else math.nan


def standout(values: Mapping[str, float | None]) -> tuple[str, float, float] | None:
    """(name, value, its peers' mean) of the value farthest from its peers' mean; None when
    fewer than two values are known."""
    best: tuple[str, float, float] | None = None
    for name in sorted(values, key=_natural):
        value = values[name]
        mean = peer_mean(values, name)
        if not _finite(value) or math.isnan(mean):
            continue
        if best is None or abs(float(value) - mean) > abs(best[1] - best[2]):  # type: ignore[arg-type]
            best = (name, float(value), mean)  # type: ignore[arg-type]
    return best


def module_health(module: str, reports: dict[str, "ModuleReport"] | None,
                  soc_evidence: bool = True) -> tuple[str | None, str]:
    """What the BMS says sets a module apart: ``("weak_module", ...)`` when its SoH is lower
    than its peers' (004: older module), else ``("soc_mismatch", ...)`` when its SOC differs
    (004: voltage or SOC mismatch), else ``(None, ...)``; with the figures as evidence."""
    if not reports or module not in reports:
        return None, ""
    soh = {m: r.soh_pct for m, r in reports.items()}
    soc = {m: r.soc_pct for m, r in reports.items()}
    row, parts = None, []
    own, mean = soh.get(module), peer_mean(soh, module)
    if _finite(own) and not math.isnan(mean):
        parts.append(f"SoH {own:.1f} % against {mean:.1f} % for its peers")
        if mean - float(own) > SOH_EVIDENCE_PCT:  # type: ignore[arg-type]
            row = "weak_module"
    own, mean = soc.get(module), peer_mean(soc, module)
    if _finite(own) and not math.isnan(mean):
        if soc_evidence:
            parts.append(f"SOC {own:.1f} % against {mean:.1f} %")
        if row is None and abs(float(own) - mean) > SOC_EVIDENCE_PCT:  # type: ignore[arg-type]
            row = "soc_mismatch"
    return row, "; ".join(parts)


def branch_health(branch: str, reports: dict[str, "ModuleReport"] | None) -> tuple[str | None, str, str]:
    """:func:`module_health` of the branch's modules: (row, the module it points at, evidence)."""
    modules = modules_of_branch(branch, list(reports)) if reports else []
    first = ("", "")
    for module in modules:
        row, evidence = module_health(module, reports)
        if row is not None:
            return row, module, evidence
        first = first if first[0] else (module, evidence)
    return None, first[0] or branch, first[1]


def silent_modules(reports: dict[str, "ModuleReport"] | None) -> list[str]:
    """Modules the master has no data from (their SunSpec 805 points unimplemented)."""
    return [m for m, r in (reports or {}).items() if r.volts is None]


def _names(items: list[str]) -> str:
    return ", ".join(sorted(items, key=_natural))


def _voltage_diagnosis(module: str, volts: float, all_volts: dict[str, float],
                       reports: dict[str, "ModuleReport"] | None, held: tuple[str, ...] = ()) -> str:
    """A module's terminal voltage outside its window: negative is a reversed lead; a module the
    master has not admitted (``held``: its BMS keeps its switch open, so its terminals read what
    leaks through) is held for its SOC difference when its SOC differs, else a module not
    accepted -- or, silent, one offline; (almost) nothing is an open lead or an open BMS switch;
    anything else is a voltage difference (a SOC mismatch when the BMS's SOC says so)."""
    mean = peer_mean(all_volts, module)
    evidence = f"{volts:.3f} V against {mean:.3f} V for its peers" if not math.isnan(mean) else f"{volts:.3f} V"
    if volts < -DEAD_VOLTS:
        return diagnose("reversed_polarity", module, evidence + " (negative)")
    if module in held:
        if module in silent_modules(reports):
            return diagnose("module_offline", module, evidence + "; the master has no data from it (its BMS "
                            "switch stays open)")
        row, health = module_health(module, reports)
        if row == "soc_mismatch":  # held pending because of its voltage difference (004)
            return diagnose("soc_mismatch", module, f"{evidence}; {health}; the master holds it pending "
                            "(its BMS switch stays open)")
        return diagnose("reduced_capacity", module, evidence + (f"; {health}" if health else "")
                        + "; the master has not admitted it with its SOC alike (its BMS switch stays open)")
    if abs(volts) <= DEAD_VOLTS:
        return diagnose("module_offline", module, evidence + ": its terminals read nothing (BMS switch or lead open)")
    row, health = module_health(module, reports)
    if row == "soc_mismatch":
        return diagnose("soc_mismatch", module, f"{evidence}; {health}")
    return diagnose("startup_alarm", module, evidence + (f"; {health}" if health else ""))


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
        module_v = _branch_voltages(volts, [branch]).get(branch, math.nan)
        results.append(ctx.measure(
            f"open_current_{branch}", carried, "A", ctx.limit("open_branch_current"),
            diagnosis=diagnose("contactor_weld", branch,
                               f"{carried:.2f} A through the branch with its contactor commanded open "
                               f"(light load {amps:g} A, module at {module_v:.3f} V)")))
    return not any(m.verdict in ("fail", "error") for m in results)


def _ocv(ctx: StepContext, reports: dict[str, "ModuleReport"] | None = None) -> dict[str, float]:
    volts = ctx.bench.module_voltages()
    held = tuple(_not_admitted(ctx.bench))
    for module in sorted(volts, key=_natural):
        ctx.measure(f"ocv_{module}", volts[module], "V", ctx.limit("module_ocv"),
                    diagnosis=_voltage_diagnosis(module, volts[module], volts, reports, held))
    ctx.measure("ocv_spread", spread(volts), "V", ctx.limit("ocv_spread"),
                diagnosis=_spread_diagnosis(volts, reports, "V"))
    return volts


def _spread_diagnosis(values: dict[str, float], reports: dict[str, "ModuleReport"] | None, unit: str) -> str:
    """The module farthest from its peers in open-circuit voltage or SOC: a SOC mismatch (004:
    modules exchange current at rest), or its older (weak) module when its SoH says so."""
    out = standout(values)
    if out is None:
        return diagnose("soc_mismatch", None, "fewer than two modules read")
    module, value, mean = out
    fmt = (lambda x: f"{x:.3f} V") if unit == "V" else (lambda x: f"{x:.1f} %")
    evidence = f"{fmt(value)} against {fmt(mean)} for its peers"
    row, health = module_health(module, reports, soc_evidence=unit == "V")
    if health:
        evidence += f"; {health}"
    return diagnose("weak_module" if row == "weak_module" and unit != "V" else "soc_mismatch", module, evidence)


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
    if not _require(ctx, reports, "soc_spread"):
        return
    assert reports is not None
    socs = {m: r.soc_pct for m, r in reports.items()}
    for module, value in socs.items():
        ctx.measure(f"soc_{module}", value, "%")
    missing = [m for m, v in socs.items() if v is None]
    if missing:
        ctx.measure("soc_spread", math.nan, "%", ctx.limit("soc_spread"),
                    diagnosis=diagnose("module_offline", _names(missing), "no SOC from the BMS for it"))
        return
    ctx.measure("soc_spread", spread(socs), "%", ctx.limit("soc_spread"),  # type: ignore[arg-type]
                diagnosis=_spread_diagnosis(socs, reports, "%"))  # type: ignore[arg-type]


def _identity(ctx: StepContext, reports: dict[str, "ModuleReport"] | None) -> None:
    """Model, chemistry and firmware from SunSpec model 1 / 802 against the DUT; batch from
    each module's serial (the DUT's ``serial_prefix`` + ``batch``); capacity and age from
    each module's SoH (model 805)."""
    bench, dut = ctx.bench, ctx.dut
    client = getattr(bench, "sunspec", None)
    if not _require(ctx, reports, "model_match") or client is None or dut is None:
        return
    assert reports is not None
    common = client.model(1)
    model, maker, firmware = common.value("Md"), common.value("Mn"), common.value("Vr")
    ctx.measure("reported_model", model, "")
    ctx.measure("reported_manufacturer", maker, "")
    ctx.measure("model_match", model == dut.module_type.model, "", ctx.limit("model_match"),
                diagnosis=diagnose("module_mix", "bank", f"the BMS reports model '{model}', "
                                   f"the bank is built of '{dut.module_type.model}'"))
    ctx.measure("firmware_match", firmware == dut.firmware.version, "", ctx.limit("firmware_match"),
                diagnosis=diagnose("firmware_mix", "master BMS", f"firmware '{firmware}' reported, "
                                   f"'{dut.firmware.version}' released for this bank"))
    # chemistry as chemistry: LFP, NMC and LTO are all "lithium-ion" to SunSpec's Typ, so the
    # battery's own chemistry word (model 1 Opt/Md, normalised by the client) is compared
    kind = client.chemistry() if hasattr(client, "chemistry") else client.model(802).symbol("Typ")
    ctx.measure("reported_type", kind, "")
    expected = normalise_chemistry(dut.module_type.chemistry) or dut.module_type.chemistry.upper()
    ctx.measure("chemistry_match", kind == expected, "", ctx.limit("chemistry_match"),
                diagnosis=diagnose("module_mix", "bank", f"the BMS reports chemistry {kind}, "
                                   f"the bank is built of {expected} modules"))
    prefix, batch = dut.dut.serial_prefix, dut.dut.batch
    foreign = []
    for module, report in reports.items():
        ctx.measure(f"serial_{module}", report.serial, "")
        serial = report.serial or ""
        rest = serial[len(prefix):] if serial.startswith(prefix) else None
        if rest is None or rest.rsplit("-", 1)[0] != batch:
            foreign.append(module)
    ctx.measure("batch_mismatches", len(foreign), "", ctx.limit("batch_mismatches"),
                diagnosis=diagnose("batch_mix", _names(foreign) or "bank",
                                   "serial " + ", ".join(f"{reports[m].serial}" for m in foreign)
                                   + f" not of batch {batch}" if foreign else f"every serial of batch {batch}"))
    soh = {m: r.soh_pct for m, r in reports.items()}
    for module, value in soh.items():
        ctx.measure(f"soh_{module}", value, "%")
    low = min((m for m in soh if _finite(soh[m])), key=lambda m: soh[m], default=None)  # type: ignore[arg-type,return-value]
    ctx.measure("soh_spread", spread(soh), "%", ctx.limit("soh_spread"),  # type: ignore[arg-type]
                diagnosis=diagnose("weak_module", low,
                                   f"SoH {soh[low]:.1f} % against {peer_mean(soh, low):.1f} % for its peers"
                                   if low is not None else "no SoH reported"))


def _counts(ctx: StepContext, reports: dict[str, "ModuleReport"] | None) -> None:
    """Parallel and series counts as the BMS sees them, against the plan's BMS limits and the DUT."""
    if not _require(ctx, reports, "parallel_count"):
        return
    assert reports is not None
    positions = [module_position(m) for m in reports]
    series = max(s for s, _ in positions)
    parallel = max(p for _, p in positions)
    seen = f"the BMS sees {series}S{parallel}P ({len(reports)} modules)"
    ctx.measure("parallel_count", parallel, "", ctx.limit("parallel_count"),
                diagnosis=diagnose("parallel_count_exceeded", "bank", f"{parallel} modules in parallel: {seen}"))
    ctx.measure("series_count", series, "", ctx.limit("series_count"),
                diagnosis=diagnose("parallel_count_exceeded", "bank", f"{series} modules in series: {seen}"))
    if ctx.dut is not None:
        dut = ctx.dut.dut
        expected = {f"s{s}p{p}" for s in range(1, dut.series + 1) for p in range(1, dut.parallel + 1)}
        missing = sorted(expected - set(reports), key=_natural)
        evidence = f"{seen}, the DUT is {dut.series}S{dut.parallel}P"
        diagnosis = (diagnose("module_offline", _names(missing), evidence) if missing else
                     diagnose("parallel_count_exceeded", "bank", evidence))
        ctx.measure("count_match", (series, parallel) == (dut.series, dut.parallel), "",
                    ctx.limit("count_match"), diagnosis=diagnosis)


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
IDENTITY_MEASURES: dict[str, Measure] = {
    "reported_model": Measure(""),
    "reported_manufacturer": Measure(""),
    "reported_type": Measure("", doc="SunSpec 802 Typ"),
    "model_match": Measure("", required=True),
    "firmware_match": Measure("", required=True),
    "chemistry_match": Measure("", required=True),
    "serial_{module}": Measure(""),
    "batch_mismatches": Measure("", required=True),
    "soh_{module}": Measure("%"),
    "soh_spread": Measure("%", required=True),
}
COUNT_MEASURES: dict[str, Measure] = {
    "parallel_count": Measure("", required=True),
    "series_count": Measure("", required=True),
    "count_match": Measure("", required=True, doc="BMS counts equal the DUT's NsMp"),
}


@check("pre_parallel_match",
       params={"rest_s": Param("s"),
               **ISOLATION_PARAMS,
               "acir_reference": Param("ohm", doc="AC-IR the meter's module is compared with"),
               "close_gap_s": Param("s", doc="between re-closing contactors")},
       measures={**ISOLATION_MEASURES, **OCV_MEASURES, **ACIR_MEASURES, **SOC_MEASURES,
                 **IDENTITY_MEASURES, **COUNT_MEASURES})
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
        _identity(ctx, reports)
        _counts(ctx, reports)
    finally:
        outputs_off(bench)
        for branch in branches:
            if was_closed[branch]:
                bench.set_contactor(branch, True)
                bench.clock.wait(float(ctx.param("close_gap_s", 0.5)))


@check("module_identity", measures={**IDENTITY_MEASURES, **COUNT_MEASURES})
def module_identity(ctx: StepContext) -> None:
    """004 commissioning step 1: each module's model, voltage class, chemistry and the allowed
    parallel count, from the BMS against the DUT (nothing is switched)."""
    reports = module_reports(ctx.bench)
    _identity(ctx, reports)
    _counts(ctx, reports)


@check("soc_alignment",
       params={"rest_s": Param("s")},
       measures={**SOC_MEASURES,
                 "ocv_spread": Measure("V", required=True)})
def soc_alignment(ctx: StepContext) -> None:
    """004 commissioning step 2 (002: SOC within 5 % before parallel connection): per-module SOC
    spread from the BMS and, at rest, the module voltage spread."""
    outputs_off(ctx.bench)
    ctx.bench.clock.wait(float(ctx.param("rest_s", 0.0)))
    reports = module_reports(ctx.bench)
    _soc(ctx, reports)
    volts = ctx.bench.module_voltages()
    ctx.measure("ocv_spread", spread(volts), "V", ctx.limit("ocv_spread"),
                diagnosis=_spread_diagnosis(volts, reports, "V"))


# ================================================================== parallel inrush
def _branch_voltages(volts: dict[str, float], branches: list[str]) -> dict[str, float]:
    modules = list(volts)
    return {b: sum(volts[m] for m in modules_of_branch(b, modules)) for b in branches}


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
       params={"dmm": Param(kind="text", doc="digitiser on a branch shunt (channel map)"),
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
                 "settle_time": Measure("s", required=True)})
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
    wired = bench.channels.dmm.get(dmm_name) or {}
    if wired.get("kind") != "shunt":
        raise LookupError(f"{dmm_name} is not wired to a branch shunt in the channel map ({wired or 'absent'})")
    branch, shunt_ohm = str(wired["branch"]), float(wired["shunt_ohm"])
    outputs_off(bench)
    connect_bank(bench)
    bench.set_contactor(branch, False)
    bench.clock.wait(float(ctx.param("rest_s", 30.0)))
    if not _isolation(ctx, [branch]):
        bench.set_contactor(branch, True)
        return  # the branch never opened: there is no surge to capture
    volts = bench.module_voltages()
    peers = next(members for members in series_groups(branch_contactors(bench)).values() if branch in members)
    branch_v = _branch_voltages(volts, peers)
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


# ================================================================== circulating current
@check("circulating_current",
       params={"load_current": Param("A", setpoint="load.current"),
               "load_s": Param("s"),
               "rest_s": Param("s")},
       measures={"rest_current_{branch}": Measure("A"),
                 "circulating_current": Measure("A", required=True, doc="largest |branch current|"),
                 "rest_current_sum": Measure("A", required=True, doc="|sum| over the first group")})
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
    for branch in sorted(currents, key=_natural):
        ctx.measure(f"rest_current_{branch}", currents[branch], "A")
    branch = max(sorted(currents, key=_natural), key=lambda b: abs(currents[b]))
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


# ================================================================== BMS sync gating
@dataclass
class _Gate:
    """What the BMS says about admission at one moment."""

    installed_ah: float
    online_ah: float
    modules_online: int
    modules_offline: int
    discharge_limit_a: float
    pending: list[str]            # modules the BMS has not admitted (their string not enabled)


def _gate_state(bench: Any, reports: dict[str, ModuleReport]) -> _Gate:
    status, limits = bench.sunspec.status(), bench.sunspec.limits()
    installed = bms_read(bench, "status").installed_capacity_ah  # CAN 0x379 (SunSpec has none): fixed
    client = bench.sunspec
    pending: list[str] = []
    for ref in client.refs(804):
        block = client.read_model(ref)
        if "STRING_ENABLED" in block.symbols("St"):
            continue
        p = int(block.value("Idx"))
        members = [m for m in reports if module_position(m)[1] == p]
        pending.extend(_most_off(members, reports))
    return _Gate(float(installed or 0.0), float(status.online_capacity_ah or 0.0),
                 int(status.modules_online or 0), int(status.modules_offline or 0),
                 float(limits.discharge_current_a), sorted(pending, key=_natural))


def _most_off(members: list[str], reports: dict[str, ModuleReport]) -> list[str]:
    """Of a string the BMS holds back, the module(s) whose voltage is furthest from their
    series-position peers (a 1-high string: the module itself)."""
    if len(members) <= 1:
        return members
    deltas = {m: abs(_delta_v(m, reports)) for m in members}
    return [max(deltas, key=lambda m: (deltas[m] if not math.isnan(deltas[m]) else -1))]


def _delta_v(module: str, reports: dict[str, ModuleReport], exclude: list[str] | None = None) -> float:
    """The module's BMS-reported voltage minus the mean of its series-position peers (not
    pending): what the master compares before admitting it."""
    s = module_position(module)[0]
    peers = [r.volts for m, r in reports.items()
             if m != module and module_position(m)[0] == s and m not in (exclude or []) and r.volts is not None]
    own = reports[module].volts
    if own is None or not peers:
        return math.nan
    return own - sum(peers) / len(peers)


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
                 "capacity_not_counted": Measure("Ah", required=True),
                 "discharge_limit": Measure("A"),
                 "discharge_limit_shortfall": Measure("A", required=True)})
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
    if not _require(ctx, reports, "modules_pending_end"):
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
        state = _gate_state(bench, reports)
        may_count = _countable(reports, state.pending)
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
                diagnosis=diagnose("module_offline", _names(list(offline_seen)) or "bank",
                                   f"the BMS reports {worst_offline} module(s) offline"
                                   + (f"; no data from {_names(list(offline_seen))}" if offline_seen else "")
                                   + bms_alarm_note(bench)))
    ctx.measure("modules_pending_start", len(state.pending), "")
    for module in state.pending:
        ctx.measure(f"pending_{module}_delta_v", _delta_v(module, reports, state.pending), "V")
    # nothing may count beyond the modules heard and admitted (the weakest series position)
    counted = diagnose("counted_not_accepted", _names(list(uncountable)) or "bank",
                       f"up to {overcounted:.1f} Ah and {over_limit:.1f} A counted beyond the modules "
                       f"heard and admitted" + (f" ({_names(list(uncountable))} silent or pending)"
                                                if uncountable else ""))
    ctx.measure("capacity_overcounted", overcounted, "Ah", ctx.limit("capacity_overcounted"), diagnosis=counted)
    ctx.measure("pending_limit_counted", over_limit, "A", ctx.limit("pending_limit_counted"), diagnosis=counted)
    moved_ah = _align(ctx, state.pending) if state.pending else 0.0
    ctx.measure("alignment_charge", moved_ah, "Ah", ctx.limit("alignment_charge"),
                diagnosis=diagnose("startup_alarm", _names(state.pending) or "bank",
                                   f"{moved_ah:.1f} Ah moved to bring the pending module(s) within "
                                   f"{float(ctx.param('safe_delta_v', 0.5)):g} V of the bank"))
    reports = module_reports(bench)
    assert reports is not None
    end = _gate_state(bench, reports)
    held = end.pending + [m for m in silent_modules(reports) if m not in end.pending]
    deltas = "; ".join(f"{m} ΔV {_delta_v(m, reports, end.pending) * 1e3:+.0f} mV" for m in end.pending
                       if not math.isnan(_delta_v(m, reports, end.pending)))
    not_admitted = diagnose("reduced_capacity", _names(held) or "bank",
                            (f"{_names(end.pending)} not admitted" if end.pending else "every module admitted")
                            + (f" ({deltas}, within the safe {float(ctx.param('safe_delta_v', 0.5)):g} V: "
                               "not a voltage difference)" if deltas else "")
                            + (f"; no data from {_names(silent_modules(reports))}" if silent_modules(reports) else ""))
    ctx.measure("modules_pending_end", len(end.pending), "", ctx.limit("modules_pending_end"), diagnosis=not_admitted)
    ctx.measure("online_capacity", end.online_ah, "Ah")
    ctx.measure("capacity_not_counted", end.installed_ah - end.online_ah, "Ah",
                ctx.limit("capacity_not_counted"), diagnosis=not_admitted)
    ctx.measure("discharge_limit", end.discharge_limit_a, "A")
    shortfall = dut.dut.parallel * module_limit_a - end.discharge_limit_a
    alarms = bms_alarm_note(bench)
    if held or not alarms:
        limit_diagnosis = diagnose("reduced_capacity", _names(held) or "bank",
                                   f"discharge limit {end.discharge_limit_a:.0f} A against {dut.dut.parallel} x "
                                   f"{module_limit_a:g} A{alarms}")
    else:
        limit_diagnosis = diagnose("startup_alarm", "BMS", f"discharge limit {end.discharge_limit_a:.0f} A with "
                                   f"every module admitted{alarms}")
    ctx.measure("discharge_limit_shortfall", shortfall, "A", ctx.limit("discharge_limit_shortfall"),
                diagnosis=limit_diagnosis)


def _countable(reports: dict[str, ModuleReport], pending: list[str]) -> int:
    """Modules per series position that may count (heard and admitted), at the weakest
    position: the master adds parallel modules and the weakest position limits the bank."""
    per_position: dict[int, int] = {}
    for module, report in reports.items():
        s = module_position(module)[0]
        per_position.setdefault(s, 0)
        if report.volts is not None and module not in pending:
            per_position[s] += 1
    return min(per_position.values()) if per_position else 0


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
        state = _gate_state(bench, reports)
        if not state.pending:
            break
        deltas = {m: _delta_v(m, reports, state.pending) for m in state.pending}
        worst = max(deltas.values(), key=lambda d: abs(d) if not math.isnan(d) else -1.0)
        if math.isnan(worst) or abs(worst) <= safe_v:
            bench.clock.wait(admit_s)  # at rest, close enough: the master must admit now
            reports = module_reports(bench)
            assert reports is not None
            if _gate_state(bench, reports).pending:
                for module, delta in deltas.items():
                    ctx.measure(f"pending_{module}_delta_v_final", delta, "V")
                break
            continue
        if worst > 0:  # the module is higher: charge the bank up towards it
            bench.supply.set_voltage(float(ctx.param("charge_voltage", bms_read(bench, "limits").charge_voltage_v)))
            bench.supply.set_current(amps)
            bench.supply.output(True)
            try:
                moved += _ah_while(bench, bench.supply.measure_current, step_s, sample_s)
            finally:
                bench.supply.output(False)
        else:
            bench.load.set_current(amps)
            bench.load.input(True)
            try:
                moved += _ah_while(bench, bench.load.measure_current, step_s, sample_s)
            finally:
                bench.load.input(False)
        bench.clock.wait(rest_s)
    return moved


# ================================================================== thermal
def thermocouple_kinds(points: list[str]) -> dict[str, list[str]]:
    """Thermocouple points by kind: module bodies, terminals, bus segments."""
    kinds: dict[str, list[str]] = {"module": [], "terminal": [], "bus": []}
    for point in points:
        if _POSITION.match(point):
            kinds["module"].append(point)
        elif _TERMINAL.match(point):
            kinds["terminal"].append(point)
        elif "bus" in point:
            kinds["bus"].append(point)
    return {k: sorted(v, key=_natural) for k, v in kinds.items()}


def fit_first_order(t: list[float], y: list[float]) -> tuple[float, float, float, float]:
    """Least-squares fit of ``y(t) = y_inf - (y_inf - y0) exp(-t / tau)``: ``(tau, y_inf, y0,
    rms residual)``. For a given tau the model is linear in y_inf and y0 (solved exactly); tau
    is found by golden-section search on log tau between a tenth of the first interval and a
    hundred times the record."""
    if len(t) < 3 or t[-1] <= t[0]:
        return math.nan, math.nan, math.nan, math.nan
    t0 = t[0]
    ts = [x - t0 for x in t]

    def solve(tau: float) -> tuple[float, float, float]:
        e = [math.exp(-x / tau) for x in ts]
        s11 = sum((1 - x) ** 2 for x in e)
        s12 = sum((1 - x) * x for x in e)
        s22 = sum(x * x for x in e)
        r1 = sum((1 - x) * v for x, v in zip(e, y))
        r2 = sum(x * v for x, v in zip(e, y))
        det = s11 * s22 - s12 * s12
        if abs(det) < 1e-300:
            return math.inf, math.nan, math.nan
        a = (r1 * s22 - r2 * s12) / det
        b = (s11 * r2 - s12 * r1) / det
        return sum((a * (1 - x) + b * x - v) ** 2 for x, v in zip(e, y)), a, b

    lo = math.log(max(ts[1], 1e-6) / 10.0)
    hi = math.log(ts[-1] * 100.0)
    g = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = hi - g * (hi - lo), lo + g * (hi - lo)
    fc, fd = solve(math.exp(c))[0], solve(math.exp(d))[0]
    for _ in range(80):
        if fc < fd:
            hi, d, fd = d, c, fc
            c = hi - g * (hi - lo)
            fc = solve(math.exp(c))[0]
        else:
            lo, c, fc = c, d, fd
            d = lo + g * (hi - lo)
            fd = solve(math.exp(d))[0]
    tau = math.exp((lo + hi) / 2.0)
    sse, y_inf, y0 = solve(tau)
    return tau, y_inf, y0, math.sqrt(sse / len(ts))


@dataclass
class RiseEstimate:
    """A joint's final rise at the current applied: ``steady`` (the run reached it), ``fitted``
    (extrapolated from the time constant the run covered), or ``end of run`` (the time constant
    is longer than the run could cover: the rise the run reached)."""

    point: str
    measured: float          # at the end of the run
    final: float
    method: str
    tau_s: float = math.nan
    rms: float = math.nan


def is_steady(t: list[float], y: list[float], window_s: float, rate: float) -> bool:
    """The rise changed by less than ``rate`` over the last ``window_s`` of the record."""
    if not t or t[-1] - t[0] < window_s - 1e-9:
        return False
    k = max(i for i, x in enumerate(t) if x <= t[-1] - window_s + 1e-9)
    return abs(y[-1] - y[k]) < rate


def estimate_rise(point: str, t: list[float], y: list[float], window_s: float, rate: float,
                  min_tau_covered: float) -> RiseEstimate:
    if is_steady(t, y, window_s, rate):
        return RiseEstimate(point, y[-1], y[-1], "steady")
    tau, y_inf, _, rms = fit_first_order(t, y)
    if not math.isnan(tau) and t[-1] - t[0] >= min_tau_covered * tau:
        return RiseEstimate(point, y[-1], y_inf, "fitted", tau, rms)
    return RiseEstimate(point, y[-1], y[-1], "end of run", tau, rms)


def scale_rise(rise: float, measured_a: float, rated_a: float, start_c: float, tempco: float) -> float:
    """The steady rise at ``rated_a`` from the one at ``measured_a``: heat is I² R, cooling
    linear in the rise. With ``tempco`` (per K, referred to 20 degC: copper 0.00393) the
    conductor's resistance follows its temperature, ``R = R20 (1 + a (T - 20))``:
    ``rise = k I² (1 + a (Ta + rise - 20))``, so ``k`` from the measured point and
    ``rise_rated = k Ir² (1 + a (Ta - 20)) / (1 - k Ir² a)`` (inf: no steady state). Without it,
    plain I² scaling."""
    if measured_a <= 0 or math.isnan(rise):
        return math.nan
    if not tempco:
        return rise * (rated_a / measured_a) ** 2
    k = rise / (measured_a ** 2 * (1.0 + tempco * (start_c + rise - 20.0)))
    den = 1.0 - k * rated_a ** 2 * tempco
    return math.inf if den <= 0 else k * rated_a ** 2 * (1.0 + tempco * (start_c - 20.0)) / den


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
                 "module_spread": Measure("K", required=True)})
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
                                          if (b := _TERMINAL.match(t).group(1)) in now}))  # type: ignore[union-attr]
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
        body = _TERMINAL.match(hottest).group(1)  # type: ignore[union-attr]
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
                 "bms_soc_error": Measure("%", required=True, doc="BMS SOC change vs coulomb count")})
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
    if not _require(ctx, reports, "soc_spread_max"):
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
                diagnosis=_spread_diagnosis(start_socs, reports, "%"))  # type: ignore[arg-type]
    spreads, rested, errors = [start], [], []
    for cycle in range(1, int(ctx.param("cycles", 3)) + 1):
        soc0 = bank_soc()
        bench.load.set_current(float(ctx.param("discharge_current")))
        bench.load.input(True)
        try:
            ah_out = _ah_while(bench, bench.load.measure_current, float(ctx.param("discharge_s")), sample_s)
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
            ah_in = _ah_while(bench, bench.supply.measure_current, float(ctx.param("charge_s")), sample_s)
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
    weakest = min((m for m in soh if _finite(soh[m])), key=lambda m: soh[m], default=None)  # type: ignore[arg-type,return-value]
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
        return diagnose("module_offline", _names(silent) or "bank", "no per-module SOC from the BMS")
    _, worst = max(known, key=lambda vs: vs[0])
    out = standout(worst)
    if out is None:
        return diagnose("soc_drift", "bank", "fewer than two modules report SOC")
    module, value, mean = out
    evidence = f"SOC {value:.1f} % against {mean:.1f} % for its peers at the widest point"
    before, before_mean = start_socs.get(module), peer_mean(start_socs, module)
    if _finite(before) and not math.isnan(before_mean):
        evidence += f" ({before:.1f} % against {before_mean:.1f} % before cycling)"
    row, health = module_health(module, reports)
    if row == "weak_module":
        return diagnose("weak_module", module, f"{evidence}; {health}")
    if _finite(before) and not math.isnan(before_mean) and abs(float(before) - before_mean) > SOC_EVIDENCE_PCT:  # type: ignore[arg-type]
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
                 "bank_current": Measure("A", required=True)})
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
    amps_now = bms_now(bench).telemetry().current_a
    ctx.measure("bank_current", abs(amps_now), "A", ctx.limit("bank_current"),
                diagnosis=diagnose("loads_not_off", "bank", f"the BMS reports {amps_now:+.2f} A with the load "
                                   "and the supply off"))


@check("polarity",
       params={"bank": Param(kind="flag", doc="also the bank voltage at the load terminals"),
               "open_branches": Param(kind="flag", doc="read each module with its branch open"),
               "rest_s": Param("s", doc="with the branches open, before the reading")},
       measures={"ocv_{module}": Measure("V", limit="module_ocv", required=True),
                 "reversed_modules": Measure("", required=True),
                 "bank_voltage": Measure("V")})
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
    held = tuple(_not_admitted(bench))
    results = [ctx.measure(f"ocv_{module}", volts[module], "V", ctx.limit("module_ocv"),
                           diagnosis=_voltage_diagnosis(module, volts[module], volts, reports, held))
               for module in sorted(volts, key=_natural)]
    if not any(m.verdict in ("fail", "error") for m in results):
        for branch in branches:
            if was_closed[branch]:
                bench.set_contactor(branch, True)
                bench.clock.wait(0.5)
    reversed_ = [m for m, v in volts.items() if v < 0]
    ctx.measure("reversed_modules", len(reversed_), "", ctx.limit("reversed_modules"),
                diagnosis=diagnose("reversed_polarity", _names(reversed_) or "bank",
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
                 "branch_min_share": Measure("%")})
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
    low = min(sorted(shares, key=_natural), key=lambda b: shares[b] if not math.isnan(shares[b]) else math.inf)
    for branch in sorted(currents, key=_natural):
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
            return diagnose("module_offline", branch, f"{evidence}; no BMS data from {_names(silent)}{alarms}")
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
                                                  doc="its current as % of its peers' mean, re-closed")})
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
        at_rest = _branch_voltages(bench.module_voltages(), [branch])[branch]
        bench.set_contactor(branch, False)
        try:
            currents, volts = loaded()
        finally:
            bench.set_contactor(branch, True)
        carried = currents.get(branch, math.nan)
        sag = at_rest - _branch_voltages(volts, [branch])[branch]
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


@check("bms_network",
       params={"observe_s": Param("s")},
       measures={"bms_silence": Measure("s", required=True),
                 "bms_firmware": Measure("", required=True),
                 "modules_missing": Measure("", required=True),
                 "modules_offline": Measure("", required=True),
                 "modules_visible_missing": Measure("", required=True),
                 "duplicate_serials": Measure("", required=True)})
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
        status = bms_now(bench).status()
        missing_worst = max(missing_worst, expected - int(status.modules_online or 0))
        offline_worst = max(offline_worst, int(status.modules_offline or 0))
        silence_worst = max(silence_worst, bms_now(bench).seconds_since_heard())
    reports = module_reports(bench)
    silent = silent_modules(reports)
    ctx.measure("bms_silence", silence_worst, "s", ctx.limit("bms_silence"),
                diagnosis=diagnose("startup_alarm", "BMS", f"silent for {silence_worst:.1f} s (communication fault)"))
    firmware = bms_read(bench, "firmware")
    ctx.measure("bms_firmware", firmware, "", ctx.limit("bms_firmware"),
                diagnosis=diagnose("firmware_mix", "master BMS", f"reports firmware '{firmware}'"))
    offline = diagnose("module_offline", _names(silent) or "bank",
                       f"the BMS reports {expected - missing_worst} of {expected} modules online"
                       + (f"; no data from {_names(silent)}" if silent else "") + bms_alarm_note(bench))
    ctx.measure("modules_missing", missing_worst, "", ctx.limit("modules_missing"), diagnosis=offline)
    ctx.measure("modules_offline", offline_worst, "", ctx.limit("modules_offline"), diagnosis=offline)
    if not _require(ctx, reports, "modules_visible_missing"):
        return
    assert reports is not None
    visible = [m for m, r in reports.items() if r.volts is not None]
    ctx.measure("modules_visible_missing", expected - len(visible), "", ctx.limit("modules_visible_missing"),
                diagnosis=diagnose("module_offline", _names(silent) or "bank",
                                   f"{len(visible)} of {expected} modules answer over SunSpec"))
    serials = [r.serial for r in reports.values() if r.serial]
    twice = sorted({m for m, r in reports.items() if r.serial and serials.count(r.serial) > 1}, key=_natural)
    ctx.measure("duplicate_serials", len(serials) - len(set(serials)), "", ctx.limit("duplicate_serials"),
                diagnosis=diagnose("module_offline", _names(twice) or "bank",
                                   "the same serial at two addresses (address setting)"))


def _not_admitted(bench: Any) -> list[str]:
    """Modules the master has not admitted: silent ones and those of strings it holds back."""
    reports = module_reports(bench)
    if reports is None or getattr(bench, "sunspec", None) is None:
        return []
    return sorted(set(_gate_state(bench, reports).pending) | set(silent_modules(reports)), key=_natural)


@check("main_disconnect",
       params={"settle_s": Param("s")},
       measures={"bms_alarms": Measure("", required=True),
                 "capacity_not_counted": Measure("Ah", required=True),
                 "charge_enable": Measure("", required=True),
                 "discharge_enable": Measure("", required=True),
                 "main_closed": Measure("", required=True),
                 "bank_voltage": Measure("V")})
def main_disconnect(ctx: StepContext) -> None:
    """004 commissioning step 11: close the main battery disconnect only after BMS status is
    normal -- no alarm, every module admitted (capacity counted = installed), charge and
    discharge enabled. If any of those fails the main contactor is left as it is; once closed,
    the bank's voltage must appear at the load terminals (the contacts made, not just the coil)."""
    bench = ctx.bench
    status = bms_read(bench, "status")
    alarms = sorted(status.alarms)
    shortfall = float(status.installed_capacity_ah or 0.0) - float(status.online_capacity_ah or 0.0)
    held = _not_admitted(bench)
    startup = diagnose("startup_alarm", "BMS", f"alarms: {', '.join(alarms) or 'none'}; charge "
                       f"{'enabled' if status.charge_enable else 'disabled'}, discharge "
                       f"{'enabled' if status.discharge_enable else 'disabled'}")
    normal = [
        ctx.measure("bms_alarms", len(alarms), "", ctx.limit("bms_alarms"), diagnosis=startup),
        ctx.measure("capacity_not_counted", shortfall, "Ah", ctx.limit("capacity_not_counted"),
                    diagnosis=diagnose("reduced_capacity", _names(held) or "bank",
                                       f"{shortfall:.0f} Ah of {float(status.installed_capacity_ah or 0):.0f} Ah "
                                       "not counted" + (f"; {_names(held)} not admitted" if held else ""))),
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


@check("inverter_recognition",
       params={"observe_s": Param("s")},
       measures={"keepalive_on": Measure("", required=True),
                 "bms_silence": Measure("s", required=True),
                 "bms_identity": Measure(""),
                 "charge_current_limit": Measure("A", required=True),
                 "discharge_current_limit": Measure("A", required=True),
                 "charge_voltage_limit": Measure("V", required=True),
                 "discharge_voltage_limit": Measure("V", required=True)})
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
    held = _not_admitted(bench)
    alarms = bms_alarm_note(bench)
    per_module = dut.module_type.bms.limits if dut is not None else None
    for name, value, module_value in (
            ("charge_current_limit", limits.charge_current_a, per_module.charge_current_a if per_module else None),
            ("discharge_current_limit", limits.discharge_current_a,
             per_module.discharge_current_a if per_module else None)):
        expected = f" against {dut.dut.parallel} x {module_value:g} A" if dut is not None else ""
        if held:
            diagnosis = diagnose("reduced_capacity", _names(held), f"{value:.0f} A published{expected}; "
                                 f"{_names(held)} not online and accepted{alarms}")
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


# ================================================================== 4S4P assembly order (000)
def _groups_of(bench: Any) -> dict[str, list[str]]:
    return series_groups(branch_contactors(bench))


@check("group_assembly",
       params={"rest_s": Param("s"),
               "close_gap_s": Param("s", doc="after closing each branch")},
       measures={"delta_v_{branch}": Measure("V", limit="delta_v", required=True),
                 "group_voltage_{group}": Measure("V", limit="group_voltage"),
                 "branches_left_open": Measure("", required=True)})
def group_assembly(ctx: StepContext) -> None:
    """000: "four parallel groups should be built first (the single cell is expanded from 1P to
    4P at each series position)". The main contactor and every branch contactor are opened;
    after ``rest_s``, group by group, each module is connected to its group only if its
    open-circuit voltage is within ``delta_v`` of the group's connected modules (it is left
    open otherwise). Each group's voltage is recorded for the balance step."""
    bench = ctx.bench
    outputs_off(bench)
    bench.set_contactor("main", False)
    for branch in branch_contactors(bench):
        bench.set_contactor(branch, False)
    bench.clock.wait(float(ctx.param("rest_s", 10.0)))
    gap = float(ctx.param("close_gap_s", 1.0))
    left_open = []
    for group, members in _groups_of(bench).items():
        connected: list[str] = []
        for branch in members:
            volts = bench.module_voltages()
            branch_v = _branch_voltages(volts, members)
            if connected:
                delta = branch_v[branch] - sum(branch_v[b] for b in connected) / len(connected)
                m = ctx.measure(f"delta_v_{branch}", abs(delta), "V", ctx.limit("delta_v"),
                                diagnosis=diagnose("startup_alarm", branch,
                                                   f"open-circuit {branch_v[branch]:.3f} V against its "
                                                   f"group's {branch_v[branch] - delta:.3f} V "
                                                   f"(ΔV {delta * 1e3:+.0f} mV): left open"))
                if m.verdict in ("fail", "error"):
                    left_open.append(branch)
                    continue
            bench.set_contactor(branch, True)
            connected.append(branch)
            bench.clock.wait(gap)
        volts = bench.module_voltages()
        group_v = _branch_voltages(volts, connected or members)
        group_mean = sum(group_v.values()) / len(group_v)
        ctx.measure(f"group_voltage_{group}", group_mean, "V", ctx.limit("group_voltage"),
                    diagnosis=diagnose("series_mismatch", group, f"group at {group_mean:.3f} V"))
    ctx.measure("branches_left_open", len(left_open), "", ctx.limit("branches_left_open"),
                diagnosis=diagnose("startup_alarm", _names(left_open) or "bank",
                                   "too far in voltage from its group to be connected"))


@check("group_voltage_match",
       params={"settle_s": Param("s")},
       measures={"group_voltage_{group}": Measure("V"),
                 "group_spread": Measure("V", required=True),
                 "main_closed": Measure(""),
                 "series_voltage": Measure("V"),
                 "series_voltage_error": Measure("V", required=True, doc="string minus sum of groups")})
def group_voltage_match(ctx: StepContext) -> None:
    """000: "the voltage balance between the groups should be confirmed, and then the series
    connection should be performed". Group voltages (mean terminal voltage of each series
    position's connected modules) must agree within ``group_spread``; only then is the main
    contactor closed, and the string voltage at the load terminals must equal the sum of the
    groups (``series_voltage_error``: a group not in the string, or a reversed one)."""
    bench = ctx.bench
    outputs_off(bench)
    volts = bench.module_voltages()
    groups = by_series_position(volts)
    means = {s: sum(v.values()) / len(v) for s, v in groups.items()}
    for s, value in means.items():
        ctx.measure(f"group_voltage_s{s}", value, "V")
    spread_v = max(means.values()) - min(means.values())
    odd = standout({f"s{k}": v for k, v in means.items()})
    m = ctx.measure("group_spread", spread_v, "V", ctx.limit("group_spread"),
                    diagnosis=diagnose("series_mismatch", odd[0] if odd else "bank",
                                       f"group at {odd[1]:.3f} V against {odd[2]:.3f} V for the others"
                                       if odd else f"spread {spread_v:.3f} V"))
    if m.verdict in ("fail", "error"):
        ctx.measure("main_closed", False, "", diagnosis="series connection not made: groups unbalanced")
        return
    bench.set_contactor("main", True)
    bench.clock.wait(float(ctx.param("settle_s", 1.0)))
    string_v = bench.load.measure_voltage()
    ctx.measure("series_voltage", string_v, "V", ctx.limit("series_voltage"))
    total = sum(means.values())
    missing = total - string_v
    group_mean = total / len(means) if means else math.nan
    # a group reversed takes twice its voltage off the string; one left out takes it once
    if means and missing > 1.5 * group_mean:
        error_diagnosis = diagnose("reversed_polarity", "series string", f"{string_v:.2f} V against "
                                   f"{total:.2f} V of the groups: about two groups' voltage missing")
    elif means and missing > 0.5 * group_mean:
        error_diagnosis = diagnose("module_offline", "series string", f"{string_v:.2f} V against {total:.2f} V "
                                   "of the groups: one group's voltage missing (a link, fuse or group open)")
    else:
        error_diagnosis = diagnose("series_mismatch", "series string", f"{string_v:.2f} V against {total:.2f} V "
                                   "of the groups")
    ctx.measure("series_voltage_error", abs(string_v - total), "V",
                ctx.limit("series_voltage_error"), diagnosis=error_diagnosis)


@check("as_built_layout",
       params={"busbar_above": Param("A", doc="rated bank current above which busbars are needed")},
       measures={"lead_length_spread": Measure("m", required=True),
                 "lead_section_spread": Measure("mm2", required=True),
                 "diagonal_takeoff": Measure("", required=True),
                 "rated_bank_current": Measure("A"),
                 "bus_kind": Measure(""),
                 "busbar_where_needed": Measure("", required=True)})
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
