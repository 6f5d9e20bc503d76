"""Keysight N5700 / N8700 system DC supply, used as the bank's charger."""

from __future__ import annotations

from instruments.roles import DcSupply
from instruments.scpi import ON_OFF, ScpiInstrument, control, measurement, non_negative


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
    enabled = control("OUTP?", "OUTP {}", "Output on", codec=ON_OFF)
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

    def safe_state(self) -> None:
        """Output off (harmless when it already is)."""
        self.enabled = False
