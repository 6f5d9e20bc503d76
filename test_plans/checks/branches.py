"""Where modules and branches sit and who their peers are: the groups of branches that share
current, per-branch figures from per-module ones, spreads and peer means by series position
(parallel modules only compare with each other).

The positions themselves -- ``sXpY``, a string ``pY``, a terminal ``sXpY.+`` -- and the modules a
branch carries are :mod:`bankmodel.positions`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from bankmodel.positions import POSITION, modules_of_branch, natural_key, position


def series_groups(branches: list[str]) -> dict[str, list[str]]:
    """Branches that share current, by series position: ``sXpY`` branches (a bank of series
    groups) grouped by X; ``pY`` strings (a bank of parallel strings) all in one group."""
    groups: dict[str, list[str]] = {}
    for branch in branches:
        match = POSITION.match(branch)
        key = f"s{match.group(1)}" if match else "strings"
        groups.setdefault(key, []).append(branch)
    return {k: sorted(v, key=natural_key) for k, v in sorted(groups.items(), key=lambda kv: natural_key(kv[0]))}


def branch_values(values: Mapping[str, float], branches: Sequence[str]) -> dict[str, float]:
    """Per-module figures as per-branch ones: a module branch its module's; a string the sum
    (voltages, resistances in series) of its modules' -- a branch with a module unread is left
    out."""
    out = {}
    for branch in branches:
        members = modules_of_branch(branch, list(values))
        if members and all(m in values for m in members):
            out[branch] = sum(float(values[m]) for m in members)
    return out


def branch_voltages(volts: dict[str, float], branches: list[str]) -> dict[str, float]:
    """Each branch's voltage: its module's, or the sum of its string's modules'."""
    modules = list(volts)
    return {b: sum(volts[m] for m in modules_of_branch(b, modules)) for b in branches}


def has_parallel_peer(module: str, modules: Sequence[str]) -> bool:
    """A module with another at its series position (a parallel group) -- else it sits in a string."""
    hit = POSITION.match(module)
    if hit is None:
        return False
    return any((other := POSITION.match(m)) and other.group(1) == hit.group(1) and m != module for m in modules)


def by_series_position(values: dict[str, float]) -> dict[int, dict[str, float]]:
    """Per-module values grouped by series position (modules that sit in parallel)."""
    groups: dict[int, dict[str, float]] = {}
    for module, value in values.items():
        groups.setdefault(position(module)[0], {})[module] = value
    return dict(sorted(groups.items()))


def spread(values: dict[str, float]) -> float:
    """max - min, worst over the series positions (parallel modules only compare with each other)."""
    worst = 0.0
    for group in by_series_position(values).values():
        present = [v for v in group.values() if v is not None and not math.isnan(v)]
        if len(present) > 1:
            worst = max(worst, max(present) - min(present))
    return worst


def finite(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def peer_mean(values: Mapping[str, float | None], name: str) -> float:
    """Mean of the other values -- of the modules at the same series position when the names
    are module positions (parallel modules only compare with each other)."""
    here = POSITION.match(name)
    same = [float(v) for k, v in values.items()
            if k != name and finite(v)
            and (here is None or not POSITION.match(k) or position(k)[0] == position(name)[0])]
    return sum(same) / len(same) if same else math.nan


def standout(values: Mapping[str, float | None]) -> tuple[str, float, float] | None:
    """(name, value, its peers' mean) of the value farthest from its peers' mean; None when
    fewer than two values are known."""
    best: tuple[str, float, float] | None = None
    for name in sorted(values, key=natural_key):
        value = values[name]
        mean = peer_mean(values, name)
        if not finite(value) or math.isnan(mean):
            continue
        if best is None or abs(float(value) - mean) > abs(best[1] - best[2]):  # type: ignore[arg-type]
            best = (name, float(value), mean)  # type: ignore[arg-type]
    return best
