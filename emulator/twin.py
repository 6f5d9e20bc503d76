"""The bank twin: cells, module BMSs, interconnect, master BMS, thermal, bench attachments.

One :class:`Twin` is one bank on one bench. The caller advances its virtual clock; the twin
picks its own internal steps (microseconds right after anything switches, growing
geometrically to the caller's maximum step in steady operation) and never reads wall time.

Cell model: OCV(SOC) from the LFP table plus R0 and two RC pairs, integrated exactly over a
step for a current held at its end-of-step value (so long steps stay stable). The RC pairs
are lumped per module (cells in series carry the same current); SOC, capacity and balancing
are per cell.

What a bench can see is offered through the bench methods (supply, load, contactors,
probes between named nodes, branch shunts, thermocouples) and the master BMS report; the
internal state is public for inspection (``hil simulate``) but checks should not read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from emulator.bms import FAST_ROWS, SLOW_ROWS, BmsArray, BmsInputs
from emulator.circuit import MnaSolver
from emulator.clock import VirtualClock
from emulator.conductors import temperature_factor
from emulator.config.loading import BankSpec
from emulator.master_bms import MasterBms, ModuleViews
from emulator.ocv import SOC_MARGIN, cell_ocv
from emulator.thermal import ThermalNetwork
from emulator.topology import build_layout, module_series_resistance

G_OFF = 1e-7           # S, an open contactor, blown fuse or off MOSFET (10 Mohm)
FET_ON, FET_OFF, FET_CLAMP_POS, FET_CLAMP_NEG, FET_FAILED = 0, 1, 2, 3, 4
FET_STATE_NAMES = {FET_ON: "on", FET_OFF: "off", FET_CLAMP_POS: "avalanche",
                   FET_CLAMP_NEG: "avalanche", FET_FAILED: "failed_short"}
SECONDS_PER_MONTH = 30 * 86400.0
FUSE_CONTINUOUS = 1.1   # a fuse carries 110 % of its rating indefinitely
FUSE_MELT_S = 20.0      # melt integral in units of rating^2 * s (time-delay fuse)
WELD_WINDOW_S = 0.01    # contacts bounce for ~10 ms after closing; a surge then welds them
SLOW_STEP_S = 0.05      # SOC, balancing and temperatures are integrated at most this often


@dataclass
class SupplyState:
    """DC supply across the bank terminals: CV with current limit; it can source, not sink."""

    on: bool = False
    voltage_v: float = 0.0
    current_a: float = 0.0
    output_ohm: float = 1e-3
    region: str = "off"
    rating_v: float = 1000.0
    rating_a: float = 1000.0


@dataclass
class LoadState:
    """Electronic load in constant current; below its minimum voltage it acts as a resistor."""

    on: bool = False
    current_a: float = 0.0
    min_voltage_v: float = 0.5
    region: str = "off"


@dataclass
class Peaks:
    """Largest |current| per branch (and main) and largest |Vds| per module since build."""

    names: list[str]
    current: np.ndarray
    vds_v: np.ndarray

    @property
    def current_a(self) -> dict[str, float]:
        return {name: float(value) for name, value in zip(self.names, self.current)}


@dataclass
class Energy:
    """Energy accounts in joules, for the energy-balance test and for inspection."""

    supply_in: float = 0.0
    load_out: float = 0.0
    chemical: float = 0.0
    coulombic_loss: float = 0.0
    joule: float = 0.0
    rc_loss: float = 0.0
    clamp: float = 0.0
    balancing: float = 0.0


class Twin:
    """A LiFePO4 bank with its BMSs on an emulated bench."""

    def __init__(self, spec: BankSpec, seed: int = 0, dt_min: float = 1e-7, growth: float = 1.2):
        from emulator.faults import apply_scenario  # faults need a built twin

        self.spec = spec
        self.layout = layout = build_layout(spec)
        self.clock = VirtualClock()
        self.rng = np.random.default_rng(seed)
        self.dt_min = dt_min
        self.growth = growth
        mt = spec.module_type
        self.modules = layout.modules
        self.module_index = {m: k for k, m in enumerate(self.modules)}
        n, cells = len(self.modules), mt.cells_in_series
        self.cells = cells
        # identities
        self.serials: dict[str, str] = {}
        self.firmware: dict[str, str] = {}
        for k, m in enumerate(self.modules):
            entry = spec.dut.modules.get(m)
            self.serials[m] = (entry.serial if entry and entry.serial
                               else f"{spec.dut.serial_prefix}{spec.dut.batch}-{k + 1:03d}")
            self.firmware[m] = entry.firmware if entry and entry.firmware else spec.firmware.version
        # cells and module internals
        self.cell_soc = np.full((n, cells), spec.dut.initial_soc_pct / 100.0)
        self.cell_capacity_as = np.full((n, cells), mt.cell.capacity_ah * 3600.0)
        self.resistance_factor = np.ones(n)
        self.r_series = np.full(n, module_series_resistance(spec))
        self.r1 = np.full(n, cells * mt.cell.r1_mohm * 1e-3)
        self.r2 = np.full(n, cells * mt.cell.r2_mohm * 1e-3)
        self.tau1 = np.full(n, mt.cell.tau1_s)
        self.tau2 = np.full(n, mt.cell.tau2_s)
        self.v_rc1 = np.zeros(n)
        self.v_rc2 = np.zeros(n)
        self.eta = mt.cell.coulombic_efficiency
        self.self_discharge_per_s = mt.cell.self_discharge_pct_per_month / 100 / SECONDS_PER_MONTH
        self.extra_heat_w = np.zeros(n)
        self.silent = np.zeros(n, dtype=bool)
        # BMS switch (MOSFETs)
        fet = mt.bms.fet
        self.fet_r_on = np.full(n, 2 * fet.rds_on_mohm * 1e-3)
        self.fet_rating_v = np.full(n, fet.vds_rating_v)
        self.fet_clamp_v = np.full(n, fet.avalanche_clamp_v)
        self.fet_clamp_r = np.full(n, fet.clamp_resistance_mohm * 1e-3)
        self.fet_eas_j = np.full(n, fet.avalanche_energy_j)
        self.fet_region = np.full(n, FET_ON)
        self._fets_all_on = True
        self._clamping = False
        self._clamp_w_prev = np.zeros(n)
        self._fet_gs_cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._rc_cache: tuple[float, np.ndarray, np.ndarray, np.ndarray] | None = None
        self.fet_energy_j = np.zeros(n)
        self.fet_peak_v = np.zeros(n)
        self.bms = BmsArray(mt, n)
        # branches
        self.solver = MnaSolver(layout.netlist)
        nb = len(layout.netlist.branch_names)
        self.g = np.zeros(nb)
        self.s = np.zeros(nb)
        self.stack_idx = np.array([layout.module_stack[m] for m in self.modules])
        self.fet_idx = np.array([layout.module_fet[m] for m in self.modules])
        self.res_idx = np.array([r.branch for r in layout.resistive])
        self.ind_idx = np.array([i.branch for i in layout.inductors])
        self.ind_h = np.array([i.henry for i in layout.inductors])
        self.ind_i = np.zeros(len(layout.inductors))
        self.contactor_closed = {name: True for name in layout.contactors}
        self.contactor_stuck: dict[str, str | None] = {name: None for name in layout.contactors}
        self.contactor_welded = {name: False for name in layout.contactors}
        self.contactor_closed_at = {name: -1.0 for name in layout.contactors}
        self.contactor_hold_open = {name: False for name in layout.contactors}
        self.fuse_blown = {name: False for name in layout.fuses}
        self.supply = SupplyState()
        self.load = LoadState()
        # thermal
        names = [t.name for t in layout.thermal_nodes]
        self.thermal = ThermalNetwork(
            names, np.array([t.heat_capacity for t in layout.thermal_nodes]),
            np.array([t.to_ambient for t in layout.thermal_nodes]), layout.thermal_links,
            spec.dut.ambient_c)
        self._module_thermal = np.array([self.thermal.index[m] for m in self.modules])
        self._resistance_temperatures = self.thermal.temperature.copy()
        self._heat_matrix = np.zeros((len(names), len(layout.resistive)))
        # master
        self.master = MasterBms(spec.firmware, self.modules, layout.branch_of_module,
                                spec.dut.series, mt.bms.limits)
        self._next_master_tick = 0.0
        # bookkeeping
        self._fuse_names = list(layout.branch_lead) + ["main"]
        self._fuse_idx = np.array([layout.branch_lead[b] for b in layout.branch_lead] + [layout.main_branch])
        ratings = np.array([layout.fuses[name] for name in self._fuse_names])
        self._fuse_continuous2 = (FUSE_CONTINUOUS * ratings) ** 2
        self._fuse_melt = FUSE_MELT_S * ratings ** 2
        self._fuse_heat = np.zeros(len(ratings))
        self._fuse_blown_arr = np.zeros(len(ratings), dtype=bool)
        self._peak_current = np.zeros(len(ratings))
        self._weld_watch_until = -1.0
        self.peaks = Peaks(self._fuse_names, self._peak_current, np.zeros(n))
        self._acc_dt = 0.0
        self._acc_charge = np.zeros(n)
        self._acc_charge_raw = np.zeros(n)
        self._acc_res_i2dt = np.zeros(len(layout.resistive))
        self._acc_module_heat = np.zeros(n)
        self.energy = Energy()
        self.events: list[tuple[float, str]] = []
        self.scheduled: list[tuple[float, Callable[[], None], str]] = []
        self.step_count = 0
        self._dt_next = dt_min
        self._dirty_resistive = True
        self.v_nodes = np.zeros(len(layout.netlist.node_names))
        self.branch_v = np.zeros(nb)
        self.branch_i = np.zeros(nb)
        self.observers: list[Callable[["Twin", float], None]] = []
        apply_scenario(self, spec)
        self._refresh_chemistry()
        self._bms_inputs = BmsInputs(np.tile(self._cell_ocv, 1), np.zeros(n),
                                     self.thermal.temperature[self._module_thermal])
        self.master.startup_sync(self._module_views())
        self._apply_master_decisions()
        self._solve(self.dt_min)  # a consistent operating point at t = 0

    # ================================================================== bench: commands
    def set_supply(self, voltage_v: float, current_a: float) -> None:
        self.supply.voltage_v, self.supply.current_a = float(voltage_v), float(current_a)
        self._event("supply setpoint")

    def supply_output(self, on: bool) -> None:
        self.supply.on = bool(on)
        self._event(f"supply output {'on' if on else 'off'}")

    def set_load(self, current_a: float, min_voltage_v: float | None = None) -> None:
        self.load.current_a = max(float(current_a), 0.0)
        if min_voltage_v is not None:
            self.load.min_voltage_v = float(min_voltage_v)
        self._event("load setpoint")

    def load_input(self, on: bool) -> None:
        self.load.on = bool(on)
        self._event(f"load input {'on' if on else 'off'}")

    def set_contactor(self, name: str, closed: bool) -> None:
        if name not in self.contactor_closed:
            raise KeyError(f"no contactor '{name}' (contactors: {', '.join(self.contactor_closed)})")
        stuck = self.contactor_stuck[name]
        if self.contactor_welded[name] or stuck == "closed":
            closed = True
        elif stuck == "open" or (closed and self.contactor_hold_open[name]):
            closed = False
        if closed and not self.contactor_closed[name]:
            self.contactor_closed_at[name] = self.clock.now
            self._weld_watch_until = self.clock.now + WELD_WINDOW_S
        self.contactor_closed[name] = closed
        self._mark_resistive_dirty()
        self._event(f"contactor {name} {'closed' if closed else 'open'}")

    def bms_force_off(self, module: str, off: bool = True) -> None:
        """BMS service command: open (or release) one module's MOSFETs."""
        self.bms.set_forced_off(self.module_index[module], off)
        self._event(f"{module} BMS switch {'forced off' if off else 'released'}")

    def blow_fuse(self, name: str) -> None:
        self.fuse_blown[name] = True
        self._fuse_blown_arr[self._fuse_names.index(name)] = True
        self._mark_resistive_dirty()

    def inverter_heartbeat(self) -> None:
        self.master.heartbeat(self.clock.now)

    def shutdown_bench(self) -> None:
        """Safe state: load off, supply off, main contactor open."""
        self.load_input(False)
        self.supply_output(False)
        self.set_contactor("main", False)

    # ================================================================== bench: measurements
    def _noisy(self, value: float, sigma: float) -> float:
        return float(value + self.rng.normal(0.0, sigma)) if sigma else float(value)

    def node_voltage(self, node: str) -> float:
        return float(self.v_nodes[self.layout.netlist.node_names.index(node)])

    def probe(self, plus: str, minus: str, noise_v: float = 0.0) -> float:
        """Voltage between two named nodes, as a DMM or scanner channel would read it."""
        return self._noisy(self.node_voltage(plus) - self.node_voltage(minus), noise_v)

    def shunt_current(self, branch: str, noise_a: float = 0.0) -> float:
        """Current in a parallel branch's shunt, + = charging the branch."""
        k = self.layout.branch_shunt[branch]
        return self._noisy(self.branch_i[k], noise_a)

    def thermocouple(self, point: str, noise_c: float = 0.0) -> float:
        return self._noisy(self.thermal.temperature[self.thermal.index[point]], noise_c)

    def supply_reading(self) -> tuple[float, float]:
        k = self.layout.supply
        return float(self.branch_v[k]), float(-self.branch_i[k])

    def load_reading(self) -> tuple[float, float]:
        k = self.layout.load
        return float(self.branch_v[k]), float(self.branch_i[k])

    @property
    def terminal_voltage(self) -> float:
        return self.node_voltage("bank+")

    def module_current(self, module: str) -> float:
        return float(self.branch_i[self.stack_idx[self.module_index[module]]])

    def module_stack_voltage(self, module: str) -> float:
        return self.probe(f"{module}.+", f"{module}.B-")

    def module_terminal_voltage(self, module: str) -> float:
        return self.probe(f"{module}.+", f"{module}.P-")

    def vds(self, module: str) -> float:
        return float(self.branch_v[self.fet_idx[self.module_index[module]]])

    def ocv(self) -> np.ndarray:
        """Module open-circuit voltages (V) at the SOC of the last slow-path update."""
        return cell_ocv(self.cell_soc).sum(axis=1)

    def set_module_soc(self, module: str, soc_pct: float) -> None:
        """Set up a module's charge before a run (a bench would have charged it)."""
        self.cell_soc[self.module_index[module], :] = soc_pct / 100.0
        self._refresh_chemistry()

    def soc(self) -> np.ndarray:
        return self.cell_soc.mean(axis=1)

    def fet_state(self, module: str) -> str:
        """The BMS switch as its board commands it (on, charge_off, discharge_off, off), or
        ``avalanche`` while a MOSFET clamps, or ``failed_short`` once avalanche killed it."""
        k = self.module_index[module]
        region = int(self.fet_region[k])
        if region in (FET_FAILED, FET_CLAMP_POS, FET_CLAMP_NEG):
            return FET_STATE_NAMES[region]
        charge, discharge = bool(self.bms.allow_charge()[k]), bool(self.bms.allow_discharge()[k])
        return {(True, True): "on", (False, True): "charge_off",
                (True, False): "discharge_off", (False, False): "off"}[(charge, discharge)]

    # ================================================================== time
    def advance(self, seconds: float, max_step: float = 1.0) -> None:
        """Run the bank for ``seconds`` of virtual time with internal steps <= ``max_step``."""
        target = self.clock.now + max(seconds, 0.0)
        self._refresh_chemistry()  # the caller may have set cell_soc between runs
        while target - self.clock.now > 1e-12:
            now = self.clock.now
            dt = min(self._dt_next, max_step, target - now, self._time_to_events(now))
            dt = max(dt, 1e-9)
            self._step(dt)

    def schedule(self, at_s: float, action: Callable[[], None], what: str) -> None:
        self.scheduled.append((at_s, action, what))
        self.scheduled.sort(key=lambda item: item[0])

    def _time_to_events(self, now: float) -> float:
        horizon = self.bms.time_to_next_trip()
        if self.scheduled:
            horizon = min(horizon, max(self.scheduled[0][0] - now, 0.0))
        return horizon if horizon > 0 else self.dt_min

    def _event(self, what: str) -> None:
        self.events.append((self.clock.now, what))
        self._dt_next = self.dt_min

    # ================================================================== one step
    def _mark_resistive_dirty(self) -> None:
        """A contactor, fuse or fault changed a resistance: settle accumulated heat first."""
        self._slow_path()
        self._dirty_resistive = True

    def _resistive_conductances(self) -> np.ndarray:
        temps = self.thermal.temperature
        values = np.empty(len(self.layout.resistive))
        self._heat_matrix[:] = 0.0
        for k, element in enumerate(self.layout.resistive):
            parts = dict(element.parts)
            if element.copper_part and element.copper_node:
                parts[element.copper_part] *= temperature_factor(temps[self.thermal.index[element.copper_node]])
            for part, node in element.heat_to.items():
                self._heat_matrix[self.thermal.index[node], k] += parts[part]
            open_ = ((element.contactor and not self.contactor_closed[element.contactor])
                     or (element.fuse and self.fuse_blown[element.fuse]))
            values[k] = G_OFF if open_ else 1.0 / max(sum(parts.values()), 1e-9)
        self._resistive_g = values
        self._resistive_r = 1.0 / values
        self._resistance_temperatures = temps.copy()
        self._dirty_resistive = False
        return values

    def _fet_gs(self) -> tuple[np.ndarray, np.ndarray]:
        region = self.fet_region
        if self._fet_gs_cache is not None and np.array_equal(region, self._fet_gs_cache[0]):
            return self._fet_gs_cache[1], self._fet_gs_cache[2]
        g = np.where(region == FET_OFF, G_OFF, 1.0 / self.fet_r_on)
        clamp = (region == FET_CLAMP_POS) | (region == FET_CLAMP_NEG)
        g = np.where(clamp, 1.0 / self.fet_clamp_r, g)
        sign = np.where(region == FET_CLAMP_POS, 1.0, -1.0)
        s = np.where(clamp, sign * self.fet_clamp_v / self.fet_clamp_r, 0.0)
        self._fet_gs_cache = (region.copy(), g, s)
        on = (region == FET_ON) | (region == FET_FAILED)
        self._fet_r_cond = self.fet_r_on * on
        return g, s

    def _supply_gs(self) -> tuple[float, float]:
        sup = self.supply
        if not sup.on or sup.region in ("off", "block"):
            return G_OFF, 0.0
        if sup.region == "cc":
            return 0.0, sup.current_a
        return 1.0 / sup.output_ohm, sup.voltage_v / sup.output_ohm

    def _load_gs(self) -> tuple[float, float]:
        ld = self.load
        if not ld.on or ld.current_a <= 0:
            return G_OFF, 0.0
        if ld.region == "dropout":
            return ld.current_a / ld.min_voltage_v, 0.0
        return 0.0, -ld.current_a

    def _assemble(self, dt: float, emf: np.ndarray) -> None:
        if self._dirty_resistive:
            self._resistive_conductances()
        elif self._acc_dt == 0.0 and np.max(np.abs(self.thermal.temperature
                                                   - self._resistance_temperatures)) > 1.0:
            self._resistive_conductances()  # copper warmed by more than 1 K: +0.4 % resistance
        g, s = self.g, self.s
        g[self.res_idx] = self._resistive_g
        s[self.res_idx] = 0.0
        if len(self.ind_idx):
            g[self.ind_idx] = dt / self.ind_h
            s[self.ind_idx] = -self.ind_i
        if self._rc_cache is None or self._rc_cache[0] != dt:
            a1, a2 = np.exp(-dt / self.tau1), np.exp(-dt / self.tau2)
            r_eq = self.r_series + self.r1 * (1 - a1) + self.r2 * (1 - a2)
            self._rc_cache = (dt, a1, a2, r_eq)
        _, a1, a2, r_eq = self._rc_cache
        g[self.stack_idx] = 1.0 / r_eq
        s[self.stack_idx] = (emf + a1 * self.v_rc1 + a2 * self.v_rc2) / r_eq
        self._a1, self._a2 = a1, a2
        g[self.fet_idx], s[self.fet_idx] = self._fet_gs()
        g[self.layout.supply], s[self.layout.supply] = self._supply_gs()
        g[self.layout.load], s[self.layout.load] = self._load_gs()

    def _pwl_update(self, bv: np.ndarray, bi: np.ndarray) -> bool:
        """Re-pick piecewise-linear regions from a solution; True if any changed."""
        changed = False
        if self.bms.all_closed() and self._fets_all_on:
            return self._pwl_bench(bv, bi, changed)
        v = bv[self.fet_idx]
        i = bi[self.fet_idx]
        allow_d, allow_c = self.bms.allow_discharge(), self.bms.allow_charge()
        region = self.fet_region
        new = region.copy()
        tol = 1e-6
        conducting_ok = ((i >= -tol) & allow_d) | ((i <= tol) & allow_c)
        on = region == FET_ON
        new[on & ~conducting_ok] = FET_OFF
        want_on = (allow_d & (v > tol)) | (allow_c & (v < -tol))
        not_on = (region == FET_OFF) | (region == FET_CLAMP_POS) | (region == FET_CLAMP_NEG)
        candidates = not_on & ~on
        new[candidates & want_on] = FET_ON
        idle = candidates & ~want_on
        new[idle & (v > self.fet_clamp_v)] = FET_CLAMP_POS
        new[idle & (v < -self.fet_clamp_v)] = FET_CLAMP_NEG
        new[idle & (np.abs(v) <= self.fet_clamp_v)] = FET_OFF
        # a clamp that stopped conducting returns to off
        new[(region == FET_CLAMP_POS) & (i < 0) & ~want_on] = FET_OFF
        new[(region == FET_CLAMP_NEG) & (i > 0) & ~want_on] = FET_OFF
        new[region == FET_FAILED] = FET_FAILED
        if not np.array_equal(new, region):
            self.fet_region = new
            changed = True
        self._fets_all_on = bool(np.all(self.fet_region == FET_ON))
        return self._pwl_bench(bv, bi, changed)

    def _pwl_bench(self, bv: np.ndarray, bi: np.ndarray, changed: bool) -> bool:
        """Supply (CV / CC / blocking) and load (CC / dropout) regions."""
        sup, k = self.supply, self.layout.supply
        if sup.on:
            vs, is_ = bv[k], -bi[k]  # is_ = current the supply delivers
            region_s = sup.region
            if region_s in ("off", "block"):
                region_s = "cv" if vs < sup.voltage_v else "block"
            elif region_s == "cv":
                if is_ > sup.current_a + 1e-9:
                    region_s = "cc"
                elif is_ < -1e-9:
                    region_s = "block"
            elif region_s == "cc" and vs > sup.voltage_v + 1e-9:
                region_s = "cv"
            if region_s != sup.region:
                sup.region, changed = region_s, True
        elif sup.region != "off":
            sup.region, changed = "off", True
        ld, k = self.load, self.layout.load
        if ld.on:
            region_l = "cc" if bv[k] >= ld.min_voltage_v else "dropout"
            if region_l != ld.region:
                ld.region, changed = region_l, True
        elif ld.region != "off":
            ld.region, changed = "off", True
        return changed

    def _solve(self, dt: float) -> bool:
        any_change = False
        for _ in range(30):
            self._assemble(dt, self._emf)
            self.v_nodes, self.branch_v, self.branch_i = self.solver.solve(self.g, self.s)
            if not self._pwl_update(self.branch_v, self.branch_i):
                break
            any_change = True
        return any_change

    def _refresh_chemistry(self) -> None:
        """Recompute cell OCVs and module EMFs from SOC (done on the slow path)."""
        self._cell_ocv = cell_ocv(self.cell_soc)
        self._emf = self._cell_ocv.sum(axis=1)

    def _slow_path(self) -> None:
        """Apply what changes slowly -- SOC, balancing, temperatures -- over the accumulated time.

        Electrical transients need microsecond steps, but SOC and temperature move over
        seconds to hours; integrating them at most every SLOW_STEP_S (exactly, from the
        accumulated charge and heat) keeps a 10 us transient cheap without losing accuracy.
        """
        span = self._acc_dt
        if span <= 0:
            return
        i_avg = self._acc_charge_raw / span
        cell_v = self._cell_ocv + ((i_avg * self.r_series + self.v_rc1 + self.v_rc2) / self.cells)[:, None]
        bleed = self.bms.balance_currents(cell_v, i_avg > -0.5)
        self.cell_soc += (self._acc_charge[:, None] - bleed * span) / self.cell_capacity_as
        self.cell_soc -= self.self_discharge_per_s * span
        np.clip(self.cell_soc, -SOC_MARGIN, 1.0 + SOC_MARGIN, out=self.cell_soc)
        bleed_w = (bleed * cell_v).sum(axis=1)
        self.energy.balancing += float(bleed_w.sum()) * span
        heat = self._heat_matrix @ self._acc_res_i2dt
        heat[self._module_thermal] += self._acc_module_heat + bleed_w * span + self.extra_heat_w * span
        self.thermal.step(span, heat / span)
        self._acc_dt = 0.0
        self._acc_charge[:] = 0.0
        self._acc_charge_raw[:] = 0.0
        self._acc_res_i2dt[:] = 0.0
        self._acc_module_heat[:] = 0.0
        self._refresh_chemistry()

    def _step(self, dt: float) -> None:
        regions_before = self.fet_region.copy()
        switched = self._solve(dt)
        now = self.clock.now + dt
        bi, bv = self.branch_i, self.branch_v
        i_mod = bi[self.stack_idx]
        i_fet = bi[self.fet_idx]
        # -- RC pairs and inductors (exact for a current held over the step)
        self.v_rc1 = self._a1 * self.v_rc1 + self.r1 * (1 - self._a1) * i_mod
        self.v_rc2 = self._a2 * self.v_rc2 + self.r2 * (1 - self._a2) * i_mod
        if len(self.ind_idx):
            self.ind_i = bi[self.ind_idx]
        # -- charge and heat, accumulated for the slow path
        effective = np.where(i_mod > 0, self.eta * i_mod, i_mod)
        self._acc_dt += dt
        self._acc_charge += effective * dt
        self._acc_charge_raw += i_mod * dt
        res_i2 = bi[self.res_idx] ** 2
        self._acc_res_i2dt += res_i2 * dt
        rc_w = self.v_rc1 ** 2 / self.r1 + self.v_rc2 ** 2 / self.r2
        fet_w = i_fet * i_fet * self._fet_r_conducting()
        vds = bv[self.fet_idx]
        clamping = (self.fet_region == FET_CLAMP_POS) | (self.fet_region == FET_CLAMP_NEG)
        clamp_w = np.abs(vds * i_fet) * clamping
        self._acc_module_heat += (i_mod * i_mod * self.r_series + rc_w + fet_w + clamp_w) * dt
        # -- MOSFET avalanche and peaks
        np.maximum(self.peaks.vds_v, np.abs(vds), out=self.peaks.vds_v)
        if clamping.any():
            # trapezoid over the step where the clamp already conducted at its start
            energy = np.where(self._clamp_w_prev > 0, 0.5 * (clamp_w + self._clamp_w_prev), clamp_w) * dt
            self.fet_energy_j += energy
            self.energy.clamp += float(energy.sum())
            self._clamping = True
            failed = clamping & (self.fet_energy_j > self.fet_eas_j)
            if failed.any():
                self.fet_region[failed] = FET_FAILED
                for k in np.flatnonzero(failed):
                    self.events.append((now, f"{self.modules[k]} MOSFET failed short after "
                                             f"{self.fet_energy_j[k]:.2f} J avalanche"))
                switched = True
        # -- energy accounts
        e = self.energy
        k_sup, k_load = self.layout.supply, self.layout.load
        e.supply_in -= bv[k_sup] * bi[k_sup] * dt
        e.load_out += bv[k_load] * bi[k_load] * dt
        e.chemical += float(self._emf @ effective) * dt
        e.coulombic_loss += float(self._emf @ (i_mod - effective)) * dt
        e.joule += float(res_i2 @ self._resistive_r + i_mod @ (i_mod * self.r_series)
                         + fet_w.sum()) * dt
        e.rc_loss += float(rc_w.sum()) * dt
        self._clamp_w_prev = clamp_w
        # -- fuses, contactor welding, current peaks
        switched |= self._fuses_and_contactors(dt, now)
        # -- BMS boards: current comparators every step, voltages and temperatures sampled
        self._bms_inputs.current_a = i_mod
        if self.bms.step(dt, self._bms_inputs, FAST_ROWS):
            switched = True
            self.events.append((now, "BMS switch permissions changed: "
                                + self._describe_bms_trips()))
        self.clock.advance_to(now)
        self.step_count += 1
        if self._acc_dt >= SLOW_STEP_S or switched:
            span = self._acc_dt
            self._slow_path()
            cell_v = self._cell_ocv + ((i_mod * self.r_series + self.v_rc1 + self.v_rc2)
                                       / self.cells)[:, None]
            self._bms_inputs = BmsInputs(cell_v, i_mod, self.thermal.temperature[self._module_thermal])
            if self.bms.step(span, self._bms_inputs, SLOW_ROWS):
                switched = True
                self.events.append((now, "BMS switch permissions changed: "
                                    + self._describe_bms_trips()))
        # -- scheduled faults and the master BMS
        while self.scheduled and self.scheduled[0][0] <= now + 1e-12:
            _, action, what = self.scheduled.pop(0)
            action()
            self.events.append((now, what))
            switched = True
        if now >= self._next_master_tick - 1e-12:
            self.master.update(now, self._module_views())
            switched |= self._apply_master_decisions()
            self._next_master_tick = now + self.spec.firmware.report_period_s
        switched |= not np.array_equal(regions_before, self.fet_region)
        if switched or self._clamping:
            # an avalanche lasts microseconds: hold the smallest step until the clamp lets go
            self._dt_next = self.dt_min
        else:
            self._dt_next *= self.growth
        self._clamping = False
        for observer in self.observers:
            observer(self, dt)

    def _fet_r_conducting(self) -> np.ndarray:
        self._fet_gs()
        return self._fet_r_cond

    def _fuses_and_contactors(self, dt: float, now: float) -> bool:
        amps = np.abs(self.branch_i[self._fuse_idx])
        np.maximum(self._peak_current, amps, out=self._peak_current)
        heat = self._fuse_heat + (amps * amps - self._fuse_continuous2) * dt
        np.maximum(heat, 0.0, out=self._fuse_heat)
        changed = False
        melting = (self._fuse_heat > self._fuse_melt) & ~self._fuse_blown_arr
        if melting.any():
            for j in np.flatnonzero(melting):
                name = self._fuse_names[j]
                self.fuse_blown[name] = True
                self._fuse_blown_arr[j] = True
                self.events.append((now, f"fuse {name} ({self.layout.fuses[name]:.0f} A) blown "
                                         f"at {amps[j]:.0f} A"))
            self._mark_resistive_dirty()
            changed = True
        if now <= self._weld_watch_until:
            weld = self.spec.dut.protection.contactor_weld_a
            for j, name in enumerate(self._fuse_names):
                since = now - self.contactor_closed_at[name]
                if 0 <= since <= WELD_WINDOW_S and amps[j] > weld and not self.contactor_welded[name]:
                    self.contactor_welded[name] = True
                    self.events.append((now, f"contactor {name} welded by {amps[j]:.0f} A surge"))
        return changed

    def _describe_bms_trips(self) -> str:
        active = [f"{self.modules[k]}:{name}" for name, k in self.bms.active_trips()]
        return ", ".join(active) or "all released"

    # ================================================================== master link
    def _module_views(self) -> ModuleViews:
        stack_v = self.branch_v[self.stack_idx] if self.step_count else self.ocv()
        return ModuleViews(stack_v=stack_v, current_a=self.branch_i[self.stack_idx], soc=self.soc(),
                           capacity_ah=self.cell_capacity_as.min(axis=1) / 3600.0,
                           allow_charge=self.bms.allow_charge(),
                           allow_discharge=self.bms.allow_discharge(), silent=self.silent,
                           firmware=[self.firmware[m] for m in self.modules])

    def _apply_master_decisions(self) -> bool:
        changed = False
        strings = self.layout.branches[0].startswith("p") if self.layout.branches else False
        for k, m in enumerate(self.modules):
            accepted = bool(self.master.accepted[k])
            if strings:
                branch = self.layout.branch_of_module[m]
                if self.contactor_hold_open[branch] == accepted:
                    self.contactor_hold_open[branch] = not accepted
                    if not accepted:
                        self.set_contactor(branch, False)
                    changed = True
            elif bool(self.bms.admitted[k]) != accepted:
                self.bms.set_admitted(k, accepted)
                changed = True
        if self.master.open_main_request and self.contactor_closed["main"]:
            self.set_contactor("main", False)
            changed = True
        if changed:
            self._dt_next = self.dt_min
        return changed

    # ================================================================== inspection
    def bank_rating(self) -> dict[str, float]:
        """Nominal voltage (V), capacity (Ah) and energy (kWh) from the DUT's topology."""
        mt, dut = self.spec.module_type, self.spec.dut
        volts = dut.series * mt.nominal_voltage_v
        amp_hours = dut.parallel * mt.capacity_ah
        return {"voltage_v": volts, "capacity_ah": amp_hours,
                "energy_kwh": round(volts * amp_hours / 1000.0, 4)}

    def branch_currents(self) -> dict[str, float]:
        return {b: self.shunt_current(b) for b in self.layout.branches}

    def rc_stored_energy_j(self) -> float:
        """Energy held in the RC pairs' capacitances (C = tau / R): 1/2 C v^2."""
        c1, c2 = self.tau1 / self.r1, self.tau2 / self.r2
        return float(np.sum(0.5 * c1 * self.v_rc1 ** 2 + 0.5 * c2 * self.v_rc2 ** 2))

    def stored_energy_j(self) -> float:
        """Chemical energy above empty, integrated over each cell's OCV curve."""
        from emulator.ocv import ocv_energy_wh
        total = 0.0
        for k in range(len(self.modules)):
            for c in range(self.cells):
                total += ocv_energy_wh(0.0, float(self.cell_soc[k, c]),
                                       float(self.cell_capacity_as[k, c] / 3600.0)) * 3600.0
        return total


def build_twin(dut: str, scenario: str | None = None, seed: int = 0, **kwargs) -> Twin:  # type: ignore[no-untyped-def]
    """Validate the files and build a twin (raises emulator.files.FileError on a bad file)."""
    from emulator.config.loading import load_bank_spec
    return Twin(load_bank_spec(dut, scenario), seed=seed, **kwargs)


__all__ = ["Twin", "build_twin", "FET_STATE_NAMES", "math"]
