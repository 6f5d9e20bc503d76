"""Build the bank's circuit and thermal network from a DUT file.

Conventions (also used by the ngspice cross-check tests, which rebuild the same circuits
independently from the DUT data):

- Module ``sXpY`` (series position X counted from the bank's negative end, parallel index Y)
  has electrical nodes ``sXpY.+`` (positive terminal, on the cell stack), ``sXpY.B-`` (cell stack
  negative) and ``sXpY.P-`` (negative terminal). The cell stack is a Thevenin branch
  ``sXpY.cells`` from ``+`` to ``B-``; the BMS switch (back-to-back MOSFETs) is branch
  ``sXpY.fet`` from ``P-`` to ``B-``.
- A parallel *branch* (a module in ``groups``, a string ``pY`` in ``strings``) reaches the bus
  by a negative lead (cable, two lugs, shunt) and a positive lead (loop inductance, cable, two
  lugs, branch fuse, branch contactor). Bus segments join consecutive taps; the bus is taken off
  at tap 1 for positive and at tap 1 (``same_side``) or tap M (``diagonal``) for negative.
- Series groups are joined by series links (inductance + cable); the main path is inductance,
  main fuse, main contactor and cable to ``bank+``; the bank's negative terminal ``bank-`` is
  the reference node.
- Currents are positive in the charging direction everywhere (as the BMS protocols report).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from emulator.circuit import GROUND, Netlist
from bankmodel.specs.loading import BankSpec
from emulator.conductors import busbar_ohm, busbar_thermal, cable_ohm, cable_ohm_per_m, cable_thermal

FUSE_OHM_PER_A = 0.02  # a 200 A fuse link is ~0.1 mohm: R ~ 0.02 ohm*A / rating


@dataclass
class Resistive:
    """A resistive branch made of named parts (ohm at 20 C), some switchable."""

    branch: int
    name: str
    parts: dict[str, float]
    heat_to: dict[str, str] = field(default_factory=dict)  # part -> thermal node
    copper_part: str | None = None  # the part whose resistance follows a thermal node
    copper_node: str | None = None
    contactor: str | None = None
    fuse: str | None = None


@dataclass
class Inductor:
    branch: int
    name: str
    henry: float


@dataclass
class ThermalNode:
    name: str
    heat_capacity: float
    to_ambient: float


@dataclass
class Layout:
    """The built bank: netlist, element tables and names a bench may address."""

    netlist: Netlist
    modules: list[str]                      # positions in stack order
    module_stack: dict[str, int]            # position -> cells branch
    module_fet: dict[str, int]              # position -> fet branch
    branches: list[str]                     # parallel branch names (shunt / contactor names)
    branch_of_module: dict[str, str]
    branch_modules: dict[str, list[str]]
    branch_shunt: dict[str, int]            # branch name -> resistive branch carrying its current
    branch_lead: dict[str, int]             # branch name -> positive lead branch (contactor, fuse)
    resistive: list[Resistive]
    inductors: list[Inductor]
    thermal_nodes: list[ThermalNode]
    thermal_links: list[tuple[str, str, float]]
    contactors: list[str]
    fuses: dict[str, float]                 # fuse name -> rating A
    main_branch: int
    series_groups: list[list[str]]          # modules by series position
    supply: int = -1
    load: int = -1

    def lug_parts(self, terminal: str) -> list[tuple[str, str]]:
        """(element, part) of every cable lug landed on a module terminal's thermal node
        (``s1p2.+``, ``s1p2.-``): the lugs a loose-lug fault can loosen. Empty if none lands
        there."""
        return [(element.name, part) for element in self.resistive
                for part, node in element.heat_to.items() if node == terminal and part.startswith("lug")]

    def lead_elements(self, branch: str) -> tuple[str, str]:
        """Names of a parallel branch's negative and positive lead elements (each has a
        ``cable`` part); KeyError for a name that is not a parallel branch."""
        if branch not in self.branch_lead:
            raise KeyError(f"no parallel branch '{branch}' (branches: {', '.join(self.branches)})")
        return f"{branch}.lead-", f"{branch}.lead+"

    def lead_inductor(self, branch: str) -> str:
        """Name of a parallel branch's loop inductance (its positive lead's)."""
        if branch not in self.branch_lead:
            raise KeyError(f"no parallel branch '{branch}' (branches: {', '.join(self.branches)})")
        return f"{branch}.L"


class _Builder:
    def __init__(self, spec: BankSpec):
        self.spec = spec
        self.dut = spec.dut
        self.ic = spec.dut.interconnect
        self.net = Netlist()
        self.resistive: list[Resistive] = []
        self.inductors: list[Inductor] = []
        self.thermal: list[ThermalNode] = []
        self.links: list[tuple[str, str, float]] = []
        self.contactors: list[str] = []
        self.fuses: dict[str, float] = {}
        self.branch_shunt: dict[str, int] = {}
        self.branch_lead: dict[str, int] = {}
        self.module_stack: dict[str, int] = {}
        self.module_fet: dict[str, int] = {}

    # -- elements -----------------------------------------------------------------------------
    def resistor(self, name: str, a: str, b: str, **kwargs) -> Resistive:  # type: ignore[no-untyped-def]
        element = Resistive(self.net.branch(name, a, b), name, **kwargs)
        self.resistive.append(element)
        return element

    def inductor(self, name: str, a: str, b: str, henry: float) -> None:
        self.inductors.append(Inductor(self.net.branch(name, a, b), name, max(henry, 1e-9)))

    def lug(self) -> float:
        return self.ic.lug_contact_uohm * 1e-6

    def lead_cable(self, branch: str) -> tuple[float, float]:
        override = self.ic.leads.get(branch)
        length = self.ic.lead.length_m
        section = self.ic.lead.cross_section_mm2
        if override is not None:
            length = override.length_m if override.length_m is not None else length
            section = override.cross_section_mm2 if override.cross_section_mm2 is not None else section
        return length, section

    # -- modules --------------------------------------------------------------------------------
    def module(self, pos: str) -> None:
        self.module_stack[pos] = self.net.branch(f"{pos}.cells", f"{pos}.+", f"{pos}.B-")
        self.module_fet[pos] = self.net.branch(f"{pos}.fet", f"{pos}.P-", f"{pos}.B-")
        thermal = self.spec.module_type.thermal
        self.thermal.append(ThermalNode(pos, thermal.heat_capacity_j_per_k, 0.0))
        for terminal in ("+", "-"):
            node = f"{pos}.{terminal}"
            self.thermal.append(ThermalNode(node, thermal.terminal.heat_capacity_j_per_k,
                                            thermal.terminal.to_ambient_w_per_k))
            self.links.append((node, pos, thermal.terminal.to_module_w_per_k))

    # -- one parallel branch's leads ----------------------------------------------------------
    def leads(self, branch: str, neg_from: str, neg_module: str, pos_from: str, pos_module: str,
              neg_tap: str, pos_tap: str) -> None:
        length, section = self.lead_cable(branch)
        cable = cable_ohm(length, section, self.dut.ambient_c)
        neg = self.resistor(
            f"{branch}.lead-", neg_from, neg_tap,
            parts={"lug_module": self.lug(), "cable": cable, "lug_bus": self.lug(),
                   "shunt": self.ic.shunt_uohm * 1e-6},
            heat_to={"lug_module": f"{neg_module}.-"})
        self.branch_shunt[branch] = neg.branch
        fuse = self.dut.protection.branch_fuse_a
        self.fuses[branch] = fuse
        self.contactors.append(branch)
        mid = f"{branch}.lead+.L"
        self.inductor(f"{branch}.L", pos_from, mid,
                      self.ic.loop_inductance_uh_per_m * 1e-6 * length)
        pos = self.resistor(
            f"{branch}.lead+", mid, pos_tap,
            parts={"lug_module": self.lug(), "cable": cable, "lug_bus": self.lug(),
                   "fuse": FUSE_OHM_PER_A / fuse, "contactor": self.ic.contactor_mohm * 1e-3},
            heat_to={"lug_module": f"{pos_module}.+"}, contactor=branch, fuse=branch)
        self.branch_lead[branch] = pos.branch

    def bus(self, prefix: str, taps: int) -> tuple[str, str]:
        """Bus segments between taps; returns (positive take-off, negative take-off) nodes."""
        bus = self.ic.bus
        for polarity in ("pos", "neg"):
            for k in range(1, taps):
                name = f"{prefix}bus.{polarity}.{k}"
                if bus.kind == "busbar":
                    ohm = busbar_ohm(bus.segment_length_m, bus.width_mm, bus.thickness_mm)
                    capacity, to_air = busbar_thermal(bus.segment_length_m, bus.width_mm,
                                                      bus.thickness_mm)
                else:
                    ohm = cable_ohm(bus.length_m, bus.cross_section_mm2)  # follows its thermal node
                    capacity, to_air = cable_thermal(bus.length_m, bus.cross_section_mm2)
                self.thermal.append(ThermalNode(name, capacity, to_air))
                self.resistor(name, f"{prefix}{polarity}.{k}", f"{prefix}{polarity}.{k + 1}",
                              parts={"copper": ohm}, heat_to={"copper": name},
                              copper_part="copper", copper_node=name)
        neg_out = f"{prefix}neg.{1 if self.dut.takeoff == 'same_side' else taps}"
        return f"{prefix}pos.1", neg_out

    def series_link(self, name: str, a: str, b: str,
                    heat_to: dict[str, str] | None = None) -> None:
        link = self.ic.series_link
        mid = f"{name}.L"
        self.inductor(f"{name}.Lx", a, mid, self.ic.loop_inductance_uh_per_m * 1e-6 * link.length_m)
        self.resistor(name, mid, b, parts={"lug_lower": self.lug(), "lug_upper": self.lug(),
                                          "cable": cable_ohm(link.length_m, link.cross_section_mm2, self.dut.ambient_c)},
                      heat_to=heat_to or {})

    # -- whole bank ---------------------------------------------------------------------------
    def build(self) -> Layout:
        n, m = self.dut.series, self.dut.parallel
        arrangement = "strings" if m == 1 else self.dut.arrangement
        groups: list[list[str]] = [[f"s{s}p{p}" for p in range(1, m + 1)] for s in range(1, n + 1)]
        stack_order = [f"s{s}p{p}" for s in range(1, n + 1) for p in range(1, m + 1)]
        for pos in stack_order:
            self.module(pos)
        branches: list[str] = []
        branch_of_module: dict[str, str] = {}
        branch_modules: dict[str, list[str]] = {}
        if arrangement == "groups":
            outs = []
            for s in range(1, n + 1):
                prefix = f"g{s}." if n > 1 else ""
                for p in range(1, m + 1):
                    pos = f"s{s}p{p}"
                    branches.append(pos)
                    branch_of_module[pos] = pos
                    branch_modules[pos] = [pos]
                    self.leads(pos, f"{pos}.P-", pos, f"{pos}.+", pos,
                               f"{prefix}neg.{p}", f"{prefix}pos.{p}")
                outs.append(self.bus(prefix, m))
            for s in range(n - 1):
                self.series_link(f"link{s + 1}", outs[s][0], outs[s + 1][1])
            top, bottom = outs[-1][0], outs[0][1]
        else:
            for p in range(1, m + 1):
                name = f"p{p}"
                chain = [f"s{s}p{p}" for s in range(1, n + 1)]
                branches.append(name)
                branch_modules[name] = chain
                for pos in chain:
                    branch_of_module[pos] = name
                for lower, upper in zip(chain, chain[1:]):
                    self.series_link(f"{lower}-{upper}", f"{lower}.+", f"{upper}.P-",
                                     {"lug_lower": f"{lower}.+", "lug_upper": f"{upper}.-"})
                self.leads(name, f"{chain[0]}.P-", chain[0], f"{chain[-1]}.+", chain[-1],
                           f"neg.{p}", f"pos.{p}")
            top, bottom = self.bus("", m)
        main = self.ic.main
        self.fuses["main"] = self.dut.protection.main_fuse_a
        self.contactors.append("main")
        self.inductor("main.L", top, "main.L", self.ic.loop_inductance_uh_per_m * 1e-6 * main.length_m)
        main_pos = self.resistor(
            "main+", "main.L", "bank+",
            parts={"cable": cable_ohm(main.length_m, main.cross_section_mm2, self.dut.ambient_c), "lugs": 2 * self.lug(),
                   "fuse": FUSE_OHM_PER_A / self.dut.protection.main_fuse_a,
                   "contactor": self.ic.contactor_mohm * 1e-3},
            contactor="main", fuse="main")
        self.resistor("main-", bottom, GROUND,
                      parts={"cable": cable_ohm(main.length_m, main.cross_section_mm2, self.dut.ambient_c),
                             "lugs": 2 * self.lug()})
        supply = self.net.branch("supply", "bank+", GROUND)
        load = self.net.branch("load", "bank+", GROUND)
        self._module_neighbours(stack_order)
        return Layout(self.net, stack_order, self.module_stack, self.module_fet, branches,
                      branch_of_module, branch_modules, self.branch_shunt, self.branch_lead,
                      self.resistive, self.inductors, self.thermal, self.links, self.contactors,
                      self.fuses, main_pos.branch, groups, supply, load)

    def _module_neighbours(self, stack_order: list[str]) -> None:
        """Modules stand side by side in stack order; close spacing shields the side faces.

        Each module has two side faces. A face towards a neighbour exchanges heat with it in
        proportion ``f = exp(-spacing / 5 cm)`` and sheds the rest to ambient; an end face is
        fully exposed. So with tight spacing the middle of a stack runs warmer (002, 003).
        """
        thermal = self.spec.module_type.thermal
        shield = math.exp(-self.dut.spacing_cm / 5.0)
        by_name = {node.name: node for node in self.thermal}
        count = len(stack_order)
        for k, pos in enumerate(stack_order):
            neighbours = (k > 0) + (k < count - 1)
            exposed = 2 - neighbours + neighbours * (1 - shield)
            by_name[pos].to_ambient = thermal.to_ambient_w_per_k + exposed * thermal.side_w_per_k
            if k < count - 1:
                self.links.append((pos, stack_order[k + 1], shield * thermal.neighbour_w_per_k))


def build_layout(spec: BankSpec) -> Layout:
    return _Builder(spec).build()


def module_series_resistance(spec: BankSpec) -> float:
    """Cell R0s, internal links, shunt (ohm): the module's resistance outside RC pairs and FETs."""
    mt = spec.module_type
    return (mt.cells_in_series * mt.cell.r0_mohm + mt.links_mohm + mt.bms.shunt_mohm) * 1e-3


__all__ = ["Layout", "build_layout", "module_series_resistance", "cable_ohm_per_m"]
