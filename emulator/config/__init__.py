"""Validated file models of the twin: module types, DUTs, firmware profiles, fault scenarios."""

from emulator.config.dut import DutFile
from emulator.config.firmware import FirmwareProfile
from emulator.config.loading import BankSpec, load_bank_spec
from emulator.config.module_type import ModuleType
from emulator.config.scenario import ScenarioFile

__all__ = ["BankSpec", "DutFile", "FirmwareProfile", "ModuleType", "ScenarioFile", "load_bank_spec"]
