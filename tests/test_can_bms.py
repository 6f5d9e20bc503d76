"""BMS over CAN: the DBC, the emulated master BMS, the socketcand bridge and the harness client.

Everything runs on real python-can buses over loopback: ``virtual`` in one process, and
python-can's ``socketcand`` interface against our socketcand server (in-process and from a
separate emulator process). The twin runs on its virtual clock; :class:`Rig` advances it in
small chunks and after each waits until every frame of that chunk has crossed the bus both
ways, so the tests are deterministic although the client and the emulator use threads.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import can
import cantools
import pytest
import yaml

from emulator.bench import EmulatedBench
from bankmodel.specs.loading import FIXTURES
from emulator.endpoints.can_bms import (EmulatedCanBms, dbc_path, firmware_code, load_dbc,
                                        protocol_values)
from emulator.endpoints.socketcand_server import SocketcandServer, format_frame, parse_send
from emulator.twin import Twin, build_twin
from instruments.can_bms import DBC_PATH, CanBms, parse_resource
from instruments.roles import InstrumentError

BATTERY_IDS = [0x351, 0x355, 0x356, 0x359, 0x35C, 0x35E, 0x35F, 0x372, 0x373, 0x379]
CHUNK_S = 0.1


# ------------------------------------------------------------------------------ the rig
@dataclass
class Rig:
    """A twin on an emulated bench, its CAN BMS on a virtual bus, the client playing inverter."""

    bench: EmulatedBench
    emu: EmulatedCanBms
    client: CanBms
    emu_bus: can.BusABC
    channel: str
    log_path: Path
    server: SocketcandServer | None = None
    drive_keepalive: bool = True
    injected: int = 0

    @property
    def twin(self) -> Twin:
        return self.bench.twin

    def settle(self, timeout_s: float = 5.0) -> None:
        """Wait (wall time) until the bus is quiet: keep-alives due are sent and on the
        emulator's bus (it takes them in on its next step), and every frame the BMS sent (plus
        anything injected) has been received."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            forwarded = (self.server.counts.get("frames_from_clients", 0) if self.server
                         else self.client.keepalives_sent)
            if (not self.client.keepalive_pending()
                    and forwarded >= self.client.keepalives_sent
                    and self.client.frames_received - self.injected >= self.emu.frames_sent):
                return
            time.sleep(0.0005)
        raise AssertionError(f"bus did not settle: emu sent {self.emu.frames_sent}, client got "
                             f"{self.client.frames_received}, keep-alives {self.client.keepalives_sent} "
                             f"sent / {self.emu.heartbeats_received} handled")

    def run(self, seconds: float, until=None) -> float | None:  # type: ignore[no-untyped-def]
        """Advance bench time in chunks; with ``until``, stop at the first chunk it holds and
        return that bench time. Like the harness's bench clock, the keep-alive is driven
        between chunks (``drive_keepalive``) unless the test wants the client's own thread."""
        for _ in range(round(seconds / CHUNK_S)):
            self.bench.advance(CHUNK_S)
            if self.drive_keepalive:
                self.client.send_keepalive_if_due()
            self.settle()
            if until is not None and until():
                return self.bench.now
        return None

    def inject(self, *messages: can.Message) -> None:
        """Put frames on the bus from a third node (a faulty device, a noisy harness)."""
        with can.Bus(interface="virtual", channel=self.channel) as injector:
            for msg in messages:
                injector.send(msg)
        self.injected += len(messages)
        self.settle()


def make_rig(tmp_path: Path, twin: Twin, transport: str = "virtual", drive_keepalive: bool = True,
             **client_kwargs) -> Rig:  # type: ignore[no-untyped-def]
    channel = f"bankhil-test-{uuid.uuid4().hex[:8]}"
    bench = EmulatedBench(twin)
    emu_bus = can.Bus(interface="virtual", channel=channel, preserve_timestamps=True)
    emu = EmulatedCanBms(bench, emu_bus)
    server = None
    log_path = tmp_path / "bms.log"
    kwargs = dict(period_s=1.0, clock=lambda: bench.now, log_path=log_path, poll_s=0.001)
    kwargs.update(client_kwargs)
    if transport == "socketcand":
        server = SocketcandServer(interface="virtual", channels={channel})
        host, port = server.start()
        client = CanBms("socketcand", channel, host=host, port=port, **kwargs)
    else:
        client = CanBms("virtual", channel, **kwargs)
    emu.start()
    return Rig(bench, emu, client, emu_bus, channel, log_path, server, drive_keepalive)


def close_rig(rig: Rig) -> None:
    rig.client.close()
    rig.emu.stop()
    if rig.server is not None:
        rig.server.stop()
    rig.emu_bus.shutdown()


@pytest.fixture
def rig_factory(tmp_path):
    rigs: list[Rig] = []

    def factory(twin: Twin, transport: str = "virtual", **kwargs) -> Rig:  # type: ignore[no-untyped-def]
        rig = make_rig(tmp_path / f"rig{len(rigs)}", twin, transport, **kwargs)
        rigs.append(rig)
        return rig

    yield factory
    for rig in rigs:
        close_rig(rig)


def candidate_dut(tmp_path: Path) -> Path:
    """The 1S4P diagonal bank, but running the candidate firmware (fixtures/firmware/candidate.yaml)."""
    dut = yaml.safe_load((FIXTURES / "duts" / "1s4p_diagonal.yaml").read_text())
    dut["firmware"] = "candidate"
    dut["name"] = "1s4p_diagonal_candidate"
    path = tmp_path / "duts" / "1s4p_diagonal_candidate.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dut))
    return path


# ------------------------------------------------------------------------------ the DBC
def test_dbc_loads_round_trips_and_matches_the_protocol_table():
    db = cantools.database.load_file(str(DBC_PATH), strict=True)
    assert dbc_path() == DBC_PATH  # both ends read the same file
    assert {n.name for n in db.nodes} == {"BMS", "INVERTER"}
    assert sorted(m.frame_id for m in db.messages) == sorted(BATTERY_IDS + [0x305])
    for m in db.messages:
        assert not m.is_extended_frame
        assert m.senders == (["INVERTER"] if m.frame_id == 0x305 else ["BMS"])
        assert all(s.byte_order == "little_endian" for s in m.signals)
    # dump and reload: the same layout, signal by signal
    again = cantools.database.load_string(db.as_dbc_string(), "dbc", strict=True)
    for m in db.messages:
        m2 = again.get_message_by_frame_id(m.frame_id)
        assert (m2.name, m2.length) == (m.name, m.length)
        for s in m.signals:
            s2 = m2.get_signal_by_name(s.name)
            assert (s2.start, s2.length, s2.is_signed, s2.scale, s2.offset, s2.unit, s2.byte_order) == \
                   (s.start, s.length, s.is_signed, s.scale, s.offset, s.unit, s.byte_order)
    # units and scales of the table
    limits = db.get_message_by_frame_id(0x351)
    assert [(s.name, s.scale, s.unit, s.is_signed) for s in limits.signals] == [
        ("ChargeVoltageLimit", 0.1, "V", False), ("ChargeCurrentLimit", 0.1, "A", True),
        ("DischargeCurrentLimit", 0.1, "A", True), ("DischargeVoltageLimit", 0.1, "V", False)]
    meas = db.get_message_by_frame_id(0x356)
    assert [(s.scale, s.unit, s.is_signed) for s in meas.signals] == [
        (0.01, "V", True), (0.1, "A", True), (0.1, "degC", True)]
    # encode -> decode of every message with non-trivial values
    for m in db.messages:
        values = {s.name: (s.maximum if s.length == 1 else round((s.maximum or 1) / 3 / s.scale) * s.scale)
                  for s in m.signals}
        decoded = m.decode(m.encode(values))
        for name, value in values.items():
            assert decoded[name] == pytest.approx(value, abs=m.get_signal_by_name(name).scale)


def test_dbc_bytes_are_the_tables_bytes():
    """Byte positions by hand: 0x351 little-endian, 0x359 alarm/warning bits and 'PN', 0x35E ASCII."""
    db = load_dbc()
    data = db.encode_message(0x351, {"ChargeVoltageLimit": 14.2, "ChargeCurrentLimit": 400.0,
                                     "DischargeCurrentLimit": 400.0, "DischargeVoltageLimit": 12.0})
    assert data == bytes([0x8E, 0x00, 0xA0, 0x0F, 0xA0, 0x0F, 0x78, 0x00])
    flags = {s.name: 0 for s in db.get_message_by_frame_id(0x359).signals}
    flags.update(Alarm_OverVoltage=1, Alarm_DischargeOverCurrent=1, Alarm_BmsInternal=1,
                 Warning_UnderTemp=1, Warning_ChargeOverCurrent=1, ModuleCount=4, MarkerP=0x50, MarkerN=0x4E)
    assert db.encode_message(0x359, flags) == bytes([0x82, 0x08, 0x10, 0x01, 0x04, ord("P"), ord("N")])
    name = int.from_bytes(b"PYLON   ", "little")
    assert db.encode_message(0x35E, {"ManufacturerName": name}) == b"PYLON   "
    assert firmware_code("2.1.0") == 0x0201 and firmware_code("2.2.0-rc1") == 0x0202


# ------------------------------------------------------------------------------ frames
@pytest.mark.parametrize("transport", ["virtual", "socketcand"])
def test_every_frame_decodes_to_the_twins_values(rig_factory, transport):
    twin = build_twin("1s4p_diagonal")
    rig = rig_factory(twin, transport)
    twin.set_load(50.0)
    twin.load_input(True)
    rig.run(6.0)
    c = rig.client
    # every battery frame decoded, and equal to what the emulator encoded (within one quantum)
    db = load_dbc()
    for frame_id in BATTERY_IDS:
        decoded = c.decoded(frame_id)
        assert decoded is not None, f"0x{frame_id:03X} never decoded"
        for signal in db.get_message_by_frame_id(frame_id).signals:
            sent = rig.emu.last_values[frame_id][signal.name]
            assert decoded[signal.name] == pytest.approx(sent, abs=signal.scale / 2 + 1e-9), signal.name
    # and what was encoded is the master's report and the twin's state
    r = twin.master.report
    limits = c.limits()
    assert limits.charge_voltage_v == pytest.approx(r.charge_voltage_limit_v, abs=0.05)
    assert limits.charge_current_a == pytest.approx(r.charge_current_limit_a, abs=0.05)
    assert limits.discharge_current_a == pytest.approx(r.discharge_current_limit_a, abs=0.05)
    assert limits.discharge_current_a > 0
    assert limits.discharge_voltage_v == pytest.approx(r.discharge_voltage_limit_v, abs=0.05)
    tel = c.telemetry()
    assert tel.soc_pct == round(r.soc_pct) and tel.soh_pct == round(r.soh_pct)
    assert tel.current_a == pytest.approx(-50.0, abs=0.1)  # discharging: negative
    stack = sum(twin.module_stack_voltage(m) for m in twin.modules) / len(twin.modules)
    assert tel.voltage_v == pytest.approx(stack, abs=0.01)
    temps = [twin.thermocouple(m) for m in twin.modules]
    assert tel.temperature_c == pytest.approx(sum(temps) / len(temps), abs=0.1)
    values = protocol_values(twin)
    assert tel.min_cell_v == pytest.approx(values[0x373]["MinCellVoltage"] / 1000, abs=0.001)
    assert tel.max_cell_v == pytest.approx(values[0x373]["MaxCellVoltage"] / 1000, abs=0.001)
    low, high = c.cell_temperatures_c()
    assert low == pytest.approx(min(temps), abs=0.6) and high == pytest.approx(max(temps), abs=0.6)
    status = c.status()
    assert status.alarms == set() and status.warnings == set()
    assert (status.modules_online, status.modules_offline) == (r.modules_online, r.modules_offline) == (4, 0)
    assert status.online_capacity_ah == r.online_capacity_ah == 400
    assert status.installed_capacity_ah == r.installed_capacity_ah == 400
    assert status.charge_enable is r.charge_enable is True
    assert status.discharge_enable is r.discharge_enable is True
    assert c.decoded(0x372)["ModulesBlockingCharge"] == r.blocking_charge == 0
    assert c.decoded(0x359)["ModuleCount"] == 4
    assert c.firmware() == "2.1.0"  # fixtures/firmware/good.yaml: 2.1.0 (0x35F carries 2.1)
    assert c.identity() == "PYLON BMS, firmware 2.1.0"
    assert c.malformed_counts() == dict.fromkeys(c.malformed_counts(), 0)
    # one report per firmware period of bench time: 6 s -> 6 or 7 reports of 10 frames
    assert rig.emu.reports_sent in (6, 7) and rig.emu.frames_sent == 10 * rig.emu.reports_sent


def test_module_trips_and_a_silent_module_reach_0x359_and_0x372(rig_factory, tmp_path):
    """A module at 65 C trips its discharge over-temperature protection (limit 60 C): over-temp
    warning during the debounce, then the alarm and one module blocking discharge. The silent module scenario: one module offline, comm
    alarm, its capacity gone from the online total."""
    scenario = tmp_path / "hot_module_65c.yaml"
    scenario.write_text(yaml.safe_dump({
        "name": "hot_module_65c", "description": "middle module at 65 C, above its 60 C discharge limit",
        "faults": [{"kind": "hot_module", "module": "middle", "extra_heat_w": 0,
                    "initial_temperature_c": 65}]}))
    twin = build_twin("1s4p_diagonal", scenario=scenario)
    rig = rig_factory(twin)
    twin.set_load(40.0)
    twin.load_input(True)
    rig.run(1.5)  # inside the protection's 2 s debounce: a warning, not yet an alarm
    status = rig.client.status()
    assert (status.alarms, status.warnings) == (set(), {"over_temperature"})
    rig.run(2.5)
    status = rig.client.status()
    assert (status.alarms, status.warnings) == ({"over_temperature"}, set())
    assert rig.client.decoded(0x372)["ModulesBlockingDischarge"] == twin.master.report.blocking_discharge == 1
    low, high = rig.client.cell_temperatures_c()
    assert high == pytest.approx(65, abs=1) and low == pytest.approx(25, abs=1)

    twin = build_twin("1s4p_diagonal", scenario="silent_module")  # middle module silent at 20 s
    rig = rig_factory(twin)
    rig.run(19.0)
    assert rig.client.status().modules_offline == 0
    rig.run(6.0)  # past the 3 s slave timeout
    status = rig.client.status()
    assert (status.modules_online, status.modules_offline) == (3, 1)
    assert "bms_internal" in status.alarms  # comm alarm
    assert status.online_capacity_ah == 300 and status.installed_capacity_ah == 400


# ------------------------------------------------------------------------------ keep-alive
@pytest.mark.parametrize("firmware", ["good", "candidate"])
def test_heartbeat_loss_and_recovery_per_firmware(rig_factory, tmp_path, firmware):
    """Good firmware zeroes its limits within its timeout + one report period after the last
    keep-alive; the candidate keeps them (its regression). Both recover on resume."""
    dut = "1s4p_diagonal" if firmware == "good" else candidate_dut(tmp_path)
    twin = build_twin(dut)
    assert twin.spec.firmware.name == firmware
    rig = rig_factory(twin)
    c = rig.client
    rig.run(3.0)
    assert c.limits().discharge_current_a > 0 and c.limits().charge_current_a > 0
    c.heartbeat(False)
    rig.settle()
    rig.emu.poll()  # the last keep-alive sent, taken in now rather than on the next step
    last_heartbeat = twin.master.last_heartbeat
    timeout = twin.spec.firmware.heartbeat.timeout_s
    period = twin.spec.firmware.report_period_s

    def zeroed() -> bool:
        return c.limits().charge_current_a == 0 and c.limits().discharge_current_a == 0

    seen = rig.run(timeout + 3 * period, until=zeroed)
    assert twin.master.report.heartbeat_lost
    if firmware == "good":
        assert seen is not None, "good firmware did not zero its limits"
        assert timeout < seen - last_heartbeat <= timeout + period + CHUNK_S + 1e-9
        assert "bms_internal" in c.status().alarms
        assert c.status().charge_enable is False and c.status().discharge_enable is False
    else:
        assert seen is None and c.limits().discharge_current_a > 0 and c.limits().charge_current_a > 0
        assert "bms_internal" not in c.status().alarms  # the candidate raises no alarm either
    c.heartbeat(True)
    recovered = rig.run(3 * period, until=lambda: not twin.master.report.heartbeat_lost
                        and not zeroed() and "bms_internal" not in c.status().alarms)
    assert recovered is not None and not twin.master.report.heartbeat_lost
    assert c.limits().discharge_current_a > 0


@pytest.mark.parametrize("driven", [True, False], ids=["clock-duty", "own-thread"])
def test_keepalive_cadence_on_the_bench_clock(rig_factory, driven):
    """Every period of bench time, whether a bench-clock duty drives it or the client's thread
    watches the (virtual) clock; every one reaches the twin's master."""
    rig = rig_factory(build_twin("1s1p"), period_s=0.5, drive_keepalive=driven)
    rig.run(5.0)
    assert rig.client.keepalives_sent in (10, 11)
    rig.emu.poll()
    assert rig.emu.heartbeats_received == rig.client.keepalives_sent
    assert rig.twin.master.last_heartbeat == pytest.approx(rig.bench.now, abs=0.5 + CHUNK_S)


# ------------------------------------------------------------------------------ robustness
def test_malformed_frames_are_counted_never_crash(rig_factory):
    rig = rig_factory(build_twin("1s4p_diagonal"))
    rig.run(2.0)
    c = rig.client
    before = c.limits()
    rig.inject(
        can.Message(arbitration_id=0x351, data=bytes(5), is_extended_id=False),          # wrong DLC
        can.Message(arbitration_id=0x356, data=bytes(8), is_extended_id=False),          # wrong DLC
        can.Message(arbitration_id=0x123, data=b"\x01\x02", is_extended_id=False),       # unknown ID
        can.Message(arbitration_id=0x351, data=bytes(8), is_extended_id=True),           # unknown (29-bit)
        can.Message(arbitration_id=0x355, data=b"\xff\xff\xff\xff", is_extended_id=False),  # SOC 65535 %
        can.Message(arbitration_id=0x359, data=b"\xde\xad\xbe\xef\x00\x13\x37",
                    is_extended_id=False),                                            # no 'PN'
        can.Message(arbitration_id=0x35E, data=b"\x00\x01\x02\x03\x04\x05\x06\x07", is_extended_id=False),
        can.Message(arbitration_id=0x35E, data="PYLÖN".encode("latin-1").ljust(8), is_extended_id=False),
        can.Message(arbitration_id=0x351, is_remote_frame=True, dlc=8, is_extended_id=False),
        can.Message(arbitration_id=0x0, is_error_frame=True),
    )
    assert c.malformed_counts() == {"unknown_id": 2, "wrong_dlc": 2, "undecodable": 4,
                                    "error_frame": 1, "remote_frame": 1}
    assert c.limits() == before  # garbage never becomes telemetry
    rig.run(2.0)  # and the client keeps decoding
    assert c.limits().discharge_current_a > 0 and c.bus_errors == 0
    assert c.manufacturer() == "PYLON"


def test_can_log_reads_back_with_python_can(rig_factory):
    rig = rig_factory(build_twin("1s1p"))
    rig.run(3.0)
    rig.inject(can.Message(arbitration_id=0x7FF, data=b"\x00", is_extended_id=False))
    received, sent = rig.client.frames_received, rig.client.frames_sent
    rig.client.close()
    frames = list(can.LogReader(rig.log_path))
    assert len(frames) == received + sent
    assert sum(not f.is_rx for f in frames) == sent
    assert all(f.arbitration_id == 0x305 for f in frames if not f.is_rx)
    assert {f.arbitration_id for f in frames if f.is_rx} == set(BATTERY_IDS) | {0x7FF}
    stamps = [f.timestamp for f in frames]
    assert stamps == sorted(stamps) and stamps[-1] == pytest.approx(3.0, abs=CHUNK_S)  # bench time
    decoded = load_dbc().decode_message(0x351, next(f for f in frames if f.arbitration_id == 0x351).data)
    assert decoded["ChargeVoltageLimit"] == pytest.approx(14.2)


def test_a_silent_bms_is_detected(rig_factory):
    rig = rig_factory(build_twin("1s1p"))
    rig.run(2.0)
    c = rig.client
    assert c.seconds_since_heard() < 1.0 + CHUNK_S
    rig.emu.silent = True
    rig.run(6.0)
    assert c.seconds_since_heard() == pytest.approx(6.0, abs=1.0 + CHUNK_S)
    assert c.seconds_since_heard(0x351) == pytest.approx(6.0, abs=1.0 + CHUNK_S)
    rig.emu.poll()
    assert rig.emu.heartbeats_received == c.keepalives_sent  # silent, not deaf
    stale = CanBms("virtual", rig.channel, clock=lambda: rig.bench.now, stale_after_s=3.0, heartbeat_on=False)
    try:
        with pytest.raises(InstrumentError, match="no 0x351"):
            stale.limits()
    finally:
        stale.close()
    rig.emu.silent = False
    rig.run(1.0 + CHUNK_S)
    assert c.seconds_since_heard() < 1.0 + CHUNK_S


def test_safe_state_heartbeat_policy(rig_factory):
    rig = rig_factory(build_twin("1s1p"), safe_state_heartbeat="resume")
    rig.client.heartbeat(False)
    rig.client.safe_state()
    assert rig.client.heartbeat_on
    rig.client.safe_state_heartbeat = "stop"
    rig.client.safe_state()
    assert not rig.client.heartbeat_on
    rig.client.safe_state_heartbeat = "keep"
    rig.client.safe_state()
    assert not rig.client.heartbeat_on
    with pytest.raises(ValueError):
        CanBms("virtual", "x", safe_state_heartbeat="off")  # type: ignore[arg-type]


def test_parse_resource():
    assert parse_resource("socketcand://127.0.0.1:29536/bank0") == {
        "interface": "socketcand", "host": "127.0.0.1", "port": 29536, "channel": "bank0"}
    assert parse_resource("socketcan://can0?bitrate=500000") == {
        "interface": "socketcan", "channel": "can0", "bitrate": 500000}
    assert parse_resource("virtual://bank0") == {"interface": "virtual", "channel": "bank0"}
    with pytest.raises(ValueError):
        parse_resource("can0")


# ------------------------------------------------------------------------------ socketcand
def test_socketcand_server_protocol_and_bad_commands():
    """The wire lines python-can's client expects; malformed sends are counted and dropped."""
    assert format_frame(can.Message(arbitration_id=0x351, data=b"\x8e\x00", is_extended_id=False,
                                    timestamp=12.5)) == "< frame 351 12.500000 8E00 >"
    assert format_frame(can.Message(arbitration_id=0x18FF50E5, data=b"", is_extended_id=True,
                                    timestamp=1.0)) == "< frame 18FF50E5 1.000000  >"
    msg = parse_send(["305", "8", *["0"] * 8])
    assert (msg.arbitration_id, bytes(msg.data), msg.is_extended_id) == (0x305, bytes(8), False)
    with pytest.raises(ValueError):
        parse_send(["305", "3", "1"])
    with pytest.raises(ValueError):
        SocketcandServer(host="0.0.0.0")
    channel = f"bankhil-test-{uuid.uuid4().hex[:8]}"
    with SocketcandServer(channels={channel}) as server, \
            can.Bus(interface="virtual", channel=channel) as node:
        with socket.create_connection(server.address, timeout=2.0) as raw:
            assert raw.recv(64) == b"< hi >"
            raw.sendall(b"< open nope >")
            assert raw.recv(64).startswith(b"< error")
            raw.sendall(f"< open {channel} >".encode())
            assert raw.recv(64) == b"< ok >"
            raw.sendall(b"< rawmode >")
            assert raw.recv(64) == b"< ok >"
            raw.sendall(b"< send 305 2 1 >< send zz 1 1 >< bogus >garbage< send 305 1 aa >")
            got = node.recv(timeout=2.0)
            assert got is not None and (got.arbitration_id, bytes(got.data)) == (0x305, b"\xaa")
            node.send(can.Message(arbitration_id=0x351, data=b"\x01\x02", is_extended_id=False, timestamp=0))
            line = raw.recv(128).decode()
            assert line.startswith("< frame 351 ") and line.endswith(" 0102 >")
        assert server.counts["bad_send"] == 2 and server.counts["unsupported_command"] == 1


def test_cross_process_over_socketcand(tmp_path):
    """The emulator in its own process (wall clock, 10x), the client here over python-can's
    socketcand interface: frames decode, keep-alives reach the twin, loss is seen and cured."""
    proc = subprocess.Popen([sys.executable, "-m", "emulator.endpoints.can_bms", "--dut", "1s4p_diagonal",
                             "--speed", "10"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            cwd=Path(__file__).resolve().parents[1], text=True)
    try:
        assert proc.stdout is not None
        where = json.loads(proc.stdout.readline())
        # 10x: the 5 s heartbeat timeout is 0.5 s of wall time; keep-alive every 0.1 s of bench
        client = CanBms.from_resource(f"socketcand://{where['host']}:{where['port']}/{where['channel']}",
                                      period_s=0.01, log_path=tmp_path / "xproc.log")
        try:
            def wait_for(condition, timeout_s: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
                deadline = time.monotonic() + timeout_s
                while time.monotonic() < deadline:
                    try:
                        if condition():
                            return True
                    except InstrumentError:
                        pass
                    time.sleep(0.01)
                return False

            assert wait_for(lambda: c_limits(client) > 0)
            assert client.identity() == "PYLON BMS, firmware 2.1.0"
            client.heartbeat(False)
            assert wait_for(lambda: c_limits(client) == 0), "no derate after the keep-alive stopped"
            assert "bms_internal" in client.status().alarms
            client.heartbeat(True)
            assert wait_for(lambda: c_limits(client) > 0), "no recovery after the keep-alive resumed"
            assert client.malformed_counts() == dict.fromkeys(client.malformed_counts(), 0)
            assert client.bus_errors == 0
        finally:
            client.close()
        assert len(list(can.LogReader(tmp_path / "xproc.log"))) == client.frames_received + client.frames_sent
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0


def c_limits(client: CanBms) -> float:
    limits = client.limits()
    return limits.charge_current_a + limits.discharge_current_a
