"""The end-of-line station: one plan, one unit after another on each socket, every outcome
stored, labelled and handed to the MES -- the object the console loop and the panel both drive.

How a unit goes through it (:meth:`Station.submit_serial`):

1. the scanned serial is checked: the plan's ``serial_pattern``, the station lock, the socket
   free, and the retest policy against the unit's history in the result store
   (harness/production/policy.py); a refusal is one sentence for the operator, and stored;
2. the plan runs as ``hil run`` in a process of its own, with the socket's station file, the
   serial and a run UUID chosen here -- the same command a person would type, so the unit gets
   the whole harness (validation before energising, its own safety supervisor, bench
   preparation, the store, Allure results) and a socket's failure cannot touch another socket;
   on an emulated station each unit gets a fresh twin, as each unit on a fixture is a new one.
   The process is forked from a warm one that imported the harness when the station opened
   (harness/production/launcher.py), so a unit does not spend its first seconds importing;
3. while it runs, its steps and measurements are followed in the store (committed as taken) and
   published as events to the console and the panel;
4. when it ends: the verdict, failed step and diagnosis from the store, the label, the MES
   document, the takt time (scan to verdict), and the lock rule (the same step failing on
   consecutive units) -- then the socket waits for the next serial.

Ctrl-C, SIGTERM or :meth:`stop` interrupt running units with SIGINT: each ``hil run`` brings its
bench to the safe state itself and records the unit ABORTED.
"""

from __future__ import annotations

import copy
import logging
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Callable

from harness.config.production import LineSection
from harness.production.launcher import ColdLauncher, Launcher, UnitProcess
from harness.production.policy import Attempt, decide, streak_lock
from harness.production.state import (CHECKING, DONE, IDLE, RUNNING, LiveMeasurement, LockState,
                                      SerialRefused, SocketState, StationEvent, StationState)
from harness.production.unit import MeasuredValue, UnitResult

log = logging.getLogger("bankhil.station")

POLL_S = 0.2
VERDICT_WORD = {"pass": "PASS", "fail": "FAIL", "error": "ERROR", "aborted": "ABORTED", "recorded": "RECORDED"}

# extra ``hil run`` arguments for one attempt at one unit (serial, attempt, socket): how a scripted
# emulated shift puts a fault into a unit (``--scenario``, ``--dut``); None on a real line
UnitArgs = Callable[[str, int, str], list[str]]


@dataclass
class _Running:
    process: UnitProcess | None
    run_uuid: str
    serial: str
    attempt: int
    scanned_wall: datetime
    scanned_mono: float


class Station:
    """The station (harness.production.state.StationControl). Build it with
    :func:`harness.production.setup.open_station`, which reads the station file's ``eol:``."""

    def __init__(self, *, name: str, plan: Any, plan_arg: str, station_files: dict[str, Path],
                 line: LineSection, store: Any, results_url: str, reports: Path, operator: str,
                 labels: Any = None, mes: Any = None, unit_args: UnitArgs | None = None,
                 calibration: dict[str, date] | None = None, launcher: Launcher | None = None):
        self.name, self.plan, self.plan_arg = name, plan, plan_arg
        self.station_files = station_files
        self.line, self.store, self.results_url = line, store, results_url
        self.reports, self.operator = Path(reports), operator
        self.labels, self.mes, self.unit_args = labels, mes, unit_args
        self.launcher = launcher or ColdLauncher()
        self.severity = {step.name: step.severity for step in plan.steps}
        self._lock = threading.RLock()
        self._listeners: list[Callable[[StationEvent], None]] = []
        self._running: dict[str, _Running] = {}
        self._threads: list[threading.Thread] = []
        self._recent: list[tuple[str, str | None]] = []  # finished attempts: (serial, failed step | None)
        self._stopped: str | None = None
        self.results: list[UnitResult] = []
        self._state = StationState(name, plan.name, str(plan.version), plan.serial_pattern, operator,
                                   [SocketState(s.name) for s in line.sockets])
        self._restore_lock(calibration or {})

    # ------------------------------------------------------------------ StationControl
    def snapshot(self) -> StationState:
        with self._lock:
            return copy.deepcopy(self._state)

    def subscribe(self, listener: Callable[[StationEvent], None]) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
        return unsubscribe

    def submit_serial(self, socket: str, serial: str) -> None:
        serial = serial.strip()
        try:
            decision = self._admit(socket, serial)
        except SerialRefused as refused:
            self._refuse(socket, serial, str(refused))
            raise
        now_wall, now_mono = datetime.now(timezone.utc), time.monotonic()
        running = _Running(None, str(uuid.uuid4()), serial, decision.attempt, now_wall, now_mono)
        with self._lock:
            self._running[socket] = running
            state = self._socket(socket)
            state.phase, state.serial, state.attempt = RUNNING, serial, decision.attempt
            state.attempts_allowed, state.history = self.line.retest.attempts, decision.history
            state.current_step, state.steps_done, state.steps_total = None, 0, len(self.plan.steps)
            state.measurements, state.verdict, state.failed_step = [], None, None
            state.diagnosis, state.takt_s, state.message = None, None, None
        self._publish("unit_started", socket, serial=serial, attempt=decision.attempt,
                      attempts_allowed=self.line.retest.attempts, history=decision.history,
                      run_uuid=running.run_uuid)
        thread = threading.Thread(target=self._unit, args=(socket, running), name=f"socket-{socket}", daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def unlock(self, reason: str, operator: str) -> None:
        reason, operator = (reason or "").strip(), (operator or "").strip()
        if not reason:
            raise ValueError("say why the lock can be lifted (what was checked or fixed)")
        if not operator:
            raise ValueError("the name of who lifts the lock")
        with self._lock:
            was = self._state.lock.reason
            self._state.lock = LockState(False, None)
            self._recent.clear()  # the streak that locked the station is over
        self._record("unlocked", f"lock lifted by {operator}: {reason} (was: {was})", operator=operator)
        self._publish("unlocked", None, reason=reason, operator=operator, was=was)

    def stop(self, reason: str) -> None:
        with self._lock:
            if self._stopped is None:
                self._stopped = reason
            running = list(self._running.values())
        for unit in running:
            if unit.process is not None and unit.process.poll() is None:
                unit.process.send_signal(signal.SIGINT)  # the run makes its bench safe and says ABORTED
        self.wait_idle(timeout_s=60.0)
        self._publish("stopped", None, reason=reason)

    # ------------------------------------------------------------------ for loops and tests
    @property
    def stopped(self) -> bool:
        return self._stopped is not None

    def idle_sockets(self) -> list[str]:
        with self._lock:
            return [s.name for s in self._state.sockets if s.phase in (IDLE, DONE) and s.name not in self._running]

    def running_serials(self) -> dict[str, str]:
        """Socket -> serial of the unit on it now."""
        with self._lock:
            return {name: unit.serial for name, unit in self._running.items()}

    def wait_idle(self, timeout_s: float | None = None, socket: str | None = None) -> bool:
        """Wait until no unit runs (or none on ``socket``); False on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            with self._lock:
                busy = [n for n in self._running if socket is None or n == socket]
            if not busy:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def history(self, serial: str) -> list[Attempt]:
        """Earlier attempts at ``serial`` with this plan, oldest first, from the store."""
        runs = [r for r in self.store.runs(serial, plan_name=self.plan.name, limit=None) if r.ended_at is not None]
        attempts = []
        for run in sorted(runs, key=lambda r: r.started_at):
            attempts.append(Attempt(run.uuid, run.verdict or "error", self._failed_step(run.id), run.started_at))
        return attempts

    # ------------------------------------------------------------------ admission
    def _admit(self, socket: str, serial: str) -> Any:
        with self._lock:
            if self._stopped is not None:
                raise SerialRefused(f"the station has stopped ({self._stopped})")
            if socket not in {s.name for s in self._state.sockets}:
                raise SerialRefused(f"no socket '{socket}' (sockets: {', '.join(s.name for s in self._state.sockets)})")
            if self._state.lock.locked:
                raise SerialRefused(f"station locked: {self._state.lock.reason}")
            if not serial:
                raise SerialRefused("no serial: scan the unit's label")
            if socket in self._running:
                raise SerialRefused(f"socket {socket} is testing {self._running[socket].serial}: wait for its verdict")
            elsewhere = [n for n, r in self._running.items() if r.serial == serial]
            if elsewhere:
                raise SerialRefused(f"{serial} is on socket {elsewhere[0]} right now")
            self._socket(socket).phase = CHECKING
        try:
            if not self.plan.serial_matches(serial):
                raise SerialRefused(f"'{serial}' is not a serial of this plan (pattern {self.plan.serial_pattern}): "
                                    "scan the unit's serial label")
            decision = decide(serial, self.history(serial), self.line.retest, self.severity)
            if not decision.allowed:
                raise SerialRefused(decision.refusal or "refused")
            return decision
        except BaseException:
            with self._lock:
                if self._socket(socket).phase == CHECKING:
                    self._socket(socket).phase = IDLE
            raise

    def _refuse(self, socket: str, serial: str, text: str) -> None:
        with self._lock:
            if socket in {s.name for s in self._state.sockets}:
                state = self._socket(socket)
                if state.phase != RUNNING:
                    state.message = text
        self._record("serial_refused", text, serial=serial)
        self._publish("serial_refused", socket, serial=serial, message=text)

    # ------------------------------------------------------------------ one unit
    def _argv(self, socket: str, unit: _Running) -> list[str]:
        argv = ["run", self.plan_arg,
                "--station", str(self.station_files[socket]), "--serial", unit.serial,
                "--results", self.results_url, "--reports", str(self.reports),
                "--operator", self.operator, "--run-uuid", unit.run_uuid]
        if self.unit_args is not None:
            argv += self.unit_args(unit.serial, unit.attempt, socket)
        return argv

    def _unit(self, socket: str, unit: _Running) -> None:
        logs = self.reports / "station-logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{unit.serial}-{unit.run_uuid[:8]}.log"
        tail = ""
        try:
            with open(log_path, "w", encoding="utf-8") as out:
                process = self.launcher.start(self._argv(socket, unit), out)
                with self._lock:
                    unit.process = process
                    stop_now = self._stopped is not None
                if stop_now:
                    process.send_signal(signal.SIGINT)
                seen: tuple[set[int], set[int]] = (set(), set())
                while process.poll() is None:
                    self._follow(socket, unit, seen)
                    time.sleep(POLL_S)
                self._follow(socket, unit, seen)
            tail = _last_lines(log_path)
            result = self._result(socket, unit, process.returncode, tail)
        except Exception as exc:  # noqa: BLE001 - a station error is this unit's ERROR, the line goes on
            log.exception("unit %s on socket %s", unit.serial, socket)
            result = self._unrun(socket, unit, f"station error: {type(exc).__name__}: {exc}")
        self._finish(socket, unit, result)

    def _follow(self, socket: str, unit: _Running, seen: tuple[set[int], set[int]]) -> None:
        """Publish the steps and measurements the run has stored since the last look."""
        from harness.store import UnknownRecord
        try:
            run = self.store.run_by_uuid(unit.run_uuid)
        except UnknownRecord:
            return
        steps, measured = seen
        for step in self.store.steps(run.id):
            if step.id not in steps:  # also a step that began and ended between two looks
                steps.add(step.id)
                with self._lock:
                    self._socket(socket).current_step = step.name
                self._publish("step_started", socket, step=step.name)
            for m in self.store.measurements(run.id, step_id=step.id):
                if m.id in measured:
                    continue
                measured.add(m.id)
                live = LiveMeasurement(m.step_name, m.name, _shown(m), m.verdict)
                with self._lock:
                    self._socket(socket).measurements.append(live)
                self._publish("measurement", socket, step=m.step_name, name=m.name, shown=live.shown,
                              verdict=m.verdict)
            if step.ended_at is not None and -step.id not in steps:
                steps.add(step.id)
                steps.add(-step.id)
                with self._lock:
                    state = self._socket(socket)
                    state.steps_done += 1
                    state.current_step = step.name
                self._publish("step_finished", socket, step=step.name, verdict=step.verdict or "")

    def _result(self, socket: str, unit: _Running, code: int, tail: str) -> UnitResult:
        from harness.store import UnknownRecord
        try:
            run = self.store.run_by_uuid(unit.run_uuid)
        except UnknownRecord:
            why = tail.strip().splitlines()[-1] if tail.strip() else f"hil run exited {code}"
            return self._unrun(socket, unit, f"not run (exit {code}): {why}")
        steps = self.store.steps(run.id)
        measurements = self.store.measurements(run.id)
        verdict = VERDICT_WORD.get(run.verdict or "", "ERROR")
        failed = next((s for s in steps if s.verdict in ("fail", "error", "aborted")), None)
        diagnosis = None
        if failed is not None:
            bad = next((m for m in measurements if m.step_id == failed.id and m.verdict in ("fail", "error")), None)
            diagnosis = (f"{bad.name}: {bad.diagnosis}" if bad is not None and bad.diagnosis
                         else failed.error or (f"{bad.name} = {bad.value}" if bad is not None else None))
        firmware = next((str(m.value) for m in measurements if m.name in ("bms_firmware", "master_firmware")
                         and m.value not in (None, "")), None)
        finished = datetime.now(timezone.utc)
        return UnitResult(
            serial=unit.serial, verdict=verdict, attempt=unit.attempt, attempts_allowed=self.line.retest.attempts,
            run_uuid=unit.run_uuid, station=self.name, socket=socket, operator=self.operator, plan=self.plan.name,
            plan_version=str(self.plan.version), firmware=firmware, started_at=unit.scanned_wall,
            finished_at=finished, takt_s=round(time.monotonic() - unit.scanned_mono, 3),
            failed_step=failed.name if failed is not None else None, diagnosis=diagnosis,
            measurements=tuple(MeasuredValue(m.step_name, m.name, m.value, m.unit or "", m.limits, m.verdict)
                               for m in measurements))

    def _unrun(self, socket: str, unit: _Running, why: str) -> UnitResult:
        return UnitResult(
            serial=unit.serial, verdict="ERROR", attempt=unit.attempt, attempts_allowed=self.line.retest.attempts,
            run_uuid=unit.run_uuid, station=self.name, socket=socket, operator=self.operator, plan=self.plan.name,
            plan_version=str(self.plan.version), firmware=None, started_at=unit.scanned_wall,
            finished_at=datetime.now(timezone.utc), takt_s=round(time.monotonic() - unit.scanned_mono, 3),
            failed_step=None, diagnosis=why)

    def _finish(self, socket: str, unit: _Running, result: UnitResult) -> None:
        notes = []
        if self.labels is not None:
            try:
                self.labels.send(result)
            except Exception as exc:  # noqa: BLE001 - LabelNotPrinted names the printer; the file is kept
                notes.append(f"label: {exc}")
                self._record("label", str(exc), serial=result.serial, run_uuid=result.run_uuid)
        if self.mes is not None:
            try:
                delivery = self.mes.deliver(result)
                if getattr(delivery, "outcome", "delivered") not in ("delivered", "written"):
                    notes.append(f"MES: {delivery.outcome}")
                    self._record("mes", f"{delivery.outcome}: {getattr(delivery, 'detail', '')}",
                                 serial=result.serial, run_uuid=result.run_uuid)
            except Exception as exc:  # noqa: BLE001
                notes.append(f"MES: {exc}")
                self._record("mes", str(exc), serial=result.serial, run_uuid=result.run_uuid)
        lock_reason = None
        with self._lock:
            self.results.append(result)
            state = self._socket(socket)
            state.phase, state.verdict, state.failed_step = DONE, result.verdict, result.failed_step
            state.diagnosis, state.takt_s = result.diagnosis, result.takt_s
            state.current_step = None
            state.message = "; ".join(notes + [self._next_action(result)])
            self._state.units_done += 1
            if result.verdict != "ABORTED":
                self._recent.append((result.serial, None if result.verdict == "PASS" else result.failed_step))
                lock_reason = streak_lock(self._recent, self.line.lock)
                if lock_reason and not self._state.lock.locked:
                    self._state.lock = LockState(True, lock_reason)
                else:
                    lock_reason = None
        self._record("unit", f"{result.verdict} attempt {result.attempt} of {result.attempts_allowed} on socket "
                     f"{socket}, takt {result.takt_s:.2f} s (scan to verdict)"
                     + (f", failed at {result.failed_step}" if result.failed_step else ""),
                     serial=result.serial, run_uuid=result.run_uuid)
        self._publish("unit_finished", socket, **{k: v for k, v in result.to_json().items() if k != "measurements"})
        if lock_reason:
            self._record("locked", lock_reason, serial=result.serial, run_uuid=result.run_uuid)
            self._publish("locked", None, reason=lock_reason)
        with self._lock:  # last: whoever waits for the socket to be free has seen every event of the unit
            self._running.pop(socket, None)

    def _next_action(self, result: UnitResult) -> str:
        """Where the unit goes now: what the retest policy would say to its next scan."""
        if result.verdict == "PASS":
            return "unit to packing; scan the next unit"
        decision = decide(result.serial, self.history(result.serial), self.line.retest, self.severity)
        if decision.allowed:
            return (f"may be retested (attempt {decision.attempt} of {self.line.retest.attempts}): "
                    "scan it again, or set it aside")
        return decision.refusal or "to the repair and analysis bench"

    # ------------------------------------------------------------------ lock and records
    def _restore_lock(self, calibration: dict[str, date]) -> None:
        """A lock engaged before a restart still holds; an overdue calibration locks at start."""
        reason = None
        for event in self._station_events():
            if event.kind in ("locked", "unlocked"):
                reason = event.text if event.kind == "locked" else None
                break  # newest first
        today = date.today()
        overdue = sorted(f"{role} (due {due.isoformat()})" for role, due in calibration.items() if due < today)
        if overdue and self.line.lock.calibration:
            reason = f"calibration overdue: {', '.join(overdue)} -- calibrate, then unlock"
            self._record("locked", reason)
        if reason:
            self._state.lock = LockState(True, reason)

    def _station_events(self) -> list[Any]:
        events = getattr(self.store, "station_events", None)
        return events(self.name) if events is not None else []

    def _record(self, kind: str, text: str, **fields: Any) -> None:
        record = getattr(self.store, "record_station_event", None)
        if record is None:
            return
        try:
            record(self.name, kind, text, **fields)
        except Exception:  # noqa: BLE001 - the event is also on the console and in the panel
            log.exception("could not store station event %s", kind)

    def _failed_step(self, run_id: int) -> str | None:
        return next((s.name for s in self.store.steps(run_id) if s.verdict in ("fail", "error", "aborted")), None)

    def _socket(self, name: str) -> SocketState:
        return next(s for s in self._state.sockets if s.name == name)

    def _publish(self, _kind: str, _socket: str | None, **data: Any) -> None:
        event = StationEvent(_kind, _socket, data)
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - a broken view must not stop the line
                log.exception("station listener failed on %s", _kind)


def _shown(m: Any) -> str:
    """A stored measurement as the run's console printed it (value, limits, verdict; no diagnosis)."""
    from harness.measure import Measurement
    from harness.reporting.summary import record_limits
    return Measurement(m.name, m.value, m.unit or "", record_limits(m), m.verdict, None, 0.0).line()


def _last_lines(path: Path, count: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-count:])
    except OSError:
        return ""
