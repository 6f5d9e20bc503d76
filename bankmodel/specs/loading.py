"""Load a DUT with the module type and firmware profile it names, and an optional scenario.

A DUT names its module type and firmware by file stem; they are looked up in the ``modules/``
and ``firmware/`` folders beside the DUT's own folder first, then in the repository's
``fixtures/``. Every file is validated before anything is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bankmodel.specs.dut import DutFile
from bankmodel.specs.firmware import FirmwareProfile
from bankmodel.specs.module_type import ModuleType
from bankmodel.specs.scenario import ScenarioFile
from bankmodel.files import FileError, load_model, load_yaml

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


@dataclass(frozen=True)
class BankSpec:
    """Everything the twin is built from, validated."""

    dut: DutFile
    module_type: ModuleType
    firmware: FirmwareProfile
    scenario: ScenarioFile
    dut_path: Path
    scenario_path: Path | None = None


def _find(stem: str, folder: str, near: Path) -> Path:
    for root in (near.parent.parent / folder, FIXTURES / folder):
        candidate = root / f"{stem}.yaml"
        if candidate.is_file():
            return candidate
    return FIXTURES / folder / f"{stem}.yaml"


def resolve_fixture(name_or_path: str | Path, folder: str) -> Path:
    """A path as given, or a bare name looked up in fixtures/<folder>/."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return FIXTURES / folder / f"{name_or_path}.yaml"


def _field_line(path: Path, key: str) -> int | None:
    try:
        _, located = load_yaml(path)
    except FileError:
        return None
    return located.line_of((key,))


def load_bank_spec(dut: str | Path, scenario: str | Path | None = None) -> BankSpec:
    """Validate a DUT (and scenario) and everything they reference; raise FileError if bad.

    Whether a scenario's targets exist in the DUT's layout needs the twin's topology: the
    emulator checks that (:func:`emulator.faults.check_targets`) before it builds anything."""
    dut_path = resolve_fixture(dut, "duts")
    dut_file = load_model(DutFile, dut_path)
    module_path = _find(dut_file.module_type, "modules", dut_path)
    if not module_path.is_file():
        raise FileError(dut_path, _field_line(dut_path, "module_type"), "module_type",
                        f"'{dut_file.module_type}' (no {module_path})",
                        "the stem of a file in fixtures/modules/")
    firmware_path = _find(dut_file.firmware, "firmware", dut_path)
    if not firmware_path.is_file():
        raise FileError(dut_path, _field_line(dut_path, "firmware"), "firmware",
                        f"'{dut_file.firmware}' (no {firmware_path})",
                        "the stem of a file in fixtures/firmware/")
    module_type = load_model(ModuleType, module_path)
    firmware = load_model(FirmwareProfile, firmware_path)
    scenario_path = resolve_fixture(scenario, "scenarios") if scenario else None
    scenario_file = (load_model(ScenarioFile, scenario_path) if scenario_path
                     else ScenarioFile(name="healthy"))
    spec = BankSpec(dut_file, module_type, firmware, scenario_file, dut_path, scenario_path)
    return spec
