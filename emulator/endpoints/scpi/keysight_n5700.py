"""Emulated Keysight N5700 system DC supply: its SCPI dialect over a bench (choices: emulator/endpoints/scpi_instruments.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from emulator.endpoints.scpi.base import BenchDevice, bool_text
from emulator.scpi_server import Args, ScpiError, format_reading, scpi

if TYPE_CHECKING:
    from emulator.bench import EmulatedBench


class KeysightN5700(BenchDevice):
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
            return bool_text(self.bench.twin.supply.on)

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
