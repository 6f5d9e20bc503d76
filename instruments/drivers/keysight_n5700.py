"""Keysight N5700 / N8700 system DC supply, used as the bank's charger.

Commands from the *Keysight N5700 Series Programming Guide* (the N8700 uses the same set):
``VOLT``, ``CURR``, ``OUTP``, ``MEAS:VOLT?``/``MEAS:CURR?``, over-voltage protection
``VOLT:PROT[:LEV]``, under-voltage limit ``VOLT:LIM:LOW``, ``OUTP:PROT:CLE`` and the
questionable status condition ``STAT:QUES:COND?``. The supply keeps a 5 % margin around its
voltage setpoint: VOLT <= OVP / 1.05 and VOLT >= UVL x 1.05; a setting that would break it is
refused by the instrument (``-222``), which this driver reports as an InstrumentError.
"""

from __future__ import annotations

from instruments.roles import DcSupply
from instruments.scpi import INT, ON_OFF, ScpiInstrument, control, measurement, non_negative

QUES_OV = 1 << 0  # STAT:QUES bit 0: over-voltage protection tripped


class KeysightN5700(ScpiInstrument, DcSupply):
    """CV source with a current limit; ``rating`` keys ``voltage_v`` and ``current_a``.

    The over-voltage protection level is bounded by the same voltage rating: an OVP above it
    would no longer protect what the rating protects.
    """

    voltage = control("VOLT?", "VOLT {}", "Output voltage setpoint, V", validator=non_negative,
                      rating="voltage_v")
    current = control("CURR?", "CURR {}", "Output current limit, A", validator=non_negative,
                      rating="current_a")
    over_voltage_protection = control("VOLT:PROT?", "VOLT:PROT {}", "Over-voltage protection level, V",
                                      validator=non_negative, rating="voltage_v")
    under_voltage_limit = control("VOLT:LIM:LOW?", "VOLT:LIM:LOW {}", "Under-voltage limit, V",
                                  validator=non_negative, rating="voltage_v")
    enabled = control("OUTP?", "OUTP {}", "Output on", codec=ON_OFF)
    questionable = measurement("STAT:QUES:COND?", "Questionable status condition register", codec=INT)
    measured_voltage = measurement("MEAS:VOLT?", "Voltage at the output, V")
    measured_current = measurement("MEAS:CURR?", "Current out of the output, A")

    def set_voltage(self, volts: float) -> None:
        self.voltage = volts

    def set_current(self, amps: float) -> None:
        self.current = amps

    def output(self, on: bool) -> None:
        self.enabled = bool(on)

    def is_on(self) -> bool:
        return bool(self.enabled)

    def measure_voltage(self) -> float:
        return float(self.measured_voltage)

    def measure_current(self) -> float:
        return float(self.measured_current)

    def program_protection(self, ovp_v: float, uvl_v: float) -> None:
        """Program over-voltage protection, then the under-voltage limit (bench preparation).

        Why both: OVP turns the output off if the terminals ever exceed ``ovp_v`` (a runaway
        setpoint or a wrong DUT), and UVL stops anyone setting the output below ``uvl_v``.
        Order and margins are the supply's: it refuses (``-222``) an OVP below the present
        voltage setpoint x 1.05 and a UVL above the present setpoint / 1.05. So call it with
        the output voltage already set between ``uvl_v * 1.05`` and ``ovp_v / 1.05`` -- or
        with the power-on setpoint 0 V and ``uvl_v=0``, then set the voltage. ``ovp_v`` is
        bounded by the station's voltage rating, like any setpoint (refused before sending).
        """
        self.over_voltage_protection = ovp_v
        self.under_voltage_limit = uvl_v

    def clear_protection(self) -> None:
        """``OUTP:PROT:CLE``: clear a latched protection (OVP trip); the output stays off until
        switched on again. The supply refuses it while the cause is still present."""
        self.write("OUTP:PROT:CLE")

    def questionable_status(self) -> int:
        """The questionable status condition register (bit 0 = over-voltage tripped)."""
        return int(self.questionable)

    def over_voltage_tripped(self) -> bool:
        return bool(self.questionable_status() & QUES_OV)

    def safe_state(self) -> None:
        """Output off (harmless when it already is)."""
        self.enabled = False
