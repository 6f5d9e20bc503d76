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
    """The BMS boards of every module of a bank."""

    def __init__(self, module_type: ModuleType, count: int):
        self.spec = module_type.bms
        self.count = count
        names = PROTECTIONS
        self.timer = {name: np.zeros(count) for name in names}
        self.tripped = {name: np.zeros(count, dtype=bool) for name in names}
        self.trip_age = {name: np.zeros(count) for name in names}
        self.trip_count = {name: np.zeros(count, dtype=int) for name in names}
        self.forced_off = np.zeros(count, dtype=bool)     # service command "open FETs"
        self.admitted = np.ones(count, dtype=bool)        # master's admission
        self.balancing = np.zeros((count, module_type.cells_in_series), dtype=bool)
        p = self.spec.protections
        self.delay = {
            "cell_overvoltage": p.cell_overvoltage.delay_s,
            "cell_undervoltage": p.cell_undervoltage.delay_s,
            "charge_overcurrent": p.charge_overcurrent.delay_s,
            "discharge_overcurrent": p.discharge_overcurrent.delay_s,
            "short_circuit": p.short_circuit.delay_s,
            "charge_over_temperature": p.charge_temperature.delay_s,
            "charge_under_temperature": p.charge_temperature.delay_s,
            "discharge_over_temperature": p.discharge_temperature.delay_s,
            "discharge_under_temperature": p.discharge_temperature.delay_s,
        }

    # -- what the switch may do ---------------------------------------------------------------
    def allow_charge(self) -> np.ndarray:
        blocked = np.zeros(self.count, dtype=bool)
        for name in BLOCKS_CHARGE:
            blocked |= self.tripped[name]
        return ~blocked & ~self.forced_off & self.admitted

    def allow_discharge(self) -> np.ndarray:
        blocked = np.zeros(self.count, dtype=bool)
        for name in BLOCKS_DISCHARGE:
            blocked |= self.tripped[name]
        return ~blocked & ~self.forced_off & self.admitted

    def alarms(self, k: int) -> dict[str, bool]:
        return {name: bool(self.tripped[name][k]) for name in PROTECTIONS}

    # -- one step -----------------------------------------------------------------------------
    def conditions(self, x: BmsInputs) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(trip conditions, release conditions) per protection."""
        p = self.spec.protections
        vmax, vmin = x.cell_v.max(axis=1), x.cell_v.min(axis=1)
        t, i = x.temperature_c, x.current_a
        ct, dt = p.charge_temperature, p.discharge_temperature
        trip = {
            "cell_overvoltage": vmax > p.cell_overvoltage.threshold_v,
            "cell_undervoltage": vmin < p.cell_undervoltage.threshold_v,
            "charge_overcurrent": i > p.charge_overcurrent.threshold_a,
            "discharge_overcurrent": -i > p.discharge_overcurrent.threshold_a,
            "short_circuit": -i > p.short_circuit.threshold_a,
            "charge_over_temperature": (t > ct.max_c) & (i > 0.5),
            "charge_under_temperature": (t < ct.min_c) & (i > 0.5),
            "discharge_over_temperature": t > dt.max_c,
            "discharge_under_temperature": t < dt.min_c,
        }
        never = np.zeros(self.count, dtype=bool)
        release = {
            "cell_overvoltage": vmax < p.cell_overvoltage.release_v,
            "cell_undervoltage": vmin > p.cell_undervoltage.release_v,
            "charge_overcurrent": never,
            "discharge_overcurrent": never,
            "short_circuit": never,
            "charge_over_temperature": t < ct.max_c - ct.hysteresis_k,
            "charge_under_temperature": t > ct.min_c + ct.hysteresis_k,
            "discharge_over_temperature": t < dt.max_c - dt.hysteresis_k,
            "discharge_under_temperature": t > dt.min_c + dt.hysteresis_k,
        }
        return trip, release

    def recovery_s(self, name: str) -> float | None:
        p = self.spec.protections
        return {"charge_overcurrent": p.charge_overcurrent.recovery_s,
                "discharge_overcurrent": p.discharge_overcurrent.recovery_s,
                "short_circuit": p.short_circuit.recovery_s}.get(name)

    def step(self, dt: float, x: BmsInputs) -> bool:
        """Advance timers by dt; return True if any switch permission changed."""
        before = (self.allow_charge(), self.allow_discharge())
        trip, release = self.conditions(x)
        for name in PROTECTIONS:
            tripped = self.tripped[name]
            running = trip[name] & ~tripped
            self.timer[name] = np.where(running, self.timer[name] + dt, 0.0)
            fire = running & (self.timer[name] >= self.delay[name] - 1e-12)
            if fire.any():
                tripped |= fire
                self.trip_count[name] += fire
                self.trip_age[name][fire] = 0.0
                self.timer[name][fire] = 0.0
            self.trip_age[name] = np.where(tripped, self.trip_age[name] + dt, 0.0)
            recovery = self.recovery_s(name)
            if recovery is None:
                tripped &= ~(release[name] & (self.trip_age[name] > 0))
            else:
                tripped &= ~(self.trip_age[name] >= recovery)
        after = (self.allow_charge(), self.allow_discharge())
        return not (np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1]))

    def time_to_next_trip(self) -> float:
        """Shortest time until a running debounce timer expires (inf if none runs)."""
        best = np.inf
        for name in PROTECTIONS:
            running = self.timer[name] > 0
            if running.any():
                best = min(best, float(np.min(self.delay[name] - self.timer[name][running])))
        return max(best, 0.0)

    def balance_currents(self, cell_v: np.ndarray, charging: np.ndarray) -> np.ndarray:
        """Passive balancing: bleed cells above the start voltage and above the lowest cell.

        Returns bleed current per cell (A). Balancing runs while charging or at rest near full,
        as most 4S/16S boards do.
        """
        b = self.spec.balancing
        lowest = cell_v.min(axis=1, keepdims=True)
        active = ((cell_v > b.start_cell_v) & (cell_v - lowest > b.delta_mv * 1e-3)
                  & charging[:, None])
        self.balancing = active
        return active * (b.current_ma * 1e-3)
