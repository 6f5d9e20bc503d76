"""Lumped thermal network: module bodies, terminals, busbar segments, and ambient.

Backward Euler on  C dT/dt = P - G_amb (T - T_amb) - sum G_link (T - T_other), solved as one
small linear system per step (unconditionally stable, so a one-hour step is as safe as a
microsecond one). The factorisation is reused while the step length is unchanged.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg.lapack import dgetrf, dgetrs


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
            lu, piv, _ = dgetrf(np.diag(self.heat_capacity / dt) + self.conductance)
            self._lu = (lu, piv)
            self._c_over_dt = self.heat_capacity / dt
            self._ambient_heat = self.to_ambient * self.ambient_c
            self._dt = dt
        rhs = self._c_over_dt * self.temperature + heat_w + self._ambient_heat
        assert self._lu is not None
        self.temperature, _ = dgetrs(self._lu[0], self._lu[1], rhs)
