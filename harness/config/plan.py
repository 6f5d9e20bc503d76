"""Test plan files (test_plans/): which checks run, with which parameters, against which limits.

Limits live in plans, never in check code (DESIGN.md): a plan is where a factory tightens ΔV from
0.1 V (000) to 0.05 V (003) without touching Python. So everything a verdict depends on is here,
with its unit, and is checked when the plan is loaded -- a current limit written in V, a check
name nobody registered, a step that would drive the load past the station's rating -- before
anything is energised.

Format::

    name: end_of_line_12v8
    version: "1.2.0"                 # text: YAML would read 1.10 as the number 1.1
    description: Factory end-of-line test of one 12.8 V 100 Ah module
    epic: End-of-line                # optional: the report's epic for every step (else each
                                     # check's family, test_plans/checks/catalogue.py)
    applies_to: [LFP12.8-100, 1s1p]  # DUT names, module models or names, topologies (4S4P), globs
    serial_pattern: "BH12-[0-9]{6}"  # whole serial must match
    requires: [supply, load, bms]    # roles every step needs
    defaults: {settle: "2 s"}        # parameters every step starts from
    steps:
      - name: ocv_before_load        # unique, [a-z0-9_]+, the pytest id
        check: module_voltage         # a registered check (its declaration: test_plans/checks)
        source: 000_b9e4f7d000b6acbf.txt
        parameters: {samples: 10, settle: "2 s"}   # only what the check declares, in its units
        limits:                      # only what the check measures; required ones must be here
          voltage: {in_range: ["12.0 V", "14.6 V"], marginal_pct: 5}
        gate: true                   # stop the plan when this step fails
        retries: 1
        markers: [factory]
        severity: critical
        timeout: "5 min"             # the step ends ERROR (bench made safe) past this
        on_fail: safe_state          # or continue: leave the bench as the check left it

A limit is exactly one of ``in_range: [lo, hi]``, ``le``, ``ge``, ``within_pct: {nominal, pct}``
or ``equals``, plus an optional ``marginal_pct`` band; its values carry units (plain numbers only
for counts), all of one dimension.

A parameter the check declares as a setpoint (``load_current`` -> ``load.current``) is checked
against the station's rating: it is the value the check will command.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import regex as _regex
from pydantic import (AfterValidator, BeforeValidator, Field, PlainSerializer, PrivateAttr, Strict,
                      model_validator)
from pydantic_core import PydanticCustomError

from harness.config import FileModel, SourcedFile, load_document, validate_document
from bankmodel.units import ALIASES, DIMENSIONS, UNITS, Quantity, UnitError, describe_dimension

NAME_PATTERN = r"^[a-z0-9_]+$"
ROLE_PATTERN = r"^[a-z][a-z0-9_]*(\.(can|modbus))?$"
SEED_PATTERN = r"^\d{3}_[0-9a-f]{16}\.txt$"
# role.quantity -> the unit whose dimension a setpoint of that quantity has
SETPOINT_QUANTITIES = {"voltage": "V", "current": "A", "power": "W"}
# markers pytest gives a meaning of its own: a plan must not switch them on by accident
RESERVED_MARKERS = {"skip", "skipif", "xfail", "parametrize", "usefixtures", "filterwarnings"}



def _matching(pattern: str, allowed: str) -> AfterValidator:
    """A text pattern whose error says what is allowed in words, not as a regex."""
    compiled = re.compile(pattern)

    def check(text: str) -> str:
        if not compiled.match(text):
            raise PydanticCustomError("pattern", allowed)
        return text

    return AfterValidator(check)


Name = Annotated[str, _matching(NAME_PATTERN, "lowercase letters, digits and _ (a step name is "
                                               "its pytest id), e.g. pre_parallel_match")]
CheckName = Annotated[str, _matching(NAME_PATTERN, "the name of a registered check: lowercase "
                                                    "letters, digits and _")]
Role = Annotated[str, _matching(ROLE_PATTERN, "a role name such as supply, load, scanner, acir, "
                                               "bms, bms.can")]
SeedName = Annotated[str, _matching(SEED_PATTERN, "a seed document file name, e.g. "
                                                   "000_b9e4f7d000b6acbf.txt")]


# ================================================================================== values
_QUANTITY_LIKE = re.compile(
    r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?(?P<space>\s*)(?P<unit>[A-Za-zµμΩ°%℃]\S*)\s*$")


def _looks_like_quantity(text: str) -> bool:
    """``"14.2 V"``, ``"14.2V"``, ``"5 Mohm"`` (a typo, reported) -- but not ``"1.9.0"``,
    ``"4S4P"`` or ``"s1p2"``, which are text."""
    if len(text) > 100:  # a quantity is short ("14.2 V"); long text stays text
        return False
    match = _QUANTITY_LIKE.match(text)
    if not match:
        return False
    unit = match.group("unit")
    return unit in UNITS or unit in ALIASES or bool(match.group("space"))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _limit_value(value: Any) -> Quantity | float:
    """A limit bound: a quantity with a unit, or a plain number for a count."""
    if _number(value):
        if not math.isfinite(value):
            raise PydanticCustomError("limit_value", "a finite number")
        return value
    try:
        return Quantity.parse(value)
    except UnitError as exc:
        raise PydanticCustomError(exc.kind, exc.allowed + "; or a plain number for a count") from None


def _equals_value(value: Any) -> Quantity | float | bool | str:
    """``equals``: a quantity, a count, true/false, or text (a firmware version)."""
    if isinstance(value, bool) or isinstance(value, str) and not _looks_like_quantity(value):
        return value
    return _limit_value(value)


def _parameter(value: Any) -> Any:
    """A parameter: text that reads as a quantity becomes one, other plain values stay.

    ``"2 s"`` -> Quantity; ``"5 Mohm"`` (number, space, unknown unit) is an error: almost
    certainly a quantity with a typo. ``"1.9.0"`` or ``"s1p2"`` stay text.
    """
    if isinstance(value, str):
        if _looks_like_quantity(value):
            try:
                return Quantity.parse(value)
            except UnitError as exc:
                raise PydanticCustomError(exc.kind, exc.allowed + "; or text that is not "
                                          "a number and a word") from None
        return value
    if isinstance(value, list):
        return [_parameter(v) for v in value]
    if isinstance(value, dict):
        return {k: _parameter(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float)):
        return value
    raise PydanticCustomError("parameter", "a quantity ('2 s'), a number, text, true/false, "
                              "or a list or mapping of those")


def _dump(value: Any) -> Any:
    """Quantities back to their text (``"2 s"``), so a dumped plan reads like the file."""
    if isinstance(value, Quantity):
        return str(value)
    if isinstance(value, list):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


_AS_TEXT = PlainSerializer(_dump)
LimitValue = Annotated[Any, BeforeValidator(_limit_value), _AS_TEXT]
EqualsValue = Annotated[Any, BeforeValidator(_equals_value), _AS_TEXT]
Parameter = Annotated[Any, BeforeValidator(_parameter), _AS_TEXT]


def _percent(value: Any) -> float:
    """A percentage: ``5`` or ``"5 %"`` (the field name already says percent)."""
    if _number(value):
        number = float(value)
    else:
        try:
            number = Quantity.parse(value, "%").value
        except UnitError:
            raise PydanticCustomError("percent", "a percentage: a number or 'N %', e.g. 5") from None
    if not (0 < number < 100):
        raise PydanticCustomError("percent_range", "a percentage above 0 and below 100")
    return number


Percent = Annotated[float, BeforeValidator(_percent)]


def _dimension(value: Any) -> str | None:
    return value.dimension if isinstance(value, Quantity) else None


def _dimension_name(dimension: str | None) -> str:
    return DIMENSIONS[dimension][1] if dimension else "a plain number"


# ================================================================================== limits
class WithinPct(FileModel):
    nominal: LimitValue
    pct: Percent


class Limit(FileModel):
    """One acceptance limit on one measured value.

    ``marginal_pct`` marks a pass that is close to failing: within that percentage of the
    allowed band's width (``in_range``, ``within_pct``) or of the bound's magnitude (``le``,
    ``ge``) from the edge. It flags drift before it becomes a failure; it never fails a step.
    """

    # a YAML list [lo, hi]: strict mode would take only a Python tuple (the items are still
    # checked one by one by LimitValue)
    in_range: Annotated[tuple[LimitValue, LimitValue], Strict(False)] | None = None
    le: LimitValue | None = None
    ge: LimitValue | None = None
    within_pct: WithinPct | None = None
    equals: EqualsValue | None = None
    marginal_pct: Percent | None = None
    description: str = ""

    @model_validator(mode="after")
    def _one_kind_one_dimension(self) -> "Limit":
        kinds = [k for k in ("in_range", "le", "ge", "within_pct", "equals")
                 if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise PydanticCustomError(
                "limit_kind",
                "exactly one of in_range: [lo, hi], le, ge, within_pct: {nominal, pct}, equals"
                + (f" (found {', '.join(kinds)}; for a band use in_range)" if kinds else ""))
        values = self.bounds()
        dims = {_dimension(v) for v in values}
        if len(dims) > 1:
            shown = ", ".join(f"{v}" for v in values)
            raise PydanticCustomError(
                "limit_mixed_dimensions",
                f"values of one dimension (found {shown}: "
                + " and ".join(sorted(_dimension_name(d) for d in dims)) + ")")
        if self.in_range is not None:
            lo, hi = (v.value if isinstance(v, Quantity) else v for v in self.in_range)
            if lo > hi:
                raise PydanticCustomError("limit_order",
                                          f"in_range: [lo, hi] with lo <= hi (found {self.in_range[0]}"
                                          f" > {self.in_range[1]})")
        if self.equals is not None and self.marginal_pct is not None:
            raise PydanticCustomError("limit_marginal", "no marginal_pct with equals")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("in_range", "le", "ge", "within_pct", "equals")
                    if getattr(self, k) is not None)

    def bounds(self) -> list[Any]:
        """Every value the limit compares with (for the dimension checks)."""
        if self.in_range is not None:
            return list(self.in_range)
        if self.within_pct is not None:
            return [self.within_pct.nominal]
        value = self.le if self.le is not None else self.ge if self.ge is not None else self.equals
        return [value] if _number(value) or isinstance(value, Quantity) else []

    @property
    def dimension(self) -> str | None:
        """The dimension the measured value must have (None: a count or an identity)."""
        dims = {_dimension(v) for v in self.bounds()}
        return dims.pop() if dims else None

    def describe(self) -> str:
        if self.in_range is not None:
            return f"{self.in_range[0]} .. {self.in_range[1]}"
        if self.le is not None:
            return f"<= {self.le}"
        if self.ge is not None:
            return f">= {self.ge}"
        if self.within_pct is not None:
            return f"{self.within_pct.nominal} ± {self.within_pct.pct:g} %"
        return f"== {self.equals}"

    def to_limits(self) -> Any:
        """The same limit as :class:`harness.measure.Limits`, numbers in the base unit of the
        dimension (V, A, ohm, W, J, Ah, s, Hz, degC, K, %)."""
        from harness.measure import Limits

        unit = DIMENSIONS[self.dimension][0] if self.dimension else ""
        if self.equals is not None:
            return Limits.equal_to(self.equals.value if isinstance(self.equals, Quantity)
                                   else self.equals)
        if self.in_range is not None:
            return Limits.in_range(_base(self.in_range[0]), _base(self.in_range[1]), unit,
                                   self.marginal_pct)
        if self.le is not None:
            return Limits.at_most(_base(self.le), unit, self.marginal_pct)
        if self.ge is not None:
            return Limits.at_least(_base(self.ge), unit, self.marginal_pct)
        assert self.within_pct is not None
        limits = Limits.within_pct(_base(self.within_pct.nominal), self.within_pct.pct, unit)
        return dataclasses.replace(limits, marginal_pct=self.marginal_pct)


# ================================================================================== steps
def _seed(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _base(value: Any) -> float:
    return value.value if isinstance(value, Quantity) else float(value)


def _positive_time(value: Quantity) -> Quantity:
    if not (0 < value.value <= 7 * 24 * 3600):
        raise PydanticCustomError("timeout", "a time above 0 and at most a week, e.g. 10 min")
    return value


def _marker(name: str) -> str:
    if name in RESERVED_MARKERS:
        raise PydanticCustomError("marker_reserved", "a marker of this project, not one of pytest's "
                                  "own (" + ", ".join(sorted(RESERVED_MARKERS)) + ")")
    return name


class Step(FileModel):
    """One check with its parameters and limits: one pytest test.

    There is no ``setpoints:`` field: the check declares which of its parameters command an
    instrument (``Param(setpoint="load.current")``), and :func:`check_plan` derives the step's
    setpoints from them, so the station's rating check judges the value the check will command.
    """

    name: Name
    check: CheckName
    description: str = ""
    source: Annotated[list[SeedName], BeforeValidator(_seed)] = Field(default_factory=list)
    requires: list[Role] = Field(default_factory=list)
    parameters: dict[str, Parameter] = Field(default_factory=dict)
    limits: dict[str, Limit] = Field(default_factory=dict)
    gate: bool = False
    retries: int = Field(default=0, ge=0, le=10)
    markers: list[Annotated[str, _matching(r"^[a-z][a-z0-9_]*$", "a marker name: lowercase "
                                           "letters, digits and _"), AfterValidator(_marker)]] = \
        Field(default_factory=list)
    # Allure's own scale, so the plan and the report say the same word (safety checks: blocker)
    severity: Literal["blocker", "critical", "normal", "minor", "trivial"] = "normal"
    # bench time the step may take (checked at every wait and measurement) and wall time a
    # single instrument call may hang before the step ends ERROR with the bench made safe
    timeout: Annotated[Quantity["s"], AfterValidator(_positive_time)] | None = None
    # after a failed step: bring the bench to its safe state (the default) or leave it as the
    # check left it (only for steps whose next step needs the state, e.g. a measured trip)
    on_fail: Literal["safe_state", "continue"] = "safe_state"

    _setpoints: dict[str, Quantity] = PrivateAttr(default_factory=dict)
    _setpoint_params: dict[str, tuple[str, ...]] = PrivateAttr(default_factory=dict)
    # derived from the check's declaration: the protocols it needs, and the station roles its
    # parameters name (role -> (protocol, where the name is written))
    _needs: frozenset[str] = PrivateAttr(default_factory=frozenset)
    _instrument_roles: dict[str, tuple[str, tuple[str, ...]]] = PrivateAttr(default_factory=dict)

    @property
    def needs(self) -> frozenset[str]:
        """Role protocols the step's check cannot run without (from its declaration)."""
        return self._needs

    @property
    def instrument_roles(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        return dict(self._instrument_roles)

    def setpoint_loc(self, index: int, key: str) -> tuple[Any, ...]:
        """Where a derived setpoint is written: the step's parameter, or the plan's default."""
        where = self._setpoint_params.get(key, ("parameters", key))
        return where if where[0] == "defaults" else ("steps", index, *where)

    @property
    def setpoints(self) -> dict[str, Quantity]:
        """``role.quantity`` -> value the check will command (derived from its parameters)."""
        return self._setpoints

    def setpoint_roles(self) -> set[str]:
        return {key.partition(".")[0] for key in self.setpoints}


def _version(value: Any) -> Any:
    if _number(value):
        raise PydanticCustomError("version_text", "a quoted version such as \"1.2.0\" "
                                  "(unquoted, YAML reads 1.10 as the number 1.1)")
    return value


# A plan's serial_pattern is matched by the `regex` engine with a time limit, never by `re`: a
# pattern such as (a|aa)+b backtracks for hours on a 40-character serial. Compiling is bounded
# too: regex expands counted repeats, so ((a{1000}){1000}){1000} would never finish compiling.
MAX_PATTERN_CHARS = 200
MAX_PATTERN_SIZE = 2_000          # pattern elements once counted repeats are multiplied out
SERIAL_MATCH_TIMEOUT_S = 0.25  # CPU seconds (the regex module counts process time)


def _pattern_size(items: Any) -> int:
    """Elements of a parsed pattern with counted repeats multiplied out (an upper bound)."""
    from re import _constants as sre  # the standard library's own pattern parser

    repeats = {sre.MAX_REPEAT, sre.MIN_REPEAT, getattr(sre, "POSSESSIVE_REPEAT", sre.MAX_REPEAT)}
    total = 0
    for op, av in items:
        if op in repeats:
            low, high, sub = av
            count = low if high is sre.MAXREPEAT else high
            total += max(int(count), 1) * _pattern_size(sub)
        else:
            total += 1 + sum(_pattern_size(sub) for sub in _subpatterns(av))
        if total > MAX_PATTERN_SIZE:
            return total
    return total


def _subpatterns(av: Any) -> list[Any]:
    from re import _parser

    if isinstance(av, _parser.SubPattern):
        return [av]
    if isinstance(av, (tuple, list)):
        return [sub for item in av for sub in _subpatterns(item)]
    return []


def _braces(text: str) -> str:
    """Text for a PydanticCustomError template, where braces would be read as fields."""
    return text.replace("{", "(").replace("}", ")")


def _pattern(text: str) -> str:
    from re import _parser

    if len(text) > MAX_PATTERN_CHARS:
        raise PydanticCustomError("regex", f"a regular expression of at most {MAX_PATTERN_CHARS} "
                                  "characters")
    try:
        size = _pattern_size(_parser.parse(text))
    except (re.error, RecursionError, OverflowError, ValueError, TypeError) as exc:
        raise PydanticCustomError("regex", _braces(f"a regular expression that compiles ({exc})")) \
            from None
    if size > MAX_PATTERN_SIZE:
        raise PydanticCustomError("regex_size", _braces(
            f"a regular expression of a sensible size: counted repeats multiply (found more than "
            f"{MAX_PATTERN_SIZE} elements once repeats like x(3) are written out)"))
    try:
        _regex.compile(text)
    except (_regex.error, RecursionError, OverflowError, ValueError, TypeError) as exc:
        raise PydanticCustomError("regex", _braces(f"a regular expression that compiles ({exc})")) \
            from None
    return text


class BenchStart(FileModel):
    """The state every step starts from: bench preparation (harness/preparation.py) brings the
    bench there at the start of a run and before any step that follows a safe state."""

    contactors: Literal["closed", "open"] = "closed"
    connect_match: Quantity["V"] = Quantity.parse("100 mV")  # per module in series (000: pre-parallel dV <= 0.1 V)
    settle: Annotated[Quantity["s"], AfterValidator(_positive_time)] = Quantity.parse("1 s")
    # the longest BMS recovery to wait for before connecting (short circuit: 60 s, DOMAIN.md 3)
    bms_ready_within: Annotated[Quantity["s"], AfterValidator(_positive_time)] = Quantity.parse("90 s")


class PlanFile(SourcedFile):
    """A plan: its identity, what it applies to, and its steps in order."""

    name: Annotated[str, Field(min_length=1)]
    version: Annotated[str, BeforeValidator(_version), Field(min_length=1)]
    description: str = ""
    epic: Literal["Series string", "Parallel bank", "BMS communication", "Commissioning",
                  "End-of-line"] | None = None
    applies_to: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    serial_pattern: Annotated[str, AfterValidator(_pattern)] | None = None
    requires: list[Role] = Field(default_factory=list)
    # the DUT an emulated run of this plan uses when --dut is not given (a DUT file stem)
    dut: Annotated[str, Field(min_length=1)] | None = None
    defaults: dict[str, Parameter] = Field(default_factory=dict)
    bench: BenchStart = BenchStart()
    steps: Annotated[list[Step], Field(min_length=1)]

    _label: ClassVar[str] = "<plan>"

    def parameters_for(self, step: Step) -> dict[str, Any]:
        """The plan's defaults overridden by the step's own parameters."""
        return {**self.defaults, **step.parameters}

    def roles_for(self, step: Step) -> set[str]:
        """Every role a step needs: the plan's, the step's and those it sets points on."""
        return set(self.requires) | set(step.requires) | step.setpoint_roles()

    def serial_matches(self, serial: str) -> bool:
        """Whether the whole serial matches ``serial_pattern`` (the `regex` engine, with a time
        limit: a pattern that backtracks catastrophically raises FileError at serial_pattern)."""
        if self.serial_pattern is None:
            return True
        try:
            return _regex.fullmatch(self.serial_pattern, serial,
                                    timeout=SERIAL_MATCH_TIMEOUT_S) is not None
        except TimeoutError:
            raise self.error(("serial_pattern",),
                             f"{self.serial_pattern!r}, which took more than "
                             f"{SERIAL_MATCH_TIMEOUT_S:g} s to match serial '{serial}'",
                             "a regular expression without nested repeats such as (a+)+ or "
                             "(a|aa)+, e.g. 'BH12-[0-9]{6}'") from None

    def check_serial(self, serial: str) -> None:
        """Raise FileError at ``serial_pattern`` if a scanned serial does not match it."""
        if not self.serial_matches(serial):
            raise self.error(("serial_pattern",), f"serial '{serial}'",
                             f"a serial matching {self.serial_pattern!r} (the whole serial)")

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)


# ================================================================================== checks
def _list(names: Collection[str], limit: int = 30) -> str:
    ordered = list(names)
    shown = ", ".join(ordered[:limit])
    return shown + (f", ... ({len(ordered)} in all)" if len(ordered) > limit else "") if ordered \
        else "(none declared)"


def _check_parameter(plan: PlanFile, loc: tuple[Any, ...], step: Step, name: str, value: Any,
                     declared: Any) -> None:
    """A parameter value against its declaration: unit kind, or plain kind."""
    want = declared.dimension
    if want is not None:
        if not isinstance(value, Quantity):
            raise plan.error(loc, f"{value!r} (no unit)",
                             f"{describe_dimension(want)} for {step.check}'s '{name}', e.g. "
                             f"'{_example_value(want)}'")
        if value.dimension != want:
            raise plan.error(loc, f"'{value}'", f"{describe_dimension(want)} for {step.check}'s "
                             f"'{name}' -- '{value.unit}' is {DIMENSIONS[value.dimension][1]} unit")
        if not math.isfinite(value.value) or abs(value.value) > 1e9:
            raise plan.error(loc, f"'{value}'", "a finite value of a sensible size")
        if declared.setpoint and value.value < 0:
            raise plan.error(loc, f"'{value}'", f"a magnitude (>= 0) for {step.check}'s '{name}': it "
                             "commands an instrument, whose direction the check sets")
        if want == "time" and value.value < 0:
            raise plan.error(loc, f"'{value}'", f"a time >= 0 for {step.check}'s '{name}'")
        return
    if isinstance(value, Quantity):
        raise plan.error(loc, f"'{value}' (a {DIMENSIONS[value.dimension][1].split(' ', 1)[-1]})",
                         f"a plain {declared.kind if declared.kind != 'any' else 'value'} for "
                         f"{step.check}'s '{name}' (it takes no unit)")
    kind = declared.kind
    ok = {"any": True,
          "number": _number(value),
          "count": isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 1_000_000,
          "flag": isinstance(value, bool),
          "text": isinstance(value, str)}[kind]
    if not ok:
        words = {"number": "a number", "count": "a whole number from 0 to 1000000",
                 "flag": "true or false", "text": "text", "any": "a value"}[kind]
        raise plan.error(loc, repr(value), f"{words} for {step.check}'s '{name}'")


def _example_value(dimension: str) -> str:
    return {"time": "10 s", "current": "200 A", "voltage": "14.2 V", "resistance": "3 mohm",
            "ratio": "5 %", "charge": "50 Ah", "temperature": "25 degC",
            "temperature_difference": "5 K", "power": "1 kW", "energy": "1 kWh",
            "frequency": "1 kHz"}.get(dimension, "1 " + DIMENSIONS[dimension][0])


def check_plan(plan: PlanFile, known_checks: Mapping[str, Any]) -> PlanFile:
    """Checks across fields, against what each check declares (test_plans/checks/spec.py):

    unique step names; registered checks; every parameter declared by the step's check, in the
    declared unit kind; every limit on a declared measurement, in its unit kind; every required
    limit given. The step's setpoints are derived here from the parameters its check declares
    as setpoints (the plan's defaults included).
    """
    seen: dict[str, int] = {}
    used_defaults: set[str] = set()
    for index, step in enumerate(plan.steps):
        if step.name in seen:
            raise plan.error(("steps", index, "name"),
                             f"step name '{step.name}' twice (also steps[{seen[step.name]}])",
                             "unique step names: each is a pytest id")
        seen[step.name] = index
        if step.check not in known_checks:
            raise plan.error(("steps", index, "check"), f"unknown check '{step.check}'",
                             "a registered check: " + _list(sorted(known_checks)))
        spec = known_checks[step.check]
        for name, value in step.parameters.items():
            loc = ("steps", index, "parameters", name)
            if not spec.declares_param(name):
                raise plan.error(loc, f"parameter '{name}', which {step.check} does not take",
                                 f"parameters of {step.check}: {_list(spec.params)}")
            _check_parameter(plan, loc, step, name, value, spec.params[name])
        for name, value in plan.defaults.items():
            if spec.declares_param(name):
                used_defaults.add(name)
                if name not in step.parameters:
                    _check_parameter(plan, ("defaults", name), step, name, value, spec.params[name])
        for name, limit in step.limits.items():
            loc = ("steps", index, "limits", name)
            declared = spec.limit_measure(name)
            if declared is None:
                raise plan.error(loc, f"a limit on '{name}', which {step.check} does not measure",
                                 f"limits on what {step.check} measures: {_list(spec.limit_keys())}")
            want = declared.dimension
            if limit.bounds() and limit.dimension != want:
                raise plan.error(
                    loc, f"a limit in {_dimension_name(limit.dimension)} ({limit.describe()})",
                    f"{describe_dimension(want) if want else 'a plain number (no unit)'}: "
                    f"{step.check} measures {name} in {declared.unit or 'no unit'}")
        for name in spec.required_limits():
            if name not in step.limits:
                raise plan.error(("steps", index, "limits"),
                                 f"no limit on '{name}' in step '{step.name}'",
                                 f"a limit on every measurement {step.check} must be judged by: "
                                 + _list(spec.required_limits()))
        merged = plan.parameters_for(step)
        derived: dict[str, Quantity] = {}
        sources: dict[str, tuple[str, ...]] = {}
        for name, key in spec.setpoints():
            value = merged.get(name)
            if isinstance(value, Quantity):
                value = Quantity.of(abs(value.magnitude), value.unit) if key.endswith(".current") else value
                if key not in derived or abs(value.value) > abs(derived[key].value):
                    derived[key] = value  # several parameters may command one output: the largest
                    sources[key] = ("parameters", name) if name in step.parameters else ("defaults", name)
        step._setpoints = derived
        step._setpoint_params = sources
        # the check's own needs, and those of each measurement the plan puts a limit on
        step._needs = frozenset(spec.needs) | frozenset(
            m.needs for key in step.limits if (m := spec.limit_measure(key)) is not None and m.needs)
        step._instrument_roles = {
            str(merged.get(name, p.default)): (p.instrument, ("parameters", name) if name in step.parameters
                                               else ("defaults", name) if name in plan.defaults else ("check",))
            for name, p in spec.instrument_params() if merged.get(name, p.default) is not None}
    for name in plan.defaults:
        if name not in used_defaults:
            raise plan.error(("defaults", name), f"default '{name}', which no step's check takes",
                             "parameters of this plan's checks")
    return plan


def load_plan(path: Path | str, known_checks: Mapping[str, Any]) -> PlanFile:
    """Load and check a plan file; raise FileError (file, line, field, found, allowed).

    ``known_checks``: each registered check's declaration (``test_plans.checks.known_checks()``).
    """
    document = load_document(path)
    plan = validate_document(PlanFile, document)
    return check_plan(plan, known_checks)


__all__ = ["Limit", "PlanFile", "SETPOINT_QUANTITIES", "Step", "WithinPct", "check_plan",
           "load_plan"]
