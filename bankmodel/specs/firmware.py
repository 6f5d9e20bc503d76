"""Firmware profiles (fixtures/firmware/): how a master BMS behaves, as data.

Behaviour that differs between firmware releases -- comm-loss handling, what counts in the
bank's totals, admission of a mismatched module -- lives here so that a good release and a
candidate with regressions are two files, not two code paths.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from bankmodel.specs.base import FileModel, between

# Sane ranges of a firmware profile's figures (see bankmodel.specs.base.between)
Period = between(0.01, 600.0)               # s between reports
Timeout = between(0.05, 3600.0)             # s of silence before acting
Settle = between(0.0, 3600.0)               # s
DeltaV = between(0.001, 1000.0)             # V per module
BankCurrent = between(0.01, 100_000.0)      # A
Quantum = between(0.0, 100.0)               # A


class HeartbeatPolicy(FileModel):
    """Inverter keep-alive (CAN 0x305 / SunSpec CtrlHb) supervision."""

    timeout_s: Timeout = 5.0
    on_loss: Literal["zero_limits", "keep_last", "open_contactor"] = "zero_limits"
    alarm: bool = True
    recover: bool = True
    supervise: bool = True
    from_power_up: bool = True  # count the timeout from power-up, not only from the first heartbeat


class SlavePolicy(FileModel):
    """A module that stops talking to the master."""

    timeout_s: Timeout = 3.0
    drop_capacity: bool = True
    drop_limits: bool = True
    alarm: bool = True


class AdmissionPolicy(FileModel):
    """When a module (or string) may join the bank."""

    max_delta_v_per_module: DeltaV = 0.5
    settle_s: Settle = 2.0
    max_bank_current_a: BankCurrent = 10.0  # compare voltages only near rest: I*R would bias them
    firmware_mismatch: Literal["exclude", "accept"] = "exclude"


class FirmwareProfile(FileModel):
    name: str
    version: str
    description: str = ""
    manufacturer: str = Field(default="PYLON", max_length=8)
    report_period_s: Period = 1.0
    max_parallel: int = Field(default=16, ge=1, le=1000)
    max_series: int = Field(default=4, ge=1, le=1000)
    heartbeat: HeartbeatPolicy = HeartbeatPolicy()
    slave: SlavePolicy = SlavePolicy()
    admission: AdmissionPolicy = AdmissionPolicy()
    limit_quantum_a: Quantum = 0.1
