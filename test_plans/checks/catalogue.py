"""Which family each check belongs to and whether it guards safety: the report's epics and
severities come from here.

Why a table and not arguments to ``@check``: the classification is the qualification engineer's
view of the checks (how a report is read and signed), not part of how a check measures, and one
page shows all of it. A plan may still put a step under another epic (a commissioning or an
end-of-line plan) with its ``epic`` field. The table is keyed by check name only: it does not
follow the modules the code lives in (``parallel.py``, ``series.py``, ``bms_comm.py``,
``protection.py``, ``module.py``, grouped by what a check exercises), and the two need not agree
-- ``firmware_consistency`` is reported under "Series string" and coded in ``bms_comm.py``.

Safety checks are the ones whose failure means energy where it must not be -- a switch that does
not block, an inrush or a trip beyond its limit, a bank that keeps running without supervision,
a joint heating up: their failures are Allure *blockers* and read "SAFETY LIMIT EXCEEDED".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Epic = Literal["Series string", "Parallel bank", "BMS communication", "Commissioning", "End-of-line"]
EPICS: tuple[str, ...] = ("Series string", "Parallel bank", "BMS communication", "Commissioning",
                          "End-of-line")


@dataclass(frozen=True)
class CheckInfo:
    epic: str
    feature: str
    safety: bool = False


_SERIES, _PARALLEL, _COMM, _COMMISSION, _EOL = EPICS

CATALOGUE: dict[str, CheckInfo] = {
    # series string (000: BMS switches in a series stack, mixed firmware)
    "series_mosfet_rating": CheckInfo(_SERIES, "Series MOSFET rating", safety=True),
    "series_mosfet_stress": CheckInfo(_SERIES, "Series MOSFET stress", safety=True),
    "firmware_consistency": CheckInfo(_SERIES, "Firmware consistency"),
    "group_assembly": CheckInfo(_SERIES, "4S4P assembly order", safety=True),
    "group_voltage_match": CheckInfo(_SERIES, "Group voltage match", safety=True),
    "series_match": CheckInfo(_SERIES, "Series matching", safety=True),
    "string_match": CheckInfo(_SERIES, "String matching", safety=True),
    # parallel bank (000, 004)
    "configuration": CheckInfo(_PARALLEL, "Configuration"),
    "pre_parallel_match": CheckInfo(_PARALLEL, "Pre-parallel matching", safety=True),
    "module_ocv_match": CheckInfo(_PARALLEL, "Pre-parallel matching", safety=True),
    "soc_alignment": CheckInfo(_PARALLEL, "Pre-parallel matching"),
    "parallel_inrush": CheckInfo(_PARALLEL, "Parallel inrush", safety=True),
    "current_sharing": CheckInfo(_PARALLEL, "Current sharing"),
    "circulating_current": CheckInfo(_PARALLEL, "Circulating current"),
    "thermal_rise": CheckInfo(_PARALLEL, "Thermal rise", safety=True),
    "soc_drift": CheckInfo(_PARALLEL, "SOC drift"),
    "as_built_layout": CheckInfo(_PARALLEL, "As-built layout"),
    # BMS communication (004)
    "comm_loss_heartbeat": CheckInfo(_COMM, "Communication loss: inverter heartbeat", safety=True),
    "comm_loss_silent_module": CheckInfo(_COMM, "Communication loss: silent module", safety=True),
    "comm_loss_silent_bms": CheckInfo(_COMM, "Communication loss: silent BMS", safety=True),
    "aggregation": CheckInfo(_COMM, "Capacity and limit aggregation"),
    "bms_sync_gating": CheckInfo(_COMM, "BMS sync gating", safety=True),
    "bms_identity": CheckInfo(_COMM, "BMS identity"),
    "bms_comm_health": CheckInfo(_COMM, "BMS communication health"),
    "bms_network": CheckInfo(_COMM, "BMS network"),
    "inverter_recognition": CheckInfo(_COMM, "Inverter recognition"),
    # commissioning (004's sequence)
    "bank_at_rest": CheckInfo(_COMMISSION, "Bank at rest"),
    "polarity": CheckInfo(_COMMISSION, "Polarity", safety=True),
    "branch_protection": CheckInfo(_COMMISSION, "Branch protection", safety=True),
    "main_disconnect": CheckInfo(_COMMISSION, "Main disconnect", safety=True),
    "contactor_proof": CheckInfo(_COMMISSION, "Contactor proof", safety=True),
    # end-of-line (one module)
    "module_identity": CheckInfo(_EOL, "Module identity"),
    "module_acir": CheckInfo(_EOL, "AC internal resistance and SoH"),
    "cell_balance": CheckInfo(_EOL, "Cell balance"),
    "protection_trip": CheckInfo(_EOL, "Protection trip", safety=True),
}


def info(check_name: str) -> CheckInfo:
    """The check's family; a check missing from the table is reported under its own name."""
    return CATALOGUE.get(check_name, CheckInfo("Other", check_name.replace("_", " ").capitalize()))
