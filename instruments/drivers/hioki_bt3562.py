"""Hioki BT3562 battery HiTester: 1 kHz AC resistance and voltage of one module."""

from __future__ import annotations

from instruments.roles import AcIrMeter
from instruments.scpi import ON_OFF, WORD, ScpiInstrument, control, floats, one_of


class HiokiBt3562(ScpiInstrument, AcIrMeter):
    """``:FETC?`` in RV mode answers ``R,V``.

    The meter is put in RV mode and free-run the first time it is read (and again after a
    safe state), since ``:FETC?`` in another mode answers one value, and with free-run off
    answers a stale one.
    """

    function = control(":FUNC?", ":FUNC {}", "Measured quantities", codec=WORD,
                       validator=one_of("RV", "RES", "VOLT"))
    free_run = control(":INIT:CONT?", ":INIT:CONT {}", "Continuous measurement", codec=ON_OFF)

    _configured = False

    def measure(self) -> tuple[float, float]:
        if not self._configured:
            self.function = "RV"
            self.free_run = True
            self._configured = True
        ohm, volts = self.query_value(":FETC?", floats(2))
        return ohm, volts

    def safe_state(self) -> None:
        """Stop free-run measuring (the meter stops driving its test current)."""
        self.free_run = False
        self._configured = False
