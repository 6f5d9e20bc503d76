"""Module-level checks (end of line, and each module before it joins a bank): open-circuit
voltages, identity (model, chemistry, firmware, batch, SoH), AC internal resistance and SoH,
cell balance.

000: "measure open-circuit voltage on every unit before closing the parallel bus" (<= 0.1 V;
003: +-0.05 V); 003: "if mixed, ensure internal resistance differs by <= +-3 mohm"; 002: cell
mismatch its balancing must manage; 004: module health data (SOH, AC-IR) for an older module.
A failed measurement names the module, with the cause its evidence gives (its SOC/SoH from the
BMS, SunSpec 805).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator

from bankmodel.positions import natural_key
from harness.measure import Limits
from test_plans.checks import Measure, Param, StepContext, check
from test_plans.checks.bench_helpers import branches_opened, can_open_modules, outputs_off
from test_plans.checks.bms_helpers import bms_cell_range, module_reports
from test_plans.checks.branches import has_parallel_peer
from test_plans.checks.diagnosis import diagnose, outlier
from test_plans.checks.evidence import SOH_EVIDENCE_PCT, ocv_diagnosis
from test_plans.checks.identity import COUNT_MEASURES, IDENTITY_MEASURES, measure_counts, measure_identity


# ================================================================== open-circuit voltages
@check("module_ocv_match",
       params={"rest_s": Param("s", doc="with the branches open, before the reading"),
               "close_gap_s": Param("s", doc="between re-closing the branch contactors")},
       measures={"ocv_{module}": Measure("V", limit="module_ocv", required=True),
                 "ocv_spread": Measure("V", required=True, doc="highest minus lowest module"),
                 "branches_opened": Measure("", doc="branch contactors opened for the reading")},
       needs=("actuator", "scanner"), uses=("load", "module_reports", "supply"))
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
        for module in sorted(volts, key=natural_key):
            ctx.measure(f"ocv_{module}", volts[module], "V")
        ctx.measure("ocv_spread", None, "V", ctx.limit("ocv_spread"),
                    diagnosis="the branches cannot be opened (no actuator role): a closed bank's module "
                              "voltages are the bus voltage, not open-circuit voltages")
        return
    with branches_opened(bench, float(ctx.param("close_gap_s", 0.5))) as opened:
        bench.clock.wait(float(ctx.param("rest_s", 1.0)))
        volts = bench.module_voltages()
        reports = module_reports(bench)
    ctx.measure("branches_opened", len(opened), "")
    for module in sorted(volts, key=natural_key):
        ctx.measure(f"ocv_{module}", volts[module], "V", ctx.limit("module_ocv"),
                    diagnosis=ocv_diagnosis(module, volts, reports))
    spread = max(volts.values()) - min(volts.values())
    odd = outlier(volts)
    ctx.measure("ocv_spread", spread, "V", ctx.limit("ocv_spread"),
                diagnosis=ocv_diagnosis(odd.name, volts, reports) if odd is not None else None)
    modules = sorted(volts, key=natural_key)
    ctx.measure.trace("module_ocv", "xy", {"module": modules, "ocv": [volts[m] for m in modules]},
                      units={"ocv": "V"}, marks={"mean": sum(volts.values()) / len(volts)},
                      title="Module open-circuit voltages, branches open")


# ================================================================== identity
@check("module_identity", measures={**IDENTITY_MEASURES, **COUNT_MEASURES},
       needs=("module_reports",))
def module_identity(ctx: StepContext) -> None:
    """004 commissioning step 1: each module's model, voltage class, chemistry and the allowed
    parallel count, from the BMS against the DUT (nothing is switched)."""
    reports = module_reports(ctx.bench)
    measure_identity(ctx, reports)
    measure_counts(ctx, reports)


# ================================================================== the unit on the fixture
@check("unit_serial",
       measures={"label_serial": Measure("", doc="the serial the unit was scanned with"),
                 "bms_serial": Measure("", doc="the serial the unit's BMS reports (SunSpec model 805 SN)"),
                 "serial_match": Measure("", required=True, doc="the two are the same")},
       needs=("module_reports",))
def unit_serial(ctx: StepContext) -> None:
    """End of line: the unit on the fixture is the one whose label was scanned -- a module
    labelled BH12-B0001-007 whose BMS says BH12-B0001-001 carries another unit's record (a
    swapped label, or a BMS board programmed with the wrong serial) and must not pass."""
    label = ctx.extras.get("serial")
    reports = module_reports(ctx.bench) or {}
    ctx.measure("label_serial", label, "")
    first = min(reports, key=natural_key) if reports else None
    reported = reports[first].serial if first is not None else None
    ctx.measure("bms_serial", reported, "")
    where = first or "module"
    ctx.measure("serial_match", reported is not None and reported == label, "", ctx.limit("serial_match"),
                diagnosis=diagnose("serial_mismatch", where,
                                   f"label {label}, BMS reports {reported or 'no serial'}"))


# ================================================================== balancing (end of line)
def module_cell_voltages(bench: Any) -> dict[str, tuple[float, float]]:
    """(lowest, highest) cell voltage of each module as its BMS reports it (SunSpec 805
    CellVMin/CellVMax), by position; ``{}`` without SunSpec or where a module does not report."""
    reports = module_reports(bench) or {}
    return {m: (r.min_cell_v, r.max_cell_v) for m, r in reports.items()
            if r.min_cell_v is not None and r.max_cell_v is not None}


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
    inner = max(own, key=lambda m: (own[m], natural_key(m)))
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
                 "cells_balancing": Measure("", doc="SunSpec 805 NCellBal, summed")},
       needs=("bms",), uses=("load", "module_reports", "supply"))
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
    low, high = bms_cell_range(bench)  # CAN 0x373 or SunSpec 802: a strict pack sends no 0x373
    spread = (float(high) - float(low)) if high is not None and low is not None else math.nan
    cells = module_cell_voltages(bench)
    ctx.measure("max_cell_voltage", high, "V")
    ctx.measure("min_cell_voltage", low, "V")
    for module, (lo, hi) in cells.items():
        ctx.measure(f"cell_spread_{module}", hi - lo, "V")
    ctx.measure("cell_spread", spread, "V", ctx.limit("cell_spread"),
                diagnosis=cell_spread_diagnosis(cells, low, high))
    reports = module_reports(bench)
    if reports is None:
        return
    balancing = {m: r.cells_balancing for m, r in reports.items() if r.cells_balancing}
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
    reports = module_reports(bench)
    if reports:
        return {m: float(r.soh_pct) for m, r in reports.items()
                if r.soh_pct is not None and not math.isnan(r.soh_pct)}
    if len(modules) == 1 and bench.bms is not None:
        soh = bench.bms.telemetry().soh_pct
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
    for module in sorted(readings, key=natural_key):
        ctx.measure(f"acir_{module}", readings[module], "ohm")
    worst = max(readings, key=lambda m: (readings[m], natural_key(m)))
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
    for module in sorted(soh, key=natural_key):
        ctx.measure(f"soh_{module}", soh[module], "%")
    if soh:
        low = min(soh, key=lambda m: (soh[m], natural_key(m)))
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
                 "soh_{module}": Measure("%", doc="SunSpec 805 SoH (else CAN 0x355 for a single module)")},
       needs=("acir", "actuator", "scanner"), uses=("bms", "load", "module_reports", "supply"))
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
