"""Lumped thermal network: module bodies, terminals, busbar segments, and ambient.

Backward Euler on  C dT/dt = P - G_amb (T - T_amb) - sum G_link (T - T_other), solved as one
small linear system per step (unconditionally stable, so a one-hour step is as safe as a
microsecond one). The factorisation is reused while the step length is unchanged.

The per-node quantities are rows of one packed array and the step is a compiled kernel
(emulator/kernels.py), which the twin's slow path calls directly on the same arrays.
"""

from __future__ import annotations

import numpy as np

from emulator import kernels as kn


class ThermalNetwork:
    def __init__(self, names: list[str], heat_capacity: np.ndarray, to_ambient: np.ndarray,
                 links: list[tuple[str, str, float]], ambient_c: float):
        self.names = names
        self.index = {name: k for k, name in enumerate(names)}
        size = len(names)
        self._rows = np.zeros((kn.T_ROWS, size))
        # temperature, heat_capacity and to_ambient are views the kernels update in place
        self.temperature = self._rows[kn.T_TEMP]
        self.heat_capacity = self._rows[kn.T_CAP]
        self.to_ambient = self._rows[kn.T_GAMB]
        self.heat_capacity[:] = heat_capacity
        self.to_ambient[:] = to_ambient
        self.conductance = np.diag(self.to_ambient)
        for a, b, g in links:
            i, j = self.index[a], self.index[b]
            self.conductance[i, i] += g
            self.conductance[j, j] += g
            self.conductance[i, j] -= g
            self.conductance[j, i] -= g
        self._lu = np.zeros((size, size))
        self._lu_meta = np.zeros(kn.lu_meta_size(size), dtype=np.int64)
        self._scalars = np.array([np.nan, float(ambient_c)])  # factorised dt (nan: none), ambient
        self.temperature[:] = ambient_c

    @property
    def ambient_c(self) -> float:
        return float(self._scalars[kn.TS_AMBIENT])

    @ambient_c.setter
    def ambient_c(self, value: float) -> None:
        self._scalars[kn.TS_AMBIENT] = value
        self._scalars[kn.TS_DT] = np.nan  # the ambient heat term is set up with the factors

    def set_ambient_conductance(self, name: str, value: float) -> None:
        k = self.index[name]
        self.conductance[k, k] += value - self.to_ambient[k]
        self.to_ambient[k] = value
        self._scalars[kn.TS_DT] = np.nan

    def step(self, dt: float, heat_w: np.ndarray) -> None:
        info = kn.thermal_step(float(dt), np.ascontiguousarray(heat_w, dtype=float), self._rows,
                               self.conductance, self._lu, self._lu_meta, self._scalars)
        if info != 0:
            raise np.linalg.LinAlgError(f"singular thermal matrix (pivot {info})")
