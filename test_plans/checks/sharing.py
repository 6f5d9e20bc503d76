"""Current sharing between parallel branches: the imbalance of a split and the troubleshooting
row for an unequal one, chosen from the evidence the check took (open-circuit voltages, module
resistances, the BMS's alarms) and naming the branch (:func:`sharing_diagnosis`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from bankmodel.positions import modules_of_branch, natural_key
from test_plans.checks.bms_helpers import bms_alarm_note
from test_plans.checks.branches import series_groups
from test_plans.checks.diagnosis import diagnose, sharing_cause
from test_plans.checks.evidence import OPEN_FRACTION


def imbalance_pct(currents: dict[str, float]) -> float:
    """max |I - mean| / |mean| of parallel branches, in percent (nan if the mean is zero)."""
    mean = sum(currents.values()) / len(currents)
    if not mean:
        return math.nan
    return max(abs(i - mean) for i in currents.values()) / abs(mean) * 100.0


def sharing_diagnosis(currents: dict[str, float], bench: Any, ocv: Mapping[str, float] | None = None,
                      resistance: Mapping[str, float] | None = None, discharging: bool = True,
                      module_ocv: Mapping[str, float] | None = None,
                      module_resistance: Mapping[str, float] | None = None) -> str:
    """The row for an unequal split, chosen from what was measured and naming the branch
    (troubleshooting.yaml, test_plans/checks/diagnosis.py), in the group of parallel branches
    whose split is worst:

    - a branch carrying (almost) nothing is open: with a BMS alarm its module's BMS switch
      (004: one module stays offline), without one its fuse, breaker or contactor (004: branch
      fuse trips);
    - otherwise :func:`sharing_cause` on the branches' current magnitudes with the evidence the
      check took before loading -- each branch's open-circuit voltage (``ocv``, branches open)
      and its module resistance (``resistance``, AC-IR): a voltage that explains the current is
      a SOC mismatch, a resistance that explains it a weak module, neither the path (004: one
      module current much higher -> unequal cable resistance).

    Two branches (two strings) are each as far from their mean as the other: the one named is
    the string whose own modules disagree (``module_ocv``, ``module_resistance``: a module unlike
    its string-mates), compared with the other string by the same rules (:func:`_pair_cause`)."""
    groups = series_groups(list(currents))
    members = max(groups.values(), key=lambda b: _imbalance_or_zero({k: currents[k] for k in b}))
    magnitude = {b: abs(float(currents[b])) for b in members}
    mean = sum(magnitude.values()) / len(magnitude)
    alarms = bms_alarm_note(bench)
    low = min(magnitude, key=lambda b: (magnitude[b], natural_key(b)))
    if mean and magnitude[low] < OPEN_FRACTION * mean:
        evidence = f"{low} carries {magnitude[low]:.1f} A against a mean of {mean:.1f} A"
        if alarms:
            return diagnose("module_offline", low, evidence + f"; its BMS switch is open{alarms}")
        return diagnose("fuse_trips", low, evidence + "; no BMS alarm: its fuse, breaker or contactor is open")
    ocv_in = {b: v for b, v in (ocv or {}).items() if b in magnitude} or None
    r_in = {b: v for b, v in (resistance or {}).items() if b in magnitude} or None
    odd = _odd_string(list(magnitude), module_ocv or {}, module_resistance or {}) if len(magnitude) == 2 else None
    if odd is not None:
        row_id, subject, evidence = _pair_cause(magnitude, odd, ocv_in, discharging)
    else:
        row_id, subject, evidence = sharing_cause(magnitude, ocv=ocv_in, resistance=r_in, discharging=discharging)
    if ocv is None:
        evidence += " (open-circuit voltages not measured)"
    return diagnose(row_id, subject or None, evidence) + alarms


def _odd_string(branches: list[str], module_ocv: Mapping[str, float], module_r: Mapping[str, float],
                ocv_tolerance_v: float = 0.02, r_tolerance: float = 0.15) -> tuple[str, str, str] | None:
    """Of two strings, the one with a module unlike its string-mates -- where the other string's
    modules agree: ``(string, "ocv" | "resistance", what sets it apart)``; else None. A module's
    open-circuit voltage more than ``ocv_tolerance_v`` off its string-mates' mean, or its
    resistance more than ``r_tolerance`` (relative) off theirs."""
    def worst(branch: str, values: Mapping[str, float], relative: bool) -> tuple[float, str, float, float]:
        members = [m for m in modules_of_branch(branch, list(values)) if m in values]
        best = (0.0, "", math.nan, math.nan)
        for m in members if len(members) > 1 else []:
            mates = sum(values[o] for o in members if o != m) / (len(members) - 1)
            off = abs(values[m] / mates - 1.0) if relative and mates else abs(values[m] - mates)
            if off > best[0]:
                best = (off, m, values[m], mates)
        return best

    for kind, values, tolerance, relative in (("ocv", module_ocv, ocv_tolerance_v, False),
                                              ("resistance", module_r, r_tolerance, True)):
        found = {b: worst(b, values, relative) for b in branches}
        odd = max(branches, key=lambda b: (found[b][0], natural_key(b)))
        if found[odd][0] > tolerance and all(found[b][0] <= tolerance for b in branches if b != odd):
            _, module, own, mates = found[odd]
            text = (f"its module {module} at {own:.3f} V against {mates:.3f} V for its string-mates" if kind == "ocv"
                    else f"its module {module} at {own * 1e3:.2f} mOhm against {mates * 1e3:.2f} mOhm for its "
                         "string-mates")
            return odd, kind, text
    return None


def _pair_cause(magnitude: Mapping[str, float], odd: tuple[str, str, str], ocv: Mapping[str, float] | None,
                discharging: bool) -> tuple[str, str, str]:
    """:func:`sharing_cause`'s rules for two strings, naming the odd one (chosen by its modules,
    :func:`_odd_string`) against the other: its open-circuit voltage differing in the direction
    that explains its current -> soc_mismatch; a module of higher resistance where it carries
    less -> weak_module; else the path -> cable_resistance."""
    import inspect

    name, kind, why = odd
    ocv_tol = inspect.signature(sharing_cause).parameters["ocv_tolerance_v"].default
    other = next(b for b in magnitude if b != name)
    high = magnitude[name] > magnitude[other]
    share = f"{name} carries {magnitude[name]:.1f} A against {magnitude[other]:.1f} A in {other}"
    if kind == "ocv" and ocv and name in ocv and other in ocv:
        delta = ocv[name] - ocv[other]
        if abs(delta) > ocv_tol and (delta > 0) == (high == discharging):
            return "soc_mismatch", name, f"{share}; its open-circuit voltage is {delta * 1000:+.0f} mV from {other}'s, {why}"
    if kind == "resistance" and not high:
        return "weak_module", name, f"{share}; {why}"
    return "cable_resistance", name, f"{share} ({'the easiest' if high else 'the hardest'} path)"


def _imbalance_or_zero(currents: dict[str, float]) -> float:
    value = imbalance_pct(currents) if len(currents) > 1 else 0.0
    return 0.0 if math.isnan(value) else value
