"""Module BMS boards: protections with thresholds and delays, switch commands, balancing.

All modules of a bank are held in arrays, so one step of every BMS costs a few numpy
operations whatever the bank size. Each protection is a debounce timer: the condition must
hold for its delay before it trips (a real BMS samples and filters the same way); a trip
blocks charge, discharge or both, raises an alarm bit and is released by its own rule
(voltage back past the release threshold, temperature back inside the window by its
hysteresis, or a fixed recovery time for over-current and short circuit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emulator.config.module_type import ModuleType

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
    """The BMS boards of every module of a bank, as (protection x module) arrays."""

    def __init__(self, module_type: ModuleType, count: int):
        self.spec = module_type.bms
        self.count = count
        size = (len(PROTECTIONS), count)
        self.timer = np.zeros(size)
        self.tripped = np.zeros(size, dtype=bool)
        self.trip_age = np.zeros(size)
        self.trip_count = np.zeros(size, dtype=int)
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
        self._trip = np.zeros(size, dtype=bool)
        self._release = np.zeros(size, dtype=bool)
        self._refresh()

    def _refresh(self) -> None:
        enabled = ~self.forced_off & self.admitted
        self._allow_charge = ~(self.tripped & self.blocks_charge).any(axis=0) & enabled
        self._allow_discharge = ~(self.tripped & self.blocks_discharge).any(axis=0) & enabled
        self._all_closed = bool(self._allow_charge.all() and self._allow_discharge.all())

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

    def _current_conditions(self, i: np.ndarray) -> None:
        p = self.spec.protections
        self._trip[2] = i > p.charge_overcurrent.threshold_a
        self._trip[3] = i < -p.discharge_overcurrent.threshold_a
        self._trip[4] = i < -p.short_circuit.threshold_a

    def _conditions(self, x: BmsInputs) -> None:
        """Fill the (protection x module) trip and release condition arrays."""
        p = self.spec.protections
        vmax, vmin = x.cell_v.max(axis=1), x.cell_v.min(axis=1)
        t, i = x.temperature_c, x.current_a
        ct, dt = p.charge_temperature, p.discharge_temperature
        trip, release = self._trip, self._release
        trip[0] = vmax > p.cell_overvoltage.threshold_v
        trip[1] = vmin < p.cell_undervoltage.threshold_v
        trip[2] = i > p.charge_overcurrent.threshold_a
        trip[3] = -i > p.discharge_overcurrent.threshold_a
        trip[4] = -i > p.short_circuit.threshold_a
        charging = i > 0.5
        trip[5] = (t > ct.max_c) & charging
        trip[6] = (t < ct.min_c) & charging
        trip[7] = t > dt.max_c
        trip[8] = t < dt.min_c
        release[0] = vmax < p.cell_overvoltage.release_v
        release[1] = vmin > p.cell_undervoltage.release_v
        release[2:5] = False
        release[5] = t < ct.max_c - ct.hysteresis_k
        release[6] = t > ct.min_c + ct.hysteresis_k
        release[7] = t < dt.max_c - dt.hysteresis_k
        release[8] = t > dt.min_c + dt.hysteresis_k

    def step(self, dt: float, x: BmsInputs, rows: np.ndarray | None = None) -> bool:
        """Advance the debounce timers of ``rows`` (all protections by default) by dt.

        A real BMS compares current against its over-current and short-circuit thresholds in
        hardware, microseconds apart, but samples cell voltages and temperatures every few tens
        of milliseconds: the twin does the same (FAST_ROWS every step, SLOW_ROWS on the slow
        path). Returns True if any switch permission changed.
        """
        if rows is FAST_ROWS:
            self._current_conditions(x.current_a)
        else:
            self._conditions(x)
        sel = slice(None) if rows is None else rows
        trip, release = self._trip[sel], self._release[sel]
        tripped, timer = self.tripped[sel], self.timer[sel]
        changed = False
        running = trip & ~tripped
        if running.any():
            timer = np.where(running, timer + dt, 0.0)
            fire = running & (timer >= self.delay[sel] - 1e-12)
            if fire.any():
                tripped = tripped | fire
                self.trip_count[sel] += fire
                age = self.trip_age[sel]
                age[fire] = 0.0
                self.trip_age[sel] = age
                timer[fire] = 0.0
                changed = True
            self.timer[sel] = timer
        elif timer.any():
            self.timer[sel] = 0.0
        if tripped.any():
            age = np.where(tripped, self.trip_age[sel] + dt, 0.0)
            self.trip_age[sel] = age
            released = tripped & ((release & (age > dt)) | (age >= self.recovery[sel]))
            if released.any():
                tripped = tripped & ~released
                changed = True
        self.tripped[sel] = tripped
        if not changed:
            return False
        before = (self._allow_charge, self._allow_discharge)
        self._refresh()
        return not (np.array_equal(before[0], self._allow_charge)
                    and np.array_equal(before[1], self._allow_discharge))

    def time_to_next_trip(self) -> float:
        """Shortest time until a running debounce timer expires (inf if none runs)."""
        running = self.timer > 0
        if not running.any():
            return np.inf
        return max(float(np.min(np.where(running, self.delay - self.timer, np.inf))), 0.0)

    def balance_currents(self, cell_v: np.ndarray, charging: np.ndarray) -> np.ndarray:
        """Passive balancing: bleed cells above the start voltage and above the lowest cell.

        Returns bleed current per cell (A). Balancing runs while charging or at rest, as most
        4S/16S boards do.
        """
        b = self.spec.balancing
        lowest = cell_v.min(axis=1, keepdims=True)
        active = ((cell_v > b.start_cell_v) & (cell_v - lowest > b.delta_mv * 1e-3)
                  & charging[:, None])
        self.balancing = active
        return active * (b.current_ma * 1e-3)
