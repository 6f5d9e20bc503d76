"""`hil run`: the README's main command end to end on the embedded emulated station.

Exit 0 on pass, 1 on fail, 2 on a bad file (before anything is energised); outputs: console
verdicts, the run's folder (allure-results with labels, environment, categories and executor,
JUnit XML, the one-page summary), result-store rows. Pytest's own selection (-k) passes
through.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from harness.store import ResultStore

REPO = Path(__file__).resolve().parents[1]


def hil_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    store = f"sqlite:///{tmp_path / 'results.sqlite'}"
    return subprocess.run([sys.executable, "-m", "harness.cli", "run", *args, "--results", store,
                           "--reports", str(tmp_path / "reports")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_default_plan_passes_and_writes_every_output(tmp_path):
    result = hil_run(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "PASS" in result.stdout and "4 passed" in result.stdout
    store = ResultStore(f"sqlite:///{tmp_path / 'results.sqlite'}")
    run = store.runs()[0]
    assert run.verdict == "pass" and run.emulated and run.plan_name == "bank_smoke"
    run_dir = Path(run.extra["run_dir"])
    assert run_dir.parent == tmp_path / "reports" / "runs" and run.uuid[:8] in run_dir.name
    junit = ET.parse(run_dir / "junit.xml").getroot()
    assert junit.find("testsuite").get("tests") == "4"
    results = run_dir / "allure-results"
    allure = [json.loads(p.read_text()) for p in results.glob("*-result.json")]
    assert len(allure) == 4
    # labels for the report: epic/feature/story/severity, serial in the title, measured parameters
    for result_file in allure:
        labels = {label["name"]: label["value"] for label in result_file["labels"]}
        assert {"epic", "feature", "story", "severity", "tag"} <= set(labels)
        # the story names the document by its title, with the file name beside it
        assert "(004_580db881af34243e.txt)" not in labels["story"] or "Parallel Battery Storage" in labels["story"]
        assert labels["severity"] in ("blocker", "critical", "normal", "minor", "trivial")
        assert run.serials[0] in result_file["name"]
        assert any(p["name"].startswith("limit ") or "[" in p["value"] for p in result_file["parameters"])
    environment = (results / "environment.properties").read_text()
    assert f"dut.serial={run.serials[0]}" in environment and "plan=bank_smoke" in environment
    assert "instrument.supply.calibration_due=" in environment and "bench=emulated" in environment
    assert [c["name"] for c in json.loads((results / "categories.json").read_text())][0] == "Safety limit exceeded"
    assert json.loads((results / "executor.json").read_text())["buildOrder"] == run.id
    summary = next(run_dir.glob("summary-*.html")).read_text()
    assert run.serials[0] in summary and "PASS" in summary and "Calibration due" in summary
    names = {m.name for m in store.measurements(run.id)}
    assert {"bms_firmware", "ocv_spread", "installed_capacity", "imbalance"} <= names
    assert {i.role for i in store.instruments(run.id)} >= {"supply", "load", "scanner"}


def test_fault_fails_with_a_diagnosis_and_exit_1(tmp_path):
    result = hil_run(tmp_path, "--scenario", "ocv_mismatch_0v2")
    assert result.returncode == 1, result.stdout[-3000:]
    assert "FAIL" in result.stdout
    assert "unequal cable resistance" in result.stdout or "mismatch" in result.stdout
    store = ResultStore(f"sqlite:///{tmp_path / 'results.sqlite'}")
    assert store.runs()[0].verdict == "fail"


def test_pytest_selection_passes_through(tmp_path):
    """-k selects steps; a partial run is RECORDED (exit 4): it never qualifies a unit."""
    result = hil_run(tmp_path, "-k", "module_ocv")
    assert result.returncode == 4, result.stdout[-3000:]
    assert "1 passed, 3 deselected" in result.stdout


def test_pytest_options_with_values_never_become_the_plan(tmp_path):
    """pytest parses its own options: `--log-file x.log` and `-o k=v` keep their values."""
    log_file = tmp_path / "x.log"
    result = hil_run(tmp_path, "--log-file", str(log_file), "-o", "console_output_style=classic",
                     "bank_smoke", "-k", "bms_identity")
    assert result.returncode == 4, result.stdout[-3000:] + result.stderr[-3000:]
    assert "bank_smoke" in result.stdout and log_file.exists()


def test_bad_plan_exits_2_before_anything_starts(tmp_path):
    plan = tmp_path / "bad.yaml"
    plan.write_text('name: bad\nversion: "1"\napplies_to: [1s4p_diagonal]\nsteps:\n  - name: x\n    check: no_such_check\n')
    result = hil_run(tmp_path, str(plan))
    assert result.returncode == 2
    assert f"{plan}:6" in result.stderr and "no_such_check" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "results.sqlite").exists()
