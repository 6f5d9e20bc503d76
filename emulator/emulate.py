"""Start a whole emulated bench: the twin, its wiring and every endpoint, on loopback.

:func:`start_emulated_station` is the one function through which anything outside the emulator
(the harness, ``hil emulate``) starts it. It returns the running endpoints and a *station
description* -- instruments with their driver names and VISA resources, the CAN bus and the
Modbus server, and the channel map -- in the same shape as a station file for a real bench, so
the same drivers connect to it. ``hil emulate`` writes that description to a YAML file and
follows wall time until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import datetime as dt
import signal
import sys
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import can
import yaml

from bankmodel.bms_profile import FULL_PROFILE, load_bms_profile
from emulator.bench import EmulatedBench
from emulator.faults import load_bank
from emulator.endpoints.can_bms import EmulatedCanBms
from emulator.endpoints.scpi.models import InstrumentModel
from emulator.endpoints.scpi_instruments import (LOAD_ENVELOPE_A, STATION_FAMILIES, select_models,
                                                 start_scpi_endpoints, stop_scpi_endpoints)
from emulator.endpoints.socketcand_server import SocketcandServer
from emulator.endpoints.sunspec_server import SunSpecServer
from emulator.twin import Twin

# the emulated station's supply and load are IT6000C regenerative units, one per role
# (emulator/endpoints/scpi_instruments.py says why); fixtures/stations/emulated.yaml names them
DRIVERS = {"supply": "itech_it6000c", "load": "itech_it6000c", "scanner": "keysight_daq970a",
           "actuator": "keysight_daq970a", "acir": "hioki_bt3562"}
DMM_DRIVER = "keysight_34465a"
LOAD_MAX_A = LOAD_ENVELOPE_A  # the load current the emulated station guarantees for every DUT
EMULATED_CALIBRATION_DUE = "2099-12-31"


def _models(twin: Twin) -> dict[str, InstrumentModel]:
    """The real model in each energy role of the emulated station for this DUT."""
    return select_models(twin, STATION_FAMILIES)


def _ratings(twin: Twin, models: dict[str, InstrumentModel] | None = None) -> dict[str, dict[str, float]]:
    """Each energy role's rating: the real model's (voltage, current, power), as a lab's station
    file rates the instrument it owns -- not a figure sized to the bank."""
    chosen = models if models is not None else _models(twin)
    return {role: model.rating() for role, model in chosen.items()}


@dataclass
class EmulatedStation:
    """A running emulated bench: stop() closes every endpoint (safe state first)."""

    bench: EmulatedBench
    station: dict[str, Any]
    scpi: dict[str, Any]
    can_bus: can.BusABC
    can_bms: EmulatedCanBms
    socketcand: SocketcandServer
    sunspec: SunSpecServer
    _runner: threading.Thread | None = None
    _stopped: bool = field(default=False)
    undelivered_reports: int = 0  # frame sets the harness did not confirm within the barrier's wait

    def run_realtime(self, speed: float = 1.0) -> None:
        """Follow wall time in a background thread until stop()."""
        self._runner = threading.Thread(target=self.bench.run_realtime, kwargs={"speed": speed},
                                        name="bench-clock", daemon=True)
        self._runner.start()

    def take_in(self, sent: int, timeout_s: float = 1.0) -> bool:
        """Virtual-time barrier, inverter to battery: every frame the harness has sent on CAN so
        far (``sent`` in all: keep-alives, service commands) is taken in at the current bench
        time before bench time moves on, so a busy host cannot make a healthy BMS lose its
        inverter (on the shared virtual bus a frame is there once sent; through a bridge such as
        socketcand it arrives asynchronously). False if they did not arrive in time."""
        return self.can_bms.take_in(sent, timeout_s)

    def deliver_each_report(self, arrived: Callable[[float, int], bool] | None) -> None:
        """Virtual-time barrier, battery to inverter: after each frame set the emulated BMS
        sends, the twin stands still until ``arrived(bench_time, frames)`` says the harness has
        the whole set (None: publish and go on, as in wall time). Failed deliveries are counted."""
        if arrived is None:
            self.can_bms.after_publish = None
            return

        def wait(stamp: float, frames: int) -> None:
            if not arrived(stamp, frames):
                self.undelivered_reports += 1
        self.can_bms.after_publish = wait

    def outputs_off(self) -> None:
        with self.bench.lock:
            twin = self.bench.twin
            twin.load_input(False)
            twin.supply_output(False)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.bench.stop()
        if self._runner is not None:
            self._runner.join(timeout=2.0)
        self.outputs_off()
        for closer in (lambda: stop_scpi_endpoints(self.scpi), self.can_bms.stop,
                       self.socketcand.stop, self.sunspec.stop, self.can_bus.shutdown):
            try:
                closer()
            except Exception:  # noqa: BLE001 - closing must go on for every endpoint
                pass


def start_emulated_station(dut: str | Path, scenario: str | Path | None = None, seed: int = 0,
                           host: str = "127.0.0.1",
                           bms_profile: str | Path | None = None,
                           unit_serial: str | None = None) -> EmulatedStation:
    """Build the twin, start its SCPI, CAN (virtual + socketcand) and SunSpec endpoints.

    ``bms_profile`` (a name in fixtures/bms_profiles/ or a path; None: ``bankhil_full``) is the
    pack the CAN endpoint plays: the frames it sends, the service commands it takes. The
    description names it (``bms.can.profile``) so the harness reads the bus the same way. It is
    loaded first: a bad profile is a FileError before anything starts.

    ``unit_serial``: on a one-module DUT (an end-of-line unit), the serial its BMS reports --
    the label it was scanned with -- unless the scenario's ``bms_serial`` fault says otherwise."""
    profile = load_bms_profile(bms_profile if bms_profile is not None else FULL_PROFILE)
    spec = load_bank(dut, scenario)
    twin = Twin(spec, seed=seed)
    bench = EmulatedBench(twin)
    if unit_serial and len(twin.modules) == 1 and twin.modules[0] not in twin.serial_faulted:
        twin.serials[twin.modules[0]] = unit_serial  # the unit on the fixture carries its label's serial
    channel = f"bankhil-{uuid.uuid4().hex[:8]}"
    models = _models(twin)
    scpi = start_scpi_endpoints(bench, models)
    for role, at_s in twin.instrument_hangs.items():
        if role not in scpi:
            raise ValueError(f"scenario: hung_instrument names role '{role}'; the emulated bench has "
                             f"{', '.join(sorted(scpi))}")
        twin.schedule(at_s, scpi[role][0].freeze, f"{role} stops answering")
    bus = can.Bus(interface="virtual", channel=channel, preserve_timestamps=True)
    can_bms = EmulatedCanBms(bench, bus, profile=profile).start()
    socketcand = SocketcandServer(interface="virtual", channels={channel})
    can_host, can_port = socketcand.start()
    sunspec = SunSpecServer(bench, host=host, port=0).start()
    ratings = _ratings(twin, models)
    instruments: dict[str, Any] = {}
    for role, (_, resource) in scpi.items():
        entry = {"driver": DRIVERS.get(role, DMM_DRIVER), "resource": resource,
                 "calibration_due": EMULATED_CALIBRATION_DUE}
        if role in ratings:
            entry["rating"] = ratings[role]
            entry["model"] = models[role].name
            if models[role].sources and models[role].sinks:  # regenerative: say which way it works
                entry["options"] = {"mode": "sink" if role == "load" else "source"}
        instruments[role] = entry
    station = {
        "name": f"emulated-{spec.dut.name}",
        "emulated": True,
        "dut": str(spec.dut_path),
        "scenario": str(spec.scenario_path) if spec.scenario_path else None,
        "instruments": instruments,
        "bms": {
            # in this process the harness joins the BMS's own python-can ``virtual`` bus (no
            # socket, no bridge thread between them); another process reaches the same bus
            # through the socketcand server (``socketcand`` below, what `hil emulate` publishes)
            "can": {"interface": "virtual", "channel": channel, "bitrate": 500000,
                    "profile": str(bms_profile) if bms_profile is not None else FULL_PROFILE},
            "socketcand": {"interface": "socketcand", "host": can_host, "port": can_port,
                           "channel": channel, "bitrate": 500000},
            # a generous wall-clock timeout: the twin shares the host's cores with the harness
            # (and, in CI, with other runs), where a real battery answers on its own processor
            "modbus": {"host": host, "port": sunspec.port, "device_id": 1, "timeout": "5 s"},
        },
        "channels": bench.wiring,  # bankmodel.channels.ChannelMap, as a station file has it
    }
    return EmulatedStation(bench, station, scpi, bus, can_bms, socketcand, sunspec)


def _quantity(value: float, unit: str) -> str:
    return f"{value:g} {unit}"


def station_file_data(station: dict[str, Any], speed: float = 1.0) -> dict[str, Any]:
    """The running bench in the station file format (quantities with units, channel lists).

    It is a station like any hardware one (``emulated: false``: its endpoints already exist and
    its clock is wall time); only its comment says an emulator serves it.
    """
    instruments: dict[str, Any] = {}
    for role, entry in station["instruments"].items():
        item: dict[str, Any] = {"driver": entry["driver"], "resource": entry["resource"],
                                "calibration_due": dt.date.fromisoformat(entry["calibration_due"])}
        rating = entry.get("rating") or {}
        if entry.get("model"):
            item["model"] = entry["model"]
        if entry.get("options"):
            item["options"] = dict(entry["options"])
        if rating:
            item["rating"] = {"voltage": _quantity(rating["voltage_v"], "V"),
                              "current": _quantity(rating["current_a"], "A")}
            if rating.get("power_w"):
                item["rating"]["power"] = _quantity(rating["power_w"], "W")
        elif role.startswith("dmm") or role in ("scanner",):
            item["rating"] = {"voltage": "300 V"}
        elif role == "acir":
            item["rating"] = {"voltage": "60 V"}
        instruments[role] = item
    can_bus = {**station["bms"]["can"], **station["bms"]["socketcand"]}  # across processes
    return {
        "name": station["name"],
        "description": "served by `hil emulate` on loopback",
        "emulated": False,
        **({"time_scale": speed} if speed != 1.0 else {}),  # the harness's clock runs as fast
        "dut": station["dut"],
        "instruments": instruments,
        "bms": {"can": {"interface": "socketcand", "host": can_bus["host"], "port": can_bus["port"],
                        "channel": can_bus["channel"], "bitrate": can_bus["bitrate"],
                        **({"profile": can_bus["profile"]} if can_bus.get("profile") else {})},
                "modbus": dict(station["bms"]["modbus"])},
        "channels": station["channels"].model_dump(mode="json", exclude_defaults=True),
    }


def write_station(station: dict[str, Any], path: str | Path, speed: float = 1.0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ("# Written by `hil emulate`: a station pointing at an emulated bench on loopback.\n"
              "# Valid only while that process runs.\n")
    path.write_text(header + yaml.safe_dump(station_file_data(station, speed), sort_keys=False), encoding="utf-8")
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dut", required=True, help="DUT file or stem in fixtures/duts/")
    parser.add_argument("--scenario", default=None, help="fault scenario file or stem")
    parser.add_argument("--speed", type=float, default=1.0, help="bench seconds per wall second")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-station", default=None, metavar="PATH",
                        help="write a station file pointing at the endpoints")
    parser.add_argument("--bms-profile", default=None, metavar="NAME",
                        help="BMS profile the emulated CAN pack plays: a name in fixtures/bms_profiles/ "
                             f"or a path (default: {FULL_PROFILE}). Like a real BMS it zeroes its limits "
                             "and raises an alarm without the inverter's 0x305 keep-alive")


def run(args: argparse.Namespace) -> int:
    """Serve the emulated bench until Ctrl-C or SIGTERM; outputs off on the way out."""
    if args.speed <= 0:
        print("hil emulate: --speed must be > 0", file=sys.stderr)
        return 2
    station = start_emulated_station(args.dut, args.scenario, seed=args.seed,
                                     bms_profile=getattr(args, "bms_profile", None))
    stop = threading.Event()

    def _terminate(signum: int, frame: object) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        if args.write_station:
            path = write_station(station.station, args.write_station, args.speed)
            print(f"station file: {path}", flush=True)
        print(yaml.safe_dump({"endpoints": {
            "instruments": {role: entry["resource"] for role, entry in station.station["instruments"].items()},
            "can": {**station.station["bms"]["can"], **station.station["bms"]["socketcand"]},
            "modbus": station.station["bms"]["modbus"]}},
            sort_keys=False), flush=True)
        print(f"emulating {station.station['name']} at {args.speed:g}x real time; Ctrl-C to stop",
              flush=True)
        station.run_realtime(args.speed)
        while not stop.wait(0.2):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        station.stop()
        signal.signal(signal.SIGTERM, previous)
        print("stopped: load and supply off, endpoints closed", flush=True)
    return 0
