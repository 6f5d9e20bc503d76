"""Modified nodal analysis for networks of two-terminal branches.

Every element of the bank -- a module's cell stack with its RC pairs, a cable, a busbar
segment, a BMS switch, a fuse, an inductance, the supply, the load -- is a *branch* between two
nodes whose companion model for one time step is linear:

    i_ab = g * (v_a - v_b) - s

(i_ab flows from a to b through the branch). A Thevenin source of EMF E and resistance R has
g = 1/R, s = E/R; a current source of I has g = 0, s = -I; an inductor under backward Euler has
g = dt/L, s = -i_previous. Non-linear elements (a MOSFET in avalanche, a load dropping out of
regulation, a supply switching from CV to CC) are piecewise linear: the caller picks a region,
solves, checks the region against the result and solves again.

Kirchhoff's current law gives  A^T diag(g) A v = A^T s  with A the branch-node incidence
matrix (ground column removed). The matrix only changes when a conductance does (a switch, a new
time step, a temperature update), so its LU factors are cached and most steps cost one
triangular solve -- over the factors' nonzeros only, in a compiled kernel
(emulator/kernels.py) that the twin's step kernel also calls on this solver's arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from emulator import kernels as kn

GROUND = "bank-"
G_MIN = kn.G_MIN  # S from every node to ground, as SPICE's gmin: keeps floating nodes solvable


@dataclass
class Netlist:
    """Named nodes and branches; node 0 is the reference (the bank's negative terminal)."""

    node_names: list[str] = field(default_factory=lambda: [GROUND])
    branch_names: list[str] = field(default_factory=list)
    branch_a: list[int] = field(default_factory=list)
    branch_b: list[int] = field(default_factory=list)

    def node(self, name: str) -> int:
        try:
            return self.node_names.index(name)
        except ValueError:
            self.node_names.append(name)
            return len(self.node_names) - 1

    def branch(self, name: str, a: str, b: str) -> int:
        if name in self.branch_names:
            raise ValueError(f"branch {name} defined twice")
        self.branch_names.append(name)
        self.branch_a.append(self.node(a))
        self.branch_b.append(self.node(b))
        return len(self.branch_names) - 1

    def incidence(self) -> np.ndarray:
        """Branch x node incidence (+1 at a, -1 at b), ground column dropped."""
        rows = len(self.branch_names)
        matrix = np.zeros((rows, len(self.node_names)))
        matrix[np.arange(rows), self.branch_a] += 1.0
        matrix[np.arange(rows), self.branch_b] -= 1.0
        return matrix[:, 1:]


class MnaSolver:
    """Solves the nodal equations for given branch (g, s), reusing LU factors while g is unchanged.

    The factors, their nonzero pattern and the last solution live in arrays that the twin's
    step kernel updates in place (``branches`` rows are g, s, branch voltage, branch current
    and the factored g).
    """

    def __init__(self, netlist: Netlist):
        self.incidence = netlist.incidence()
        self.incidence_t = np.ascontiguousarray(self.incidence.T)
        nodes, count = len(netlist.node_names) - 1, len(netlist.branch_names)
        self.branch_a = np.array(netlist.branch_a, dtype=np.int64)
        self.branch_b = np.array(netlist.branch_b, dtype=np.int64)
        self.branches = np.zeros((kn.B_ROWS, count))
        self.v_nodes = np.zeros(nodes + 1)           # ground first, always 0
        self.lu = np.zeros((nodes, nodes))
        self.lu_meta = np.zeros(kn.lu_meta_size(nodes), dtype=np.int64)
        self.factored = np.zeros(2, dtype=np.int64)  # [factors valid, factorisations so far]

    @property
    def factorisations(self) -> int:
        return int(self.factored[1])

    def solve(self, g: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (node voltages incl. ground, branch voltages v_a - v_b, branch currents)."""
        self.branches[kn.B_G] = g
        self.branches[kn.B_S] = s
        info = kn.mna_solve(self.branches, self.branch_a, self.branch_b, self.lu, self.lu_meta,
                            self.v_nodes, self.factored)
        if info != 0:
            raise np.linalg.LinAlgError(f"singular nodal matrix (pivot {info})")
        return self.v_nodes.copy(), self.branches[kn.B_V].copy(), self.branches[kn.B_I].copy()
