"""Emulated Keysight N5700 / N8700 system DC supply: one real model's SCPI over a bench.

Ranges are the model's (:mod:`emulator.endpoints.scpi.models`), as the *N5700 Series
Programming Guide* gives them: voltage and current programmable from 0 to the rating (the
supply's own limit is 105 %; the emulator stops at the rating, so nothing that passes here
relies on the margin), over-voltage protection (``VOLT:PROT``) from 5 % to 110 % of rated voltage, under-voltage limit
(``VOLT:LIM:LOW``) from 0 to 95 %. The supply keeps a 5 % margin on both sides of its setpoint:
``VOLT`` must stay at or below OVP / 1.05 and at or above UVL x 1.05, and an OVP or UVL that
would break it is refused (``-222``) -- as the instrument does, rather than moving the other
setting. Output is rectangular (no power limit below volts x amps).

Over-voltage protection trips when the output terminals exceed the OVP level: output off,
``STAT:QUES:COND?`` bit 0 (OV) set until ``OUTP:PROT:CLE`` with the cause gone. The emulator
checks it whenever the supply is addressed (the twin has no hook that runs per time step for
an instrument), which is when a harness could observe it anyway.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emulator.endpoints.scpi.base import BenchDevice, bool_text
from emulator.endpoints.scpi.models import N5700_MODELS, InstrumentModel, model
from emulator.scpi_server import Args, ScpiError, format_reading, scpi

if TYPE_CHECKING:
    from emulator.bench import EmulatedBench

PROGRAM_MARGIN = 1.0  # VOLT and CURR programmable to the rating (the instrument: 105 %)
OVP_LOW, OVP_HIGH = 0.05, 1.10  # OVP range, fraction of rated voltage
UVL_HIGH = 0.95  # UVL range 0..95 % of rated voltage
SETPOINT_GAP = 1.05  # VOLT <= OVP / 1.05 and VOLT >= UVL * 1.05
QUES_OV = 1 << 0  # questionable status: over-voltage protection tripped
TOLERANCE = 1e-9  # relative: 12 V x 1.05 is 12.6 V, whatever binary floating point says


class KeysightN5700(BenchDevice):
    """Keysight N5700/N8700 across the bank terminals (CV with a current limit).

    ``instrument`` is the real model emulated (default N5767A: 60 V, 25 A, 1.5 kW).
    """

    model = "N5767A"
    idn_format = "Keysight Technologies,{model},{serial},1.0-emulated"

    def __init__(self, bench: "EmulatedBench", serial: str, instrument: InstrumentModel | None = None):
        self.instrument = instrument or model(self.model)
        if self.instrument not in N5700_MODELS:
            raise ValueError(f"{self.instrument.name} is not an N5700/N8700 model")
        self.model = self.instrument.name
        super().__init__(bench, serial)
        self.max_v = self.instrument.voltage_v * PROGRAM_MARGIN
        self.max_a = self.instrument.current_a * PROGRAM_MARGIN
        self.ovp_v = self.uvl_v = 0.0
        self.questionable = 0
        self._power_on_limits()

    def _power_on_limits(self) -> None:
        self.ovp_v = OVP_HIGH * self.instrument.voltage_v
        self.uvl_v = 0.0
        self.questionable = 0

    def reset(self) -> None:
        twin = self.bench.twin
        with self.bench.lock:
            twin.supply_output(False)
            twin.set_supply(0.0, 0.0)
        self._power_on_limits()

    def execute(self, line: str) -> str | None:
        self._watch_protection()
        return super().execute(line)

    def _watch_protection(self) -> None:
        """Trip OVP if the output terminals are above the level: output off, OV latched."""
        with self.bench.lock:
            twin = self.bench.twin
            if twin.supply.on and twin.supply_reading()[0] > self.ovp_v:
                twin.supply_output(False)
                self.questionable |= QUES_OV

    # -- voltage ---------------------------------------------------------------------------
    def _voltage_window(self) -> tuple[float, float]:
        """Where VOLT may be set now: above UVL x 1.05, below OVP / 1.05 and the range."""
        return self.uvl_v * SETPOINT_GAP, min(self.max_v, self.ovp_v / SETPOINT_GAP)

    @scpi("[SOURce]:VOLTage[:LEVel][:IMMediate][:AMPLitude]")
    def _volt(self, args: Args) -> None:
        args.expect(1)
        volts = args.number(0, 0.0, self.max_v, default=0.0, unit="V")
        low, high = self._voltage_window()
        if volts > high * (1 + TOLERANCE):
            raise ScpiError(-222, f"VOLT {volts:g} above VOLT:PROT {self.ovp_v:g} / 1.05")
        if volts < low * (1 - TOLERANCE):
            raise ScpiError(-222, f"VOLT {volts:g} below VOLT:LIM:LOW {self.uvl_v:g} x 1.05")
        with self.bench.lock:
            self.bench.twin.set_supply(volts, self.bench.twin.supply.current_a)

    @scpi("[SOURce]:VOLTage[:LEVel][:IMMediate][:AMPLitude]?")
    def _volt_q(self, args: Args) -> str:
        limit = args.limit_query(0.0, self.max_v, 0.0)
        if limit is not None:
            return limit
        with self.bench.lock:
            return format_reading(self.bench.twin.supply.voltage_v)

    # -- current ---------------------------------------------------------------------------
    @scpi("[SOURce]:CURRent[:LEVel][:IMMediate][:AMPLitude]")
    def _curr(self, args: Args) -> None:
        args.expect(1)
        amps = args.number(0, 0.0, self.max_a, default=0.0, unit="A")
        with self.bench.lock:
            self.bench.twin.set_supply(self.bench.twin.supply.voltage_v, amps)

    @scpi("[SOURce]:CURRent[:LEVel][:IMMediate][:AMPLitude]?")
    def _curr_q(self, args: Args) -> str:
        limit = args.limit_query(0.0, self.max_a, 0.0)
        if limit is not None:
            return limit
        with self.bench.lock:
            return format_reading(self.bench.twin.supply.current_a)

    # -- over-voltage protection and under-voltage limit -------------------------------------
    def _ovp_range(self) -> tuple[float, float]:
        rated = self.instrument.voltage_v
        return OVP_LOW * rated, OVP_HIGH * rated

    @scpi("[SOURce]:VOLTage:PROTection[:LEVel]")
    def _ovp(self, args: Args) -> None:
        args.expect(1)
        low, high = self._ovp_range()
        volts = args.number(0, low, high, default=high, unit="V")
        with self.bench.lock:
            setpoint = self.bench.twin.supply.voltage_v
        if volts < setpoint * SETPOINT_GAP * (1 - TOLERANCE):
            raise ScpiError(-222, f"VOLT:PROT {volts:g} below VOLT {setpoint:g} x 1.05")
        self.ovp_v = volts

    @scpi("[SOURce]:VOLTage:PROTection[:LEVel]?")
    def _ovp_q(self, args: Args) -> str:
        low, high = self._ovp_range()
        limit = args.limit_query(low, high, high)
        return limit if limit is not None else format_reading(self.ovp_v)

    @scpi("[SOURce]:VOLTage:LIMit:LOW")
    def _uvl(self, args: Args) -> None:
        args.expect(1)
        high = UVL_HIGH * self.instrument.voltage_v
        volts = args.number(0, 0.0, high, default=0.0, unit="V")
        with self.bench.lock:
            setpoint = self.bench.twin.supply.voltage_v
        if volts * SETPOINT_GAP > setpoint * (1 + TOLERANCE):
            raise ScpiError(-222, f"VOLT:LIM:LOW {volts:g} above VOLT {setpoint:g} / 1.05")
        self.uvl_v = volts

    @scpi("[SOURce]:VOLTage:LIMit:LOW?")
    def _uvl_q(self, args: Args) -> str:
        limit = args.limit_query(0.0, UVL_HIGH * self.instrument.voltage_v, 0.0)
        return limit if limit is not None else format_reading(self.uvl_v)

    @scpi("OUTPut:PROTection:CLEar")
    def _prot_clear(self, args: Args) -> None:
        """Clear latched protection; refused while the cause (terminals above OVP) is present."""
        args.expect(0)
        with self.bench.lock:
            volts = self.bench.twin.supply_reading()[0]
        if volts > self.ovp_v:
            raise ScpiError(-221, f"output at {volts:.3g} V is still above VOLT:PROT {self.ovp_v:g}")
        self.questionable = 0

    @scpi("STATus:QUEStionable:CONDition?")
    def _ques_cond(self, args: Args) -> str:
        args.expect(0)
        return str(self.questionable)

    # -- output and measurements -------------------------------------------------------------
    @scpi("OUTPut[:STATe]")
    def _outp(self, args: Args) -> None:
        args.expect(1)
        on = args.boolean(0)
        if on and self.questionable & QUES_OV:
            raise ScpiError(-221, "over-voltage protection tripped: OUTP:PROT:CLE first")
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
