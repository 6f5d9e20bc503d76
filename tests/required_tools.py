"""Whether CI demands a tool the tests can otherwise skip without (ngspice, PostgreSQL, Allure +
Chromium): one reading of the ``BANKHIL_REQUIRE_*`` variables for every test module.

``1`` requires the tool (a missing one fails the test); anything else -- unset, ``0``, ``yes``,
``true`` -- does not (the test skips). One rule, so ``BANKHIL_REQUIRE_NGSPICE=0`` can never
mean "required" in one module and "not required" in another.
"""

from __future__ import annotations

import os

VARIABLES = ("BANKHIL_REQUIRE_NGSPICE", "BANKHIL_REQUIRE_POSTGRES", "BANKHIL_REQUIRE_REPORT_TOOLS")


def required(variable: str) -> bool:
    """True only when the variable is exactly ``1``."""
    if variable not in VARIABLES:
        raise KeyError(f"{variable} is not one of {', '.join(VARIABLES)}")
    return os.environ.get(variable, "").strip() == "1"
