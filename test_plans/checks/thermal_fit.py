"""The rise of a joint under a constant current, from its record: steady or not, a first-order
fit ``T(t) = T_inf - (T_inf - T0) exp(-t / tau)``, the final rise it gives, and that rise scaled
to another current (heat is I² R, with the conductor's resistance following its temperature).
Arithmetic only: no bench.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def fit_first_order(t: list[float], y: list[float]) -> tuple[float, float, float, float]:
    """Least-squares fit of ``y(t) = y_inf - (y_inf - y0) exp(-t / tau)``: ``(tau, y_inf, y0,
    rms residual)``. For a given tau the model is linear in y_inf and y0 (solved exactly); tau
    is found by golden-section search on log tau between a tenth of the first interval and a
    hundred times the record."""
    if len(t) < 3 or t[-1] <= t[0]:
        return math.nan, math.nan, math.nan, math.nan
    t0 = t[0]
    ts = [x - t0 for x in t]

    def solve(tau: float) -> tuple[float, float, float]:
        e = [math.exp(-x / tau) for x in ts]
        s11 = sum((1 - x) ** 2 for x in e)
        s12 = sum((1 - x) * x for x in e)
        s22 = sum(x * x for x in e)
        r1 = sum((1 - x) * v for x, v in zip(e, y))
        r2 = sum(x * v for x, v in zip(e, y))
        det = s11 * s22 - s12 * s12
        if abs(det) < 1e-300:
            return math.inf, math.nan, math.nan
        a = (r1 * s22 - r2 * s12) / det
        b = (s11 * r2 - s12 * r1) / det
        return sum((a * (1 - x) + b * x - v) ** 2 for x, v in zip(e, y)), a, b

    lo = math.log(max(ts[1], 1e-6) / 10.0)
    hi = math.log(ts[-1] * 100.0)
    g = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = hi - g * (hi - lo), lo + g * (hi - lo)
    fc, fd = solve(math.exp(c))[0], solve(math.exp(d))[0]
    for _ in range(80):
        if fc < fd:
            hi, d, fd = d, c, fc
            c = hi - g * (hi - lo)
            fc = solve(math.exp(c))[0]
        else:
            lo, c, fc = c, d, fd
            d = lo + g * (hi - lo)
            fd = solve(math.exp(d))[0]
    tau = math.exp((lo + hi) / 2.0)
    sse, y_inf, y0 = solve(tau)
    return tau, y_inf, y0, math.sqrt(sse / len(ts))


@dataclass
class RiseEstimate:
    """A joint's final rise at the current applied: ``steady`` (the run reached it), ``fitted``
    (extrapolated from the time constant the run covered), or ``end of run`` (the time constant
    is longer than the run could cover: the rise the run reached)."""

    point: str
    measured: float          # at the end of the run
    final: float
    method: str
    tau_s: float = math.nan
    rms: float = math.nan


def is_steady(t: list[float], y: list[float], window_s: float, rate: float) -> bool:
    """The rise changed by less than ``rate`` over the last ``window_s`` of the record."""
    if not t or t[-1] - t[0] < window_s - 1e-9:
        return False
    k = max(i for i, x in enumerate(t) if x <= t[-1] - window_s + 1e-9)
    return abs(y[-1] - y[k]) < rate


def estimate_rise(point: str, t: list[float], y: list[float], window_s: float, rate: float,
                  min_tau_covered: float) -> RiseEstimate:
    if is_steady(t, y, window_s, rate):
        return RiseEstimate(point, y[-1], y[-1], "steady")
    tau, y_inf, _, rms = fit_first_order(t, y)
    if not math.isnan(tau) and t[-1] - t[0] >= min_tau_covered * tau:
        return RiseEstimate(point, y[-1], y_inf, "fitted", tau, rms)
    return RiseEstimate(point, y[-1], y[-1], "end of run", tau, rms)


def scale_rise(rise: float, measured_a: float, rated_a: float, start_c: float, tempco: float) -> float:
    """The steady rise at ``rated_a`` from the one at ``measured_a``: heat is I² R, cooling
    linear in the rise. With ``tempco`` (per K, referred to 20 degC: copper 0.00393) the
    conductor's resistance follows its temperature, ``R = R20 (1 + a (T - 20))``:
    ``rise = k I² (1 + a (Ta + rise - 20))``, so ``k`` from the measured point and
    ``rise_rated = k Ir² (1 + a (Ta - 20)) / (1 - k Ir² a)`` (inf: no steady state). Without it,
    plain I² scaling."""
    if measured_a <= 0 or math.isnan(rise):
        return math.nan
    if not tempco:
        return rise * (rated_a / measured_a) ** 2
    k = rise / (measured_a ** 2 * (1.0 + tempco * (start_c + rise - 20.0)))
    den = 1.0 - k * rated_a ** 2 * tempco
    return math.inf if den <= 0 else k * rated_a ** 2 * (1.0 + tempco * (start_c - 20.0)) / den
