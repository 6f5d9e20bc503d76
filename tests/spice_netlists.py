"""Independent SPICE netlists of a bank, written from the raw DUT and module YAML, and an ngspice runner.

Nothing here imports the emulator: the circuit is rebuilt from the files with this module's own
formulas and the figures of DOMAIN.md section 3, so a cross-check against ngspice tests the
twin's topology, its element values and its solver together.

Circuit (the conventions of emulator/topology.py's docstring, rebuilt by hand):

- Module ``sXpY``: ``+`` -- 0 V sense source -- R0 (cells*r0 + links + BMS shunt) -- two RC pairs
  (R = cells*r_k, C = tau_k / R, integrated on auxiliary 1 F nodes) -- EMF = cells * OCV(SOC)
  (B source with pwl() of the LFP table) -- ``B-``. SOC is the voltage of a 1 F capacitor
  charged by i_module / (capacity in A*s), with the coulombic efficiency applied to charge
  current and the self-discharge as a constant drain.
- BMS switch from ``P-`` to ``B-``: 2 * rds_on while on; once a gate source opens it, a small
  off conductance (SPICE_FET_OFF_S, see there) plus the avalanche clamp (|v| - Vc) / R_clamp
  beyond the clamp voltage (piecewise linear, as the twin).
- Parallel branch: negative lead ``P-`` -- 0 V shunt probe -- (2 lugs + cable + shunt) -- bus
  negative tap; positive lead ``+`` -- L (uH/m * length) -- (2 lugs + cable + fuse + contactor)
  -- bus positive tap. Bus segments join consecutive taps; take-off at tap 1 (positive) and tap 1
  or M (negative, same_side / diagonal).
- Strings: series links (L + 2 lugs + cable) from a module's ``+`` to the next one's ``P-``.
- Main: L + (cable + 2 lugs + fuse + contactor) to ``bank+``; (cable + 2 lugs) to ``bank-``
  (ground). Load: constant current, a resistor min_voltage / I below its minimum voltage.

Copper: IEC 60228 class 5 table and rho = 1.7241e-8 ohm*m at 20 C, +0.393 %/K to the DUT ambient.
Currents are + in the charging direction, as the twin reports them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures"

# ----------------------------------------------------------------------------- DOMAIN.md section 3
# LibreSolar ocv_lfp, SOC 100 % -> 0 % in 5 % steps (volts per cell)
OCV_HIGH_TO_LOW = (3.392, 3.314, 3.309, 3.308, 3.304, 3.296, 3.283, 3.275, 3.271, 3.268, 3.265,
                   3.264, 3.262, 3.252, 3.240, 3.226, 3.213, 3.190, 3.177, 3.132, 2.833)
SOC_TABLE = [k * 0.05 for k in range(21)]
OCV_TABLE = list(reversed(OCV_HIGH_TO_LOW))
# IEC 60228 class 5 copper, mohm/m at 20 C
CLASS5_MOHM_PER_M = {25.0: 0.780, 35.0: 0.554, 50.0: 0.386, 70.0: 0.272, 95.0: 0.206}
RHO_CU = 1.7241e-8   # ohm*m at 20 C
ALPHA_CU = 0.00393   # 1/K
FUSE_OHM_A = 0.02    # fuse link resistance ~ 0.02 ohm*A / rating
G_OFF = 1e-7         # S, an open contactor or an off MOSFET (the twin's value)
# An opening BMS switch is written with 1e-4 S instead: with 1e-7 S the open string's nodes hang
# on 1e-7 S against ~2e4 S of milliohm copper (11 digits lost), so when the avalanche clamp stops
# conducting ngspice cannot converge and aborts with "timestep too small". Off-state current at
# 52 V becomes 5 mA: Vds moves by 0.14 mV (3e-6), the clamp peak by 0.5 mV, the clamp energy by
# < 0.01 % (ngspice-39, 4s1p at 100 A; 1e-5 S and 1e-7 S runs that do finish agree).
SPICE_FET_OFF_S = 1e-4


def cell_ocv(soc: float) -> float:
    return float(np.interp(soc, SOC_TABLE, OCV_TABLE))


def soc_for_cell_ocv(volts: float) -> float:
    return float(np.interp(volts, OCV_TABLE, SOC_TABLE))


# ----------------------------------------------------------------------------- raw files
# Defaults of the DUT and module-type schemas (used where a file leaves a field out).
DUT_DEFAULTS: dict[str, Any] = {
    "arrangement": "groups", "takeoff": "diagonal", "ambient_c": 25.0, "initial_soc_pct": 50.0,
    "interconnect": {
        "lead": {"length_m": 1.0, "cross_section_mm2": 35.0},
        "leads": {},
        "series_link": {"length_m": 0.3, "cross_section_mm2": 35.0},
        "bus": {"kind": "busbar", "width_mm": 30.0, "thickness_mm": 5.0, "segment_length_m": 0.2},
        "main": {"length_m": 2.0, "cross_section_mm2": 70.0},
        "lug_contact_uohm": 30.0, "contactor_mohm": 0.2, "shunt_uohm": 50.0,
        "loop_inductance_uh_per_m": 0.7,
    },
    "protection": {"branch_fuse_a": 200.0, "main_fuse_a": 400.0},
}
CABLE_BUS_DEFAULTS = {"kind": "cable", "length_m": 0.3, "cross_section_mm2": 35.0}
MODULE_DEFAULTS: dict[str, Any] = {
    "cell": {"capacity_ah": 100.0, "r0_mohm": 0.6, "r1_mohm": 0.2, "tau1_s": 15.0, "r2_mohm": 0.3,
             "tau2_s": 200.0, "coulombic_efficiency": 0.999, "self_discharge_pct_per_month": 2.0},
    "links_mohm": 0.6,
    "bms": {"fet": {"rds_on_mohm": 0.75, "avalanche_clamp_v": 90.0, "clamp_resistance_mohm": 50.0},
            "shunt_mohm": 0.1},
}


def _merge(defaults: dict[str, Any], given: dict[str, Any] | None) -> dict[str, Any]:
    out = dict(defaults)
    for key, value in (given or {}).items():
        if isinstance(value, dict) and isinstance(defaults.get(key), dict) and defaults[key]:
            out[key] = _merge(defaults[key], value)
        else:
            out[key] = value
    return out


@dataclass
class BankData:
    dut: dict[str, Any]
    module: dict[str, Any]
    path: Path


def load_bank_data(dut: str | Path) -> BankData:
    """yaml.safe_load a DUT (a stem in fixtures/duts or a path) and the module type it names."""
    path = Path(dut)
    if path.suffix not in (".yaml", ".yml"):
        path = FIXTURES / "duts" / f"{dut}.yaml"
    raw = yaml.safe_load(path.read_text())
    data = _merge(DUT_DEFAULTS, raw)
    bus_raw = (raw.get("interconnect") or {}).get("bus")
    if bus_raw is not None and bus_raw.get("kind") == "cable":
        data["interconnect"]["bus"] = _merge(CABLE_BUS_DEFAULTS, bus_raw)
    stem = raw["module_type"]
    for folder in (path.resolve().parent.parent / "modules", FIXTURES / "modules"):
        module_path = folder / f"{stem}.yaml"
        if module_path.is_file():
            break
    module = _merge(MODULE_DEFAULTS, yaml.safe_load(module_path.read_text()))
    return BankData(data, module, path)


# ----------------------------------------------------------------------------- element values
def copper_factor(ambient_c: float) -> float:
    return 1 + ALPHA_CU * (ambient_c - 20.0)


def cable_ohm(length_m: float, section_mm2: float, ambient_c: float) -> float:
    """Class 5 cable: the IEC 60228 table; other sizes rho/A with the table's 35 mm2 fill ratio."""
    per_m = CLASS5_MOHM_PER_M.get(float(section_mm2))
    if per_m is None:
        per_m = RHO_CU / (section_mm2 * 1e-6) * 1e3 * (CLASS5_MOHM_PER_M[35.0] / (RHO_CU / 35e-6 * 1e3))
    return length_m * per_m * 1e-3 * copper_factor(ambient_c)


def busbar_ohm(length_m: float, width_mm: float, thickness_mm: float, ambient_c: float) -> float:
    return RHO_CU * length_m / (width_mm * thickness_mm * 1e-6) * copper_factor(ambient_c)


@dataclass
class ModuleValues:
    cells: int
    r_series: float
    r1: float
    c1: float
    r2: float
    c2: float
    capacity_as: float
    eta: float
    self_discharge_per_s: float
    fet_on: float
    clamp_v: float
    clamp_r: float


def module_values(bank: BankData) -> ModuleValues:
    m = bank.module
    cell, fet = m["cell"], m["bms"]["fet"]
    n = int(m["cells_in_series"])
    r1, r2 = n * cell["r1_mohm"] * 1e-3, n * cell["r2_mohm"] * 1e-3
    return ModuleValues(
        cells=n,
        r_series=(n * cell["r0_mohm"] + m["links_mohm"] + m["bms"]["shunt_mohm"]) * 1e-3,
        r1=r1, c1=cell["tau1_s"] / r1, r2=r2, c2=cell["tau2_s"] / r2,
        capacity_as=cell["capacity_ah"] * 3600.0,
        eta=cell["coulombic_efficiency"],
        self_discharge_per_s=cell["self_discharge_pct_per_month"] / 100.0 / (30 * 86400.0),
        fet_on=2 * fet["rds_on_mohm"] * 1e-3,
        clamp_v=fet["avalanche_clamp_v"], clamp_r=fet["clamp_resistance_mohm"] * 1e-3)


# ----------------------------------------------------------------------------- netlist
def _node(name: str) -> str:
    """A SPICE-safe node name for a topology node name (``s1p2.+`` -> ``s1p2_pos``)."""
    if name == "bank-":
        return "0"
    return (name.replace(".+", "_pos").replace(".B-", "_bneg").replace(".P-", "_pneg")
            .replace("bank+", "bank_pos").replace(".", "_").replace("-", "_m").replace("+", "_p"))


def _pwl(points: list[tuple[float, float]]) -> str:
    return "pwl(" + " ".join(f"{t:.12g} {v:.12g}" for t, v in points) + ")"


@dataclass
class Bank:
    """A netlist being written, with the names of its probes."""

    data: BankData
    lines: list[str] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)
    branches: list[str] = field(default_factory=list)
    breakpoints: list[float] = field(default_factory=list)
    resistances: dict[str, float] = field(default_factory=dict)   # element name -> ohm
    inductances: dict[str, float] = field(default_factory=dict)

    def shunt_probe(self, branch: str) -> str:
        """ngspice vector of a branch's shunt current, + = charging."""
        return f"i(vsh_{branch})"

    def module_probe(self, module: str) -> str:
        return f"i(vm_{module})"

    def vds_nodes(self, module: str) -> tuple[str, str]:
        return _node(f"{module}.P-"), _node(f"{module}.B-")

    # -- elements -----------------------------------------------------------------------------
    def r(self, name: str, a: str, b: str, ohm: float) -> None:
        self.resistances[name] = ohm
        self.lines.append(f"R_{name} {_node(a)} {_node(b)} {ohm:.12g}")

    def l(self, name: str, a: str, b: str, henry: float) -> None:
        henry = max(henry, 1e-9)  # a zero-length cable still has its terminals' nH
        self.inductances[name] = henry
        self.lines.append(f"L_{name} {_node(a)} {_node(b)} {henry:.12g} ic=0")

    def add(self, line: str) -> None:
        self.lines.append(line)


def write_bank(bank_data: BankData, *, soc: dict[str, float] | None = None,
               open_contactors: tuple[str, ...] = (),
               fet_opens: dict[str, float] | None = None, fet_off_s: float = SPICE_FET_OFF_S,
               load_a: float = 0.0, load_on_at: float = 0.0, load_min_v: float = 0.5,
               edge_s: float = 1e-9) -> Bank:
    """Write the bank's circuit.

    soc: per-module initial SOC (fraction), default the DUT's initial_soc_pct.
    fet_opens: module -> time at which its BMS switch opens (gate ramp of ``edge_s``); once open
    it conducts ``fet_off_s`` plus the avalanche clamp.
    load_a: constant-current load switched on at ``load_on_at`` (ramp of ``edge_s``).
    """
    d = bank_data.dut
    ic = d["interconnect"]
    amb = float(d["ambient_c"])
    mv = module_values(bank_data)
    lug = ic["lug_contact_uohm"] * 1e-6
    l_per_m = ic["loop_inductance_uh_per_m"] * 1e-6
    n, m = int(d["series"]), int(d["parallel"])
    arrangement = "strings" if m == 1 else d["arrangement"]
    soc = dict(soc or {})
    fet_opens = dict(fet_opens or {})
    bank = Bank(bank_data)
    bank.add(f"* bank {d['name']} written from {bank_data.path.name} by tests/spice_netlists.py")
    ocv_pairs = ", ".join(f"{s:.4g},{v:.6g}" for s, v in zip(SOC_TABLE, OCV_TABLE))

    def module(pos: str) -> None:
        bank.modules.append(pos)
        s0 = soc.get(pos, d["initial_soc_pct"] / 100.0)
        p, bneg, pneg = _node(f"{pos}.+"), _node(f"{pos}.B-"), _node(f"{pos}.P-")
        bank.add(f"* module {pos}")
        bank.add(f"vm_{pos} {p} {pos}_a 0")
        bank.add(f"R_{pos}_r0 {pos}_a {pos}_b {mv.r_series:.12g}")
        # Each RC pair (R_k || C_k, C_k of 10^4 F) as its state equation on an auxiliary node
        # with a 1 F capacitor: dv/dt = i/C_k - v/tau_k. Same ODE, but the MNA matrix does not
        # carry C_k/dt ~ 1e15 S next to milliohms (ngspice loses all precision at ps steps).
        for k, (r_k, c_k) in enumerate(((mv.r1, mv.c1), (mv.r2, mv.c2)), start=1):
            bank.add(f"C_{pos}_x{k} {pos}_x{k} 0 1 ic=0")
            bank.add(f"R_{pos}_x{k} {pos}_x{k} 0 {r_k * c_k:.12g}")
            bank.add(f"B_{pos}_x{k} 0 {pos}_x{k} I = i(vm_{pos})/{c_k:.12g}")
        bank.add(f"B_{pos}_emf {pos}_b {bneg} V = v({pos}_x1) + v({pos}_x2) + "
                 f"{mv.cells}*pwl(max(0, min(1, v({pos}_soc))), {ocv_pairs})")
        # SOC: 1 F capacitor, dV/dt = effective current / capacity
        bank.add(f"C_{pos}_soc {pos}_soc 0 1 ic={s0:.12g}")
        # charge counts at the coulombic efficiency: i - (1-eta)*max(i, 0), the kink at 0 A
        # rounded over 1 mA so Newton does not chatter when a module's current crosses zero
        i_m = f"i(vm_{pos})"
        bank.add(f"B_{pos}_soc 0 {pos}_soc I = ({i_m} - {1 - mv.eta:.12g}*0.5*({i_m} + "
                 f"sqrt({i_m}*{i_m} + 1e-6))) / {mv.capacity_as:.12g} - {mv.self_discharge_per_s:.12g}")
        if pos in fet_opens:
            t0 = fet_opens[pos]
            bank.breakpoints.append(t0)
            bank.add(f"v_{pos}_gate {pos}_gate 0 {_pwl([(0, 0), (t0, 0), (t0 + edge_s, 1)])}")
            vds = f"v({pneg},{bneg})"
            # off: fet_off_s, and beyond the avalanche clamp voltage (|v| - Vc) / R_clamp
            off = (f"{fet_off_s:.12g}*{vds} + max({vds}-{mv.clamp_v:.12g}, 0)/{mv.clamp_r:.12g}"
                   f" + min({vds}+{mv.clamp_v:.12g}, 0)/{mv.clamp_r:.12g}")
            bank.add(f"B_{pos}_fet {pneg} {bneg} I = (1-v({pos}_gate))*{vds}/{mv.fet_on:.12g}"
                     f" + v({pos}_gate)*({off})")
        else:
            bank.r(f"{pos}_fet", f"{pos}.P-", f"{pos}.B-", mv.fet_on)

    def lead_cable(branch: str) -> tuple[float, float]:
        over = ic["leads"].get(branch) or {}
        length = over.get("length_m", ic["lead"]["length_m"])
        section = over.get("cross_section_mm2", ic["lead"]["cross_section_mm2"])
        return float(length), float(section)

    branch_fuse = float(d["protection"]["branch_fuse_a"])

    def leads(branch: str, neg_from: str, pos_from: str, neg_tap: str, pos_tap: str) -> None:
        bank.branches.append(branch)
        length, section = lead_cable(branch)
        cable = cable_ohm(length, section, amb)
        bank.add(f"* branch {branch}: leads {length} m {section} mm2")
        bank.add(f"vsh_{branch} {_node(neg_from)} {branch}_shunt 0")
        bank.r(f"{branch}_leadm", f"{branch}_shunt", neg_tap, 2 * lug + cable + ic["shunt_uohm"] * 1e-6)
        bank.l(f"{branch}_L", pos_from, f"{branch}.lead+.L", l_per_m * length)
        closed = 2 * lug + cable + FUSE_OHM_A / branch_fuse + ic["contactor_mohm"] * 1e-3
        bank.r(f"{branch}_leadp", f"{branch}.lead+.L", pos_tap,
               1 / G_OFF if branch in open_contactors else closed)

    def bus(prefix: str, taps: int) -> tuple[str, str]:
        b = ic["bus"]
        if b["kind"] == "busbar":
            ohm = busbar_ohm(b["segment_length_m"], b["width_mm"], b["thickness_mm"], amb)
        else:
            ohm = cable_ohm(b["length_m"], b["cross_section_mm2"], amb)
        for polarity in ("pos", "neg"):
            for k in range(1, taps):
                bank.r(f"{prefix.replace('.', '_')}bus_{polarity}_{k}", f"{prefix}{polarity}.{k}",
                       f"{prefix}{polarity}.{k + 1}", ohm)
        neg_out = f"{prefix}neg.{1 if d['takeoff'] == 'same_side' else taps}"
        return f"{prefix}pos.1", neg_out

    def series_link(name: str, a: str, b: str) -> None:
        link = ic["series_link"]
        bank.l(f"{name}_L", a, f"{name}.L", l_per_m * link["length_m"])
        bank.r(f"{name}_R", f"{name}.L", b,
               2 * lug + cable_ohm(link["length_m"], link["cross_section_mm2"], amb))

    for s in range(1, n + 1):
        for p in range(1, m + 1):
            module(f"s{s}p{p}")
    if arrangement == "groups":
        outs = []
        for s in range(1, n + 1):
            prefix = f"g{s}." if n > 1 else ""
            for p in range(1, m + 1):
                pos = f"s{s}p{p}"
                leads(pos, f"{pos}.P-", f"{pos}.+", f"{prefix}neg.{p}", f"{prefix}pos.{p}")
            outs.append(bus(prefix, m))
        for s in range(n - 1):
            series_link(f"link{s + 1}", outs[s][0], outs[s + 1][1])
        top, bottom = outs[-1][0], outs[0][1]
    else:
        for p in range(1, m + 1):
            chain = [f"s{s}p{p}" for s in range(1, n + 1)]
            for lower, upper in zip(chain, chain[1:]):
                series_link(f"{lower}_{upper}", f"{lower}.+", f"{upper}.P-")
            leads(f"p{p}", f"{chain[0]}.P-", f"{chain[-1]}.+", f"neg.{p}", f"pos.{p}")
        top, bottom = bus("", m)
    main = ic["main"]
    main_cable = cable_ohm(main["length_m"], main["cross_section_mm2"], amb)
    bank.add("* main")
    bank.l("main_L", top, "main.L", l_per_m * main["length_m"])
    bank.r("mainp", "main.L", "bank+", main_cable + 2 * lug
           + FUSE_OHM_A / float(d["protection"]["main_fuse_a"]) + ic["contactor_mohm"] * 1e-3)
    bank.r("mainm", bottom, "bank-", main_cable + 2 * lug)
    bank.r("supply_off", "bank+", "bank-", 1 / G_OFF)
    if load_a > 0:
        bank.breakpoints.append(load_on_at)
        gate = [(0, 0), (load_on_at, 0), (load_on_at + edge_s, 1)] if load_on_at > 0 else [(0, 0), (edge_s, 1)]
        bank.add(f"v_load_gate load_gate 0 {_pwl(gate)}")
        vb = f"v({_node('bank+')})"
        bank.add(f"B_load {_node('bank+')} 0 I = v(load_gate)*{load_a:.12g}*min(1, {vb}/{load_min_v:.12g})"
                 f" + (1-v(load_gate))*{G_OFF:.12g}*{vb}")
    return bank


# ----------------------------------------------------------------------------- ngspice
def ngspice_path() -> str | None:
    return shutil.which("ngspice")


@dataclass
class SpiceResult:
    time: np.ndarray
    vectors: dict[str, np.ndarray]
    stdout: str
    netlist: Path

    def at(self, vector: str, t: float) -> float:
        return float(np.interp(t, self.time, self.vectors[vector]))

    def window(self, vector: str, t_from: float, t_to: float) -> np.ndarray:
        keep = (self.time >= t_from) & (self.time <= t_to)
        return self.vectors[vector][keep]

    def report(self, lines: int = 40) -> str:
        """The netlist's path and the tail of ngspice's output, for assertion messages."""
        tail = "\n".join(self.stdout.strip().splitlines()[-lines:])
        return f"netlist {self.netlist}\n--- ngspice output (tail) ---\n{tail}"


class NgspiceError(RuntimeError):
    pass


def run_transient(bank: Bank, workdir: Path, name: str, *, stop_s: float, max_step_s: float,
                  vectors: list[str], extra_breakpoints: list[float] = (),
                  options: str = "method=gear reltol=1e-6 abstol=1e-6 vntol=1e-8 chgtol=1e-9 "
                                 "itl4=100", timeout_s: float = 120.0) -> SpiceResult:
    """Run ``.tran`` with initial conditions (uic) and return the requested vectors.

    Breakpoints (switching instants and ``extra_breakpoints``, e.g. the sampling times) are forced
    on ngspice by a dummy pwl source, so samples and switching edges fall on solver time points.
    """
    exe = ngspice_path()
    if exe is None:
        raise NgspiceError("ngspice not found on PATH")
    workdir.mkdir(parents=True, exist_ok=True)
    cir = workdir / f"{name}.cir"
    out = workdir / f"{name}.dat"
    points = sorted({0.0, stop_s, *[t for t in (*bank.breakpoints, *extra_breakpoints)
                                     if 0 < t < stop_s]})
    lines = [f"* {name}", *bank.lines,
             f"v_breakpoints bp 0 {_pwl([(t, k % 2) for k, t in enumerate(points)])}",
             "R_breakpoints bp 0 1",
             f".options {options}",
             ".control",
             "set wr_singlescale",
             "set wr_vecnames",
             "option numdgt=12",
             f"tran {max_step_s:.6g} {stop_s:.12g} 0 {max_step_s:.6g} uic",
             f"wrdata {out.name} " + " ".join(vectors),
             "quit",
             ".endc",
             ".end", ""]
    cir.write_text("\n".join(lines))
    out.unlink(missing_ok=True)
    proc = subprocess.run([exe, "-b", cir.name], cwd=workdir, capture_output=True, text=True,
                          timeout=timeout_s)
    stdout = proc.stdout + proc.stderr
    if proc.returncode != 0 or not out.is_file():
        raise NgspiceError(f"ngspice failed (rc {proc.returncode}) on {cir}\n{stdout[-4000:]}")
    if re.search(r"(?i)timestep too small|singular matrix|simulation\(s\) aborted", stdout):
        raise NgspiceError(f"ngspice reported a failure on {cir}\n{stdout[-4000:]}")
    # wrdata with wr_singlescale: one time column, then the vectors in the order asked for
    # (headers differ between ngspice versions, e.g. i(vx) vs vx#branch, so go by position)
    table = np.loadtxt(out, skiprows=1, ndmin=2)
    if table.shape[1] != len(vectors) + 1:
        raise NgspiceError(f"{out}: {table.shape[1]} columns for {len(vectors)} vectors\n"
                           f"{stdout[-4000:]}")
    if table[-1, 0] < stop_s * (1 - 1e-9):
        raise NgspiceError(f"ngspice stopped at {table[-1, 0]} s of {stop_s} s on {cir}\n"
                           f"{stdout[-4000:]}")
    vectors_out = {vec: table[:, k + 1] for k, vec in enumerate(vectors)}
    return SpiceResult(table[:, 0], vectors_out, stdout, cir)
