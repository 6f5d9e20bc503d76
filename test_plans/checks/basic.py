"""First checks of a bank: identity, open-circuit voltages, configuration, current sharing.

Diagnoses come from the troubleshooting table of 004_580db881af34243e.txt (DOMAIN.md section 2).
"""

from __future__ import annotations

from test_plans.checks import StepContext, check

DIAG_REDUCED_CAPACITY = ("module not accepted by the BMS (004: inverter reports reduced capacity) "
                         "-- check CAN/RS485 order, firmware, protocol")
DIAG_MISMATCH = ("voltage or SOC mismatch (004: modules exchange current at rest) "
                 "-- check pre-connect voltage and SOC")
DIAG_SHARING = ("unequal cable resistance (004: one module current much higher) "
                "-- check cable length, gauge, busbar landing")


@check("bms_identity")
def bms_identity(ctx: StepContext) -> None:
    """The BMS answers and reports the firmware the plan expects (000, 004: no mixed firmware)."""
    bms = ctx.bench.bms
    ctx.measure("bms_firmware", bms.firmware(), "", ctx.limit("bms_firmware"),
                diagnosis=DIAG_REDUCED_CAPACITY)


@check("module_ocv_match")
def module_ocv_match(ctx: StepContext) -> None:
    """Every module's open-circuit voltage and their spread (000: <= 0.1 V before paralleling)."""
    ctx.bench.clock.wait(float(ctx.param("rest_s", 1.0)))
    volts = ctx.bench.module_voltages()
    for module, value in sorted(volts.items()):
        ctx.measure(f"ocv_{module}", value, "V", ctx.limit("module_ocv"))
    spread = max(volts.values()) - min(volts.values())
    ctx.measure("ocv_spread", spread, "V", ctx.limit("ocv_spread"), diagnosis=DIAG_MISMATCH)


@check("configuration")
def configuration(ctx: StepContext) -> None:
    """Bank voltage and the BMS-reported capacity match the DUT's NsMp configuration (000)."""
    ctx.bench.load.input(False)
    ctx.measure("bank_voltage", ctx.bench.load.measure_voltage(), "V", ctx.limit("bank_voltage"))
    status = ctx.bench.bms.status()
    ctx.measure("installed_capacity", status.installed_capacity_ah, "Ah",
                ctx.limit("installed_capacity"), diagnosis=DIAG_REDUCED_CAPACITY)
    ctx.measure("online_capacity", status.online_capacity_ah, "Ah",
                ctx.limit("online_capacity"), diagnosis=DIAG_REDUCED_CAPACITY)


@check("current_sharing")
def current_sharing(ctx: StepContext) -> None:
    """Per-branch currents under load from the shunts; imbalance = max|I - mean| / |mean|."""
    amps = float(ctx.param("load_current"))
    bench = ctx.bench
    bench.load.set_current(amps)
    bench.load.input(True)
    try:
        bench.clock.wait(float(ctx.param("settle_s", 5.0)))
        currents = bench.branch_currents()
    finally:
        bench.load.input(False)
    mean = sum(currents.values()) / len(currents)
    for branch, value in sorted(currents.items()):
        ctx.measure(f"current_{branch}", value, "A", ctx.limit("branch_current"))
    imbalance = max(abs(i - mean) for i in currents.values()) / abs(mean) * 100.0 if mean else float("nan")
    ctx.measure("imbalance", imbalance, "%", ctx.limit("imbalance"), diagnosis=DIAG_SHARING)
