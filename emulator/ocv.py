"""LFP open-circuit voltage against state of charge.

Table: LibreSolar bms-firmware ``ocv_lfp`` (21 points, SOC 100 % down to 0 % in 5 % steps),
as quoted in DOMAIN.md section 3. The curve is flat in the middle (40-90 % SOC moves a 4-cell
module only ~0.2 V), which is why pre-parallel checks measure SOC as well as voltage.
"""

from __future__ import annotations

import numpy as np

_OCV_HIGH_TO_LOW = (3.392, 3.314, 3.309, 3.308, 3.304, 3.296, 3.283, 3.275, 3.271, 3.268, 3.265,
                    3.264, 3.262, 3.252, 3.240, 3.226, 3.213, 3.190, 3.177, 3.132, 2.833)

# Past the rated ends a cell's voltage leaves the table steeply: a little charge below "empty"
# collapses it towards 2 V, a little above "full" lifts it towards 3.9 V. Without these knees a
# bank would keep delivering (or absorbing) charge at a clamped SOC; with them the BMS's UV/OV
# protections trip as on a real module. The knees are 3 % of capacity wide.
SOC_MARGIN = 0.03
SOC_POINTS = np.concatenate(([-SOC_MARGIN], np.linspace(0.0, 1.0, 21), [1.0 + SOC_MARGIN]))
OCV_POINTS = np.concatenate(([1.8], np.array(_OCV_HIGH_TO_LOW[::-1]), [3.9]))


def cell_ocv(soc: np.ndarray | float) -> np.ndarray | float:
    """Cell OCV in volts for SOC as a fraction (0..1 rated, with steep knees just beyond)."""
    return np.interp(soc, SOC_POINTS, OCV_POINTS)


def soc_for_ocv(volts: float) -> float:
    """Inverse of :func:`cell_ocv` on the monotonic table (used to set up scenarios)."""
    return float(np.interp(volts, OCV_POINTS, SOC_POINTS))


def ocv_energy_wh(soc_from: float, soc_to: float, capacity_ah: float) -> float:
    """Chemical energy between two SOCs: the integral of OCV over charge, in Wh."""
    grid = np.linspace(soc_from, soc_to, 2001)
    volts = cell_ocv(grid)
    return float(np.sum((volts[1:] + volts[:-1]) / 2 * np.diff(grid)) * capacity_ah)
