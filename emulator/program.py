"""Bench program files (fixtures/programs/): what the simulated bench does to the bank, as data.

A program is an ordered list of steps, each a mapping with a ``kind``::

    name: default
    steps:
      - {kind: rest, seconds: 10}
      - {kind: load, c_rate: 0.5, seconds: 60}
      - {kind: rest, seconds: 60}

Kinds:

- ``rest``: load off, supply off, wait ``seconds``.
- ``load``: electronic load on at ``current_a`` (or ``c_rate`` x the bank's capacity), supply
  off, wait ``seconds``. The load stays on until a later step turns it off (rest, charge).
- ``discharge``: like ``load`` but ends early once the terminal voltage falls to
  ``until_voltage_v`` (or ``until_cell_voltage_v`` x cells in series x series positions).
- ``charge``: supply on in CV at ``voltage_v`` (or ``cell_voltage_v`` per cell) with a current
  limit ``current_a`` (or ``c_rate``), load off; ends after ``seconds`` or once the supply's
  current tapers below ``until_current_a``.
- ``close_contactor`` / ``open_contactor``: a branch contactor (``s1p2``, ``p1``, ``main`` or a
  role ``first``/``middle``/``last`` among the bank's branches), then wait ``seconds`` (default 0).
- ``open_fets`` / ``release_fets``: the BMS service command on one module (``s2p1`` or a role
  among the bank's modules), then wait ``seconds`` (default 0).
- ``heartbeat``: the simulated inverter's keep-alive on (``enabled: true``, the default at the
  start of every program) or off, then wait ``seconds`` (default 0).

Every step may carry ``max_step_s``, the longest internal solver step while it runs (default
1 s; 1e-5 resolves a contactor surge, 1e-6 a MOSFET turn-off spike). While the heartbeat is on
the run also stops on every whole second to send it, so longer steps only happen with it off.

Targets are resolved against the DUT when the program is run (``emulator.simulate``): a name
the DUT does not have is a file error naming the program's line, so a program written for a
4S4P never runs silently wrong on a 1S1P. Roles keep a program composable with any DUT.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from bankmodel.specs.base import FileModel, Positive

Seconds = Annotated[float, Field(ge=0, le=1e6)]
MaxStep = Annotated[float, Field(ge=1e-7, le=3600)]
Amps = Annotated[float, Field(gt=0, le=10000)]
CRate = Annotated[float, Field(gt=0, le=10)]
ModuleTarget = Annotated[str, Field(pattern=r"^(s\d+p\d+|first|middle|last)$")]
ContactorTarget = Annotated[str, Field(pattern=r"^(s\d+p\d+|p\d+|first|middle|last|main)$")]

MAX_INTERNAL_STEPS = 2_000_000  # per step of a program: seconds / max_step_s


def _exactly_one(model: FileModel, a: str, b: str) -> None:
    given = [name for name in (a, b) if getattr(model, name) is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of {a} or {b} (found {', '.join(given) or 'neither'})")


class _Step(FileModel):
    max_step_s: MaxStep | None = None

    @model_validator(mode="after")
    def _bounded_work(self) -> "_Step":
        seconds = getattr(self, "seconds", 0.0) or 0.0
        if self.max_step_s is not None and seconds / self.max_step_s > MAX_INTERNAL_STEPS:
            raise ValueError(
                f"seconds / max_step_s = {seconds / self.max_step_s:.3g} internal steps; at most "
                f"{MAX_INTERNAL_STEPS} per program step (split the step or raise max_step_s)")
        return self


class Rest(_Step):
    """No external current: load and supply off."""

    kind: Literal["rest"]
    seconds: Seconds


class Load(_Step):
    """Electronic load in constant current (it stays on after the step)."""

    kind: Literal["load"]
    current_a: Amps | None = None
    c_rate: CRate | None = None
    seconds: Seconds
    min_voltage_v: Positive | None = None

    @model_validator(mode="after")
    def _one_current(self) -> "Load":
        _exactly_one(self, "current_a", "c_rate")
        return self


class Discharge(Load):
    """Constant-current discharge, ending at a voltage or after ``seconds``."""

    kind: Literal["discharge"]  # type: ignore[assignment]
    until_voltage_v: Positive | None = None
    until_cell_voltage_v: Annotated[float, Field(gt=0, le=5)] | None = None

    @model_validator(mode="after")
    def _one_cutoff(self) -> "Discharge":
        if self.until_voltage_v is not None and self.until_cell_voltage_v is not None:
            raise ValueError("give at most one of until_voltage_v or until_cell_voltage_v")
        return self


class Charge(_Step):
    """DC supply in CV with a current limit, load off."""

    kind: Literal["charge"]
    voltage_v: Positive | None = None
    cell_voltage_v: Annotated[float, Field(gt=0, le=5)] | None = None
    current_a: Amps | None = None
    c_rate: CRate | None = None
    seconds: Seconds
    until_current_a: Positive | None = None

    @model_validator(mode="after")
    def _one_each(self) -> "Charge":
        _exactly_one(self, "voltage_v", "cell_voltage_v")
        _exactly_one(self, "current_a", "c_rate")
        return self


class CloseContactor(_Step):
    kind: Literal["close_contactor"]
    contactor: ContactorTarget
    seconds: Seconds = 0.0


class OpenContactor(_Step):
    kind: Literal["open_contactor"]
    contactor: ContactorTarget
    seconds: Seconds = 0.0


class OpenFets(_Step):
    """BMS service command: open one module's MOSFETs (charge and discharge)."""

    kind: Literal["open_fets"]
    module: ModuleTarget
    seconds: Seconds = 0.0


class ReleaseFets(_Step):
    kind: Literal["release_fets"]
    module: ModuleTarget
    seconds: Seconds = 0.0


class Heartbeat(_Step):
    """The simulated inverter's keep-alive (CAN 0x305 / SunSpec CtrlHb), once a second."""

    kind: Literal["heartbeat"]
    enabled: bool = True
    seconds: Seconds = 0.0


Step = Annotated[
    Union[Rest, Load, Discharge, Charge, CloseContactor, OpenContactor, OpenFets, ReleaseFets,
          Heartbeat],
    Field(discriminator="kind"),
]


class ProgramFile(FileModel):
    name: str
    description: str = ""
    steps: list[Step] = Field(min_length=1)

    @property
    def duration_s(self) -> float:
        """Planned duration (steps that end early on a condition count in full)."""
        return sum(getattr(step, "seconds", 0.0) for step in self.steps)


__all__ = ["ProgramFile", "Step", "Rest", "Load", "Discharge", "Charge", "CloseContactor",
           "OpenContactor", "OpenFets", "ReleaseFets", "Heartbeat", "MAX_INTERNAL_STEPS"]
