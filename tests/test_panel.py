"""The station's operator panel (harness/production/panel) against a fake station.

The fake (:class:`FakeStation`) implements ``StationControl`` the way the station does: it holds
a :class:`StationState`, refuses serials that do not fit its pattern (or while it is locked or
the socket is busy), and runs an accepted unit in a thread that changes the state and publishes
``unit_started``, ``step_started``, ``measurement``, ``step_finished``, ``unit_finished``. A
serial ending in 9 fails at ``inrush``. The steps advance on their own (short sleeps) or, with
``gated=True``, one per :meth:`FakeStation.advance`, so the browser test sees each step name.

Part (a): the REST interface and the websocket with FastAPI's TestClient. Part (b): the page
in headless Chromium through chromedriver, served by ``PanelServer`` on 127.0.0.1 (a free
port): a serial typed + Enter, the step name advancing, PASS with the measurements, a FAIL with
its step and diagnosis, a refused serial with the refusal, the lock banner and the unlock, the
websocket lost and found again. Screenshots (1280x800) go to the test's tmp dir; to the
folder named by BANKHIL_SCREENSHOTS as well (pass.png, fail.png, locked.png) only when that
variable is set -- ``BANKHIL_SCREENSHOTS=docs/panel`` refreshes the README's pictures.

Tools for (b): Debian's ``chromium`` and ``chromium-driver``, and selenium. Without them (b) is
skipped -- unless BANKHIL_REQUIRE_REPORT_TOOLS=1 (CI sets it), when a missing tool fails it.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from headless_browser import headless_chrome, require_browser

from harness.production.state import (
    CHECKING,
    DONE,
    IDLE,
    RUNNING,
    LiveMeasurement,
    LockState,
    SerialRefused,
    SocketState,
    StationEvent,
    StationState,
)

PATTERN = r"BM-\d{6}"
STEPS = (
    ("bms_identity", [("firmware", "fw 2.4.1 [== 2.4.1] PASS")]),
    ("module_ocv", [("ocv", "13.057 V [12 V .. 14.6 V] PASS")]),
    ("inrush", [("peak_current", "41.2 A [<= 60 A] PASS")]),
    ("acir", [("acir", "4.82 mOhm [<= 6 mOhm] PASS")]),
)
FAILED_STEP, DIAGNOSIS = "inrush", "precharge resistor open: inrush 212 A, limit 60 A"


class FakeStation:
    """A StationControl with the station's behaviour, minus the bench."""

    def __init__(self, sockets: tuple[str, ...] = ("S1", "S2"), step_s: float = 0.02,
                 gated: bool = False) -> None:
        self.state = StationState(station="EOL-3", plan="module_eol", plan_version="1.4",
                                  serial_pattern=PATTERN, operator="A. Novak",
                                  sockets=[SocketState(name=n, attempts_allowed=3) for n in sockets])
        self.step_s = step_s
        self.gate = threading.Semaphore(0) if gated else None
        self.lock = threading.RLock()
        self.listeners: list[Callable[[StationEvent], None]] = []
        self.attempts: dict[str, int] = {}
        self.threads: list[threading.Thread] = []
        self.unlocks: list[tuple[str, str]] = []
        self.stopped = threading.Event()

    # ---------------------------------------------------------------- StationControl
    def snapshot(self) -> StationState:
        with self.lock:
            return copy.deepcopy(self.state)

    def subscribe(self, listener: Callable[[StationEvent], None]) -> Callable[[], None]:
        with self.lock:
            self.listeners.append(listener)

        def unsubscribe() -> None:
            with self.lock:
                if listener in self.listeners:
                    self.listeners.remove(listener)
        return unsubscribe

    def submit_serial(self, socket: str, serial: str) -> None:
        with self.lock:
            sock = self._socket(socket)
            refusal = None
            if self.state.lock.locked:
                refusal = f"station locked: {self.state.lock.reason}; unlock it first"
            elif not re.fullmatch(PATTERN, serial):
                refusal = f"serial {serial} is not a module serial (BM-nnnnnn): scan the module's label"
            elif sock.phase not in (IDLE, DONE):
                refusal = f"socket {socket} is busy with {sock.serial}"
            elif self.attempts.get(serial, 0) >= sock.attempts_allowed:
                refusal = f"{serial} has used its {sock.attempts_allowed} attempts: to the rework bench"
            if refusal is not None:
                sock.message = refusal
                self._publish("serial_refused", socket, {"serial": serial, "message": refusal})
                raise SerialRefused(refusal)
            self.attempts[serial] = self.attempts.get(serial, 0) + 1
            sock.__init__(name=socket, phase=CHECKING, serial=serial, attempt=self.attempts[serial],
                          attempts_allowed=sock.attempts_allowed, steps_total=len(STEPS),
                          history="new unit" if self.attempts[serial] == 1 else
                          f"retest {self.attempts[serial]} of {sock.attempts_allowed}")
            thread = threading.Thread(target=self._run, args=(socket, serial), daemon=True)
            self.threads.append(thread)
            thread.start()

    def unlock(self, reason: str, operator: str) -> None:
        if not reason.strip():
            raise ValueError("give the reason for unlocking")
        with self.lock:
            self.unlocks.append((reason, operator))
            self.state.lock = LockState()
            self._publish("unlocked", None, {"reason": reason, "operator": operator})

    def stop(self, reason: str) -> None:
        self.stopped.set()
        with self.lock:
            self._publish("stopped", None, {"reason": reason})

    # ---------------------------------------------------------------- test controls
    def lock_station(self, reason: str) -> None:
        with self.lock:
            self.state.lock = LockState(locked=True, reason=reason)
            self._publish("locked", None, {"reason": reason})

    def advance(self) -> None:
        assert self.gate is not None
        self.gate.release()

    def publish_raw(self, kind: str, socket: str | None, data: dict) -> None:
        with self.lock:
            self._publish(kind, socket, data)

    def join(self, timeout_s: float = 10.0) -> None:
        for thread in self.threads:
            thread.join(timeout_s)

    # ---------------------------------------------------------------- internals
    def _socket(self, name: str) -> SocketState:
        for sock in self.state.sockets:
            if sock.name == name:
                return sock
        raise SerialRefused(f"no socket {name}")

    def _publish(self, kind: str, socket: str | None, data: dict) -> None:
        event = StationEvent(kind, socket, data)
        for listener in list(self.listeners):
            listener(event)

    def _wait(self) -> None:
        if self.gate is not None:
            assert self.gate.acquire(timeout=30), "the test never advanced the fake station"
        else:
            time.sleep(self.step_s)

    def _run(self, socket: str, serial: str) -> None:
        fails = serial.endswith("9")
        started = time.monotonic()
        with self.lock:
            sock = self._socket(socket)
            sock.phase = RUNNING
            sock.message = None
            self._publish("unit_started", socket, {"serial": serial, "attempt": sock.attempt})
        verdict, failed_step, diagnosis = "PASS", None, None
        for step, measurements in STEPS:
            if self.stopped.is_set():
                verdict = "ABORTED"
                break
            with self.lock:
                sock.current_step = step
                self._publish("step_started", socket, {"step": step})
            self._wait()
            step_verdict = "PASS"
            with self.lock:
                for name, shown in measurements:
                    if fails and step == FAILED_STEP:
                        shown, step_verdict = "212 A [<= 60 A] FAIL", "FAIL"
                    m = LiveMeasurement(step=step, name=name, shown=shown, verdict=step_verdict)
                    sock.measurements.append(m)
                    self._publish("measurement", socket, {"step": step, "name": name, "shown": shown,
                                                          "verdict": step_verdict, "value": float("nan")})
                sock.steps_done += 1
                self._publish("step_finished", socket, {"step": step, "verdict": step_verdict})
            if step_verdict == "FAIL":
                verdict, failed_step, diagnosis = "FAIL", step, DIAGNOSIS
                break
        with self.lock:
            sock.phase, sock.verdict = DONE, verdict
            sock.current_step = None
            sock.failed_step, sock.diagnosis = failed_step, diagnosis
            sock.takt_s = round(time.monotonic() - started, 3)
            sock.message = ("put the module on the rework cart" if verdict == "FAIL"
                            else "take the module out; scan the next")
            self.state.units_done += 1
            self._publish("unit_finished", socket, {"serial": serial, "verdict": verdict,
                                                    "failed_step": failed_step, "diagnosis": diagnosis})


# ====================================================================== (a) REST + websocket
@pytest.fixture
def station() -> Iterator[FakeStation]:
    fake = FakeStation()
    yield fake
    fake.stopped.set()
    fake.join()


@pytest.fixture
def client(station: FakeStation) -> Iterator[object]:
    from fastapi.testclient import TestClient

    from harness.production.panel import create_app

    with TestClient(create_app(station), base_url="http://127.0.0.1") as test_client:
        yield test_client


def _wait_until(predicate: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_state_page_and_static_files_are_served(client) -> None:  # type: ignore[no-untyped-def]
    state = client.get("/api/state").json()
    assert state["station"] == "EOL-3" and [s["name"] for s in state["sockets"]] == ["S1", "S2"]
    assert state["lock"] == {"locked": False, "reason": None}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/static/panel.js" in page.text and "/static/panel.css" in page.text
    assert "http://" not in page.text and "https://" not in page.text       # nothing from outside
    for name in ("panel.js", "panel.css"):
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200 and len(asset.text) > 500
        assert "http://" not in asset.text and "https://" not in asset.text
    assert client.get("/docs").status_code == 404                         # no API explorer


def test_accepted_serial_runs_the_unit_to_pass(client, station: FakeStation) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/api/sockets/S1/serial", json={"serial": " BM-000101 "})
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": True, "socket": "S1", "serial": "BM-000101"}
    station.join()
    s1 = client.get("/api/state").json()["sockets"][0]
    assert (s1["phase"], s1["verdict"], s1["steps_done"], s1["serial"]) == ("done", "PASS", 4, "BM-000101")
    assert [m["name"] for m in s1["measurements"]] == ["firmware", "ocv", "peak_current", "acir"]
    assert s1["takt_s"] is not None


def test_refusals_carry_the_station_sentence(client, station: FakeStation) -> None:  # type: ignore[no-untyped-def]
    bad = client.post("/api/sockets/S1/serial", json={"serial": "XX-12"})
    assert bad.status_code == 422                                         # does not fit the pattern
    assert bad.json()["detail"] == "serial XX-12 is not a module serial (BM-nnnnnn): scan the module's label"
    assert bad.json()["refused"] is True

    station.lock_station("calibration of acir overdue since 2026-11-01")
    locked = client.post("/api/sockets/S2/serial", json={"serial": "BM-000102"})
    assert locked.status_code == 409                                      # fits, but the station says no
    assert "calibration of acir overdue" in locked.json()["detail"]

    assert client.post("/api/sockets/S9/serial", json={"serial": "BM-000102"}).status_code == 404
    assert client.post("/api/sockets/S1/serial", json={"serial": "   "}).status_code == 422
    assert client.post("/api/sockets/S1/serial", json={}).status_code == 422
    assert client.post("/api/sockets/S1/serial", content=b"not json",
                       headers={"content-type": "application/json"}).status_code == 422


def test_busy_socket_is_refused_with_409() -> None:
    from fastapi.testclient import TestClient

    from harness.production.panel import create_app

    gated = FakeStation(gated=True)
    try:
        with TestClient(create_app(gated), base_url="http://127.0.0.1") as client:
            assert client.post("/api/sockets/S1/serial", json={"serial": "BM-000103"}).status_code == 202
            busy = client.post("/api/sockets/S1/serial", json={"serial": "BM-000104"})
            assert busy.status_code == 409 and busy.json()["detail"] == "socket S1 is busy with BM-000103"
    finally:
        for _ in STEPS:
            gated.advance()
        gated.join()


def test_unlock(client, station: FakeStation) -> None:  # type: ignore[no-untyped-def]
    station.lock_station("5 consecutive FAIL at inrush")
    assert client.get("/api/state").json()["lock"] == {"locked": True, "reason": "5 consecutive FAIL at inrush"}
    empty = client.post("/api/unlock", json={"reason": "  ", "operator": "A. Novak"})
    assert empty.status_code == 422 and empty.json()["detail"] == "give the reason for unlocking"
    nobody = client.post("/api/unlock", json={"reason": "fixture cleaned", "operator": ""})
    assert nobody.status_code == 422 and "operator" in nobody.json()["detail"]
    assert client.post("/api/unlock", json={"reason": "fixture cleaned"}).status_code == 422
    assert station.state.lock.locked
    done = client.post("/api/unlock", json={"reason": "fixture cleaned", "operator": "A. Novak"})
    assert done.status_code == 200 and done.json()["lock"]["locked"] is False
    assert station.unlocks == [("fixture cleaned", "A. Novak")]


def test_other_sites_and_hosts_are_refused(client, station: FakeStation) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from harness.production.panel import create_app

    station.lock_station("drift")
    cross = client.post("/api/unlock", json={"reason": "x", "operator": "y"},
                        headers={"origin": "http://evil.example"})
    assert cross.status_code == 403 and station.state.lock.locked
    same = client.post("/api/unlock", json={"reason": "x", "operator": "y"},
                       headers={"origin": "http://127.0.0.1"})
    assert same.status_code == 200
    with TestClient(create_app(station), base_url="http://rebound.example") as elsewhere:
        assert elsewhere.get("/api/state").status_code == 400           # DNS rebinding: wrong Host


def test_websocket_sends_snapshot_then_every_event_with_state(client, station: FakeStation) -> None:  # type: ignore[no-untyped-def]
    with client.websocket_connect("ws://127.0.0.1/ws") as ws:
        first = ws.receive_json()
        assert first["type"] == "snapshot" and first["state"]["station"] == "EOL-3"
        _wait_until(lambda: len(station.listeners) == 1)
        assert client.post("/api/sockets/S2/serial", json={"serial": "BM-000209"}).status_code == 202
        kinds = []
        while not kinds or kinds[-1] != "unit_finished":
            message = ws.receive_json()
            assert message["type"] == "event" and message["event"]["socket"] == "S2"
            kinds.append(message["event"]["kind"])
        assert kinds[0] == "unit_started" and kinds.count("step_started") == 3     # fails at step 3
        assert "measurement" in kinds and "step_finished" in kinds
        assert message["event"]["data"]["verdict"] == "FAIL"
        s2 = message["state"]["sockets"][1]                                    # the state after the event
        assert (s2["verdict"], s2["failed_step"], s2["diagnosis"]) == ("FAIL", FAILED_STEP, DIAGNOSIS)
        station.publish_raw("measurement", "S1", {"value": float("inf"), "nested": [float("nan")]})
        odd = ws.receive_json()                                               # valid JSON for a browser
        assert odd["event"]["data"] == {"value": "Infinity", "nested": ["NaN"]}
    _wait_until(lambda: not station.listeners)                                # unsubscribed on close


def test_websocket_from_another_site_is_refused(client) -> None:  # type: ignore[no-untyped-def]
    from starlette.websockets import WebSocketDisconnect

    with pytest.raises(WebSocketDisconnect):
        with client.websocket_connect("ws://127.0.0.1/ws", headers={"origin": "http://evil.example"}) as ws:
            ws.receive_json()


def test_panel_server_binds_loopback_only_and_stops() -> None:
    import json
    import urllib.error
    import urllib.request

    from harness.production.panel import PanelServer

    with pytest.raises(ValueError, match="loopback"):
        PanelServer(FakeStation(), host="0.0.0.0")
    server = PanelServer(FakeStation())
    url = server.start()
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url) and server.port > 0
        with urllib.request.urlopen(url + "api/state", timeout=5) as response:
            assert json.load(response)["station"] == "EOL-3"
    finally:
        server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "api/state", timeout=2)
    server.stop()                                                             # twice: harmless


# ====================================================================== (b) the page in Chromium
@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    require_browser()
    with headless_chrome("1280,800", "--hide-scrollbars", page_load_timeout_s=60) as driver:
        yield driver


@pytest.fixture
def panel(browser):  # type: ignore[no-untyped-def]
    from harness.production.panel import PanelServer

    fake = FakeStation(gated=True)
    server = PanelServer(fake, port=0)
    url = server.start()
    browser.set_window_size(1280, 800)
    _fit_viewport(browser, 1280, 800)
    browser.get(url)
    _wait_for(browser, "connected", "#connection")
    try:
        yield fake, server, url
    finally:
        fake.stopped.set()
        for _ in range(len(STEPS) * 4):
            fake.advance()
        fake.join()
        server.stop()


def _fit_viewport(driver, width: int, height: int) -> None:  # type: ignore[no-untyped-def]
    """Size the window so the page itself (the screenshot) is width x height."""
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    size = driver.get_window_size()
    driver.set_window_size(size["width"] + width - inner[0], size["height"] + height - inner[1])


def _text(driver, selector: str) -> str:  # type: ignore[no-untyped-def]
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : null", selector) or ""


def _wait_for(driver, text: str, selector: str = "body", timeout_s: float = 60.0) -> str:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    shown = ""
    while time.monotonic() < deadline:
        shown = _text(driver, selector)
        if text in shown:
            return shown
        time.sleep(0.05)
    raise AssertionError(f"'{text}' not in {selector} within {timeout_s} s; it shows:\n"
                         f"{shown[:2000]}\n--- page:\n{_text(driver, 'body')[:3000]}")


def _scan(driver, socket: str, serial: str) -> None:  # type: ignore[no-untyped-def]
    """Type like a barcode scanner: the characters, then Enter, into the field that has focus
    (the panel must have put it on the socket's entry)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    entry = driver.find_element(By.CSS_SELECTOR, f'article[data-socket="{socket}"] .serial-input')
    deadline = time.monotonic() + 10
    while not (entry.is_enabled() and driver.switch_to.active_element == entry):
        assert time.monotonic() < deadline, f"socket {socket}'s entry never got the focus"
        if driver.switch_to.active_element.tag_name != "input" or not entry.is_enabled():
            time.sleep(0.05)
        else:
            entry.click()
    driver.switch_to.active_element.send_keys(serial + Keys.ENTER)


def _shot(driver, tmp_path: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 5000
    folder = os.environ.get("BANKHIL_SCREENSHOTS", "").strip()
    if folder:                                  # never into the work tree unless asked
        target = Path(folder).expanduser()
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / f"{name}.png")


def _run_through(fake: FakeStation, driver, socket: str, steps: int) -> None:  # type: ignore[no-untyped-def]
    """Watch the step name advance as the fake station moves on, one step at a time."""
    sel = f'article[data-socket="{socket}"]'
    for step, _ in STEPS[:steps]:
        _wait_for(driver, step, f"{sel} .step")
        fake.advance()


def test_page_runs_a_unit_to_pass_then_one_to_fail(panel, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fake, _, _ = panel
    s1, s2 = 'article[data-socket="S1"]', 'article[data-socket="S2"]'
    assert _wait_for(browser, "READY", f"{s1} .verdict") and "EOL-3" in _text(browser, "#top")

    _scan(browser, "S1", "BM-000101")
    _wait_for(browser, "TESTING", f"{s1} .verdict")
    _wait_for(browser, "BM-000101", f"{s1} .unit")
    _run_through(fake, browser, "S1", len(STEPS))
    verdict = _wait_for(browser, "PASS", f"{s1} .verdict")
    assert "takt" in verdict
    table = _wait_for(browser, "4.82 mOhm", f"{s1} .measurements")
    rows = [line for line in table.splitlines() if line.strip()]
    assert [r.split("\t")[0] for r in rows[1:]] == [s for s, _ in STEPS]        # newest last
    assert "13.057 V [12 V .. 14.6 V]" in table and "PASS" in rows[-1]
    assert _text(browser, f"{s1} .count") == "4 / 4 steps done"
    _shot(browser, tmp_path, "pass")

    # the focus went to the idle socket S2: the next scan goes there with no click
    _scan(browser, "S2", "BM-000209")
    _run_through(fake, browser, "S2", 3)
    _wait_for(browser, "FAIL", f"{s2} .verdict-word")
    detail = _wait_for(browser, DIAGNOSIS, f"{s2} .verdict")
    assert f"at {FAILED_STEP}:" in detail
    assert _text(browser, f"{s2} .step") == f"stopped at {FAILED_STEP}"
    assert "put the module on the rework cart" in _text(browser, f"{s2} .message")
    assert "212 A [<= 60 A]" in _text(browser, f"{s2} .measurements")
    assert _text(browser, f"{s1} .verdict-word") == "PASS"
    _shot(browser, tmp_path, "fail")            # S2 FAIL beside S1 PASS
    # colour and word agree
    colours = browser.execute_script(
        "return [...document.querySelectorAll('.verdict')].map(e => getComputedStyle(e).backgroundColor)")
    assert colours == ["rgb(27, 122, 54)", "rgb(194, 31, 31)"]

    # a retest of the failed unit: its history line and attempt number
    _scan(browser, "S2", "BM-000209")
    _wait_for(browser, "attempt 2 of 3", f"{s2} .unit")
    assert "retest 2 of 3" in _text(browser, f"{s2} .history")
    _run_through(fake, browser, "S2", 3)
    _wait_for(browser, DIAGNOSIS, f"{s2} .verdict")


def test_page_shows_refusal_lock_and_unlock(panel, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    fake, _, _ = panel
    s1 = 'article[data-socket="S1"]'
    _scan(browser, "S1", "12345")
    refusal = _wait_for(browser, "REFUSED 12345", f"{s1} .refusal")
    assert "is not a module serial (BM-nnnnnn): scan the module's label" in refusal
    assert browser.find_element(By.CSS_SELECTOR, f"{s1} .serial-input").get_attribute("value") == ""

    fake.lock_station("calibration of acir overdue since 2026-11-01")
    # the reason, not the heading: a hidden banner's heading is in the DOM before the event arrives
    banner = _wait_for(browser, "calibration of acir overdue since 2026-11-01", "#lock")
    assert "STATION LOCKED" in banner and browser.find_element(By.ID, "lock").is_displayed()
    entry = browser.find_element(By.CSS_SELECTOR, f"{s1} .serial-input")
    assert not entry.is_enabled()                                  # no scanning while locked
    assert entry.get_attribute("placeholder") == "station locked"
    operator = browser.find_element(By.ID, "unlock-operator")
    assert operator.get_attribute("value") == "A. Novak"         # prefilled from the station
    _shot(browser, tmp_path, "locked")

    browser.find_element(By.CSS_SELECTOR, "#unlock-form button").click()
    assert fake.unlocks == []                                      # no reason, no unlock
    reason = browser.find_element(By.ID, "unlock-reason")
    reason.send_keys("acir meter calibrated, certificate 2026-114" + Keys.ENTER)
    deadline = time.monotonic() + 10
    while browser.find_element(By.ID, "lock").is_displayed():
        assert time.monotonic() < deadline, "the lock banner stayed"
        time.sleep(0.05)
    assert fake.unlocks == [("acir meter calibrated, certificate 2026-114", "A. Novak")]
    deadline = time.monotonic() + 10
    while not entry.is_enabled():
        assert time.monotonic() < deadline, "scanning did not resume after the unlock"
        time.sleep(0.05)

    fake.stop("end of shift")
    _wait_for(browser, "STATION STOPPED: end of shift", "#stopped")
    assert not entry.is_enabled() and entry.get_attribute("placeholder") == "station stopped"


def test_page_shows_disconnected_and_reconnects(panel, browser) -> None:  # type: ignore[no-untyped-def]
    from harness.production.panel import PanelServer

    fake, server, url = panel
    port = server.port
    server.stop()
    _wait_for(browser, "DISCONNECTED", "#connection")
    fake.lock_station("bench lost power")                          # changed while the page was away
    again = PanelServer(fake, port=port)
    again.start()
    try:
        _wait_for(browser, "connected", "#connection", timeout_s=60)
        assert "DISCONNECTED" not in _text(browser, "#connection")
        _wait_for(browser, "bench lost power", "#lock")           # the snapshot on reconnect
    finally:
        again.stop()


def test_page_fits_a_tablet(panel, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _fit_viewport(browser, 800, 1280)
    try:
        _wait_for(browser, "READY", 'article[data-socket="S2"] .verdict')
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"the page is {overflow} px wider than a portrait tablet"
        font = browser.execute_script(
            "return parseFloat(getComputedStyle(document.querySelector('.serial-input')).fontSize)")
        assert font >= 18
        browser.save_screenshot(str(tmp_path / "tablet.png"))
    finally:
        _fit_viewport(browser, 1280, 800)
