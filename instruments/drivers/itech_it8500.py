"""ITECH IT8500+ DC electronic load in constant-current mode.

Commands from the *IT8500+ Series Programming Guide* (V2.0): ``FUNC CURR|VOLT|RES|POW`` (CC,
CV, CR, CW), the setpoints ``CURR``/``VOLT``/``RES``/``POW``, ``INP``, ``MEAS:VOLT?``/
``MEAS:CURR?``/``MEAS:POW?`` and ``SYST:REM``, which puts the load under remote control (over
RS-232/USB it ignores bus setpoints until then; option ``remote_on_open`` sends it when the
driver connects). Each model has its own current, voltage and power rating; the load refuses a
setpoint beyond its range (``-222``) and limits the power it takes at its rating.
"""

from __future__ import annotations

from instruments.roles import ElectronicLoad
from typing import Any, ClassVar

from instruments.scpi import ON_OFF, WORD, ScpiInstrument, control, measurement, non_negative, one_of


class ItechIt8500(ScpiInstrument, ElectronicLoad):
    """Constant-current load; ``rating`` key ``current_a``.

    ``set_current`` puts the load in CC mode (``FUNC CURR``) the first time, since a load
    left in another mode by a previous user would read the setpoint as volts or ohms.
    """

    mode = control("FUNC?", "FUNC {}", "Regulation mode", codec=WORD,
                   validator=one_of("CURR", "VOLT", "RES", "POW"))
    current = control("CURR?", "CURR {}", "Constant-current setpoint, A", validator=non_negative,
                      rating="current_a")
    resistance = control("RES?", "RES {}", "Constant-resistance setpoint, ohm", validator=non_negative)
    power = control("POW?", "POW {}", "Constant-power setpoint, W", validator=non_negative,
                    rating="power_w")
    enabled = control("INP?", "INP {}", "Input on", codec=ON_OFF)
    measured_voltage = measurement("MEAS:VOLT?", "Voltage at the input, V")
    measured_current = measurement("MEAS:CURR?", "Current into the input, A")
    measured_power = measurement("MEAS:POW?", "Power into the input, W")

    OPTIONS: ClassVar[dict[str, Any]] = {**ScpiInstrument.OPTIONS, "remote_on_open": False}

    _constant_current = False

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.options["remote_on_open"]:
            try:
                self.remote()
            except Exception:
                self.close()
                raise

    def remote(self) -> None:
        """``SYST:REM``: accept setpoints from the bus (front panel locked)."""
        self.write("SYST:REM")

    def set_current(self, amps: float) -> None:
        command = type(self).current.command_for(self, amps)  # refused before anything is sent
        if not self._constant_current:
            self.mode = "CURR"
            self._constant_current = True
        self.write(command)

    def input(self, on: bool) -> None:
        self.enabled = bool(on)

    def is_on(self) -> bool:
        return bool(self.enabled)

    def measure_voltage(self) -> float:
        return float(self.measured_voltage)

    def measure_current(self) -> float:
        return float(self.measured_current)

    def reset(self) -> None:
        super().reset()
        self._constant_current = False

    def safe_state(self) -> None:
        """Input off (harmless when it already is)."""
        self.enabled = False
