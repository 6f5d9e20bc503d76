"""Check code: one function per check a plan step may name, each with its declaration.

A check receives a :class:`StepContext` -- the bench (roles only), the step's parameters and
limits from the plan, and ``measure`` -- and records measurements. It never speaks SCPI or CAN,
never holds a limit of its own, and waits only on ``ctx.bench.clock``.

Every check *declares* what it takes and what it measures (``@check(name, params=..., measures=...)``,
see :mod:`test_plans.checks.spec`), in the manner of OpenHTF's ``@measures``. The declaration is
what a plan is validated against before anything is energised (a misspelled limit, a limit in the
wrong unit, a missing required limit, a parameter in the wrong unit are refused with exit 2), and
what the running check is held to: reading an undeclared parameter or limit, or recording an
undeclared measurement or one in another unit, is a harness ERROR -- never a silent pass.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

from harness.measure import Limits, Recorder
from instruments.roles import PROTOCOLS
from test_plans.checks.spec import CheckSpec, DeclarationError, Measure, Param

CheckFn = Callable[["StepContext"], None]
CHECKS: dict[str, CheckFn] = {}
SPECS: dict[str, CheckSpec] = {}


def check(name: str, *, params: Mapping[str, Param] | None = None,
          measures: Mapping[str, Measure] | None = None, needs: Iterable[str] = (),
          uses: Iterable[str] = ()) -> Callable[[CheckFn], CheckFn]:
    """Register a check under the name plan files use, with its declaration: parameters,
    measurements, and the role protocols it ``needs`` (refused on a station without them) and
    ``uses`` when present (names in ``instruments.roles.PROTOCOLS``)."""
    declared = set(needs) | set(uses) | {m.needs for m in (measures or {}).values() if m.needs}
    unknown = sorted(declared - set(PROTOCOLS))
    if unknown:
        raise ValueError(f"check '{name}': unknown protocol(s) {', '.join(unknown)} "
                         f"(known: {', '.join(PROTOCOLS)})")

    def register(fn: CheckFn) -> CheckFn:
        if name in CHECKS and CHECKS[name] is not fn:
            raise ValueError(f"check '{name}' registered twice")
        CHECKS[name] = fn
        SPECS[name] = CheckSpec(name, dict(params or {}), dict(measures or {}),
                                frozenset(needs), frozenset(uses))
        return fn
    return register


def load_all() -> dict[str, CheckFn]:
    """Import every module of this package so its checks register."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    return CHECKS


def known_checks() -> dict[str, CheckSpec]:
    """Every registered check's declaration, by check name (what plans are validated against)."""
    load_all()
    return dict(SPECS)


class _Declared(Mapping[str, Any]):
    """A read-only mapping that refuses names its check did not declare.

    ``kind`` says what it holds (parameter / limit) for the error message; ``allowed`` tells
    whether a name is declared.
    """

    def __init__(self, data: Mapping[str, Any], kind: str, spec: CheckSpec | None,
                 allowed: Callable[[str], bool]):
        self._data = dict(data)
        self._kind = kind
        self._spec = spec
        self._allowed = allowed

    def _guard(self, key: str) -> None:
        if self._spec is not None and not self._allowed(key):
            raise DeclarationError(f"check '{self._spec.name}' reads {self._kind} '{key}', which "
                                   f"it does not declare")

    def __getitem__(self, key: str) -> Any:
        self._guard(key)
        return self._data[key]

    def get(self, key: str, default: Any = None) -> Any:
        self._guard(key)
        return self._data.get(key, default)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self._guard(key)
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


class DeclaredRecorder:
    """``ctx.measure``: the step's Recorder, held to the check's declared measurements.

    A measurement name the check did not declare, or a unit of another dimension than the
    declared one, raises :class:`DeclarationError` (the step ends ERROR: a bug in the check,
    not a fault of the DUT).
    """

    def __init__(self, recorder: Recorder, spec: CheckSpec | None,
                 plan_limits: Mapping[str, Limits] | None = None):
        self._recorder = recorder
        self._spec = spec
        self._plan_limits = dict(plan_limits or {})

    def __call__(self, name: str, value: Any, unit: str = "", limits: Limits | None = None,
                 diagnosis: str | None = None, stop: bool = False) -> Any:
        if self._spec is not None:
            declared = self._spec.check_measurement(name, unit or (limits.unit if limits else ""))
            if limits is None or not limits.judged:
                # a limit the plan gives is never ignored: it judges the measurement it names,
                # even where the check code passed none
                key = declared.limit or (name if "{" not in self._spec_name_of(name) else None)
                if key is not None and key in self._plan_limits:
                    limits = self._plan_limits[key]
        return self._recorder(name, value, unit, limits, diagnosis, stop)

    def _spec_name_of(self, name: str) -> str:
        """The declared name (or pattern) a measurement name matched."""
        assert self._spec is not None
        for pattern in self._spec.measures:
            if pattern == name:
                return pattern
        return "{pattern}"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._recorder, name)


@dataclass
class StepContext:
    bench: Any
    params: Mapping[str, Any]
    limits: Mapping[str, Limits]
    measure: Any  # a Recorder, wrapped in a DeclaredRecorder when the check is declared
    step_name: str = ""
    dut: Any = None
    extras: dict[str, Any] = field(default_factory=dict)
    spec: CheckSpec | None = None

    def __post_init__(self) -> None:
        if self.spec is not None:
            spec = self.spec
            self.params = _Declared(self.params, "parameter", spec, spec.declares_param)
            self.limits = _Declared(self.limits, "limit", spec, spec.declares_limit)
            if not isinstance(self.measure, DeclaredRecorder):
                self.measure = DeclaredRecorder(self.measure, spec, dict(self.limits._data))
            if self.bench is not None and hasattr(self.bench, "restricted_to"):
                self.bench = self.bench.restricted_to(spec.needs | spec.uses | spec.measure_needs(), spec.name)

    def param(self, name: str, default: Any = None) -> Any:
        if name in self.params:
            return self.params[name]
        if default is not None:
            return default
        raise DeclarationError(f"step '{self.step_name}' needs parameter '{name}'")

    def limit(self, name: str) -> Limits:
        """The plan's limit for a declared limit name (record-only if the plan sets none)."""
        return self.limits.get(name) or Limits()


__all__ = ["CHECKS", "SPECS", "CheckSpec", "DeclarationError", "Measure", "Param", "StepContext",
           "check", "known_checks", "load_all"]
