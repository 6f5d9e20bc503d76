"""Emulated Keysight 34465A digital multimeter: its SCPI dialect over a bench (choices: emulator/endpoints/scpi_instruments.py)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from emulator.endpoints.scpi.base import BenchDevice
from emulator.scpi_server import Args, ScpiError, format_reading, scpi

if TYPE_CHECKING:
    from emulator.bench import Capture, EmulatedBench, Input


class Keysight34465a(BenchDevice):
    """Keysight 34465A DMM on one bench input (``bench.wiring.dmm[name]``), DC volts only.

    Digitising: ``SAMP:SOUR TIM`` + ``SAMP:TIM`` + ``SAMP:COUN`` + ``TRIG:SOUR IMM`` + ``INIT``
    starts a bench capture; ``FETC?`` returns it (see the module note on a stalled clock).
    """

    model = "34465A"
    idn_format = "Keysight Technologies,{model},{serial},A.03.01-emulated"
    max_count = 1_000_000
    min_interval_s = 20e-6      # 50 kSa/s, the 34465A's digitising rate
    immediate_interval_s = 0.02  # SAMP:SOUR IMM: one reading per power-line cycle at NPLC 1
    stall_s = 0.2

    def __init__(self, bench: "EmulatedBench", serial: str, source: "Input"):
        super().__init__(bench, serial)
        self.source = source
        self.reset()

    def reset(self) -> None:
        self._abort()
        self.sample_count, self.sample_timer_s, self.sample_source = 1, 1e-3, "IMMEDIATE"
        self.readings: list[float] | None = None

    def _abort(self) -> None:
        capture: Capture | None = getattr(self, "capture", None)
        if capture is not None and not capture.done:
            with self.bench.lock:  # a shortened capture completes and leaves the twin's observers
                capture.cancel()
        self.capture = None

    def _read(self) -> float:
        return self.bench.read(self.source, noisy=True)

    @scpi("CONFigure:VOLTage[:DC]")
    def _conf(self, args: Args) -> None:
        args.expect(0, 2)
        self._abort()
        self.sample_count, self.sample_source, self.readings = 1, "IMMEDIATE", None

    @scpi("CONFigure:CURRent[:DC]", "CONFigure:VOLTage:AC", "CONFigure:RESistance",
          "CONFigure:FRESistance", "CONFigure:TEMPerature")
    def _conf_other(self, args: Args) -> None:
        raise ScpiError(-221, "emulated DMM is wired for DC volts only")

    @scpi("CONFigure?")
    def _conf_q(self, args: Args) -> str:
        args.expect(0)
        return '"VOLT +1.00000000E+01,+3.00000000E-06"'

    @scpi("MEASure:VOLTage[:DC]?")
    def _meas(self, args: Args) -> str:
        args.expect(0, 2)
        return format_reading(self._read())

    @scpi("SAMPle:COUNt")
    def _samp_coun(self, args: Args) -> None:
        args.expect(1)
        self.sample_count = int(args.number(0, 1, self.max_count, default=1))

    @scpi("SAMPle:COUNt?")
    def _samp_coun_q(self, args: Args) -> str:
        args.expect(0)
        return f"{self.sample_count:+d}"

    @scpi("SAMPle:TIMer")
    def _samp_tim(self, args: Args) -> None:
        args.expect(1)
        self.sample_timer_s = args.number(0, self.min_interval_s, 3600.0, default=1e-3)

    @scpi("SAMPle:TIMer?")
    def _samp_tim_q(self, args: Args) -> str:
        args.expect(0)
        return format_reading(self.sample_timer_s)

    @scpi("SAMPle:SOURce")
    def _samp_sour(self, args: Args) -> None:
        args.expect(1)
        self.sample_source = args.choice(0, "IMMediate", "TIMer")

    @scpi("SAMPle:SOURce?")
    def _samp_sour_q(self, args: Args) -> str:
        args.expect(0)
        return "TIM" if self.sample_source == "TIMER" else "IMM"

    @scpi("TRIGger:SOURce")
    def _trig_sour(self, args: Args) -> None:
        args.expect(1)
        source = args.choice(0, "IMMediate", "BUS", "EXTernal", "INTernal")
        if source != "IMMEDIATE":
            raise ScpiError(-221, f"emulated DMM supports TRIG:SOUR IMM only, not {source}")

    @scpi("TRIGger:SOURce?")
    def _trig_sour_q(self, args: Args) -> str:
        args.expect(0)
        return "IMM"

    @scpi("TRIGger:COUNt")
    def _trig_coun(self, args: Args) -> None:
        args.expect(1)
        if args.number(0, 1, 1e6, default=1) != 1:
            raise ScpiError(-221, "emulated DMM supports TRIG:COUN 1 only")

    @scpi("INITiate[:IMMediate]")
    def _init(self, args: Args) -> None:
        args.expect(0)
        if self.capture is not None and not self.capture.done:
            raise ScpiError(-213, "a capture is in progress")
        interval = self.sample_timer_s if self.sample_source == "TIMER" else self.immediate_interval_s
        self.readings = None
        self.capture = self.bench.capture(self.source, interval, self.sample_count)

    @scpi("FETCh?")
    def _fetch(self, args: Args) -> str:
        args.expect(0)
        if self.capture is not None:
            if not self._wait(self.capture):
                raise ScpiError(-230, "capture not complete and bench time is not moving")
            with self.bench.lock:
                self.readings = list(self.capture.samples[:self.capture.count])
            self.capture = None
        if self.readings is None:
            raise ScpiError(-230, "no readings: INIT first")
        return ",".join(format_reading(v) for v in self.readings)

    @scpi("READ?")
    def _read_q(self, args: Args) -> str:
        self._init(args)
        return self._fetch(args)

    @scpi("DATA:POINts?")
    def _points(self, args: Args) -> str:
        args.expect(0)
        if self.capture is not None:
            with self.bench.lock:
                return f"{len(self.capture.samples):+d}"
        return f"{len(self.readings or []):+d}"

    @scpi("ABORt")
    def _abor(self, args: Args) -> None:
        args.expect(0)
        self._abort()
        self.readings = None

    def _wait(self, capture: "Capture") -> bool:
        """Block while the capture fills and bench time moves; False if time stands still."""
        last_t, last_change = None, time.monotonic()
        while True:
            with self.bench.lock:
                done, now_t = capture.done, self.bench.now
            if done:
                return True
            if now_t != last_t:
                last_t, last_change = now_t, time.monotonic()
            elif time.monotonic() - last_change > self.stall_s:
                return False
            if self.closing.wait(0.001):
                return False
