"""What a check declares: the parameters it takes and the measurements it records.

The declaration is the contract between a plan file and the check code (DESIGN.md: "a check
declares ... the measurements it takes (name, unit kind, whether a limit is required)"):

- :class:`Param` -- one parameter with its unit (``"s"``, ``"A"``; ``None`` for a plain number,
  count, flag or text) and, for a parameter the check commands an instrument with, the setpoint
  it is (``"load.current"``): the station's rating check judges exactly the value the check will
  command, so there is no second copy of it in the plan.
- ``needs`` / ``uses`` -- the role protocols (``instruments.roles.PROTOCOLS``: ``supply``,
  ``scanner``, ``bms``, ``module_reports``, ``bms_service`` ...) the check cannot run without,
  and those it uses when the station has them. A plan's requirements are derived from its
  steps' checks, and a station that cannot serve a step is refused at validation.
- :class:`Measure` -- one measurement (a name, or a pattern such as ``"current_{branch}"``), its
  unit (``""`` for a count, a flag or an identity), the plan limit that judges it (default: its
  own name; ``"module_ocv"`` judges every ``ocv_{module}``) and whether the plan must give it.

Names in braces match any run of letters, digits, ``_``, ``.``, ``+`` and ``-`` (also none:
``{phase}imbalance`` matches ``imbalance`` and ``charge_imbalance``). A pattern measurement is
judged only by a limit it names explicitly (``limit="module_ocv"``): a plan cannot put a limit
on a name that merely matches the pattern, so a typo in a limit name is never "accepted".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

from bankmodel.units import DIMENSIONS, UNITS, ALIASES, dimension_of

ParamKind = Literal["any", "number", "count", "flag", "text"]


class DeclarationError(RuntimeError):
    """Check code used a parameter, limit or measurement it did not declare (a harness bug: the
    step ends ERROR, never PASS)."""


def _regex(pattern: str) -> re.Pattern[str]:
    """``{name}`` matches a run of what positions, branches and node names are made of --
    letters, digits, ``_``, ``.``, ``+``, ``-`` (``s1p2``, ``charge_``, ``g1.bus.pos.1``, ``s1p1.+``)
    -- also none."""
    parts = re.split(r"(\{[a-z_]+\})", pattern)
    return re.compile("".join(r"[A-Za-z0-9_.+\-]*" if p.startswith("{") else re.escape(p)
                              for p in parts if p) + r"\Z")


def unit_dimension(unit: str | None) -> str | None:
    """The dimension of a unit symbol; None for no unit (a count, flag or identity) and for a
    unit outside the table (``A2s``): a plan limits those with plain numbers."""
    if not unit:
        return None
    symbol = ALIASES.get(unit, unit)
    return dimension_of(symbol) if symbol in UNITS else None


def dimension_words(dimension: str | None) -> str:
    return DIMENSIONS[dimension][1] if dimension else "a plain number, flag or text"


@dataclass(frozen=True)
class Param:
    """A parameter a check takes. ``unit``: its unit kind (a symbol of that dimension);
    ``setpoint``: ``"role.quantity"`` when the check commands that instrument with it."""

    unit: str | None = None
    setpoint: str | tuple[str, ...] | None = None  # one output, or several it commands alike
    kind: ParamKind = "any"
    doc: str = ""
    # the parameter names a station role that must provide this protocol ("digitiser"); the
    # role is ``default`` when the plan does not give the parameter
    instrument: str | None = None
    default: object = None

    @property
    def dimension(self) -> str | None:
        return unit_dimension(self.unit)


@dataclass(frozen=True)
class Measure:
    """A measurement a check records (a name or a ``{placeholder}`` pattern)."""

    unit: str = ""
    limit: str | None = None
    required: bool = False
    doc: str = ""
    # a protocol this measurement cannot be taken without (e.g. "capacity_report"): a plan that
    # limits it is refused on a station lacking that protocol
    needs: str | None = None

    @property
    def dimension(self) -> str | None:
        return unit_dimension(self.unit)


@dataclass(frozen=True)
class CheckSpec:
    name: str
    params: dict[str, Param] = field(default_factory=dict)
    measures: dict[str, Measure] = field(default_factory=dict)
    needs: frozenset[str] = frozenset()   # protocols the check cannot run without
    uses: frozenset[str] = frozenset()    # protocols it uses when the station has them

    # ---------------------------------------------------------------- protocols
    def may_use(self, protocol: str) -> bool:
        return protocol in self.needs or protocol in self.uses or protocol in self.measure_needs()

    def measure_needs(self) -> frozenset[str]:
        """Protocols some of the check's measurements need."""
        return frozenset(m.needs for m in self.measures.values() if m.needs)

    def instrument_params(self) -> list[tuple[str, Param]]:
        """Parameters that name a station role (a digitiser by its role name)."""
        return [(name, p) for name, p in self.params.items() if p.instrument]

    # ---------------------------------------------------------------- parameters
    def declares_param(self, name: str) -> bool:
        return name in self.params

    def setpoints(self) -> list[tuple[str, str]]:
        """(parameter name, ``role.quantity`` it commands), a parameter once per output."""
        out = []
        for name, p in self.params.items():
            keys = (p.setpoint,) if isinstance(p.setpoint, str) else (p.setpoint or ())
            out += [(name, key) for key in keys]
        return out

    # ---------------------------------------------------------------- limits
    @cached_property
    def _limit_patterns(self) -> list[tuple[str, re.Pattern[str], Measure]]:
        """Limit keys: a measurement's explicit ``limit`` (maybe a pattern), or its own name when
        that is a literal. A pattern measurement without ``limit=`` is recorded only."""
        out = []
        for name, m in self.measures.items():
            key = m.limit or (name if "{" not in name else None)
            if key is not None:
                out.append((key, _regex(key), m))
        return out

    @cached_property
    def _measure_patterns(self) -> list[tuple[str, re.Pattern[str], Measure]]:
        return [(name, _regex(name), m) for name, m in self.measures.items()]

    def limit_keys(self) -> list[str]:
        """The limit names (or patterns) a plan may give, in declaration order."""
        return list(dict.fromkeys(key for key, _, _ in self._limit_patterns))

    def declares_limit(self, key: str) -> bool:
        return self.limit_measure(key) is not None

    def limit_measure(self, key: str) -> Measure | None:
        """The declared measurement a plan limit ``key`` judges (exact names before patterns)."""
        for pattern_key, _, measure in self._limit_patterns:
            if pattern_key == key:
                return measure
        for _, regex, measure in self._limit_patterns:
            if regex.match(key):
                return measure
        return None

    def required_limits(self) -> list[str]:
        return list(dict.fromkeys(key for key, _, m in self._limit_patterns
                                  if m.required and "{" not in key))

    # ---------------------------------------------------------------- measurements
    def measurement(self, name: str) -> Measure | None:
        for pattern, _, measure in self._measure_patterns:
            if pattern == name:
                return measure
        for _, regex, measure in self._measure_patterns:
            if regex.match(name):
                return measure
        return None

    def check_measurement(self, name: str, unit: str) -> Measure:
        """The declaration of a measurement being recorded; DeclarationError if there is none or
        its unit is of another dimension."""
        declared = self.measurement(name)
        if declared is None:
            raise DeclarationError(f"check '{self.name}' records measurement '{name}', which it "
                                   f"does not declare (declared: {', '.join(self.measures) or 'none'})")
        got, want = unit_dimension(unit), declared.dimension
        if unit != declared.unit and (got != want or (got is None and unit and declared.unit)):
            raise DeclarationError(f"check '{self.name}' records '{name}' in '{unit}', declared as "
                                   f"{dimension_words(want)} ('{declared.unit}')")
        return declared


__all__ = ["CheckSpec", "DeclarationError", "Measure", "Param", "dimension_words", "unit_dimension"]
