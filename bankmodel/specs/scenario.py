"""Fault scenario files (fixtures/scenarios/): faults as data, composable with any DUT.

A fault names its target by position (``s2p3``) or by role (``first``, ``middle``, ``last``),
so one scenario file applies to a 1S4P and to a 4S4P alike.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from bankmodel.specs.base import FileModel, Percent, between

# Sane ranges of a fault's figures (see bankmodel.specs.base.between)
At = between(0.0, 7 * 24 * 3600.0)         # s into the run (at most a week)
ContactResistance = between(0.001, 10_000.0)  # mohm
FetVoltage = between(1.0, 10_000.0)         # V
Energy = between(0.001, 1_000_000.0)        # J
Heat = between(0.0, 100_000.0)              # W
CapacityFactor = between(0.01, 1.0)
ResistanceFactor = between(1.0, 1000.0)
ExtraLength = between(-100.0, 100.0)        # m added to a lead (negative: shorter)
Celsius = between(-60.0, 200.0)

Target = Annotated[str, Field(pattern=r"^(s\d{1,3}p\d{1,3}|first|middle|last)$")]
TerminalTarget = Annotated[str, Field(pattern=r"^(s\d{1,3}p\d{1,3}|first|middle|last)\.[+-]$")]


class SocOffset(FileModel):
    """A module charged to a different SOC than the rest (OCV/SOC mismatch)."""

    kind: Literal["soc_mismatch"]
    module: Target
    soc_pct: Percent


class AgedModule(FileModel):
    kind: Literal["aged_module"]
    module: Target
    capacity_factor: CapacityFactor = 0.8
    resistance_factor: ResistanceFactor = 1.6


class LooseLug(FileModel):
    kind: Literal["loose_lug"]
    terminal: TerminalTarget
    contact_mohm: ContactResistance = 0.5


class UnequalCable(FileModel):
    kind: Literal["unequal_cable"]
    branch: Target
    extra_length_m: ExtraLength = 0.15


class WeakFet(FileModel):
    """A 12 V-class BMS (40 V MOSFETs) fitted in a series string (000)."""

    kind: Literal["weak_fet"]
    module: Target
    vds_rating_v: FetVoltage = 40.0
    avalanche_clamp_v: FetVoltage = 48.0
    avalanche_energy_j: Energy = 2.0


class FirmwareMismatch(FileModel):
    kind: Literal["firmware_mismatch"]
    module: Target
    version: str = "1.9.0"


class SilentModule(FileModel):
    kind: Literal["silent_module"]
    module: Target
    at_s: At = 0.0


class HeartbeatLoss(FileModel):
    """The BMS stops hearing the inverter's keep-alive (bus fault on its receive side)."""

    kind: Literal["heartbeat_loss"]
    at_s: At = 0.0


class SilentBms(FileModel):
    """The master BMS stops transmitting to the inverter (CAN) from ``at_s`` on, while it still
    listens and decides: a broken transmit side or a hung communication task (004: comm loss)."""

    kind: Literal["silent_bms"]
    at_s: At = 0.0


class StuckContactor(FileModel):
    kind: Literal["stuck_contactor"]
    contactor: Annotated[str, Field(pattern=r"^(s\d{1,3}p\d{1,3}|p\d{1,3}|first|middle|last|main)$")]
    stuck: Literal["closed", "open"] = "closed"


class BlownFuse(FileModel):
    kind: Literal["blown_fuse"]
    branch: Annotated[str, Field(pattern=r"^(s\d{1,3}p\d{1,3}|p\d{1,3}|first|middle|last|main)$")]


class HotModule(FileModel):
    kind: Literal["hot_module"]
    module: Target
    extra_heat_w: Heat = 0.0
    initial_temperature_c: Celsius | None = None


class BmsSerial(FileModel):
    """The module's BMS reports another serial than the unit's label (a swapped label, a board
    programmed with another unit's serial)."""

    kind: Literal["bms_serial"]
    module: Target
    serial: Annotated[str, Field(min_length=1, max_length=64)]


class HungInstrument(FileModel):
    """A bench instrument stops answering (firmware hang, a pulled cable): a harness fault, not
    the DUT's -- the unit's attempt ends ERROR and may be retested."""

    kind: Literal["hung_instrument"]
    role: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
    at_s: At = 0.0


Fault = Annotated[
    Union[SocOffset, AgedModule, LooseLug, UnequalCable, WeakFet, FirmwareMismatch, SilentModule,
          HeartbeatLoss, SilentBms, StuckContactor, BlownFuse, HotModule, BmsSerial, HungInstrument],
    Field(discriminator="kind"),
]


class ScenarioFile(FileModel):
    name: str
    description: str = ""
    faults: list[Fault] = Field(default_factory=list)
