"""Diagnoses chosen from evidence, worded from the documents' troubleshooting tables.

The rows live in ``test_plans/checks/troubleshooting.yaml`` (data, not code). A check calls
:func:`diagnose` with the row it chose *from what it measured* and the module or branch it
points at, so the operator reads "s1p3: older (weak) module ... (004: one module discharges
faster) -- measured: AC-IR 4.9 mOhm vs 3.0 mOhm -- check module health data ...".

:func:`sharing_cause` is the choice for a branch that carries more or less than its share
(current sharing, SOC drift, circulating current): an open-circuit voltage (or SOC) that
differs in the direction of the current points at a mismatch; a resistance that differs
points at the module; otherwise the path (cable, lug) is what differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping

import yaml

TABLE = Path(__file__).resolve().with_name("troubleshooting.yaml")


@dataclass(frozen=True)
class Row:
    id: str
    symptom: str
    cause: str
    first_check: str
    source: str

    @property
    def document(self) -> str:
        return self.source[:3]


@lru_cache(maxsize=1)
def rows() -> dict[str, Row]:
    """The troubleshooting rows by id (loaded once, safely)."""
    data = yaml.safe_load(TABLE.read_text(encoding="utf-8"))
    return {entry["id"]: Row(**entry) for entry in data["rows"]}


def row(row_id: str) -> Row:
    try:
        return rows()[row_id]
    except KeyError:
        raise KeyError(f"no troubleshooting row '{row_id}' in {TABLE.name}: "
                       + ", ".join(rows())) from None


def diagnose(row_id: str, subject: str | None = None, evidence: str = "") -> str:
    """``"<subject>: <cause> (<doc>: <symptom>) -- measured: <evidence> -- check <first check>"``."""
    r = row(row_id)
    text = f"{r.cause} ({r.document}: {r.symptom})"
    if subject:
        text = f"{subject}: {text}"
    if evidence:
        text += f" -- measured: {evidence}"
    return text + f" -- check {r.first_check}"


@dataclass(frozen=True)
class Outlier:
    """The branch (or module) farthest from the mean, and which way."""

    name: str
    value: float
    mean: float

    @property
    def high(self) -> bool:
        return self.value > self.mean


def outlier(values: Mapping[str, float]) -> Outlier | None:
    if not values:
        return None
    mean = sum(values.values()) / len(values)
    name = max(values, key=lambda k: abs(values[k] - mean))
    return Outlier(name, float(values[name]), mean)


def sharing_cause(currents: Mapping[str, float], *, ocv: Mapping[str, float] | None = None,
                  resistance: Mapping[str, float] | None = None, discharging: bool = True,
                  ocv_tolerance_v: float = 0.02, resistance_tolerance: float = 0.15,
                  symptom_row: str = "cable_resistance") -> tuple[str, str, str]:
    """Choose the row for a branch that carries more or less than its share.

    ``currents``: branch -> magnitude of its current (A). ``ocv``: branch -> its open-circuit
    voltage measured with the branches open (V). ``resistance``: branch -> its module's AC-IR
    (ohm). Returns ``(row id, subject, evidence)`` for :func:`diagnose`.

    - the outlier's open-circuit voltage differs from its peers' by more than
      ``ocv_tolerance_v`` in the direction that explains its current (lower OCV -> less
      current on discharge, more on charge): ``soc_mismatch``;
    - its module's resistance differs by more than ``resistance_tolerance`` (relative) in the
      direction that explains it (higher resistance -> less current): ``weak_module``;
    - otherwise the path differs: ``symptom_row`` (cable resistance for a high branch; a
      low branch is the same row -- the *other* branches have the easier path).
    """
    out = outlier(currents)
    if out is None:
        return symptom_row, "", ""
    share = f"{out.name} carries {out.value:.1f} A against a mean of {out.mean:.1f} A"
    if ocv and out.name in ocv and len(ocv) > 1:
        peers = [v for k, v in ocv.items() if k != out.name]
        delta = ocv[out.name] - sum(peers) / len(peers)
        explains = (delta > 0) == (out.high == discharging)
        if abs(delta) > ocv_tolerance_v and explains:
            return "soc_mismatch", out.name, f"{share}; its open-circuit voltage is {delta * 1000:+.0f} mV from its peers"
    if resistance and out.name in resistance and len(resistance) > 1:
        peers = [v for k, v in resistance.items() if k != out.name]
        mean_r = sum(peers) / len(peers)
        ratio = resistance[out.name] / mean_r if mean_r > 0 else 1.0
        if abs(ratio - 1.0) > resistance_tolerance and (ratio > 1.0) != out.high:
            return "weak_module", out.name, (f"{share}; its module resistance is "
                                            f"{resistance[out.name] * 1000:.2f} mOhm against "
                                            f"{mean_r * 1000:.2f} mOhm")
    side = "the easiest path" if out.high else "the hardest path"
    return symptom_row, out.name, f"{share} ({side})"


__all__ = ["Outlier", "Row", "diagnose", "outlier", "row", "rows", "sharing_cause"]
