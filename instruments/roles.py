"""Role interfaces: what a check may ask of the bench, whatever instrument fills the role.

Check code speaks only these (``bench.load.set_current(100)``), never SCPI or CAN. A driver
implements one role for one instrument family; the station file says which driver fills which
role at which address. The same drivers reach real instruments and the emulated bench.
Units are SI and explicit in names; currents are + into the bank (charging) where a sign
matters, as the BMS protocols report.
"""

from __future__ import annotations

from typing import Callable

from abc import ABC, abstractmethod
from dataclasses import dataclass, field


class InstrumentError(Exception):
    """An instrument failed: names the instrument, its resource and the command."""

    def __init__(self, instrument: str, resource: str, command: str, problem: str):
        self.instrument, self.resource, self.command, self.problem = instrument, resource, command, problem
        super().__init__(f"{instrument} at {resource}: '{command}': {problem}")


class SetpointRefused(InstrumentError):
    """A setpoint above the instrument's configured rating: refused before it is sent."""


class Instrument(ABC):
    """Every bench instrument identifies itself and can be put in a safe state."""

    name: str = "instrument"
    resource: str = ""
    # called before every exchange: the harness sets it so that a pending Ctrl-C/SIGTERM whose
    # exception was swallowed is raised again at the next instrument call (harness/supervisor.py)
    before_io: "Callable[[], None] | None" = None

    @abstractmethod
    def identity(self) -> str:
        """The instrument's own identification (``*IDN?``, or the BMS's manufacturer/firmware)."""

    @abstractmethod
    def safe_state(self) -> None:
        """De-energise: outputs and inputs off, contacts open. Must not raise if already safe."""

    def close(self) -> None:
        """Release the connection."""


class DcSupply(Instrument):
    """A DC source used as charger: constant voltage with a current limit; sources only."""

    @abstractmethod
    def set_voltage(self, volts: float) -> None: ...

    @abstractmethod
    def set_current(self, amps: float) -> None: ...

    @abstractmethod
    def output(self, on: bool) -> None: ...

    @abstractmethod
    def is_on(self) -> bool: ...

    @abstractmethod
    def measure_voltage(self) -> float: ...

    @abstractmethod
    def measure_current(self) -> float: ...


class ElectronicLoad(Instrument):
    """A DC electronic load in constant-current mode."""

    @abstractmethod
    def set_current(self, amps: float) -> None: ...

    @abstractmethod
    def input(self, on: bool) -> None: ...

    @abstractmethod
    def is_on(self) -> bool: ...

    @abstractmethod
    def measure_voltage(self) -> float: ...

    @abstractmethod
    def measure_current(self) -> float: ...


@dataclass
class Waveform:
    """Samples taken at a fixed interval, starting at ``t0_s`` on the bench clock."""

    interval_s: float
    samples: list[float]
    unit: str
    t0_s: float = 0.0

    def times(self) -> list[float]:
        return [self.t0_s + k * self.interval_s for k in range(len(self.samples))]


class Dmm(Instrument):
    """A DMM wired across two points, with a digitise mode for transients."""

    @abstractmethod
    def measure_voltage(self) -> float: ...

    @abstractmethod
    def arm_digitise(self, interval_s: float, count: int) -> None:
        """Start a capture of ``count`` voltage samples ``interval_s`` apart."""

    @abstractmethod
    def fetch_waveform(self) -> Waveform:
        """The armed capture, once it has completed."""


class Scanner(Instrument):
    """Multiplexed measurements by channel: voltages, shunt voltages, thermocouples."""

    @abstractmethod
    def voltages(self, channels: list[int]) -> dict[int, float]: ...

    @abstractmethod
    def temperatures(self, channels: list[int]) -> dict[int, float]: ...


class Actuator(Instrument):
    """Relay channels that drive contactor coils."""

    @abstractmethod
    def close_channel(self, channel: int) -> None: ...

    @abstractmethod
    def open_channel(self, channel: int) -> None: ...

    @abstractmethod
    def is_closed(self, channel: int) -> bool: ...


class AcIrMeter(Instrument):
    """A 1 kHz AC internal-resistance meter (with the open-circuit voltage it reads alongside)."""

    @abstractmethod
    def measure(self) -> tuple[float, float]:
        """(resistance in ohm, voltage in V)."""


@dataclass
class BmsTelemetry:
    voltage_v: float
    current_a: float
    temperature_c: float
    soc_pct: float
    soh_pct: float
    min_cell_v: float | None = None
    max_cell_v: float | None = None


@dataclass
class BmsLimits:
    charge_voltage_v: float
    charge_current_a: float
    discharge_current_a: float
    discharge_voltage_v: float


@dataclass
class BmsStatus:
    alarms: set[str] = field(default_factory=set)
    warnings: set[str] = field(default_factory=set)
    modules_online: int | None = None
    modules_offline: int | None = None
    installed_capacity_ah: float | None = None
    online_capacity_ah: float | None = None
    charge_enable: bool | None = None
    discharge_enable: bool | None = None


class Bms(Instrument):
    """The battery's BMS as an inverter sees it (CAN or Modbus/SunSpec).

    The harness plays the inverter: it sends the keep-alive periodically; a test may stop and
    resume it, and silence from the battery is detected and timed.
    """

    @abstractmethod
    def firmware(self) -> str: ...

    @abstractmethod
    def telemetry(self) -> BmsTelemetry: ...

    @abstractmethod
    def limits(self) -> BmsLimits: ...

    @abstractmethod
    def status(self) -> BmsStatus: ...

    @abstractmethod
    def heartbeat(self, on: bool) -> None:
        """Start or stop the inverter-side keep-alive (CAN 0x305 / SunSpec CtrlHb)."""

    @abstractmethod
    def seconds_since_heard(self) -> float:
        """Bench time since the battery last sent anything (silence detection)."""
