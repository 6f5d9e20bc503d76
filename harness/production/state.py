"""What the station shows: the state of each socket and of the station lock, and the events
that change it -- the one interface the console loop and the operator panel both drive.

Why an explicit state plus events: the panel (a browser, over a websocket) and the console
show the same station; neither owns it. The station (``harness.production.station.Station``)
changes :class:`StationState` and publishes a :class:`StationEvent` for each change; a view
renders the state it gets from :meth:`StationControl.snapshot` and then follows the events.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol

# socket phases, in the order a unit goes through them
IDLE, CHECKING, RUNNING, DONE = "idle", "checking", "running", "done"


@dataclass
class LiveMeasurement:
    step: str
    name: str
    shown: str          # "13.057 V [12 V .. 14.6 V] PASS", as the console prints it
    verdict: str


@dataclass
class SocketState:
    """One socket (test position) of the station."""

    name: str
    phase: str = IDLE
    serial: str | None = None
    attempt: int = 0
    attempts_allowed: int = 0
    history: str = ""                   # "failed inrush on 2026-11-30, retest 2 of 3"
    current_step: str | None = None
    steps_done: int = 0
    steps_total: int = 0
    measurements: list[LiveMeasurement] = field(default_factory=list)
    verdict: str | None = None          # PASS / FAIL / ERROR / ABORTED / RECORDED / REFUSED
    failed_step: str | None = None
    diagnosis: str | None = None
    takt_s: float | None = None
    message: str | None = None          # what the operator must do next, or why a serial was refused


@dataclass
class LockState:
    locked: bool = False
    reason: str | None = None           # "calibration of acir overdue since 2026-11-01", "5 consecutive FAIL at inrush"


@dataclass
class StationState:
    station: str
    plan: str
    plan_version: str
    serial_pattern: str | None
    operator: str
    sockets: list[SocketState]
    lock: LockState = field(default_factory=LockState)
    units_done: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StationEvent:
    """A change: ``kind`` is one of ``serial_refused``, ``unit_started``, ``step_started``,
    ``measurement``, ``step_finished``, ``unit_finished``, ``locked``, ``unlocked``,
    ``stopped``; ``socket`` names the socket (None for station-wide events); ``data`` holds the
    event's fields (JSON-ready)."""

    kind: str
    socket: str | None
    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "socket": self.socket, "data": self.data}


class SerialRefused(ValueError):
    """A scanned serial the station will not test (pattern, lock, socket busy, attempts used)."""


class StationControl(Protocol):
    """What a view (console, panel) may do with the station."""

    def snapshot(self) -> StationState:
        """A copy of the whole state now."""

    def submit_serial(self, socket: str, serial: str) -> None:
        """A scanned serial for ``socket``: starts the unit, or raises :class:`SerialRefused`
        with the sentence the operator reads."""

    def unlock(self, reason: str, operator: str) -> None:
        """Lift the station lock; the reason is stored. ValueError for an empty reason."""

    def subscribe(self, listener: Callable[[StationEvent], None]) -> Callable[[], None]:
        """Call ``listener`` for every event from now on (from the station's threads); returns
        the function that unsubscribes it."""

    def stop(self, reason: str) -> None:
        """End the loop: running units are interrupted and their benches made safe."""
