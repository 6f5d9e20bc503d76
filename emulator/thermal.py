"""Lumped thermal network: module bodies, terminals, busbar segments, and ambient.

Backward Euler on  C dT/dt = P - G_amb (T - T_amb) - sum G_link (T - T_other), solved as one
small linear system per step (unconditionally stable, so a one-hour step is as safe as a
microsecond one). The factorisation is reused while the step length is unchanged.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import lu_factor, lu_solve


class ThermalNetwork:
    def __init__(self, names: list[str], heat_capacity: np.ndarray, to_ambient: np.ndarray,
                 links: list[tuple[str, str, float]], ambient_c: float):
        self.names = names
        self.index = {name: k for k, name in enumerate(names)}
        self.heat_capacity = heat_capacity.astype(float)
        self.to_ambient = to_ambient.astype(float)
        size = len(names)
        self.conductance = np.diag(self.to_ambient)
        for a, b, g in links:
            i, j = self.index[a], self.index[b]
            self.conductance[i, i] += g
            self.conductance[j, j] += g
            self.conductance[i, j] -= g
            self.conductance[j, i] -= g
        self.ambient_c = ambient_c
        self.temperature = np.full(size, ambient_c)
        self._dt: float | None = None
        self._lu: tuple[np.ndarray, np.ndarray] | None = None

    def set_ambient_conductance(self, name: str, value: float) -> None:
        k = self.index[name]
        self.conductance[k, k] += value - self.to_ambient[k]
        self.to_ambient[k] = value
        self._dt = None

    def step(self, dt: float, heat_w: np.ndarray) -> None:
        if dt != self._dt:
            self._lu = lu_factor(np.diag(self.heat_capacity / dt) + self.conductance,
                                 check_finite=False)
            self._dt = dt
        rhs = self.heat_capacity / dt * self.temperature + heat_w + self.to_ambient * self.ambient_c
        assert self._lu is not None
        self.temperature = lu_solve(self._lu, rhs, check_finite=False)
