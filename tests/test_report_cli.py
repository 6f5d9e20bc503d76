"""``hil report`` without a browser: the summary page from the store, the Allure configuration,
the run's labels, and the messages when Node.js or a run is missing.

The rendered report itself is opened in Chromium in tests/test_report_render.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from harness.reporting.environment import CATEGORIES, RunEnvironment, write_categories, write_environment
from harness.reporting.render import allure_config
from harness.reporting.summary import render_summary
from harness.store import ResultStore

REPO = Path(__file__).resolve().parents[1]
DIAG = "unequal cable resistance (004) -- check cable length"


def failed_run(store: ResultStore, run_dir: Path) -> int:
    steps = {"current_sharing": {"description": "Current sharing at 200 A", "source": ["004_x.txt"],
                                 "check": "current_sharing", "severity": "normal"}}
    run_id = store.start_run(station="bench-7", operator="anna", plan_name="bank_smoke", plan_version="1.0",
                             emulated=False, extra={"run_dir": str(run_dir), "steps": steps})
    store.add_dut(run_id, "BH12-000042", "1s4p_diagonal", [], firmware="2.1.0")
    store.add_instrument(run_id, "load", "itech_it8500", "TCPIP::1", "ITECH,IT8516C+,1,1.0", date(2020, 1, 1))
    step = store.start_step(run_id, "current_sharing", "current_sharing", {})
    store.record_measurement(step, "imbalance", 39.4, "%", {"kind": "le", "high": 10.0}, "fail", DIAG)
    store.record_measurement(step, "bank_current", -200.0, "A", {"kind": "record"}, "pass")
    store.finish_step(step, "fail", 0.7, "imbalance failed")
    store.finish_run(run_id, "fail")
    return run_id


def test_summary_page_names_requirement_verdict_limits_diagnosis_and_overdue_calibration(tmp_path):
    with ResultStore(f"sqlite:///{tmp_path / 'r.sqlite'}") as store:
        run_id = failed_run(store, tmp_path)
        page = render_summary(store, run_id, tmp_path)
    for text in ("BH12-000042", "Current sharing at 200 A", "004_x.txt", "FAIL", "39.4 %", "&lt;= 10 %",
                 DIAG.replace("'", "&#x27;"), "bench-7", "anna", "2.1.0", "2020-01-01", "OVERDUE"):
        assert text in page, text
    assert "<script" not in page  # one page, nothing executed


def test_environment_and_categories_files(tmp_path):
    env = RunEnvironment("bench-7", False, "bank_smoke", "1.0", "abc", "0.1", "BH12-1", "LFP12.8-100",
                         "1s4p (1S4P)", ["2.1.0"], "anna", "uuid-1",
                         instruments=[{"role": "load", "driver": "itech_it8500", "identity": "ITECH,IT8516C+",
                                       "calibration_due": "2027-01-31"}])
    text = write_environment(tmp_path, env).read_text()
    assert "bench=hardware" in text and "instrument.load.calibration_due=2027-01-31" in text
    categories = json.loads(write_categories(tmp_path).read_text())
    assert [c["name"] for c in categories] == [c["name"] for c in CATEGORIES]
    assert categories[0]["name"] == "Safety limit exceeded"


def test_allure_config_is_single_file_with_history_and_grouping(tmp_path):
    with ResultStore(f"sqlite:///{tmp_path / 'r.sqlite'}") as store:
        run = store.run(failed_run(store, tmp_path))
    config = allure_config(run, tmp_path / "report", tmp_path / "history.jsonl", True)
    options = config["plugins"]["awesome"]["options"]
    assert options["singleFile"] is True and options["groupBy"] == ["epic", "feature", "story"]
    assert config["historyPath"].endswith("history.jsonl") and "BH12-000042" in config["name"]


def hil_report(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", "report", *args,
                           "--results", f"sqlite:///{tmp_path / 'r.sqlite'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120, env=env)


def test_without_node_a_clear_message_and_the_summary_still_written(tmp_path):
    with ResultStore(f"sqlite:///{tmp_path / 'r.sqlite'}") as store:
        failed_run(store, tmp_path)
    (tmp_path / "allure-results").mkdir()
    env = {**os.environ, "PATH": str(tmp_path / "no-node-here")}
    result = hil_report(tmp_path, env=env)
    assert result.returncode == 1
    assert "Node.js is needed" in result.stderr and "npm ci" in result.stderr
    assert "Traceback" not in result.stderr
    summary = Path(result.stdout.split("summary:", 1)[1].strip())
    assert summary.is_file() and "BH12-000042" in summary.read_text()


@pytest.mark.parametrize("name", ["nosuch", "last~5", "999"])
def test_unknown_run_exits_2_with_one_line(tmp_path, name):
    with ResultStore(f"sqlite:///{tmp_path / 'r.sqlite'}") as store:
        failed_run(store, tmp_path)
    result = hil_report(tmp_path, name)
    assert result.returncode == 2 and name in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
