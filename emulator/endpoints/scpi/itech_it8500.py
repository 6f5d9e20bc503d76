"""Emulated ITECH IT8500+ electronic load: one real model's SCPI over a bench.

Ranges are the model's (:mod:`emulator.endpoints.scpi.models`; *IT8500+ Series Programming
Guide* V2.0): ``CURR`` 0..rated current, ``VOLT`` 0..rated voltage, ``POW`` 0..rated power,
``RES`` 0.05..7500 ohm; beyond them ``-222``. ``FUNC CURR|VOLT|RES|POW`` selects CC, CV, CR
or CW mode.

The power limit, a choice documented here: the load accepts any CC setpoint up to its rated
current (it cannot know the voltage the setpoint will meet), and while the input is on it never
takes more than its rated power: at a terminal voltage where setpoint x volts exceeds it, the
current is limited to power / volts -- the hardware power limit the IT8500+ datasheet
specifies, rather than a refusal. The software over-power protection (``POW:PROT``) is not
emulated. The limit, and the CR and CW modes, are re-evaluated whenever the load is addressed
(the twin's load element is a constant-current sink, with no hook per time step for an
instrument); CV mode is accepted as a setting but turning the input on in it is ``-221``,
since the twin's load cannot regulate voltage.

``SYST:REM`` / ``SYST:LOC`` are accepted; the emulator does not require remote mode first
(a real IT8500+ on RS-232/USB ignores bus setpoints until ``SYST:REM``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emulator.endpoints.scpi.base import BenchDevice, bool_text
from emulator.endpoints.scpi.models import IT8500_MODELS, InstrumentModel, model
from emulator.scpi_server import Args, ScpiError, format_reading, scpi

if TYPE_CHECKING:
    from emulator.bench import EmulatedBench

RES_RANGE_OHM = (0.05, 7500.0)
MODES = {"CURRENT": "CURR", "VOLTAGE": "VOLT", "RESISTANCE": "RES", "POWER": "POW"}


class ItechIt8500(BenchDevice):
    """ITECH IT8500+ electronic load across the bank terminals.

    ``instrument`` is the real model emulated (default IT8516C+: 120 V, 240 A, 3 kW).
    """

    model = "IT8516C+"
    idn_format = "ITECH Ltd.,{model},{serial},1.0-emulated"

    def __init__(self, bench: "EmulatedBench", serial: str, instrument: InstrumentModel | None = None):
        self.instrument = instrument or model(self.model)
        if self.instrument not in IT8500_MODELS:
            raise ValueError(f"{self.instrument.name} is not an IT8500+ model")
        self.model = self.instrument.name
        super().__init__(bench, serial)
        self.max_a, self.max_v = self.instrument.current_a, self.instrument.voltage_v
        self.max_w = self.instrument.power_w
        self.mode = "CURR"
        self.setpoints = {"CURR": 0.0, "VOLT": self.max_v, "RES": RES_RANGE_OHM[1], "POW": 0.0}

    def reset(self) -> None:
        self.mode = "CURR"
        self.setpoints = {"CURR": 0.0, "VOLT": self.max_v, "RES": RES_RANGE_OHM[1], "POW": 0.0}
        with self.bench.lock:
            self.bench.twin.load_input(False)
            self.bench.twin.set_load(0.0)

    def execute(self, line: str) -> str | None:
        self._regulate()  # what a measurement in this line reads is already limited
        reply = super().execute(line)
        self._regulate()
        return reply

    def _draw_a(self, volts: float) -> float:
        """The current the load takes at ``volts`` in its mode, within its power rating."""
        if self.mode == "CURR":
            amps = self.setpoints["CURR"]
        elif self.mode == "RES":
            amps = volts / self.setpoints["RES"]
        elif self.mode == "POW":
            amps = self.setpoints["POW"] / volts if volts > 0 else 0.0
        else:
            amps = 0.0
        if volts > 0:
            amps = min(amps, self.max_w / volts)
        return min(amps, self.max_a)

    def _regulate(self) -> None:
        """Set the twin's sink current from the mode, the setpoint and the power limit."""
        with self.bench.lock:
            twin = self.bench.twin
            volts = twin.load_reading()[0]
            amps = self._draw_a(max(volts, 0.0))
            if abs(amps - twin.load.current_a) > 1e-9:
                twin.set_load(amps)

    @scpi("[SOURce]:FUNCtion", "[SOURce]:FUNCtion:MODE")
    def _func(self, args: Args) -> None:
        args.expect(1)
        mode = MODES[args.choice(0, "CURRent", "VOLTage", "RESistance", "POWer")]
        with self.bench.lock:
            if mode == "VOLT" and self.bench.twin.load.on:
                raise ScpiError(-221, "emulated load cannot regulate voltage (CV)")
        self.mode = mode

    @scpi("[SOURce]:FUNCtion?", "[SOURce]:FUNCtion:MODE?")
    def _func_q(self, args: Args) -> str:
        args.expect(0)
        return self.mode

    def _set(self, key: str, value: float) -> None:
        self.setpoints[key] = value

    def _query(self, args: Args, key: str, low: float, high: float) -> str:
        limit = args.limit_query(low, high, low)
        return limit if limit is not None else format_reading(self.setpoints[key])

    @scpi("[SOURce]:CURRent[:LEVel][:IMMediate][:AMPLitude]")
    def _curr(self, args: Args) -> None:
        args.expect(1)
        self._set("CURR", args.number(0, 0.0, self.max_a, default=0.0, unit="A"))

    @scpi("[SOURce]:CURRent[:LEVel][:IMMediate][:AMPLitude]?")
    def _curr_q(self, args: Args) -> str:
        return self._query(args, "CURR", 0.0, self.max_a)

    @scpi("[SOURce]:VOLTage[:LEVel][:IMMediate][:AMPLitude]")
    def _volt(self, args: Args) -> None:
        args.expect(1)
        self._set("VOLT", args.number(0, 0.0, self.max_v, default=0.0, unit="V"))

    @scpi("[SOURce]:VOLTage[:LEVel][:IMMediate][:AMPLitude]?")
    def _volt_q(self, args: Args) -> str:
        return self._query(args, "VOLT", 0.0, self.max_v)

    @scpi("[SOURce]:RESistance[:LEVel][:IMMediate][:AMPLitude]")
    def _res(self, args: Args) -> None:
        args.expect(1)
        self._set("RES", args.number(0, *RES_RANGE_OHM, default=RES_RANGE_OHM[1], unit="OHM"))

    @scpi("[SOURce]:RESistance[:LEVel][:IMMediate][:AMPLitude]?")
    def _res_q(self, args: Args) -> str:
        return self._query(args, "RES", *RES_RANGE_OHM)

    @scpi("[SOURce]:POWer[:LEVel][:IMMediate][:AMPLitude]")
    def _pow(self, args: Args) -> None:
        args.expect(1)
        self._set("POW", args.number(0, 0.0, self.max_w, default=0.0, unit="W"))

    @scpi("[SOURce]:POWer[:LEVel][:IMMediate][:AMPLitude]?")
    def _pow_q(self, args: Args) -> str:
        return self._query(args, "POW", 0.0, self.max_w)

    @scpi("[SOURce]:INPut[:STATe]")
    def _inp(self, args: Args) -> None:
        args.expect(1)
        on = args.boolean(0)
        if on and self.mode == "VOLT":
            raise ScpiError(-221, "emulated load cannot regulate voltage (CV)")
        with self.bench.lock:
            self.bench.twin.load_input(on)

    @scpi("[SOURce]:INPut[:STATe]?")
    def _inp_q(self, args: Args) -> str:
        args.expect(0)
        with self.bench.lock:
            return bool_text(self.bench.twin.load.on)

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

    @scpi("MEASure[:SCALar]:POWer[:DC]?")
    def _meas_pow(self, args: Args) -> str:
        args.expect(0)
        with self.bench.lock:
            volts, amps = self.bench.twin.load_reading()
        return format_reading(volts * amps)

    @scpi("SYSTem:REMote", "SYSTem:LOCal")
    def _remote(self, args: Args) -> None:
        args.expect(0)
