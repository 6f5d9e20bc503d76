"""Hioki BT3562 battery HiTester: 1 kHz AC resistance and voltage of one module.

Source: *Hioki BT3561A/BT3562A/BT3562/BT3563A/BT3563 Battery HiTester Instruction Manual*,
chapter 8 (RS-232C/GP-IB/LAN interfaces): 8.4 Communication Methods (message format, event
registers) and 8.6 Message Reference. What shapes this driver:

- Errors are not a SCPI error queue: the meter sets bits of the Standard Event Status Register,
  read (and cleared) by ``*ESR?`` -- bit 5 CME command error (unknown header, wrong parameter
  count or format), bit 4 EXE execution error (value out of range, setting not possible now),
  bit 3 DDE device-dependent error, bit 2 QYE query error, bit 7 PON power-on. So after every
  command this driver asks ``*ESR?`` instead of the base class's ``SYST:ERR?``
  (:meth:`_check_errors`, the base's own step, overridden).
- Replies carry a header unless ``:SYSTem:HEADer OFF`` (``*RST`` turns it off; a meter set up by
  hand may have it on), so the driver turns it off itself before reading anything.
- ``:FETCh?`` reads the most recent measurement and triggers nothing: after the meter was taken
  out of free-run (a safe state) it has nothing new to give. ``:READ?`` takes the meter from idle
  to waiting for a trigger and returns the next measurement (with ``:TRIGger:SOURce IMMediate``
  at once); it is an execution error during continuous measurement. So the driver measures with
  free-run off and ``:READ?``: every reading is taken now, with the leads where they are now, and
  the first reading after a safe state or a reset is no different from any other.
- Resistance ranges 3 mohm to 3 kohm, voltage ranges 6 V and 60 V (300 V on the BT3563);
  ``:AUTorange ON`` or fixed ``:RESistance:RANGe`` / ``:VOLTage:RANGe``.
- Measured values: positive values have a blank in the sign position and leading zeros become
  blanks (``"   1.36E-3"``). Over range (+OF) reads +/-1E+9 on every range (``10.0000E+8``,
  ``100.000E+7``, ...); a measurement fault (leads off, contact check) reads 1E+10.
- Zero adjustment: ``:ADJust?`` measures with the leads shorted and answers 0 (done) or 1 (failed).
"""

from __future__ import annotations

from typing import Any, ClassVar

from instruments.roles import AcIrMeter
from instruments.scpi import ON_OFF, WORD, ScpiInstrument, VisaSession, control, one_of, parse_int

RESISTANCE_RANGES_OHM = (3e-3, 30e-3, 300e-3, 3.0, 30.0, 300.0, 3000.0)
VOLTAGE_RANGES_V = (6.0, 60.0)
OVER_RANGE = 1e9          # +OF on every range
MEASUREMENT_FAULT = 1e10  # leads open / contact fault on every range
# Standard Event Status Register bits (manual 8.4) that mean the command failed
ESR_ERRORS = ((32, "command error"), (16, "execution error"), (8, "device-dependent error"),
              (4, "query error"))
ESR_POWER_ON = 128


def _among(choices: tuple[float, ...], unit: str) -> Any:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) not in choices:
            raise ValueError(f"{value!r} is not a range ({', '.join(f'{c:g}' for c in choices)} {unit})")
        return float(value)
    return check


def parse_hioki_number(text: str) -> float:
    """One measured value: blanks may stand for the sign and for leading zeros."""
    return float(text.replace(" ", ""))


class HiokiBt3562(ScpiInstrument, AcIrMeter):
    """``:READ?`` in RV mode answers ``R,V``; configured the first time it is read (and again
    after a safe state, a reset, or a power cycle the meter reports).

    Options: ``trigger_source`` (``IMM``; ``EXT``: each ``:READ?`` waits for the EXT I/O
    trigger), ``resistance_range_ohm`` / ``voltage_range_v`` (0: autorange; give both to fix
    them). Over range (e.g. the BMS switch open: no path) is returned as the meter's +OF value,
    1E+9 ohm, for the check's limit to judge; a measurement fault raises.
    """

    OPTIONS: ClassVar[dict[str, Any]] = {**ScpiInstrument.OPTIONS, "error_query": "*ESR?",
                                         "trigger_source": "IMM", "resistance_range_ohm": 0.0,
                                         "voltage_range_v": 0.0}

    function = control(":FUNC?", ":FUNC {}", "Measured quantities", codec=WORD,
                       validator=one_of("RV", "RES", "VOLT"))
    free_run = control(":INIT:CONT?", ":INIT:CONT {}", "Continuous measurement", codec=ON_OFF)
    header = control(":SYST:HEAD?", ":SYST:HEAD {}", "Headers on replies", codec=ON_OFF)
    trigger_source = control(":TRIG:SOUR?", ":TRIG:SOUR {}", "Trigger source", codec=WORD,
                             validator=one_of("IMM", "EXT"))
    autorange = control(":AUT?", ":AUT {}", "Autorange", codec=ON_OFF)
    resistance_range = control(":RES:RANG?", ":RES:RANG {}", "Resistance range, ohm",
                               validator=_among(RESISTANCE_RANGES_OHM, "ohm"))
    voltage_range = control(":VOLT:RANG?", ":VOLT:RANG {}", "Voltage range, V",
                            validator=_among(VOLTAGE_RANGES_V, "V"))

    _configured = False

    def __init__(self, resource: str, name: str, rating: dict[str, float] | None = None,
                 timeout_s: float = 2.0, visa_library: str = "@py",
                 options: dict[str, Any] | None = None, *, session: VisaSession | None = None):
        chosen = {**self.OPTIONS, **(options or {})}
        try:
            one_of("IMM", "EXT")(chosen["trigger_source"])
            ohm, volts = float(chosen["resistance_range_ohm"]), float(chosen["voltage_range_v"])
            if (ohm == 0) != (volts == 0):
                raise ValueError("give both resistance_range_ohm and voltage_range_v, or neither")
            if ohm:
                _among(RESISTANCE_RANGES_OHM, "ohm")(ohm)
                _among(VOLTAGE_RANGES_V, "V")(volts)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}: {exc}") from None
        super().__init__(resource, name, rating, timeout_s, visa_library, options, session=session)

    # -- errors: the Standard Event Status Register, not an error queue ----------------------
    def _check_errors(self, command: str) -> None:
        """``*ESR?`` after ``command``: an error bit fails it; PON means the settings are gone."""
        query = self.options["error_query"]
        reply = self._ask(query)
        try:
            status = int(reply)
            if not 0 <= status <= 255:
                raise ValueError
        except ValueError:
            raise self._error(command, f"unparseable reply {reply!r} to {query}") from None
        if status & ESR_POWER_ON:
            self._configured = False  # power-cycled: back to its power-on settings
        problems = [text for bit, text in ESR_ERRORS if status & bit]
        if problems:
            raise self._error(command, f"instrument error: {query} {status} ({', '.join(problems)})")

    # -- measuring ---------------------------------------------------------------------------
    def configure(self) -> None:
        """Headers off, RV mode, trigger source, free-run off (``:READ?`` measures), ranges."""
        self.header = False
        self.function = "RV"
        self.trigger_source = self.options["trigger_source"]
        self.free_run = False
        ohm = float(self.options["resistance_range_ohm"])
        if ohm:
            self.resistance_range = ohm
            self.voltage_range = float(self.options["voltage_range_v"])
        else:
            self.autorange = True
        self._configured = True

    def measure(self) -> tuple[float, float]:
        """One new (ohm, V) reading; +OF (1E+9) is returned, a measurement fault raises."""
        if not self._configured:
            self.configure()
        ohm, volts = self.query_value(":READ?", self._parse_rv)
        return ohm, volts

    def _parse_rv(self, text: str) -> tuple[float, float]:
        items = text.strip().split(",")
        if len(items) != 2:
            raise ValueError(f"expected 2 value(s) (R,V), got {len(items)}")
        ohm, volts = (parse_hioki_number(item) for item in items)
        if ohm >= MEASUREMENT_FAULT * 0.999 or volts >= MEASUREMENT_FAULT * 0.999:
            raise self._error(":READ?", f"measurement fault {text.strip()!r} (leads not on the "
                                        f"terminals, or a contact fault)")
        return ohm, volts

    def zero_adjust(self) -> None:
        """``:ADJust?`` with the leads shorted as the manual shows; raises if the meter refuses."""
        if self.query_value(":ADJ?", parse_int) != 0:
            raise self._error(":ADJ?", "zero adjustment failed (leads not shorted, or offset too large)")

    def safe_state(self) -> None:
        """Stop free-run measuring (no test current between readings); the next reading
        configures the meter again."""
        self.free_run = False
        self._configured = False

    def reset(self) -> None:
        """``*RST`` / ``*CLS``; the next reading configures the meter again."""
        self._configured = False
        super().reset()
