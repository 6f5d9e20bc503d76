"""The station file's ``eol:`` section: how an end-of-line station runs units (``hil station``).

Why in the station file: sockets, retest rules, the label printer and the MES address belong to
the fixture and the factory, not to the test plan -- the same ``eol_module`` plan runs on a
one-socket bench in the lab and on a four-socket line. A plan may still tighten the retest rules
for its own steps (``never_retest``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from bankmodel.specs.base import FileModel
from harness.production.labels import LabelSection
from harness.production.mes import MesSection

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")]


class SocketEntry(FileModel):
    """One test position. ``station`` names the station file of its own instruments and DUT
    connection (relative to this file); without it the socket uses this file's instruments --
    on an emulated station every socket then gets a twin and emulated instruments of its own."""

    name: Name
    station: Annotated[str, Field(min_length=1)] | None = None


class RetestPolicy(FileModel):
    """How many attempts a unit gets, and which outcomes allow another.

    An ERROR (the harness or an instrument failed: nothing was learned about the unit) always
    allows a retest while attempts remain; a FAIL allows one only in ``retest_on`` and never at a
    step of severity ``critical`` or one named in ``never_retest`` (a safety failure: the unit
    goes to analysis, not back on the fixture)."""

    attempts: Annotated[int, Field(ge=1, le=10)] = 3
    retest_on: list[Literal["fail", "error", "aborted"]] = Field(default_factory=lambda: ["fail", "error", "aborted"])
    never_retest: list[Name] = Field(default_factory=list)


class LockPolicy(FileModel):
    """When the station stops taking units until someone lifts the lock with a reason.

    ``consecutive_failures``: that many units in a row failing the *same* step point at the
    fixture (a worn pogo pin, a loose lead), not at the units. ``calibration``: an instrument
    whose calibration is overdue locks the station at start."""

    consecutive_failures: Annotated[int, Field(ge=2, le=100)] = 3
    calibration: bool = True


class LineSection(FileModel):
    sockets: Annotated[list[SocketEntry], Field(min_length=1, max_length=16)] = \
        Field(default_factory=lambda: [SocketEntry(name="1")])
    retest: RetestPolicy = RetestPolicy()
    lock: LockPolicy = LockPolicy()
    label: LabelSection | None = None
    mes: MesSection | None = None

    @field_validator("sockets")
    @classmethod
    def _unique_names(cls, sockets: list[SocketEntry]) -> list[SocketEntry]:
        names = [s.name for s in sockets]
        if len(names) != len(set(names)):
            from pydantic_core import PydanticCustomError
            raise PydanticCustomError("socket_names", "sockets with different names")
        return sockets
