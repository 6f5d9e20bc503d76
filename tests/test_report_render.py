"""The qualification report as a person sees it: rendered by ``hil report`` (Allure 3) and opened
in headless Chromium.

An emulated qualification with a failure in it (bank_smoke on a bank with a 0.2 V OCV mismatch:
current sharing fails) is run with ``hil run``, rendered with ``hil report`` into one HTML file,
and opened in Chromium through chromedriver. The page must show every step of the plan (titled
with the DUT serial), the failed step's diagnosis, and its plot as a loaded picture; the report
sorts the failure into a category. Screenshots are kept in reports/ (report-overview.png,
report-failure.png) as CI artifacts; the README's picture is one of them.

Tools: Node.js with ``npm ci`` (the pinned ``allure`` package), Debian's ``chromium`` and
``chromium-driver``, and selenium. Without them the test is skipped -- unless
BANKHIL_REQUIRE_REPORT_TOOLS=1 (CI sets it), when a missing tool fails it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from headless_browser import headless_chrome, missing_tools
from required_tools import required

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "reports"
STEPS = ("bms_identity", "module_ocv", "configuration", "current_sharing")
FAILED_STEP, DIAGNOSIS = "current_sharing", "unequal cable resistance"


def _missing_tools() -> list[str]:
    """What drawing (Node.js, the allure package) and opening (tests/headless_browser.py) need."""
    missing = []
    if shutil.which("node") is None:
        missing.append("Node.js")
    if not (REPO / "node_modules" / "allure" / "cli.js").is_file():
        missing.append("the allure npm package (npm ci)")
    return missing + missing_tools()


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    missing = _missing_tools()
    if missing:
        message = f"report tools missing: {', '.join(missing)}"
        if required("BANKHIL_REQUIRE_REPORT_TOOLS"):
            pytest.fail(message)
        pytest.skip(message)
    tmp = tmp_path_factory.mktemp("report")
    store = f"sqlite:///{tmp / 'results.sqlite'}"
    base = [sys.executable, "-m", "harness.cli"]
    run = subprocess.run([*base, "run", "bank_smoke", "--dut", "1s4p_same_side", "--results", store,
                          "--reports", str(tmp / "reports")], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    report = subprocess.run([*base, "report", "--results", store], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert report.returncode == 0, report.stdout + report.stderr
    paths = dict(re.findall(r"^(report|summary):\s+(\S+)$", report.stdout, re.M))
    return {"report": Path(paths["report"]), "summary": Path(paths["summary"]), "tmp": tmp}


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    with headless_chrome("1400,1000") as driver:
        yield driver


def _wait_for_text(driver, text: str, timeout_s: float = 60.0) -> str:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout_s
    body = ""
    while time.monotonic() < deadline:
        body = driver.find_element(By.TAG_NAME, "body").text
        if text in body:
            return body
        time.sleep(0.2)
    raise AssertionError(f"'{text}' not visible within {timeout_s} s; the page shows:\n{body[:3000]}")


def _click_text(driver, text: str):  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.XPATH, f"//*[contains(text(), '{text}')]")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()
    return element


EXPAND_ONE = """
const closed = Array.from(document.querySelectorAll('[data-testid=tree-section]'))
    .filter(section => !section.nextElementSibling);
if (closed.length) { closed[0].querySelector('[data-testid=tree-arrow]').click(); }
return closed.length;"""


def _expand_tree(driver) -> None:  # type: ignore[no-untyped-def]
    """Open every group of the tree (Allure opens only the way to a failure)."""
    for _ in range(50):
        if not driver.execute_script(EXPAND_ONE):
            return
        time.sleep(0.1)


def test_report_is_one_file_and_the_summary_names_the_failure(rendered):  # type: ignore[no-untyped-def]
    report, summary = rendered["report"], rendered["summary"]
    assert report.name == "index.html" and sorted(p.name for p in report.parent.glob("*.html")) == ["index.html"]
    page = summary.read_text(encoding="utf-8")
    assert "FAIL" in page and DIAGNOSIS in page and "<img" in page  # the failed step's plot, embedded
    assert all(step in page for step in STEPS)
    history = rendered["tmp"] / "reports" / "allure-history.jsonl"  # carried to the next report
    assert history.is_file() and history.read_text(encoding="utf-8").count("\n") >= 1


def test_report_shows_steps_diagnosis_and_plot_in_chromium(rendered, browser):  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    assert "googletagmanager" not in rendered["report"].read_text(encoding="utf-8")  # no call out
    browser.get(rendered["report"].as_uri())
    try:
        body = _wait_for_text(browser, f"{FAILED_STEP} — ", timeout_s=30.0)
    except AssertionError:
        # seen twice in 10 suite runs with both cores busy: the page's frame drew, its content
        # never did (the same file opened afterwards draws at once) -- open it once more
        browser.refresh()
        body = _wait_for_text(browser, f"{FAILED_STEP} — ")
    serial = re.search(rf"{FAILED_STEP} — (\S+)", body).group(1)
    _expand_tree(browser)
    for step in STEPS:  # the plan's tests, titled with the DUT serial, under their epics
        _wait_for_text(browser, f"{step} — {serial}")
    assert "Parallel bank" in body and "BMS communication" in body
    SCREENSHOTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "report-overview.png"))

    _click_text(browser, f"{FAILED_STEP} — {serial}")
    body = _wait_for_text(browser, DIAGNOSIS)
    assert "Failed" in body and "DUT out of specification" in body  # status and category
    # numbers in engineering form (no float noise), the plan's severity word, the document title
    assert re.search(r"imbalance = \d+(\.\d)? % \[<= 10 %\] FAIL", body), body[:3000]
    assert not re.search(r"\d\.\d{7,}", body), "float noise on the page"
    assert "Parallel Battery Storage: Safe Wiring & BMS Sync" in body
    _click_text(browser, "(plot)")
    deadline = time.monotonic() + 20
    loaded: list[int] = []
    while time.monotonic() < deadline and not loaded:
        loaded = [w for w in browser.execute_script(
            "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)") if w > 0]
        time.sleep(0.2)
    assert loaded, "the plot attachment did not load as a picture"
    image = browser.find_element(By.TAG_NAME, "img")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", image)
    browser.save_screenshot(str(SCREENSHOTS / "report-failure.png"))
    assert (SCREENSHOTS / "report-failure.png").stat().st_size > 10_000


def test_summary_page_in_chromium(rendered, browser):  # type: ignore[no-untyped-def]
    """The one-page summary as a reader sees it: verdict, failed requirement first with its
    diagnosis and plot, numbers in engineering form, the signature block."""
    browser.get(rendered["summary"].as_uri())
    body = _wait_for_text(browser, "Qualification summary")
    assert "FAIL" in body and DIAGNOSIS in body and "Approved by" in body and "Tested by" in body
    assert body.index("current sharing") < body.index("bms identity")  # failed first
    assert re.search(r"\d+(\.\d+)? (m|u)?(V|A|Ohm)\b", body)  # engineering form
    assert not re.search(r"\d\.\d{7,}", body)
    loaded = [w for w in browser.execute_script(
        "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)") if w > 0]
    assert loaded, "the failed step's plot is not on the page"
    SCREENSHOTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "summary.png"))
    assert (SCREENSHOTS / "summary.png").stat().st_size > 10_000
