"""Where the harness finds the checks a plan names: a package given by name, not imported by it.

The checks use the harness (``harness.measure``, the step context); the harness must not import
them back, or the two rooms would lean on each other. So the check package is named here
(``test_plans.checks`` unless ``BANKHIL_CHECKS`` names another, e.g. a lab's own) and loaded
when a run starts, as pytest loads a plugin by name. It must offer ``known_checks()`` (each
check's declaration) and a ``catalogue`` module with ``info(check_name)``.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

DEFAULT_PACKAGE = "test_plans.checks"


def package_name() -> str:
    return os.environ.get("BANKHIL_CHECKS") or DEFAULT_PACKAGE


def checks_package() -> ModuleType:
    return importlib.import_module(package_name())


def known_checks() -> dict[str, Any]:
    """Every registered check's declaration, by check name."""
    return checks_package().known_checks()


def check_info(name: str) -> Any:
    """The catalogue entry of a check (family, documents, safety)."""
    return importlib.import_module(f"{package_name()}.catalogue").info(name)
