"""DUT files (fixtures/duts/): a bank's topology, wiring, protection and module identities."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from emulator.config.base import FileModel, NonNegative, Percent, Positive

POSITION = re.compile(r"^s(\d+)p(\d+)$")


class Cable(FileModel):
    """A copper cable of class 5 (IEC 60228): resistance from length and cross-section."""

    length_m: NonNegative = 1.0
    cross_section_mm2: Positive = 35.0


class CableOverride(FileModel):
    """Per-branch lead override; unset fields keep the bank default."""

    length_m: NonNegative | None = None
    cross_section_mm2: Positive | None = None


class Busbar(FileModel):
    kind: Literal["busbar"] = "busbar"
    width_mm: Positive = 30.0
    thickness_mm: Positive = 5.0
    segment_length_m: Positive = 0.2


class CableBus(FileModel):
    """Modules daisy-chained with jumper cables instead of a busbar."""

    kind: Literal["cable"] = "cable"
    length_m: Positive = 0.3
    cross_section_mm2: Positive = 35.0


class Interconnect(FileModel):
    lead: Cable = Cable()
    leads: dict[str, CableOverride] = Field(default_factory=dict)
    series_link: Cable = Cable(length_m=0.3, cross_section_mm2=35.0)
    bus: Busbar | CableBus = Field(default_factory=Busbar, discriminator="kind")
    main: Cable = Cable(length_m=2.0, cross_section_mm2=70.0)
    lug_contact_uohm: NonNegative = 30.0
    contactor_mohm: NonNegative = 0.2
    shunt_uohm: NonNegative = 50.0
    loop_inductance_uh_per_m: NonNegative = 0.7


class Protection(FileModel):
    branch_fuse_a: Positive = 200.0
    main_fuse_a: Positive = 400.0
    contactor_weld_a: Positive = 600.0


class ModuleEntry(FileModel):
    serial: str | None = None
    firmware: str | None = None
    batch: str | None = None


class DutFile(FileModel):
    """One bank (or a single module, 1S1P) as it stands on the bench."""

    name: str
    description: str = ""
    module_type: str = Field(description="file stem in fixtures/modules/")
    firmware: str = Field(default="good", description="profile stem in fixtures/firmware/")
    series: int = Field(ge=1, le=16)
    parallel: int = Field(ge=1, le=16)
    arrangement: Literal["groups", "strings"] = "groups"
    takeoff: Literal["diagonal", "same_side"] = "diagonal"
    spacing_cm: NonNegative = 10.0
    ambient_c: float = Field(default=25.0, ge=-40, le=80)
    initial_soc_pct: Percent = 50.0
    serial_prefix: str = "BH"
    batch: str = "B0001"
    interconnect: Interconnect = Interconnect()
    protection: Protection = Protection()
    modules: dict[str, ModuleEntry] = Field(default_factory=dict)

    @field_validator("modules", "interconnect")
    @classmethod
    def _positions_are_well_formed(cls, value):  # type: ignore[no-untyped-def]
        keys = value.keys() if isinstance(value, dict) else value.leads.keys()
        for key in keys:
            if not POSITION.match(key):
                raise ValueError(f"'{key}' is not a module position like s1p2")
        return value

    @model_validator(mode="after")
    def _positions_exist(self) -> "DutFile":
        names = list(self.modules) + list(self.interconnect.leads)
        for key in names:
            s, p = (int(x) for x in POSITION.match(key).groups())  # type: ignore[union-attr]
            if not (1 <= s <= self.series and 1 <= p <= self.parallel):
                raise ValueError(
                    f"position {key} is outside the {self.series}S{self.parallel}P bank")
        return self
