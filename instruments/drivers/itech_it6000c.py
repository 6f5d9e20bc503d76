"""ITECH IT6000C regenerative bidirectional DC supply: a charger or a discharger for a bank.

One class provides both :class:`~instruments.roles.DcSupply` and
:class:`~instruments.roles.ElectronicLoad` (as the DAQ970A driver is scanner and actuator), since
the unit sources and sinks alike. What it does in a role is its ``mode`` option:

- ``source`` (a station's ``supply``): voltage priority, ``FUNC VOLT`` once, then ``VOLT`` for
  the setpoint and ``CURR:LIM`` for the (positive) current limit;
- ``sink`` (a station's ``load``): current priority, ``FUNC CURR`` once, then ``CURR -<amps>``:
  the unit's current is + out of it, so sinking is negative. ``measure_current`` reports the
  current *into* the unit (positive while it loads the bank), as an electronic load does.
- ``auto`` (default): ``sink`` when the instrument's name (its role) starts with ``load``,
  else ``source``.

Commands from the *IT6000C Series Programming Guide*: ``[SOUR:]FUNC VOLT|CURR``, ``VOLT``,
``CURR``, ``CURR:LIM[:POS]``, ``CURR:LIM:NEG``, ``POW:LIM[:POS]``/``:NEG``, ``VOLT:PROT``,
``OUTP``, ``OUTP:PROT:CLE``, ``MEAS:VOLT?``, ``MEAS:CURR?``, ``MEAS:POW?``, ``SYST:REM``.
Ratings (``voltage_v``, ``current_a``, ``power_w``) bound setpoints before anything is sent;
the unit itself refuses what is beyond its model (``-222``) and limits at its rated power.
"""

from __future__ import annotations

from typing import Any, ClassVar

from instruments.roles import DcSupply, ElectronicLoad, SetpointRefused
from instruments.scpi import (ON_OFF, WORD, ScpiInstrument, control, format_number, measurement,
                              non_negative, one_of)

MODES = ("auto", "source", "sink")


class ItechIt6000c(ScpiInstrument, DcSupply, ElectronicLoad):
    """IT6000C as the bench's supply (``mode: source``) or load (``mode: sink``)."""

    OPTIONS: ClassVar[dict[str, Any]] = {**ScpiInstrument.OPTIONS, "mode": "auto"}

    priority = control("FUNC?", "FUNC {}", "Priority mode: VOLT (CV) or CURR (CC)", codec=WORD,
                       validator=one_of("VOLT", "CURR"))
    voltage = control("VOLT?", "VOLT {}", "Voltage setpoint (voltage priority), V",
                      validator=non_negative, rating="voltage_v")
    current_limit = control("CURR:LIM?", "CURR:LIM {}", "Positive (sourcing) current limit, A",
                            validator=non_negative, rating="current_a")
    over_voltage_protection = control("VOLT:PROT?", "VOLT:PROT {}", "Over-voltage protection level, V",
                                      validator=non_negative, rating="voltage_v")
    enabled = control("OUTP?", "OUTP {}", "Output on", codec=ON_OFF)
    measured_voltage = measurement("MEAS:VOLT?", "Voltage at the output, V")
    measured_current = measurement("MEAS:CURR?", "Current out of the output, A (negative: sinking)")
    measured_power = measurement("MEAS:POW?", "Power out of the output, W (negative: sinking)")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        mode = str(self.options["mode"]).lower()
        if mode not in MODES:
            self.close()
            raise ValueError(f"{self.name}: option mode must be one of {', '.join(MODES)}, not {mode!r}")
        if mode == "auto":
            mode = "sink" if self.name.lower().startswith("load") else "source"
        self.mode = mode
        self._priority_set = False

    @property
    def sinking(self) -> bool:
        return self.mode == "sink"

    def _ensure_priority(self) -> None:
        """Put the unit in its mode's priority once (a previous user may have left the other)."""
        if not self._priority_set:
            self.priority = "CURR" if self.sinking else "VOLT"
            self._priority_set = True

    # -- DcSupply / ElectronicLoad ------------------------------------------------------------
    def set_voltage(self, volts: float) -> None:
        """Voltage setpoint (source mode: what the bank is charged to)."""
        command = type(self).voltage.command_for(self, volts)
        self._ensure_priority()
        self.write(command)

    def set_current(self, amps: float) -> None:
        """Source mode: the charge current limit. Sink mode: the current taken from the bank."""
        if not self.sinking:
            command = type(self).current_limit.command_for(self, amps)
            self._ensure_priority()
            self.write(command)
            return
        try:
            amps = non_negative(amps)
        except ValueError as exc:
            raise SetpointRefused(self.name, self.resource, f"CURR -{amps}", f"current: {exc}") from None
        limit = self.rating.get("current_a")
        command = f"CURR {format_number(-amps)}" if amps else "CURR 0"
        if limit is not None and amps > limit:
            raise SetpointRefused(self.name, self.resource, command,
                                  f"current {amps:g} is above the rating current_a={limit:g}")
        self._ensure_priority()
        self.write(command)

    def output(self, on: bool) -> None:
        self.enabled = bool(on)

    def input(self, on: bool) -> None:
        self.enabled = bool(on)

    def is_on(self) -> bool:
        return bool(self.enabled)

    def measure_voltage(self) -> float:
        return float(self.measured_voltage)

    def measure_current(self) -> float:
        """Source mode: current out of the unit; sink mode: current into it (both + in use)."""
        amps = float(self.measured_current)
        return -amps if self.sinking else amps

    def program_protection(self, ovp_v: float, uvl_v: float = 0.0) -> None:
        """Program over-voltage protection (``VOLT:PROT``) for bench preparation, as the
        N5700 driver's method of the same name does. The IT6000C has no under-voltage limit
        that refuses low setpoints, so ``uvl_v`` must be 0 (refused otherwise, before sending)."""
        if uvl_v:
            raise SetpointRefused(self.name, self.resource, "VOLT:PROT",
                                  f"under-voltage limit {uvl_v:g} V: the IT6000C has none (use 0)")
        self.over_voltage_protection = ovp_v

    def clear_protection(self) -> None:
        """``OUTP:PROT:CLE``: clear a latched protection; the output stays off until switched on."""
        self.write("OUTP:PROT:CLE")

    def reset(self) -> None:
        super().reset()
        self._priority_set = False

    def safe_state(self) -> None:
        """Output off (harmless when it already is)."""
        self.enabled = False
