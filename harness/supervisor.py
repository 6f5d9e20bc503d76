"""The safety supervisor: whatever way a run ends, the bench ends de-energised.

It holds every instrument of the bench and brings them to their safe state -- load off, supply
off, contactor coils released -- on a failed test (if the plan asks), an exception, Ctrl-C,
SIGTERM, a hung instrument (watchdog), or the normal end of the session. Each instrument is
made safe on its own, so one that fails to answer does not keep the others energised. What it
did is recorded (log, result store, report) with the reason.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from instruments.roles import Instrument

log = logging.getLogger("bankhil.safety")

# Order matters: stop drawing and feeding energy before opening contactors under current.
SAFE_ORDER = ("load", "supply", "actuator", "scanner", "dmm", "acir", "bms")


class HungInstrument(Exception):
    """The watchdog found an instrument that stopped answering."""


@dataclass
class SafetyAction:
    at: float
    reason: str
    instrument: str
    ok: bool
    detail: str = ""


@dataclass
class SafetySupervisor:
    instruments: dict[str, Instrument]
    clock_now: Callable[[], float] = time.monotonic
    record: Callable[[SafetyAction], None] | None = None
    actions: list[SafetyAction] = field(default_factory=list)
    tripped: str | None = None
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _previous_handlers: dict[int, object] = field(default_factory=dict)
    _watchdog: threading.Thread | None = None
    _stop_watchdog: threading.Event = field(default_factory=threading.Event)

    def _ordered(self) -> list[tuple[str, Instrument]]:
        def rank(role: str) -> int:
            for k, prefix in enumerate(SAFE_ORDER):
                if role.startswith(prefix):
                    return k
            return len(SAFE_ORDER)
        return sorted(self.instruments.items(), key=lambda item: rank(item[0]))

    def safe_state(self, reason: str) -> list[SafetyAction]:
        """De-energise every instrument, each on its own; record what happened."""
        done: list[SafetyAction] = []
        with self._lock:
            for role, instrument in self._ordered():
                try:
                    instrument.safe_state()
                    action = SafetyAction(self.clock_now(), reason, role, True)
                except Exception as exc:  # noqa: BLE001 - the next instrument must still be made safe
                    action = SafetyAction(self.clock_now(), reason, role, False, str(exc))
                done.append(action)
                self.actions.append(action)
                log.warning("safe state (%s): %s %s%s", reason, role, "ok" if action.ok else "FAILED",
                            f": {action.detail}" if action.detail else "")
                if self.record is not None:
                    try:
                        self.record(action)
                    except Exception:  # noqa: BLE001 - recording must not stop the safing
                        log.exception("could not record a safety action")
        return done

    # -- signals --------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """SIGTERM becomes KeyboardInterrupt, so the run unwinds through its finalisers."""
        if threading.current_thread() is not threading.main_thread():
            return

        def _on_term(signum: int, frame: object) -> None:
            self.tripped = self.tripped or "SIGTERM"
            raise KeyboardInterrupt("SIGTERM")

        self._previous_handlers[signal.SIGTERM] = signal.signal(signal.SIGTERM, _on_term)

    def restore_signal_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous_handlers.clear()

    # -- watchdog ---------------------------------------------------------------------------------
    def start_watchdog(self, period_s: float, probe: Callable[[str, Instrument], None]) -> None:
        """Every ``period_s`` (wall time) probe each instrument; a failure trips the safe state."""

        def _loop() -> None:
            while not self._stop_watchdog.wait(period_s):
                for role, instrument in list(self.instruments.items()):
                    try:
                        probe(role, instrument)
                    except Exception as exc:  # noqa: BLE001 - any failure is a hung instrument
                        reason = f"watchdog: {role} stopped answering ({exc})"
                        self.safe_state(reason)  # safe first, then tell the running step
                        self.tripped = reason
                        return

        self._watchdog = threading.Thread(target=_loop, name="safety-watchdog", daemon=True)
        self._watchdog.start()

    def stop_watchdog(self) -> None:
        self._stop_watchdog.set()
        if self._watchdog is not None:
            self._watchdog.join(timeout=5)

    def check(self) -> None:
        """Raise if the watchdog tripped, so the running step stops."""
        if self.tripped and self.tripped.startswith("watchdog"):
            raise HungInstrument(self.tripped)
