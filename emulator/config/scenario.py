"""Fault scenario files (fixtures/scenarios/): faults as data, composable with any DUT.

A fault names its target by position (``s2p3``) or by role (``first``, ``middle``, ``last``),
so one scenario file applies to a 1S4P and to a 4S4P alike.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from emulator.config.base import FileModel, NonNegative, Percent, Positive

Target = Annotated[str, Field(pattern=r"^(s\d+p\d+|first|middle|last)$")]
TerminalTarget = Annotated[str, Field(pattern=r"^(s\d+p\d+|first|middle|last)\.[+-]$")]


class SocOffset(FileModel):
    """A module charged to a different SOC than the rest (OCV/SOC mismatch)."""

    kind: Literal["soc_mismatch"]
    module: Target
    soc_pct: Percent


class AgedModule(FileModel):
    kind: Literal["aged_module"]
    module: Target
    capacity_factor: Annotated[float, Field(gt=0, le=1)] = 0.8
    resistance_factor: Annotated[float, Field(ge=1)] = 1.6


class LooseLug(FileModel):
    kind: Literal["loose_lug"]
    terminal: TerminalTarget
    contact_mohm: Positive = 0.5


class UnequalCable(FileModel):
    kind: Literal["unequal_cable"]
    branch: Target
    extra_length_m: float = 0.15


class WeakFet(FileModel):
    """A 12 V-class BMS (40 V MOSFETs) fitted in a series string (000)."""

    kind: Literal["weak_fet"]
    module: Target
    vds_rating_v: Positive = 40.0
    avalanche_clamp_v: Positive = 48.0
    avalanche_energy_j: Positive = 2.0


class FirmwareMismatch(FileModel):
    kind: Literal["firmware_mismatch"]
    module: Target
    version: str = "1.9.0"


class SilentModule(FileModel):
    kind: Literal["silent_module"]
    module: Target
    at_s: NonNegative = 0.0


class HeartbeatLoss(FileModel):
    """The BMS stops hearing the inverter's keep-alive (bus fault on its receive side)."""

    kind: Literal["heartbeat_loss"]
    at_s: NonNegative = 0.0


class SilentBms(FileModel):
    """The master BMS stops transmitting to the inverter (CAN) from ``at_s`` on, while it still
    listens and decides: a broken transmit side or a hung communication task (004: comm loss)."""

    kind: Literal["silent_bms"]
    at_s: NonNegative = 0.0


class StuckContactor(FileModel):
    kind: Literal["stuck_contactor"]
    contactor: Annotated[str, Field(pattern=r"^(s\d+p\d+|p\d+|first|middle|last|main)$")]
    stuck: Literal["closed", "open"] = "closed"


class BlownFuse(FileModel):
    kind: Literal["blown_fuse"]
    branch: Annotated[str, Field(pattern=r"^(s\d+p\d+|p\d+|first|middle|last|main)$")]


class HotModule(FileModel):
    kind: Literal["hot_module"]
    module: Target
    extra_heat_w: NonNegative = 0.0
    initial_temperature_c: float | None = None


Fault = Annotated[
    Union[SocOffset, AgedModule, LooseLug, UnequalCable, WeakFet, FirmwareMismatch, SilentModule,
          HeartbeatLoss, SilentBms, StuckContactor, BlownFuse, HotModule],
    Field(discriminator="kind"),
]


class ScenarioFile(FileModel):
    name: str
    description: str = ""
    faults: list[Fault] = Field(default_factory=list)
