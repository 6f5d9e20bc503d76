"""Imported once by the station's warm process (harness/production/launcher.py): what every
unit's ``hil run`` would otherwise import again. A hardware station's warm process imports only
this, so its units, like any hardware run, load nothing from ``emulator/``."""

import importlib

from harness.emulated import single_threaded_blas

RUN_MODULES = (
    "pytest", "harness.cli", "harness.run", "harness.plugin", "harness.bench", "harness.check_registry",
    "harness.console", "harness.preparation", "harness.store", "harness.supervisor",
    "harness.reporting.allure_labels", "harness.reporting.artifacts", "harness.reporting.plots",
    "harness.reporting.summary", "instruments.drivers", "instruments.scpi", "instruments.can_bms",
    "instruments.sunspec_bms", "test_plans.checks.catalogue",
)

single_threaded_blas()  # before numpy is first imported, as `hil` does
for name in RUN_MODULES:
    importlib.import_module(name)
