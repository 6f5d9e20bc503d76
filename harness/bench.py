"""Assemble the bench from a station: drivers by name from the registry, addresses from the file.

An emulated station first starts the twin and its endpoints on loopback (through
``harness/emulated.py``, the one door to the emulator) and fills in the addresses; the drivers are the same classes a hardware station uses. Check code receives the
:class:`Bench`: roles (``bench.load``, ``bench.scanner``, ``bench.bms``), the channel map and
the clock -- nothing that says which kind of bench it is.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bankmodel.channels import ChannelMap
from harness.clock import BenchClock, VirtualClock, WallClock
from instruments.drivers import get_driver
from instruments.roles import (PROTOCOLS, AcIrMeter, Actuator, Bms, BmsService, DcSupply, Dmm,
                               ElectronicLoad, Instrument, ModuleReports, Scanner)


class ProtocolNotDeclared(RuntimeError):
    """A check used a role protocol it did not declare (``needs``/``uses``): a harness bug, the
    step ends ERROR -- the plan was validated against the declaration, not against this use."""


# instrument roles with a protocol of the same name
_ROLE_PROTOCOLS = ("supply", "load", "scanner", "actuator", "acir")


@dataclass
class Bench:
    """What a check may use: role protocols, the channel map and the clock.

    A protocol is found by what the connected drivers provide (``instruments.roles.PROTOCOLS``),
    not by which transport they speak: ``bench.bms`` is the battery as the inverter sees it (the
    CAN client when the station has CAN, else the Modbus one), ``bench.module_reports`` whoever
    publishes per-module reports, ``bench.bms_service`` whoever takes service commands. While a
    step runs the bench is restricted to the protocols its check declares.
    """

    instruments: dict[str, Instrument]
    channels: ChannelMap
    clock: BenchClock
    bus_clients: dict[str, Any] = field(default_factory=dict)  # "can" / "modbus" -> BMS client
    station_name: str = ""
    emulated: bool = False
    allowed: frozenset[str] | None = None  # protocols the running check declared (None: all)
    check_name: str = ""

    # -- protocols ---------------------------------------------------------------------------
    def _providers(self) -> list[Any]:
        unique = {id(i): i for i in list(self.instruments.values()) + list(self.bus_clients.values())}
        return list(unique.values())

    def provides(self, protocol: str) -> bool:
        return any(isinstance(p, PROTOCOLS[protocol]) for p in self._providers())

    def _use(self, protocol: str) -> None:
        if self.allowed is not None and protocol not in self.allowed:
            raise ProtocolNotDeclared(f"check '{self.check_name}' uses protocol '{protocol}', which it "
                                      f"does not declare (needs/uses: {', '.join(sorted(self.allowed)) or 'none'})")

    def provider(self, protocol: str) -> Any:
        """The instrument or client providing ``protocol`` (LookupError if none does)."""
        self._use(protocol)
        for candidate in self._providers():
            if isinstance(candidate, PROTOCOLS[protocol]):
                return candidate
        raise LookupError(f"the station provides no '{protocol}'")

    def restricted_to(self, protocols: frozenset[str], check_name: str) -> "Bench":
        """This bench as a check that declared ``protocols`` may use it."""
        return dataclasses.replace(self, allowed=frozenset(protocols), check_name=check_name)

    def _role(self, role: str, kind: type) -> Any:
        self._use(role if role in _ROLE_PROTOCOLS else "digitiser")
        instrument = self.instruments.get(role)
        if instrument is None and role in _ROLE_PROTOCOLS:
            # validation accepts a protocol from whichever instrument provides it (the DAQ970A
            # listed once, as scanner, also drives the relays): the run finds it the same way
            instrument = next((i for i in self._providers() if isinstance(i, kind)), None)
        if instrument is None:
            raise LookupError(f"the station has no '{role}' instrument")
        if not isinstance(instrument, kind):
            raise TypeError(f"station role '{role}' is a {type(instrument).__name__}, not a {kind.__name__}")
        return instrument

    @property
    def supply(self) -> DcSupply:
        return self._role("supply", DcSupply)

    @property
    def load(self) -> ElectronicLoad:
        return self._role("load", ElectronicLoad)

    @property
    def scanner(self) -> Scanner:
        return self._role("scanner", Scanner)

    @property
    def actuator(self) -> Actuator:
        return self._role("actuator", Actuator)

    @property
    def acir(self) -> AcIrMeter:
        return self._role("acir", AcIrMeter)

    def dmm(self, name: str) -> Dmm:
        return self._role(name, Dmm)

    @property
    def bms(self) -> Bms | None:
        """The battery as the inverter sees it: CAN when the station has it, else Modbus."""
        self._use("bms")
        for bus in ("can", "modbus"):
            if bus in self.bus_clients:
                return self.bus_clients[bus]
        return None

    def bms_clients(self) -> list[Bms]:
        """Every client providing the ``bms`` protocol (CAN first), for a check that wants the
        finest of what several report."""
        self._use("bms")
        return [self.bus_clients[bus] for bus in ("can", "modbus") if bus in self.bus_clients]

    @property
    def module_reports(self) -> ModuleReports:
        return self.provider("module_reports")

    @property
    def bms_service(self) -> BmsService:
        return self.provider("bms_service")

    # -- conveniences built on roles and the channel map only ------------------------------------
    def module_voltages(self) -> dict[str, float]:
        channels = self.channels.module_voltage_channels()
        readings = self.scanner.voltages(sorted(channels.values()))
        return {module: readings[ch] for module, ch in channels.items()}

    def branch_currents(self) -> dict[str, float]:
        """Branch currents from the shunts (+ = charging), amps."""
        shunts = self.channels.shunt_channels()
        readings = self.scanner.voltages(sorted(ch for ch, _ in shunts.values()))
        return {branch: readings[ch] / ohm for branch, (ch, ohm) in shunts.items()}

    def temperatures(self, points: list[str] | None = None) -> dict[str, float]:
        channels = self.channels.thermocouple_channels()
        wanted = {p: channels[p] for p in (points or channels)}
        readings = self.scanner.temperatures(sorted(wanted.values()))
        return {p: readings[ch] for p, ch in wanted.items()}

    def set_contactor(self, name: str, closed: bool) -> None:
        channel = self.channels.contactor_channel(name)
        if closed:
            self.actuator.close_channel(channel)
        else:
            self.actuator.open_channel(channel)


def _connect_all(entries: dict[str, dict[str, Any]]) -> dict[str, Instrument]:
    """One session per physical instrument: roles naming the same driver at the same resource
    (the DAQ970A as scanner and actuator) share one connection."""
    instruments: dict[str, Instrument] = {}
    sessions: dict[tuple[str, str], Instrument] = {}
    try:
        for role, entry in entries.items():
            key = (entry["driver"], entry["resource"])
            if key not in sessions:
                sessions[key] = _connect(role, entry)
            instruments[role] = sessions[key]
    except BaseException:
        for instrument in sessions.values():
            instrument.close()
        raise
    return instruments


def _connect(role: str, entry: dict[str, Any]) -> Instrument:
    cls = get_driver(entry["driver"])
    extra: dict[str, Any] = {}
    if entry.get("options"):
        extra["options"] = entry["options"]
    if entry.get("shared"):  # several sockets' stations name it: lock it per use (instruments.scpi)
        from instruments.roles import InstrumentError
        from instruments.scpi import ScpiInstrument

        if not issubclass(cls, ScpiInstrument):
            raise InstrumentError(role, entry["resource"], "open", f"shared: true needs a SCPI driver "
                                  f"(an inter-process lock per use); {entry['driver']} is not one")
        extra["options"] = {**(entry.get("options") or {}), "shared": True}
    if entry.get("timeout_s"):
        extra["timeout_s"] = entry["timeout_s"]
    if entry.get("visa_library"):
        extra["visa_library"] = entry["visa_library"]
    return cls(entry["resource"], role, rating=entry.get("rating") or None, **extra)


def _sunspec_from(cfg: dict[str, Any], clock: BenchClock, name: str, keepalive: bool) -> Bms:
    """The SunSpec client; its CtrlHb keep-alive is the inverter's (driven by the bench clock)
    when it is the Bms role, off when CAN carries the keep-alive."""
    from instruments.sunspec_bms import SunSpecBms
    # TCP {host, port, ...} or RTU {transport: rtu, serial_port, baudrate, parity, stopbits, ...}
    # (harness.config.station.ModbusBus.runtime)
    client = SunSpecBms.from_settings(cfg, clock=clock.now, name=name, driven=True)
    client.heartbeat(keepalive)
    return client


def _bus_clients(station: dict[str, Any], clock: BenchClock,
                 log_dir: Path | None = None) -> dict[str, Any]:
    """The BMS clients of the station's buses (``can``, ``modbus``). The SunSpec client's own
    CtrlHb keep-alive stays off: the Bms role's keep-alive is the one."""
    buses = station.get("bms") or {}
    clients: dict[str, Any] = {}
    can_bms = _can_bms_from(buses, clock, log_dir)
    if can_bms is not None:
        clients["can"] = can_bms
    if buses.get("modbus"):
        try:
            clients["modbus"] = _sunspec_from(buses["modbus"], clock, "sunspec" if can_bms is not None else "bms",
                                              keepalive=can_bms is None)
        except BaseException:
            if can_bms is not None:
                can_bms.close()
            raise
    return clients


def _can_bms_from(buses: dict[str, Any], clock: BenchClock, log_dir: Path | None = None) -> Bms | None:
    if "can" in buses and buses["can"]:
        from instruments.can_bms import CanBms
        cfg = dict(buses["can"])
        interface = cfg.pop("interface")
        channel = cfg.pop("channel", None)
        if interface in ("socketcand", "virtual"):
            cfg.pop("bitrate", None)
        if interface == "socketcand":
            cfg.setdefault("tcp_tune", True)  # no Nagle delay on the keep-alives we send
        cfg = {k: v for k, v in cfg.items() if v is not None}
        return CanBms(interface, channel, clock=clock.now, log_path=_can_log_path(log_dir), **cfg)
    return None


def _can_log_path(log_dir: Path | None = None) -> str:
    """Every CAN frame of the run, in candump format: the run's folder when there is one (the
    report attaches it), else reports/can/<time>-<pid>.log."""
    if log_dir is not None:
        return str(Path(log_dir) / "can.log")
    folder = Path(__file__).resolve().parents[1] / "reports" / "can"
    return str(folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")


@dataclass
class AssembledBench:
    bench: Bench
    runtime: dict[str, Any]
    emulated_station: Any = None

    def close(self) -> None:
        for instrument in {id(i): i for i in self.bench.instruments.values()}.values():
            try:
                instrument.close()
            except Exception:  # noqa: BLE001 - closing goes on for every instrument
                pass
        for client in self.bench.bus_clients.values():
            try:
                client.close()
            except Exception:  # noqa: BLE001
                pass
        self.bench.clock.stop()  # type: ignore[attr-defined]
        if self.emulated_station is not None:
            self.emulated_station.deliver_each_report(None)
            self.emulated_station.stop()


def assemble(station: Any, dut: str | None = None, scenario: str | None = None,
             seed: int = 0, log_dir: Path | None = None, *, bms_profile: str | None = None,
             unit_serial: str | None = None) -> AssembledBench:
    """Connect every instrument of a validated station (starting the emulated bench first if it
    is one, and filling its ``auto`` entries from the running emulator; that pack plays
    ``bms_profile`` and an end-of-line unit reports ``unit_serial``)."""
    from harness.config.station import resolve_emulated

    emulated_station = None
    clock: BenchClock
    if station.emulated:
        from harness.emulated import start_station
        emulated_station = start_station(dut or station.dut, scenario, seed=seed, bms_profile=bms_profile,
                                         unit_serial=unit_serial)
        try:
            station = resolve_emulated(station, emulated_station.station)
        except BaseException:
            emulated_station.stop()
            raise
        from harness.emulated import SynchronisedBench
        synchronised = SynchronisedBench(emulated_station)
        clock = VirtualClock(synchronised)
    else:
        clock = WallClock(scale=getattr(station, "time_scale", 1.0))
    runtime = station.as_runtime()
    instruments: dict[str, Instrument] = {}
    try:
        instruments = _connect_all(runtime["instruments"])
        clients = _bus_clients(runtime, clock, log_dir)
    except BaseException:
        for instrument in {id(i): i for i in instruments.values()}.values():
            instrument.close()
        if emulated_station is not None:
            emulated_station.stop()
        raise
    if emulated_station is not None and "can" in clients:
        synchronised.attach_can(clients["can"])
    bench = Bench(instruments, runtime.get("channels") or ChannelMap(), clock, clients,
                  runtime.get("name", ""), bool(runtime.get("emulated")))
    return AssembledBench(bench, runtime, emulated_station)
