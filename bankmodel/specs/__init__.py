"""Validated file models of the twin: module types, DUTs, firmware profiles, fault scenarios."""

from bankmodel.specs.dut import DutFile
from bankmodel.specs.firmware import FirmwareProfile
from bankmodel.specs.loading import BankSpec, load_bank_spec
from bankmodel.specs.module_type import ModuleType
from bankmodel.specs.scenario import ScenarioFile

__all__ = ["BankSpec", "DutFile", "FirmwareProfile", "ModuleType", "ScenarioFile", "load_bank_spec"]
