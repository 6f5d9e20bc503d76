"""Module BMS boards: protections with thresholds and delays, switch commands, balancing.

All modules of a bank are held in arrays, so one step of every BMS is one pass of a compiled
loop whatever the bank size (the twin runs the same loops inside its step kernels, see
emulator/kernels.py). Each protection is a debounce timer: the condition must
hold for its delay before it trips (a real BMS samples and filters the same way); a trip
blocks charge, discharge or both, raises an alarm bit and is released by its own rule
(voltage back past the release threshold, temperature back inside the window by its
hysteresis, or a fixed recovery time for over-current and short circuit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emulator import kernels as kn
from bankmodel.specs.module_type import ModuleType

# Protection names, also the alarm names reported on CAN 0x359 and SunSpec Evt1.
PROTECTIONS = ("cell_overvoltage", "cell_undervoltage", "charge_overcurrent",
               "discharge_overcurrent", "short_circuit", "charge_over_temperature",
               "charge_under_temperature", "discharge_over_temperature",
               "discharge_under_temperature")
FAST_ROWS = np.array([2, 3, 4])            # over-current and short circuit: hardware comparators
SLOW_ROWS = np.array([0, 1, 5, 6, 7, 8])   # cell voltages and temperatures: sampled
BLOCKS_CHARGE = {"cell_overvoltage", "charge_overcurrent", "short_circuit",
                 "charge_over_temperature", "charge_under_temperature"}
BLOCKS_DISCHARGE = {"cell_undervoltage", "discharge_overcurrent", "short_circuit",
                    "discharge_over_temperature", "discharge_under_temperature"}


@dataclass
class BmsInputs:
    cell_v: np.ndarray        # modules x cells, volts under current
    current_a: np.ndarray     # per module, + = charge
    temperature_c: np.ndarray  # per module body


class BmsArray:
    """The BMS boards of every module of a bank, as (protection x module) arrays.

    ``timer``, ``trip_age``, ``tripped`` and ``trip_count`` are views of packed arrays the
    compiled kernels update in place (keep them by reference, write them by item).
    """

    def __init__(self, module_type: ModuleType, count: int):
        self.spec = module_type.bms
        self.count = count
        size = (len(PROTECTIONS), count)
        self._state_f = np.zeros((2,) + size)               # timer, trip age
        self._state_b = np.zeros((3,) + size, dtype=bool)   # tripped, trip and release conditions
        self.timer = self._state_f[kn.BF_TIMER]
        self.trip_age = self._state_f[kn.BF_AGE]
        self.tripped = self._state_b[kn.BB_TRIPPED]
        self._trip = self._state_b[kn.BB_TRIP]
        self._release = self._state_b[kn.BB_RELEASE]
        self.trip_count = np.zeros(size, dtype=np.int64)
        self.forced_off = np.zeros(count, dtype=bool)     # service command "open FETs"
        self.admitted = np.ones(count, dtype=bool)        # master's admission
        self.balancing = np.zeros((count, module_type.cells_in_series), dtype=bool)
        p = self.spec.protections
        self.delay = np.array([[p.cell_overvoltage.delay_s], [p.cell_undervoltage.delay_s],
                               [p.charge_overcurrent.delay_s], [p.discharge_overcurrent.delay_s],
                               [p.short_circuit.delay_s], [p.charge_temperature.delay_s],
                               [p.charge_temperature.delay_s], [p.discharge_temperature.delay_s],
                               [p.discharge_temperature.delay_s]])
        # over-current and short circuit recover after a fixed time; the rest by condition
        self.recovery = np.array([[np.inf], [np.inf], [p.charge_overcurrent.recovery_s],
                                  [p.discharge_overcurrent.recovery_s], [p.short_circuit.recovery_s],
                                  [np.inf], [np.inf], [np.inf], [np.inf]])
        self.blocks_charge = np.array([[name in BLOCKS_CHARGE] for name in PROTECTIONS])
        self.blocks_discharge = np.array([[name in BLOCKS_DISCHARGE] for name in PROTECTIONS])
        ct, dt, b = p.charge_temperature, p.discharge_temperature, self.spec.balancing
        par = np.zeros(kn.P_SIZE)
        par[kn.P_DELAY:kn.P_DELAY + 9] = self.delay[:, 0]
        par[kn.P_RECOVERY:kn.P_RECOVERY + 9] = self.recovery[:, 0]
        par[kn.P_OV], par[kn.P_OV_REL] = p.cell_overvoltage.threshold_v, p.cell_overvoltage.release_v
        par[kn.P_UV], par[kn.P_UV_REL] = p.cell_undervoltage.threshold_v, p.cell_undervoltage.release_v
        par[kn.P_OCC] = p.charge_overcurrent.threshold_a
        par[kn.P_OCD] = p.discharge_overcurrent.threshold_a
        par[kn.P_SC] = p.short_circuit.threshold_a
        par[kn.P_CT_MAX], par[kn.P_CT_MIN], par[kn.P_CT_HYS] = ct.max_c, ct.min_c, ct.hysteresis_k
        par[kn.P_DT_MAX], par[kn.P_DT_MIN], par[kn.P_DT_HYS] = dt.max_c, dt.min_c, dt.hysteresis_k
        par[kn.P_BAL_START] = b.start_cell_v
        par[kn.P_BAL_DELTA] = b.delta_mv * 1e-3
        par[kn.P_BAL_I] = b.current_ma * 1e-3
        self._par = par
        # what each switch may do, as the kernels read it (row 0 charge, row 1 discharge)
        self._allow = np.zeros((2, count), dtype=bool)
        self._refresh()

    def _refresh(self) -> None:
        """Recompute the switch permissions. They are new arrays each time, so a caller
        holding the previous ones (the master's last report) keeps a consistent snapshot."""
        enabled = ~self.forced_off & self.admitted
        self._allow_charge = ~(self.tripped & self.blocks_charge).any(axis=0) & enabled
        self._allow_discharge = ~(self.tripped & self.blocks_discharge).any(axis=0) & enabled
        self._all_closed = bool(self._allow_charge.all() and self._allow_discharge.all())
        self._allow[0] = self._allow_charge
        self._allow[1] = self._allow_discharge

    @property
    def kernel_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(switch permissions, timer/age state, tripped/condition state, trip counts, parameters):
        the packed arrays the twin's compiled step kernels read and update in place."""
        return self._allow, self._state_f, self._state_b, self.trip_count, self._par

    # -- what the switch may do ---------------------------------------------------------------
    def allow_charge(self) -> np.ndarray:
        return self._allow_charge

    def allow_discharge(self) -> np.ndarray:
        return self._allow_discharge

    def set_forced_off(self, k: int, off: bool) -> None:
        self.forced_off[k] = off
        self._refresh()

    def set_admitted(self, k: int, admitted: bool) -> None:
        self.admitted[k] = admitted
        self._refresh()

    def alarms(self, k: int) -> dict[str, bool]:
        return {name: bool(self.tripped[j, k]) for j, name in enumerate(PROTECTIONS)}

    def active_trips(self) -> list[tuple[str, int]]:
        return [(PROTECTIONS[j], int(k)) for j, k in zip(*np.nonzero(self.tripped))]

    # -- one step -----------------------------------------------------------------------------
    def all_closed(self) -> bool:
        """Every switch may conduct both ways (the common case the solver can shortcut)."""
        return self._all_closed

    def permissions_changed(self) -> bool:
        """After a step in which a protection tripped or released: refresh the permissions and
        say whether any switch may now do something different."""
        before = (self._allow_charge, self._allow_discharge)
        self._refresh()
        return not (np.array_equal(before[0], self._allow_charge)
                    and np.array_equal(before[1], self._allow_discharge))

    def step(self, dt: float, x: BmsInputs, rows: np.ndarray | None = None) -> bool:
        """Advance the debounce timers of ``rows`` (all protections by default) by dt.

        A real BMS compares current against its over-current and short-circuit thresholds in
        hardware, microseconds apart, but samples cell voltages and temperatures every few tens
        of milliseconds: the twin does the same (FAST_ROWS every step, SLOW_ROWS on the slow
        path). Returns True if any switch permission changed.
        """
        fast = rows is FAST_ROWS
        changed = kn.bms_step(kn.rows_mask(rows), fast, float(dt),
                              np.ascontiguousarray(x.cell_v, dtype=float),
                              np.ascontiguousarray(x.current_a, dtype=float),
                              np.ascontiguousarray(x.temperature_c, dtype=float),
                              self._state_f, self._state_b, self.trip_count, self._par)
        return bool(changed) and self.permissions_changed()

    def time_to_next_trip(self) -> float:
        """Shortest time until a running debounce timer expires (inf if none runs)."""
        return kn.bms_time_to_next_trip(self._state_f, self._par)

    def balance_currents(self, cell_v: np.ndarray, charging: np.ndarray) -> np.ndarray:
        """Passive balancing: bleed cells above the start voltage and above the lowest cell.

        Returns bleed current per cell (A). Balancing runs while charging or at rest, as most
        4S/16S boards do.
        """
        return kn.bms_balance(np.ascontiguousarray(cell_v, dtype=float),
                              np.ascontiguousarray(charging, dtype=bool), self.balancing, self._par)
