"""The five SCPI dialects of DOMAIN.md section 5, served from an :class:`EmulatedBench`.

Each class is one instrument as its driver sees it: the command set the harness uses, the
instrument's own ranges (out of range -> ``-222``), and its readings taken from the twin through
the bench -- supply and load through the twin's bench methods, DMM and scanner through the bench
wiring (``bench.read`` / ``bench.capture``), the AC-IR meter through the module the wiring puts
its leads on (``twin.module_ac_resistance``), relays through ``twin.set_contactor``. Every twin
access holds ``bench.lock``.

Choices where the emulator cannot do what the instrument does, documented once here:

- ``FETC?`` on the 34465A blocks until the capture completes, as the instrument does, *while
  bench time moves* (``hil emulate``'s real-time runner). If bench time stands still for
  :attr:`Keysight34465a.stall_s` (virtual clock, and the caller is blocked in FETC? so nobody
  will advance it), it answers an empty line and queues ``-230,"Data corrupt or stale"``: the
  driver reports "capture not complete" at once instead of hanging until its timeout.
- The DAQ970A's relays start in the state of the twin's contactors (the twin is built with
  its contactors closed, as a bench already set up would be); ``*RST`` opens them all, which
  opens the contactors, as on the real bench.
- The N5700 keeps VOLT <= VOLT:PROT (the instrument keeps a 5 % margin) and does not trip on
  over-voltage; the IT8500+ models constant-current mode only and no power limit.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from emulator.scpi_server import Args, ScpiDevice, ScpiError, ScpiServer, format_reading, scpi

if TYPE_CHECKING:
    from emulator.bench import Capture, EmulatedBench, Input

SCPI_SERIAL_BASE = "EMU"


def _bool(value: bool) -> str:
    return "1" if value else "0"


class _BenchDevice(ScpiDevice):
    """An emulated instrument bound to a bench."""

    model = "device"

    def __init__(self, bench: "EmulatedBench", serial: str):
        super().__init__()
        self.bench = bench
        self.idn = self.idn_format.format(model=self.model, serial=serial)

    idn_format = "Emulated,{model},{serial},1.0-emulated"


# ================================================================================== supply
class KeysightN5700(_BenchDevice):
    """Keysight N5700/N8700 system DC supply across the bank terminals (CV with current limit).

    Ranges follow the twin's supply rating (``twin.supply.rating_v/rating_a``), so the
    station's ratings, not an invented model, bound what the emulated supply accepts.
    """

    model = "N5767A"
    idn_format = "Keysight Technologies,{model},{serial},1.0-emulated"

    def __init__(self, bench: "EmulatedBench", serial: str):
        super().__init__(bench, serial)
        with bench.lock:
            self.max_v, self.max_a = bench.twin.supply.rating_v, bench.twin.supply.rating_a
        self.ovp_v = 1.1 * self.max_v

    def reset(self) -> None:
        twin = self.bench.twin
        with self.bench.lock:
            twin.supply_output(False)
            twin.set_supply(0.0, 0.0)
        self.ovp_v = 1.1 * self.max_v

    @scpi("[SOURce]:VOLTage[:LEVel][:IMMediate][:AMPLitude]")
    def _volt(self, args: Args) -> None:
        args.expect(1)
        volts = args.number(0, 0.0, self.max_v, default=0.0)
        if volts > self.ovp_v:
            raise ScpiError(-222, f"VOLT {volts:g} above VOLT:PROT {self.ovp_v:g}")
        with self.bench.lock:
            self.bench.twin.set_supply(volts, self.bench.twin.supply.current_a)

    @scpi("[SOURce]:VOLTage[:LEVel][:IMMediate][:AMPLitude]?")
    def _volt_q(self, args: Args) -> str:
        args.expect(0)
        with self.bench.lock:
            return format_reading(self.bench.twin.supply.voltage_v)

    @scpi("[SOURce]:CURRent[:LEVel][:IMMediate][:AMPLitude]")
    def _curr(self, args: Args) -> None:
        args.expect(1)
        amps = args.number(0, 0.0, self.max_a, default=0.0)
        with self.bench.lock:
            self.bench.twin.set_supply(self.bench.twin.supply.voltage_v, amps)

    @scpi("[SOURce]:CURRent[:LEVel][:IMMediate][:AMPLitude]?")
    def _curr_q(self, args: Args) -> str:
        args.expect(0)
        with self.bench.lock:
            return format_reading(self.bench.twin.supply.current_a)

    @scpi("[SOURce]:VOLTage:PROTection[:LEVel]")
    def _ovp(self, args: Args) -> None:
        args.expect(1)
        volts = args.number(0, 0.0, 1.1 * self.max_v, default=1.1 * self.max_v)
        with self.bench.lock:
            setpoint = self.bench.twin.supply.voltage_v
        if volts < setpoint:
            raise ScpiError(-222, f"VOLT:PROT {volts:g} below VOLT {setpoint:g}")
        self.ovp_v = volts

    @scpi("[SOURce]:VOLTage:PROTection[:LEVel]?")
    def _ovp_q(self, args: Args) -> str:
        args.expect(0)
        return format_reading(self.ovp_v)

    @scpi("OUTPut[:STATe]")
    def _outp(self, args: Args) -> None:
        args.expect(1)
        on = args.boolean(0)
        with self.bench.lock:
            self.bench.twin.supply_output(on)

    @scpi("OUTPut[:STATe]?")
    def _outp_q(self, args: Args) -> str:
        args.expect(0)
        with self.bench.lock:
            return _bool(self.bench.twin.supply.on)

    @scpi("MEASure[:SCALar]:VOLTage[:DC]?")
    def _meas_volt(self, args: Args) -> str:
        args.expect(0)
        with self.bench.lock:
            return format_reading(self.bench.twin.supply_reading()[0])

    @scpi("MEASure[:SCALar]:CURRent[:DC]?")
    def _meas_curr(self, args: Args) -> str:
        args.expect(0)
        with self.bench.lock:
            return format_reading(self.bench.twin.supply_reading()[1])


# ================================================================================== load
class ItechIt8500(_BenchDevice):
    """ITECH IT8500+ electronic load across the bank terminals, constant-current mode."""

    model = "IT8516C+"
    idn_format = "ITECH Ltd.,{model},{serial},1.0-emulated"
    max_a = 240.0

    def reset(self) -> None:
        with self.bench.lock:
            self.bench.twin.load_input(False)
            self.bench.twin.set_load(0.0)

    @scpi("[SOURce]:FUNCtion", "[SOURce]:FUNCtion:MODE")
    def _func(self, args: Args) -> None:
        args.expect(1)
        mode = args.choice(0, "CURRent", "VOLTage", "RESistance", "POWer")
        if mode != "CURRENT":
            raise ScpiError(-221, f"emulated load has constant-current mode only, not {mode}")

    @scpi("[SOURce]:FUNCtion?", "[SOURce]:FUNCtion:MODE?")
    def _func_q(self, args: Args) -> str:
        args.expect(0)
        return "CURR"

    @scpi("[SOURce]:CURRent[:LEVel][:IMMediate][:AMPLitude]")
    def _curr(self, args: Args) -> None:
        args.expect(1)
        amps = args.number(0, 0.0, self.max_a, default=0.0)
        with self.bench.lock:
            self.bench.twin.set_load(amps)

    @scpi("[SOURce]:CURRent[:LEVel][:IMMediate][:AMPLitude]?")
    def _curr_q(self, args: Args) -> str:
        args.expect(0)
        with self.bench.lock:
            return format_reading(self.bench.twin.load.current_a)

    @scpi("[SOURce]:INPut[:STATe]")
    def _inp(self, args: Args) -> None:
        args.expect(1)
        on = args.boolean(0)
        with self.bench.lock:
            self.bench.twin.load_input(on)

    @scpi("[SOURce]:INPut[:STATe]?")
    def _inp_q(self, args: Args) -> str:
        args.expect(0)
        with self.bench.lock:
            return _bool(self.bench.twin.load.on)

    @scpi("MEASure[:SCALar]:VOLTage[:DC]?")
    def _meas_volt(self, args: Args) -> str:
        args.expect(0)
        with self.bench.lock:
            return format_reading(self.bench.twin.load_reading()[0])

    @scpi("MEASure[:SCALar]:CURRent[:DC]?")
    def _meas_curr(self, args: Args) -> str:
        args.expect(0)
        with self.bench.lock:
            return format_reading(self.bench.twin.load_reading()[1])

    @scpi("SYSTem:REMote", "SYSTem:LOCal")
    def _remote(self, args: Args) -> None:
        args.expect(0)


# ================================================================================== DMM
class Keysight34465a(_BenchDevice):
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


# ================================================================================== DAQ970A
class KeysightDaq970a(_BenchDevice):
    """Keysight DAQ970A: DAQM901A multiplexers (slots 1-2) and a DAQM903A actuator (slot 3).

    Measurement channels are ``bench.wiring.scanner``; relay channels that drive contactor
    coils are ``bench.wiring.actuator``. Any channel 101-399 exists as a relay (ROUT:CLOS/OPEN
    work on it); measuring a channel with nothing wired to it is ``-222``.
    """

    model = "DAQ970A"
    idn_format = "Keysight Technologies,{model},{serial},A.03.02-emulated"
    tc_types = ("B", "E", "J", "K", "N", "R", "S", "T")

    def __init__(self, bench: "EmulatedBench", serial: str):
        super().__init__(bench, serial)
        with bench.lock:
            self.relays = {ch: bench.twin.contactor_closed[name] for ch, name in bench.wiring.actuator_channels().items()}
        self.scan_list: list[int] = []
        self.readings: list[float] | None = None

    def reset(self) -> None:
        with self.bench.lock:
            for name in self.bench.wiring.actuator_channels().values():
                self.bench.twin.set_contactor(name, False)
        self.relays = {ch: False for ch in self.relays}
        self.scan_list, self.readings = [], None

    @staticmethod
    def _exists(channels: list[int]) -> list[int]:
        for ch in channels:
            if not (1 <= ch // 100 <= 3 and 1 <= ch % 100 <= 99):
                raise ScpiError(-222, f"channel {ch} does not exist")
        return channels

    def _input(self, ch: int, kind: str) -> "Input":
        source = self.bench.wiring.scanner_channels().get(ch)
        if source is None:
            raise ScpiError(-222, f"nothing wired to channel {ch}")
        is_tc = source.kind == "thermocouple"
        if (kind == "TEMP") != is_tc:
            what = "a thermocouple" if is_tc else f"a {source.kind} input"
            raise ScpiError(-221, f"channel {ch} is {what}, not for {kind}")
        return source

    def _function(self, ch: int) -> str:
        source = self.bench.wiring.scanner_channels().get(ch)
        return "TEMP" if source is not None and source.kind == "thermocouple" else "VOLT"

    def _measure(self, channels: list[int], kind: str | None = None) -> str:
        sources = [self._input(ch, kind or self._function(ch)) for ch in self._exists(channels)]
        with self.bench.lock:
            values = [self.bench.read(source, noisy=True) for source in sources]
        return ",".join(format_reading(v) for v in values)

    def _tc_args(self, args: Args) -> list[int]:
        if len(args) < 2:
            raise ScpiError(-109)
        if args.choice(0, "TCouple", "RTD", "FRTD", "THERmistor", "FTHermistor", "DEFault") not in (
                "TCOUPLE", "DEFAULT"):
            raise ScpiError(-221, "channels are wired to thermocouples")
        if len(args) > 2 and args.items[1].upper() not in self.tc_types + ("DEF",):
            raise ScpiError(-224, f"thermocouple type {args.items[1]}")
        return args.channels(len(args) - 1)

    @scpi("MEASure:VOLTage[:DC]?")
    def _meas_volt(self, args: Args) -> str:
        if len(args) == 0:
            raise ScpiError(-109, "channel list")
        channels = args.channels(len(args) - 1)
        self.scan_list = channels
        return self._measure(channels, "VOLT")

    @scpi("MEASure:TEMPerature?")
    def _meas_temp(self, args: Args) -> str:
        channels = self._tc_args(args)
        self.scan_list = channels
        return self._measure(channels, "TEMP")

    @scpi("CONFigure:VOLTage[:DC]")
    def _conf_volt(self, args: Args) -> None:
        if len(args) == 0:
            raise ScpiError(-109, "channel list")
        channels = self._exists(args.channels(len(args) - 1))
        for ch in channels:
            self._input(ch, "VOLT")
        self.scan_list = channels

    @scpi("CONFigure:TEMPerature")
    def _conf_temp(self, args: Args) -> None:
        channels = self._exists(self._tc_args(args))
        for ch in channels:
            self._input(ch, "TEMP")
        self.scan_list = channels

    @scpi("ROUTe:SCAN")
    def _scan(self, args: Args) -> None:
        args.expect(1)
        channels = self._exists(args.channels(0))
        for ch in channels:
            self._input(ch, self._function(ch))
        self.scan_list = channels

    @scpi("ROUTe:SCAN?")
    def _scan_q(self, args: Args) -> str:
        args.expect(0)
        return "(@" + ",".join(str(ch) for ch in self.scan_list) + ")"

    @scpi("INITiate[:IMMediate]")
    def _init(self, args: Args) -> None:
        args.expect(0)
        if not self.scan_list:
            raise ScpiError(-221, "empty scan list")
        self.readings = [float(v) for v in self._measure(self.scan_list).split(",")]

    @scpi("FETCh?")
    def _fetch(self, args: Args) -> str:
        args.expect(0)
        if self.readings is None:
            raise ScpiError(-230, "no readings: INIT first")
        return ",".join(format_reading(v) for v in self.readings)

    @scpi("READ?")
    def _read(self, args: Args) -> str:
        self._init(args)
        return self._fetch(args)

    @scpi("ABORt")
    def _abor(self, args: Args) -> None:
        args.expect(0)

    def _drive(self, channels: list[int], closed: bool) -> None:
        channels = self._exists(channels)
        with self.bench.lock:
            for ch in channels:
                self.relays[ch] = closed
                name = self.bench.wiring.actuator_channels().get(ch)
                if name is not None:
                    self.bench.twin.set_contactor(name, closed)

    @scpi("ROUTe:CLOSe")
    def _close(self, args: Args) -> None:
        args.expect(1)
        self._drive(args.channels(0), True)

    @scpi("ROUTe:OPEN")
    def _open(self, args: Args) -> None:
        args.expect(1)
        self._drive(args.channels(0), False)

    @scpi("ROUTe:CLOSe?")
    def _close_q(self, args: Args) -> str:
        args.expect(1)
        return ",".join(_bool(self.relays.get(ch, False)) for ch in self._exists(args.channels(0)))

    @scpi("ROUTe:OPEN?")
    def _open_q(self, args: Args) -> str:
        args.expect(1)
        return ",".join(_bool(not self.relays.get(ch, False)) for ch in self._exists(args.channels(0)))


# ================================================================================== AC-IR
class HiokiBt3562(_BenchDevice):
    """Hioki BT3562 battery HiTester on the module its Kelvin leads touch.

    The module is ``bench.wiring.acir_module`` at the moment of the reading (moving the leads
    moves the reading). Resistance is the twin's 1 kHz AC resistance of that module
    (:meth:`Twin.module_ac_resistance`: its series resistance as the twin holds it -- so an aged
    module reads higher -- at the cells' 1 kHz figure, plus its BMS switch) with seeded noise of
    :attr:`noise_ohm` (the twin's generator, as every emulated meter); voltage is the module's
    terminal voltage with the bench's voltage noise. Above the largest range (3 kohm, e.g. the
    BMS switch open) the meter answers its over-range value, ``+10.0000E+8`` (manual 8.6).
    """

    model = "BT3562"
    idn_format = "HIOKI,{model},{serial},V1.00-emulated"
    noise_ohm = 2e-6           # 1 sigma, 2 uohm: the 3 mohm range's last digit
    max_ohm = 3.1e3            # 3000 ohm range, full scale
    over_range_ohm = 10.0e8    # +OF as the BT3562 sends it

    def __init__(self, bench: "EmulatedBench", serial: str):
        super().__init__(bench, serial)
        self.reset()

    def reset(self) -> None:
        self.function, self.continuous = "RV", True
        self.last: tuple[float, float] | None = None

    def _measure(self) -> tuple[float, float]:
        """One (ohm, volts) reading of the module the leads are on now."""
        bench = self.bench
        with bench.lock:
            twin, module = bench.twin, bench.wiring.acir_module
            ohm = twin.module_ac_resistance(module, self.noise_ohm)
            volts = twin.module_terminal_voltage(module)
            volts = twin.noisy(volts, bench.noise.voltage_v)
        return (ohm if ohm <= self.max_ohm else self.over_range_ohm), volts

    def _format(self, reading: tuple[float, float]) -> str:
        ohm, volts = reading
        if self.function == "RESISTANCE":
            return f"{ohm:.4E}"
        if self.function == "VOLTAGE":
            return f"{volts:+.6E}"
        return f"{ohm:.4E},{volts:+.6E}"

    @scpi(":FUNCtion")
    def _func(self, args: Args) -> None:
        args.expect(1)
        self.function = args.choice(0, "RV", "RESistance", "VOLTage")

    @scpi(":FUNCtion?")
    def _func_q(self, args: Args) -> str:
        args.expect(0)
        return self.function

    @scpi(":INITiate:CONTinuous")
    def _cont(self, args: Args) -> None:
        args.expect(1)
        self.continuous = args.boolean(0)

    @scpi(":INITiate:CONTinuous?")
    def _cont_q(self, args: Args) -> str:
        args.expect(0)
        return "ON" if self.continuous else "OFF"

    @scpi(":INITiate[:IMMediate]", "*TRG")
    def _init(self, args: Args) -> None:
        args.expect(0)
        self.last = self._measure()

    @scpi(":FETCh?")
    def _fetch(self, args: Args) -> str:
        args.expect(0)
        if self.continuous:
            return self._format(self._measure())
        if self.last is None:
            raise ScpiError(-230, "free-run is off and nothing was triggered")
        return self._format(self.last)

    @scpi(":READ?")
    def _read(self, args: Args) -> str:
        args.expect(0)
        self.last = self._measure()
        return self._format(self.last)

    @scpi(":ABORt")
    def _abor(self, args: Args) -> None:
        args.expect(0)


# ================================================================================== start/stop
Endpoints = dict[str, tuple[ScpiServer, str]]


def start_scpi_endpoints(bench: "EmulatedBench") -> Endpoints:
    """One loopback SCPI server per instrument of the emulated bench.

    Keys are role names: ``supply``, ``load``, one per DMM in the wiring (``dmm_vds``,
    ``dmm_shunt``), ``scanner`` and ``actuator`` (the same DAQ970A server), ``acir``.
    Values are ``(server, VISA resource string)``. Close them with :func:`stop_scpi_endpoints`.
    """
    serials = iter(f"{SCPI_SERIAL_BASE}{k:04d}" for k in range(1, 1000))
    devices: list[tuple[list[str], ScpiDevice]] = [
        (["supply"], KeysightN5700(bench, next(serials))),
        (["load"], ItechIt8500(bench, next(serials))),
    ]
    for name, source in bench.wiring.dmm.items():
        devices.append(([name], Keysight34465a(bench, next(serials), source)))
    devices.append((["scanner", "actuator"], KeysightDaq970a(bench, next(serials))))
    if bench.wiring.acir_module:
        devices.append((["acir"], HiokiBt3562(bench, next(serials))))
    endpoints: Endpoints = {}
    try:
        for roles, device in devices:
            server = ScpiServer(device, name=roles[0])
            for role in roles:
                endpoints[role] = (server, server.resource)
    except BaseException:
        stop_scpi_endpoints(endpoints)
        raise
    return endpoints


def stop_scpi_endpoints(endpoints: Endpoints) -> None:
    """Close every server once (the scanner and actuator share one)."""
    for server in {id(s): s for s, _ in endpoints.values()}.values():
        server.close()
