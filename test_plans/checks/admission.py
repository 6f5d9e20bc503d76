"""What the master BMS admits (004: it "reports combined limits only for modules that are online
and accepted"): the strings it holds back (SunSpec 804 not enabled) and their pending modules,
a module's voltage against its series-position peers (what the master compares before admitting
it), and how many modules may count at the weakest series position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bankmodel.positions import natural_key, position
from test_plans.checks.bms_helpers import ModuleReport, bms_read, module_reports, silent_modules


@dataclass
class _Gate:
    """What the BMS says about admission at one moment."""

    installed_ah: float
    online_ah: float
    modules_online: int
    modules_offline: int
    discharge_limit_a: float
    pending: list[str]            # modules the BMS has not admitted (their string not enabled)


def gate_state(bench: Any, reports: dict[str, ModuleReport]) -> _Gate:
    """What the BMS says about admission now: its status and limits (SunSpec), its installed
    capacity (CAN) and, of every string it has not enabled (SunSpec 804), the module furthest off."""
    status, limits = bench.bms.status(), bench.bms.limits()
    installed = bms_read(bench, "status").installed_capacity_ah  # CAN 0x379 (SunSpec has none)
    pending: list[str] = []
    for string, enabled in bench.module_reports.string_enabled().items():
        if enabled:
            continue
        members = [m for m in reports if position(m)[1] == int(string[1:])]
        pending.extend(_most_off(members, reports))
    return _Gate(float(installed or 0.0), float(status.online_capacity_ah or 0.0),
                 int(status.modules_online or 0), int(status.modules_offline or 0),
                 float(limits.discharge_current_a), sorted(pending, key=natural_key))


def _most_off(members: list[str], reports: dict[str, ModuleReport]) -> list[str]:
    """Of a string the BMS holds back, the module(s) whose voltage is furthest from their
    series-position peers (a 1-high string: the module itself)."""
    if len(members) <= 1:
        return members
    deltas = {m: abs(peer_delta_v(m, reports)) for m in members}
    return [max(deltas, key=lambda m: (deltas[m] if not math.isnan(deltas[m]) else -1))]


def peer_delta_v(module: str, reports: dict[str, ModuleReport], exclude: list[str] | None = None) -> float:
    """The module's BMS-reported voltage minus the mean of its series-position peers (not
    pending): what the master compares before admitting it."""
    s = position(module)[0]
    peers = [r.voltage_v for m, r in reports.items()
             if m != module and position(m)[0] == s and m not in (exclude or []) and r.voltage_v is not None]
    own = reports[module].voltage_v
    if own is None or not peers:
        return math.nan
    return own - sum(peers) / len(peers)


def countable(reports: dict[str, ModuleReport], pending: list[str]) -> int:
    """Modules per series position that may count (heard and admitted), at the weakest
    position: the master adds parallel modules and the weakest position limits the bank."""
    per_position: dict[int, int] = {}
    for module, report in reports.items():
        s = position(module)[0]
        per_position.setdefault(s, 0)
        if report.voltage_v is not None and module not in pending:
            per_position[s] += 1
    return min(per_position.values()) if per_position else 0


def not_admitted(bench: Any) -> list[str]:
    """Modules the master has not admitted: silent ones and those of strings it holds back."""
    reports = module_reports(bench)
    if reports is None:
        return []
    return sorted(set(gate_state(bench, reports).pending) | set(silent_modules(reports)), key=natural_key)
