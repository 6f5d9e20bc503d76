"""Firmware profiles (fixtures/firmware/): how a master BMS behaves, as data.

Behaviour that differs between firmware releases -- comm-loss handling, what counts in the
bank's totals, admission of a mismatched module -- lives here so that a good release and a
candidate with regressions are two files, not two code paths.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from emulator.config.base import FileModel, NonNegative, Positive


class HeartbeatPolicy(FileModel):
    """Inverter keep-alive (CAN 0x305 / SunSpec CtrlHb) supervision."""

    timeout_s: Positive = 5.0
    on_loss: Literal["zero_limits", "keep_last", "open_contactor"] = "zero_limits"
    alarm: bool = True
    recover: bool = True
    supervise: bool = True
    from_power_up: bool = True  # count the timeout from power-up, not only from the first heartbeat


class SlavePolicy(FileModel):
    """A module that stops talking to the master."""

    timeout_s: Positive = 3.0
    drop_capacity: bool = True
    drop_limits: bool = True
    alarm: bool = True


class AdmissionPolicy(FileModel):
    """When a module (or string) may join the bank."""

    max_delta_v_per_module: Positive = 0.5
    settle_s: NonNegative = 2.0
    max_bank_current_a: Positive = 10.0  # compare voltages only near rest: I*R would bias them
    firmware_mismatch: Literal["exclude", "accept"] = "exclude"


class FirmwareProfile(FileModel):
    name: str
    version: str
    description: str = ""
    manufacturer: str = Field(default="PYLON", max_length=8)
    report_period_s: Positive = 1.0
    max_parallel: int = Field(default=16, ge=1)
    max_series: int = Field(default=4, ge=1)
    heartbeat: HeartbeatPolicy = HeartbeatPolicy()
    slave: SlavePolicy = SlavePolicy()
    admission: AdmissionPolicy = AdmissionPolicy()
    limit_quantum_a: NonNegative = 0.1
