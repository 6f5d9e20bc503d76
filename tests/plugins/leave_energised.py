"""A pytest plugin for tests/test_safe_state.py: a check that deliberately leaves the bench
energised, and snapshots of the twin's load, supply and contactors after each step and after
the session (written as JSON to $BANKHIL_SNAPSHOT).

Loaded with ``-p tests.plugins.leave_energised`` into a ``pytest --plan`` run; it touches the
twin only to *observe* it, after the harness has done what it does on its own.
"""

from __future__ import annotations

import json
import os
from typing import Any

from test_plans.checks import Measure, Param, check


@check("leave_energised",
       params={"load_current": Param("A", setpoint="load.current"),
               "supply_voltage": Param("V", setpoint="supply.voltage"),
               "supply_current": Param("A", setpoint="supply.current"),
               "hold_s": Param("s")},
       measures={"load_left_on": Measure("", required=True)},
       needs=("supply", "load", "actuator"))
def leave_energised(ctx: Any) -> None:
    """Close every relay, switch the supply and load on, and leave them so."""
    bench = ctx.bench
    for channel in bench.channels.actuator_channels():
        bench.actuator.close_channel(channel)
    bench.supply.set_voltage(ctx.param("supply_voltage"))
    bench.supply.set_current(ctx.param("supply_current"))
    bench.supply.output(True)
    bench.load.set_current(ctx.param("load_current"))
    bench.load.input(True)
    bench.clock.wait(ctx.param("hold_s"))
    ctx.measure("load_left_on", int(bench.load.is_on()), "", ctx.limit("load_left_on"))


_snapshots: list[dict[str, Any]] = []


def _twin(config: Any) -> Any:
    session = getattr(config, "_bankhil_session", None)
    station = getattr(getattr(session, "assembled", None), "emulated_station", None)
    return station.bench.twin if station is not None else None


def _snapshot(config: Any, when: str) -> None:
    twin = _twin(config)
    if twin is None:
        return
    _snapshots.append({"when": when, "load_on": bool(twin.load.on), "supply_on": bool(twin.supply.on),
                       "closed": sorted(k for k, v in twin.contactor_closed.items() if v)})


def pytest_runtest_logreport(report: Any) -> None:
    if report.when == "call":
        _snapshot(_CONFIG[0], f"after {report.nodeid.rsplit('[', 1)[-1].rstrip(']')}")


_CONFIG: list[Any] = []


def pytest_configure(config: Any) -> None:
    _CONFIG.append(config)


def pytest_unconfigure(config: Any) -> None:
    _snapshot(config, "after session")
    path = os.environ.get("BANKHIL_SNAPSHOT")
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(_snapshots, handle)
