"""Keysight 34465A DMM: DC volts, and a timed digitise mode for transients (inrush, Vds)."""

from __future__ import annotations

from instruments.roles import Dmm, Waveform
from instruments.scpi import (INT, WORD, ScpiInstrument, control, floats, in_range, int_range,
                              measurement, one_of)

MAX_SAMPLES = 1_000_000


class Keysight34465a(ScpiInstrument, Dmm):
    """DC volts; ``arm_digitise`` / ``fetch_waveform`` for a timed capture.

    The waveform's ``t0_s`` is 0 at the trigger (``INIT``): the DMM does not know bench time.
    """

    sample_count = control("SAMP:COUN?", "SAMP:COUN {}", "Samples per trigger", codec=INT,
                           validator=int_range(1, MAX_SAMPLES))
    sample_interval = control("SAMP:TIM?", "SAMP:TIM {}", "Sample interval, s",
                              validator=in_range(1e-6, 3600.0))
    sample_source = control("SAMP:SOUR?", "SAMP:SOUR {}", "Sample pacing", codec=WORD,
                            validator=one_of("IMM", "TIM"))
    trigger_source = control("TRIG:SOUR?", "TRIG:SOUR {}", "Trigger source", codec=WORD,
                             validator=one_of("IMM", "BUS", "EXT", "INT"))
    reading = measurement("MEAS:VOLT:DC?", "One DC voltage reading, V")

    _armed: tuple[float, int] | None = None

    def measure_voltage(self) -> float:
        return float(self.reading)

    def arm_digitise(self, interval_s: float, count: int) -> None:
        self.write("CONF:VOLT:DC")
        self.sample_source = "TIM"
        self.sample_count = count
        self.sample_interval = interval_s
        self.trigger_source = "IMM"
        self.write("INIT")
        self._armed = (float(interval_s), int(count))

    def fetch_waveform(self) -> Waveform:
        """The armed capture; waits as long as the capture takes (plus the timeout)."""
        if self._armed is None:
            raise self._error("FETC?", "no capture armed (arm_digitise first)")
        interval, count = self._armed
        with self.longer_timeout(interval * count):
            samples = self.query_value("FETC?", floats(count))
        return Waveform(interval_s=interval, samples=samples, unit="V")

    def safe_state(self) -> None:
        """Abort a capture in progress (harmless when idle)."""
        self.write("ABOR")
        self._armed = None
