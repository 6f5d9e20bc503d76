"""The twin's virtual clock: time moves only when the caller advances the twin."""

from __future__ import annotations


class TwinClock:
    """Seconds since the twin was built. Deterministic: no wall time ever enters the twin."""

    def __init__(self) -> None:
        self._now = 0.0

    @property
    def now(self) -> float:
        return self._now

    def advance_to(self, t: float) -> None:
        if t < self._now:
            raise ValueError(f"the clock cannot go back ({t} < {self._now})")
        self._now = t
