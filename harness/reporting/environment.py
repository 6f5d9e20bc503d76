"""The files Allure reads beside the results: who tested what, where, with what, and how
failures are sorted.

- ``environment.properties``: station, each instrument with identity and calibration due date,
  DUT serial/model/firmware, plan name/version/hash, harness version, emulated or hardware --
  what an auditor asks first;
- ``categories.json``: failures sorted into *safety limit exceeded*, *DUT communication*,
  *DUT out of specification*, *instrument fault* and *harness error*, by the failure text (safety
  checks lead their message with "SAFETY LIMIT EXCEEDED", see allure_labels.failure_message);
- ``executor.json``: the station as the "executor", the run as the build, so runs line up in
  history.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ANY = r"[\s\S]*"  # the regexes must work in Allure 2 (Java, whole match) and 3 (JavaScript)

CATEGORIES: list[dict[str, Any]] = [
    {"name": "Safety limit exceeded", "matchedStatuses": ["failed", "broken"],
     "messageRegex": f"{ANY}SAFETY LIMIT EXCEEDED{ANY}"},
    {"name": "DUT communication", "matchedStatuses": ["failed", "broken"],
     "messageRegex": f"{ANY}(BMS stopped reporting|keep-alive|heartbeat|offline|silent|no CAN|"
                     f"SunSpec|Modbus|CAN frame|communication){ANY}"},
    {"name": "Instrument fault", "matchedStatuses": ["broken"],
     "messageRegex": f"{ANY}(InstrumentError|VisaIOError|SYST:ERR|StepTimeout|instrument|[Tt]imed? ?out){ANY}"},
    {"name": "DUT out of specification", "matchedStatuses": ["failed"]},
    {"name": "Harness error", "matchedStatuses": ["broken"]},
]


@dataclass
class RunEnvironment:
    """What the report's environment panel shows, gathered once the bench is assembled."""

    station: str
    emulated: bool
    plan_name: str
    plan_version: str
    plan_hash: str
    harness_version: str
    dut_serial: str
    dut_model: str
    dut_bank: str
    firmware: list[str]
    operator: str
    run_uuid: str
    scenario: str | None = None
    instruments: list[dict[str, Any]] = field(default_factory=list)  # role, driver, identity, calibration_due

    def properties(self) -> dict[str, str]:
        props = {
            "station": self.station, "bench": "emulated" if self.emulated else "hardware",
            "dut.serial": self.dut_serial, "dut.model": self.dut_model, "dut.bank": self.dut_bank,
            "dut.firmware": ", ".join(self.firmware), "plan": self.plan_name,
            "plan.version": self.plan_version, "plan.sha256": self.plan_hash,
            "harness.version": self.harness_version, "operator": self.operator, "run": self.run_uuid,
        }
        if self.scenario:
            props["scenario"] = self.scenario
        for inst in self.instruments:
            role = inst["role"]
            props[f"instrument.{role}"] = f"{inst.get('identity') or '?'} ({inst.get('driver') or '?'})"
            props[f"instrument.{role}.calibration_due"] = str(inst.get("calibration_due") or "not recorded")
        return props


def _escape(text: str) -> str:
    """Java properties escaping: backslash, line breaks, and the separators in keys."""
    return (text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r"))


def write_environment(results_dir: Path, env: RunEnvironment) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / "environment.properties"
    lines = [f"{_escape(k).replace('=', '_').replace(':', '_').replace(' ', '_')}={_escape(v)}"
             for k, v in env.properties().items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_categories(results_dir: Path) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / "categories.json"
    path.write_text(json.dumps(CATEGORIES, indent=2), encoding="utf-8")
    return path


def write_executor(results_dir: Path, env: RunEnvironment, run_id: int, run_dir: Path) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / "executor.json"
    executor = {
        "name": env.station, "type": "bankhil",
        "buildName": f"{env.plan_name} {env.plan_version} on {env.dut_serial} (run {run_id})",
        "buildOrder": run_id, "reportName": f"{env.plan_name} — {env.dut_serial}",
        "reportUrl": (run_dir / "report" / "index.html").resolve().as_uri(),
    }
    path.write_text(json.dumps(executor, indent=2), encoding="utf-8")
    return path
