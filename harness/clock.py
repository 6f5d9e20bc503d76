"""The bench clock: virtual under emulation, wall time on hardware; check code cannot tell which.

Checks wait with ``bench.clock.wait(seconds)``. On hardware that sleeps. On an emulated bench it
advances the twin's virtual clock, so an hour of bench time takes seconds. Periodic duties that
must happen in *bench* time -- the inverter keep-alive above all -- are registered with
:meth:`BenchClock.every` and run at their period on either clock.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Protocol


class StepTimeout(Exception):
    """A step ran past its plan ``timeout`` (bench time at a wait, or wall time in a hung call):
    the step ends ERROR and the bench is made safe."""


@dataclass
class _Duty:
    period_s: float
    action: Callable[[], None]
    next_s: float


class BenchClock(ABC):
    """Seconds on the bench, and a way to let them pass."""

    def __init__(self) -> None:
        self._duties: list[_Duty] = []
        self._deadline: tuple[float, str] | None = None
        # raises a pending interrupt whose exception was swallowed (harness/supervisor.py)
        self.interrupt_check: Callable[[], None] | None = None

    @abstractmethod
    def now(self) -> float: ...

    def set_deadline(self, at_s: float | None, what: str = "") -> None:
        """Raise :class:`StepTimeout` from any wait that would pass bench time ``at_s``
        (None: no deadline). The harness sets it from a step's ``timeout``."""
        self._deadline = None if at_s is None else (at_s, what)

    def _check_deadline(self) -> None:
        if self.interrupt_check is not None:
            self.interrupt_check()
        if self._deadline is not None and self.now() >= self._deadline[0] - 1e-9:
            raise StepTimeout(self._deadline[1] or "step timeout")

    def _until_deadline(self, seconds: float) -> float:
        """The part of a wait of ``seconds`` that fits before the deadline."""
        if self._deadline is None:
            return seconds
        return min(seconds, max(self._deadline[0] - self.now(), 0.0))

    @abstractmethod
    def wait(self, seconds: float, resolution_s: float | None = None) -> None:
        """Let ``seconds`` of bench time pass; ``resolution_s`` bounds the emulator's step."""

    def every(self, period_s: float, action: Callable[[], None]) -> None:
        """Run ``action`` every ``period_s`` of bench time (for example a keep-alive)."""
        self._duties.append(_Duty(period_s, action, self.now()))

    def _run_due(self) -> None:
        now = self.now()
        for duty in self._duties:
            if now >= duty.next_s - 1e-9:
                duty.action()
                duty.next_s = now + duty.period_s

    def _next_duty_in(self) -> float:
        if not self._duties:
            return float("inf")
        return max(min(d.next_s for d in self._duties) - self.now(), 0.0)

    @property
    def emulated(self) -> bool:
        return False


class WallClock(BenchClock):
    """Bench time is wall time -- times ``scale`` against an emulator running faster than real
    time (``hil emulate --speed N`` writes ``time_scale: N`` in its station file): a rehearsal
    of a real bench whose timings still read in bench seconds."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"time scale {scale} (bench seconds per wall second) must be > 0")
        self.scale = float(scale)
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def now(self) -> float:
        return (time.monotonic() - self._t0) * self.scale

    def every(self, period_s: float, action: Callable[[], None]) -> None:
        super().every(period_s, action)
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="bench-duties", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(min(self._next_duty_in() / self.scale, 0.05)):
            self._run_due()

    def wait(self, seconds: float, resolution_s: float | None = None) -> None:
        self._check_deadline()
        allowed = self._until_deadline(max(seconds, 0.0))
        time.sleep(allowed / self.scale)
        if allowed < seconds:
            self._check_deadline()

    def stop(self) -> None:
        self._stop.set()


class Advancer(Protocol):
    def advance(self, seconds: float, max_step: float = 1.0) -> None: ...

    @property
    def now(self) -> float: ...


class VirtualClock(BenchClock):
    """Bench time of an emulated bench: time moves only when a check waits."""

    def __init__(self, bench: Advancer):
        self._bench = bench
        super().__init__()

    def now(self) -> float:
        return self._bench.now

    @property
    def emulated(self) -> bool:
        return True

    def wait(self, seconds: float, resolution_s: float | None = None) -> None:
        self._check_deadline()
        wanted = max(seconds, 0.0)
        target = self.now() + self._until_deadline(wanted)
        self._run_due()
        while target - self.now() > 1e-9:
            chunk = min(target - self.now(), max(self._next_duty_in(), 1e-6))
            self._bench.advance(chunk, max_step=resolution_s or 1.0)
            self._run_due()
            if self.interrupt_check is not None:
                self.interrupt_check()
        if self._deadline is not None:
            self._check_deadline()

    def stop(self) -> None:
        self._duties.clear()
