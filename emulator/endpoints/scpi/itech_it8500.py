"""Emulated ITECH IT8500+ electronic load: its SCPI dialect over a bench (choices: emulator/endpoints/scpi_instruments.py)."""

from __future__ import annotations

from emulator.endpoints.scpi.base import BenchDevice, bool_text
from emulator.scpi_server import Args, ScpiError, format_reading, scpi


class ItechIt8500(BenchDevice):
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

    @scpi("SYSTem:REMote", "SYSTem:LOCal")
    def _remote(self, args: Args) -> None:
        args.expect(0)
