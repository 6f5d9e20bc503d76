"""Compiled kernels for the twin's per-step arithmetic (numba, cached on disk).

Why: one twin step was ~60 tiny numpy operations on vectors of 4..115 elements, each costing a
microsecond or two of interpreter and dispatch overhead whatever its size, so a step took
~750 us while its arithmetic is a few microseconds. Here that arithmetic runs as plain loops
working in place on the twin's arrays. Python keeps everything rare and stateful (events,
trips, fuse blows, welding, scheduled faults, master ticks) and reacts to the EV_* bits the
kernels return.

Shape: one entry point, :func:`twin_kernel`, does a solve, a step (and the slow path when it is
due), the slow path alone or the OCV refresh, with its parts written inline and only small
helpers below it. Numba compiles each function separately and re-optimises every linked
callee at each level of the call tree, so a flat tree compiles markedly faster than a deep
one. A few tiny kernels serve the master link and the classes' own APIs (``MnaSolver.solve``,
``ThermalNetwork.step``, ``BmsArray.step``), which call the same helpers as the twin.

Data layout: the twin packs its per-module, per-branch, per-resistor, per-inductor, per-fuse,
per-cell and per-thermal-node quantities as rows of a few arrays (row constants below); its
public attributes (``v_rc1``, ``r_series``, ``branch_i`` ...) are views of those rows, so the
kernels and Python share memory and a call passes ~30 arrays rather than ~80 (numba's
dispatcher costs ~0.1 us per argument).

Linear solves: the nodal and thermal matrices are factorised with partial pivoting (the same
algorithm as LAPACK's getrf) only when they change; each solve then walks only the nonzeros of
L and U, recorded at factorisation time (a 4S4P bank's 101-node matrix has ~480 of 10,100).

Compile time: every function is ``cache=True``. With an empty cache the first twin of a
process compiles for 10-15 s on this 2-core machine, once per machine and change of this file;
every later process loads the machine code from ``emulator/__pycache__`` in ~0.5 s.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# Every kernel: cached on disk; numpy's floating-point error model (x / 0 gives inf or nan, as
# the numpy code it replaces did, rather than raising).
_kernel = njit(cache=True, error_model="numpy")
# helpers only kernels call: no Python entry point to generate
_helper = njit(cache=True, error_model="numpy", no_cpython_wrapper=True)

# ---------------------------------------------------------------------------------- constants
G_OFF = 1e-7            # S: an open contactor, blown fuse or off MOSFET (10 Mohm)
G_MIN = 1e-9            # S from every node to ground, as SPICE's gmin
FET_ON, FET_OFF, FET_CLAMP_POS, FET_CLAMP_NEG, FET_FAILED = 0, 1, 2, 3, 4
SUPPLY_OFF, SUPPLY_BLOCK, SUPPLY_CV, SUPPLY_CC = 0, 1, 2, 3
LOAD_OFF, LOAD_CC, LOAD_DROPOUT = 0, 1, 2
SUPPLY_REGIONS = ("off", "block", "cv", "cc")
LOAD_REGIONS = ("off", "cc", "dropout")

# rows of the per-module float array (shape M_ROWS x modules)
(M_VRC1, M_VRC2, M_R1, M_R2, M_RSER, M_TAU1, M_TAU2, M_EMF, M_A1, M_A2, M_REQ, M_FET_RON,
 M_FET_CLAMPV, M_FET_CLAMPR, M_FET_EAS, M_FET_E, M_VDS_PEAK, M_CLAMPW_PREV, M_ACC_Q, M_ACC_QRAW,
 M_ACC_HEAT, M_IMOD, M_EXTRA_HEAT, M_FAILED_NOW, M_TEMP, M_CLAMPW) = range(26)
M_ROWS = 26
# rows of the per-branch float array
B_G, B_S, B_V, B_I, B_GF = range(5)
B_ROWS = 5
# rows of the per-resistive-element, per-inductor and per-fuse float arrays
R_G, R_R, R_ACC = range(3)
L_H, L_I = range(2)
F_HEAT, F_CONT2, F_MELT, F_PEAK, F_BLOWN = range(5)
F_ROWS = 5
# rows of the per-cell float array (shape C_ROWS x modules x cells): SOC, capacity (A s), OCV,
# voltages as the BMS last sampled them, voltages under the slow span's mean current
C_SOC, C_CAP, C_OCV, C_V, C_VBAL = range(5)
C_ROWS = 5
# rows of the thermal float array (shape T_ROWS x nodes); T_HEAT is scratch, T_RES_TEMP the
# temperatures at which the twin last computed its copper resistances
T_TEMP, T_CAP, T_GAMB, T_C_OVER_DT, T_AMB_HEAT, T_HEAT, T_RES_TEMP = range(7)
T_ROWS = 7
# thermal scalars: cached factorisation step (nan = none), ambient temperature
TS_DT, TS_AMBIENT = range(2)

# float scalars of a twin
(S_ACC_DT, S_ETA, S_RC_DT, S_SUP_ON, S_SUP_V, S_SUP_I, S_SUP_OHM, S_LOAD_ON, S_LOAD_I,
 S_LOAD_MINV, S_SELF_DISCHARGE, S_CELLS, S_SOC_MIN, S_SOC_MAX, S_SLOW_STEP) = range(15)
E_FIRST = 15           # eight energy accounts follow, in the order of ENERGY_FIELDS
ENERGY_FIELDS = ("supply_in", "load_out", "chemical", "coulombic_loss", "joule", "rc_loss",
                 "clamp", "balancing")
(E_SUPPLY_IN, E_LOAD_OUT, E_CHEMICAL, E_COULOMBIC, E_JOULE, E_RC, E_CLAMP,
 E_BALANCING) = range(E_FIRST, E_FIRST + 8)
S_SIZE = E_FIRST + 8

# integer state of a twin
I_SUP_REGION, I_LOAD_REGION, I_FETS_ALL_ON, I_FACTORED, I_FACTORISATIONS = range(5)
I_SIZE = 5
# what a kernel reports (bits of its return value)
EV_PWL = 1 << 0         # a piecewise-linear region changed
EV_FAILED = 1 << 1      # MOSFETs failed short (marked in row M_FAILED_NOW)
EV_CLAMPING = 1 << 2    # a MOSFET clamps (avalanche)
EV_MELT = 1 << 3        # a fuse's melt integral is exceeded
EV_BMS = 1 << 4         # a protection tripped or released
EV_SLOW_DUE = 1 << 5    # the slow path's span reached its length
EV_RESISTIVE = 1 << 6   # copper warmed > 1 K: recompute resistances and call again (no step done)
EV_SINGULAR = 1 << 7    # a singular matrix (no step done)
EV_SLOW_DONE = 1 << 8   # the slow path (with the BMS's sampled protections) ran
EV_SLOW_BMS = 1 << 9    # ... and one of those protections tripped or released
# what the twin kernel is asked to do
OP_SOLVE, OP_STEP, OP_SLOW, OP_SLOW_BMS, OP_CHEMISTRY = range(5)

# BMS: rows of the float state (timer, trip age) and bool state (tripped, trip, release)
BF_TIMER, BF_AGE = range(2)
BB_TRIPPED, BB_TRIP, BB_RELEASE = range(3)
# BMS parameters: delay[9], recovery[9], then thresholds
P_DELAY, P_RECOVERY = 0, 9
(P_OV, P_OV_REL, P_UV, P_UV_REL, P_OCC, P_OCD, P_SC, P_CT_MAX, P_CT_MIN, P_CT_HYS, P_DT_MAX,
 P_DT_MIN, P_DT_HYS, P_BAL_START, P_BAL_DELTA, P_BAL_I) = range(18, 34)
P_SIZE = 34
# protection rows as bit masks: over-current and short circuit are hardware comparators (every
# step), cell voltages and temperatures are sampled (slow path)
FAST_MASK = (1 << 2) | (1 << 3) | (1 << 4)
SLOW_MASK = (1 << 0) | (1 << 1) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8)
ALL_MASK = (1 << 9) - 1


def rows_mask(rows: "np.ndarray | None") -> int:
    """Bit mask of protection rows (all nine for None)."""
    if rows is None:
        return ALL_MASK
    mask = 0
    for r in np.asarray(rows).ravel():
        mask |= 1 << int(r)
    return mask


# ---------------------------------------------------------------------------------- LU
def lu_meta_size(n: int) -> int:
    """Length of the integer array holding pivots and the L/U nonzero pattern of an n x n LU."""
    return n + 2 * (n + 1) + n * n


@_helper
def lu_factor(a: np.ndarray, meta: np.ndarray) -> int:
    """In-place LU with partial pivoting (LAPACK getf2's algorithm); records the pattern.

    ``meta`` holds the pivots (n), the row starts of L's and U's off-diagonal nonzeros
    (n + 1 each) and their column indices. Returns 0, or k + 1 if pivot k is exactly zero
    (a singular matrix, as LAPACK's ``info``).
    """
    n = a.shape[0]
    for k in range(n):
        p = k
        big = abs(a[k, k])
        for i in range(k + 1, n):
            v = abs(a[i, k])
            if v > big:
                big = v
                p = i
        meta[k] = p
        if a[p, k] == 0.0:
            return k + 1
        if p != k:
            for j in range(n):
                tmp = a[k, j]
                a[k, j] = a[p, j]
                a[p, j] = tmp
        inv = 1.0 / a[k, k]
        for i in range(k + 1, n):
            if a[i, k] != 0.0:
                a[i, k] *= inv
                lik = a[i, k]
                for j in range(k + 1, n):
                    akj = a[k, j]
                    if akj != 0.0:
                        a[i, j] -= lik * akj
    l_ptr = n
    u_ptr = 2 * n + 1
    q = 3 * n + 2
    for i in range(n):
        meta[l_ptr + i] = q
        for j in range(i):
            if a[i, j] != 0.0:
                meta[q] = j
                q += 1
    meta[l_ptr + n] = q
    for i in range(n):
        meta[u_ptr + i] = q
        for j in range(i + 1, n):
            if a[i, j] != 0.0:
                meta[q] = j
                q += 1
    meta[u_ptr + n] = q
    return 0


@_helper
def lu_solve(a: np.ndarray, meta: np.ndarray, x: np.ndarray) -> None:
    """Solve in place with factors from :func:`lu_factor`, visiting only nonzeros."""
    n = a.shape[0]
    for k in range(n):
        p = meta[k]
        if p != k:
            tmp = x[k]
            x[k] = x[p]
            x[p] = tmp
    l_ptr = n
    u_ptr = 2 * n + 1
    for i in range(n):
        acc = x[i]
        for q in range(meta[l_ptr + i], meta[l_ptr + i + 1]):
            j = meta[q]
            acc -= a[i, j] * x[j]
        x[i] = acc
    for i in range(n - 1, -1, -1):
        acc = x[i]
        for q in range(meta[u_ptr + i], meta[u_ptr + i + 1]):
            j = meta[q]
            acc -= a[i, j] * x[j]
        x[i] = acc / a[i, i]


# ---------------------------------------------------------------------------------- MNA
@_helper
def _mna_solve(br: np.ndarray, ba: np.ndarray, bb: np.ndarray, lu: np.ndarray, meta: np.ndarray,
              v_nodes: np.ndarray, factored: np.ndarray) -> int:
    """Node voltages, branch voltages and currents for the branch (g, s) rows of ``br``.

    Refactors only when g differs from the factored g (``factored[0]`` is 0 before the first
    factorisation; ``factored[1]`` counts them). Returns 0, or LAPACK-style info if singular.
    """
    g, s, gf = br[B_G], br[B_S], br[B_GF]
    nb = g.size
    same = factored[0] != 0
    if same:
        for b in range(nb):
            if g[b] != gf[b]:
                same = False
                break
    if not same:
        # stamp A^T diag(g) A + gmin I (ground, node 0, dropped) and factor it
        n = lu.shape[0]
        for i in range(n):
            for j in range(n):
                lu[i, j] = 0.0
        for b in range(nb):
            a, c, gb = ba[b] - 1, bb[b] - 1, g[b]
            if a >= 0:
                lu[a, a] += gb
            if c >= 0:
                lu[c, c] += gb
            if a >= 0 and c >= 0:
                lu[a, c] -= gb
                lu[c, a] -= gb
        for i in range(n):
            lu[i, i] += G_MIN
        info = lu_factor(lu, meta)
        if info != 0:
            factored[0] = 0
            return info
        for b in range(nb):
            gf[b] = g[b]
        factored[0] = 1
        factored[1] += 1
    n = lu.shape[0]
    x = v_nodes[1:]
    for i in range(n):
        x[i] = 0.0
    for b in range(nb):
        a, c = ba[b], bb[b]
        if a > 0:
            x[a - 1] += s[b]
        if c > 0:
            x[c - 1] -= s[b]
    lu_solve(lu, meta, x)
    v_nodes[0] = 0.0
    bv, bi = br[B_V], br[B_I]
    for b in range(nb):
        bv[b] = v_nodes[ba[b]] - v_nodes[bb[b]]
        bi[b] = g[b] * bv[b] - s[b]
    return 0


@_kernel
def mna_solve(br: np.ndarray, ba: np.ndarray, bb: np.ndarray, lu: np.ndarray, meta: np.ndarray,
              v_nodes: np.ndarray, factored: np.ndarray) -> int:
    """:func:`_mna_solve` for Python callers (``MnaSolver.solve``)."""
    return _mna_solve(br, ba, bb, lu, meta, v_nodes, factored)


# ---------------------------------------------------------------------------------- BMS
@_helper
def _bms_conditions(cell_v: np.ndarray, i_mod: np.ndarray, temp: np.ndarray, trip: np.ndarray,
                    release: np.ndarray, par: np.ndarray) -> None:
    """Every protection's trip and release condition from sampled cell voltages, current and
    temperature."""
    for k in range(i_mod.size):
        vmax = cell_v[k, 0]
        vmin = cell_v[k, 0]
        for c in range(1, cell_v.shape[1]):
            v = cell_v[k, c]
            if v > vmax:
                vmax = v
            if v < vmin:
                vmin = v
        t, i = temp[k], i_mod[k]
        charging = i > 0.5
        trip[0, k] = vmax > par[P_OV]
        trip[1, k] = vmin < par[P_UV]
        trip[2, k] = i > par[P_OCC]
        trip[3, k] = -i > par[P_OCD]
        trip[4, k] = -i > par[P_SC]
        trip[5, k] = (t > par[P_CT_MAX]) and charging
        trip[6, k] = (t < par[P_CT_MIN]) and charging
        trip[7, k] = t > par[P_DT_MAX]
        trip[8, k] = t < par[P_DT_MIN]
        release[0, k] = vmax < par[P_OV_REL]
        release[1, k] = vmin > par[P_UV_REL]
        release[2, k] = False
        release[3, k] = False
        release[4, k] = False
        release[5, k] = t < par[P_CT_MAX] - par[P_CT_HYS]
        release[6, k] = t > par[P_CT_MIN] + par[P_CT_HYS]
        release[7, k] = t < par[P_DT_MAX] - par[P_DT_HYS]
        release[8, k] = t > par[P_DT_MIN] + par[P_DT_HYS]


@_helper
def _bms_debounce(mask: int, dt: float, bf: np.ndarray, bb: np.ndarray,
                  count: np.ndarray, par: np.ndarray) -> bool:
    """Advance the debounce timers of the rows in ``mask`` by dt; True if any protection
    tripped or released.

    A condition must hold for its delay before the protection trips; a trip is released by
    its release condition (held past one step) or after its fixed recovery time.
    """
    timer, age = bf[BF_TIMER], bf[BF_AGE]
    tripped, trip, release = bb[BB_TRIPPED], bb[BB_TRIP], bb[BB_RELEASE]
    n = timer.shape[1]
    changed = False
    for r in range(9):
        if not (mask >> r) & 1:
            continue
        threshold = par[P_DELAY + r] - 1e-12
        for k in range(n):
            if trip[r, k] and not tripped[r, k]:
                t = timer[r, k] + dt
                if t >= threshold:
                    tripped[r, k] = True
                    count[r, k] += 1
                    age[r, k] = 0.0
                    timer[r, k] = 0.0
                    changed = True
                else:
                    timer[r, k] = t
            else:
                timer[r, k] = 0.0
    any_tripped = False
    for r in range(9):
        if (mask >> r) & 1:
            for k in range(n):
                if tripped[r, k]:
                    any_tripped = True
    if any_tripped:
        for r in range(9):
            if not (mask >> r) & 1:
                continue
            recovery = par[P_RECOVERY + r]
            for k in range(n):
                if tripped[r, k]:
                    a = age[r, k] + dt
                    age[r, k] = a
                    if (release[r, k] and a > dt) or a >= recovery:
                        tripped[r, k] = False
                        changed = True
                else:
                    age[r, k] = 0.0
    return changed


@_kernel
def bms_step(mask: int, fast: bool, dt: float, cell_v: np.ndarray, i_mod: np.ndarray,
             temp: np.ndarray, bf: np.ndarray, bb: np.ndarray, count: np.ndarray,
             par: np.ndarray) -> bool:
    """One BMS step outside the twin's kernels (``BmsArray.step``): the same conditions and
    debounce the kernels run."""
    if fast:
        trip = bb[BB_TRIP]
        for k in range(i_mod.size):
            trip[2, k] = i_mod[k] > par[P_OCC]
            trip[3, k] = i_mod[k] < -par[P_OCD]
            trip[4, k] = i_mod[k] < -par[P_SC]
    else:
        _bms_conditions(cell_v, i_mod, temp, bb[BB_TRIP], bb[BB_RELEASE], par)
    return _bms_debounce(mask, dt, bf, bb, count, par)


@_kernel
def bms_time_to_next_trip(bf: np.ndarray, par: np.ndarray) -> float:
    """Shortest time until a running debounce timer expires (inf if none runs)."""
    timer = bf[BF_TIMER]
    best = np.inf
    for r in range(timer.shape[0]):
        for k in range(timer.shape[1]):
            if timer[r, k] > 0:
                left = par[P_DELAY + r] - timer[r, k]
                if left < best:
                    best = left
    if best == np.inf:
        return best
    return max(best, 0.0)


@_helper
def _balance_module(k: int, cell_v: np.ndarray, charging: bool, balancing: np.ndarray,
                    par: np.ndarray) -> None:
    """Passive balancing flags of module k: cells above the start voltage and above the
    module's lowest cell, while charging or at rest."""
    lowest = cell_v[k, 0]
    for c in range(1, cell_v.shape[1]):
        if cell_v[k, c] < lowest:
            lowest = cell_v[k, c]
    for c in range(cell_v.shape[1]):
        v = cell_v[k, c]
        balancing[k, c] = (v > par[P_BAL_START]) and (v - lowest > par[P_BAL_DELTA]) and charging


@_kernel
def bms_balance(cell_v: np.ndarray, charging: np.ndarray, balancing: np.ndarray,
                par: np.ndarray) -> np.ndarray:
    """Balancing flags and bleed currents (A per cell) for ``BmsArray.balance_currents``."""
    bleed = np.empty(cell_v.shape)
    for k in range(cell_v.shape[0]):
        _balance_module(k, cell_v, charging[k], balancing, par)
        for c in range(cell_v.shape[1]):
            bleed[k, c] = par[P_BAL_I] if balancing[k, c] else 0.0
    return bleed


# ---------------------------------------------------------------------------------- thermal
@_helper
def _thermal_step(dt: float, heat_w: np.ndarray, th: np.ndarray, cond: np.ndarray,
                  lu: np.ndarray, meta: np.ndarray, tsc: np.ndarray) -> int:
    """Backward Euler step of the thermal network, refactoring only when dt changes.

    Returns 0, or the singular pivot's number."""
    n = th.shape[1]
    if not tsc[TS_DT] == dt:
        for i in range(n):
            for j in range(n):
                lu[i, j] = cond[i, j]
            c_over_dt = th[T_CAP, i] / dt
            lu[i, i] = c_over_dt + cond[i, i]
            th[T_C_OVER_DT, i] = c_over_dt
            th[T_AMB_HEAT, i] = th[T_GAMB, i] * tsc[TS_AMBIENT]
        info = lu_factor(lu, meta)
        if info != 0:
            tsc[TS_DT] = np.nan
            return info
        tsc[TS_DT] = dt
    temp = th[T_TEMP]
    for i in range(n):
        temp[i] = th[T_C_OVER_DT, i] * temp[i] + heat_w[i] + th[T_AMB_HEAT, i]
    lu_solve(lu, meta, temp)
    return 0


@_kernel
def thermal_step(dt: float, heat_w: np.ndarray, th: np.ndarray, cond: np.ndarray,
                 lu: np.ndarray, meta: np.ndarray, tsc: np.ndarray) -> int:
    """:func:`_thermal_step` for Python callers (``ThermalNetwork.step``)."""
    return _thermal_step(dt, heat_w, th, cond, lu, meta, tsc)


# ---------------------------------------------------------------------------------- chemistry
@_helper
def _refresh_chemistry(cells: np.ndarray, mod: np.ndarray, ocv_x: np.ndarray,
                      ocv_y: np.ndarray) -> None:
    """Cell OCVs from SOC and module EMFs (their sum)."""
    soc, ocv = cells[C_SOC], cells[C_OCV]
    for k in range(soc.shape[0]):
        emf = 0.0
        for c in range(soc.shape[1]):
            # linear interpolation on the increasing table, as numpy.interp (ends held)
            x = soc[k, c]
            last = ocv_x.size - 1
            if x < ocv_x[0]:
                v = ocv_y[0]
            elif x >= ocv_x[last]:
                v = ocv_y[last]
            else:
                lo, hi = 0, last
                while hi - lo > 1:
                    mid = (lo + hi) >> 1
                    if ocv_x[mid] <= x:
                        lo = mid
                    else:
                        hi = mid
                slope = (ocv_y[lo + 1] - ocv_y[lo]) / (ocv_x[lo + 1] - ocv_x[lo])
                v = slope * (x - ocv_x[lo]) + ocv_y[lo]
            ocv[k, c] = v
            emf += v
        mod[M_EMF, k] = emf


# ---------------------------------------------------------------------------------- twin step
@_kernel
def twin_kernel(op: int, dt: float, mod: np.ndarray, region: np.ndarray, allow: np.ndarray,
                br: np.ndarray, res: np.ndarray, ind: np.ndarray, fuse: np.ndarray,
                topo: np.ndarray, lu: np.ndarray, meta: np.ndarray, v_nodes: np.ndarray,
                sc: np.ndarray, fl: np.ndarray, cells: np.ndarray, balancing: np.ndarray,
                heat_r: np.ndarray, mod_th: np.ndarray, th: np.ndarray,
                th_cond: np.ndarray, th_lu: np.ndarray, th_meta: np.ndarray, tsc: np.ndarray,
                ocv_x: np.ndarray, ocv_y: np.ndarray, bms_f: np.ndarray, bms_b: np.ndarray,
                bms_count: np.ndarray, bms_par: np.ndarray) -> int:
    """The twin's one compiled entry point; ``op`` says what to do, the result is EV_* bits.

    OP_SOLVE: solve the circuit for a step of dt, re-picking piecewise-linear regions (the
    solve repeats while a region changes, at most 30 times).

    OP_STEP: solve, then integrate the step: RC pairs exact for the current held over the
    step, inductor currents, the charge and heat accumulated for the slow path, MOSFET
    avalanche energy (trapezoid) and failure, peaks, energy accounts, fuse heating and the
    BMS over-current comparators. If the slow path is then due (its span reached, a region
    changed or a MOSFET failed) and nothing Python must handle first happened (a fast BMS
    trip or release, a fuse melt), the slow path with the BMS's sampled protections runs in
    the same call (EV_SLOW_DONE; EV_SLOW_BMS if a protection tripped or released).

    OP_SLOW, OP_SLOW_BMS: the slow path over the accumulated span -- SOC (with balancing bleed
    and self-discharge), temperatures, cell OCVs -- and with OP_SLOW_BMS the BMS then samples
    cell voltages (under this step's current) and temperatures and runs its voltage and
    temperature protections over the span.

    OP_CHEMISTRY: cell OCVs and module EMFs from SOC.

    EV_RESISTIVE (nothing done): the slow path just ran and copper warmed by more than 1 K
    since resistances were computed; Python recomputes them and calls again.

    (One entry point with its parts inline, calling only small helpers, compiles several
    times faster than a tree of kernels: numba re-optimises every linked callee per level.)
    """
    n, nb, nr, ni, nf = mod.shape[1], br.shape[1], res.shape[1], ind.shape[1], fuse.shape[1]
    cells_n = cells.shape[2]
    if op == OP_CHEMISTRY:
        _refresh_chemistry(cells, mod, ocv_x, ocv_y)
        return 0
    # topo: cell stack, FET, resistive, inductor and fuse branches, branch ends a and b,
    # supply and load branches, then the (thermal node, resistor) pairs of Joule heating
    o_fet, o_res = n, 2 * n
    o_ind = o_res + nr
    o_fuse = o_ind + ni
    o_a = o_fuse + nf
    o_b = o_a + nb
    o_sup = o_b + nb
    ev = 0
    with_bms = op == OP_SLOW_BMS
    if op == OP_SOLVE or op == OP_STEP:
        if sc[S_ACC_DT] == 0.0:
            drift = 0.0
            for j in range(th.shape[1]):
                d = abs(th[T_TEMP, j] - th[T_RES_TEMP, j])
                if d > drift:
                    drift = d
            if drift > 1.0:
                return EV_RESISTIVE
        if not sc[S_RC_DT] == dt:
            for k in range(n):
                a1 = math.exp(-dt / mod[M_TAU1, k])
                a2 = math.exp(-dt / mod[M_TAU2, k])
                mod[M_A1, k] = a1
                mod[M_A2, k] = a2
                mod[M_REQ, k] = mod[M_RSER, k] + mod[M_R1, k] * (1 - a1) + mod[M_R2, k] * (1 - a2)
            sc[S_RC_DT] = dt
        ba = topo[o_a:o_b]
        bbr = topo[o_b:o_b + nb]
        factored = fl[I_FACTORED:I_FACTORISATIONS + 1]
        any_change = False
        bv, bi = br[B_V], br[B_I]
        g, s = br[B_G], br[B_S]
        for _ in range(30):
            # companion-model (g, s) of every branch for a step of dt in the current regions
            for j in range(nr):
                b = topo[o_res + j]
                g[b] = res[R_G, j]
                s[b] = 0.0
            for j in range(ni):
                b = topo[o_ind + j]
                g[b] = dt / ind[L_H, j]
                s[b] = -ind[L_I, j]
            for k in range(n):
                b = topo[k]
                req = mod[M_REQ, k]
                g[b] = 1.0 / req
                s[b] = (mod[M_EMF, k] + mod[M_A1, k] * mod[M_VRC1, k] + mod[M_A2, k] * mod[M_VRC2, k]) / req
                b = topo[o_fet + k]
                r = region[k]
                if r == FET_OFF:
                    g[b] = G_OFF
                    s[b] = 0.0
                elif r == FET_CLAMP_POS or r == FET_CLAMP_NEG:
                    rc = mod[M_FET_CLAMPR, k]
                    g[b] = 1.0 / rc
                    sign = 1.0 if r == FET_CLAMP_POS else -1.0
                    s[b] = sign * mod[M_FET_CLAMPV, k] / rc
                else:
                    g[b] = 1.0 / mod[M_FET_RON, k]
                    s[b] = 0.0
            b = topo[o_sup]
            region_s = fl[I_SUP_REGION]
            if sc[S_SUP_ON] == 0.0 or region_s == SUPPLY_OFF or region_s == SUPPLY_BLOCK:
                g[b] = G_OFF
                s[b] = 0.0
            elif region_s == SUPPLY_CC:
                g[b] = 0.0
                s[b] = sc[S_SUP_I]
            else:
                g[b] = 1.0 / sc[S_SUP_OHM]
                s[b] = sc[S_SUP_V] / sc[S_SUP_OHM]
            b = topo[o_sup + 1]
            if sc[S_LOAD_ON] == 0.0 or sc[S_LOAD_I] <= 0:
                g[b] = G_OFF
                s[b] = 0.0
            elif fl[I_LOAD_REGION] == LOAD_DROPOUT:
                g[b] = sc[S_LOAD_I] / sc[S_LOAD_MINV]
                s[b] = 0.0
            else:
                g[b] = 0.0
                s[b] = -sc[S_LOAD_I]
            if _mna_solve(br, ba, bbr, lu, meta, v_nodes, factored) != 0:
                return EV_SINGULAR
            # re-pick the piecewise-linear regions (MOSFETs, supply, load) from the solution
            changed = False  # a region changed
            all_closed = True
            for k in range(n):
                if not (allow[0, k] and allow[1, k]):
                    all_closed = False
            if not (all_closed and fl[I_FETS_ALL_ON] != 0):
                tol = 1e-6
                all_on = True
                for k in range(n):
                    b = topo[n + k]
                    v, i = bv[b], bi[b]
                    allow_c, allow_d = allow[0, k], allow[1, k]
                    r = region[k]
                    new = r
                    want_on = (allow_d and v > tol) or (allow_c and v < -tol)
                    if r == FET_ON:
                        if not ((i >= -tol and allow_d) or (i <= tol and allow_c)):
                            new = FET_OFF
                    elif r == FET_OFF or r == FET_CLAMP_POS or r == FET_CLAMP_NEG:
                        if want_on:
                            new = FET_ON
                        else:
                            clamp_v = mod[M_FET_CLAMPV, k]
                            if v > clamp_v:
                                new = FET_CLAMP_POS
                            if v < -clamp_v:
                                new = FET_CLAMP_NEG
                            if abs(v) <= clamp_v:
                                new = FET_OFF
                    # a clamp that stopped conducting returns to off
                    if r == FET_CLAMP_POS and i < 0 and not want_on:
                        new = FET_OFF
                    if r == FET_CLAMP_NEG and i > 0 and not want_on:
                        new = FET_OFF
                    if r == FET_FAILED:
                        new = FET_FAILED
                    if new != r:
                        region[k] = new
                        changed = True
                    if new != FET_ON:
                        all_on = False
                fl[I_FETS_ALL_ON] = 1 if all_on else 0
            # supply: CV with current limit, can source but not sink
            k_sup = topo[o_sup]
            region_s = fl[I_SUP_REGION]
            if sc[S_SUP_ON] != 0.0:
                vs, is_ = bv[k_sup], -bi[k_sup]
                new_s = region_s
                if region_s == SUPPLY_OFF or region_s == SUPPLY_BLOCK:
                    new_s = SUPPLY_CV if vs < sc[S_SUP_V] else SUPPLY_BLOCK
                elif region_s == SUPPLY_CV:
                    if is_ > sc[S_SUP_I] + 1e-9:
                        new_s = SUPPLY_CC
                    elif is_ < -1e-9:
                        new_s = SUPPLY_BLOCK
                elif region_s == SUPPLY_CC and vs > sc[S_SUP_V] + 1e-9:
                    new_s = SUPPLY_CV
                if new_s != region_s:
                    fl[I_SUP_REGION] = new_s
                    changed = True
            elif region_s != SUPPLY_OFF:
                fl[I_SUP_REGION] = SUPPLY_OFF
                changed = True
            # load: constant current, a resistor below its minimum voltage
            k_load = topo[o_sup + 1]
            region_l = fl[I_LOAD_REGION]
            if sc[S_LOAD_ON] != 0.0:
                new_l = LOAD_CC if bv[k_load] >= sc[S_LOAD_MINV] else LOAD_DROPOUT
                if new_l != region_l:
                    fl[I_LOAD_REGION] = new_l
                    changed = True
            elif region_l != LOAD_OFF:
                fl[I_LOAD_REGION] = LOAD_OFF
                changed = True
            if not changed:
                break
            any_change = True
        ev = EV_PWL if any_change else 0
        if op == OP_SOLVE:
            return ev

        bv, bi = br[B_V], br[B_I]
        eta = sc[S_ETA]
        sc[S_ACC_DT] += dt
        e_chem = 0.0
        e_coul = 0.0
        e_mod_joule = 0.0
        e_fet = 0.0
        e_rc = 0.0
        any_clamp = False
        for k in range(n):
            i = bi[topo[k]]
            mod[M_IMOD, k] = i
            a1, a2 = mod[M_A1, k], mod[M_A2, k]
            r1, r2 = mod[M_R1, k], mod[M_R2, k]
            v1 = a1 * mod[M_VRC1, k] + r1 * (1 - a1) * i
            v2 = a2 * mod[M_VRC2, k] + r2 * (1 - a2) * i
            mod[M_VRC1, k] = v1
            mod[M_VRC2, k] = v2
            eff = eta * i if i > 0 else i
            mod[M_ACC_Q, k] += eff * dt
            mod[M_ACC_QRAW, k] += i * dt
            rc_w = v1 * v1 / r1 + v2 * v2 / r2
            b = topo[o_fet + k]
            i_fet, vds = bi[b], bv[b]
            r = region[k]
            r_cond = mod[M_FET_RON, k] if (r == FET_ON or r == FET_FAILED) else 0.0
            fet_w = i_fet * i_fet * r_cond
            clamping = r == FET_CLAMP_POS or r == FET_CLAMP_NEG
            cw = abs(vds * i_fet) if clamping else 0.0
            if clamping:
                any_clamp = True
            mod[M_CLAMPW, k] = cw
            r_ser = mod[M_RSER, k]
            mod[M_ACC_HEAT, k] += (i * i * r_ser + rc_w + fet_w + cw) * dt
            if abs(vds) > mod[M_VDS_PEAK, k]:
                mod[M_VDS_PEAK, k] = abs(vds)
            emf = mod[M_EMF, k]
            e_chem += emf * eff
            e_coul += emf * (i - eff)
            e_mod_joule += i * (i * r_ser)
            e_fet += fet_w
            e_rc += rc_w
        failed = 0
        if any_clamp:
            # trapezoid over the step where the clamp already conducted at its start
            e_clamp = 0.0
            for k in range(n):
                prev, cw = mod[M_CLAMPW_PREV, k], mod[M_CLAMPW, k]
                energy = (0.5 * (cw + prev) if prev > 0 else cw) * dt
                mod[M_FET_E, k] += energy
                e_clamp += energy
            sc[E_CLAMP] += e_clamp
        for k in range(n):
            mod[M_CLAMPW_PREV, k] = mod[M_CLAMPW, k]
            r = region[k]
            hit = (any_clamp and (r == FET_CLAMP_POS or r == FET_CLAMP_NEG)
                   and mod[M_FET_E, k] > mod[M_FET_EAS, k])
            if hit:
                region[k] = FET_FAILED
                failed += 1
            mod[M_FAILED_NOW, k] = 1.0 if hit else 0.0
        if failed:
            ev |= EV_FAILED
        if any_clamp:
            ev |= EV_CLAMPING
        for j in range(ni):
            ind[L_I, j] = bi[topo[o_ind + j]]
        e_res = 0.0
        for j in range(nr):
            i = bi[topo[o_res + j]]
            i2 = i * i
            res[R_ACC, j] += i2 * dt
            e_res += i2 * res[R_R, j]
        k_sup, k_load = topo[o_sup], topo[o_sup + 1]
        sc[E_SUPPLY_IN] -= bv[k_sup] * bi[k_sup] * dt
        sc[E_LOAD_OUT] += bv[k_load] * bi[k_load] * dt
        sc[E_CHEMICAL] += e_chem * dt
        sc[E_COULOMBIC] += e_coul * dt
        sc[E_JOULE] += (e_res + e_mod_joule + e_fet) * dt
        sc[E_RC] += e_rc * dt
        melt = False
        for j in range(nf):
            amps = abs(bi[topo[o_fuse + j]])
            if amps > fuse[F_PEAK, j]:
                fuse[F_PEAK, j] = amps
            melt_heat = max(fuse[F_HEAT, j] + (amps * amps - fuse[F_CONT2, j]) * dt, 0.0)
            fuse[F_HEAT, j] = melt_heat
            if melt_heat > fuse[F_MELT, j] and fuse[F_BLOWN, j] == 0.0:
                melt = True
        if melt:
            ev |= EV_MELT
        # BMS over-current and short-circuit comparators (rows 2, 3, 4)
        trip = bms_b[BB_TRIP]
        for k in range(n):
            i = mod[M_IMOD, k]
            trip[2, k] = i > bms_par[P_OCC]
            trip[3, k] = i < -bms_par[P_OCD]
            trip[4, k] = i < -bms_par[P_SC]
        if _bms_debounce(np.int64(FAST_MASK), dt, bms_f, bms_b, bms_count, bms_par):
            ev |= EV_BMS
        if sc[S_ACC_DT] >= sc[S_SLOW_STEP]:
            ev |= EV_SLOW_DUE
        # the slow path follows at once unless Python must act first (a fast BMS trip or release,
        # a fuse melt)
        if ev & (EV_BMS | EV_MELT) or not ev & (EV_SLOW_DUE | EV_PWL | EV_FAILED):
            return ev
        ev |= EV_SLOW_DONE
        with_bms = True

    # ------------------------------------------------------------------ slow path
    n_cells = sc[S_CELLS]
    span = sc[S_ACC_DT]
    soc, cap, ocv, cell_v, v_bal = cells[C_SOC], cells[C_CAP], cells[C_OCV], cells[C_V], cells[C_VBAL]
    if span > 0:
        bleed_i = bms_par[P_BAL_I]
        sd = sc[S_SELF_DISCHARGE] * span
        # Joule heat of the resistive parts into their thermal nodes: pairs (node, resistor)
        # follow the supply and load in topo, with the parts' resistances in heat_r
        heat = th[T_HEAT]
        for t in range(heat.size):
            heat[t] = 0.0
        o_heat = o_sup + 2
        n_heat = heat_r.size
        for p in range(n_heat):
            heat[topo[o_heat + p]] += heat_r[p] * res[R_ACC, topo[o_heat + n_heat + p]]
        total_bleed_w = 0.0
        for k in range(n):
            # cell voltages under the span's mean current decide balancing
            i_avg = mod[M_ACC_QRAW, k] / span
            shift = (i_avg * mod[M_RSER, k] + mod[M_VRC1, k] + mod[M_VRC2, k]) / n_cells
            for c in range(cells_n):
                v_bal[k, c] = ocv[k, c] + shift
            _balance_module(k, v_bal, i_avg > -0.5, balancing, bms_par)
            acc_q = mod[M_ACC_Q, k]
            bleed_w = 0.0
            for c in range(cells_n):
                bleed = bleed_i if balancing[k, c] else 0.0
                x = soc[k, c] + (acc_q - bleed * span) / cap[k, c]
                x -= sd
                soc[k, c] = min(max(x, sc[S_SOC_MIN]), sc[S_SOC_MAX])
                bleed_w += bleed * v_bal[k, c]
            total_bleed_w += bleed_w
            heat[mod_th[k]] += mod[M_ACC_HEAT, k] + bleed_w * span + mod[M_EXTRA_HEAT, k] * span
        sc[E_BALANCING] += total_bleed_w * span
        for t in range(heat.size):
            heat[t] /= span
        if _thermal_step(span, heat, th, th_cond, th_lu, th_meta, tsc) != 0:
            return ev | EV_SINGULAR
        sc[S_ACC_DT] = 0.0
        for k in range(n):
            mod[M_ACC_Q, k] = 0.0
            mod[M_ACC_QRAW, k] = 0.0
            mod[M_ACC_HEAT, k] = 0.0
        for j in range(res.shape[1]):
            res[R_ACC, j] = 0.0
        _refresh_chemistry(cells, mod, ocv_x, ocv_y)
    if not with_bms:
        return ev
    for k in range(n):
        shift = (mod[M_IMOD, k] * mod[M_RSER, k] + mod[M_VRC1, k] + mod[M_VRC2, k]) / n_cells
        for c in range(cells_n):
            cell_v[k, c] = ocv[k, c] + shift
        mod[M_TEMP, k] = th[T_TEMP, mod_th[k]]
    _bms_conditions(cell_v, mod[M_IMOD], mod[M_TEMP], bms_b[BB_TRIP], bms_b[BB_RELEASE], bms_par)
    if _bms_debounce(np.int64(SLOW_MASK), span, bms_f, bms_b, bms_count, bms_par):
        ev |= EV_SLOW_BMS
    return ev


# ---------------------------------------------------------------------------------- master link
@_kernel
def module_snapshot(out: np.ndarray, cells: np.ndarray, br: np.ndarray,
                    stack_idx: np.ndarray) -> None:
    """What the module boards report to the master, into ``out`` (4 x modules): stack
    voltage, current, mean cell SOC and smallest cell capacity (Ah).

    (Outputs are allocated by the caller: boxing an array allocated in a kernel costs more
    than the kernel.)"""
    n, cells_n = cells.shape[1], cells.shape[2]
    soc, cap = cells[C_SOC], cells[C_CAP]
    for k in range(n):
        b = stack_idx[k]
        out[0, k] = br[B_V, b]
        out[1, k] = br[B_I, b]
        total = 0.0
        smallest = cap[k, 0]
        for c in range(cells_n):
            total += soc[k, c]
            if cap[k, c] < smallest:
                smallest = cap[k, c]
        out[2, k] = total / cells_n
        out[3, k] = smallest / 3600.0


@_kernel
def master_seen(now: float, timeout: float, silent: np.ndarray, last_seen: np.ndarray,
                accepted: np.ndarray, refused: np.ndarray, online: np.ndarray) -> bool:
    """Mark the modules heard at ``now`` and who is online (heard within the timeout) in
    ``online``; return whether any module waits for admission."""
    waiting = False
    for k in range(silent.size):
        if not silent[k]:
            last_seen[k] = now
        online[k] = now - last_seen[k] < timeout
        if not accepted[k] and not refused[k]:
            waiting = True
    return waiting


@_kernel
def same_flags(a: np.ndarray, b: np.ndarray) -> bool:
    """Two bool arrays of one length hold the same values."""
    for k in range(a.size):
        if a[k] != b[k]:
            return False
    return True
