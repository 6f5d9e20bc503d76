"""Checks of series strings: what 000 asks before modules are stacked in series.

000 (How to Build a 51.2V 400Ah System): "Standard 12V BMS MOSFETs break down above 30-40V. In a
4S string, full pack voltage (51.2V) appears across each switch during a fault disconnect. Use
only batteries with a BMS rated for series-stack operation -- our units carry a >= 60V Vds MOSFET
array specifically for this. Never mix BMS firmware versions across a series string." 004 asks
for the same firmware in a parallel bank.

- ``firmware_consistency``: the master's firmware (CAN 0x35F carries major.minor only; SunSpec
  model 1 ``Vr`` the full version) against the plan, and every module admitted by the master. A
  module's own firmware is not on either bus (SunSpec 805 has no version point): the master
  compares it and leaves a module with another version out of the bank, so a module not
  admitted although its voltage is within the admission window of its peers -- and capacity not
  counted -- is how a mixed firmware shows.
- ``series_mosfet_rating``: the static rule -- the BMS switch's Vds rating (the plan's
  ``vds_rating``, else the DUT's module data) against 000's 60 V and against the string's
  highest voltage (series x cells x cell over-voltage threshold).
- ``series_mosfet_stress``: the dynamic test -- under load, one module's BMS is forced open (a
  bench service command over CAN, ``bench.bms.force_disconnect``; a real bench uses the BMS
  vendor's service tool) and the digitiser across that module's switch (``dmm_vds``) captures the
  turn-off: peak and settled Vds against the rating x derating (limits in %), and the string
  current after the disconnect (an open switch blocks; a MOSFET that avalanched to death fails
  short and keeps carrying the load).

Checks use roles only, wait only on ``bench.clock``, take limits from the plan and give a failed
measurement the cause 000 names (and 004's troubleshooting row where one fits).
"""

from __future__ import annotations

import math
from typing import Any

from instruments.roles import Waveform
from test_plans.checks import Measure, Param, StepContext, check
from test_plans.checks.basic import DIAG_REDUCED_CAPACITY, _natural, waveform_columns
from test_plans.checks.parallel import (ModuleReport, connect_bank, module_position, module_reports,
                                        outputs_off)

DIAG_FET = ("BMS MOSFETs not rated for series-stack operation (000: standard 12 V BMS MOSFETs break "
            "down above 30-40 V; in a 4S string full pack voltage appears across each switch at a "
            "fault disconnect; use a BMS rated >= 60 V Vds) -- check the module's BMS Vds rating "
            "against the string voltage")
DIAG_FET_SHORT = ("BMS switch did not block after the disconnect: MOSFETs failed short in avalanche "
                  "(000: 12 V BMS MOSFETs break down above 30-40 V when a series string opens) -- "
                  "replace the module's BMS with one rated for series stacks (>= 60 V Vds)")
DIAG_NOT_OPENED = ("the module's BMS did not open on the service command -- check the service tool, "
                   "the module index and the BMS's service mode")
DIAG_FIRMWARE = ("BMS firmware differs (000: never mix BMS firmware versions across a series string; "
                 "004: inverter reports reduced capacity -> module not accepted by BMS: check "
                 "CAN/RS485 order, firmware, protocol) -- check every module's firmware version")


# ================================================================== bench helpers
def module_order(bench: Any) -> list[str]:
    """Module positions in bank order (series position first, then parallel index): the order
    of the SunSpec 805 models and the index the bench service commands use."""
    modules = list(bench.channels.module_voltage_channels())
    return sorted(modules, key=lambda m: module_position(m))


def switch_module(bench: Any, dmm: str) -> str:
    """The module whose BMS switch the DMM ``dmm`` is wired across (``sXpY.P-`` to ``sXpY.B-``)."""
    wired = bench.channels.dmm.get(dmm) or {}
    plus, minus = str(wired.get("plus", "")), str(wired.get("minus", ""))
    module, _, side = plus.partition(".")
    if wired.get("kind") != "voltage" or {side, minus.partition(".")[2]} != {"P-", "B-"} \
            or minus.partition(".")[0] != module:
        raise LookupError(f"{dmm} is not wired across a module's BMS switch (P- to B-) in the channel "
                          f"map ({wired or 'absent'})")
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


# ================================================================== firmware consistency
def _not_admitted(bench: Any, reports: dict[str, ModuleReport]) -> dict[str, list[str]]:
    """SunSpec 804 strings the master has not enabled -> their modules."""
    client = bench.sunspec
    out: dict[str, list[str]] = {}
    for ref in client.refs(804):
        block = client.read_model(ref)
        if "STRING_ENABLED" in block.symbols("St"):
            continue
        p = int(block.value("Idx"))
        out[f"p{p}"] = [m for m in reports if module_position(m)[1] == p]
    return out


def _delta_to_peers(module: str, reports: dict[str, ModuleReport], exclude: set[str]) -> float:
    s = module_position(module)[0]
    peers = [r.volts for m, r in reports.items()
             if m != module and m not in exclude and module_position(m)[0] == s and r.volts is not None]
    own = reports[module].volts
    if own is None or not peers:
        return math.nan
    return own - sum(peers) / len(peers)


@check("firmware_consistency",
       params={"settle_s": Param("s"),
               "admission_delta_v": Param("V", doc="a held-back module this close to its peers points at firmware")},
       measures={"bms_firmware": Measure("", doc="CAN 0x35F major.minor"),
                 "master_firmware": Measure("", doc="SunSpec model 1 Vr"),
                 "as_built_versions": Measure("", required=True),
                 "capacity_not_counted": Measure("Ah"),
                 "delta_v_{module}": Measure("V", doc="a held-back module against its series-position peers"),
                 "strings_not_admitted": Measure("", required=True)})
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
    if getattr(bench, "sunspec", None) is not None:
        ctx.measure("master_firmware", bench.sunspec.firmware(), "", ctx.limit("master_firmware"),
                    diagnosis=DIAG_FIRMWARE)
    if dut is not None:
        positions = [f"s{s}p{p}" for s in range(1, dut.dut.series + 1) for p in range(1, dut.dut.parallel + 1)]
        recorded = {pos: (dut.dut.modules[pos].firmware if pos in dut.dut.modules
                          and dut.dut.modules[pos].firmware else dut.firmware.version) for pos in positions}
        versions = sorted(set(recorded.values()))
        ctx.measure("as_built_versions", len(versions), "", ctx.limit("as_built_versions"),
                    diagnosis=DIAG_FIRMWARE + f" (record: {', '.join(versions)})")
    status = bms.status()
    online = status.online_capacity_ah
    if getattr(bench, "sunspec", None) is not None:
        online = bench.sunspec.status().online_capacity_ah
    installed = status.installed_capacity_ah
    if installed is not None and online is not None:
        ctx.measure("capacity_not_counted", float(installed) - float(online), "Ah",
                    ctx.limit("capacity_not_counted"), diagnosis=DIAG_FIRMWARE + "; " + DIAG_REDUCED_CAPACITY)
    reports = module_reports(bench)
    if reports is None:
        ctx.measure("strings_not_admitted", None, "", ctx.limit("strings_not_admitted"),
                    diagnosis="no per-module BMS data: the station has no SunSpec (Modbus) bus")
        return
    held = _not_admitted(bench, reports)
    window = float(ctx.param("admission_delta_v", 0.5))
    pending = {m for members in held.values() for m in members}
    notes = []
    firmware_like = False
    for string, members in sorted(held.items(), key=lambda kv: _natural(kv[0])):
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


# ================================================================== MOSFET rating: static
@check("series_mosfet_rating",
       params={"vds_rating": Param("V", doc="default: the DUT's module data"),
               "string_max_voltage": Param("V", doc="default: series x cells x cell OVP threshold")},
       measures={"series_count": Measure(""),
                 "string_max_voltage": Measure("V"),
                 "vds_rating": Measure("V", required=True),
                 "vds_rating_ratio": Measure("", required=True, doc="rating / string_max_voltage")})
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
       params={"dmm": Param(kind="text", doc="digitiser across the switch, default dmm_vds"),
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
                 "blocked_current": Measure("A", required=True)})
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
    series_position = module_position(module)[0]
    opened_indices = ([k for k, m in enumerate(order) if module_position(m)[0] == series_position]
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
            bench.bms.force_disconnect(k, True)
        bench.clock.wait(interval * count, resolution_s=interval)
        raw = dmm.fetch_waveform()
        bench.clock.wait(float(ctx.param("block_s", 0.5)))
        blocked = abs(bench.load.measure_current())
    finally:
        bench.load.input(False)
        if forced:
            for k in opened_indices:
                bench.bms.force_disconnect(k, False)
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
