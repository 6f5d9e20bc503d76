"""DUT files (fixtures/duts/): a bank's topology, wiring, protection and module identities."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from bankmodel.specs.base import FileModel, Percent, Stem, between

POSITION = re.compile(r"^s(\d{1,3})p(\d{1,3})$")

# Sane ranges of a bank's figures (see bankmodel.specs.base.between)
CableLength = between(0.01, 100.0)          # m: a lead, a jumper, the main cable
JumperLength = between(0.001, 100.0)        # m
Section = between(0.5, 1000.0)              # mm2 of copper
BarWidth = between(1.0, 500.0)              # mm
BarThickness = between(0.1, 100.0)          # mm
BarSegment = between(0.001, 10.0)           # m between two taps
LugContact = between(0.0, 100_000.0)        # uohm (0.1 ohm: a lug that is barely touching)
ContactorResistance = between(0.0, 100.0)   # mohm
ShuntResistance = between(0.1, 1_000_000.0)  # uohm (0.1 uohm .. 1 ohm; the station's range)
Inductance = between(0.0, 100.0)            # uH per m of loop
FuseRating = between(1.0, 10_000.0)         # A
WeldCurrent = between(1.0, 100_000.0)       # A
Spacing = between(0.0, 1000.0)              # cm between modules


class Cable(FileModel):
    """A copper cable of class 5 (IEC 60228): resistance from length and cross-section."""

    length_m: CableLength = 1.0
    cross_section_mm2: Section = 35.0


class CableOverride(FileModel):
    """Per-branch lead override; unset fields keep the bank default."""

    length_m: CableLength | None = None
    cross_section_mm2: Section | None = None


class Busbar(FileModel):
    kind: Literal["busbar"] = "busbar"
    width_mm: BarWidth = 30.0
    thickness_mm: BarThickness = 5.0
    segment_length_m: BarSegment = 0.2


class CableBus(FileModel):
    """Modules daisy-chained with jumper cables instead of a busbar."""

    kind: Literal["cable"] = "cable"
    length_m: JumperLength = 0.3
    cross_section_mm2: Section = 35.0


class Interconnect(FileModel):
    lead: Cable = Cable()
    leads: dict[str, CableOverride] = Field(default_factory=dict)
    series_link: Cable = Cable(length_m=0.3, cross_section_mm2=35.0)
    bus: Busbar | CableBus = Field(default_factory=Busbar, discriminator="kind")
    main: Cable = Cable(length_m=2.0, cross_section_mm2=70.0)
    lug_contact_uohm: LugContact = 30.0
    contactor_mohm: ContactorResistance = 0.2
    shunt_uohm: ShuntResistance = 50.0
    loop_inductance_uh_per_m: Inductance = 0.7


class Protection(FileModel):
    branch_fuse_a: FuseRating = 200.0
    main_fuse_a: FuseRating = 400.0
    contactor_weld_a: WeldCurrent = 600.0


class ModuleEntry(FileModel):
    serial: str | None = None
    firmware: str | None = None
    batch: str | None = None


class DutFile(FileModel):
    """One bank (or a single module, 1S1P) as it stands on the bench."""

    name: str
    description: str = ""
    module_type: Stem = Field(description="file stem in fixtures/modules/")
    firmware: Stem = Field(default="good", description="profile stem in fixtures/firmware/")
    series: int = Field(ge=1, le=16)
    parallel: int = Field(ge=1, le=16)
    arrangement: Literal["groups", "strings"] = "groups"
    takeoff: Literal["diagonal", "same_side"] = "diagonal"
    spacing_cm: Spacing = 10.0
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
