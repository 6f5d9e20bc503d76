"""Assemble the bench from a station: drivers by name from the registry, addresses from the file.

An emulated station first starts the twin and its endpoints on loopback (through
:func:`emulator.emulate.start_emulated_station`, the one entry point) and fills in the
addresses; the drivers are the same classes a hardware station uses. Check code receives the
:class:`Bench`: roles (``bench.load``, ``bench.scanner``, ``bench.bms``), the channel map and
the clock -- nothing that says which kind of bench it is.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.clock import BenchClock, VirtualClock, WallClock
from instruments.drivers import get_driver
from instruments.roles import (AcIrMeter, Actuator, Bms, DcSupply, Dmm, ElectronicLoad, Instrument,
                               Scanner)


@dataclass
class ChannelMap:
    """Which scanner channel reads which node, shunt or thermocouple; which relay drives which contactor."""

    scanner: dict[int, dict[str, Any]] = field(default_factory=dict)
    actuator: dict[int, str] = field(default_factory=dict)
    dmm: dict[str, dict[str, Any]] = field(default_factory=dict)
    acir_module: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ChannelMap":
        return cls({int(k): v for k, v in (data.get("scanner") or {}).items()},
                   {int(k): str(v) for k, v in (data.get("actuator") or {}).items()},
                   dict(data.get("dmm") or {}), str(data.get("acir_module") or ""))

    def module_voltage_channels(self) -> dict[str, int]:
        """Module position -> scanner channel measuring its terminals (+ to P-)."""
        out = {}
        for ch, src in self.scanner.items():
            if src.get("kind") == "voltage" and src.get("plus", "").endswith(".+"):
                out[src["plus"][:-2]] = ch
        return out

    def shunt_channels(self) -> dict[str, tuple[int, float]]:
        """Branch -> (scanner channel, shunt resistance in ohm)."""
        return {src["branch"]: (ch, float(src["shunt_ohm"])) for ch, src in self.scanner.items()
                if src.get("kind") == "shunt"}

    def thermocouple_channels(self) -> dict[str, int]:
        return {src["point"]: ch for ch, src in self.scanner.items() if src.get("kind") == "thermocouple"}

    def contactor_channel(self, contactor: str) -> int:
        for ch, name in self.actuator.items():
            if name == contactor:
                return ch
        raise KeyError(f"no actuator channel drives contactor '{contactor}'")


@dataclass
class Bench:
    """What a check may use."""

    instruments: dict[str, Instrument]
    channels: ChannelMap
    clock: BenchClock
    bms: Bms | None = None
    station_name: str = ""
    emulated: bool = False
    # The SunSpec (Modbus/TCP) client when the station has both buses: per-module figures
    # (model 805: V, SoC, SoH, SN) and identity (model 1) that CAN does not carry. ``bms`` stays
    # the CAN client; with Modbus only, ``bms`` and ``sunspec`` are the same client.
    sunspec: Any = None

    def _role(self, role: str, kind: type) -> Any:
        instrument = self.instruments.get(role)
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


def _connect(role: str, entry: dict[str, Any]) -> Instrument:
    cls = get_driver(entry["driver"])
    extra: dict[str, Any] = {}
    if entry.get("options"):
        extra["options"] = entry["options"]
    if entry.get("timeout_s"):
        extra["timeout_s"] = entry["timeout_s"]
    return cls(entry["resource"], role, rating=entry.get("rating") or None, **extra)


def _sunspec_from(cfg: dict[str, Any], clock: BenchClock, name: str) -> Bms:
    from instruments.sunspec_bms import SunSpecBms
    extra = {k: cfg[k] for k in ("timeout_s", "heartbeat_period_s") if cfg.get(k) is not None}
    return SunSpecBms(cfg["host"], int(cfg["port"]), int(cfg.get("device_id", 1)), clock=clock.now,
                      name=name, **extra)


def _bms_from(station: dict[str, Any], clock: BenchClock,
              log_dir: Path | None = None) -> tuple[Bms | None, Bms | None]:
    """(the Bms role, the SunSpec client): CAN is the role when the station has it; a Modbus
    bus is opened as well (as ``bench.sunspec``), and is the role on a Modbus-only station.
    The SunSpec client's own CtrlHb keep-alive stays off: the role's keep-alive is the one."""
    buses = station.get("bms") or {}
    can_bms = _can_bms_from(buses, clock, log_dir)
    if not buses.get("modbus"):
        return can_bms, None
    try:
        sunspec = _sunspec_from(buses["modbus"], clock, "sunspec" if can_bms is not None else "bms")
    except BaseException:
        if can_bms is not None:
            can_bms.close()
        raise
    return (can_bms if can_bms is not None else sunspec), sunspec


def _can_bms_from(buses: dict[str, Any], clock: BenchClock, log_dir: Path | None = None) -> Bms | None:
    if "can" in buses and buses["can"]:
        from instruments.can_bms import CanBms
        cfg = dict(buses["can"])
        interface = cfg.pop("interface")
        channel = cfg.pop("channel", None)
        if interface in ("socketcand", "virtual"):
            cfg.pop("bitrate", None)
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
        for instrument in self.bench.instruments.values():
            try:
                instrument.close()
            except Exception:  # noqa: BLE001 - closing goes on for every instrument
                pass
        for client in {id(c): c for c in (self.bench.bms, self.bench.sunspec) if c is not None}.values():
            try:
                client.close()
            except Exception:  # noqa: BLE001
                pass
        self.bench.clock.stop()  # type: ignore[attr-defined]
        if self.emulated_station is not None:
            self.emulated_station.deliver_each_report(None)
            self.emulated_station.stop()


def assemble(station: Any, dut: str | None = None, scenario: str | None = None,
             seed: int = 0, log_dir: Path | None = None) -> AssembledBench:
    """Connect every instrument of a validated station (starting the emulated bench first if it
    is one, and filling its ``auto`` entries from the running emulator)."""
    from harness.config.station import resolve_emulated

    emulated_station = None
    clock: BenchClock
    if station.emulated:
        from harness.emulated import start_station
        emulated_station = start_station(dut or station.dut, scenario, seed=seed)
        try:
            station = resolve_emulated(station, emulated_station.station)
        except BaseException:
            emulated_station.stop()
            raise
        from harness.emulated import SynchronisedBench
        synchronised = SynchronisedBench(emulated_station)
        clock = VirtualClock(synchronised)
    else:
        clock = WallClock()
    runtime = station.as_runtime()
    instruments: dict[str, Instrument] = {}
    try:
        for role, entry in runtime["instruments"].items():
            instruments[role] = _connect(role, entry)
        bms, sunspec = _bms_from(runtime, clock, log_dir)
    except BaseException:
        for instrument in instruments.values():
            instrument.close()
        if emulated_station is not None:
            emulated_station.stop()
        raise
    if emulated_station is not None:
        for client in {id(c): c for c in (bms, sunspec) if hasattr(c, "wait_for_stamp")}.values():
            synchronised.attach_can(client)
    bench = Bench(instruments, ChannelMap.from_dict(runtime.get("channels") or {}), clock, bms,
                  runtime.get("name", ""), bool(runtime.get("emulated")), sunspec)
    return AssembledBench(bench, runtime, emulated_station)
