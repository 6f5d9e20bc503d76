"""Emulated ITECH IT6000C regenerative DC supply: one real model's SCPI over a bench.

A bank-scale bench (200-450 A at 51 V, 6-18 kW) uses a regenerative bidirectional unit in
place of a supply and an electronic load. The unit can source and sink; the twin's bench has a
source-only supply element and a sink-only load element. The emulated station therefore has
*two* units, one per role (the simplest honest arrangement, and a common one in a lab: a
charger and a discharger that can each recover energy):

- ``role="supply"`` drives the twin's supply: voltage priority (``FUNC VOLT``), ``VOLT`` the
  setpoint, ``CURR:LIM`` the positive (sourcing) current limit. The negative limit
  ``CURR:LIM:NEG`` is accepted and kept, but the twin's supply never sinks.
- ``role="load"`` drives the twin's load: current priority (``FUNC CURR``), ``CURR`` negative
  to sink (``CURR -200``: 200 A out of the bank). A positive (sourcing) current with the output
  on is ``-221``: the twin's load element cannot source.

Ranges from the model (:mod:`emulator.endpoints.scpi.models`; *IT6000C Series Programming
Guide*): ``VOLT`` 0..rated, ``CURR`` and ``CURR:LIM[:NEG]`` -rated..+rated (limits signed as the
guide has them: positive >= 0, negative <= 0), ``POW:LIM[:NEG]`` likewise, ``VOLT:PROT``
0..1.1 x rated; beyond them ``-222``. Whatever the setpoint, the unit never passes more than
its rated power: when sinking, the current is limited to power / terminal volts, re-evaluated
whenever the unit is addressed (the twin has no per-step hook for an instrument).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emulator.endpoints.scpi.base import BenchDevice, bool_text
from emulator.endpoints.scpi.models import IT6000C_MODELS, InstrumentModel, model
from emulator.scpi_server import Args, ScpiError, format_reading, scpi

if TYPE_CHECKING:
    from emulator.bench import EmulatedBench

OVP_HIGH = 1.10
ROLES = ("supply", "load")


class ItechIt6000c(BenchDevice):
    """ITECH IT6000C bound to one role of the bench: ``supply`` or ``load``."""

    model = "IT6018C-80-450"
    idn_format = "ITECH Ltd.,{model},{serial},1.0-emulated"

    def __init__(self, bench: "EmulatedBench", serial: str, instrument: InstrumentModel | None = None,
                 role: str = "supply"):
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        self.instrument = instrument or model(self.model)
        if self.instrument not in IT6000C_MODELS:
            raise ValueError(f"{self.instrument.name} is not an IT6000C model")
        self.model, self.role = self.instrument.name, role
        super().__init__(bench, serial)
        self.max_v, self.max_a = self.instrument.voltage_v, self.instrument.current_a
        self.max_w = self.instrument.power_w
        self._power_on()

    def _power_on(self) -> None:
        self.priority = "VOLT" if self.role == "supply" else "CURR"
        self.current_a = 0.0  # CC setpoint, + sourcing
        self.voltage_v = 0.0  # CV setpoint (the supply role keeps it in the twin too)
        self.limits = {"CURR:POS": self.max_a, "CURR:NEG": -self.max_a,
                       "VOLT:POS": self.max_v, "VOLT:NEG": 0.0,
                       "POW:POS": self.max_w, "POW:NEG": -self.max_w}
        self.ovp_v = OVP_HIGH * self.max_v

    def reset(self) -> None:
        self._power_on()
        with self.bench.lock:
            twin = self.bench.twin
            if self.role == "supply":
                twin.supply_output(False)
                twin.set_supply(0.0, 0.0)
            else:
                twin.load_input(False)
                twin.set_load(0.0)

    def execute(self, line: str) -> str | None:
        self._regulate()
        reply = super().execute(line)
        self._regulate()
        return reply

    # -- the twin element this unit drives ----------------------------------------------------
    def _on(self) -> bool:
        twin = self.bench.twin
        return twin.supply.on if self.role == "supply" else twin.load.on

    def _reading(self) -> tuple[float, float]:
        """Terminal volts and current, + out of the unit (sourcing), as the unit measures."""
        twin = self.bench.twin
        if self.role == "supply":
            return twin.supply_reading()
        volts, amps = twin.load_reading()
        return volts, -amps

    def _regulate(self) -> None:
        """Apply setpoint, limits and the power rating to the twin element."""
        with self.bench.lock:
            twin = self.bench.twin
            if self.role == "supply":
                amps = min(self.limits["CURR:POS"], self.limits["POW:POS"] / max(twin.supply.voltage_v, 1e-3))
                if abs(amps - twin.supply.current_a) > 1e-9:
                    twin.set_supply(twin.supply.voltage_v, amps)
                return
            volts = max(twin.load_reading()[0], 0.0)
            sink = max(-self.current_a, 0.0)
            sink = min(sink, -self.limits["CURR:NEG"])
            if volts > 0:
                sink = min(sink, -self.limits["POW:NEG"] / volts)
            if abs(sink - twin.load.current_a) > 1e-9:
                twin.set_load(sink)

    # -- priority mode ------------------------------------------------------------------------
    @scpi("[SOURce]:FUNCtion", "[SOURce]:FUNCtion:MODE")
    def _func(self, args: Args) -> None:
        args.expect(1)
        mode = args.choice(0, "VOLTage", "CURRent")[:4]
        wanted = "VOLT" if self.role == "supply" else "CURR"
        with self.bench.lock:
            if mode != wanted and self._on():
                raise ScpiError(-221, f"emulated {self.role} unit works in {wanted} priority only")
        self.priority = mode

    @scpi("[SOURce]:FUNCtion?", "[SOURce]:FUNCtion:MODE?")
    def _func_q(self, args: Args) -> str:
        args.expect(0)
        return self.priority

    # -- voltage ------------------------------------------------------------------------------
    @scpi("[SOURce]:VOLTage[:LEVel][:IMMediate][:AMPLitude]")
    def _volt(self, args: Args) -> None:
        args.expect(1)
        volts = args.number(0, 0.0, self.max_v, default=0.0, unit="V")
        if volts > self.ovp_v:
            raise ScpiError(-222, f"VOLT {volts:g} above VOLT:PROT {self.ovp_v:g}")
        if self.role == "supply":
            with self.bench.lock:
                self.bench.twin.set_supply(volts, self.bench.twin.supply.current_a)
        self.voltage_v = volts

    @scpi("[SOURce]:VOLTage[:LEVel][:IMMediate][:AMPLitude]?")
    def _volt_q(self, args: Args) -> str:
        limit = args.limit_query(0.0, self.max_v, 0.0)
        if limit is not None:
            return limit
        with self.bench.lock:
            if self.role == "supply":
                return format_reading(self.bench.twin.supply.voltage_v)
        return format_reading(self.voltage_v)

    # -- current ------------------------------------------------------------------------------
    @scpi("[SOURce]:CURRent[:LEVel][:IMMediate][:AMPLitude]")
    def _curr(self, args: Args) -> None:
        args.expect(1)
        amps = args.number(0, -self.max_a, self.max_a, default=0.0, unit="A")
        with self.bench.lock:
            if self.role == "load" and amps > 0 and self._on():
                raise ScpiError(-221, "emulated load unit sinks only (negative CURR)")
        self.current_a = amps

    @scpi("[SOURce]:CURRent[:LEVel][:IMMediate][:AMPLitude]?")
    def _curr_q(self, args: Args) -> str:
        limit = args.limit_query(-self.max_a, self.max_a, 0.0)
        return limit if limit is not None else format_reading(self.current_a)

    def _limit(self, args: Args, key: str, low: float, high: float, unit: str) -> None:
        args.expect(1)
        self.limits[key] = args.number(0, low, high, default=high if high > 0 else low, unit=unit)

    def _limit_q(self, args: Args, key: str, low: float, high: float) -> str:
        limit = args.limit_query(low, high, high if high > 0 else low)
        return limit if limit is not None else format_reading(self.limits[key])

    @scpi("[SOURce]:CURRent:LIMit[:POSitive][:IMMediate][:AMPLitude]")
    def _curr_lim(self, args: Args) -> None:
        self._limit(args, "CURR:POS", 0.0, self.max_a, "A")

    @scpi("[SOURce]:CURRent:LIMit[:POSitive][:IMMediate][:AMPLitude]?")
    def _curr_lim_q(self, args: Args) -> str:
        return self._limit_q(args, "CURR:POS", 0.0, self.max_a)

    @scpi("[SOURce]:CURRent:LIMit:NEGative[:IMMediate][:AMPLitude]")
    def _curr_lim_neg(self, args: Args) -> None:
        self._limit(args, "CURR:NEG", -self.max_a, 0.0, "A")

    @scpi("[SOURce]:CURRent:LIMit:NEGative[:IMMediate][:AMPLitude]?")
    def _curr_lim_neg_q(self, args: Args) -> str:
        return self._limit_q(args, "CURR:NEG", -self.max_a, 0.0)

    @scpi("[SOURce]:VOLTage:LIMit[:POSitive][:IMMediate][:AMPLitude]")
    def _volt_lim(self, args: Args) -> None:
        self._limit(args, "VOLT:POS", 0.0, self.max_v, "V")

    @scpi("[SOURce]:VOLTage:LIMit[:POSitive][:IMMediate][:AMPLitude]?")
    def _volt_lim_q(self, args: Args) -> str:
        return self._limit_q(args, "VOLT:POS", 0.0, self.max_v)

    @scpi("[SOURce]:POWer:LIMit[:POSitive][:IMMediate][:AMPLitude]")
    def _pow_lim(self, args: Args) -> None:
        self._limit(args, "POW:POS", 0.0, self.max_w, "W")

    @scpi("[SOURce]:POWer:LIMit[:POSitive][:IMMediate][:AMPLitude]?")
    def _pow_lim_q(self, args: Args) -> str:
        return self._limit_q(args, "POW:POS", 0.0, self.max_w)

    @scpi("[SOURce]:POWer:LIMit:NEGative[:IMMediate][:AMPLitude]")
    def _pow_lim_neg(self, args: Args) -> None:
        self._limit(args, "POW:NEG", -self.max_w, 0.0, "W")

    @scpi("[SOURce]:POWer:LIMit:NEGative[:IMMediate][:AMPLitude]?")
    def _pow_lim_neg_q(self, args: Args) -> str:
        return self._limit_q(args, "POW:NEG", -self.max_w, 0.0)

    # -- protection ---------------------------------------------------------------------------
    @scpi("[SOURce]:VOLTage:PROTection[:LEVel]")
    def _ovp(self, args: Args) -> None:
        args.expect(1)
        self.ovp_v = args.number(0, 0.0, OVP_HIGH * self.max_v, default=OVP_HIGH * self.max_v, unit="V")

    @scpi("[SOURce]:VOLTage:PROTection[:LEVel]?")
    def _ovp_q(self, args: Args) -> str:
        limit = args.limit_query(0.0, OVP_HIGH * self.max_v, OVP_HIGH * self.max_v)
        return limit if limit is not None else format_reading(self.ovp_v)

    @scpi("OUTPut:PROTection:CLEar")
    def _prot_clear(self, args: Args) -> None:
        args.expect(0)

    @scpi("STATus:QUEStionable:CONDition?")
    def _ques_cond(self, args: Args) -> str:
        args.expect(0)
        return "0"

    # -- output and measurements --------------------------------------------------------------
    @scpi("OUTPut[:STATe]")
    def _outp(self, args: Args) -> None:
        args.expect(1)
        on = args.boolean(0)
        wanted = "VOLT" if self.role == "supply" else "CURR"
        if on and self.priority != wanted:
            raise ScpiError(-221, f"emulated {self.role} unit works in {wanted} priority only")
        if on and self.role == "load" and self.current_a > 0:
            raise ScpiError(-221, "emulated load unit sinks only (negative CURR)")
        with self.bench.lock:
            if self.role == "supply":
                self.bench.twin.supply_output(on)
            else:
                self.bench.twin.load_input(on)

    @scpi("OUTPut[:STATe]?")
    def _outp_q(self, args: Args) -> str:
        args.expect(0)
        with self.bench.lock:
            return bool_text(self._on())

    @scpi("MEASure[:SCALar]:VOLTage[:DC]?")
    def _meas_volt(self, args: Args) -> str:
        args.expect(0)
        with self.bench.lock:
            return format_reading(self._reading()[0])

    @scpi("MEASure[:SCALar]:CURRent[:DC]?")
    def _meas_curr(self, args: Args) -> str:
        args.expect(0)
        with self.bench.lock:
            return format_reading(self._reading()[1])

    @scpi("MEASure[:SCALar]:POWer[:DC]?")
    def _meas_pow(self, args: Args) -> str:
        args.expect(0)
        with self.bench.lock:
            volts, amps = self._reading()
        return format_reading(volts * amps)

    @scpi("SYSTem:REMote", "SYSTem:LOCal")
    def _remote(self, args: Args) -> None:
        args.expect(0)
