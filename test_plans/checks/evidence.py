"""Evidence for a diagnosis: what sets one module or branch apart from its peers -- its voltage,
and its SOC and SoH as the BMS reports them -- turned into a row of the troubleshooting tables
(test_plans/checks/troubleshooting.yaml: 004 first, then 000, 001, 003) naming it
(:func:`test_plans.checks.diagnosis.diagnose`).

The thresholds below only choose between rows -- which module stands out, and in what -- they
never judge: every limit comes from the plan.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from bankmodel.positions import modules_of_branch, natural_key
from test_plans.checks.bms_helpers import ModuleReport, silent_modules
from test_plans.checks.branches import finite, has_parallel_peer, peer_mean, standout
from test_plans.checks.diagnosis import diagnose


SOH_EVIDENCE_PCT = 3.0    # SoH this many points below its peers' mean: an older (weak) module
SOC_EVIDENCE_PCT = 2.0    # SOC this many points from its peers' mean: a SOC mismatch
OPEN_FRACTION = 0.05      # a branch carrying less than this share of its peers' mean is open
DEAD_VOLTS = 0.5          # a module or bank reading below this (V) reads nothing: open, not low


def names(items: list[str]) -> str:
    """Module, branch or string names for a diagnosis, in bank order."""
    return ", ".join(sorted(items, key=natural_key))


def module_health(module: str, reports: dict[str, "ModuleReport"] | None,
                  soc_evidence: bool = True) -> tuple[str | None, str]:
    """What the BMS says sets a module apart: ``("weak_module", ...)`` when its SoH is lower
    than its peers' (004: older module), else ``("soc_mismatch", ...)`` when its SOC differs
    (004: voltage or SOC mismatch), else ``(None, ...)``; with the figures as evidence."""
    if not reports or module not in reports:
        return None, ""
    soh = {m: r.soh_pct for m, r in reports.items()}
    soc = {m: r.soc_pct for m, r in reports.items()}
    row, parts = None, []
    own, mean = soh.get(module), peer_mean(soh, module)
    if finite(own) and not math.isnan(mean):
        parts.append(f"SoH {own:.1f} % against {mean:.1f} % for its peers")
        if mean - float(own) > SOH_EVIDENCE_PCT:  # type: ignore[arg-type]
            row = "weak_module"
    own, mean = soc.get(module), peer_mean(soc, module)
    if finite(own) and not math.isnan(mean):
        if soc_evidence:
            parts.append(f"SOC {own:.1f} % against {mean:.1f} %")
        if row is None and abs(float(own) - mean) > SOC_EVIDENCE_PCT:  # type: ignore[arg-type]
            row = "soc_mismatch"
    return row, "; ".join(parts)


def branch_health(branch: str, reports: dict[str, "ModuleReport"] | None) -> tuple[str | None, str, str]:
    """:func:`module_health` of the branch's modules: (row, the module it points at, evidence)."""
    modules = modules_of_branch(branch, list(reports)) if reports else []
    first = ("", "")
    for module in modules:
        row, evidence = module_health(module, reports)
        if row is not None:
            return row, module, evidence
        first = first if first[0] else (module, evidence)
    return None, first[0] or branch, first[1]


def voltage_diagnosis(module: str, volts: float, all_volts: dict[str, float],
                       reports: dict[str, "ModuleReport"] | None, held: tuple[str, ...] = ()) -> str:
    """A module's terminal voltage outside its window: negative is a reversed lead; a module the
    master has not admitted (``held``: its BMS keeps its switch open, so its terminals read what
    leaks through) is held for its SOC difference when its SOC differs, else a module not
    accepted -- or, silent, one offline; (almost) nothing is an open lead or an open BMS switch;
    anything else is a voltage difference (a SOC mismatch when the BMS's SOC says so)."""
    mean = peer_mean(all_volts, module)
    evidence = f"{volts:.3f} V against {mean:.3f} V for its peers" if not math.isnan(mean) else f"{volts:.3f} V"
    if volts < -DEAD_VOLTS:
        return diagnose("reversed_polarity", module, evidence + " (negative)")
    if module in held:
        if module in silent_modules(reports):
            return diagnose("module_offline", module, evidence + "; the master has no data from it (its BMS "
                            "switch stays open)")
        row, health = module_health(module, reports)
        if row == "soc_mismatch":  # held pending because of its voltage difference (004)
            return diagnose("soc_mismatch", module, f"{evidence}; {health}; the master holds it pending "
                            "(its BMS switch stays open)")
        return diagnose("reduced_capacity", module, evidence + (f"; {health}" if health else "")
                        + "; the master has not admitted it with its SOC alike (its BMS switch stays open)")
    if abs(volts) <= DEAD_VOLTS:
        return diagnose("module_offline", module, evidence + ": its terminals read nothing (BMS switch or lead open)")
    row, health = module_health(module, reports)
    if row == "soc_mismatch":
        return diagnose("soc_mismatch", module, f"{evidence}; {health}")
    return diagnose("startup_alarm", module, evidence + (f"; {health}" if health else ""))


def spread_diagnosis(values: dict[str, float], reports: dict[str, "ModuleReport"] | None, unit: str) -> str:
    """The module farthest from its peers in open-circuit voltage or SOC: a SOC mismatch (004:
    modules exchange current at rest), or its older (weak) module when its SoH says so."""
    out = standout(values)
    if out is None:
        return diagnose("soc_mismatch", None, "fewer than two modules read")
    module, value, mean = out
    fmt = (lambda x: f"{x:.3f} V") if unit == "V" else (lambda x: f"{x:.1f} %")
    evidence = f"{fmt(value)} against {fmt(mean)} for its peers"
    row, health = module_health(module, reports, soc_evidence=unit == "V")
    if health:
        evidence += f"; {health}"
    return diagnose("weak_module" if row == "weak_module" and unit != "V" else "soc_mismatch", module, evidence)


def bms_module_evidence(module: str, reports: Any, soc: bool = True) -> str:
    """What the BMS says of one module against its peers (SOC, SoH), for a diagnosis's evidence."""
    if not reports or module not in reports:
        return ""
    parts = []
    for label, attr, wanted in (("SOC", "soc_pct", soc), ("SoH", "soh_pct", True)):
        own = getattr(reports[module], attr)
        peers = [getattr(r, attr) for m, r in reports.items() if m != module and getattr(r, attr) is not None]
        if not wanted or own is None or (isinstance(own, float) and math.isnan(own)):
            continue
        if peers:
            mean = sum(peers) / len(peers)
            if label == "SoH" and abs(own - mean) < 0.5:
                continue
            parts.append(f"BMS {label} {own:.1f} % against {mean:.1f} %")
        else:
            parts.append(f"BMS {label} {own:.1f} %")
    return "; ".join(parts)


def ocv_diagnosis(module: str, volts: Mapping[str, float], reports: Any = None) -> str:
    """One module's open-circuit voltage against the others': negative is a reversed lead,
    (almost) nothing an open BMS switch or lead (004: one module stays offline); otherwise a
    charge difference -- between parallel peers 004's "modules exchange current at rest"
    (voltage or SOC mismatch), in a string 001's series mismatch. The BMS's SOC/SoH of the
    module are the evidence."""
    value = float(volts[module])
    peers = [float(v) for m, v in volts.items() if m != module]
    evidence = f"open-circuit {value:.3f} V"
    if peers:
        mean = sum(peers) / len(peers)
        evidence += f" against {mean:.3f} V for the others ({(value - mean) * 1e3:+.0f} mV)"
    health = bms_module_evidence(module, reports)
    if health:
        evidence += f"; {health}"
    if value < -DEAD_VOLTS:
        return diagnose("reversed_polarity", module, evidence + " (negative)")
    if abs(value) <= DEAD_VOLTS:
        return diagnose("module_offline", module, evidence + ": its terminals read nothing (BMS switch or lead open)")
    if len(volts) > 1 and not has_parallel_peer(module, list(volts)):
        return diagnose("series_mismatch", module, evidence)
    return diagnose("soc_mismatch", module, evidence)
