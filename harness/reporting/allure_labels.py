"""Allure labels for a plan step, so a report reads by requirement rather than by pytest id.

- epic: the plan's ``epic`` if it has one (commissioning, end-of-line), else the check's family
  (series string, parallel bank, BMS communication) from test_plans/checks/catalogue.py;
- feature: the check; story: the requirement -- the step's description and its source documents;
- severity: *blocker* for safety checks, else the step's own severity;
- tags: DUT model, topology, firmware; title: step and DUT serial, so a unit's record is found by
  its serial years later;
- parameters: each measured value with its limits, excluded from Allure's history id so the same
  step of the next run is recognised as the same test and trends show.

Everything here is a no-op without allure-pytest (``pytest -p no:allure_pytest``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from harness.check_registry import check_info as info

# plans use Allure's scale itself (blocker, critical, normal, minor, trivial): one word in both
SEVERITY = {name: name for name in ("blocker", "critical", "normal", "minor", "trivial")}
SOURCES = Path(__file__).resolve().parents[2] / "test_plans" / "checks" / "sources.yaml"


@lru_cache(maxsize=1)
def source_titles() -> dict[str, str]:
    """Seed file name -> the document's title (test_plans/checks/sources.yaml)."""
    try:
        data = yaml.safe_load(SOURCES.read_text(encoding="utf-8")) or {}
    except OSError:
        return {}
    return {str(k): str(v) for k, v in data.items()}


def source_title(name: str) -> str:
    """``"Parallel Battery Storage: Safe Wiring & BMS Sync (004_580db881af34243e.txt)"``."""
    title = source_titles().get(name)
    return f"{title} ({name})" if title else name
SAFETY_PREFIX = "SAFETY LIMIT EXCEEDED"


def _allure() -> Any:
    try:
        import allure
    except ImportError:  # allure-pytest not installed: labels are optional
        return None
    return allure


def severity(step: Any) -> str:
    return "blocker" if info(step.check).safety else SEVERITY.get(step.severity, "normal")


def story(step: Any) -> str:
    """The requirement as a reader of the report names it: what, and from which document."""
    what = step.description or step.name.replace("_", " ")
    return f"{what} — {'; '.join(source_title(s) for s in step.source)}" if step.source else what


def dut_tags(dut_spec: Any) -> list[str]:
    """DUT model, bank topology and every firmware on it (a mixed bank shows both)."""
    dut = dut_spec.dut
    firmware = {dut_spec.firmware.version} | {str(e.firmware) for e in dut.modules.values() if e.firmware}
    return ([f"model:{dut_spec.module_type.model}", f"bank:{dut.series}S{dut.parallel}P"]
            + [f"firmware:{fw}" for fw in sorted(firmware)])


def label_step(step: Any, plan: Any, dut_spec: Any, serial: str) -> None:
    """Label the running test (one plan step) for the report."""
    allure = _allure()
    if allure is None:
        return
    check = info(step.check)
    allure.dynamic.epic(plan.epic or check.epic)
    allure.dynamic.feature(check.feature)
    allure.dynamic.story(story(step))
    allure.dynamic.severity(severity(step))
    allure.dynamic.title(f"{step.name} — {serial}")
    allure.dynamic.tag(*dut_tags(dut_spec), *(["safety"] if check.safety else []))
    allure.dynamic.label("plan", f"{plan.name} {plan.version}")
    allure.dynamic.label("dut_serial", serial)
    allure.dynamic.description(_description(step, plan, serial))
    allure.dynamic.parameter("plan_step", step.name)  # the step's name, not its whole record
    # the report sits in <run>/report/: the signed page is one folder up
    from harness.reporting.artifacts import safe_name
    allure.dynamic.link(f"../summary-{safe_name(serial)}.html", name="qualification summary (this run)")
    for name, limit in step.limits.items():
        allure.dynamic.parameter(f"limit {name}", limit.to_limits().describe(), excluded=True)


def _description(step: Any, plan: Any, serial: str) -> str:
    lines = [f"**{step.description or step.name}**", "",
             f"- check: `{step.check}`; plan `{plan.name}` {plan.version}; DUT serial `{serial}`",
             f"- source: {'; '.join(source_title(s) for s in step.source) or '(none given)'}"]
    if step.gate:
        lines.append("- gate: nothing after this step is energised if it fails")
    return "\n".join(lines)


def measurement_parameter(name: str, shown: str) -> None:
    """A measured value with its limits and verdict as an Allure parameter (not in the history id)."""
    allure = _allure()
    if allure is not None:
        allure.dynamic.parameter(name, shown, excluded=True)


def failure_message(check_name: str, lines: list[str]) -> str:
    """The step's failure text; safety checks lead with the marker the categories match on."""
    text = "; ".join(lines)
    return f"{SAFETY_PREFIX}: {text}" if info(check_name).safety else text
