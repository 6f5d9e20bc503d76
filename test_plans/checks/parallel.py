"""Checks of parallel banks: what 000, 001, 002, 003 and 004 ask before, while and after
modules are put in parallel.

Every check drives the bench through roles only (``bench.load``, ``bench.supply``,
``bench.set_contactor``, ``bench.branch_currents()``, ``bench.dmm(...)``, the BMS clients),
waits only on ``bench.clock``, takes every limit from the plan step, and gives each failed
measurement a diagnosis from the troubleshooting table of 004_580db881af34243e.txt (DOMAIN.md
section 2). Expected *values* of the bank (its NsMp configuration, module model, chemistry,
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
from typing import Any, Callable

from instruments.roles import Waveform
from test_plans.checks import Measure, Param, StepContext, check
from test_plans.checks.basic import (DIAG_FUSE, DIAG_MISMATCH, DIAG_OFFLINE,
                                     DIAG_REDUCED_CAPACITY, TraceRows, _natural, bms_alarm_note,
                                     bms_now, bms_read, branch_contactors, connect_bank, outputs_off,
                                     series_groups, waveform_columns)

# ------------------------------------------------------------------ diagnoses (004 first)
DIAG_STARTUP = ("voltage difference or communication fault (004: alarm during startup) "
                "-- check pre-connect voltage and BMS status")
DIAG_SOC_DRIFT = ("initial SOC mismatch or weak module (004: SOC drifts after each cycle) "
                  "-- check SOC alignment and module health data")
DIAG_HOT_TERMINAL = ("loose lug or high-resistance joint (004: hot terminal or cable end) "
                     "-- check torque, lug surface, discoloration")
DIAG_WARM_MODULE = ("loose lug or high current load (004: one module runs warmer) "
                    "-- check torque, lug surface, branch current; module spacing (003: 10 cm)")
DIAG_BUSBAR = ("busbar or bus cable undersized for the bank current (004: busbar rated for total "
               "bank current; hot terminal or cable end) -- check busbar cross-section (000: "
               "busbars above 200 A, rise <= 30 K), torque, lug surface")
DIAG_CONTACTOR = ("branch contactor did not open (004: one module stays offline -> breaker or "
                  "contactor issue; 000: a surge can weld contactors) -- check the branch "
                  "contactor and breaker")
DIAG_INRUSH = ("equalising surge too large (000: can weld contactors, trip BMS protection; 004: "
               "branch fuse trips -> overcurrent) -- check pre-connect voltage, branch current "
               "and fuse specification")
DIAG_IDENTITY = ("model, chemistry or firmware differs from the bank (004: inverter reports "
                 "reduced capacity -> firmware, protocol; avoid different chemistry or "
                 "unsupported mix) -- check module labels, firmware, battery protocol")
DIAG_BATCH = ("mixed batch or older module (004: one module discharges faster -> older module; "
              "000: batch-matched units) -- check module health data and purchase batch")
DIAG_COUNT = ("parallel or series count outside what the BMS allows (004: manual forbids the "
              "planned parallel count) -- check the BMS limit and the bank layout")
DIAG_COUNTED = ("capacity or limits counted for a module that is not online and accepted (004: "
                "master reports combined limits only for modules online and accepted) "
                "-- check firmware, protocol")
DIAG_SHARING_LAYOUT = ("unequal cable resistance (004: one module current much higher) -- check cable "
                       "length, gauge, busbar landing; diagonal take-off (001, 003)")
DIAG_POLARITY = ("reversed or open lead (004: verify polarity on every cable before landing it) "
                 "-- check polarity, branch breaker")

# SunSpec model 802 ``Typ`` for a DUT's chemistry
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
    finally:
        bench.load.input(False)
    results = [ctx.measure(f"open_current_{branch}", abs(currents[branch]), "A",
                           ctx.limit("open_branch_current"), diagnosis=DIAG_CONTACTOR)
               for branch in branches if branch in currents]
    return not any(m.verdict in ("fail", "error") for m in results)


def _ocv(ctx: StepContext) -> dict[str, float]:
    volts = ctx.bench.module_voltages()
    for module in sorted(volts, key=_natural):
        ctx.measure(f"ocv_{module}", volts[module], "V", ctx.limit("module_ocv"), diagnosis=DIAG_POLARITY)
    ctx.measure("ocv_spread", spread(volts), "V", ctx.limit("ocv_spread"),
                diagnosis=f"{DIAG_STARTUP}; {DIAG_MISMATCH}")
    return volts


def _acir(ctx: StepContext) -> None:
    bench = ctx.bench
    if "acir" not in bench.instruments:
        return
    ohm, _ = bench.acir.measure()
    module = bench.channels.acir_module or "module"
    ctx.measure(f"acir_{module}", ohm, "ohm", ctx.limit("acir"), diagnosis=DIAG_BATCH)
    reference = ctx.params.get("acir_reference")
    if reference is not None:
        ctx.measure("acir_delta", abs(ohm - float(reference)), "ohm", ctx.limit("acir_delta"),
                    diagnosis=DIAG_BATCH)


def _soc(ctx: StepContext, reports: dict[str, ModuleReport] | None) -> None:
    if not _require(ctx, reports, "soc_spread"):
        return
    assert reports is not None
    socs = {m: r.soc_pct for m, r in reports.items()}
    for module, value in socs.items():
        ctx.measure(f"soc_{module}", value, "%")
    missing = [m for m, v in socs.items() if v is None]
    ctx.measure("soc_spread", math.nan if missing else spread(socs), "%", ctx.limit("soc_spread"),
                diagnosis=DIAG_MISMATCH if not missing else f"{DIAG_OFFLINE} (no SOC from {', '.join(missing)})")


def _identity(ctx: StepContext, reports: dict[str, ModuleReport] | None) -> None:
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
                diagnosis=DIAG_IDENTITY)
    ctx.measure("firmware_match", firmware == dut.firmware.version, "", ctx.limit("firmware_match"),
                diagnosis=DIAG_IDENTITY)
    kind = client.model(802).symbol("Typ")
    ctx.measure("reported_type", kind, "")
    expected = CHEMISTRY_TYPES.get(dut.module_type.chemistry.upper(), dut.module_type.chemistry.upper())
    ctx.measure("chemistry_match", kind == expected, "", ctx.limit("chemistry_match"),
                diagnosis=DIAG_IDENTITY)
    prefix, batch = dut.dut.serial_prefix, dut.dut.batch
    foreign = []
    for module, report in reports.items():
        ctx.measure(f"serial_{module}", report.serial, "")
        serial = report.serial or ""
        rest = serial[len(prefix):] if serial.startswith(prefix) else None
        if rest is None or rest.rsplit("-", 1)[0] != batch:
            foreign.append(module)
    ctx.measure("batch_mismatches", len(foreign), "", ctx.limit("batch_mismatches"),
                diagnosis=DIAG_BATCH + (f" (not batch {batch}: {', '.join(foreign)})" if foreign else ""))
    soh = {m: r.soh_pct for m, r in reports.items()}
    for module, value in soh.items():
        ctx.measure(f"soh_{module}", value, "%")
    ctx.measure("soh_spread", spread(soh), "%", ctx.limit("soh_spread"), diagnosis=DIAG_BATCH)


def _counts(ctx: StepContext, reports: dict[str, ModuleReport] | None) -> None:
    """Parallel and series counts as the BMS sees them, against the plan's BMS limits and the DUT."""
    if not _require(ctx, reports, "parallel_count"):
        return
    assert reports is not None
    positions = [module_position(m) for m in reports]
    series = max(s for s, _ in positions)
    parallel = max(p for _, p in positions)
    ctx.measure("parallel_count", parallel, "", ctx.limit("parallel_count"), diagnosis=DIAG_COUNT)
    ctx.measure("series_count", series, "", ctx.limit("series_count"), diagnosis=DIAG_COUNT)
    if ctx.dut is not None:
        dut = ctx.dut.dut
        ctx.measure("count_match", (series, parallel) == (dut.series, dut.parallel), "",
                    ctx.limit("count_match"), diagnosis=DIAG_COUNT + f" (BMS sees {series}S{parallel}P, "
                    f"DUT is {dut.series}S{dut.parallel}P)")


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
        _ocv(ctx)
        _acir(ctx)
        reports = module_reports(bench)
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
    _soc(ctx, module_reports(ctx.bench))
    volts = ctx.bench.module_voltages()
    ctx.measure("ocv_spread", spread(volts), "V", ctx.limit("ocv_spread"), diagnosis=DIAG_MISMATCH)


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
    pre = ctx.measure("delta_v", abs(delta), "V", ctx.limit("delta_v"),
                      diagnosis=f"{DIAG_STARTUP}; {DIAG_MISMATCH}")
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
    ctx.measure("peak_current", peak, "A", ctx.limit("peak_current"), diagnosis=DIAG_INRUSH)
    ctx.measure("inrush_i2t", i2t, "A2s", ctx.limit("inrush_i2t"), diagnosis=DIAG_INRUSH)
    ctx.measure("settle_time", settle, "s", ctx.limit("settle_time"),
                diagnosis=DIAG_INRUSH + ("" if settled else f" (still above {threshold:g} A at the "
                                                            "end of the capture)")
                + "; " + DIAG_MISMATCH)
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
    worst = max(abs(i) for i in currents.values())
    ctx.measure("circulating_current", worst, "A", ctx.limit("circulating_current"),
                diagnosis=DIAG_MISMATCH)
    first = next(iter(series_groups(list(currents)).values()))
    ctx.measure("rest_current_sum", abs(sum(currents[b] for b in first)), "A",
                ctx.limit("rest_current_sum"), diagnosis=DIAG_MISMATCH)


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
    for _ in range(max(int(float(ctx.param("observe_s", 5.0))), 1)):
        bench.clock.wait(1.0)
        reports = module_reports(bench)
        assert reports is not None
        state = _gate_state(bench, reports)
        may_count = _countable(reports, state.pending)
        worst_offline = max(worst_offline, state.modules_offline)
        overcounted = max(overcounted, state.online_ah - may_count * module_ah)
        over_limit = max(over_limit, state.discharge_limit_a - may_count * module_limit_a)
    ctx.measure("modules_online", state.modules_online, "")
    ctx.measure("modules_offline", worst_offline, "", ctx.limit("modules_offline"),
                diagnosis=DIAG_OFFLINE + bms_alarm_note(bench))
    ctx.measure("modules_pending_start", len(state.pending), "")
    for module in state.pending:
        ctx.measure(f"pending_{module}_delta_v", _delta_v(module, reports, state.pending), "V")
    # nothing may count beyond the modules heard and admitted (the weakest series position)
    ctx.measure("capacity_overcounted", overcounted, "Ah", ctx.limit("capacity_overcounted"),
                diagnosis=DIAG_COUNTED)
    ctx.measure("pending_limit_counted", over_limit, "A", ctx.limit("pending_limit_counted"),
                diagnosis=DIAG_COUNTED)
    moved_ah = _align(ctx, state.pending) if state.pending else 0.0
    ctx.measure("alignment_charge", moved_ah, "Ah", ctx.limit("alignment_charge"), diagnosis=DIAG_STARTUP)
    reports = module_reports(bench)
    assert reports is not None
    end = _gate_state(bench, reports)
    ctx.measure("modules_pending_end", len(end.pending), "", ctx.limit("modules_pending_end"),
                diagnosis=DIAG_REDUCED_CAPACITY + (f" ({', '.join(end.pending)} not admitted)" if end.pending else ""))
    ctx.measure("online_capacity", end.online_ah, "Ah")
    ctx.measure("capacity_not_counted", end.installed_ah - end.online_ah, "Ah",
                ctx.limit("capacity_not_counted"), diagnosis=DIAG_REDUCED_CAPACITY)
    ctx.measure("discharge_limit", end.discharge_limit_a, "A")
    ctx.measure("discharge_limit_shortfall", dut.dut.parallel * module_limit_a - end.discharge_limit_a, "A",
                ctx.limit("discharge_limit_shortfall"), diagnosis=DIAG_REDUCED_CAPACITY + bms_alarm_note(bench))


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


@check("thermal_rise",
       params={"load_current": Param("A", setpoint="load.current"),
               "duration_s": Param("s"),
               "sample_s": Param("s")},
       measures={"load_current_measured": Measure("A"),
                 # rise_<point>: point names hold '.', '+', '-' (s1p1.+, bus.pos.1, g1.bus.pos.1)
                 "rise_{module}.+": Measure("K"),
                 "rise_{module}.-": Measure("K"),
                 "rise_{segment}bus{rest}": Measure("K"),
                 "rise_{segment}bus.{polarity}.{k}": Measure("K"),
                 "rise_{group}.bus.{polarity}.{k}": Measure("K"),
                 "busbar_rise": Measure("K", required=True),
                 "terminal_rise": Measure("K", required=True),
                 "terminal_excess": Measure("K", required=True, doc="terminal above its own module body"),
                 "temperature_{module}": Measure("degC"),
                 "module_spread": Measure("K", required=True)})
def thermal_rise(ctx: StepContext) -> None:
    """Temperatures at the bank's rated current (``load_current`` for ``duration_s``).

    000: busbar cross-section such that the rise stays within 30 K at the maximum rated current
    (``busbar_rise``, the hottest bus segment); 003/004: terminal temperature, hot terminal or
    cable end (``terminal_rise``, and ``terminal_excess``: a terminal above its own module's body,
    which a loose or corroded lug heats); 002/003: module temperature spread (``module_spread``,
    bodies at the end). Rises are against each point's own reading before the load.
    """
    bench = ctx.bench
    outputs_off(bench)
    connect_bank(bench)
    kinds = thermocouple_kinds(list(bench.channels.thermocouple_channels()))
    rows = TraceRows(bench.clock.now())
    start = bench.temperatures()
    rows.add(bench.clock.now(), **start)
    highest = dict(start)
    amps = float(ctx.param("load_current"))
    duration = float(ctx.param("duration_s", 1800.0))
    sample_s = float(ctx.param("sample_s", 60.0))
    excess = -math.inf
    bench.load.set_current(amps)
    bench.load.input(True)
    try:
        left = duration
        while left > 1e-9:
            chunk = min(sample_s, left)
            bench.clock.wait(chunk)
            left -= chunk
            now = bench.temperatures()
            rows.add(bench.clock.now(), **now)
            for point, value in now.items():
                highest[point] = max(highest[point], value)
            for terminal in kinds["terminal"]:
                body = _TERMINAL.match(terminal).group(1)  # type: ignore[union-attr]
                if body in now:
                    excess = max(excess, now[terminal] - now[body])
        drawn = bench.load.measure_current()
        final = bench.temperatures()
    finally:
        bench.load.input(False)
    ctx.measure("load_current_measured", drawn, "A")
    rise = {p: highest[p] - start[p] for p in start}
    for kind in ("bus", "terminal"):
        for point in kinds[kind]:
            ctx.measure(f"rise_{point}", rise[point], "K")
    if kinds["bus"]:
        hottest = max(kinds["bus"], key=lambda p: rise[p])
        ctx.measure("busbar_rise", rise[hottest], "K", ctx.limit("busbar_rise"),
                    diagnosis=f"{DIAG_BUSBAR} (hottest: {hottest})")
    if kinds["terminal"]:
        hottest = max(kinds["terminal"], key=lambda p: rise[p])
        ctx.measure("terminal_rise", rise[hottest], "K", ctx.limit("terminal_rise"),
                    diagnosis=f"{DIAG_HOT_TERMINAL} (hottest: {hottest})")
        ctx.measure("terminal_excess", excess, "K", ctx.limit("terminal_excess"),
                    diagnosis=DIAG_HOT_TERMINAL)
    if kinds["module"]:
        bodies = {m: final[m] for m in kinds["module"]}
        for module, value in bodies.items():
            ctx.measure(f"temperature_{module}", value, "degC")
        hottest = max(bodies, key=lambda m: bodies[m])
        ctx.measure("module_spread", spread(bodies), "K", ctx.limit("module_spread"),
                    diagnosis=f"{DIAG_WARM_MODULE} (hottest: {hottest})")
    _trace_thermal(ctx, rows, kinds, start, amps)


def _trace_thermal(ctx: StepContext, rows: TraceRows, kinds: dict[str, list[str]],
                   start: dict[str, float], amps: float) -> None:
    """The temperatures the check sampled, for the report: module bodies over time (a warm
    module is the line above the rest) and the rise of every bus segment and terminal against
    the plan's rise limits (where a joint crosses 30 K, and whether it was still climbing)."""
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
                          marks={"busbar_rise_limit": ctx.limit("busbar_rise").high,
                                 "terminal_rise_limit": ctx.limit("terminal_rise").high},
                          title=f"Bus and terminal temperature rise at {amps:g} A")


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

    def soc_spread() -> float:
        now = module_reports(bench)
        assert now is not None
        rows.add(bench.clock.now(), **{f"soc_{m}": r.soc_pct for m, r in now.items()},
                 **{f"temp_{m}": r.temperature_c for m, r in now.items()})
        socs = {m: r.soc_pct for m, r in now.items()}
        if any(v is None for v in socs.values()):
            return math.nan
        return spread(socs)  # type: ignore[arg-type]

    def bank_soc() -> float:
        value = bms_soc(bench)
        rows.add(bench.clock.now(), soc_bank=value)
        return value

    start = soc_spread()
    ctx.measure("soc_spread_start", start, "%", ctx.limit("soc_spread_start"), diagnosis=DIAG_SOC_DRIFT)
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
    ctx.measure("soc_spread_max", max(spreads), "%", ctx.limit("soc_spread_max"), diagnosis=DIAG_SOC_DRIFT)
    ctx.measure("soc_spread_growth", rested[-1] - rested[0] if rested else 0.0, "%",
                ctx.limit("soc_spread_growth"), diagnosis=DIAG_SOC_DRIFT)
    ctx.measure("bms_soc_error", max(errors) if errors else 0.0, "%", ctx.limit("bms_soc_error"),
                diagnosis=DIAG_SOC_DRIFT + " (BMS SOC runs ahead of the coulomb count: capacity missing)")
    _trace_modules(ctx, rows, "soc_drift", "Per-module SOC and temperature over the cycles (bank: BMS SOC)")


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
               "rest_s": Param("s")},
       measures={"load_on": Measure("", required=True),
                 "supply_on": Measure("", required=True),
                 "main_closed": Measure(""),
                 "bank_current": Measure("A", required=True)})
def bank_at_rest(ctx: StepContext) -> None:
    """004 commissioning step 3: inverter, PV, charger and loads off before wiring. The load and
    the supply are switched off and must report off; with ``open_main`` the main disconnect is
    opened too (step 11 closes it once the BMS is normal); after ``rest_s`` the BMS must see
    (almost) no bank current."""
    bench = ctx.bench
    outputs_off(bench)
    if ctx.params.get("open_main", False):
        bench.set_contactor("main", False)
    bench.clock.wait(float(ctx.param("rest_s", 2.0)))
    if "load" in bench.instruments:
        ctx.measure("load_on", bench.load.is_on(), "", ctx.limit("load_on"), diagnosis=DIAG_STARTUP)
    if "supply" in bench.instruments:
        ctx.measure("supply_on", bench.supply.is_on(), "", ctx.limit("supply_on"), diagnosis=DIAG_STARTUP)
    if ctx.params.get("open_main", False):
        ctx.measure("main_closed", contactor_closed(bench, "main"), "", ctx.limit("main_closed"),
                    diagnosis=DIAG_CONTACTOR)
    ctx.measure("bank_current", abs(bms_now(bench).telemetry().current_a), "A", ctx.limit("bank_current"),
                diagnosis=DIAG_MISMATCH)


@check("polarity",
       params={"bank": Param(kind="flag", doc="also the bank voltage at the load terminals")},
       measures={"ocv_{module}": Measure("V", limit="module_ocv", required=True),
                 "reversed_modules": Measure("", required=True),
                 "bank_voltage": Measure("V")})
def polarity(ctx: StepContext) -> None:
    """004 commissioning step 4: polarity of every module and of the bank. Each module's
    terminal voltage must lie in ``module_ocv`` (a reversed module reads negative); the count of
    reversed modules and the bank voltage at the load terminals are measured too."""
    bench = ctx.bench
    volts = bench.module_voltages()
    for module in sorted(volts, key=_natural):
        ctx.measure(f"ocv_{module}", volts[module], "V", ctx.limit("module_ocv"), diagnosis=DIAG_POLARITY)
    ctx.measure("reversed_modules", sum(1 for v in volts.values() if v < 0), "",
                ctx.limit("reversed_modules"), diagnosis=DIAG_POLARITY)
    if "load" in bench.instruments and ctx.params.get("bank", True):
        ctx.measure("bank_voltage", bench.load.measure_voltage(), "V", ctx.limit("bank_voltage"),
                    diagnosis=DIAG_POLARITY)


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
    the smallest branch current as % of the mean (a blown fuse or open breaker carries none)."""
    bench, dut = ctx.bench, ctx.dut
    if dut is not None:
        limit_a = dut.module_type.bms.limits.discharge_current_a
        protection = dut.dut.protection
        ctx.measure("branch_fuse_rating", protection.branch_fuse_a, "A")
        ctx.measure("main_fuse_rating", protection.main_fuse_a, "A")
        ctx.measure("branch_fuse_margin", protection.branch_fuse_a - limit_a, "A",
                    ctx.limit("branch_fuse_margin"), diagnosis=DIAG_FUSE)
        ctx.measure("main_fuse_margin", protection.main_fuse_a - dut.dut.parallel * limit_a, "A",
                    ctx.limit("main_fuse_margin"), diagnosis=DIAG_FUSE)
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
    worst = 100.0
    for members in series_groups(list(currents)).values():
        mean = sum(currents[b] for b in members) / len(members)
        if mean:
            worst = min(worst, min(currents[b] / mean * 100.0 for b in members))
    for branch in sorted(currents, key=_natural):
        ctx.measure(f"current_{branch}", currents[branch], "A")
    ctx.measure("branch_min_share", worst, "%", ctx.limit("branch_min_share"),
                diagnosis=f"{DIAG_FUSE}; {DIAG_OFFLINE}" + bms_alarm_note(bench))


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
    ctx.measure("bms_silence", silence_worst, "s", ctx.limit("bms_silence"), diagnosis=DIAG_STARTUP)
    ctx.measure("bms_firmware", bms_read(bench, "firmware"), "", ctx.limit("bms_firmware"), diagnosis=DIAG_IDENTITY)
    ctx.measure("modules_missing", missing_worst, "", ctx.limit("modules_missing"),
                diagnosis=DIAG_OFFLINE + bms_alarm_note(bench))
    ctx.measure("modules_offline", offline_worst, "", ctx.limit("modules_offline"),
                diagnosis=DIAG_OFFLINE + bms_alarm_note(bench))
    reports = module_reports(bench)
    if not _require(ctx, reports, "modules_visible_missing"):
        return
    assert reports is not None
    visible = [m for m, r in reports.items() if r.volts is not None]
    ctx.measure("modules_visible_missing", expected - len(visible), "", ctx.limit("modules_visible_missing"),
                diagnosis=DIAG_OFFLINE + (f" (silent: {', '.join(m for m in reports if m not in visible)})"
                                          if len(visible) < len(reports) else ""))
    serials = [r.serial for r in reports.values() if r.serial]
    ctx.measure("duplicate_serials", len(serials) - len(set(serials)), "", ctx.limit("duplicate_serials"),
                diagnosis=DIAG_OFFLINE)


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
    discharge enabled. If any of those fails the main contactor is left as it is."""
    bench = ctx.bench
    status = bms_read(bench, "status")
    alarms = sorted(status.alarms)
    shortfall = float(status.installed_capacity_ah or 0.0) - float(status.online_capacity_ah or 0.0)
    normal = [
        ctx.measure("bms_alarms", len(alarms), "", ctx.limit("bms_alarms"),
                    diagnosis=DIAG_STARTUP + (f" ({', '.join(alarms)})" if alarms else "")),
        ctx.measure("capacity_not_counted", shortfall, "Ah", ctx.limit("capacity_not_counted"),
                    diagnosis=DIAG_REDUCED_CAPACITY),
        ctx.measure("charge_enable", bool(status.charge_enable), "", ctx.limit("charge_enable"),
                    diagnosis=DIAG_STARTUP),
        ctx.measure("discharge_enable", bool(status.discharge_enable), "", ctx.limit("discharge_enable"),
                    diagnosis=DIAG_STARTUP)]
    if any(m.verdict in ("fail", "error") for m in normal):
        ctx.measure("main_closed", contactor_closed(bench, "main"), "",
                    diagnosis="main disconnect not closed: BMS status not normal")
        return
    if not contactor_closed(bench, "main"):
        bench.set_contactor("main", True)
        bench.clock.wait(float(ctx.param("settle_s", 1.0)))
    ctx.measure("main_closed", contactor_closed(bench, "main"), "", ctx.limit("main_closed"),
                diagnosis=DIAG_CONTACTOR)
    if "load" in bench.instruments:
        ctx.measure("bank_voltage", bench.load.measure_voltage(), "V", ctx.limit("bank_voltage"),
                    diagnosis=DIAG_OFFLINE)


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
    bench = ctx.bench
    bench.clock.wait(float(ctx.param("observe_s", 3.0)))
    bms = bench.bms
    ctx.measure("keepalive_on", bool(getattr(bms, "heartbeat_on", True)), "", ctx.limit("keepalive_on"),
                diagnosis=DIAG_STARTUP)
    ctx.measure("bms_silence", bms.seconds_since_heard(), "s", ctx.limit("bms_silence"), diagnosis=DIAG_STARTUP)
    ctx.measure("bms_identity", bms.identity(), "")
    limits = bms_read(bench, "limits")
    ctx.measure("charge_current_limit", limits.charge_current_a, "A", ctx.limit("charge_current_limit"),
                diagnosis=DIAG_REDUCED_CAPACITY)
    ctx.measure("discharge_current_limit", limits.discharge_current_a, "A",
                ctx.limit("discharge_current_limit"), diagnosis=DIAG_REDUCED_CAPACITY)
    ctx.measure("charge_voltage_limit", limits.charge_voltage_v, "V", ctx.limit("charge_voltage_limit"),
                diagnosis=DIAG_IDENTITY)
    ctx.measure("discharge_voltage_limit", limits.discharge_voltage_v, "V",
                ctx.limit("discharge_voltage_limit"), diagnosis=DIAG_IDENTITY)


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
                                diagnosis=f"{DIAG_STARTUP}; {DIAG_MISMATCH}")
                if m.verdict in ("fail", "error"):
                    left_open.append(branch)
                    continue
            bench.set_contactor(branch, True)
            connected.append(branch)
            bench.clock.wait(gap)
        volts = bench.module_voltages()
        group_v = _branch_voltages(volts, connected or members)
        ctx.measure(f"group_voltage_{group}", sum(group_v.values()) / len(group_v), "V",
                    ctx.limit("group_voltage"), diagnosis=DIAG_MISMATCH)
    ctx.measure("branches_left_open", len(left_open), "", ctx.limit("branches_left_open"),
                diagnosis=f"{DIAG_STARTUP}" + (f" ({', '.join(left_open)})" if left_open else ""))


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
    m = ctx.measure("group_spread", spread_v, "V", ctx.limit("group_spread"),
                    diagnosis=f"{DIAG_STARTUP}; {DIAG_MISMATCH}")
    if m.verdict in ("fail", "error"):
        ctx.measure("main_closed", False, "", diagnosis="series connection not made: groups unbalanced")
        return
    bench.set_contactor("main", True)
    bench.clock.wait(float(ctx.param("settle_s", 1.0)))
    string_v = bench.load.measure_voltage()
    ctx.measure("series_voltage", string_v, "V", ctx.limit("series_voltage"))
    ctx.measure("series_voltage_error", abs(string_v - sum(means.values())), "V",
                ctx.limit("series_voltage_error"), diagnosis=DIAG_POLARITY)


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
    lengths, sections = [], []
    for p in range(1, dut.parallel + 1):
        for s in range(1, dut.series + 1):
            override = ic.leads.get(f"s{s}p{p}")
            lengths.append(override.length_m if override and override.length_m is not None else ic.lead.length_m)
            sections.append(override.cross_section_mm2 if override and override.cross_section_mm2 is not None
                            else ic.lead.cross_section_mm2)
    ctx.measure("lead_length_spread", max(lengths) - min(lengths), "m", ctx.limit("lead_length_spread"),
                diagnosis=DIAG_SHARING_LAYOUT)
    ctx.measure("lead_section_spread", max(sections) - min(sections), "mm2", ctx.limit("lead_section_spread"),
                diagnosis=DIAG_SHARING_LAYOUT)
    ctx.measure("diagonal_takeoff", dut.takeoff == "diagonal", "", ctx.limit("diagonal_takeoff"),
                diagnosis=DIAG_SHARING_LAYOUT)
    rated = dut.parallel * ctx.dut.module_type.bms.limits.discharge_current_a
    ctx.measure("rated_bank_current", rated, "A")
    ctx.measure("bus_kind", ic.bus.kind, "")
    ctx.measure("busbar_where_needed", ic.bus.kind == "busbar" or rated <= float(ctx.param("busbar_above", 200.0)),
                "", ctx.limit("busbar_where_needed"), diagnosis=DIAG_BUSBAR)
