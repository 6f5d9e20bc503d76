"""Check code: one function per check a plan step may name.

A check receives a :class:`StepContext` -- the bench (roles only), the step's parameters and
limits from the plan, and ``measure`` -- and records measurements. It never speaks SCPI or CAN,
never holds a limit of its own, and waits only on ``ctx.bench.clock``.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

from harness.measure import Limits, Recorder

CheckFn = Callable[["StepContext"], None]
CHECKS: dict[str, CheckFn] = {}


def check(name: str) -> Callable[[CheckFn], CheckFn]:
    """Register a check under the name plan files use."""
    def register(fn: CheckFn) -> CheckFn:
        if name in CHECKS and CHECKS[name] is not fn:
            raise ValueError(f"check '{name}' registered twice")
        CHECKS[name] = fn
        return fn
    return register


def load_all() -> dict[str, CheckFn]:
    """Import every module of this package so its checks register."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    return CHECKS


def known_checks() -> set[str]:
    return set(load_all())


@dataclass
class StepContext:
    bench: Any
    params: dict[str, Any]
    limits: dict[str, Limits]
    measure: Recorder
    step_name: str = ""
    dut: Any = None
    extras: dict[str, Any] = field(default_factory=dict)

    def param(self, name: str, default: Any = None) -> Any:
        if name in self.params:
            return self.params[name]
        if default is not None:
            return default
        raise KeyError(f"step '{self.step_name}' needs parameter '{name}'")

    def limit(self, name: str) -> Limits:
        """The plan's limit for a measurement name (record-only if the plan sets none)."""
        return self.limits.get(name, Limits())
