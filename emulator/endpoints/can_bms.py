"""The emulated master BMS on CAN: the twin's master report as Pylontech-compatible frames.

The battery side of DOMAIN.md section 4. Every time the twin's master BMS publishes a report
(once per firmware ``report_period_s`` of *bench* time) the frames 0x351..0x379 are encoded
through the same DBC the harness decodes with and sent on a python-can bus; 0x305 frames from
the inverter side become ``twin.inverter_heartbeat()`` calls under the bench lock, taken in on
the bench clock as well (see :class:`EmulatedCanBms`).

Why the bench clock drives transmission: the twin runs on a virtual clock (hours in seconds),
so a wall-clock timer would publish at the wrong rate. The sender is a twin observer, called
after every internal step; it sends when the master has produced a new report, so frames
carry exactly what the master decided in that step (a fallback sends again if no new report
appears within two periods, in case a future master mutates its report in place).

What goes where (the mapping the harness relies on):

- 0x351 limits, 0x355 SOC/SOH, 0x35C enables, 0x372 module counts, 0x35F online capacity,
  0x379 installed capacity: straight from :class:`emulator.master_bms.MasterReport`.
- 0x356 voltage: sum over series positions of the mean *stack* voltage of the modules the
  master still hears (what the BMSs measure, on either side of an open main contactor);
  current: sum of the module currents of the first series position (+ = charge);
  temperature: mean module-body temperature of the modules heard.
- 0x359 alarms: a protection tripped on any module the master still hears
  (``twin.bms.tripped``, names in ``emulator.bms.PROTECTIONS``, grouped as ALARM_SOURCES);
  warnings: the same condition present with its debounce timer running (not yet tripped).
  "BMS internal" carries the master's communication alarm (silent module, lost keep-alive) as
  the firmware profile raises it; its warning bit is not modelled (always 0).
  Byte 4 is the number of modules online.
- 0x35F firmware version: ``major * 256 + minor`` of the firmware profile's version
  ("2.1.0" -> 0x0201); the patch number and a pre-release tag do not fit in a u16 and are not
  carried. Battery model: a number given at construction (default 0); the protocol has no
  text field for it.
- 0x373: min/max cell voltage in mV and min/max module temperature in K (integer kelvin).
- Force-charge and full-charge requests (0x35C bits 5, 4, 3) are not modelled: always 0.

What is sent and taken is the BMS profile's (``profile=``, :mod:`bankmodel.bms_profile`;
default ``bankhil_full``: every frame above and the bench service commands): a
``pylontech_strict`` pack sends only 0x351, 0x355, 0x356, 0x359, 0x35C and 0x35E and ignores
service frames, as many real packs do -- so the harness is exercised against what it will meet.

0x35E is text: the DBC flags its signal ``AsciiText`` (cantools would take it for one integer),
so the manufacturer's name is written into those bytes here, space padded ("PYLON   ").

A silent BMS (``silent = True``, or from bench time ``twin.master.silent_from`` on: the
``silent_bms`` fault) sends nothing while still listening, so the harness's silence detection
can be exercised.

Service frames (the profile's vendor DBC, ``instruments/dbc/bankhil_service.dbc`` in the full
profile; what a vendor's service tool does on a real bench) are taken in with the keep-alives,
at the bench time they are drained, and only if the profile has services:
``force_disconnect`` (0x3F0 ``Service_ForceDisconnect``) opens or releases one module's BMS
switch (``twin.bms_force_off``), ``silence_module`` (0x3F1 ``Service_SilenceModule``) makes one
module stop reporting to the master or talk again. The module index is the 0-based position in
``twin.modules`` (series position first, then parallel index). A service frame naming no
module, one that does not decode, or any service frame to a profile without services, is
counted in ``frames_ignored``.

Without the inverter's keep-alives (0x305) the master does what its firmware profile says a
real one does on comm loss -- by default zero charge/discharge limits and the "BMS internal"
alarm of 0x359 after ``heartbeat.timeout_s`` (5 s): a tool pointed at this bus must send 0x305.

Run as a process (``python -m emulator.endpoints.can_bms --dut 1s4p_diagonal``) it serves the
twin over a socketcand server on loopback and follows wall time: the cross-process transport.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from pathlib import Path
from typing import Callable

import can
import cantools
import numpy as np
from cantools.database.can import Database

from bankmodel.bms_profile import FULL_PROFILE, BmsProfile, load_bms_profile
from bankmodel.can_frame import Frame
from emulator import published
from emulator.bench import EmulatedBench
from emulator.twin import Twin

KEEPALIVE_ID = 0x305
FORCE_DISCONNECT_ID = 0x3F0
SILENCE_MODULE_ID = 0x3F1
PN_MARKER = (0x50, 0x4E)  # 'P', 'N' in 0x359 bytes 5-6
# 0x359 alarm/warning bit (DBC signal suffix) <- the alarm family that raises it (the module
# BMS protections of each family: emulator.published.ALARM_FAMILIES).
ALARM_SOURCES: dict[str, str] = {
    "OverVoltage": "over_voltage",
    "UnderVoltage": "under_voltage",
    "OverTemp": "over_temperature",
    "UnderTemp": "under_temperature",
    "DischargeOverCurrent": "discharge_over_current",
    "ChargeOverCurrent": "charge_over_current",
}


def dbc_path() -> Path:
    """The protocol's DBC, shipped with the instruments package: one file for both ends.

    ``emulator`` and ``instruments`` are sibling packages in the source tree and when
    installed, so the file is found beside us without importing the harness side.
    """
    return Path(__file__).resolve().parents[2] / "instruments" / "dbc" / "pylontech_lv.dbc"


def load_dbc(path: str | Path | None = None) -> Database:
    db = cantools.database.load_file(str(path or dbc_path()), strict=True)
    assert isinstance(db, Database)
    return db


def service_dbc_path() -> Path:
    """The bench's vendor service frames (0x3F0..), beside the protocol DBC."""
    return dbc_path().parent / "bankhil_service.dbc"


def as_profile(profile: BmsProfile | str | Path | None) -> BmsProfile:
    """A loaded BMS profile, by itself, by name or path, or the full default (None)."""
    if isinstance(profile, BmsProfile):
        return profile
    return load_bms_profile(profile if profile is not None else FULL_PROFILE)


def text_signals(db: Database) -> dict[tuple[int, str], int]:
    """(frame ID, signal) -> byte count of every signal the DBC flags ``AsciiText``."""
    found = {}
    for m in db.messages:
        for sig in m.signals:
            attrs = sig.dbc.attributes if sig.dbc is not None else {}
            if "AsciiText" in attrs and attrs["AsciiText"].value:
                found[(m.frame_id, sig.name)] = sig.length // 8
    return found


@functools.lru_cache(maxsize=64)
def firmware_code(version: str) -> int:
    """``major * 256 + minor`` of a dotted version ("2.2.0-rc1" -> 0x0202); 0 if unparsable."""
    match = re.match(r"\s*v?(\d+)\.(\d+)", version)
    if not match:
        return 0
    return min(int(match.group(1)), 255) * 256 + min(int(match.group(2)), 255)


def manufacturer_code(name: str) -> int:
    """Eight ASCII bytes, space padded, as the little-endian integer the DBC signal holds."""
    text = name.encode("ascii", "replace")[:8].ljust(8, b" ")
    return int.from_bytes(text, "little")


def protocol_values(twin: Twin, model_code: int = 0) -> dict[int, dict[str, float | str]]:
    """Physical values of every battery -> inverter frame, by CAN ID (see the module doc).

    The measured figures (bank voltage and current, temperatures, cell voltages, alarms and
    warnings) are what :mod:`emulator.published` computes for every endpoint, over the modules
    the master hears (all of them if it hears none).
    """
    r = twin.master.report
    fw = twin.spec.firmware
    now = published.read(twin)
    voltage, current = now.bank_voltage(), now.bank_current()
    temps = now.temperatures()
    cell_min, cell_max = now.cell_voltage_range()
    flags = now.flags()
    alarms_warnings: dict[str, float] = {}
    for bit, family in ALARM_SOURCES.items():
        alarms_warnings[f"Alarm_{bit}"] = int(flags[family].alarm)
        alarms_warnings[f"Warning_{bit}"] = int(flags[family].warning)
    alarms_warnings["Alarm_BmsInternal"] = int(r.comm_alarm)
    alarms_warnings["Warning_BmsInternal"] = 0  # the profile decides what is signalled: alarm only
    alarms_warnings.update(ModuleCount=r.modules_online, MarkerP=PN_MARKER[0], MarkerN=PN_MARKER[1])
    return {
        0x351: {"ChargeVoltageLimit": r.charge_voltage_limit_v,
                "ChargeCurrentLimit": r.charge_current_limit_a,
                "DischargeCurrentLimit": abs(r.discharge_current_limit_a),
                "DischargeVoltageLimit": r.discharge_voltage_limit_v},
        0x355: {"SOC": r.soc_pct, "SOH": r.soh_pct},
        0x356: {"Voltage": voltage, "Current": current, "Temperature": float(temps.mean())},
        0x359: alarms_warnings,
        0x35C: {"ChargeEnable": int(r.charge_enable), "DischargeEnable": int(r.discharge_enable),
                "ForceCharge1": 0, "ForceCharge2": 0, "FullChargeRequest": 0},
        0x35E: {"ManufacturerName": fw.manufacturer},  # text (AsciiText in the DBC)
        0x35F: {"BatteryModel": model_code, "FirmwareVersion": firmware_code(fw.version),
                "OnlineCapacity": r.online_capacity_ah},
        0x372: {"ModulesOnline": r.modules_online, "ModulesBlockingCharge": r.blocking_charge,
                "ModulesBlockingDischarge": r.blocking_discharge, "ModulesOffline": r.modules_offline},
        0x373: {"MinCellVoltage": cell_min * 1000, "MaxCellVoltage": cell_max * 1000,
                "MinTemperature": float(temps.min()) + 273.15, "MaxTemperature": float(temps.max()) + 273.15},
        0x379: {"InstalledCapacity": r.installed_capacity_ah},
    }


class FrameEncoder:
    """Encodes physical values through the DBC, clamped to each signal's range.

    Clamping (rather than cantools' strict range error) keeps a twin in an extreme state --
    a 4000 A short, a module at 400 K -- on the bus with a saturated value instead of silent.

    Most frames repeat from one report to the next (limits, enables, counts, firmware), so the
    last payload of each frame is kept with the values it was encoded from and reused while they
    stay the same: the DBC encode is most of a report's cost on a virtual clock.
    """

    def __init__(self, db: Database):
        self.messages = {m.frame_id: m for m in db.messages if "BMS" in m.senders}
        self.texts = text_signals(db)
        # per frame, each signal's (name, lowest, highest, text bytes): read off the DBC once,
        # not for every signal of every report
        self._layout = {frame_id: [(sig.name, sig.minimum, sig.maximum,
                                    self.texts.get((frame_id, sig.name), sig.length // 8))
                                   for sig in message.signals]
                        for frame_id, message in self.messages.items()}
        self._last: dict[int, tuple[tuple[tuple[str, float | str], ...], bytes]] = {}

    def encode(self, values: dict[int, dict[str, float | str]], timestamp: float) -> list[can.Message]:
        frames = []
        for frame_id, signals in values.items():
            key = tuple(signals.items())
            last = self._last.get(frame_id)
            if last is not None and last[0] == key:
                data = last[1]
            else:
                data = self._encode(frame_id, signals)
                self._last[frame_id] = (key, data)
            frames.append(Frame.of(frame_id, data, timestamp))
        return frames

    def _encode(self, frame_id: int, signals: dict[str, float | str]) -> bytes:
        clamped = {}
        for name, low, high, text_size in self._layout[frame_id]:
            value = signals[name]
            if isinstance(value, str):  # an ASCII text signal: its bytes, space padded
                value = int.from_bytes(value.encode("ascii", "replace")[:text_size].ljust(text_size, b" "),
                                       "little")
            if low is not None and value < low:
                value = low
            elif high is not None and value > high:
                value = high
            clamped[name] = value
        return bytes(self.messages[frame_id].encode(clamped, scaling=True, padding=False, strict=False))


class EmulatedCanBms:
    """The twin's master BMS as a CAN node on a python-can bus (any interface).

    ``bus`` is opened by the caller (``can.Bus(interface="virtual", channel=...,
    preserve_timestamps=True)`` keeps the bench-time stamps this node puts on its frames).

    Reception is on the bench clock too: the observer drains the bus after the twin's steps
    (at most every ``rx_interval_s`` of bench time, so microsecond transients stay cheap) and
    each 0x305 becomes ``twin.inverter_heartbeat()`` at that bench time. A receive thread
    would apply a keep-alive whenever it happened to win the bench lock -- a different bench
    time on every run; draining from the clock gives the same answer every time. A frame
    that arrives while nobody advances the bench waits, as bench time does.
    Counters (``frames_sent``, ``heartbeats_received``, ``send_errors``) let a caller on a
    virtual clock check that every frame of a step has been delivered.
    """

    def __init__(self, bench: EmulatedBench, bus: can.BusABC, db: Database | None = None,
                 model_code: int = 0, rx_interval_s: float = 1e-3,
                 profile: BmsProfile | str | Path | None = None):
        self.bench = bench
        self.bus = bus
        self.profile = as_profile(profile)
        self.encoder = FrameEncoder(db or load_dbc())
        self.model_code = model_code
        self.rx_interval_s = rx_interval_s
        # frame ID -> (command, message, module signal, switch signal): the profile's services only
        self.service: dict[int, tuple[str, object, str, str]] = {}
        if self.profile.services is not None:
            service_db = load_dbc(self.profile.service_dbc_path())
            for command in ("force_disconnect", "silence_module"):
                spec = getattr(self.profile.services, command)
                message = service_db.get_message_by_name(spec.message)
                self.service[message.frame_id] = (command, message, spec.module, spec.switch)
        self.service_commands = 0
        self.silent = False
        self.frames_sent = 0
        self.reports_sent = 0
        self.heartbeats_received = 0
        self.frames_ignored = 0
        self.send_errors = 0
        self.receive_errors = 0
        self.frames_taken_in = 0  # every frame drained from the bus, whatever it was
        self.last_values: dict[int, dict[str, float | str]] = {}
        # called with the bench time of each frame set just sent (bench lock held): a harness in
        # virtual time waits there until the set has arrived (harness/emulated.py)
        self.after_publish: Callable[[float, int], None] | None = None
        self._last_report: object = None
        self._last_sent_at = -np.inf
        self._last_drain_at = -np.inf

    @property
    def period_s(self) -> float:
        return self.bench.twin.spec.firmware.report_period_s

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> "EmulatedCanBms":
        """Publish every new master report and handle keep-alives from now on."""
        twin = self.bench.twin
        with self.bench.lock:
            if self._observe not in twin.observers:
                twin.observers.append(self._observe)
            if twin.step_count:  # the master has reported already: publish it now
                self.publish()
        return self

    def stop(self) -> None:
        with self.bench.lock:
            if self._observe in self.bench.twin.observers:
                self.bench.twin.observers.remove(self._observe)

    def __enter__(self) -> "EmulatedCanBms":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the bench clock ------------------------------------------------------------------------
    def _observe(self, twin: Twin, dt: float) -> None:
        """Twin observer (bench lock held): take in keep-alives, publish each new report once."""
        now = twin.clock.now
        if now - self._last_drain_at >= self.rx_interval_s:
            self._last_drain_at = now
            self._drain()
        if twin.master.report is not self._last_report or now - self._last_sent_at >= 2 * self.period_s:
            self.publish()

    # -- transmit -------------------------------------------------------------------------------
    def publish(self) -> None:
        """Encode and send the whole frame set for the current report (unless silent)."""
        twin = self.bench.twin
        self._last_report = twin.master.report
        self._last_sent_at = twin.clock.now
        silent_from = getattr(twin.master, "silent_from", None)
        if self.silent or (silent_from is not None and twin.clock.now >= silent_from):
            return
        sent_by_pack = self.profile.frames
        values = {frame_id: signals for frame_id, signals in protocol_values(twin, self.model_code).items()
                  if frame_id in sent_by_pack}
        self.last_values = values
        sent = 0
        for frame in self.encoder.encode(values, twin.clock.now):
            try:
                self.bus.send(frame)
                sent += 1
            except can.CanError:
                self.send_errors += 1  # a full or broken bus must not stop the twin
        self.frames_sent += sent
        self.reports_sent += 1
        if sent and self.after_publish is not None:
            self.after_publish(twin.clock.now, sent)

    def take_in(self, sent: int, timeout_s: float = 1.0) -> bool:
        """Handle, at the current bench time, every frame a peer has sent so far (``sent`` in
        all, counted by the peer): frames cross a bridge such as socketcand asynchronously, so a
        caller that holds bench time still uses this before moving it on. False if they did not
        all arrive within ``timeout_s`` of wall time."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.poll()
            if self.frames_taken_in >= sent:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:  # block until the next frame arrives (no polling), then handle it with the rest
                msg = self.bus.recv(timeout=min(left, 0.05))
            except (can.CanError, OSError, ValueError):
                self.receive_errors += 1
                return False
            if msg is not None:
                with self.bench.lock:
                    self._handle(msg)

    # -- receive --------------------------------------------------------------------------------
    def poll(self) -> int:
        """Handle every frame waiting now, at the current bench time; returns how many.

        For a caller that holds the bench still (the observer does this while time moves).
        """
        with self.bench.lock:
            return self._drain()

    def _drain(self) -> int:
        handled = 0
        while True:
            try:
                msg = self.bus.recv(timeout=0.0)
            except (can.CanError, OSError, ValueError):
                self.receive_errors += 1  # bus gone or failing: the twin goes on regardless
                return handled
            if msg is None:
                return handled
            handled += 1
            self._handle(msg)

    def _handle(self, msg: can.Message) -> None:
        """One frame from the inverter side, taken in at the current bench time."""
        self.frames_taken_in += 1
        if (msg.arbitration_id == KEEPALIVE_ID and not msg.is_extended_id
                and not msg.is_error_frame and not msg.is_remote_frame):
            with self.bench.lock:  # re-entrant: already held when called from the observer
                self.bench.twin.inverter_heartbeat()
            self.heartbeats_received += 1  # any payload counts (DOMAIN.md section 4)
        elif (msg.arbitration_id in self.service and not msg.is_extended_id
                and not msg.is_error_frame and not msg.is_remote_frame):
            self._service(msg)
        else:
            self.frames_ignored += 1

    def _service(self, msg: can.Message) -> None:
        """One bench service command, applied now (bench lock held or taken here)."""
        command, message, module_signal, switch_signal = self.service[msg.arbitration_id]
        try:
            values = message.decode(bytes(msg.data), decode_choices=False)  # type: ignore[attr-defined]
        except Exception:  # cantools raises several types; a bad frame is ignored, never fatal
            self.frames_ignored += 1
            return
        assert isinstance(values, dict)
        twin = self.bench.twin
        index = int(values[module_signal])
        if not 0 <= index < len(twin.modules):
            self.frames_ignored += 1
            return
        module = twin.modules[index]
        with self.bench.lock:
            if command == "force_disconnect":
                twin.bms_force_off(module, bool(values[switch_signal]))
            elif command == "silence_module":
                silent = bool(values[switch_signal])
                twin.silent[index] = silent
                twin.events.append((twin.clock.now, f"{module} {'stops talking to' if silent else 'talks to'} "
                                                     "the master (service command)"))
        self.service_commands += 1


def main(argv: list[str] | None = None) -> int:
    """Serve a twin's BMS over socketcand on loopback, following wall time, until stdin closes.

    Prints one JSON line ``{"host", "port", "channel"}`` once listening, so a parent process
    can connect python-can's ``socketcand`` interface to it.
    """
    import argparse
    import json
    import sys
    import uuid

    from emulator.endpoints.socketcand_server import SocketcandServer
    from emulator.twin import build_twin

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--dut", default="1s4p_diagonal")
    parser.add_argument("--scenario", default=None)
    parser.add_argument("--speed", type=float, default=1.0, help="bench seconds per wall second")
    parser.add_argument("--channel", default=f"bankhil-{uuid.uuid4().hex[:8]}")
    parser.add_argument("--bms-profile", default=FULL_PROFILE,
                        help="BMS profile: name in fixtures/bms_profiles/ or a path")
    args = parser.parse_args(argv)
    bench = EmulatedBench(build_twin(args.dut, args.scenario))
    bus = can.Bus(interface="virtual", channel=args.channel, preserve_timestamps=True)
    bms = EmulatedCanBms(bench, bus, profile=args.bms_profile).start()
    server = SocketcandServer(interface="virtual", channels={args.channel})
    host, port = server.start()
    print(json.dumps({"host": host, "port": port, "channel": args.channel, "profile": bms.profile.name}),
          flush=True)
    runner = threading.Thread(target=bench.run_realtime, kwargs={"speed": args.speed}, daemon=True)
    runner.start()
    try:
        sys.stdin.read()  # the parent closes our stdin (or dies) to stop us
    finally:
        bench.stop()
        runner.join(timeout=2.0)
        bms.stop()
        server.stop()
        bus.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
