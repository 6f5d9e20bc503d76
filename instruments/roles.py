"""Role protocols: what a check may ask of the bench, whatever instrument provides it.

Small interfaces in the manner of labgrid's protocols. Check code speaks only these
(``bench.load.set_current(100)``, ``bench.module_reports.module_reports()``), never SCPI, CAN
or SunSpec points. A driver class provides one or several protocols (the DAQ970A is a scanner
and an actuator in one session; the CAN BMS client gives BMS telemetry and service commands;
the SunSpec client BMS telemetry and per-module reports); several drivers may provide each.
Each protocol has a short name (:data:`PROTOCOLS`): checks declare the names they need, and a
station's drivers say which names it can serve, so a plan a station cannot run is refused
before anything is energised. The same drivers reach real instruments and the emulated bench.
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


@dataclass
class ModuleReport:
    """One module as its BMS reports it (per-module figures a bank BMS publishes)."""

    position: str                  # "s2p3"
    voltage_v: float | None = None
    soc_pct: float | None = None
    soh_pct: float | None = None
    serial: str | None = None
    temperature_c: float | None = None
    min_cell_v: float | None = None
    max_cell_v: float | None = None
    cells_balancing: int | None = None


@dataclass
class BankIdentity:
    """What the master BMS says the bank is."""

    manufacturer: str | None = None
    model: str | None = None
    firmware: str | None = None
    serial: str | None = None
    chemistry: str | None = None   # normalised: "LFP", "NMC", "LEAD_ACID", ...


class ModuleReports(ABC):
    """Per-module reports and the bank's identity, as a bank BMS publishes them (SunSpec 1,
    802, 804 and 805 on Modbus; other protocols may provide the same)."""

    @abstractmethod
    def module_reports(self) -> dict[str, ModuleReport]:
        """Every module the BMS reports, by position."""

    @abstractmethod
    def string_enabled(self) -> dict[str, bool]:
        """Parallel string (``p1`` ...) -> whether the master has admitted it."""

    @abstractmethod
    def bank_identity(self) -> BankIdentity: ...


class BmsService(ABC):
    """Bench service commands a BMS vendor's service tool gives (DOMAIN.md; 000's series
    MOSFET stress, 004's silent module). Module index: 0-based, bank order (series position
    first, then parallel index)."""

    @abstractmethod
    def force_disconnect(self, module_index: int, on: bool) -> None:
        """Open (``on``) or release one module's BMS switch."""

    @abstractmethod
    def silence_module(self, module_index: int, on: bool) -> None:
        """Make one module stop reporting to its master (``on``), or talk again."""


class CapacityReport(ABC):
    """The capacity the BMS says is installed (Pylontech CAN 0x379). SunSpec has no such point
    (802 ``AHRtg`` is what the master counts online), so a Modbus-only station lacks it."""

    @abstractmethod
    def installed_capacity_ah(self) -> float | None: ...


# protocol name (what checks declare and plans require) -> the interface that provides it
PROTOCOLS: dict[str, type] = {
    "supply": DcSupply,
    "load": ElectronicLoad,
    "digitiser": Dmm,
    "scanner": Scanner,
    "actuator": Actuator,
    "acir": AcIrMeter,
    "bms": Bms,
    "module_reports": ModuleReports,
    "bms_service": BmsService,
    "capacity_report": CapacityReport,
}


def protocols_of(cls: type) -> set[str]:
    """The protocol names a driver class provides."""
    return {name for name, interface in PROTOCOLS.items() if issubclass(cls, interface)}


def normalise_version(text: object) -> str:
    """A firmware version as one comparable text: "v2.1.0", "2.1" and "2.1.0" are all "2.1.0";
    a trailing build or pre-release tag is kept ("2.1.0-rc1"). Every driver reports through it,
    so two protocols reporting one firmware agree."""
    raw = str(text or "").strip().strip("\0").strip()
    if raw[:1] in ("v", "V") and raw[1:2].isdigit():
        raw = raw[1:]
    head, sep, tail = raw.partition("-")
    parts = head.split(".")
    if parts and all(p.isdigit() for p in parts):
        parts = [str(int(p)) for p in parts] + ["0"] * (3 - len(parts))
        head = ".".join(parts)
    return head + sep + tail
