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
Fault scenarios, the BMS endpoints and ``hil simulate`` use the twin through its public
methods only (the "set-up and faults" and "inspection" sections: ``set_part_resistance``,
``lengthen_lead``, ``age_module``, ``stick_contactor``, ``invalidate_resistances``,
``cell_voltages``, ``bms_inputs``, ``fet_voltages`` ...); the underscore names are the twin's own.

Speed: the arithmetic of a step (solve, regions, RC pairs, accumulators, energy, fuses, BMS
comparators) and of the slow path runs in compiled kernels (emulator/kernels.py) on packed
arrays; the public state arrays (``v_rc1``, ``r_series``, ``branch_i``, ``cell_soc`` ...) are
views of those, updated in place (keep them by reference, change them by item, never rebind
them). Python handles what is rare and stateful -- events, trips, fuse blows, welding,
scheduled faults, master ticks -- from the flags the kernels return.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from bankmodel.positions import STRING
from emulator import kernels as kn
from emulator.bms import BmsArray, BmsInputs
from emulator.circuit import MnaSolver
from emulator.clock import TwinClock
from emulator.conductors import temperature_factor
from bankmodel.specs.loading import BankSpec
from emulator.master_bms import MasterBms, ModuleViews
from emulator.ocv import OCV_POINTS, SOC_MARGIN, SOC_POINTS, cell_ocv
from emulator.thermal import ThermalNetwork
from emulator.topology import build_layout, module_series_resistance

G_OFF = kn.G_OFF        # S, an open contactor, blown fuse or off MOSFET (10 Mohm)
FET_ON, FET_OFF, FET_CLAMP_POS, FET_CLAMP_NEG, FET_FAILED = (
    kn.FET_ON, kn.FET_OFF, kn.FET_CLAMP_POS, kn.FET_CLAMP_NEG, kn.FET_FAILED)
FET_STATE_NAMES = {FET_ON: "on", FET_OFF: "off", FET_CLAMP_POS: "avalanche",
                   FET_CLAMP_NEG: "avalanche", FET_FAILED: "failed_short"}
SECONDS_PER_MONTH = 30 * 86400.0
FUSE_CONTINUOUS = 1.1   # a fuse carries 110 % of its rating indefinitely
FUSE_MELT_S = 20.0      # melt integral in units of rating^2 * s (time-delay fuse)
WELD_WINDOW_S = 0.01    # contacts bounce for ~10 ms after closing; a surge then welds them
SLOW_STEP_S = 0.05      # SOC, balancing and temperatures are integrated at most this often
(_EV_PWL, _EV_FAILED, _EV_CLAMPING, _EV_MELT, _EV_BMS, _EV_SLOW_DUE, _EV_RESISTIVE, _EV_SINGULAR,
 _EV_SLOW_DONE, _EV_SLOW_BMS) = (
    kn.EV_PWL, kn.EV_FAILED, kn.EV_CLAMPING, kn.EV_MELT, kn.EV_BMS, kn.EV_SLOW_DUE,
    kn.EV_RESISTIVE, kn.EV_SINGULAR, kn.EV_SLOW_DONE, kn.EV_SLOW_BMS)
_OP_STEP = kn.OP_STEP
_EV_RARE = _EV_FAILED | _EV_MELT | _EV_BMS
_SUPPLY_CODE = {name: code for code, name in enumerate(kn.SUPPLY_REGIONS)}
_LOAD_CODE = {name: code for code, name in enumerate(kn.LOAD_REGIONS)}


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
    """Energy accounts in joules, for the energy-balance test and for inspection.

    The step kernels accumulate into the twin's scalar array; ``Twin.energy`` copies the
    accounts into this object when it is read.
    """

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
        # node name -> row of v_nodes (the netlist keeps a list; probes look names up often)
        self.node_row = {name: k for k, name in enumerate(layout.netlist.node_names)}
        self.clock = TwinClock()
        self.rng = np.random.default_rng(seed)
        self.dt_min = dt_min
        self.growth = growth
        mt = spec.module_type
        self.modules = layout.modules
        self.module_index = {m: k for k, m in enumerate(self.modules)}
        n, cells = len(self.modules), mt.cells_in_series
        self.cells = cells
        # scalars and flags shared with the kernels
        self._sc = np.zeros(kn.S_SIZE)
        self._sc[kn.S_RC_DT] = np.nan
        self._sc[kn.S_CELLS] = cells
        self._sc[kn.S_SOC_MIN], self._sc[kn.S_SOC_MAX] = -SOC_MARGIN, 1.0 + SOC_MARGIN
        self._sc[kn.S_SLOW_STEP] = SLOW_STEP_S
        self._bench_sent: tuple | None = None  # supply and load settings the kernels last got
        self._flags = np.zeros(kn.I_SIZE, dtype=np.int64)
        self._flags[kn.I_FETS_ALL_ON] = 1
        # identities
        self.serials: dict[str, str] = {}
        self.serial_faulted: set[str] = set()            # a bms_serial fault set these
        self.instrument_hangs: dict[str, float] = {}     # role -> bench time it stops answering
        self.firmware: dict[str, str] = {}
        for k, m in enumerate(self.modules):
            entry = spec.dut.modules.get(m)
            self.serials[m] = (entry.serial if entry and entry.serial
                               else f"{spec.dut.serial_prefix}{spec.dut.batch}-{k + 1:03d}")
            self.firmware[m] = entry.firmware if entry and entry.firmware else spec.firmware.version
        # cells and module internals (rows of the packed per-cell and per-module arrays)
        self._cells = np.zeros((kn.C_ROWS, n, cells))
        self._mod = np.zeros((kn.M_ROWS, n))
        self.cell_soc = self._cells[kn.C_SOC]
        self.cell_soc[:] = spec.dut.initial_soc_pct / 100.0
        self.cell_capacity_as = self._cells[kn.C_CAP]
        self.cell_capacity_as[:] = mt.cell.capacity_ah * 3600.0
        self._cell_ocv = self._cells[kn.C_OCV]
        self._emf = self._mod[kn.M_EMF]
        self.resistance_factor = np.ones(n)
        self.r_series = self._mod[kn.M_RSER]
        self.r_series[:] = module_series_resistance(spec)
        self.r1 = self._mod[kn.M_R1]
        self.r1[:] = cells * mt.cell.r1_mohm * 1e-3
        self.r2 = self._mod[kn.M_R2]
        self.r2[:] = cells * mt.cell.r2_mohm * 1e-3
        self.tau1 = self._mod[kn.M_TAU1]
        self.tau1[:] = mt.cell.tau1_s
        self.tau2 = self._mod[kn.M_TAU2]
        self.tau2[:] = mt.cell.tau2_s
        self.v_rc1 = self._mod[kn.M_VRC1]
        self.v_rc2 = self._mod[kn.M_VRC2]
        self.eta = mt.cell.coulombic_efficiency
        self.self_discharge_per_s = mt.cell.self_discharge_pct_per_month / 100 / SECONDS_PER_MONTH
        self.extra_heat_w = self._mod[kn.M_EXTRA_HEAT]
        self.silent = np.zeros(n, dtype=bool)
        # BMS switch (MOSFETs)
        fet = mt.bms.fet
        self.fet_r_on = self._mod[kn.M_FET_RON]
        self.fet_r_on[:] = 2 * fet.rds_on_mohm * 1e-3
        self.fet_rating_v = np.full(n, fet.vds_rating_v)
        self.fet_clamp_v = self._mod[kn.M_FET_CLAMPV]
        self.fet_clamp_v[:] = fet.avalanche_clamp_v
        self.fet_clamp_r = self._mod[kn.M_FET_CLAMPR]
        self.fet_clamp_r[:] = fet.clamp_resistance_mohm * 1e-3
        self.fet_eas_j = self._mod[kn.M_FET_EAS]
        self.fet_eas_j[:] = fet.avalanche_energy_j
        self.fet_region = np.full(n, FET_ON, dtype=np.int64)
        self._clamp_w_prev = self._mod[kn.M_CLAMPW_PREV]
        self.fet_energy_j = self._mod[kn.M_FET_E]
        self.fet_peak_v = np.zeros(n)
        self.bms = BmsArray(mt, n)
        # branches (the solver's arrays: g, s, branch voltages and currents, node voltages)
        self.solver = MnaSolver(layout.netlist)
        self.solver.factored = self._flags[kn.I_FACTORED:kn.I_FACTORISATIONS + 1]
        branches = self.solver.branches
        self.g, self.s = branches[kn.B_G], branches[kn.B_S]
        self.branch_v, self.branch_i = branches[kn.B_V], branches[kn.B_I]
        self.v_nodes = self.solver.v_nodes
        self.stack_idx = np.array([layout.module_stack[m] for m in self.modules], dtype=np.int64)
        self.fet_idx = np.array([layout.module_fet[m] for m in self.modules], dtype=np.int64)
        self.lead_idx = np.array([layout.branch_lead[b] for b in layout.branches], dtype=np.int64)
        self._resistive_index = {element.name: k for k, element in enumerate(layout.resistive)}
        self.res_idx = np.array([r.branch for r in layout.resistive], dtype=np.int64)
        self.ind_idx = np.array([i.branch for i in layout.inductors], dtype=np.int64)
        self._ind = np.zeros((2, len(layout.inductors)))
        self.ind_h = self._ind[kn.L_H]
        self.ind_h[:] = [i.henry for i in layout.inductors]
        self.ind_i = self._ind[kn.L_I]
        self._res = np.zeros((3, len(layout.resistive)))
        self._resistive_g, self._resistive_r = self._res[kn.R_G], self._res[kn.R_R]
        self._acc_res_i2dt = self._res[kn.R_ACC]
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
        self._module_thermal = np.array([self.thermal.index[m] for m in self.modules], dtype=np.int64)
        self._resistance_temperatures = self.thermal._rows[kn.T_RES_TEMP]
        self._resistance_temperatures[:] = self.thermal.temperature
        # Joule heat: (thermal node, resistive element) pairs, the part's resistance in _heat_r
        heat_pairs = [(self.thermal.index[node], k) for k, element in enumerate(layout.resistive)
                      for node in element.heat_to.values()]
        self._heat_pairs = np.array(heat_pairs, dtype=np.int64).reshape(-1, 2).T
        self._heat_r = np.zeros(len(heat_pairs))
        # master
        self.master = MasterBms(spec.firmware, self.modules, layout.branch_of_module,
                                spec.dut.series, mt.bms.limits)
        self._next_master_tick = 0.0
        self._strings = bool(layout.branches) and STRING.match(layout.branches[0]) is not None
        # fuses (rows: melt heat, continuous rating^2, melt integral, peak current, blown)
        self._fuse_names = list(layout.branch_lead) + ["main"]
        self._fuse_idx = np.array([layout.branch_lead[b] for b in layout.branch_lead]
                                  + [layout.main_branch], dtype=np.int64)
        ratings = np.array([layout.fuses[name] for name in self._fuse_names])
        self._fuse = np.zeros((kn.F_ROWS, len(ratings)))
        self._fuse_heat = self._fuse[kn.F_HEAT]
        self._fuse_continuous2 = self._fuse[kn.F_CONT2]
        self._fuse_continuous2[:] = (FUSE_CONTINUOUS * ratings) ** 2
        self._fuse_melt = self._fuse[kn.F_MELT]
        self._fuse_melt[:] = FUSE_MELT_S * ratings ** 2
        self._peak_current = self._fuse[kn.F_PEAK]
        self._fuse_blown_arr = self._fuse[kn.F_BLOWN]  # 1.0 once blown
        self._weld_watch_until = -1.0
        self.peaks = Peaks(self._fuse_names, self._peak_current, self._mod[kn.M_VDS_PEAK])
        self._energy = Energy()
        self.events: list[tuple[float, str]] = []
        self.scheduled: list[tuple[float, Callable[[], None], str]] = []
        self.step_count = 0
        self._dt_next = dt_min
        self._dirty_resistive = True
        self._rc_cache: object | None = None  # None: RC coefficients must be recomputed
        self.observers: list[Callable[["Twin", float], None]] = []
        # what the kernels work on, in their argument order (arrays updated in place)
        self._topo = np.concatenate([self.stack_idx, self.fet_idx, self.res_idx, self.ind_idx,
                                     self._fuse_idx, self.solver.branch_a, self.solver.branch_b,
                                     [layout.supply, layout.load], self._heat_pairs[0],
                                     self._heat_pairs[1]]).astype(np.int64)
        bms_allow, bms_state_f, bms_state_b, bms_trip_count, bms_par = self.bms.kernel_arrays
        self._kernel_args = (self._mod, self.fet_region, bms_allow, branches, self._res,
                             self._ind, self._fuse, self._topo, self.solver.lu,
                             self.solver.lu_meta, self.v_nodes, self._sc, self._flags,
                             self._cells, self.bms.balancing, self._heat_r,
                             self._module_thermal, self.thermal._rows, self.thermal.conductance,
                             self.thermal._lu, self.thermal._lu_meta, self.thermal._scalars,
                             SOC_POINTS, OCV_POINTS, bms_state_f, bms_state_b, bms_trip_count, bms_par)
        apply_scenario(self, spec)
        self._refresh_chemistry()
        # what the BMS boards last sampled: cell voltages (at rest: OCV), current, temperature
        self._cells[kn.C_V] = self._cell_ocv
        self._mod[kn.M_TEMP] = self.thermal.temperature[self._module_thermal]
        self._bms_inputs = BmsInputs(self._cells[kn.C_V], self._mod[kn.M_IMOD],
                                     self._mod[kn.M_TEMP])
        self.master.startup_sync(self._module_views())
        self._apply_master_decisions()
        self._solve(self.dt_min)  # a consistent operating point at t = 0

    # ================================================================== kernel scalars
    @property
    def eta(self) -> float:
        """Coulombic efficiency of charging."""
        return float(self._sc[kn.S_ETA])

    @eta.setter
    def eta(self, value: float) -> None:
        self._sc[kn.S_ETA] = value

    @property
    def self_discharge_per_s(self) -> float:
        return float(self._sc[kn.S_SELF_DISCHARGE])

    @self_discharge_per_s.setter
    def self_discharge_per_s(self, value: float) -> None:
        self._sc[kn.S_SELF_DISCHARGE] = value

    @property
    def _acc_dt(self) -> float:
        """Time accumulated since the slow path last ran."""
        return float(self._sc[kn.S_ACC_DT])

    @property
    def energy(self) -> Energy:
        """The energy accounts (J), as accumulated so far."""
        e = self._energy
        for name, value in zip(kn.ENERGY_FIELDS, self._sc[kn.E_FIRST:kn.E_FIRST + 8].tolist()):
            setattr(e, name, value)
        return e

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
        self._fuse_blown_arr[self._fuse_names.index(name)] = 1.0
        self._mark_resistive_dirty()

    def inverter_heartbeat(self) -> None:
        self.master.heartbeat(self.clock.now)

    # ================================================================== set-up and faults
    # What a fault scenario (emulator/faults.py), a test or a bench service command changes in
    # the bank. Each method keeps the twin's derived state consistent (conductances, RC
    # coefficients, accumulated heat), so no caller needs to know how the twin caches them.
    def invalidate_resistances(self) -> None:
        """Rebuild every resistive branch's conductance before the next solve.

        For a caller that changed a contactor, fuse or part resistance by item; the heat
        accumulated so far is settled first, at the resistances it was produced in. The
        methods below call it themselves.
        """
        self._mark_resistive_dirty()

    def invalidate_rc(self) -> None:
        """Recompute the RC pairs' step coefficients before the next step.

        For a caller that changed ``r1``, ``r2``, ``tau1`` or ``tau2`` of a module by item
        (:meth:`age_module` calls it itself).
        """
        self._rc_cache = None

    def age_module(self, module: str, capacity_factor: float = 1.0, resistance_factor: float = 1.0) -> None:
        """Age one module: every cell's capacity times ``capacity_factor``, its series
        resistance and both RC resistances times ``resistance_factor`` (time constants kept)."""
        k = self.module_index[module]
        self.cell_capacity_as[k, :] *= capacity_factor
        self.r_series[k] *= resistance_factor
        self.r1[k] *= resistance_factor
        self.r2[k] *= resistance_factor
        self.invalidate_rc()

    def part_resistance(self, element: str, part: str) -> float:
        """Resistance (ohm at 20 C) of one named part of a resistive element, e.g.
        ``part_resistance("p2.lead+", "cable")``; KeyError naming what exists otherwise."""
        return float(self._resistive_element(element).parts[self._part_name(element, part)])

    def set_part_resistance(self, element: str, part: str, ohm: float) -> None:
        """Set one named part of a resistive element (ohm at 20 C): a loose lug, a longer
        cable. The element's conductance is rebuilt before the next solve."""
        self._resistive_element(element).parts[self._part_name(element, part)] = float(ohm)
        self.invalidate_resistances()

    def lug_parts(self, terminal: str) -> list[tuple[str, str]]:
        """(element, part) of every cable lug landed on a module terminal (``s1p2.+``,
        ``s1p2.P-``); empty if no lug lands there (a terminal joined by a busbar or link)."""
        return self.layout.lug_parts(terminal)

    def lengthen_lead(self, branch: str, factor: float) -> None:
        """Make a parallel branch's leads ``factor`` times as long: both lead cables' resistance
        and the branch's loop inductance scale with it (lugs, shunt, fuse, contactor do not)."""
        for name in self.layout.lead_elements(branch):
            self._resistive_element(name).parts["cable"] *= factor
        for k, inductor in enumerate(self.layout.inductors):
            if inductor.name == self.layout.lead_inductor(branch):
                self.ind_h[k] *= factor
        self.invalidate_resistances()

    def stick_contactor(self, name: str, stuck: str | None) -> None:
        """A contactor stuck ``"open"`` or ``"closed"`` (None: free again). A stuck contactor
        stays where it is stuck whatever :meth:`set_contactor` asks."""
        if name not in self.contactor_closed:
            raise KeyError(f"no contactor '{name}' (contactors: {', '.join(self.contactor_closed)})")
        self.contactor_stuck[name] = stuck
        if stuck is not None:
            self.contactor_closed[name] = stuck == "closed"
        self.invalidate_resistances()

    def power_up_sync(self) -> None:
        """Run the master's power-up synchronisation again on the modules' present state and
        apply its decisions: for a caller that changed SOCs or firmware after building the twin
        and wants the master to meet the bank as if it had just been switched on."""
        self.master.startup_sync(self._module_views())
        self._apply_master_decisions()

    def _resistive_element(self, name: str):  # type: ignore[no-untyped-def]
        k = self._resistive_index.get(name)
        if k is None:
            raise KeyError(f"no resistive element '{name}' in this bank")
        return self.layout.resistive[k]

    def _part_name(self, element: str, part: str) -> str:
        parts = self._resistive_element(element).parts
        if part not in parts:
            raise KeyError(f"element '{element}' has no part '{part}' (parts: {', '.join(parts)})")
        return part

    def shutdown_bench(self) -> None:
        """Safe state: load off, supply off, main contactor open."""
        self.load_input(False)
        self.supply_output(False)
        self.set_contactor("main", False)

    # ================================================================== bench: measurements
    def noisy(self, value: float, sigma: float) -> float:
        """``value`` plus Gaussian noise of standard deviation ``sigma`` from the twin's own
        seeded generator (so a seeded run reads the same noise every time); ``sigma = 0`` adds
        none and draws nothing."""
        return float(value + self.rng.normal(0.0, sigma)) if sigma else float(value)


    def node_voltage(self, node: str) -> float:
        return float(self.v_nodes[self.node_row[node]])

    def probe(self, plus: str, minus: str, noise_v: float = 0.0) -> float:
        """Voltage between two named nodes, as a DMM or scanner channel would read it."""
        return self.noisy(self.node_voltage(plus) - self.node_voltage(minus), noise_v)

    def shunt_current(self, branch: str, noise_a: float = 0.0) -> float:
        """Current in a parallel branch's shunt, + = charging the branch."""
        k = self.layout.branch_shunt[branch]
        return self.noisy(self.branch_i[k], noise_a)

    def thermocouple(self, point: str, noise_c: float = 0.0) -> float:
        return self.noisy(self.thermal.temperature[self.thermal.index[point]], noise_c)

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

    def module_ac_resistance(self, module: str, noise_ohm: float = 0.0) -> float:
        """1 kHz AC resistance between a module's terminals (``+`` to ``P-``), as the Kelvin leads
        of an AC-IR meter on its terminal posts read it (ohm).

        At 1 kHz the RC pairs (tau of seconds) are short-circuited, so the module is its series
        resistance plus the BMS switch. The series part is the twin's own ``r_series`` of this
        module -- cell R0s, links and terminals, shunt, with whatever a fault did to it (an aged
        module multiplies it) -- taken at the cells' 1 kHz figure: the twin's DC R0 lumps in the
        cells' fast charge-transfer part, which a 1 kHz signal bypasses, so the cell share is
        ``cell.ac_ir_mohm`` instead of ``cell.r0_mohm`` (one ratio, fixed by the module type).
        The switch is its on-resistance while the twin has it conducting (on or failed short) and
        open (``1 / G_OFF``) while it is off or clamping. Lugs, leads and the rest of the bank are
        outside the terminals and not seen: the meter reads the module alone (a parallel bank's
        branches open, as a pre-parallel check has them).
        """
        k = self.module_index[module]
        mt = self.spec.module_type
        dc_series = module_series_resistance(self.spec)
        ac_series = (mt.cells_in_series * mt.cell.ac_ir_mohm + mt.links_mohm + mt.bms.shunt_mohm) * 1e-3
        series = float(self.r_series[k]) * ac_series / dc_series
        region = int(self.fet_region[k])
        switch = float(self.fet_r_on[k]) if region in (FET_ON, FET_FAILED) else 1.0 / G_OFF
        return self.noisy(series + switch, noise_ohm)

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
        clock = self.clock
        target = clock.now + max(seconds, 0.0)
        self._refresh_chemistry()  # the caller may have set cell_soc between runs
        while target - clock.now > 1e-12:
            now = clock.now
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
        """Conductance of every resistive branch from its parts, copper at its node's
        temperature, open if its contactor is open or its fuse blown (done in Python: rare)."""
        temps = self.thermal.temperature
        values = self._resistive_g
        pair = 0
        for k, element in enumerate(self.layout.resistive):
            parts = dict(element.parts)
            if element.copper_part and element.copper_node:
                parts[element.copper_part] *= temperature_factor(temps[self.thermal.index[element.copper_node]])
            for part in element.heat_to:  # in the order of _heat_pairs
                self._heat_r[pair] = parts[part]
                pair += 1
            open_ = ((element.contactor and not self.contactor_closed[element.contactor])
                     or (element.fuse and self.fuse_blown[element.fuse]))
            values[k] = G_OFF if open_ else 1.0 / max(sum(parts.values()), 1e-9)
        np.divide(1.0, values, out=self._resistive_r)
        self._resistance_temperatures[:] = temps
        self._dirty_resistive = False
        return values

    def _kernel(self, op: int, dt: float) -> int:
        """Run the twin kernel for a step of dt (kn.OP_SOLVE: solve only; kn.OP_STEP: solve,
        integrate the step and, if due and nothing needs Python first, the slow path); return
        its EV_* bits."""
        if self._dirty_resistive:
            self._resistive_conductances()
        if self._rc_cache is None:  # RC parameters changed (a fault): recompute the factors
            self._sc[kn.S_RC_DT] = np.nan
            self._rc_cache = True
        sup, ld = self.supply, self.load
        bench = (sup.on, sup.voltage_v, sup.current_a, sup.output_ohm, sup.region,
                 ld.on, ld.current_a, ld.min_voltage_v, ld.region)
        if bench != self._bench_sent:
            self._send_bench(bench)
        ev = kn.twin_kernel(op, dt, *self._kernel_args)
        while ev & _EV_RESISTIVE:  # copper warmed by > 1 K: +0.4 % resistance
            self._resistive_conductances()
            ev = kn.twin_kernel(op, dt, *self._kernel_args)
        if ev & _EV_SINGULAR:
            raise np.linalg.LinAlgError("singular nodal matrix")
        if ev & _EV_PWL:
            fl = self._flags
            sup.region = kn.SUPPLY_REGIONS[fl[kn.I_SUP_REGION]]
            ld.region = kn.LOAD_REGIONS[fl[kn.I_LOAD_REGION]]
            self._bench_sent = None
        return ev

    def _send_bench(self, bench: tuple) -> None:
        """Hand the supply and load settings and regions to the kernels."""
        sc, fl = self._sc, self._flags
        (sc[kn.S_SUP_ON], sc[kn.S_SUP_V], sc[kn.S_SUP_I], sc[kn.S_SUP_OHM], supply_region,
         sc[kn.S_LOAD_ON], sc[kn.S_LOAD_I], sc[kn.S_LOAD_MINV], load_region) = bench
        fl[kn.I_SUP_REGION] = _SUPPLY_CODE[supply_region]
        fl[kn.I_LOAD_REGION] = _LOAD_CODE[load_region]
        self._bench_sent = bench

    def _solve(self, dt: float) -> bool:
        """Solve the circuit for a step of dt, re-picking regions; True if any changed."""
        return bool(self._kernel(kn.OP_SOLVE, dt) & _EV_PWL)

    def _refresh_chemistry(self) -> None:
        """Recompute cell OCVs and module EMFs from SOC (done on the slow path)."""
        kn.twin_kernel(kn.OP_CHEMISTRY, 0.0, *self._kernel_args)

    def _slow_path(self, with_bms: bool = False) -> bool:
        """Apply what changes slowly -- SOC, balancing, temperatures -- over the accumulated time.

        Electrical transients need microsecond steps, but SOC and temperature move over
        seconds to hours; integrating them at most every SLOW_STEP_S (exactly, from the
        accumulated charge and heat) keeps a 10 us transient cheap without losing accuracy.
        With ``with_bms`` the BMS boards then sample cell voltages and temperatures and run
        their voltage and temperature protections over the same span; returns True if one of
        them tripped or released.
        """
        ev = kn.twin_kernel(kn.OP_SLOW_BMS if with_bms else kn.OP_SLOW, 0.0, *self._kernel_args)
        if ev & _EV_SINGULAR:
            raise np.linalg.LinAlgError("singular thermal matrix")
        return bool(ev & _EV_SLOW_BMS)

    def _step(self, dt: float) -> None:
        ev = self._kernel(_OP_STEP, dt)
        switched = bool(ev & _EV_PWL)
        now = self.clock.now + dt
        if ev & _EV_RARE or now <= self._weld_watch_until:
            switched |= self._step_events(ev, now)
        self.clock.advance_to(now)
        self.step_count += 1
        if ev & _EV_SLOW_DONE:  # the kernel ran the slow path already (nothing came between)
            slow_bms = bool(ev & _EV_SLOW_BMS)
        elif ev & _EV_SLOW_DUE or switched:
            slow_bms = self._slow_path(with_bms=True)
        else:
            slow_bms = False
        if slow_bms and self.bms.permissions_changed():
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
        if switched or ev & _EV_CLAMPING:
            # an avalanche lasts microseconds: hold the smallest step until the clamp lets go
            self._dt_next = self.dt_min
        else:
            self._dt_next *= self.growth
        for observer in self.observers:
            observer(self, dt)

    def _step_events(self, ev: int, now: float) -> bool:
        """What a step's kernel flagged, in order: MOSFET failures, blown fuses, contactor
        welding, BMS over-current permissions. Returns True if the circuit switched."""
        switched = False
        if ev & _EV_FAILED:
            for k in np.flatnonzero(self._mod[kn.M_FAILED_NOW]):
                self.events.append((now, f"{self.modules[k]} MOSFET failed short after "
                                         f"{self.fet_energy_j[k]:.2f} J avalanche"))
            switched = True
        if ev & _EV_MELT:
            self._blow_melted_fuses(now)
            switched = True
        if now <= self._weld_watch_until:
            self._weld_contactors(now)
        if ev & _EV_BMS and self.bms.permissions_changed():
            switched = True
            self.events.append((now, "BMS switch permissions changed: "
                                + self._describe_bms_trips()))
        return switched

    def _blow_melted_fuses(self, now: float) -> None:
        """Fuses whose melt integral the kernel found exceeded open (events, then re-solve)."""
        amps = np.abs(self.branch_i[self._fuse_idx])
        melting = (self._fuse_heat > self._fuse_melt) & (self._fuse_blown_arr == 0.0)
        for j in np.flatnonzero(melting):
            name = self._fuse_names[j]
            self.fuse_blown[name] = True
            self._fuse_blown_arr[j] = 1.0
            self.events.append((now, f"fuse {name} ({self.layout.fuses[name]:.0f} A) blown "
                                     f"at {amps[j]:.0f} A"))
        self._mark_resistive_dirty()

    def _weld_contactors(self, now: float) -> None:
        """Within the bounce window after closing, a surge above the weld current welds."""
        weld = self.spec.dut.protection.contactor_weld_a
        amps = np.abs(self.branch_i[self._fuse_idx])
        for j, name in enumerate(self._fuse_names):
            since = now - self.contactor_closed_at[name]
            if 0 <= since <= WELD_WINDOW_S and amps[j] > weld and not self.contactor_welded[name]:
                self.contactor_welded[name] = True
                self.events.append((now, f"contactor {name} welded by {amps[j]:.0f} A surge"))

    def _describe_bms_trips(self) -> str:
        active = [f"{self.modules[k]}:{name}" for name, k in self.bms.active_trips()]
        return ", ".join(active) or "all released"

    # ================================================================== master link
    def _module_views(self) -> ModuleViews:
        """What the module boards report to the master now (fresh arrays: a snapshot)."""
        snapshot = np.empty((4, len(self.modules)))
        kn.module_snapshot(snapshot, self._cells, self.solver.branches, self.stack_idx)
        stack_v, current_a, soc, capacity_ah = snapshot
        if not self.step_count:
            stack_v = self.ocv()
        return ModuleViews(stack_v=stack_v, current_a=current_a, soc=soc, capacity_ah=capacity_ah,
                           allow_charge=self.bms.allow_charge(),
                           allow_discharge=self.bms.allow_discharge(), silent=self.silent,
                           firmware=list(self.firmware.values()))  # keys in module order

    def _apply_master_decisions(self) -> bool:
        changed = False
        accepted_all = self.master.accepted
        # in a bank of groups nothing changes while the boards' admission matches the master's
        if self._strings or not kn.same_flags(self.bms.admitted, accepted_all):
            for k, m in enumerate(self.modules):
                accepted = bool(accepted_all[k])
                if self._strings:
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
    def cell_voltages(self) -> np.ndarray:
        """Cell voltages (V, modules x cells) as the module BMS boards last sampled them --
        what a BMS publishes as its cell figures. A read-only view: it follows the twin."""
        view = self._cells[kn.C_V].view()
        view.flags.writeable = False
        return view

    def bms_inputs(self) -> BmsInputs:
        """What the module BMS boards last sampled (cell voltages, module currents, module
        temperatures), as read-only views that follow the twin."""
        views = []
        for array in (self._bms_inputs.cell_v, self._bms_inputs.current_a, self._bms_inputs.temperature_c):
            view = array.view()
            view.flags.writeable = False
            views.append(view)
        return BmsInputs(*views)

    def fet_voltages(self) -> np.ndarray:
        """Vds of every module's BMS switch (V, module order), as of the last solve."""
        return self.branch_v[self.fet_idx]

    def lead_currents(self) -> np.ndarray:
        """Current in every parallel branch's positive lead (A, in the order of
        ``layout.branches``), as of the last solve. Its sign is the lead element's: + from the
        branch towards the bus, i.e. discharging (``shunt_current`` gives + = charging)."""
        return self.branch_i[self.lead_idx]

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
    """Validate the files and build a twin (raises bankmodel.files.FileError on a bad file)."""
    from emulator.faults import load_bank
    return Twin(load_bank(dut, scenario), seed=seed, **kwargs)


__all__ = ["Twin", "build_twin", "FET_STATE_NAMES", "math"]
