"""The channel map: which instrument input reads which DUT node, shunt or thermocouple, and which
relay drives which contactor -- the one type for it, shared by station files, the harness's
bench and the emulated bench (which builds its own wiring as one of these).

Wiring lives here and in station files and nowhere else (DESIGN.md), so check code only ever
names roles and nodes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, Field, TypeAdapter, field_validator, model_validator
from pydantic_core import PydanticCustomError

from bankmodel.positions import BRANCH_PATTERN, CONTACTOR_PATTERN, POSITION_PATTERN
from bankmodel.specs.base import FileModel
from bankmodel.units import Quantity

ROLE_PATTERN = r"^[a-z][a-z0-9_]*$"
NODE_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.+\-]*$"

Role = Annotated[str, Field(pattern=ROLE_PATTERN, max_length=64,
                            description="a role name: supply, load, ...")]
Node = Annotated[str, Field(pattern=NODE_PATTERN, max_length=64,
                            description="a DUT node, e.g. s1p1.+")]
ChannelNumber = Annotated[int, Field(ge=1, le=9999)]


# ================================================================================== bounds
def quantity_between(low: str, high: str, what: str):  # type: ignore[no-untyped-def]
    """Validator: a quantity from ``low`` to ``high`` (texts with units, e.g. '10 ms', '1 h').

    A period of 1 ns would flood a bus; a timeout of 1e308 s would wait forever: both are
    refused here, before anything is connected."""
    lo, hi = Quantity.parse(low), Quantity.parse(high)

    def check(value: Quantity) -> Quantity:
        if not (lo.value <= value.value <= hi.value):
            raise PydanticCustomError("quantity_bounds", f"{what} from {low} to {high}")
        return value

    return AfterValidator(check)



# ================================================================================== ratings
RATING_KEYS = {"voltage": "voltage_v", "current": "current_a", "power": "power_w"}


class Rating(FileModel):
    """What an instrument (or a shunt, a channel) may be driven to or exposed to."""

    voltage: Quantity["V"] | None = None
    current: Quantity["A"] | None = None
    power: Quantity["W"] | None = None

    @model_validator(mode="after")
    def _positive(self) -> "Rating":
        for key in RATING_KEYS:
            value = getattr(self, key)
            if value is not None and value.value <= 0:
                raise PydanticCustomError("rating_positive",
                                          f"a positive {key} rating (found {value})")
        return self

    def get(self, quantity: str) -> Quantity | None:
        return getattr(self, quantity, None) if quantity in RATING_KEYS else None

    def for_driver(self) -> dict[str, float]:
        """The driver's ``rating`` dict (``{"voltage_v": 60.0, "current_a": 25.0}``), SI."""
        return {RATING_KEYS[k]: getattr(self, k).value for k in RATING_KEYS
                if getattr(self, k) is not None}


# ================================================================================== channels
class VoltageInput(FileModel):
    """A voltage between two DUT nodes (``s1p1.+``, ``s1p1.P-``, ``bank+``)."""

    kind: Literal["voltage"]
    plus: Node
    minus: Node
    rating: Rating | None = None
    label: str = ""


class ShuntInput(FileModel):
    """The voltage across a branch shunt; the current is that voltage over ``resistance``."""

    kind: Literal["shunt"]
    branch: Annotated[str, Field(pattern=BRANCH_PATTERN)]
    resistance: Annotated[Quantity["ohm"], quantity_between("0.1 uohm", "1 kohm", "a shunt resistance")]
    rating: Rating | None = None
    label: str = ""

    @property
    def shunt_ohm(self) -> float:
        return float(self.resistance.value)

    @field_validator("resistance")
    @classmethod
    def _positive(cls, value: Quantity) -> Quantity:
        if value.value <= 0:
            raise PydanticCustomError("shunt_resistance", "a positive resistance, e.g. '50 uohm'")
        return value


class ThermocoupleInput(FileModel):
    """A thermocouple on a module, a terminal (``s1p1.+``) or a busbar segment."""

    kind: Literal["thermocouple"]
    point: Node
    label: str = ""


Input = Annotated[Union[VoltageInput, ShuntInput, ThermocoupleInput], Field(discriminator="kind")]


class VoltageChannel(VoltageInput):
    channel: ChannelNumber


class ShuntChannel(ShuntInput):
    channel: ChannelNumber


class ThermocoupleChannel(ThermocoupleInput):
    channel: ChannelNumber


ScannerChannel = Annotated[Union[VoltageChannel, ShuntChannel, ThermocoupleChannel],
                           Field(discriminator="kind")]
_SCANNER_CHANNEL: TypeAdapter[Any] = TypeAdapter(ScannerChannel)
_INPUT: TypeAdapter[Any] = TypeAdapter(Input)


def input_of(entry: Any) -> VoltageInput | ShuntInput | ThermocoupleInput:
    """A scanner entry's input without its channel number (the models the DMM map uses)."""
    return _INPUT.validate_python(entry.model_dump(exclude={"channel"}))


class ActuatorChannel(FileModel):
    """One relay and the contactor coil it drives (a branch, ``s1p2``/``p1``, or ``main``)."""

    channel: ChannelNumber
    contactor: Annotated[str, Field(pattern=CONTACTOR_PATTERN)]
    label: str = ""


class ChannelMap(FileModel):
    scanner: list[ScannerChannel] = Field(default_factory=list)  # type: ignore[valid-type]
    actuator: list[ActuatorChannel] = Field(default_factory=list)
    dmm: dict[Role, Input] = Field(default_factory=dict)
    acir_module: Annotated[str, Field(pattern=POSITION_PATTERN)] | None = None

    def scanner_channels(self) -> dict[int, Any]:
        return {c.channel: c for c in self.scanner}

    def actuator_channels(self) -> dict[int, str]:
        return {c.channel: c.contactor for c in self.actuator}

    def module_voltage_channels(self) -> dict[str, int]:
        """Module position -> scanner channel measuring its terminals (+ to P-)."""
        return {c.plus[:-2]: c.channel for c in self.scanner
                if c.kind == "voltage" and c.plus.endswith(".+")}

    def shunt_channels(self) -> dict[str, tuple[int, float]]:
        """Branch -> (scanner channel, shunt resistance in ohm)."""
        return {c.branch: (c.channel, c.shunt_ohm) for c in self.scanner if c.kind == "shunt"}

    def thermocouple_channels(self) -> dict[str, int]:
        return {c.point: c.channel for c in self.scanner if c.kind == "thermocouple"}

    def contactor_channel(self, contactor: str) -> int:
        for c in self.actuator:
            if c.contactor == contactor:
                return c.channel
        raise KeyError(f"no actuator channel drives contactor '{contactor}'")


def input_text(source: Any) -> str:
    """An input as a person reads it: ``V(s1p1.+, s1p1.P-)``, ``shunt p2 (100 uohm)``, ``TC s1p1``."""
    if source.kind == "voltage":
        return f"V({source.plus}, {source.minus})"
    if source.kind == "shunt":
        return f"shunt {source.branch} ({source.shunt_ohm * 1e6:g} uohm)"
    return f"TC {source.point}"


