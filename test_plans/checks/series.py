"""Checks of series strings: what 000 and 001 ask before and while modules are stacked in series.

000 (How to Build a 51.2V 400Ah System): "Standard 12V BMS MOSFETs break down above 30-40V. In a
4S string, full pack voltage (51.2V) appears across each switch during a fault disconnect. Use
only batteries with a BMS rated for series-stack operation -- our units carry a >= 60V Vds MOSFET
array specifically for this." (One firmware across the string: ``firmware_consistency`` in
:mod:`test_plans.checks.bms_comm`.)

- ``series_mosfet_rating``: the static rule -- the BMS switch's Vds rating (the plan's
  ``vds_rating``, else the DUT's module data) against 000's 60 V and against the string's
  highest voltage (series x cells x cell over-voltage threshold).
- ``series_mosfet_stress``: the dynamic test -- under load, one module's BMS is forced open (a
  bench service command over CAN, ``bench.bms_service.force_disconnect``; a real bench uses the BMS
  vendor's service tool) and the digitiser across that module's switch (``dmm_vds``) captures the
  turn-off: peak and settled Vds against the rating x derating (limits in %), and the string
  current after the disconnect (an open switch blocks; a MOSFET that avalanched to death fails
  short and keeps carrying the load).

- ``series_match`` (001: "Before wiring batteries in series, ensure all batteries have the same
  voltage and capacity"; "each battery in a series string should start at a similar state of
  charge"): before a string is connected, each module's open-circuit voltage, SOC and capacity,
  and their spread within the string.
- ``string_match`` (001: "build identical series strings first, then connect those strings in
  parallel ... same number of batteries, same chemistry, same capacity"): string against string
  -- open-circuit voltage, capacity (its weakest module's), module count.

- ``group_assembly`` and ``group_voltage_match`` (000's 4S4P assembly order): the parallel groups
  built first, each module joining its group only within ``delta_v``; then the groups' voltages
  balanced before the series connection is made, and the string's voltage the sum of the groups'.

Checks use roles only, wait only on ``bench.clock``, take limits from the plan and give a failed
measurement the cause 000 names (and 004's troubleshooting row where one fits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bankmodel.channels import input_text
from bankmodel.positions import natural_key, position
from instruments.roles import Waveform
from test_plans.checks import Measure, Param, StepContext, check
from test_plans.checks.bench_helpers import (branch_contactors, branches_opened, can_open_modules, connect_bank,
                                             module_order, outputs_off)
from test_plans.checks.bms_helpers import module_reports
from test_plans.checks.branches import branch_voltages, by_series_position, series_groups, standout
from test_plans.checks.diagnosis import diagnose, outlier
from test_plans.checks.evidence import names
from test_plans.checks.traces import waveform_columns


DIAG_FET = ("BMS MOSFETs not rated for series-stack operation (000: standard 12 V BMS MOSFETs break "
            "down above 30-40 V; in a 4S string full pack voltage appears across each switch at a "
            "fault disconnect; use a BMS rated >= 60 V Vds) -- check the module's BMS Vds rating "
            "against the string voltage")
DIAG_FET_SHORT = ("BMS switch did not block after the disconnect: MOSFETs failed short in avalanche "
                  "(000: 12 V BMS MOSFETs break down above 30-40 V when a series string opens) -- "
                  "replace the module's BMS with one rated for series stacks (>= 60 V Vds)")
DIAG_NOT_OPENED = ("the module's BMS did not open on the service command -- check the service tool, "
                   "the module index and the BMS's service mode")


# ================================================================== bench helpers
def switch_module(bench: Any, dmm: str) -> str:
    """The module whose BMS switch the DMM ``dmm`` is wired across (``sXpY.P-`` to ``sXpY.B-``)."""
    wired = bench.channels.dmm.get(dmm)
    plus, minus = (wired.plus, wired.minus) if wired is not None and wired.kind == "voltage" else ("", "")
    module, _, side = plus.partition(".")
    if {side, minus.partition(".")[2]} != {"P-", "B-"} or minus.partition(".")[0] != module:
        raise LookupError(f"{dmm} is not wired across a module's BMS switch (P- to B-) in the channel "
                          f"map ({input_text(wired) if wired is not None else 'absent'})")
    return module


def vds_rating(ctx: StepContext) -> float:
    """The BMS switch's Vds rating (V): the plan's ``vds_rating``, else the DUT's module data."""
    given = ctx.params.get("vds_rating")
    if given is not None:
        return float(given)
    if ctx.dut is None:
        raise KeyError(f"step '{ctx.step_name}' needs parameter 'vds_rating' (no DUT data)")
    return float(ctx.dut.module_type.bms.fet.vds_rating_v)


def string_max_voltage(ctx: StepContext) -> float:
    """The highest voltage a healthy string presents: the plan's ``string_max_voltage``, else
    series x cells x the cell over-voltage threshold of the DUT's module data."""
    given = ctx.params.get("string_max_voltage")
    if given is not None:
        return float(given)
    dut = ctx.dut
    module = dut.module_type
    return dut.dut.series * module.cells_in_series * module.bms.protections.cell_overvoltage.threshold_v


def _settled(samples: list[float], fraction: float) -> float:
    tail = samples[-max(int(len(samples) * fraction), 1):]
    return sum(tail) / len(tail)


# ================================================================== MOSFET rating: static
@check("series_mosfet_rating",
       params={"vds_rating": Param("V", doc="default: the DUT's module data"),
               "string_max_voltage": Param("V", doc="default: series x cells x cell OVP threshold")},
       measures={"series_count": Measure(""),
                 "string_max_voltage": Measure("V"),
                 "vds_rating": Measure("V", required=True),
                 "vds_rating_ratio": Measure("", required=True, doc="rating / string_max_voltage")},
       needs=())
def series_mosfet_rating(ctx: StepContext) -> None:
    """000's design rule, before anything is stacked: the BMS switch's Vds rating (``vds_rating``)
    at least 000's 60 V, and its ratio to the string's highest voltage (``vds_rating_ratio`` =
    rating / (series x cells x cell OVP threshold); the plan's limit is the margin). The rating
    comes from the plan (a datasheet figure) or the DUT's module data; nothing is energised."""
    rating = vds_rating(ctx)
    highest = string_max_voltage(ctx)
    if ctx.dut is not None:
        ctx.measure("series_count", ctx.dut.dut.series, "")
    ctx.measure("string_max_voltage", highest, "V")
    ctx.measure("vds_rating", rating, "V", ctx.limit("vds_rating"), diagnosis=DIAG_FET)
    ctx.measure("vds_rating_ratio", rating / highest if highest else math.nan, "",
                ctx.limit("vds_rating_ratio"),
                diagnosis=DIAG_FET + f" ({rating:g} V against a {highest:.4g} V string)")


# ================================================================== MOSFET stress: dynamic
@check("series_mosfet_stress",
       params={"dmm": Param(kind="text", doc="digitiser across the switch, default dmm_vds", instrument="digitiser",
                            default="dmm_vds"),
               "open_group": Param(kind="flag", doc="open every module of the series position"),
               "vds_rating": Param("V", doc="default: the DUT's module data"),
               "load_current": Param("A", setpoint="load.current"),
               "interval": Param("s", doc="digitiser sample interval"),
               "samples": Param(kind="count"),
               "rest_s": Param("s"),
               "load_s": Param("s"),
               "block_s": Param("s"),
               "settled_fraction": Param(kind="number", doc="last share of the capture averaged, 0..1"),
               "open_threshold": Param("V", doc="a peak below this: the switch did not open"),
               "recover_s": Param("s")},
       measures={"string_voltage_rest": Measure("V"),
                 "vds_rating": Measure("V"),
                 "load_current_before": Measure("A"),
                 "string_voltage_load": Measure("V"),
                 "switch_module": Measure(""),
                 "peak_vds": Measure("V"),
                 "settled_vds": Measure("V"),
                 "peak_vds_utilisation": Measure("%", required=True),
                 "settled_vds_utilisation": Measure("%", required=True),
                 "blocked_current": Measure("A", required=True)},
       needs=("actuator", "bms", "bms_service", "digitiser"), uses=("load", "supply"))
def series_mosfet_stress(ctx: StepContext) -> None:
    """000: a fault disconnect in a series string puts the string's voltage across one BMS switch.

    With the string at ``load_current`` for ``load_s``, the module whose switch the digitiser
    (``dmm``, default ``dmm_vds``) is across is forced open by a BMS service command; the
    digitiser captures ``samples`` at ``interval``. Measured: ``peak_vds`` and ``settled_vds``
    (mean of the last ``settled_fraction`` of the capture) and each as % of the switch's Vds
    rating (``peak_vds_utilisation``, ``settled_vds_utilisation``: the plan's limits are the
    derating), and ``blocked_current``, the load current ``block_s`` after the capture: an open
    switch carries nothing; a MOSFET that avalanched and failed short keeps carrying the load.
    The switch is released and the load switched off whatever happens. The waveform (V) is kept
    in ``ctx.extras["waveforms"]``.
    """
    bench = ctx.bench
    dmm_name = str(ctx.param("dmm", "dmm_vds"))
    module = switch_module(bench, dmm_name)
    order = module_order(bench)
    index = order.index(module)
    series_position = position(module)[0]
    opened_indices = ([k for k, m in enumerate(order) if position(m)[0] == series_position]
                      if bool(ctx.param("open_group", False)) else [index])
    rating = vds_rating(ctx)
    amps = float(ctx.param("load_current"))
    interval = float(ctx.param("interval", 20e-6))
    count = int(ctx.param("samples", 10000))
    outputs_off(bench)
    if bench.channels.actuator:
        connect_bank(bench)
    bench.clock.wait(float(ctx.param("rest_s", 1.0)))
    ctx.measure("string_voltage_rest", bench.load.measure_voltage(), "V")
    ctx.measure("vds_rating", rating, "V")
    forced = False
    try:
        bench.load.set_current(amps)
        bench.load.input(True)
        bench.clock.wait(float(ctx.param("load_s", 5.0)))
        ctx.measure("load_current_before", bench.load.measure_current(), "A")
        ctx.measure("string_voltage_load", bench.load.measure_voltage(), "V")
        dmm = bench.dmm(dmm_name)
        dmm.arm_digitise(interval, count)
        t_open = bench.clock.now()
        forced = True
        for k in opened_indices:  # all at the same bench instant: the clock moves only in wait()
            bench.bms_service.force_disconnect(k, True)
        bench.clock.wait(interval * count, resolution_s=interval)
        raw = dmm.fetch_waveform()
        bench.clock.wait(float(ctx.param("block_s", 0.5)))
        blocked = abs(bench.load.measure_current())
    finally:
        bench.load.input(False)
        if forced:
            for k in opened_indices:
                bench.bms_service.force_disconnect(k, False)
    wave = Waveform(raw.interval_s, list(raw.samples), "V", t0_s=t_open)
    ctx.extras.setdefault("waveforms", {})[f"vds_{module}"] = wave
    magnitudes = [abs(v) for v in raw.samples]
    peak = max(magnitudes) if magnitudes else math.nan
    settled = _settled(magnitudes, float(ctx.param("settled_fraction", 0.2))) if magnitudes else math.nan
    ctx.measure("switch_module", module, "")
    ctx.measure("peak_vds", peak, "V")
    ctx.measure("settled_vds", settled, "V")
    opened = peak >= float(ctx.param("open_threshold", 1.0))
    ctx.measure("peak_vds_utilisation", peak / rating * 100.0, "%", ctx.limit("peak_vds_utilisation"),
                diagnosis=DIAG_FET + f" (peak {peak:.4g} V across {module}'s {rating:g} V switch)")
    ctx.measure("settled_vds_utilisation", settled / rating * 100.0, "%", ctx.limit("settled_vds_utilisation"),
                diagnosis=DIAG_FET + f" (settled {settled:.4g} V across {module}'s {rating:g} V switch)")
    ctx.measure("blocked_current", blocked, "A", ctx.limit("blocked_current"),
                diagnosis=(DIAG_FET_SHORT if opened else DIAG_NOT_OPENED)
                + f" ({blocked:.4g} A through {module} after the disconnect; Vds peaked at {peak:.4g} V, "
                  f"then {settled:.4g} V)")
    _trace_vds(ctx, module, wave, rating, amps)
    bench.clock.wait(float(ctx.param("recover_s", 2.0)))


def _percent_of(rating: float, pct: float | None) -> float | None:
    return None if pct is None else rating * pct / 100.0


def _trace_vds(ctx: StepContext, module: str, wave: Waveform, rating: float, amps: float) -> None:
    """The turn-off capture for the report, against the switch's rating and the plan's derated
    limit (rating x ``settled_vds_utilisation``): the spike and the plateau the string leaves
    across the open switch. The peak limit is drawn too where the plan derates it."""
    derated = _percent_of(rating, ctx.limit("settled_vds_utilisation").high)
    peak_limit = _percent_of(rating, ctx.limit("peak_vds_utilisation").high)
    ctx.measure.trace(f"vds_{module}", "vds", waveform_columns(wave, "vds"), units={"t": "s", "vds": "V"},
                      marks={"rating": rating, "derated_limit": derated,
                             "peak_limit": peak_limit if peak_limit != rating else None},
                      title=f"Vds across {module}'s BMS switch, forced open at {amps:g} A")


# ================================================================== series matching (001)
@dataclass
class _Open:
    """What the modules are before the strings are connected: open-circuit voltage (scanner,
    branches open), SOC and SoH (BMS, SunSpec 805), capacity (SoH x the module's nameplate)."""

    ocv: dict[str, float]
    soc: dict[str, float | None]
    capacity: dict[str, float | None]
    soh: dict[str, float | None]
    nameplate: float | None
    opened: int


def strings_of(modules: list[str]) -> dict[str, list[str]]:
    """Modules by string ``pY`` (the modules ``s*pY``, bottom of the string first)."""
    out: dict[str, list[str]] = {}
    for module in sorted(modules, key=lambda m: position(m)):
        out.setdefault(f"p{position(module)[1]}", []).append(module)
    return dict(sorted(out.items(), key=lambda kv: natural_key(kv[0])))


def _module_capacity(ctx: StepContext) -> float | None:
    given = ctx.params.get("module_capacity")
    if given is not None:
        return float(given)
    return float(ctx.dut.module_type.capacity_ah) if ctx.dut is not None else None


def _read_open(ctx: StepContext) -> _Open:
    """Open every branch contactor (load and supply off), rest ``rest_s``, read the modules,
    close again what was closed (one every ``close_gap_s``)."""
    bench = ctx.bench
    with branches_opened(bench, float(ctx.param("close_gap_s", 0.5))) as opened:
        bench.clock.wait(float(ctx.param("rest_s", 2.0)))
        ocv = bench.module_voltages()
        reports = module_reports(bench) or {}
    nameplate = _module_capacity(ctx)

    def pct(module: str, attr: str) -> float | None:
        report = reports.get(module)
        value = getattr(report, attr) if report is not None else None
        return None if value is None or math.isnan(value) else float(value)

    soc = {m: pct(m, "soc_pct") for m in ocv}
    soh = {m: pct(m, "soh_pct") for m in ocv}
    capacity = {m: (soh[m] / 100.0 * nameplate if soh[m] is not None and nameplate is not None else None)
                for m in ocv}
    return _Open(ocv, soc, capacity, soh, nameplate, len(opened))


def _spread(values: dict[str, float | None]) -> float | None:
    known = [v for v in values.values() if v is not None]
    if len(known) != len(values):
        return None  # a module the BMS says nothing of: an ERROR, not a pass
    return max(known) - min(known) if known else None


def _module_evidence(module: str, seen: _Open, members: list[str]) -> str:
    others = [m for m in members if m != module]

    def against(values: dict[str, float | None], fmt: str, unit: str) -> str:
        own = values.get(module)
        if own is None:
            return "none reported"
        peers = [values[m] for m in others if values.get(m) is not None]
        text = f"{own:{fmt}} {unit}"
        return text + (f" against {sum(peers) / len(peers):{fmt}} {unit}" if peers else "")  # type: ignore[arg-type]

    return (f"open-circuit {against(seen.ocv, '.3f', 'V')}, SOC {against(seen.soc, '.1f', '%')}, "
            f"capacity {against(seen.capacity, '.1f', 'Ah')}")


@check("series_match",
       params={"string": Param(kind="text", doc="the string to match, e.g. p2 (default: every string)"),
               "rest_s": Param("s", doc="branches open before the reading"),
               "close_gap_s": Param("s", doc="between re-closing the branch contactors"),
               "module_capacity": Param("Ah", doc="one module's nameplate; default the DUT's")},
       measures={"ocv_{module}": Measure("V", limit="module_ocv"),
                 "soc_{module}": Measure("%"),
                 "capacity_{module}": Measure("Ah", doc="BMS SoH x the nameplate"),
                 "ocv_spread": Measure("V", required=True, doc="within a string, the worst string"),
                 "soc_spread": Measure("%", required=True),
                 "capacity_spread": Measure("Ah", required=True),
                 "branches_opened": Measure("")},
       needs=("actuator", "module_reports", "scanner"), uses=("load", "supply"))
def series_match(ctx: StepContext) -> None:
    """001's pre-check for a series string: "Before wiring batteries in series, ensure all
    batteries have the same voltage and capacity"; "each battery in a series string should
    start at a similar state of charge" (one that reaches cut-off first disconnects the string).

    Before the string is connected -- load and supply off, every branch contactor opened, so no
    current flows through a string -- and after ``rest_s``, each module of the string (``string``,
    default every string of the bank) is read: its open-circuit voltage (scanner, its terminals),
    its SOC and its capacity (the BMS's SoH, SunSpec 805, times the module's nameplate -- the
    plan's ``module_capacity`` or the DUT record's). The spreads within the string (``ocv_spread``,
    ``soc_spread``, ``capacity_spread``; the worst string) are judged against the plan; a failed
    one names the module farthest from its string with all three figures (series_mismatch row).
    The contactors opened are closed again as they were found. A module the BMS gives no SOC or
    SoH for leaves that spread an ERROR; a bank without contactors whose modules sit in
    parallel cannot be read open (ERROR)."""
    bench = ctx.bench
    if not can_open_modules(bench):
        ctx.measure("ocv_spread", None, "V", ctx.limit("ocv_spread"),
                    diagnosis="the strings cannot be disconnected (no actuator role): not open-circuit voltages")
        return
    seen = _read_open(ctx)
    ctx.measure("branches_opened", seen.opened, "")
    strings = strings_of(list(seen.ocv))
    wanted = ctx.params.get("string")
    if wanted is not None:
        if str(wanted) not in strings:
            raise ValueError(f"step '{ctx.step_name}': string '{wanted}' is not one of {', '.join(strings)}")
        strings = {str(wanted): strings[str(wanted)]}
    for members in strings.values():
        for module in members:
            ctx.measure(f"ocv_{module}", seen.ocv[module], "V", ctx.limit("module_ocv"),
                        diagnosis=diagnose("series_mismatch", module, _module_evidence(module, seen, members)))
            ctx.measure(f"soc_{module}", seen.soc[module], "%")
            ctx.measure(f"capacity_{module}", seen.capacity[module], "Ah")
    for name, values, unit in (("ocv_spread", seen.ocv, "V"), ("soc_spread", seen.soc, "%"),
                               ("capacity_spread", seen.capacity, "Ah")):
        spreads = {p: _spread({m: values[m] for m in members}) for p, members in strings.items()}
        unknown = [p for p, v in spreads.items() if v is None]
        worst = unknown[0] if unknown else max(spreads, key=lambda p: (spreads[p], natural_key(p)))
        worst_value, worst_members = spreads[worst], strings[worst]
        if worst_value is None:
            missing = [m for m in worst_members if values[m] is None]
            diagnosis = diagnose("module_offline", ", ".join(missing), f"the BMS reports no {name[:-7]} for it")
        else:
            odd = outlier({m: float(values[m]) for m in worst_members})  # type: ignore[arg-type]
            subject = odd.name if odd is not None else worst
            diagnosis = diagnose("series_mismatch", subject, _module_evidence(subject, seen, worst_members))
        ctx.measure(name, worst_value, unit, ctx.limit(name), diagnosis=diagnosis)


@check("string_match",
       params={"rest_s": Param("s", doc="branches open before the reading"),
               "close_gap_s": Param("s", doc="between re-closing the branch contactors"),
               "module_capacity": Param("Ah", doc="one module's nameplate; default the DUT's")},
       measures={"string_voltage_{string}": Measure("V", doc="sum of its modules' open-circuit voltages"),
                 "string_capacity_{string}": Measure("Ah", doc="its weakest module's capacity"),
                 "string_modules_{string}": Measure("", doc="modules the BMS reports in it"),
                 "string_voltage_spread": Measure("V", required=True),
                 "string_capacity_spread": Measure("Ah", required=True),
                 "module_count_spread": Measure("", required=True)},
       needs=("actuator", "module_reports", "scanner"), uses=("load", "supply"))
def string_match(ctx: StepContext) -> None:
    """001: "build identical series strings first, then connect those strings in parallel ...
    Each series string should use the same number of batteries, same chemistry, same capacity".

    Before the strings are paralleled -- every branch (string) contactor open, load and supply
    off -- and after ``rest_s``: each string's open-circuit voltage (the sum of its modules',
    scanner), its capacity (its weakest module's: one weak battery limits the whole string, 001;
    BMS SoH x nameplate) and its module count (modules the BMS reports in it, SunSpec 805; the
    scanner's without SunSpec). Judged: the spreads between strings (``string_voltage_spread``,
    ``string_capacity_spread``, ``module_count_spread``); a failed one names the string farthest
    from the others and the module that makes it so (unequal_strings row). The contactors are
    closed again as they were found."""
    bench = ctx.bench
    if not can_open_modules(bench):
        ctx.measure("string_voltage_spread", None, "V", ctx.limit("string_voltage_spread"),
                    diagnosis="the strings cannot be disconnected (no actuator role): not open-circuit voltages")
        return
    seen = _read_open(ctx)
    reports = module_reports(bench)
    strings = strings_of(list(seen.ocv))
    volts = {p: sum(seen.ocv[m] for m in members) for p, members in strings.items()}
    weakest = {p: min(members, key=lambda m: (seen.capacity[m] if seen.capacity[m] is not None else math.inf))
               for p, members in strings.items()}
    capacity = {p: seen.capacity[weakest[p]] for p in strings}
    counted = strings_of(list(reports)) if reports else strings
    count = {p: len(counted.get(p, [])) for p in strings}
    for p in strings:
        ctx.measure(f"string_voltage_{p}", volts[p], "V")
        ctx.measure(f"string_capacity_{p}", capacity[p], "Ah")
        ctx.measure(f"string_modules_{p}", count[p], "")

    def odd_module(p: str) -> tuple[str, float]:
        """The module of string p farthest from its string-mates (V off their mean)."""
        members = strings[p]
        delta = {m: seen.ocv[m] - sum(seen.ocv[o] for o in members if o != m) / (len(members) - 1)
                 for m in members} if len(members) > 1 else {members[0]: 0.0}
        worst = max(members, key=lambda m: (abs(delta[m]), natural_key(m)))
        return worst, delta[worst]

    # the odd string: the one whose own modules disagree most (with two strings each is as far
    # from the mean as the other; the string with a module unlike its string-mates is the odd one)
    inner = {p: abs(odd_module(p)[1]) for p in strings}
    mean_v = sum(volts.values()) / len(volts)
    odd = max(strings, key=lambda p: (inner[p], abs(volts[p] - mean_v), natural_key(p)))
    module, delta = odd_module(odd)
    voltage_diagnosis = diagnose("unequal_strings", odd,
                                 f"open-circuit {volts[odd]:.3f} V against {mean_v:.3f} V on average; its module "
                                 f"{module} is {delta * 1e3:+.0f} mV from its string-mates")
    ctx.measure("string_voltage_spread", max(volts.values()) - min(volts.values()), "V",
                ctx.limit("string_voltage_spread"), diagnosis=voltage_diagnosis)
    known = {p: v for p, v in capacity.items() if v is not None}
    if len(known) == len(capacity):
        low = min(known, key=lambda p: (known[p], natural_key(p)))
        others = [v for p, v in known.items() if p != low]
        soh = seen.soh.get(weakest[low])
        capacity_diagnosis = diagnose("unequal_strings", low,
                                      f"{known[low]:.1f} Ah against {max(others) if others else known[low]:.1f} Ah: "
                                      f"its weakest module {weakest[low]} at SoH "
                                      f"{soh if soh is not None else float('nan'):.1f} % limits it")
        spread_ah: float | None = max(known.values()) - min(known.values())
    else:
        missing = [m for p in strings for m in strings[p] if seen.capacity[m] is None]
        capacity_diagnosis = diagnose("module_offline", ", ".join(missing), "the BMS reports no SoH for it")
        spread_ah = None
    ctx.measure("string_capacity_spread", spread_ah, "Ah", ctx.limit("string_capacity_spread"),
                diagnosis=capacity_diagnosis)
    few = min(count, key=lambda p: (count[p], natural_key(p)))
    ctx.measure("module_count_spread", max(count.values()) - min(count.values()), "",
                ctx.limit("module_count_spread"),
                diagnosis=diagnose("unequal_strings", few, f"{count[few]} modules against "
                                   f"{max(count.values())} in the longest string"))


# ================================================================== 4S4P assembly order (000)
def _groups_of(bench: Any) -> dict[str, list[str]]:
    return series_groups(branch_contactors(bench))


@check("group_assembly",
       params={"rest_s": Param("s"),
               "close_gap_s": Param("s", doc="after closing each branch")},
       measures={"delta_v_{branch}": Measure("V", limit="delta_v", required=True),
                 "group_voltage_{group}": Measure("V", limit="group_voltage"),
                 "branches_left_open": Measure("", required=True)},
       needs=("actuator", "scanner"), uses=("load", "supply"))
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
            branch_v = branch_voltages(volts, members)
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
        group_v = branch_voltages(volts, connected or members)
        group_mean = sum(group_v.values()) / len(group_v)
        ctx.measure(f"group_voltage_{group}", group_mean, "V", ctx.limit("group_voltage"),
                    diagnosis=diagnose("series_mismatch", group, f"group at {group_mean:.3f} V"))
    ctx.measure("branches_left_open", len(left_open), "", ctx.limit("branches_left_open"),
                diagnosis=diagnose("startup_alarm", names(left_open) or "bank",
                                   "too far in voltage from its group to be connected"))


@check("group_voltage_match",
       params={"settle_s": Param("s")},
       measures={"group_voltage_{group}": Measure("V"),
                 "group_spread": Measure("V", required=True),
                 "main_closed": Measure(""),
                 "series_voltage": Measure("V"),
                 "series_voltage_error": Measure("V", required=True, doc="string minus sum of groups")},
       needs=("actuator", "scanner"), uses=("load", "supply"))
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
