"""Emulated Hioki BT3562 AC-IR meter: its SCPI dialect over a bench (choices: emulator/endpoints/scpi_instruments.py).

The dialect follows the *Hioki BT3561A/BT3562A/BT3562/BT3563A/BT3563 Instruction Manual*,
chapter 8: errors set bits of the Standard Event Status Register (``*ESR?``, cleared when read
and by ``*CLS``) -- there is no ``SYSTem:ERRor?``, which is itself an unknown header, a command
error; measured values in the meter's fixed-width format (blank sign for positive values, blank
leading zeros, the range's exponent); headers on replies unless ``:SYSTem:HEADer OFF``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emulator.endpoints.scpi.base import BenchDevice
from emulator.scpi_server import Args, ScpiError, scpi

if TYPE_CHECKING:
    from emulator.bench import EmulatedBench

# Standard Event Status Register bits (manual 8.4); SCPI error classes map onto them
ESR_PON, ESR_CME, ESR_EXE, ESR_DDE, ESR_QYE = 128, 32, 16, 8, 4
ESR_OF_CLASS = {1: ESR_CME, 2: ESR_EXE, 3: ESR_DDE, 4: ESR_QYE}   # -1xx, -2xx, -3xx, -4xx

# range -> (exponent of the display, digits before the point, digits after it)
RESISTANCE_FORMAT = {3e-3: (-3, 1, 4), 30e-3: (-3, 2, 3), 300e-3: (-3, 3, 2), 3.0: (0, 1, 4),
                     30.0: (0, 2, 3), 300.0: (0, 3, 2), 3000.0: (3, 1, 4)}
VOLTAGE_FORMAT = {6.0: (0, 1, 5), 60.0: (0, 2, 4)}
# +OF as each range writes it (manual 8.6, Measurement Value Formats): 1E+9 on every range
RESISTANCE_OF = {3e-3: "10.0000E+8", 30e-3: "100.000E+7", 300e-3: "1000.00E+6", 3.0: "10.0000E+8",
                 30.0: "100.000E+7", 300.0: "1000.00E+6", 3000.0: "10.0000E+8"}
VOLTAGE_OF = {6.0: "1.00000E+9", 60.0: "10.0000E+8"}
FULL_SCALE = 31.0 / 30.0   # a range reads to 3.1000 of its 3 (e.g. 3100 ohm on 3 kohm)
SAMPLE_RATES = ("FAST", "MEDIUM", "SLOW")


def _pick(ranges: tuple[float, ...], value: float, full_scale: float) -> float | None:
    """The smallest range reading ``value``; None above the largest (over range)."""
    for rng in ranges:
        if abs(value) <= rng * full_scale:
            return rng
    return None


def _fixed_width(value: float, exponent: int, whole: int, decimals: int) -> str:
    """``value`` as the meter writes it: sign (blank if positive), ``whole`` digits with blanks
    for leading zeros, ``decimals`` digits, the range's exponent (``' 13.0600E+0'``)."""
    scaled = abs(value) / 10.0 ** exponent
    digits = f"{scaled:0{whole + 1 + decimals}.{decimals}f}"
    head, _, tail = digits.partition(".")
    head = head.lstrip("0").rjust(len(head)) if head.strip("0") else " " * (len(head) - 1) + "0"
    sign = "-" if value < 0 else " "
    return f"{sign}{head}.{tail}E{exponent:+d}"


def _range_text(value: float) -> str:
    """A range as the meter answers it: ``3E-3``, ``300E-3``, ``3E+0``, ``3E+3``, ``60E+0``."""
    for exponent in (-3, 0, 3):
        mantissa = value / 10.0 ** exponent
        if 1 <= round(mantissa, 6) < 1000:
            return f"{round(mantissa):d}E{exponent:+d}"
    return f"{value:g}"


class HiokiBt3562(BenchDevice):
    """Hioki BT3562 battery HiTester on the module its Kelvin leads touch.

    The module is ``bench.wiring.acir_module`` at the moment of the reading (moving the leads
    moves the reading). Resistance is the twin's 1 kHz AC resistance of that module
    (:meth:`Twin.module_ac_resistance`: its series resistance as the twin holds it -- so an aged
    module reads higher -- at the cells' 1 kHz figure, plus its BMS switch) with seeded noise of
    :attr:`noise_ohm` (the twin's generator, as every emulated meter); voltage is the module's
    terminal voltage with the bench's voltage noise. Above the range (3.1 kohm on the largest,
    e.g. the BMS switch open) the meter answers its over-range value, ``+10.0000E+8`` (manual 8.6).

    Triggering: free-run (``:INIT:CONT ON``, the power-on state) measures all the time and
    ``:FETC?`` reads the latest; with free-run off, ``:READ?`` (or ``:INIT`` / ``*TRG``) measures
    once and ``:FETC?`` reads that measurement again -- before any, it is an execution error.
    ``:READ?`` during free-run is an execution error. Not emulated: ``:ESR0?`` and the
    comparator, the EXT I/O trigger line (``:READ?`` at ``EXT`` is an execution error), a
    zero-adjust offset (the emulated leads have none: ``:ADJ?`` answers 0), and skipping the rest
    of a line after an error.
    """

    model = "BT3562"
    idn_format = "HIOKI,{model},{serial},V1.00-emulated"
    noise_ohm = 2e-6           # 1 sigma, 2 uohm: the 3 mohm range's last digit
    max_ohm = 3.1e3            # 3000 ohm range, full scale
    over_range_ohm = 10.0e8    # +OF as the BT3562 sends it
    resistance_ranges = tuple(RESISTANCE_FORMAT)
    voltage_ranges = tuple(VOLTAGE_FORMAT)

    def __init__(self, bench: "EmulatedBench", serial: str):
        super().__init__(bench, serial)
        self.esr = ESR_PON
        self.reset()

    def reset(self) -> None:
        """``*RST``: RV mode, free-run, immediate trigger, headers off, autorange, zero cleared."""
        self.function, self.continuous, self.trigger_source = "RV", True, "IMMEDIATE"
        self.header, self.autorange, self.sample_rate = False, True, "SLOW"
        self.resistance_range, self.voltage_range = self.resistance_ranges[-1], self.voltage_ranges[-1]
        self.last: str | None = None

    # -- errors: ESR bits only ---------------------------------------------------------------
    def push_error(self, code: int, detail: str = "") -> None:
        """Set the SESR bit of the error's class (no error queue on this meter)."""
        with self.lock:
            self.esr |= ESR_OF_CLASS.get(-code // 100, ESR_DDE)

    @scpi("*ESR?")
    def _esr(self, args: Args) -> str:
        args.expect(0)
        with self.lock:
            value, self.esr = self.esr, 0
        return str(value)

    @scpi("*CLS")
    def _cls(self, args: Args) -> None:
        args.expect(0)
        self.esr = 0

    @scpi("SYSTem:ERRor[:NEXT]?")
    def _syst_err(self, args: Args) -> str:
        raise ScpiError(-113, "no SYSTem:ERRor? on this meter: read *ESR?")

    @scpi("SYSTem:VERSion?")
    def _syst_vers(self, args: Args) -> str:
        raise ScpiError(-113)

    # -- measuring ---------------------------------------------------------------------------
    def _measure(self) -> str:
        """One reading of the module the leads are on now, formatted as the meter sends it."""
        bench = self.bench
        with bench.lock:
            twin, module = bench.twin, bench.wiring.acir_module
            ohm = twin.module_ac_resistance(module, self.noise_ohm)
            volts = twin.module_terminal_voltage(module)
            volts = twin.noisy(volts, bench.noise.voltage_v)
        return self._format(ohm, volts)

    def _format(self, ohm: float, volts: float) -> str:
        r_range = (_pick(self.resistance_ranges, ohm, FULL_SCALE) if self.autorange
                   else self.resistance_range if abs(ohm) <= self.resistance_range * FULL_SCALE else None)
        v_range = (_pick(self.voltage_ranges, volts, 1.0) if self.autorange
                   else self.voltage_range if abs(volts) <= self.voltage_range else None)
        if r_range is None:
            shown = self.resistance_ranges[-1] if self.autorange else self.resistance_range
            r_text = ("-" if ohm < 0 else " ") + RESISTANCE_OF[shown]
        else:
            r_text = _fixed_width(ohm, *RESISTANCE_FORMAT[r_range])
        if v_range is None:
            shown = self.voltage_ranges[-1] if self.autorange else self.voltage_range
            v_text = ("-" if volts < 0 else " ") + VOLTAGE_OF[shown]
        else:
            v_text = _fixed_width(volts, *VOLTAGE_FORMAT[v_range])
        return {"RESISTANCE": r_text, "VOLTAGE": v_text}.get(self.function, f"{r_text},{v_text}")

    def _reply(self, header: str, data: str) -> str:
        return f"{header} {data}" if self.header else data

    @scpi(":FETCh?")
    def _fetch(self, args: Args) -> str:
        """The latest measurement, triggering nothing (free-run keeps it fresh)."""
        args.expect(0)
        if self.continuous:
            self.last = self._measure()
        if self.last is None:
            raise ScpiError(-230, "free-run is off and nothing was measured")
        return self._reply(":FETCH", self.last)

    @scpi(":READ?")
    def _read(self, args: Args) -> str:
        args.expect(0)
        self._trigger_once()
        return self._reply(":READ", self.last or "")

    def _trigger_once(self) -> None:
        if self.continuous:
            raise ScpiError(-200, "continuous measurement is on (:INIT:CONT OFF first)")
        if self.trigger_source != "IMMEDIATE":
            raise ScpiError(-200, "waiting for an EXT I/O trigger the emulated bench does not wire")
        self.last = self._measure()

    @scpi(":INITiate[:IMMediate]")
    def _init(self, args: Args) -> None:
        args.expect(0)
        if self.continuous:
            raise ScpiError(-200, "continuous measurement is on")
        if self.trigger_source == "IMMEDIATE":
            self.last = self._measure()

    @scpi("*TRG")
    def _trg(self, args: Args) -> None:
        args.expect(0)
        if self.trigger_source != "EXTERNAL" or self.continuous:
            raise ScpiError(-200, "*TRG needs :TRIG:SOUR EXT and free-run off")
        self.last = self._measure()

    @scpi(":ABORt")
    def _abor(self, args: Args) -> None:
        args.expect(0)

    # -- settings ----------------------------------------------------------------------------
    @scpi(":FUNCtion")
    def _func(self, args: Args) -> None:
        args.expect(1)
        self.function = args.choice(0, "RV", "RESistance", "VOLTage")

    @scpi(":FUNCtion?")
    def _func_q(self, args: Args) -> str:
        args.expect(0)
        return self._reply(":FUNCTION", self.function)

    @scpi(":INITiate:CONTinuous")
    def _cont(self, args: Args) -> None:
        args.expect(1)
        self.continuous = args.boolean(0)

    @scpi(":INITiate:CONTinuous?")
    def _cont_q(self, args: Args) -> str:
        args.expect(0)
        return self._reply(":INITIATE:CONTINUOUS", "ON" if self.continuous else "OFF")

    @scpi(":TRIGger:SOURce")
    def _trig_sour(self, args: Args) -> None:
        args.expect(1)
        self.trigger_source = args.choice(0, "IMMediate", "EXTernal")

    @scpi(":TRIGger:SOURce?")
    def _trig_sour_q(self, args: Args) -> str:
        args.expect(0)
        return self._reply(":TRIGGER:SOURCE", self.trigger_source)

    @scpi(":SYSTem:HEADer")
    def _head(self, args: Args) -> None:
        args.expect(1)
        self.header = args.boolean(0)

    @scpi(":SYSTem:HEADer?")
    def _head_q(self, args: Args) -> str:
        args.expect(0)
        return self._reply(":SYSTEM:HEADER", "ON" if self.header else "OFF")

    @scpi(":AUTorange")
    def _auto(self, args: Args) -> None:
        args.expect(1)
        self.autorange = args.boolean(0)

    @scpi(":AUTorange?")
    def _auto_q(self, args: Args) -> str:
        args.expect(0)
        return self._reply(":AUTORANGE", "ON" if self.autorange else "OFF")

    @scpi(":RESistance:RANGe")
    def _res_rang(self, args: Args) -> None:
        """0 to 3100 ohm: the smallest range holding the value; fixes the range (autorange off)."""
        args.expect(1)
        value = args.number(0, 0.0, self.max_ohm)
        self.resistance_range = _pick(self.resistance_ranges, value, FULL_SCALE) or self.resistance_ranges[-1]
        self.autorange = False

    @scpi(":RESistance:RANGe?")
    def _res_rang_q(self, args: Args) -> str:
        args.expect(0)
        return self._reply(":RESISTANCE:RANGE", _range_text(self.resistance_range))

    @scpi(":VOLTage:RANGe")
    def _volt_rang(self, args: Args) -> None:
        """-60 to 60 V on the BT3562 (the 300 V range is the BT3563's)."""
        args.expect(1)
        value = args.number(0, -self.voltage_ranges[-1], self.voltage_ranges[-1])
        self.voltage_range = _pick(self.voltage_ranges, value, 1.0) or self.voltage_ranges[-1]
        self.autorange = False

    @scpi(":VOLTage:RANGe?")
    def _volt_rang_q(self, args: Args) -> str:
        args.expect(0)
        return self._reply(":VOLTAGE:RANGE", _range_text(self.voltage_range))

    @scpi(":SAMPle:RATE")
    def _rate(self, args: Args) -> None:
        args.expect(1)
        self.sample_rate = args.choice(0, "FAST", "MEDium", "SLOW")

    @scpi(":SAMPle:RATE?")
    def _rate_q(self, args: Args) -> str:
        args.expect(0)
        return self._reply(":SAMPLE:RATE", self.sample_rate)

    @scpi(":ADJust?")
    def _adj(self, args: Args) -> str:
        """Zero adjustment: done (0); the emulated leads carry no offset to remove."""
        args.expect(0)
        return self._reply(":ADJUST", "0")

    @scpi(":ADJust:CLEAr")
    def _adj_clear(self, args: Args) -> None:
        args.expect(0)
