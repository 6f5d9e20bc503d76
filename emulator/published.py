"""What the bank's BMS publishes, computed in one place for every endpoint (CAN, SunSpec).

A real master BMS measures its bank once and reports the same figures on whatever link an
inverter uses; the emulated endpoints do the same by reading the twin through this module only
(and the master's :class:`~emulator.master_bms.MasterReport`), so a CAN client and a SunSpec
client of one twin see one bank. Everything here reads the twin's public API.

The figures and the rules behind them:

- *heard*: the modules the master still hears (not in ``report.offline``). Bank-level figures
  are taken over the heard modules; if the master hears none, over every module (it reports
  the last thing every board measured).
- bank voltage: per series position, the mean cell-stack voltage of its heard modules (all of
  its modules if none of them is heard), summed over the positions -- what the module boards
  measure, on either side of an open main contactor. Bank current: the sum of the module
  currents of the first series position (+ = charge).
- cell voltages: as the module boards last sampled them (``Twin.cell_voltages``); temperatures:
  each module's body thermocouple.
- alarms and warnings by protection family (:data:`ALARM_FAMILIES`, the one mapping from the
  module BMS protections of ``emulator.bms.PROTECTIONS`` to what the protocols carry): a
  family's *alarm* is set while one of its protections is tripped on a module considered; its
  *warning* while one of them sees its condition with the debounce timer running (not yet
  tripped) and the family has no alarm -- a warning is the step before the alarm.
- module reports: per module SoC, SoH (weakest cell's capacity over the rated one), stack
  voltage, cell statistics, temperature and balancing cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from bankmodel.positions import position
from emulator.bms import PROTECTIONS

if TYPE_CHECKING:
    from emulator.twin import Twin

# Alarm family (the harness's name for it) <- the module BMS protections that raise it.
ALARM_FAMILIES: dict[str, tuple[str, ...]] = {
    "over_voltage": ("cell_overvoltage",),
    "under_voltage": ("cell_undervoltage",),
    "over_temperature": ("charge_over_temperature", "discharge_over_temperature"),
    "under_temperature": ("charge_under_temperature", "discharge_under_temperature"),
    "charge_over_current": ("charge_overcurrent",),
    "discharge_over_current": ("discharge_overcurrent", "short_circuit"),
}
_FAMILY_ROWS = {family: tuple(PROTECTIONS.index(name) for name in sources)
                for family, sources in ALARM_FAMILIES.items()}
assert sorted(p for sources in ALARM_FAMILIES.values() for p in sources) == sorted(PROTECTIONS), \
    "every protection belongs to exactly one alarm family"


@dataclass(frozen=True)
class Flags:
    """One alarm family's state: alarm (a protection tripped), warning (debounce running)."""

    alarm: bool
    warning: bool


@dataclass(frozen=True)
class ModuleReport:
    """What one module's BMS reports (SunSpec 805, the module rows of 803/804)."""

    soc_pct: float
    soh_pct: float
    voltage_v: float            # cell-stack voltage
    cell_v_max: float
    cell_v_max_cell: int        # 1-based cell number
    cell_v_min: float
    cell_v_min_cell: int
    cell_v_avg: float
    temperature_c: float        # module body (one sensor: every cell reads it)
    balancing_cells: int


@dataclass(frozen=True)
class GroupSummary:
    """Statistics of the heard modules of a group (a string, the bank): the module numbers are
    their series positions (X of sXpY)."""

    soc_pct: float
    soh_pct: float
    cell_v_max: float
    cell_v_max_module: int
    cell_v_min: float
    cell_v_min_module: int
    cell_v_avg: float
    temperature_max_c: float
    temperature_max_module: int
    temperature_min_c: float
    temperature_min_module: int
    temperature_avg_c: float


class Published:
    """One reading of the bank as its BMSs report it, taken from the twin at one instant.

    Arrays are by module in ``twin.modules`` order. Use it before the twin moves on: the figures
    are computed on first use (an endpoint that needs only a few pays only for those).
    """

    def __init__(self, twin: "Twin"):
        self.twin = twin
        self.report = twin.master.report
        self.modules = list(twin.modules)
        self.series_index = np.asarray(twin.master.series_index)   # 0-based series position
        self.series = int(twin.master.series)

    # -- who is heard ---------------------------------------------------------------------------
    @cached_property
    def heard(self) -> np.ndarray:
        """The modules the master still hears."""
        offline = set(self.report.offline)
        return np.array([m not in offline for m in self.modules], dtype=bool)

    @cached_property
    def reporting(self) -> np.ndarray:
        """The modules bank-level figures are taken over: the heard ones, or all if none is."""
        return self.heard if self.heard.any() else np.ones(len(self.modules), dtype=bool)

    @cached_property
    def positions(self) -> list[tuple[int, int]]:
        """(series position X, parallel index Y) of every module sXpY."""
        return [position(m) for m in self.modules]

    # -- measurements ---------------------------------------------------------------------------
    @cached_property
    def stack_v(self) -> np.ndarray:
        twin, row = self.twin, self.twin.node_row
        plus = [row[f"{m}.+"] for m in self.modules]
        minus = [row[f"{m}.B-"] for m in self.modules]
        return twin.v_nodes[plus] - twin.v_nodes[minus]

    @cached_property
    def current_a(self) -> np.ndarray:
        return np.array([self.twin.module_current(m) for m in self.modules])

    @cached_property
    def temperature_c(self) -> np.ndarray:
        return np.array([self.twin.thermocouple(m) for m in self.modules])

    @cached_property
    def cell_v(self) -> np.ndarray:
        """Cell voltages (modules x cells) as the boards last sampled them (a copy)."""
        return np.array(self.twin.cell_voltages())

    @cached_property
    def soc_pct(self) -> np.ndarray:
        return self.twin.soc() * 100.0

    @cached_property
    def soh_pct(self) -> np.ndarray:
        twin = self.twin
        return twin.cell_capacity_as.min(axis=1) / 3600.0 / twin.spec.module_type.capacity_ah * 100.0

    @cached_property
    def balancing(self) -> np.ndarray:
        """Cells bleeding (modules x cells)."""
        return np.array(self.twin.bms.balancing, dtype=bool)

    @cached_property
    def tripped(self) -> np.ndarray:
        """Protections tripped (protection x module)."""
        return np.array(self.twin.bms.tripped, dtype=bool)

    @cached_property
    def pending(self) -> np.ndarray:
        """Protections whose condition is present, debounce running, not tripped (protection x module)."""
        return (np.asarray(self.twin.bms.timer) > 0) & ~self.tripped

    # -- the bank as the master sees it ---------------------------------------------------------
    def bank_voltage(self) -> float:
        """Sum over series positions of the mean stack voltage of the modules reporting there
        (all of the position's modules if none of them is heard)."""
        heard_at = np.bincount(self.series_index, weights=self.reporting, minlength=self.series) > 0
        chosen = self.reporting | ~heard_at[self.series_index]
        sums = np.bincount(self.series_index, weights=self.stack_v * chosen, minlength=self.series)
        counts = np.bincount(self.series_index, weights=chosen, minlength=self.series)
        return float((sums / counts).sum())

    def bank_current(self) -> float:
        """Sum of the module currents of the first series position (+ = charge)."""
        return float(self.current_a[self.series_index == 0].sum())

    def cell_voltage_range(self, members: np.ndarray | None = None) -> tuple[float, float]:
        """(min, max) cell voltage over ``members`` (a bool mask; default: the reporting modules)."""
        cells = self.cell_v[self.reporting if members is None else members]
        return float(cells.min()), float(cells.max())

    def temperatures(self, members: np.ndarray | None = None) -> np.ndarray:
        """Module temperatures over ``members`` (a bool mask; default: the reporting modules)."""
        return self.temperature_c[self.reporting if members is None else members]

    def flags(self, members: np.ndarray | None = None) -> dict[str, Flags]:
        """Alarm and warning of every family over ``members`` (a bool mask or module indices;
        default: the reporting modules)."""
        use = self.reporting if members is None else members
        # by protection (two array calls, not two per family: this runs once a report)
        tripped = self.tripped[:, use].any(axis=1).tolist()
        pending = self.pending[:, use].any(axis=1).tolist()
        result = {}
        for family, rows in _FAMILY_ROWS.items():
            alarm = any(tripped[row] for row in rows)
            result[family] = Flags(alarm, not alarm and any(pending[row] for row in rows))
        return result

    # -- per module and per group ---------------------------------------------------------------
    def module_reports(self) -> list[ModuleReport]:
        """What every module's BMS reports (whether or not the master hears it)."""
        cells = self.cell_v
        columns = (self.soc_pct, self.soh_pct, self.stack_v, cells.max(axis=1), cells.argmax(axis=1) + 1,
                   cells.min(axis=1), cells.argmin(axis=1) + 1, cells.mean(axis=1), self.temperature_c,
                   self.balancing.sum(axis=1))
        return [ModuleReport(*row) for row in zip(*(c.tolist() for c in columns))]

    def group_summary(self, members: np.ndarray) -> GroupSummary | None:
        """Statistics over the heard modules among ``members`` (module indices); None if the
        master hears none of them."""
        use = members[self.heard[members]]
        if use.size == 0:
            return None
        cells, temps = self.cell_v[use], self.temperature_c[use]
        hi = int(np.argmax(cells)) // cells.shape[1]
        lo = int(np.argmin(cells)) // cells.shape[1]
        hot, cold = int(np.argmax(temps)), int(np.argmin(temps))
        series_of = [self.positions[int(k)][0] for k in use]
        return GroupSummary(
            soc_pct=float(self.soc_pct[use].mean()), soh_pct=float(self.soh_pct[use].mean()),
            cell_v_max=float(cells.max()), cell_v_max_module=series_of[hi],
            cell_v_min=float(cells.min()), cell_v_min_module=series_of[lo],
            cell_v_avg=float(cells.mean()),
            temperature_max_c=float(temps[hot]), temperature_max_module=series_of[hot],
            temperature_min_c=float(temps[cold]), temperature_min_module=series_of[cold],
            temperature_avg_c=float(temps.mean()))


def read(twin: "Twin") -> Published:
    """The bank as its BMSs report it now (see :class:`Published`)."""
    return Published(twin)


def bank_voltage_current(twin: "Twin") -> tuple[float, float]:
    """(bank voltage, bank current) as the master reports them (see the module doc)."""
    now = Published(twin)
    return now.bank_voltage(), now.bank_current()


__all__ = ["ALARM_FAMILIES", "Flags", "GroupSummary", "ModuleReport", "Published", "bank_voltage_current",
           "read"]
