"""SunSpec over Modbus RTU: the emulated BMS on a serial line, the harness's client on the other end.

There is no RS485 here: :class:`~emulator.endpoints.sunspec_server.NullModem` joins two
pseudo-terminals (``/dev/pts/N`` each) like a null-modem cable, the server (pymodbus
``ModbusSerialServer``, RTU framer) opens one end and the client (``ModbusSerialClient``) the
other, so every frame is RTU with its CRC through a real serial device. A Linux pseudo-terminal
refuses parity bits, so these lines run 19200 8N1. The same twin is also served over TCP to
check that both transports give the same answers. Bench time moves only by ``bench.advance``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from bankmodel.files import FileError
from emulator.endpoints.sunspec_server import NullModem, SunSpecServer
from harness.bench import _sunspec_from
from harness.config.station import ModbusBus, load_station
from instruments.roles import InstrumentError
from instruments.sunspec_bms import SerialLine, SunSpecBms
from test_sunspec import REPLY_TIMEOUT_S, load_on, make_bench, run

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pseudo-terminals (Linux)")

REPO = Path(__file__).resolve().parents[1]
LINE = {"parity": "N"}          # a pseudo-terminal takes no parity bit


@pytest.fixture
def rtu() -> Iterator[SimpleNamespace]:
    """A bench served over RTU (on a null modem) and over TCP, with a client on each."""
    bench = make_bench()
    modem = NullModem()
    server = SunSpecServer(bench, rtu_port=modem.server_port, **LINE).start()
    tcp_server = SunSpecServer(bench).start()
    client = SunSpecBms.rtu(modem.client_port, 1, timeout_s=REPLY_TIMEOUT_S, clock=lambda: bench.now, **LINE)
    tcp = SunSpecBms("127.0.0.1", tcp_server.port, 1, timeout_s=REPLY_TIMEOUT_S, clock=lambda: bench.now)
    try:
        yield SimpleNamespace(bench=bench, twin=bench.twin, modem=modem, server=server, client=client,
                              tcp_server=tcp_server, tcp=tcp)
    finally:
        client.close()
        tcp.close()
        server.stop()
        tcp_server.stop()
        modem.close()


# ------------------------------------------------------------------------------ the map over RTU


def test_rtu_reads_the_same_map_and_answers_as_tcp(rtu):
    load_on(rtu, 40.0)
    run(rtu, 3, heartbeat=False)     # CtrlHb is each server's own: no writes, one map
    models = rtu.client.discover()
    assert [m.model_id for m in models] == [1, 802, 803] + [804] * 4 + [805] * 4
    assert models == rtu.tcp.discover()
    for ref in models:                               # register for register, every model
        assert rtu.client._read(ref.address, ref.length + 2, "cmp") == rtu.tcp._read(ref.address, ref.length + 2,
                                                                                      "cmp")
    assert rtu.modem.bytes_copied > 0 and rtu.server.requests > 0
    assert rtu.client.identity() == rtu.tcp.identity()
    assert "LFP" in rtu.client.identity() and rtu.client.firmware() == rtu.tcp.firmware()
    assert rtu.client.telemetry() == rtu.tcp.telemetry()
    assert rtu.client.telemetry().current_a == pytest.approx(-40.0, abs=0.2)
    assert rtu.client.limits() == rtu.tcp.limits()
    assert rtu.client.status() == rtu.tcp.status()
    assert rtu.client.module_reports() == rtu.tcp.module_reports()
    reports = rtu.client.module_reports()
    assert [r.serial for r in reports.values()] == [rtu.twin.serials[m] for m in rtu.twin.modules]
    assert rtu.client.model(805).value("SN") == rtu.twin.serials["s1p1"]
    assert rtu.client.transport == "rtu" and rtu.tcp.transport == "tcp"
    assert rtu.client.resource == f"{rtu.modem.client_port} (Modbus RTU 19200 8N1)"


def test_rtu_writes_reach_the_battery(rtu):
    assert rtu.client.send_heartbeat() == 1 and rtu.server.heartbeats_received == 1
    rtu.client.set_operation(False)
    assert rtu.server.state.set_op == "DISCONNECT" and not rtu.twin.contactor_closed["main"]
    rtu.client.set_operation(True)
    assert rtu.twin.contactor_closed["main"]
    rtu.bench.advance(2.0)
    assert rtu.client.poll_heartbeat() == 2 and rtu.client.seconds_since_heard() == 0.0


# ------------------------------------------------------------------------------ line faults


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_a_reply_with_a_bad_crc_is_a_clear_error_naming_the_port(rtu):
    rtu.client.discover()
    rtu.server.corrupt_crc = True
    with pytest.raises(InstrumentError) as caught:
        rtu.client.telemetry()
    text = one_line(caught.value)
    assert rtu.modem.client_port in text and "model 802" in text
    assert "failed its CRC check" in caught.value.problem and "19200 8N1" in caught.value.problem
    rtu.server.corrupt_crc = False                   # the line is good again: so is the client
    assert rtu.client.telemetry() == rtu.tcp.telemetry()


def test_silence_is_a_timeout_naming_the_port_and_liveness_is_lost(rtu):
    run(rtu, 2)
    assert rtu.client.seconds_since_heard() == 0.0
    rtu.server.silent = True
    started = time.monotonic()
    with pytest.raises(InstrumentError) as caught:
        rtu.client.telemetry()
    assert time.monotonic() - started < REPLY_TIMEOUT_S + 1.5   # bounded by the time-out
    text = one_line(caught.value)
    assert rtu.modem.client_port in text and f"no reply within {REPLY_TIMEOUT_S:g} s" in text
    rtu.bench.advance(3.0)
    assert rtu.client.poll_heartbeat() is None
    assert rtu.client.seconds_since_heard() == pytest.approx(3.0)
    rtu.server.silent = False
    assert rtu.client.poll_heartbeat() == 5


def test_another_unit_id_is_not_answered(rtu):
    other = SunSpecBms.rtu(rtu.modem.client_port, 7, timeout_s=0.2, **LINE)
    rtu.client.close()                               # one client on the line at a time
    try:
        with pytest.raises(InstrumentError) as caught:
            other.discover()
        assert "not unit 7" in one_line(caught.value) and rtu.server.foreign_requests >= 1
    finally:
        other.close()


def test_a_port_that_does_not_open_is_named_at_once(tmp_path):
    missing = "/dev/ttyBANKHIL-no-such-port"
    client = SunSpecBms.rtu(missing, 1, timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(InstrumentError) as caught:
        client.discover()
    assert time.monotonic() - started < 2.0
    text = one_line(caught.value)
    assert f"cannot open serial port {missing}" in text and "No such file" in text
    assert caught.value.resource == f"{missing} (Modbus RTU 19200 8E1)"
    client.close()


def test_a_pty_refuses_parity_and_the_error_says_so():
    with NullModem() as modem:
        client = SunSpecBms.rtu(modem.client_port, 1, parity="E", timeout_s=0.3)
        with pytest.raises(InstrumentError) as caught:
            client.identity()
        assert "refuses the settings 19200 8E1" in one_line(caught.value)
        client.close()


def test_the_server_reports_a_port_it_cannot_open():
    with pytest.raises(RuntimeError, match="/dev/ttyBANKHIL-none"):
        SunSpecServer(make_bench(), rtu_port="/dev/ttyBANKHIL-none", parity="N").start()


def test_serial_line_settings_are_checked():
    assert str(SerialLine("/dev/ttyUSB0")) == "/dev/ttyUSB0 (Modbus RTU 19200 8E1)"
    for bad in ({"parity": "X"}, {"stopbits": 3}, {"baudrate": 0}):
        with pytest.raises(ValueError):
            SerialLine("/dev/ttyUSB0", **bad)


# ------------------------------------------------------------------------------ station files

STATION = """\
name: rs485-bench
emulated: false
instruments:
  supply:
    driver: keysight_n5700
    resource: TCPIP0::192.0.2.10::inst0::INSTR
    rating: {{voltage: "60 V", current: "25 A", power: "1500 W"}}
    calibration_due: 2027-06-30
bms:
  modbus:
{modbus}
"""


def station_file(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "station.yaml"
    path.write_text(STATION.format(modbus="\n".join("    " + line for line in lines)), encoding="utf-8")
    return path


def line_of(path: Path, fragment: str) -> int:
    return next(n for n, text in enumerate(path.read_text().splitlines(), 1) if fragment in text)


def test_station_rtu_bus_loads_with_its_settings(tmp_path):
    path = station_file(tmp_path, "transport: rtu", "serial_port: /dev/ttyUSB0", "baudrate: 9600",
                        "parity: N", "stopbits: 1", "device_id: 3", 'timeout: "500 ms"')
    bus = load_station(path).bms.modbus
    assert bus.transport == "rtu" and bus.host is None and bus.port is None
    assert bus.runtime() == {"transport": "rtu", "serial_port": "/dev/ttyUSB0", "baudrate": 9600,
                             "parity": "N", "stopbits": 1, "device_id": 3, "timeout_s": 0.5,
                             "heartbeat_period_s": 1.0}
    assert bus.resource == "/dev/ttyUSB0 (Modbus RTU 9600 8N1)"


def test_station_rtu_defaults_are_the_modbus_serial_line_specs(tmp_path):
    bus = load_station(station_file(tmp_path, "transport: rtu", "serial_port: COM3")).bms.modbus
    assert (bus.baudrate, bus.parity, bus.stopbits, bus.device_id) == (19200, "E", 1, 1)


def test_existing_tcp_station_files_mean_what_they_meant(tmp_path):
    bus = load_station(station_file(tmp_path, "host: 192.0.2.20", "device_id: 1")).bms.modbus
    assert bus.transport == "tcp" and (bus.host, bus.port) == ("192.0.2.20", 502)
    assert bus.serial_port is None and bus.baudrate is None
    assert bus.runtime() == {"host": "192.0.2.20", "port": 502, "device_id": 1, "timeout_s": 1.0,
                             "heartbeat_period_s": 1.0}
    lab = load_station(REPO / "fixtures" / "stations" / "lab_example.yaml")
    assert lab.as_runtime()["bms"]["modbus"] == lab.bms.modbus.runtime()   # the same shape as before
    explicit = load_station(station_file(tmp_path, "transport: tcp", "host: bms.local", "port: 1502"))
    assert explicit.bms.modbus.resource == "bms.local:1502"


@pytest.mark.parametrize("lines, at, field, allowed", [
    (("transport: rtu", "serial_port: /dev/ttyUSB0", "host: 192.0.2.20"), "host:", "bms.modbus.host",
     "no host with transport rtu"),
    (("transport: rtu", "serial_port: /dev/ttyUSB0", "port: 502"), "port: 502", "bms.modbus.port",
     "no port with transport rtu"),
    (("host: 192.0.2.20", "serial_port: /dev/ttyUSB0"), "serial_port", "bms.modbus.serial_port",
     "no serial_port with transport tcp"),
    (("host: 192.0.2.20", "baudrate: 9600"), "baudrate", "bms.modbus.baudrate",
     "no baudrate with transport tcp"),
    (("transport: rtu", "baudrate: 9600"), "modbus:", "bms.modbus", "serial_port (e.g. /dev/ttyUSB0)"),
    (("device_id: 1",), "modbus:", "bms.modbus", "host (an IP address or host name"),
    (("transport: rtu", "serial_port: /dev/ttyUSB0", "baudrate: 9601"), "baudrate", "bms.modbus.baudrate",
     "9600, 19200"),
    (("transport: rtu", "serial_port: /dev/ttyUSB0", "parity: even"), "parity", "bms.modbus.parity",
     "'N', 'E' or 'O'"),
    (("transport: rtu", "serial_port: /dev/ttyUSB0", "stopbits: 3"), "stopbits", "bms.modbus.stopbits",
     "1 or 2"),
    (("transport: rtu", "serial_port: /etc/passwd"), "serial_port", "bms.modbus.serial_port",
     "a serial device"),
    (("transport: rtu", "serial_port: /dev/../etc/passwd"), "serial_port", "bms.modbus.serial_port",
     "a serial device"),
    (("transport: rs485", "serial_port: /dev/ttyUSB0"), "transport", "bms.modbus.transport", "'tcp' or 'rtu'"),
    (("transport: rtu", "serial_port: /dev/ttyUSB0", "device_id: 248"), "device_id", "bms.modbus.device_id",
     "247"),
])
def test_station_modbus_errors_are_located(tmp_path, lines, at, field, allowed):
    path = station_file(tmp_path, *lines)
    with pytest.raises(FileError) as caught:
        load_station(path)
    err = caught.value
    assert err.field == field and allowed in err.allowed, str(err)
    # a mapping is placed at its key's line or its first entry's
    assert err.line in ((line_of(path, at), line_of(path, at) + 1) if field == "bms.modbus"
                        else (line_of(path, at),)), str(err)
    assert "\n" not in str(err)


def test_a_station_rtu_bus_builds_a_working_client(tmp_path):
    bench = make_bench()
    with NullModem() as modem, SunSpecServer(bench, rtu_port=modem.server_port, **LINE) as server:
        path = station_file(tmp_path, "transport: rtu", f"serial_port: {modem.client_port}", "parity: N",
                            'timeout: "300 ms"', 'heartbeat_period: "2 s"')
        bus = load_station(path).bms.modbus
        client = _sunspec_from(bus.runtime(), SimpleNamespace(now=lambda: bench.now), "bms", keepalive=True)
        try:
            assert client.serial_line == SerialLine(modem.client_port, 19200, "N", 1, 8)
            assert client.timeout_s == 0.3 and client.heartbeat_period_s == 2.0 and client.heartbeat_on
            assert client.send_keepalive_if_due() and server.heartbeats_received == 1
            assert client.bank_identity().serial == bench.twin.serials["s1p1"]
        finally:
            client.close()
    tcp = ModbusBus.model_validate({"host": "127.0.0.1", "port": 1502})
    client = _sunspec_from(tcp.runtime(), SimpleNamespace(now=time.monotonic), "bms", keepalive=False)
    assert client.transport == "tcp" and client.resource == "127.0.0.1:1502"
    client.close()


# ------------------------------------------------------------------------------ as a process


def test_the_server_process_serves_rtu_on_a_null_modem():
    proc = subprocess.Popen([sys.executable, "-m", "emulator.endpoints.sunspec_server", "--dut", "1s1p",
                             "--rtu", "pty", "--speed", "1"], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        described = json.loads(proc.stdout.readline())
        assert described["transport"] == "rtu" and described["parity"] == "N"
        client = SunSpecBms.from_settings({**described, "timeout_s": 1.0})
        try:
            assert client.telemetry().voltage_v > 10.0
        finally:
            client.close()
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
