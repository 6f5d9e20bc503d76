"""Emulated Keysight 34465A digital multimeter: its SCPI dialect over a bench (choices: emulator/endpoints/scpi_instruments.py).

The dialect and its limits follow the *Keysight Truevolt Series Operating and Service Guide*
(SCPI Programming Reference); the meter is emulated with the DIG option fitted (its 20 us
sampling is what the plans' captures use). Readings come from the bench: one at a time
(``bench.read``) or as a capture of bench time (``bench.capture``).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from emulator.endpoints.scpi.base import BenchDevice, bool_text
from emulator.scpi_server import (ERROR_QUEUE_LENGTH, SCPI_ERRORS, Args, ScpiError,
                                  format_reading, scpi)

if TYPE_CHECKING:
    from emulator.bench import Capture, EmulatedBench, Input

# ------------------------------------------------------------------ the meter's limits, as data
RANGES_V = (0.1, 1.0, 10.0, 100.0, 1000.0)      # guide: [SENSe:]VOLTage[:DC]:RANGe
# readings to 120 % of range (autorange moves up above 120 %); the 1000 V range reads to its
# input rating only
FULL_SCALE_V = {0.1: 0.12, 1.0: 1.2, 10.0: 12.0, 100.0: 120.0, 1000.0: 1000.0}
OVERLOAD_V = 9.9e37
# guide: [SENSe:]VOLTage[:DC]:NPLC, 34465A/70A with the DIG option (without: from 0.02)
NPLC_CHOICES = (0.001, 0.002, 0.006, 0.02, 0.06, 0.2, 1.0, 10.0, 100.0)
DEFAULT_NPLC = 10.0
# guide: [SENSe:]...:APERture, with the DIG option 20 us to 1 s (without: 200 us), 2 us resolution
APERTURE_LIMITS_S = (20e-6, 1.0)
APERTURE_STEP_S = 2e-6
DEFAULT_APERTURE_S = 0.1
LINE_HZ = 50.0                                   # NPLC -> seconds (the meter measures its line)
# SAMP:TIM MIN: "the sample interval is always greater than the sampling time", which depends on
# integration time, autozero and autorange (guide, SAMPle:TIMer). Modelled as: the integration
# time, doubled with autozero on (a zero reading per reading: "turn autozero off ... will more
# than double your reading speeds", 34410A/11A guide), plus one range change per sample with
# autorange on (as the guide's MIN assumes), never below the 20 us absolute minimum.
SAMPLE_TIME_MIN_S = 20e-6
AUTOZERO_FACTOR = 2.0
AUTORANGE_CHANGE_S = 2e-3                        # assumed: one range change (not in the guide)
MAX_SAMPLE_TIMER_S = 3600.0
MAX_TRIGGER_DELAY_S = 3600.0
DEFAULT_SAMPLE_TIMER_S = 1.0                     # guide: 1 s after *RST
MAX_SAMPLES = 1_000_000
# standard SCPI texts this meter uses that the shared table has not got
OWN_ERRORS = {-211: "Trigger ignored"}


def _nplc_choice(value: float) -> float:
    """The allowed NPLC at or above ``value`` (assumed rounding: up, to integrate at least as long)."""
    for choice in NPLC_CHOICES:
        if value <= choice * (1 + 1e-9):
            return choice
    return NPLC_CHOICES[-1]


def _range_for(volts: float) -> float:
    """The smallest range holding ``volts``, as ``CONF``/``VOLT:RANG`` pick it; -222 above 1000 V."""
    for full_scale in RANGES_V:
        if abs(volts) <= full_scale * (1 + 1e-9):
            return full_scale
    raise ScpiError(-222, f"{volts:g} V is above the 1000 V range")


class Keysight34465a(BenchDevice):
    """Keysight 34465A DMM on one bench input (``bench.wiring.dmm[name]``), DC volts only.

    Digitising: ``SAMP:SOUR TIM`` + ``SAMP:TIM`` + ``SAMP:COUN`` + ``INIT`` starts a bench capture
    at ``TRIG:SOUR IMM``, or waits for ``*TRG`` at ``BUS``; ``FETC?`` / ``*OPC?`` wait for it,
    ``R?`` takes what is in reading memory as a definite-length block. With a fixed range a
    sample beyond 120 % of it is the overload value 9.9E37. ``SAMP:TIM`` below the sampling time
    the configuration allows is a ``-221`` settings conflict and the timer is raised to it, as on
    the meter (a capture stretched, not refused).

    Not emulated: level triggering (``TRIG:SOUR INT`` is accepted, ``INIT`` with it is ``-221``),
    the rear Ext Trig input (``EXT`` waits forever; ``FETC?`` then answers ``-230``), pre-trigger
    samples, a trigger delay finer than the sample interval (the delay drops whole samples).
    """

    model = "34465A"
    idn_format = "Keysight Technologies,{model},{serial},A.03.01-emulated"
    max_count = MAX_SAMPLES
    min_interval_s = SAMPLE_TIME_MIN_S
    stall_s = 0.2

    def __init__(self, bench: "EmulatedBench", serial: str, source: "Input"):
        super().__init__(bench, serial)
        self.source = source
        self.capture: Capture | None = None
        self.reset()

    # -- state ------------------------------------------------------------------------------
    def reset(self) -> None:
        """``*RST``: autorange 10 V, NPLC 10, autozero on, immediate trigger, 1 sample."""
        self._abort()
        self.range_v, self.autorange = 10.0, True
        self.nplc, self.aperture_s, self.aperture_on = DEFAULT_NPLC, DEFAULT_APERTURE_S, False
        self.autozero = True
        self.trigger_source, self.trigger_slope, self.trigger_level_v = "IMMEDIATE", "NEGATIVE", 0.0
        self.trigger_delay_s, self.trigger_delay_auto = 0.0, True
        self.sample_count, self.sample_timer_s, self.sample_source = 1, DEFAULT_SAMPLE_TIMER_S, "IMMEDIATE"
        self.memory: list[float] = []
        self.waiting = False         # INIT done, waiting for *TRG / Ext Trig
        self._skip = 0               # samples of the capture standing for the trigger delay
        self._copied = 0             # samples of the capture already moved to reading memory

    def _abort(self) -> None:
        capture: Capture | None = getattr(self, "capture", None)
        if capture is not None and not capture.done:
            with self.bench.lock:  # a shortened capture completes and leaves the twin's observers
                capture.cancel()
        self.capture = None
        self.waiting = False

    def push_error(self, code: int, detail: str = "") -> None:
        """The shared queue, with this meter's own texts for codes the shared table lacks."""
        if code not in OWN_ERRORS:
            super().push_error(code, detail)
            return
        text = OWN_ERRORS[code] + (f";{detail}" if detail else "")
        with self.lock:
            if len(self.errors) >= ERROR_QUEUE_LENGTH:
                self.errors[-1] = (-350, SCPI_ERRORS[-350])
            else:
                self.errors.append((code, text))

    @property
    def integration_s(self) -> float:
        return self.aperture_s if self.aperture_on else self.nplc / LINE_HZ

    def shortest_interval_s(self) -> float:
        """``SAMP:TIM? MIN`` for the present configuration (see the module's model)."""
        sampling = self.integration_s * (AUTOZERO_FACTOR if self.autozero else 1.0)
        if self.autorange:
            sampling += AUTORANGE_CHANGE_S
        return max(SAMPLE_TIME_MIN_S, sampling)

    def _reading(self, volts: float) -> float:
        """What the meter reports for ``volts`` on the present range: the value or +/-9.9E37."""
        full_scale = FULL_SCALE_V[RANGES_V[-1] if self.autorange else self.range_v]
        return volts if abs(volts) <= full_scale else math.copysign(OVERLOAD_V, volts)

    # -- configuration ----------------------------------------------------------------------
    def _range_arg(self, args: Args, k: int) -> None:
        """A range parameter: a voltage, MIN, MAX, DEF or AUTO (autorange)."""
        text = args.items[k].upper()
        if text in ("AUTO", "DEF", "DEFAULT"):
            self.autorange = True
            return
        if text in ("MIN", "MINIMUM", "MAX", "MAXIMUM"):
            self.range_v = RANGES_V[0] if text.startswith("MIN") else RANGES_V[-1]
        else:
            self.range_v = _range_for(args.number(k, -1e4, 1e4))
        self.autorange = False

    @scpi("CONFigure[:VOLTage][:DC]")
    def _conf(self, args: Args) -> None:
        """Preset DC volts: range (autorange if none), NPLC 10 (MIN/MAX resolution: 100 / 0.001),
        autozero on, trigger IMM with automatic delay, one sample; the measurement is aborted."""
        args.expect(0, 2)
        self._abort()
        if len(args) >= 1:
            self._range_arg(args, 0)
        else:
            self.autorange = True
        self.nplc, self.aperture_on = DEFAULT_NPLC, False
        if len(args) == 2:
            resolution = args.items[1].upper()
            if resolution in ("MIN", "MINIMUM"):
                self.nplc = NPLC_CHOICES[-1]
            elif resolution in ("MAX", "MAXIMUM"):
                self.nplc = NPLC_CHOICES[0]
            elif resolution not in ("DEF", "DEFAULT"):
                args.number(1, 0.0, 1e4)  # a resolution in volts: accepted, NPLC stays 10
        self.autozero = self.nplc >= 1.0  # guide: CONF turns autozero off below 1 PLC
        self.trigger_source, self.trigger_delay_auto = "IMMEDIATE", True
        self.sample_count, self.sample_source, self.memory = 1, "IMMEDIATE", []

    @scpi("CONFigure:CURRent[:DC]", "CONFigure:CURRent:AC", "CONFigure[:VOLTage]:AC",
          "CONFigure:RESistance", "CONFigure:FRESistance", "CONFigure:TEMPerature")
    def _conf_other(self, args: Args) -> None:
        raise ScpiError(-221, "emulated DMM is wired for DC volts only")

    @scpi("CONFigure?")
    def _conf_q(self, args: Args) -> str:
        args.expect(0)
        volts = RANGES_V[1] * 10 if self.autorange else self.range_v
        return f'"VOLT {format_reading(volts)},{format_reading(volts * 1e-6)}"'

    @scpi("MEASure[:VOLTage][:DC]?")
    def _meas(self, args: Args) -> str:
        self._conf(args)
        return format_reading(self._reading(self.bench.read(self.source, noisy=True)))

    @scpi("[SENSe:]VOLTage[:DC]:RANGe")
    def _rang(self, args: Args) -> None:
        args.expect(1)
        self._range_arg(args, 0)

    @scpi("[SENSe:]VOLTage[:DC]:RANGe?")
    def _rang_q(self, args: Args) -> str:
        args.expect(0, 1)
        if len(args):
            word = args.choice(0, "MINimum", "MAXimum", "DEFault")
            return format_reading({"MINIMUM": RANGES_V[0], "MAXIMUM": RANGES_V[-1], "DEFAULT": 10.0}[word])
        return format_reading(self.range_v)

    @scpi("[SENSe:]VOLTage[:DC]:RANGe:AUTO")
    def _rang_auto(self, args: Args) -> None:
        args.expect(1)
        if args.items[0].upper() == "ONCE":
            self.autorange = False  # one autorange now, then fixed: the twin's level picks it
            self.range_v = _range_for(min(self.bench.read(self.source, noisy=False), RANGES_V[-1]))
        else:
            self.autorange = args.boolean(0)

    @scpi("[SENSe:]VOLTage[:DC]:RANGe:AUTO?")
    def _rang_auto_q(self, args: Args) -> str:
        args.expect(0)
        return bool_text(self.autorange)

    @scpi("[SENSe:]VOLTage[:DC]:NPLCycles")
    def _nplc(self, args: Args) -> None:
        args.expect(1)
        self.nplc = _nplc_choice(args.number(0, NPLC_CHOICES[0], NPLC_CHOICES[-1], default=DEFAULT_NPLC))
        self.aperture_on = False

    @scpi("[SENSe:]VOLTage[:DC]:NPLCycles?")
    def _nplc_q(self, args: Args) -> str:
        args.expect(0, 1)
        if len(args):
            return format_reading(args.number(0, NPLC_CHOICES[0], NPLC_CHOICES[-1], default=DEFAULT_NPLC))
        return format_reading(self.nplc)

    @scpi("[SENSe:]VOLTage[:DC]:APERture")
    def _aper(self, args: Args) -> None:
        args.expect(1)
        value = args.number(0, *APERTURE_LIMITS_S, default=DEFAULT_APERTURE_S)
        self.aperture_s = round(value / APERTURE_STEP_S) * APERTURE_STEP_S
        self.aperture_on = True

    @scpi("[SENSe:]VOLTage[:DC]:APERture?")
    def _aper_q(self, args: Args) -> str:
        args.expect(0, 1)
        if len(args):
            return format_reading(args.number(0, *APERTURE_LIMITS_S, default=DEFAULT_APERTURE_S))
        return format_reading(self.aperture_s)

    @scpi("[SENSe:]VOLTage[:DC]:APERture:ENABled")
    def _aper_enab(self, args: Args) -> None:
        args.expect(1)
        self.aperture_on = args.boolean(0)

    @scpi("[SENSe:]VOLTage[:DC]:APERture:ENABled?")
    def _aper_enab_q(self, args: Args) -> str:
        args.expect(0)
        return bool_text(self.aperture_on)

    @scpi("[SENSe:]VOLTage[:DC]:ZERO:AUTO")
    def _zero(self, args: Args) -> None:
        args.expect(1)
        self.autozero = False if args.items[0].upper() == "ONCE" else args.boolean(0)

    @scpi("[SENSe:]VOLTage[:DC]:ZERO:AUTO?")
    def _zero_q(self, args: Args) -> str:
        args.expect(0)
        return bool_text(self.autozero)

    # -- trigger and sampling ---------------------------------------------------------------
    @scpi("TRIGger:SOURce")
    def _trig_sour(self, args: Args) -> None:
        args.expect(1)
        self.trigger_source = args.choice(0, "IMMediate", "BUS", "EXTernal", "INTernal")

    @scpi("TRIGger:SOURce?")
    def _trig_sour_q(self, args: Args) -> str:
        args.expect(0)
        return self.trigger_source[:3]

    @scpi("TRIGger:SLOPe")
    def _trig_slop(self, args: Args) -> None:
        args.expect(1)
        self.trigger_slope = args.choice(0, "POSitive", "NEGative")

    @scpi("TRIGger:SLOPe?")
    def _trig_slop_q(self, args: Args) -> str:
        args.expect(0)
        return self.trigger_slope[:3]

    @scpi("TRIGger:LEVel")
    def _trig_lev(self, args: Args) -> None:
        args.expect(1)
        full_scale = RANGES_V[-1] * 1.2 if self.autorange else self.range_v * 1.2
        self.trigger_level_v = args.number(0, -full_scale, full_scale, default=0.0)

    @scpi("TRIGger:LEVel?")
    def _trig_lev_q(self, args: Args) -> str:
        args.expect(0)
        return format_reading(self.trigger_level_v)

    @scpi("TRIGger:DELay")
    def _trig_del(self, args: Args) -> None:
        args.expect(1)
        self.trigger_delay_s = args.number(0, 0.0, MAX_TRIGGER_DELAY_S, default=0.0)
        self.trigger_delay_auto = False

    @scpi("TRIGger:DELay?")
    def _trig_del_q(self, args: Args) -> str:
        args.expect(0)
        return format_reading(0.0 if self.trigger_delay_auto else self.trigger_delay_s)

    @scpi("TRIGger:DELay:AUTO")
    def _trig_del_auto(self, args: Args) -> None:
        args.expect(1)
        self.trigger_delay_auto = args.boolean(0)

    @scpi("TRIGger:DELay:AUTO?")
    def _trig_del_auto_q(self, args: Args) -> str:
        args.expect(0)
        return bool_text(self.trigger_delay_auto)

    @scpi("TRIGger:COUNt")
    def _trig_coun(self, args: Args) -> None:
        args.expect(1)
        if args.number(0, 1, 1e6, default=1) != 1:
            raise ScpiError(-221, "emulated DMM supports TRIG:COUN 1 only")

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
        """0 to 3600 s (beyond: -222); below the sampling time the timer is raised to it with
        -221 when it would apply (timed source, several samples), as the guide describes."""
        args.expect(1)
        word = args.items[0].upper()
        shortest = self.shortest_interval_s()
        if word in ("MIN", "MINIMUM"):
            self.sample_timer_s = shortest
            return
        if word in ("MAX", "MAXIMUM"):
            self.sample_timer_s = MAX_SAMPLE_TIMER_S
            return
        self.sample_timer_s = args.number(0, 0.0, MAX_SAMPLE_TIMER_S, default=DEFAULT_SAMPLE_TIMER_S)
        if self.sample_timer_s < shortest * (1 - 1e-9) and self._timed():
            self.sample_timer_s = shortest
            raise ScpiError(-221, f"cannot meet requested timing; SAMP:TIM changed to {shortest:g}")

    @scpi("SAMPle:TIMer?")
    def _samp_tim_q(self, args: Args) -> str:
        args.expect(0, 1)
        if len(args):
            word = args.choice(0, "MINimum", "MAXimum", "DEFault")
            return format_reading({"MINIMUM": self.shortest_interval_s(), "MAXIMUM": MAX_SAMPLE_TIMER_S,
                                   "DEFAULT": DEFAULT_SAMPLE_TIMER_S}[word])
        return format_reading(self.sample_timer_s)

    @scpi("SAMPle:SOURce")
    def _samp_sour(self, args: Args) -> None:
        args.expect(1)
        self.sample_source = args.choice(0, "IMMediate", "TIMer")

    @scpi("SAMPle:SOURce?")
    def _samp_sour_q(self, args: Args) -> str:
        args.expect(0)
        return "TIM" if self.sample_source == "TIMER" else "IMM"

    def _timed(self) -> bool:
        return self.sample_source == "TIMER" and self.sample_count > 1

    # -- measuring --------------------------------------------------------------------------
    @scpi("INITiate[:IMMediate]")
    def _init(self, args: Args) -> None:
        args.expect(0)
        if (self.capture is not None and not self.capture.done) or self.waiting:
            raise ScpiError(-213, "a measurement is in progress")
        if self.trigger_source == "INTERNAL":
            raise ScpiError(-221, "level triggering (TRIG:SOUR INT) is not emulated")
        self.memory, self.capture, self._copied = [], None, 0
        if self._timed() and self.sample_timer_s < self.shortest_interval_s() * (1 - 1e-9):
            shortest = self.shortest_interval_s()
            self.sample_timer_s = shortest  # the meter stretches the capture, and says so
            self.push_error(-221, f"cannot meet requested timing; SAMP:TIM changed to {shortest:g}")
        if self.trigger_source == "IMMEDIATE":
            self._start()
        else:
            self.waiting = True

    def _start(self) -> None:
        """The trigger: a bench capture, with the trigger delay as leading samples to drop."""
        interval = self.sample_timer_s if self.sample_source == "TIMER" else self.shortest_interval_s()
        delay = 0.0 if self.trigger_delay_auto else self.trigger_delay_s
        self._skip = round(delay / interval) if interval > 0 else 0
        self.waiting = False
        self.capture = self.bench.capture(self.source, interval, self.sample_count + self._skip)

    @scpi("*TRG")
    def _trg(self, args: Args) -> None:
        args.expect(0)
        if not (self.waiting and self.trigger_source == "BUS"):
            raise ScpiError(-211, "not waiting for a BUS trigger")
        self._start()

    def _sync(self) -> None:
        """Move the capture's new samples (past the delay) into reading memory."""
        capture = self.capture
        if capture is None:
            return
        with self.bench.lock:
            taken = capture.samples[self._skip + self._copied:capture.count]
        self.memory.extend(self._reading(v) for v in taken)
        self._copied += len(taken)

    def _complete(self) -> None:
        """Wait for the measurement to finish (as FETC? / *OPC? do); -230 if it cannot."""
        if self.waiting:
            raise ScpiError(-230, f"waiting for a {self.trigger_source} trigger that has not come")
        if self.capture is not None:
            if not self._wait(self.capture):
                raise ScpiError(-230, "capture not complete and bench time is not moving")
            self._sync()
            self.capture = None

    @scpi("FETCh?")
    def _fetch(self, args: Args) -> str:
        args.expect(0)
        self._complete()
        if not self.memory:
            raise ScpiError(-230, "no readings: INIT first")
        return ",".join(format_reading(v) for v in self.memory)

    @scpi("*OPC?")
    def _opc_query(self, args: Args) -> str:
        args.expect(0)
        self._complete()
        return "1"

    @scpi("R?")
    def _r(self, args: Args) -> str:
        """Readings removed from memory, oldest first, as ``#<n><length><data>``; no waiting."""
        args.expect(0, 1)
        most = int(args.number(0, 1, 2_000_000)) if len(args) else None
        self._sync()
        taken = self.memory[:most] if most is not None else list(self.memory)
        del self.memory[:len(taken)]
        data = ",".join(format_reading(v) for v in taken)
        return f"#{len(str(len(data)))}{len(data)}{data}"

    @scpi("READ?")
    def _read_q(self, args: Args) -> str:
        self._init(args)
        return self._fetch(args)

    @scpi("DATA:POINts?")
    def _points(self, args: Args) -> str:
        args.expect(0)
        self._sync()
        return f"{len(self.memory):+d}"

    @scpi("ABORt")
    def _abor(self, args: Args) -> None:
        args.expect(0)
        self._abort()
        self.memory = []

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
