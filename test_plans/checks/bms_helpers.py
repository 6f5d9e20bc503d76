"""Reading the BMS: the client that answers with the bank's present state, a read that waits
for the BMS's first report, its alarms for a diagnosis, the bank SOC, and each module as
SunSpec model 805 reports it (SOC, SoH, voltage, serial, temperature by position).

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
