"""The safety supervisor: whatever way a run ends, the bench ends de-energised, in bounded time.

It holds every instrument of the bench and brings them to their safe state -- load off, supply
off, contactor coils released -- on a failed step (unless the plan says otherwise), an error,
Ctrl-C, SIGTERM, a hung instrument (watchdog), or the normal end of the session.

Bounded in time: each instrument is made safe in a thread of its own, with a short bound
(``instrument_bound_s``), in two phases -- first what draws or feeds energy (load, supply), then
everything else (relays, meters, BMS) -- so contactors are not opened under a current the load
still draws, and one instrument that does not answer delays neither its peers nor the next phase
by more than the bound. A hung instrument is reported at once on the console (stderr) and in the
record; the total stays under ``2 * instrument_bound_s``.

Signals that cannot be lost: SIGINT and SIGTERM only *record* the request and raise
KeyboardInterrupt. If that exception is swallowed (a signal that lands in a garbage-collector
callback is printed as "Exception ignored" and dropped), the request is still pending: the next
bench wait, measurement or instrument call raises it again (:meth:`check_interrupt`), and a
supervisor thread makes the bench safe itself if the run has not unwound within ``unwind_bound_s``.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from instruments.roles import Instrument

log = logging.getLogger("bankhil.safety")

# Phase 1 stops drawing and feeding energy; phase 2 opens contactors and quiets the rest.
ENERGY_ROLES = ("load", "supply")
SAFE_ORDER = ("load", "supply", "actuator", "scanner", "dmm", "acir", "bms")
INSTRUMENT_BOUND_S = 1.2
UNWIND_BOUND_S = 2.0


class HungInstrument(Exception):
    """The watchdog found an instrument that stopped answering."""


@dataclass
class SafetyAction:
    at: float
    reason: str
    instrument: str
    ok: bool
    detail: str = ""
    seconds: float = 0.0


def _rank(role: str) -> int:
    for k, prefix in enumerate(SAFE_ORDER):
        if role.startswith(prefix):
            return k
    return len(SAFE_ORDER)


def _say(text: str) -> None:
    """Straight to the console: a hung instrument must be visible now, not when the step ends."""
    try:
        sys.__stderr__.write(f"safety: {text}\n")
        sys.__stderr__.flush()
    except Exception:  # noqa: BLE001 - no console is no reason to stop making the bench safe
        pass


@dataclass
class SafetySupervisor:
    instruments: dict[str, Instrument]
    clock_now: Callable[[], float] = time.monotonic
    record: Callable[[SafetyAction], None] | None = None
    actions: list[SafetyAction] = field(default_factory=list)
    tripped: str | None = None
    instrument_bound_s: float = INSTRUMENT_BOUND_S
    unwind_bound_s: float = UNWIND_BOUND_S
    interrupt: str | None = None  # the signal that asked the run to stop
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _previous_handlers: dict[int, object] = field(default_factory=dict)
    _watchdog: threading.Thread | None = None
    _stop_watchdog: threading.Event = field(default_factory=threading.Event)
    _unwound: threading.Event = field(default_factory=threading.Event)
    _closed: bool = False

    # -- the safe state --------------------------------------------------------------------------
    def _phases(self) -> list[list[tuple[str, Instrument]]]:
        ordered: list[tuple[str, Instrument]] = []
        for role, instrument in sorted(self.instruments.items(), key=lambda item: _rank(item[0])):
            shared = next((k for k, (_, i) in enumerate(ordered) if i is instrument), None)
            if shared is None:  # one instrument serving several roles is made safe once
                ordered.append((role, instrument))
            else:
                ordered[shared] = (f"{ordered[shared][0]}+{role}", instrument)
        first = [(r, i) for r, i in ordered if r.startswith(ENERGY_ROLES)]
        rest = [(r, i) for r, i in ordered if not r.startswith(ENERGY_ROLES)]
        return [phase for phase in (first, rest) if phase]

    def safe_state(self, reason: str) -> list[SafetyAction]:
        """De-energise every instrument, each on its own and within its bound; record it all.

        After :meth:`close` (the session's instruments are closed) it does nothing: a late
        Ctrl-C must not record failures against sessions that no longer exist.
        """
        if self._closed:
            return []
        done: list[SafetyAction] = []
        with self._lock:
            for phase in self._phases():
                done += self._make_safe(phase, reason)
        for action in done:
            self.actions.append(action)
            if action.ok:
                log.info("safe state (%s): %s ok", reason, action.instrument)
            else:
                log.warning("safe state (%s): %s FAILED: %s", reason, action.instrument, action.detail)
            if self.record is not None:
                try:
                    self.record(action)
                except Exception:  # noqa: BLE001 - recording must not stop the safing
                    log.exception("could not record a safety action")
        return done

    def _make_safe(self, phase: list[tuple[str, Instrument]], reason: str) -> list[SafetyAction]:
        results: dict[str, tuple[bool, str, float]] = {}
        started = time.monotonic()

        def one(role: str, instrument: Instrument) -> None:
            t0 = time.monotonic()
            try:
                instrument.safe_state()
                results[role] = (True, "", time.monotonic() - t0)
            except Exception as exc:  # noqa: BLE001 - reported; the others go on
                results[role] = (False, str(exc) or type(exc).__name__, time.monotonic() - t0)

        threads = {role: threading.Thread(target=one, args=(role, inst), name=f"safe-{role}", daemon=True)
                   for role, inst in phase}
        for thread in threads.values():
            thread.start()
        deadline = started + self.instrument_bound_s
        for thread in threads.values():
            thread.join(max(deadline - time.monotonic(), 0.0))
        out = []
        for role, _ in phase:
            ok, detail, seconds = results.get(role, (False, f"no answer within {self.instrument_bound_s:g} s "
                                                           "(hung); the others were made safe",
                                                     time.monotonic() - started))
            if not ok:
                _say(f"{role} FAILED to go safe ({reason}): {detail}")
            out.append(SafetyAction(self.clock_now_safe(), reason, role, ok, detail, seconds))
        return out

    def clock_now_safe(self) -> float:
        try:
            return self.clock_now()
        except Exception:  # noqa: BLE001 - a clock that cannot be read must not stop the safing
            return time.monotonic()

    def close(self) -> None:
        """The session's instruments are closed: nothing more to make safe."""
        self._closed = True
        self.acknowledge_interrupt()

    # -- signals ---------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """SIGINT and SIGTERM: record, raise KeyboardInterrupt, and keep the request pending until
        the run is seen unwinding (a swallowed exception is raised again at the next check)."""
        if threading.current_thread() is not threading.main_thread():
            return

        def _on_signal(signum: int, frame: object) -> None:
            name = signal.Signals(signum).name
            first = self.interrupt is None
            self.interrupt = self.interrupt or name
            self.tripped = self.tripped or name
            if first:
                self._start_unwind_guard(name)
            raise KeyboardInterrupt(name)

        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous_handlers[signum] = signal.signal(signum, _on_signal)

    def _start_unwind_guard(self, name: str) -> None:
        """If the run has not unwound within the bound, make the bench safe from this thread."""
        def guard() -> None:
            if not self._unwound.wait(self.unwind_bound_s):
                _say(f"{name}: the run did not unwind within {self.unwind_bound_s:g} s; "
                     "making the bench safe now")
                self.safe_state(f"{name} (the run did not unwind within {self.unwind_bound_s:g} s)")

        threading.Thread(target=guard, name="safety-unwind-guard", daemon=True).start()

    def acknowledge_interrupt(self) -> None:
        """The run is unwinding (pytest saw the interrupt, or the session is tearing down)."""
        self._unwound.set()

    def check_interrupt(self) -> None:
        """Raise KeyboardInterrupt again if a signal's exception was swallowed: called at every
        bench wait, measurement and instrument call of the main thread."""
        if (self.interrupt is not None and not self._unwound.is_set()
                and threading.current_thread() is threading.main_thread()):
            raise KeyboardInterrupt(self.interrupt)

    def restore_signal_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous_handlers.clear()

    # -- watchdog ---------------------------------------------------------------------------------
    def start_watchdog(self, period_s: float, probe: Callable[[str, Instrument], None]) -> None:
        """Every ``period_s`` (wall time) probe each instrument, each within the instrument bound;
        a failure or a probe that does not return in time trips the safe state."""

        def probe_bounded(role: str, instrument: Instrument) -> str | None:
            outcome: list[str | None] = []

            def run() -> None:
                try:
                    probe(role, instrument)
                    outcome.append(None)
                except Exception as exc:  # noqa: BLE001 - any failure is a hung instrument
                    outcome.append(str(exc) or type(exc).__name__)

            thread = threading.Thread(target=run, name=f"probe-{role}", daemon=True)
            thread.start()
            thread.join(self.instrument_bound_s + period_s)
            return outcome[0] if outcome else f"no answer within {self.instrument_bound_s + period_s:g} s"

        def _loop() -> None:
            while not self._stop_watchdog.wait(period_s):
                for role, instrument in list(self.instruments.items()):
                    problem = probe_bounded(role, instrument)
                    if problem is not None and not self._stop_watchdog.is_set():
                        reason = f"watchdog: {role} stopped answering ({problem})"
                        _say(reason)
                        self.safe_state(reason)  # safe first, then tell the running step
                        self.tripped = reason
                        return

        self._watchdog = threading.Thread(target=_loop, name="safety-watchdog", daemon=True)
        self._watchdog.start()

    def stop_watchdog(self) -> None:
        self._stop_watchdog.set()
        if self._watchdog is not None:
            self._watchdog.join(timeout=self.instrument_bound_s * 2 + 1)

    def check(self) -> None:
        """Raise if the watchdog tripped, so the running step stops."""
        if self.tripped and self.tripped.startswith("watchdog"):
            raise HungInstrument(self.tripped)
