"""Keysight 34465A DMM: DC volts, and timed digitising for transients (inrush, Vds).

Every command here is from the *Keysight Truevolt Series Operating and Service Guide*
(34460A/61A/65A/70A), SCPI Programming Reference: ``CONFigure[:VOLTage]:DC``,
``[SENSe:]VOLTage[:DC]:APERture`` / ``:ZERO:AUTO`` / ``:RANGe``, ``TRIGger:SOURce`` / ``:SLOPe`` /
``:DELay`` / ``:LEVel``, ``SAMPle:SOURce`` / ``:TIMer`` / ``:COUNt``, ``INITiate``, ``FETCh?``,
``R?``, ``*TRG``, ``*OPC?``. What the guide says that shapes a capture:

- "It is recommended that all triggered measurements be made using an appropriate fixed manual
  range": with autorange, sample start times become uncertain and all later samples drift, so a
  capture always sends ``CONF:VOLT:DC <range>`` (a fixed range, autorange off).
- ``SAMP:TIM`` MIN "depends on the integration time, autozero on or off, autorange on or off, and
  the measurement range"; "you must completely configure the measurement before setting the sample
  timer to MIN": so autozero goes off (it more than doubles each sample's time), the aperture is
  chosen to fit inside the interval, and only then is ``SAMP:TIM? MIN`` asked and compared with
  the interval wanted -- a capture the meter would stretch is refused before ``INIT``.
- ``VOLT:DC:APER``: 200 us to 1 s, 2 us resolution; 20 us to 1 s with the DIG option. The driver
  asks the meter (``VOLT:DC:APER? MIN``) once instead of being told which option is fitted.
- ``CONF`` sets the trigger delay to automatic; the first sample comes "one trigger delay time
  after the trigger", so the delay is always sent (0 unless asked otherwise).
- A reading beyond the fixed range is the overload value ``9.9E37``; the driver raises
  :class:`Overload` instead of handing a huge number to a check.
- ``FETCh?`` waits for the measurement to complete; ``R?`` does not ("use FETCh? or READ? if you
  want the instrument to wait"), so the ``R?`` readout sends ``*OPC?`` first. ``R?`` answers a
  definite-length block ``#<n><length><readings>``.
- ``TRIG:SOUR INT`` (level triggering) needs the DIG option; the level must lie within 120 % of
  the range.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from instruments.roles import Dmm, InstrumentError, SetpointRefused, Waveform
from instruments.scpi import (INT, OVERLOAD, WORD, ScpiInstrument, VisaSession, control,
                              format_number, in_range, int_range, one_of, parse_float, parse_int)

MAX_SAMPLES = 1_000_000
RANGES_V = (0.1, 1.0, 10.0, 100.0, 1000.0)          # DC volts ranges (guide: VOLT:DC:RANGe)
OVERRANGE = 1.2                                     # readings to 120 % of range (autorange: up at 120 %)
MIN_SAMPLE_INTERVAL_S = 20e-6                       # 50 kSa/s, the 34465A's fastest (DIG option)
MAX_SAMPLE_INTERVAL_S = 3600.0                      # guide: SAMPle:TIMer MIN to 3600 s
MAX_TRIGGER_DELAY_S = 3600.0
APERTURE_STEP_S = 2e-6                              # guide: aperture resolution 2 us
MAX_APERTURE_S = 1.0
# The integration takes this share of the sample interval: the guide warns that sample time
# (1 us steps) and aperture (2 us steps) round differently, and a sample time rounded below the
# aperture is a -221 settings conflict; at the 20 us minimum the aperture is the minimum anyway.
APERTURE_FRACTION = 0.9
TRIGGER_SOURCES = ("IMM", "BUS", "EXT", "INT")
READOUTS = ("FETC?", "R?")


class Overload(InstrumentError):
    """Readings at the overload value (9.9E37): the signal left the fixed range.

    ``waveform`` is the capture with each overloaded sample as +/-inf (None for a single
    reading), so a caller that wants to plot what was seen still can.
    """

    waveform: Waveform | None = None


def fits_range(volts: float) -> float:
    """The smallest DC range that reads ``volts`` (the meter picks the same for ``CONF``)."""
    for full_scale in RANGES_V:
        if abs(volts) <= full_scale:
            return full_scale
    raise ValueError(f"{volts:g} V is above the largest range, {RANGES_V[-1]:g} V")


def _a_range(value: Any) -> float:
    """One of the meter's DC ranges exactly (``fits_range`` picks one for any voltage)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) not in RANGES_V:
        raise ValueError(f"{value!r} is not a DC range ({', '.join(f'{r:g}' for r in RANGES_V)} V)")
    return float(value)


def parse_block(reply: str) -> str:
    """The payload of an IEEE 488.2 definite-length block ``#<n><length><payload>``."""
    if len(reply) < 2 or reply[0] != "#" or not reply[1].isdigit() or reply[1] == "0":
        raise ValueError("not a definite-length block (#<n><length>...)")
    digits = int(reply[1])
    length_text = reply[2:2 + digits]
    if len(length_text) != digits or not length_text.isdigit():
        raise ValueError(f"block header {reply[:2 + digits]!r} has no {digits}-digit length")
    length = int(length_text)
    payload = reply[2 + digits:]
    if len(payload) != length:
        raise ValueError(f"block announces {length} bytes, carries {len(payload)}")
    return payload


class Keysight34465a(ScpiInstrument, Dmm):
    """DC volts; ``arm_digitise`` / ``fetch_waveform`` for a timed capture.

    The waveform's ``t0_s`` is the trigger delay: time 0 is the trigger (``INIT`` with
    ``TRIG:SOUR IMM``, ``*TRG`` with BUS); the DMM does not know bench time.

    Options: ``digitise_range_v`` (the fixed range of a capture when the caller gives none;
    100 V holds a 48 V bank string across an open switch with the 120 % overrange),
    ``readout`` (``"FETC?"``, or ``"R?"``: ``*OPC?`` then a definite-length block).
    """

    OPTIONS: ClassVar[dict[str, Any]] = {**ScpiInstrument.OPTIONS, "digitise_range_v": 100.0,
                                         "readout": "FETC?"}

    sample_count = control("SAMP:COUN?", "SAMP:COUN {}", "Samples per trigger", codec=INT,
                           validator=int_range(1, MAX_SAMPLES))
    sample_interval = control("SAMP:TIM?", "SAMP:TIM {}", "Sample interval, s",
                              validator=in_range(MIN_SAMPLE_INTERVAL_S * (1 - 1e-9), MAX_SAMPLE_INTERVAL_S))
    sample_source = control("SAMP:SOUR?", "SAMP:SOUR {}", "Sample pacing", codec=WORD,
                            validator=one_of("IMM", "TIM"))
    trigger_source = control("TRIG:SOUR?", "TRIG:SOUR {}", "Trigger source", codec=WORD,
                             validator=one_of(*TRIGGER_SOURCES))
    trigger_slope = control("TRIG:SLOP?", "TRIG:SLOP {}", "Edge (EXT) or crossing (INT) that triggers",
                            codec=WORD, validator=one_of("POS", "NEG"))
    trigger_delay = control("TRIG:DEL?", "TRIG:DEL {}", "Trigger to first sample, s",
                            validator=in_range(0.0, MAX_TRIGGER_DELAY_S))
    trigger_level = control("TRIG:LEV?", "TRIG:LEV {}", "Level trigger (TRIG:SOUR INT), V")
    aperture = control("VOLT:DC:APER?", "VOLT:DC:APER {}", "Integration time, s",
                       validator=in_range(MIN_SAMPLE_INTERVAL_S, MAX_APERTURE_S))
    voltage_range = control("VOLT:DC:RANG?", "VOLT:DC:RANG {}", "Fixed DC range, V",
                            validator=lambda v: _a_range(v), rating="voltage_v")

    _armed: tuple[float, int, float, str, float] | None = None  # interval, count, delay, source, range
    _min_aperture: float | None = None

    def __init__(self, resource: str, name: str, rating: dict[str, float] | None = None,
                 timeout_s: float = 2.0, visa_library: str = "@py",
                 options: dict[str, Any] | None = None, *, session: VisaSession | None = None):
        chosen = {**self.OPTIONS, **(options or {})}
        if str(chosen["readout"]).upper() not in READOUTS:
            raise ValueError(f"{name}: option readout must be one of {', '.join(READOUTS)}, "
                             f"not {chosen['readout']!r}")
        try:
            fits_range(float(chosen["digitise_range_v"]))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}: option digitise_range_v: {exc}") from None
        super().__init__(resource, name, rating, timeout_s, visa_library, options, session=session)

    # -- single readings ---------------------------------------------------------------------
    def measure_voltage(self) -> float:
        """``MEAS:VOLT:DC?`` (autorange); it reconfigures the meter, so an armed capture is gone."""
        self._armed = None
        return float(self.query_value("MEAS:VOLT:DC?", self._reading_parser("MEAS:VOLT:DC?")))

    def _reading_parser(self, command: str) -> Any:
        def parse(text: str) -> float:
            value = float(text.strip())
            if abs(value) >= OVERLOAD:
                raise Overload(self.name, self.resource, command,
                               f"overload: the reading {text.strip()} is beyond the meter's range")
            return parse_float(text)
        return parse

    # -- digitising --------------------------------------------------------------------------
    def arm_digitise(self, interval_s: float, count: int, *, range_v: float | None = None,
                     trigger: str = "IMM", delay_s: float = 0.0, slope: str | None = None,
                     level_v: float | None = None) -> None:
        """Configure a timed capture of ``count`` samples ``interval_s`` apart, then ``INIT``.

        ``range_v``: the fixed range (the smallest that holds it; default the
        ``digitise_range_v`` option). ``trigger``: IMM (starts at ``INIT``), BUS (:meth:`trigger`),
        EXT (rear Ext Trig, ``slope``), INT (level ``level_v`` crossed with ``slope``; DIG option).
        Everything is checked before anything is sent; the meter's own ``SAMP:TIM? MIN`` is
        checked before ``INIT``. Refusals raise :class:`SetpointRefused`.
        """
        command = f"SAMP:TIM {format_number(interval_s) if isinstance(interval_s, (int, float)) else interval_s}"
        # a plan's "20 us" may arrive as 1.9999999999999998e-05: the bounds allow rounding error
        interval = self._checked(command, "interval_s", interval_s,
                                 in_range(MIN_SAMPLE_INTERVAL_S * (1 - 1e-9), MAX_SAMPLE_INTERVAL_S))
        samples = self._checked(f"SAMP:COUN {count}", "count", count, int_range(1, MAX_SAMPLES))
        wanted = self.options["digitise_range_v"] if range_v is None else range_v
        try:
            full_scale = fits_range(float(wanted))
        except (TypeError, ValueError) as exc:
            raise SetpointRefused(self.name, self.resource, f"CONF:VOLT:DC {wanted}", str(exc)) from None
        limit = self.rating.get("voltage_v")
        if limit is not None and full_scale > limit:
            raise SetpointRefused(self.name, self.resource, f"CONF:VOLT:DC {format_number(full_scale)}",
                                  f"range {full_scale:g} V is above the rating voltage_v={limit:g}")
        source = self._checked(f"TRIG:SOUR {trigger}", "trigger", trigger, one_of(*TRIGGER_SOURCES))
        delay = self._checked(f"TRIG:DEL {delay_s}", "delay_s", delay_s, in_range(0.0, MAX_TRIGGER_DELAY_S))
        edge = None if slope is None else self._checked(f"TRIG:SLOP {slope}", "slope", slope,
                                                       one_of("POS", "NEG"))
        if source == "INT":
            if level_v is None:
                raise SetpointRefused(self.name, self.resource, "TRIG:SOUR INT",
                                      "a level trigger needs level_v")
            self._checked(f"TRIG:LEV {level_v}", "level_v", level_v,
                          in_range(-OVERRANGE * full_scale, OVERRANGE * full_scale))
        elif level_v is not None:
            raise SetpointRefused(self.name, self.resource, f"TRIG:LEV {level_v}",
                                  f"level_v applies to TRIG:SOUR INT only, not {source}")
        aperture = self._aperture_for(interval, command)

        self._armed = None  # CONF resets the meter: an earlier capture is gone even if this one fails
        self.write(f"CONF:VOLT:DC {format_number(full_scale)}")
        self.write("VOLT:DC:ZERO:AUTO OFF")
        self.aperture = aperture
        self.trigger_source = source
        if edge is not None:
            self.trigger_slope = edge
        if source == "INT":
            self.trigger_level = level_v
        self.trigger_delay = delay
        self.sample_source = "TIM"
        self.sample_count = samples
        shortest = self.query_value("SAMP:TIM? MIN")
        if shortest > interval * (1 + 1e-9):
            raise SetpointRefused(self.name, self.resource, command,
                                  f"the meter cannot sample every {interval:g} s here: SAMP:TIM? MIN is "
                                  f"{shortest:g} s (aperture {aperture:g} s, range {full_scale:g} V, "
                                  f"autozero off)")
        self.sample_interval = interval
        self.write("INIT")
        self._armed = (float(interval), int(samples), float(delay), source, full_scale)

    def trigger(self) -> None:
        """``*TRG``: start a capture armed with ``trigger="BUS"``."""
        if self._armed is None or self._armed[3] != "BUS":
            raise self._error("*TRG", "no capture armed with trigger BUS")
        self.write("*TRG")

    def fetch_waveform(self) -> Waveform:
        """The armed capture; waits as long as the capture takes (plus the timeout).

        An overloaded sample raises :class:`Overload` (its ``waveform`` holds the capture).
        """
        if self._armed is None:
            raise self._error("FETC?", "no capture armed (arm_digitise first)")
        interval, count, delay, _, full_scale = self._armed
        readout = str(self.options["readout"]).upper()
        with self.longer_timeout(delay + interval * count):
            if readout == "R?":
                done = self.query_value("*OPC?", parse_int)
                if done != 1:
                    raise self._error("*OPC?", f"unexpected reply {done} (1: operation complete)")
                samples = self.query_value("R?", lambda text: self._samples(parse_block(text), count))
            else:
                samples = self.query_value("FETC?", lambda text: self._samples(text, count))
        wave = Waveform(interval_s=interval, samples=samples, unit="V", t0_s=delay)
        over = [k for k, v in enumerate(samples) if math.isinf(v)]
        if over:
            exc = Overload(self.name, self.resource, readout,
                           f"overload: {len(over)} of {count} samples beyond the {full_scale:g} V range "
                           f"(first at sample {over[0]}, {delay + over[0] * interval:g} s after the trigger)")
            exc.waveform = wave
            raise exc
        return wave

    def safe_state(self) -> None:
        """Abort a capture in progress (harmless when idle)."""
        self.write("ABOR")
        self._armed = None

    def reset(self) -> None:
        """``*RST`` / ``*CLS``: nothing stays armed."""
        self._armed = None
        super().reset()

    # -- helpers -----------------------------------------------------------------------------
    def _checked(self, command: str, what: str, value: Any, validator: Any) -> Any:
        try:
            return validator(value)
        except (TypeError, ValueError) as exc:
            raise SetpointRefused(self.name, self.resource, command, f"{what}: {exc}") from None

    def _aperture_for(self, interval: float, command: str) -> float:
        """The longest aperture (2 us steps) inside ``APERTURE_FRACTION`` of the interval, not
        below what this meter can integrate (asked once: ``VOLT:DC:APER? MIN``)."""
        if self._min_aperture is None:
            self._min_aperture = float(self.query_value("VOLT:DC:APER? MIN"))
        shortest = self._min_aperture
        if interval < shortest * (1 - 1e-9):
            raise SetpointRefused(self.name, self.resource, command,
                                  f"interval {interval:g} s is shorter than this meter's shortest aperture "
                                  f"{shortest:g} s (20 us needs the DIG option)")
        steps = math.floor(interval * APERTURE_FRACTION / APERTURE_STEP_S + 1e-6)
        return round(min(MAX_APERTURE_S, max(shortest, steps * APERTURE_STEP_S)), 12)

    @staticmethod
    def _samples(text: str, count: int) -> list[float]:
        """Comma-separated readings, exactly ``count``; overloads become +/-inf."""
        items = text.strip().split(",") if text.strip() else []
        if len(items) != count:
            raise ValueError(f"expected {count} value(s), got {len(items)}")
        samples: list[float] = []
        for item in items:
            value = float(item)
            if abs(value) >= OVERLOAD:
                samples.append(math.copysign(math.inf, value))
            elif not math.isfinite(value):
                raise ValueError(f"invalid reading {item.strip()}")
            else:
                samples.append(value)
        return samples
