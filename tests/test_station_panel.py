"""The operator panel on the real station: fixtures/stations/eol_emulated.yaml with plan
eol_module, opened by ``open_station`` (a results sqlite and reports in the test's tmp dir),
served by ``PanelServer`` and driven in headless Chromium through chromedriver.

Each unit runs as a ``hil run`` subprocess on a fresh emulated twin (~5-8 s on an idle machine,
much longer on a loaded one): every wait polls the DOM, up to 90 s for a verdict.

- a good unit: its serial typed + Enter into socket 1's entry, the step name advancing through
  at least two of the plan's steps, PASS with the measurements (verdicts in the table's colours);
- an aged unit (``unit_args`` gives its ``hil run`` ``--scenario aged_module``): FAIL, the
  failed step ``acir`` and the station's diagnosis on the page;
- a serial that does not fit the plan's pattern: the station's refusal sentence, no unit run.

Screenshots (1280x800) go to the test's tmp dir; to the folder named by BANKHIL_SCREENSHOTS
as well (station_pass.png, station_fail.png) only when that variable is set -- e.g.
``BANKHIL_SCREENSHOTS=docs/panel`` to refresh the README's pictures.

Tools: Debian's ``chromium`` and ``chromium-driver``, and selenium. Without them these tests
are skipped -- unless BANKHIL_REQUIRE_REPORT_TOOLS=1 (CI sets it), when a missing tool fails.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from headless_browser import headless_chrome, require_browser

SOCKET = "1"                                    # eol_emulated.yaml: one socket, named "1"
CARD = f'article[data-socket="{SOCKET}"]'
PLAN_STEPS = ("bms_comm", "unit_serial", "identity", "ocv", "acir", "balance", "discharge_ocp_trip")
GOOD, AGED = "BH12-B0001-101", "BH12-B0001-102"  # batch B0001: the emulated DUT record's batch
FAULTS = {AGED: ["--scenario", "aged_module"]}
VERDICT_S = 90.0                                 # a slow shared 2-core machine
PASS_RGB, FAIL_RGB = "rgb(27, 122, 54)", "rgb(194, 31, 31)"


# ====================================================================== tools and fixtures
@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    require_browser()
    with headless_chrome("1280,800", "--hide-scrollbars", page_load_timeout_s=60, script_timeout_s=30) as driver:
        yield driver


def _unit_args(serial: str, attempt: int, socket: str) -> list[str]:
    return list(FAULTS.get(serial, []))


@pytest.fixture(scope="module")
def station(browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """The emulated EOL station (its own sqlite and reports) with the panel open in the browser.
    Depends on ``browser`` so that without the tools nothing is started."""
    from harness.production.panel import PanelServer
    from harness.production.setup import open_station

    base = tmp_path_factory.mktemp("station")
    opened = open_station("eol_emulated", "eol_module", results=f"sqlite:///{base / 'results.sqlite'}",
                          reports=base / "reports", operator="E2E Tester", unit_args=_unit_args)
    server = PanelServer(opened.station)
    try:
        url = server.start()
        _fit_viewport(browser, 1280, 800)
        browser.get(url)
        _wait_for(browser, "connected", "#connection", timeout_s=60)
        yield opened.station
    finally:
        try:
            server.stop()
        finally:
            opened.station.stop("end of the panel test")   # interrupts a unit a failed test left running
            opened.close()
            opened.station.store.close()


# ====================================================================== helpers
def _fit_viewport(driver, width: int, height: int) -> None:  # type: ignore[no-untyped-def]
    """Size the window so the page itself (the screenshot) is width x height."""
    driver.set_window_size(width, height)
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    size = driver.get_window_size()
    driver.set_window_size(size["width"] + width - inner[0], size["height"] + height - inner[1])


def _text(driver, selector: str) -> str:  # type: ignore[no-untyped-def]
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : null", selector) or ""


def _page(driver) -> str:  # type: ignore[no-untyped-def]
    return _text(driver, "body")[:3000]


def _poll(driver, what: str, predicate: Callable[[], Any], timeout_s: float,  # type: ignore[no-untyped-def]
          station: Any = None) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            extra = ""
            if station is not None:
                extra = f"\n--- station state:\n{station.snapshot()}"
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s; the page shows:\n{_page(driver)}{extra}")
        time.sleep(0.1)


def _wait_for(driver, text: str, selector: str = "body", timeout_s: float = 60.0,  # type: ignore[no-untyped-def]
              station: Any = None) -> str:
    return _poll(driver, f"'{text}' in {selector}",
                 lambda: (lambda shown: shown if text in shown else "")(_text(driver, selector)),
                 timeout_s, station)


def _scan(driver, serial: str) -> None:  # type: ignore[no-untyped-def]
    """Type like a barcode scanner: the characters, then Enter, into socket 1's entry once it
    takes a serial (the panel puts the focus there itself; click it if it has not yet)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    entry = driver.find_element(By.CSS_SELECTOR, f"{CARD} .serial-input")
    deadline = time.monotonic() + 30
    while not (entry.is_enabled() and driver.switch_to.active_element == entry):
        assert time.monotonic() < deadline, f"socket {SOCKET}'s entry never took a serial:\n{_page(driver)}"
        if entry.is_enabled():
            entry.click()
        time.sleep(0.1)
    entry.send_keys(serial + Keys.ENTER)


def _watch_steps(driver) -> None:  # type: ignore[no-untyped-def]
    """Record every text the socket's step name shows (a MutationObserver: a step that shows for
    a moment between two DOM polls is still seen)."""
    driver.execute_script("""
        const el = document.querySelector(arguments[0]);
        if (window.__stepObserver) window.__stepObserver.disconnect();
        window.__steps = [el.textContent];
        window.__stepObserver = new MutationObserver(() => {
          const t = el.textContent;
          if (window.__steps[window.__steps.length - 1] !== t) window.__steps.push(t);
        });
        window.__stepObserver.observe(el, {childList: true, characterData: true, subtree: true});
    """, f"{CARD} .step")


def _steps_seen(driver) -> list[str]:  # type: ignore[no-untyped-def]
    return list(driver.execute_script("return window.__steps || []"))


def _rows(driver) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    """The measurement table: step, name, reading, result and the row's data-verdict."""
    return driver.execute_script("""
        return [...document.querySelectorAll(arguments[0])].map(tr => ({
          step: tr.querySelector('.m-step').textContent, name: tr.querySelector('.m-name').textContent,
          shown: tr.querySelector('.m-shown').textContent, verdict: tr.querySelector('.m-verdict').textContent,
          row: tr.dataset.verdict, background: getComputedStyle(tr).backgroundColor}));
    """, f"{CARD} .measurements tbody tr")


def _background(driver, selector: str) -> str:  # type: ignore[no-untyped-def]
    return driver.execute_script(
        "return getComputedStyle(document.querySelector(arguments[0])).backgroundColor", selector)


def _shot(driver, tmp_path: Path, name: str, publish: bool = True) -> Path:  # type: ignore[no-untyped-def]
    """The page to the test's tmp dir; also to BANKHIL_SCREENSHOTS's folder when it is set."""
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 5000
    folder = os.environ.get("BANKHIL_SCREENSHOTS", "").strip()
    if publish and folder:
        target = Path(folder).expanduser()
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / f"{name}.png")
    return path


def _ready(driver, station: Any) -> None:  # type: ignore[no-untyped-def]
    """Socket 1 takes a serial: no unit running (a previous test's unit has its verdict)."""
    assert station.wait_idle(timeout_s=VERDICT_S), f"a unit is still running: {station.running_serials()}"
    assert not station.snapshot().lock.locked, f"station locked: {station.snapshot().lock.reason}"
    _poll(driver, "socket 1 ready for a serial", lambda: driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e && !e.disabled", f"{CARD} .serial-input"), 30)


# ====================================================================== the tests
def test_good_unit_passes_with_steps_and_measurements(station, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _ready(browser, station)
    assert "eol-emulated" in _text(browser, "#top") and "plan eol_module v1.0" in _text(browser, "#top")
    _watch_steps(browser)
    started = time.monotonic()
    _scan(browser, GOOD)
    _wait_for(browser, GOOD, f"{CARD} .unit", station=station)
    assert "attempt 1 of 3" in _text(browser, f"{CARD} .unit")

    # the step name advances while the unit runs: at least two of the plan's steps shown
    def two_steps() -> list[str]:
        named = [s for s in dict.fromkeys(_steps_seen(browser)) if s in PLAN_STEPS]
        return named if len(named) >= 2 else []
    advanced = _poll(browser, "the step name advancing through two steps", two_steps, VERDICT_S, station)

    verdict = _wait_for(browser, "PASS", f"{CARD} .verdict-word", timeout_s=VERDICT_S, station=station)
    took = time.monotonic() - started
    assert verdict == "PASS"
    seen = [s for s in dict.fromkeys(_steps_seen(browser)) if s in PLAN_STEPS]
    assert list(PLAN_STEPS).index(advanced[0]) < list(PLAN_STEPS).index(advanced[1]), seen  # forward
    snap = station.snapshot().sockets[0]
    assert (snap.verdict, snap.serial, snap.steps_done) == ("PASS", GOOD, len(PLAN_STEPS))
    assert _text(browser, f"{CARD} .count") == f"{len(PLAN_STEPS)} / {len(PLAN_STEPS)} steps done"
    assert _text(browser, f"{CARD} .step") == "finished"
    assert f"takt {snap.takt_s:.1f} s" in _text(browser, f"{CARD} .verdict")
    assert _background(browser, f"{CARD} .verdict") == PASS_RGB

    # every measurement the station stored, in order, its verdict upper case and coloured
    rows = _poll(browser, "all measurements in the table",
                 lambda: (lambda r: r if len(r) == len(snap.measurements) else [])(_rows(browser)), 10, station)
    assert [(r["step"], r["name"]) for r in rows] == [(m.step, m.name) for m in snap.measurements]
    assert {r["step"] for r in rows} == set(PLAN_STEPS)
    assert {r["verdict"] for r in rows} <= {"PASS", "RECORDED"} and "PASS" in {r["verdict"] for r in rows}
    assert all(r["row"] == r["verdict"] for r in rows)
    ocv = next((r for r in rows if r["step"] == "ocv" and r["name"].startswith("ocv_s")), None)
    assert ocv is not None and ocv["verdict"] == "PASS", rows
    assert " V [" in ocv["shown"] and not ocv["shown"].startswith(ocv["name"]), ocv   # the reading alone
    assert not ocv["shown"].upper().endswith("PASS")
    _shot(browser, tmp_path, "station_pass")
    print(f"\nPASS unit: scan to PASS on the page {took:.1f} s (station takt {snap.takt_s:.1f} s); "
          f"steps seen {seen}")


def test_aged_unit_fails_at_acir_with_the_diagnosis(station, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _ready(browser, station)
    started = time.monotonic()
    _scan(browser, AGED)
    _wait_for(browser, AGED, f"{CARD} .unit", station=station)
    _wait_for(browser, "FAIL", f"{CARD} .verdict-word", timeout_s=VERDICT_S, station=station)
    took = time.monotonic() - started
    snap = station.snapshot().sockets[0]
    assert (snap.verdict, snap.failed_step, snap.serial) == ("FAIL", "acir", AGED)
    assert snap.diagnosis and "older (weak) module" in snap.diagnosis
    assert _text(browser, f"{CARD} .verdict-word") == "FAIL"
    assert _text(browser, f"{CARD} .failed-step") == "at acir:"
    assert _text(browser, f"{CARD} .diagnosis") == snap.diagnosis                  # the station's words
    assert "older (weak) module with higher internal resistance" in _text(browser, f"{CARD} .verdict")
    assert _text(browser, f"{CARD} .step") == "stopped at acir"
    assert _background(browser, f"{CARD} .verdict") == FAIL_RGB
    rows = _rows(browser)
    failed = [r for r in rows if r["verdict"] == "FAIL"]
    assert failed and {r["step"] for r in failed} == {"acir"}, failed
    assert all(r["row"] == "FAIL" and r["background"] == "rgb(253, 232, 232)" for r in failed)
    assert not any(r["step"] in ("balance", "discharge_ocp_trip") for r in rows)  # stopped at acir
    _shot(browser, tmp_path, "station_fail")
    print(f"\nFAIL unit: scan to FAIL on the page {took:.1f} s (station takt {snap.takt_s:.1f} s)")


def test_serial_off_the_pattern_is_refused(station, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    _ready(browser, station)
    before = station.snapshot()
    _scan(browser, "MODULE-42")
    refusal = _wait_for(browser, "REFUSED MODULE-42", f"{CARD} .refusal", station=station)
    sentence = ("'MODULE-42' is not a serial of this plan (pattern BH12-[A-Z0-9-]+): "
                "scan the unit's serial label")
    assert refusal == f"REFUSED MODULE-42: {sentence}"
    assert browser.find_element(By.CSS_SELECTOR, f"{CARD} .serial-input").get_attribute("value") == ""
    after = station.snapshot()
    assert station.running_serials() == {} and after.units_done == before.units_done   # nothing ran
    assert after.sockets[0].message == sentence
    assert not browser.find_element(By.CSS_SELECTOR, f"{CARD} .message").is_displayed()  # said once
    _shot(browser, tmp_path, "station_refused", publish=False)


def test_end_shift_from_the_panel_stops_the_station(tmp_path):  # type: ignore[no-untyped-def]
    """The panel's End shift: the station stops (as on Ctrl-C) and says so; no serial is taken after."""
    from fastapi.testclient import TestClient

    from harness.production.panel import create_app
    from harness.production.setup import open_station

    opened = open_station("eol_emulated", "eol_module", results=f"sqlite:///{tmp_path / 'r.sqlite'}",
                          reports=tmp_path / "reports", operator="ci")
    try:
        events = []
        opened.station.subscribe(events.append)
        client = TestClient(create_app(opened.station), base_url="http://127.0.0.1")
        assert client.post("/api/stop", json={"reason": "end of shift"}).status_code == 202
        deadline = time.monotonic() + 30
        while not opened.station.stopped and time.monotonic() < deadline:
            time.sleep(0.05)
        assert opened.station.stopped
        refused = client.post("/api/sockets/1/serial", json={"serial": "BH12-B0001-900"})
        assert refused.status_code == 409 and "stopped" in refused.json()["detail"]
    finally:
        opened.close()
