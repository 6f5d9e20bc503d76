"""Module identity and counts as the BMS reports them, against the DUT: model, chemistry and
firmware (SunSpec models 1 and 802), batch from each module's serial and SoH (model 805), the
parallel and series counts -- with the measurements they record, merged into the declaration
of each check calling them (pre-parallel matching, module identity).
"""

from __future__ import annotations

from bankmodel.positions import natural_key, position
from bankmodel.chemistry import normalise_chemistry
from test_plans.checks import Measure, StepContext
from test_plans.checks.bms_helpers import ModuleReport, require_reports
from test_plans.checks.branches import finite, peer_mean, spread
from test_plans.checks.diagnosis import diagnose
from test_plans.checks.evidence import names


# SunSpec model 802 ``Typ`` families (kept for readers of older runs; chemistry is compared as chemistry)
CHEMISTRY_TYPES = {"LFP": "LITHIUM_ION", "LIFEPO4": "LITHIUM_ION", "NMC": "LITHIUM_ION",
                   "LTO": "LITHIUM_ION", "LI-ION": "LITHIUM_ION", "PB": "LEAD_ACID",
                   "AGM": "LEAD_ACID", "LEAD_ACID": "LEAD_ACID"}


def measure_identity(ctx: StepContext, reports: dict[str, "ModuleReport"] | None) -> None:
    """Model, chemistry and firmware from SunSpec model 1 / 802 against the DUT; batch from
    each module's serial (the DUT's ``serial_prefix`` + ``batch``); capacity and age from
    each module's SoH (model 805)."""
    bench, dut = ctx.bench, ctx.dut
    if not require_reports(ctx, reports, "model_match") or dut is None:
        return
    assert reports is not None
    identity = bench.module_reports.bank_identity()
    model, maker, firmware = identity.model, identity.manufacturer, identity.firmware
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
    kind = identity.chemistry
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
                diagnosis=diagnose("batch_mix", names(foreign) or "bank",
                                   "serial " + ", ".join(f"{reports[m].serial}" for m in foreign)
                                   + f" not of batch {batch}" if foreign else f"every serial of batch {batch}"))
    soh = {m: r.soh_pct for m, r in reports.items()}
    for module, value in soh.items():
        ctx.measure(f"soh_{module}", value, "%")
    low = min((m for m in soh if finite(soh[m])), key=lambda m: soh[m], default=None)  # type: ignore[arg-type,return-value]
    ctx.measure("soh_spread", spread(soh), "%", ctx.limit("soh_spread"),  # type: ignore[arg-type]
                diagnosis=diagnose("weak_module", low,
                                   f"SoH {soh[low]:.1f} % against {peer_mean(soh, low):.1f} % for its peers"
                                   if low is not None else "no SoH reported"))


def measure_counts(ctx: StepContext, reports: dict[str, "ModuleReport"] | None) -> None:
    """Parallel and series counts as the BMS sees them, against the plan's BMS limits and the DUT."""
    if not require_reports(ctx, reports, "parallel_count"):
        return
    assert reports is not None
    positions = [position(m) for m in reports]
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
        missing = sorted(expected - set(reports), key=natural_key)
        evidence = f"{seen}, the DUT is {dut.series}S{dut.parallel}P"
        diagnosis = (diagnose("module_offline", names(missing), evidence) if missing else
                     diagnose("parallel_count_exceeded", "bank", evidence))
        ctx.measure("count_match", (series, parallel) == (dut.series, dut.parallel), "",
                    ctx.limit("count_match"), diagnosis=diagnosis)


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
