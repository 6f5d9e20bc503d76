"""Quantities with units, as they are written in station, DUT and plan files.

Why text with a unit and not a bare number: a limit of ``3`` means nothing until someone knows
whether it is mohm or ohm, and a plan that swaps a current limit for a voltage one must fail when
it is loaded, not when a verdict comes out wrong. So a file writes ``"200 A"``, ``"3 mohm"``,
``"-20 degC"``; this module turns that into a :class:`Quantity` (value in the base unit of its
dimension, plus the spelling the author used) and refuses a unit of the wrong dimension for the
field with a message naming the dimension expected.

The unit table is small and explicit on purpose: no prefix algebra, so ``"3 Mohm"`` is an error
rather than a silent factor of a billion, and every accepted spelling is listed in one place.

Temperatures: ``degC`` is an absolute temperature (stored in degrees Celsius, which is what the
drivers and the twin use); ``K`` is a temperature *difference* (a 30 K rise). Keeping them as two
dimensions stops ``le: "30 degC"`` on a temperature rise from silently meaning 303 K, and an
absolute limit written in ``K`` is reported rather than being off by 273.15.

Declaring a field: ``current: Quantity["A"]`` accepts ``"200 A"``, ``"500 mA"``, ``"1.2 kA"``;
bare ``Quantity`` accepts any unit in the table. Values serialise back to text (``"200 A"``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import PydanticCustomError, core_schema


@dataclass(frozen=True)
class Unit:
    """One accepted spelling: its dimension and the factor to the dimension's base unit."""

    symbol: str
    dimension: str
    factor: float


# dimension -> (base unit, human name used in messages)
DIMENSIONS: dict[str, tuple[str, str]] = {
    "voltage": ("V", "a voltage"),
    "current": ("A", "a current"),
    "resistance": ("ohm", "a resistance"),
    "power": ("W", "a power"),
    "energy": ("J", "an energy"),
    "charge": ("Ah", "a charge (capacity)"),
    "time": ("s", "a time"),
    "frequency": ("Hz", "a frequency"),
    "temperature": ("degC", "an absolute temperature"),
    "temperature_difference": ("K", "a temperature difference"),
    "ratio": ("%", "a ratio"),
}

_TABLE: list[Unit] = [
    Unit("V", "voltage", 1.0), Unit("mV", "voltage", 1e-3), Unit("uV", "voltage", 1e-6),
    Unit("kV", "voltage", 1e3),
    Unit("A", "current", 1.0), Unit("mA", "current", 1e-3), Unit("uA", "current", 1e-6),
    Unit("kA", "current", 1e3),
    Unit("ohm", "resistance", 1.0), Unit("mohm", "resistance", 1e-3),
    Unit("uohm", "resistance", 1e-6), Unit("kohm", "resistance", 1e3),
    Unit("W", "power", 1.0), Unit("mW", "power", 1e-3), Unit("kW", "power", 1e3),
    Unit("J", "energy", 1.0), Unit("mJ", "energy", 1e-3), Unit("kJ", "energy", 1e3),
    Unit("Wh", "energy", 3600.0), Unit("kWh", "energy", 3.6e6),
    Unit("Ah", "charge", 1.0), Unit("mAh", "charge", 1e-3),
    Unit("s", "time", 1.0), Unit("ms", "time", 1e-3), Unit("us", "time", 1e-6),
    Unit("min", "time", 60.0), Unit("h", "time", 3600.0),
    Unit("Hz", "frequency", 1.0), Unit("kHz", "frequency", 1e3),
    Unit("degC", "temperature", 1.0),
    Unit("K", "temperature_difference", 1.0),
    Unit("%", "ratio", 1.0),
]
UNITS: dict[str, Unit] = {u.symbol: u for u in _TABLE}

# Other spellings people type (Greek letters, degree sign); normalised to the table's symbols.
ALIASES: dict[str, str] = {
    "Ω": "ohm", "mΩ": "mohm", "µΩ": "uohm", "μΩ": "uohm", "kΩ": "kohm",
    "Ohm": "ohm", "mOhm": "mohm", "uOhm": "uohm", "kOhm": "kohm",
    "µs": "us", "μs": "us", "µV": "uV", "μV": "uV", "µA": "uA", "μA": "uA",
    "°C": "degC", "℃": "degC", "sec": "s", "pct": "%",
}

# The largest magnitude a file may give, per dimension, in the base unit. A bench never needs more;
# past these a number is a typo or a hostile file, and a value like 1e308 s would make a wait
# that never ends (or overflow into inf once converted). Durations: at most a week.
WEEK_S = 7 * 24 * 3600.0
LIMITS: dict[str, float] = {
    "voltage": 1e5, "current": 1e5, "resistance": 1e9, "power": 1e8, "energy": 1e11,
    "charge": 1e6, "time": WEEK_S, "frequency": 1e9, "temperature": 1e4,
    "temperature_difference": 1e4, "ratio": 1e6,
}
ABSOLUTE_ZERO_C = -273.15
_MAX_TEXT = 100  # a quantity is short text: "14.2 V"; no regex runs on a megabyte of it

_NUMBER_UNIT = re.compile(
    r"^\s*(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<unit>\S.*?)?\s*$")


def units_of(dimension: str) -> list[str]:
    """The accepted unit symbols of one dimension, in table order."""
    return [u.symbol for u in _TABLE if u.dimension == dimension]


def describe_dimension(dimension: str) -> str:
    """``'a current (A, mA, uA, kA)'``: what a message says is allowed."""
    name = DIMENSIONS[dimension][1]
    return f"{name} ({', '.join(units_of(dimension))})"


def lookup_unit(symbol: str) -> Unit:
    """The table entry for a unit symbol or alias; KeyError if the unit is not in the table."""
    return UNITS[ALIASES.get(symbol, symbol)]


def dimension_of(symbol: str) -> str:
    return lookup_unit(symbol).dimension


class UnitError(ValueError):
    """A quantity text that cannot be read, or has a unit of the wrong dimension.

    ``allowed`` is phrased as what a file may contain instead, for FileError's 'allowed'.
    """

    def __init__(self, message: str, allowed: str, kind: str = "quantity"):
        super().__init__(message)
        self.allowed = allowed
        self.kind = kind


@dataclass(frozen=True, eq=False)
class Quantity:
    """A value with a unit: ``value`` in the base unit of ``dimension`` (V, A, ohm, W, J, Ah,
    s, Hz, degC, K, %); ``magnitude`` and ``unit`` as written, so messages and reports show the
    author's own spelling (``"3 mohm"``, not ``"0.003 ohm"``).

    Comparisons between quantities of one dimension compare values; across dimensions they
    raise, since comparing a current with a voltage is always a bug.
    """

    magnitude: float
    unit: str

    def __post_init__(self) -> None:
        lookup_unit(self.unit)  # KeyError for a unit outside the table: construct via parse()
        if not math.isfinite(self.magnitude):
            raise ValueError(f"{self.magnitude!r} is not a finite number")

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: Any, expect: str | None = None) -> "Quantity":
        """Read ``"14.2 V"``; ``expect`` (a unit symbol) restricts the dimension.

        Raises :class:`UnitError` with a message and an 'allowed' text for the user.
        """
        want = dimension_of(expect) if expect else None
        example = _example(want)
        allowed = (f"{describe_dimension(want)}, written as a number and a unit, e.g. '{example}'"
                   if want else f"a number and a unit, e.g. '{example}' (units: {', '.join(UNITS)})")
        if isinstance(text, Quantity):
            quantity = text
        elif isinstance(text, bool) or text is None or isinstance(text, (list, dict)):
            raise UnitError(f"{text!r} is not a quantity", allowed, "quantity_type")
        elif isinstance(text, (int, float)):
            raise UnitError(f"{text!r} has no unit", allowed, "quantity_no_unit")
        elif isinstance(text, str):
            if len(text) > _MAX_TEXT:
                raise UnitError(f"text of {len(text)} characters", allowed, "quantity_syntax")
            match = _NUMBER_UNIT.match(text)
            if not match:
                raise UnitError(f"{text!r} is not a number followed by a unit", allowed,
                                "quantity_syntax")
            if not match.group("unit"):
                raise UnitError(f"{text!r} has no unit", allowed, "quantity_no_unit")
            symbol = ALIASES.get(match.group("unit"), match.group("unit"))
            if symbol not in UNITS:
                raise UnitError(f"unknown unit '{match.group('unit')}'",
                                allowed if want else f"one of the units {', '.join(UNITS)}",
                                "unit_unknown")
            magnitude = float(match.group("number"))
            if not math.isfinite(magnitude):
                raise UnitError(f"{text!r} is not a finite number", allowed, "quantity_syntax")
            quantity = cls(magnitude, symbol)
        else:
            raise UnitError(f"{text!r} is not a quantity", allowed, "quantity_type")
        if want and quantity.dimension != want:
            raise UnitError(
                f"'{quantity.unit}' is {DIMENSIONS[quantity.dimension][1]} unit",
                f"{describe_dimension(want)} -- '{quantity.unit}' is "
                f"{DIMENSIONS[quantity.dimension][1]} unit", "unit_mismatch")
        if not isinstance(text, Quantity):
            _check_bounds(quantity, text, allowed)
        return quantity

    @property
    def in_bounds(self) -> bool:
        """Finite and within :data:`LIMITS` (what a file may give)."""
        return _bounds_problem(self) is None

    @classmethod
    def of(cls, value: float, unit: str) -> "Quantity":
        """A quantity from a number already in ``unit`` (used when code, not a file, makes one)."""
        return cls(float(value), ALIASES.get(unit, unit))

    # -- reading -----------------------------------------------------------------------------
    @property
    def dimension(self) -> str:
        return lookup_unit(self.unit).dimension

    @property
    def value(self) -> float:
        """In the base unit of the dimension (V, A, ohm, W, J, Ah, s, Hz, degC, K, %)."""
        return self.magnitude * lookup_unit(self.unit).factor

    @property
    def si(self) -> float:
        """Same as :attr:`value` (the base unit of the dimension)."""
        return self.value

    @property
    def base_unit(self) -> str:
        return DIMENSIONS[self.dimension][0]

    def to(self, unit: str) -> float:
        """The number in another unit of the same dimension (``Quantity.parse('3 mohm').to('uohm')``)."""
        target = lookup_unit(unit)
        if target.dimension != self.dimension:
            raise UnitError(f"cannot express {self} in {unit}", describe_dimension(self.dimension),
                            "unit_mismatch")
        return self.value / target.factor

    def __str__(self) -> str:
        return f"{self.magnitude:g} {self.unit}"

    def __repr__(self) -> str:
        return f"Quantity('{self}')"

    def _same(self, other: Any) -> "Quantity":
        if not isinstance(other, Quantity):
            return NotImplemented  # type: ignore[return-value]
        if other.dimension != self.dimension:
            raise TypeError(f"cannot compare {self} with {other}: different dimensions")
        return other

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Quantity):
            return NotImplemented
        return self.dimension == other.dimension and math.isclose(self.value, other.value,
                                                                  rel_tol=1e-12, abs_tol=0.0)

    def __hash__(self) -> int:
        return hash(self.dimension)  # equality is approximate: only the dimension hashes safely

    def __lt__(self, other: "Quantity") -> bool:
        return self.value < self._same(other).value

    def __le__(self, other: "Quantity") -> bool:
        return self.value <= self._same(other).value or self == other

    def __gt__(self, other: "Quantity") -> bool:
        return self.value > self._same(other).value

    def __ge__(self, other: "Quantity") -> bool:
        return self.value >= self._same(other).value or self == other

    def __abs__(self) -> "Quantity":
        return Quantity(abs(self.magnitude), self.unit)

    # -- pydantic ----------------------------------------------------------------------------
    def __class_getitem__(cls, unit: str) -> Any:
        """``Quantity["A"]``: a field that takes a quantity of the dimension of ``A``."""
        dimension_of(unit)  # a typo in a declaration fails at import, not on a file
        return Annotated[Quantity, QuantityOf(unit)]

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> Any:
        return _schema(None)

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: GetJsonSchemaHandler) -> Any:
        return {"type": "string", "examples": ["14.2 V", "200 A", "3 mohm"]}


@dataclass(frozen=True)
class QuantityOf:
    """Pydantic metadata: the field's declared unit; any unit of the same dimension is accepted."""

    unit: str

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> Any:
        return _schema(self.unit)

    def __get_pydantic_json_schema__(self, schema: Any, handler: GetJsonSchemaHandler) -> Any:
        want = dimension_of(self.unit)
        return {"type": "string", "description": describe_dimension(want),
                "examples": [_example(want)]}


def _schema(expect: str | None) -> Any:
    def validate(value: Any) -> Quantity:
        try:
            return Quantity.parse(value, expect)
        except UnitError as exc:
            # the template is the 'allowed' text FileError shows; braces would be read as fields
            raise PydanticCustomError(exc.kind, exc.allowed.replace("{", "(").replace("}", ")")) from None

    return core_schema.no_info_plain_validator_function(
        validate, serialization=core_schema.plain_serializer_function_ser_schema(str))


def _bounds_problem(quantity: Quantity) -> str | None:
    """Why a quantity is outside what a file may give (None if it is inside)."""
    dimension = quantity.dimension
    base = DIMENSIONS[dimension][0]
    try:
        value = quantity.value
    except OverflowError:  # pragma: no cover - float * float gives inf, not an error
        value = math.inf
    if not math.isfinite(value):
        return "a finite value"
    limit = LIMITS[dimension]
    if abs(value) > limit:
        return f"at most {limit:g} {base} in magnitude"
    if dimension == "temperature" and value < ABSOLUTE_ZERO_C:
        return f"at least {ABSOLUTE_ZERO_C:g} degC (absolute zero)"
    return None


def _check_bounds(quantity: Quantity, text: Any, allowed: str) -> None:
    problem = _bounds_problem(quantity)
    if problem is not None:
        dimension = quantity.dimension
        week = " (a week)" if dimension == "time" and "at most" in problem else ""
        raise UnitError(f"{text!r} is out of range",
                        f"{DIMENSIONS[dimension][1]} of {problem}{week}, e.g. "
                        f"'{_example(dimension)}'", "quantity_range")


_EXAMPLES = {"voltage": "14.2 V", "current": "200 A", "resistance": "3 mohm", "power": "1.5 kW",
             "energy": "1.28 kWh", "charge": "100 Ah", "time": "2 s", "frequency": "1 kHz",
             "temperature": "-20 degC", "temperature_difference": "30 K", "ratio": "5 %"}


def _example(dimension: str | None) -> str:
    return _EXAMPLES.get(dimension or "", "14.2 V")


def parse_quantity(text: Any, expect: str | None = None) -> Quantity:
    """Function form of :meth:`Quantity.parse`."""
    return Quantity.parse(text, expect)


__all__ = ["ALIASES", "DIMENSIONS", "LIMITS", "Quantity", "QuantityOf", "Unit", "UnitError", "UNITS",
           "describe_dimension", "dimension_of", "lookup_unit", "parse_quantity", "units_of"]
