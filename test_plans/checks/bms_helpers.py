"""Reading the BMS: the client that answers with the bank's present state, a read that waits
for the BMS's first report, the firmware from whichever bus carries it, its alarms for a
diagnosis, the bank SOC, and each module as SunSpec model 805 reports it (SOC, SoH, voltage,
serial, temperature by position).

A check that needs per-module data and finds no SunSpec client records an ``error``
(:func:`require_reports`) rather than guessing.
"""

from __future__ import annotations

from typing import Any

from instruments.roles import InstrumentError, ModuleReport
from test_plans.checks import StepContext


def bms_read(bench: Any, what: str, client: Any = None, tries: int = 10) -> Any:
    """``client.<what>()`` (default the Bms role), waiting while the BMS has not yet sent the
    frame it needs: a BMS reports about once a second after power-up. Of the role's calls only
    ``firmware()`` waits for the battery's first report (the driver's own bounded wait, in the
    time the frame needs to cross the bus); so that is asked first, then the bench clock is
    given time. On an emulated bench under CPU load the CAN client may not have decoded its
    first frames when step 1 starts.

    ``status`` of the Bms role (no ``client`` given) is the BMS's, not one bus's: a figure the
    role's client does not carry (a pack without 0x372/0x35F/0x379, as its BMS profile says) is
    taken from another client of the same BMS that does (SunSpec 802/804), else stays None."""
    if what == "status" and client is None:
        return _bms_status(bench, tries)
    client = client if client is not None else bench.bms
    for attempt in range(tries):
        try:
            return getattr(client, what)()
        except InstrumentError as exc:
            if "received yet" not in exc.problem or attempt == tries - 1:
                raise
            if attempt == 0 and what != "firmware":
                try:  # the driver's bounded wait for a first report (at once if never sent)
                    client.firmware()
                except InstrumentError:
                    pass
            bench.clock.wait(0.5)
    raise AssertionError("unreachable")


def _bms_status(bench: Any, tries: int) -> Any:
    """The Bms role's status, its missing figures filled from the station's other BMS clients."""
    import dataclasses

    clients = bench.bms_clients()
    status = bms_read(bench, "status", clients[0], tries)
    missing = [f.name for f in dataclasses.fields(status) if getattr(status, f.name) is None]
    for other in clients[1:]:
        if not missing:
            break
        try:
            more = bms_read(bench, "status", other, tries)
        except InstrumentError:
            continue  # the other bus failing does not take the role's answer away
        found = {name: getattr(more, name) for name in missing if getattr(more, name) is not None}
        status = dataclasses.replace(status, **found)
        missing = [name for name in missing if name not in found]
    return status


# where each BMS client reads the firmware from (for a measurement's evidence)
_FIRMWARE_SOURCE = {"CanBms": "CAN 0x35F", "SunSpecBms": "SunSpec model 1 Vr"}


def bms_firmware(bench: Any) -> tuple[str | None, str]:
    """(firmware version, where it was read) from the first BMS client that carries it: CAN
    0x35F, else SunSpec model 1 ``Vr`` -- one BMS, several buses. Many Pylontech-protocol packs
    send no 0x35F (their BMS profile says so and the CAN client refuses at once): then the
    firmware is what another bus of the same BMS says, or unknown -- ``(None, why)``, for the
    check to record as a missing value (an ERROR naming why), never a guess or a crash."""
    reasons = []
    for client in bench.bms_clients():
        source = _FIRMWARE_SOURCE.get(type(client).__name__, getattr(client, "name", "BMS"))
        try:
            return bms_read(bench, "firmware", client), source
        except InstrumentError as exc:
            reasons.append(f"{source}: {exc.problem}")
    return None, "firmware unknown -- " + ("; ".join(reasons) or "no BMS client")


def bms_cell_range(bench: Any) -> tuple[float | None, float | None]:
    """(lowest, highest) cell voltage of the bank from the first BMS client that reports them
    (CAN 0x373, else SunSpec 802 CellVMin/CellVMax); (None, None) if none does -- a pack whose
    BMS profile sends no 0x373 on a CAN-only station."""
    for client in bench.bms_clients():
        telemetry = client.telemetry()
        if telemetry.min_cell_v is not None and telemetry.max_cell_v is not None:
            return telemetry.min_cell_v, telemetry.max_cell_v
    return None, None


def bms_alarm_note(bench: Any) -> str:
    """`` (BMS alarms: ...)`` when the BMS reports any, for a diagnosis; empty otherwise."""
    try:
        alarms = sorted(bench.bms.status().alarms) if bench.bms is not None else []
    except Exception:  # noqa: BLE001 - a diagnosis never fails a check on its own
        return ""
    return f" (BMS alarms: {', '.join(alarms)})" if alarms else ""


def bms_soc(bench: Any) -> float:
    """The bank SOC the BMS reports, at the finest resolution the station has: every BMS client
    says its own (``soc_resolution_pct``: SunSpec 802 SoC 0.1 %, CAN 0x355 whole percent), so a
    drift limit of 0.5 % is judged on a reading that can resolve it."""
    finest = min(bench.bms_clients(), key=lambda client: getattr(client, "soc_resolution_pct", 1.0))
    return float(finest.telemetry().soc_pct)


def module_reports(bench: Any) -> dict[str, ModuleReport] | None:
    """Every module as the BMS reports it, by position (the ``module_reports`` protocol: SunSpec
    805 on Modbus); None where the station has nothing that provides it."""
    if not bench.provides("module_reports"):
        return None
    return bench.module_reports.module_reports()


def silent_modules(reports: dict[str, "ModuleReport"] | None) -> list[str]:
    """Modules the master has no data from (their SunSpec 805 points unimplemented)."""
    return [m for m, r in (reports or {}).items() if r.voltage_v is None]


def require_reports(ctx: StepContext, reports: dict[str, ModuleReport] | None, name: str) -> bool:
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
