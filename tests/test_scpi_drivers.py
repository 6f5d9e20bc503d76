"""Every SCPI driver against its emulated instrument, over real loopback sockets.

The twin is built from the fixture files, wrapped in an EmulatedBench, served by
``start_scpi_endpoints`` and reached with pyvisa-py (``@py``): the product path end to end.
Values are checked against the twin itself; error paths against the instrument error queue,
a refused setpoint, a hung instrument and garbage on the wire. The last section hammers the
server with what a misbehaving client can send.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pytest

from emulator.bench import EmulatedBench
from emulator.endpoints import start_scpi_endpoints, stop_scpi_endpoints
from emulator.endpoints.scpi_instruments import Endpoints, select_models
from emulator.scpi_server import Args, HeaderPattern, ScpiDevice, ScpiServer, scpi
from emulator.twin import build_twin
from instruments.drivers import get_driver
from instruments.drivers.keysight_n5700 import KeysightN5700
from instruments.roles import InstrumentError, SetpointRefused
from instruments.scpi import ScpiInstrument

DRIVER_OF = {"supply": "keysight_n5700", "load": "itech_it8500", "dmm_vds": "keysight_34465a",
             "dmm_shunt": "keysight_34465a", "scanner": "keysight_daq970a",
             "actuator": "keysight_daq970a", "acir": "hioki_bt3562"}
RATING_OF = {"supply": {"voltage_v": 60.0, "current_a": 120.0}, "load": {"current_a": 200.0}}
TIMEOUT_S = 1.0


@dataclass
class Rig:
    """A twin on an emulated bench, its SCPI endpoints, and drivers connected to them."""

    bench: EmulatedBench
    endpoints: Endpoints
    drivers: list[ScpiInstrument] = field(default_factory=list)

    @property
    def twin(self):  # type: ignore[no-untyped-def]
        return self.bench.twin

    def connect(self, role: str, rating: dict[str, float] | None = None, timeout_s: float = TIMEOUT_S,
                **options: Any) -> Any:
        cls = get_driver(DRIVER_OF[role])
        driver = cls(self.endpoints[role][1], role, rating or RATING_OF.get(role), timeout_s,
                     options=options or None)
        self.drivers.append(driver)
        return driver

    def server(self, role: str) -> ScpiServer:
        return self.endpoints[role][0]


@pytest.fixture
def make_rig() -> Iterator[Callable[[str], Rig]]:
    rigs: list[Rig] = []

    def make(dut: str = "1s4p_diagonal") -> Rig:
        bench = EmulatedBench(build_twin(dut))
        rig = Rig(bench, start_scpi_endpoints(bench))
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        for driver in rig.drivers:
            driver.close()
        stop_scpi_endpoints(rig.endpoints)


@pytest.fixture
def rig(make_rig: Callable[[str], Rig]) -> Rig:
    return make_rig("1s4p_diagonal")


# ================================================================================== values
def test_every_endpoint_identifies_itself(rig: Rig):
    # the 1s4p bank needs 400 A of charge at up to 18 V (x 1.25): no N5700/N8700 member serves
    # it, so the supply is the member with the most current rated for the voltage, the N8754A
    assert {role: m.name for role, m in select_models(rig.twin).items()} == {"supply": "N8754A",
                                                                             "load": "IT8516C+"}
    expected = {"supply": "Keysight Technologies,N8754A,", "load": "ITECH Ltd.,IT8516C+,",
                "dmm_vds": "Keysight Technologies,34465A,", "dmm_shunt": "Keysight Technologies,34465A,",
                "scanner": "Keysight Technologies,DAQ970A,", "actuator": "Keysight Technologies,DAQ970A,",
                "acir": "HIOKI,BT3562,"}
    assert set(rig.endpoints) == set(expected)
    assert rig.endpoints["scanner"] == rig.endpoints["actuator"]
    for role, prefix in expected.items():
        server, resource = rig.endpoints[role]
        assert resource == f"TCPIP0::127.0.0.1::{server.port}::SOCKET"
        assert rig.connect(role).identity().startswith(prefix)


def test_supply_charges_at_its_current_limit(rig: Rig):
    supply = rig.connect("supply")
    supply.set_voltage(14.0)
    supply.set_current(10.0)
    supply.output(True)
    rig.bench.advance(5.0)
    with rig.bench.lock:
        volts, amps = rig.twin.supply_reading()
    assert supply.is_on() and rig.twin.supply.on
    assert supply.measure_current() == pytest.approx(10.0, abs=0.05)
    assert supply.measure_current() == pytest.approx(amps, abs=1e-6)
    assert supply.measure_voltage() == pytest.approx(volts, abs=1e-6)
    assert 13.0 < volts < 14.0  # current-limited below its voltage setpoint
    assert (supply.voltage, supply.current) == pytest.approx((14.0, 10.0))
    supply.safe_state()
    supply.safe_state()  # already safe: no error
    assert not rig.twin.supply.on and not supply.is_on()


def test_load_draws_its_set_current(rig: Rig):
    load = rig.connect("load")
    ocv = rig.connect("supply").measure_voltage()  # supply off: it reads the bank terminals
    load.set_current(50.0)
    load.input(True)
    rig.bench.advance(5.0)
    assert load.is_on() and rig.twin.load.on
    assert load.measure_current() == pytest.approx(50.0, rel=1e-3)
    assert load.measure_current() == pytest.approx(rig.twin.load_reading()[1], abs=1e-6)
    assert load.measure_voltage() < ocv - 0.01  # sagging under load
    load.safe_state()
    load.safe_state()
    assert not rig.twin.load.on


def test_scanner_reads_modules_shunts_and_thermocouples(rig: Rig):
    scanner, load = rig.connect("scanner"), rig.connect("load")
    load.set_current(100.0)
    load.input(True)
    rig.bench.advance(2.0)
    wiring = rig.bench.wiring.scanner_channels()
    volt_ch = [ch for ch, w in wiring.items() if w.kind == "voltage"]
    shunt_ch = [ch for ch, w in wiring.items() if w.kind == "shunt"]
    tc_ch = [ch for ch, w in wiring.items() if w.kind == "thermocouple"]
    volts = scanner.voltages(volt_ch + shunt_ch)
    temps = scanner.temperatures(tc_ch)
    with rig.bench.lock:
        for ch in volt_ch:
            assert volts[ch] == pytest.approx(rig.twin.probe(wiring[ch].plus, wiring[ch].minus), abs=1e-3)
        for ch in shunt_ch:
            expected = rig.twin.shunt_current(wiring[ch].branch) * wiring[ch].shunt_ohm
            assert volts[ch] == pytest.approx(expected, abs=5e-6)
        for ch in tc_ch:
            assert temps[ch] == pytest.approx(rig.twin.thermocouple(wiring[ch].point), abs=0.5)
    branch_amps = sum(volts[ch] / wiring[ch].shunt_ohm for ch in shunt_ch)
    assert branch_amps == pytest.approx(-100.0, rel=0.01)  # discharging: - into the bank


def test_series_bank_module_voltages(make_rig: Callable[[str], Rig]):
    rig = make_rig("4s1p")
    volts = rig.connect("scanner").voltages([101, 102, 103, 104])
    bank = rig.connect("supply").measure_voltage()
    assert sum(volts.values()) == pytest.approx(bank, abs=0.01)
    assert 50 < bank < 54


def test_actuator_drives_the_contactors(rig: Rig):
    actuator = rig.connect("actuator")
    assert actuator.is_closed(304) and rig.twin.contactor_closed["s1p4"]
    actuator.open_channel(304)
    assert not rig.twin.contactor_closed["s1p4"] and not actuator.is_closed(304)
    actuator.close_channel(304)
    assert rig.twin.contactor_closed["s1p4"] and actuator.is_closed(304)
    actuator.safe_state()
    assert not any(rig.twin.contactor_closed.values())
    actuator.safe_state()


def test_scanner_and_actuator_share_one_daq(rig: Rig):
    scanner, actuator = rig.connect("scanner"), rig.connect("actuator")
    actuator.open_channel(301)
    assert scanner.is_closed(301) is False  # one mainframe, two connections
    assert scanner.voltages([101])[101] > 12


def test_digitised_inrush_shows_the_peak(rig: Rig):
    actuator, dmm = rig.connect("actuator"), rig.connect("dmm_shunt")
    source = rig.bench.wiring.dmm["dmm_shunt"]
    assert source.branch == "s1p4"
    actuator.open_channel(304)
    with rig.bench.lock:
        rig.twin.set_module_soc("s1p4", 95.0)  # ~0.2 V above its 50 % peers
    rig.bench.advance(1.0)
    dmm.arm_digitise(20e-6, 1000)
    actuator.close_channel(304)
    rig.bench.advance(0.02)
    wave = dmm.fetch_waveform()
    amps = [v / source.shunt_ohm for v in wave.samples]
    peak = max(amps, key=abs)
    assert len(amps) == 1000 and wave.interval_s == 20e-6
    assert abs(amps[0]) < 0.1  # the capture starts before the close
    assert abs(peak) > 15.0
    assert abs(peak) == pytest.approx(rig.twin.peaks.current_a["s1p4"], rel=0.02)


def test_dmm_reads_the_fet_drop(make_rig: Callable[[str], Rig]):
    rig = make_rig("4s1p")
    dmm, load = rig.connect("dmm_vds"), rig.connect("load")
    load.set_current(100.0)
    load.input(True)
    rig.bench.advance(2.0)
    source = rig.bench.wiring.dmm["dmm_vds"]
    with rig.bench.lock:
        expected = rig.twin.probe(source.plus, source.minus)
    reading = dmm.measure_voltage()
    assert reading == pytest.approx(expected, abs=5e-4)
    assert abs(reading) > 0.05  # 100 A through milliohms of FETs


def test_fetch_blocks_while_bench_time_moves(rig: Rig):
    dmm = rig.connect("dmm_vds")
    rig.server("dmm_vds").device.stall_s = 2.0  # a loaded CI machine may starve the runner a while
    runner = threading.Thread(target=rig.bench.run_realtime, kwargs={"speed": 1.0}, daemon=True)
    dmm.arm_digitise(1e-3, 50)  # 50 ms of bench time
    runner.start()
    try:
        wave = dmm.fetch_waveform()
    finally:
        rig.bench.stop()
        runner.join(timeout=2.0)
    assert len(wave.samples) == 50


def test_fetch_on_a_stopped_clock_fails_fast_and_can_be_retried(rig: Rig):
    dmm = rig.connect("dmm_vds")
    dmm.arm_digitise(1e-3, 20)
    start = time.monotonic()
    with pytest.raises(InstrumentError, match="-230") as info:
        dmm.fetch_waveform()
    assert time.monotonic() - start < TIMEOUT_S
    assert info.value.command == "FETC?"
    rig.bench.advance(0.05)
    assert len(dmm.fetch_waveform().samples) == 20


def test_safe_state_aborts_a_capture(rig: Rig):
    dmm = rig.connect("dmm_vds")
    dmm.arm_digitise(1e-3, 1_000_000)
    dmm.safe_state()
    dmm.safe_state()
    rig.bench.advance(0.01)
    assert not rig.bench.captures  # the aborted capture no longer holds the twin's step down


def test_acir_reads_the_modules_ac_resistance(rig: Rig):
    ohm, volts = rig.connect("acir").measure()
    expected_ohm, expected_v = rig.bench.ac_ir()
    assert ohm == pytest.approx(expected_ohm, abs=2e-5)
    assert 2e-3 < ohm < 6e-3
    assert volts == pytest.approx(expected_v, abs=1e-3)


def test_every_driver_reaches_a_safe_state_twice(rig: Rig):
    for role in ("supply", "load", "dmm_vds", "dmm_shunt", "scanner", "acir"):
        driver = rig.connect(role)
        driver.safe_state()
        driver.safe_state()
    assert not rig.twin.supply.on and not rig.twin.load.on
    assert not any(rig.twin.contactor_closed.values())


# ================================================================================== errors
def test_unknown_command_raises_naming_it(rig: Rig):
    supply = rig.connect("supply")
    with pytest.raises(InstrumentError, match='-113,"Undefined header"') as info:
        supply.write("VOLT:BOGUS 3")
    assert info.value.command == "VOLT:BOGUS 3" and info.value.resource == rig.endpoints["supply"][1]
    with pytest.raises(InstrumentError, match="-113") as info:
        supply.query_value("BOGUS?")
    assert info.value.command == "BOGUS?"
    assert supply.measure_voltage() > 12  # in step afterwards


def test_setpoint_above_rating_never_reaches_the_instrument(rig: Rig):
    supply = rig.connect("supply")
    with pytest.raises(SetpointRefused):
        supply.set_voltage(61.0)
    supply.set_voltage(14.2)
    sent = list(rig.server("supply").history)
    assert "VOLT 14.2" in sent and not any(line.startswith("VOLT 61") for line in sent)
    assert rig.twin.supply.voltage_v == pytest.approx(14.2)


def test_instrument_range_error_names_the_command(rig: Rig):
    load = rig.connect("load", rating={"current_a": 300.0})  # a station rating above the load's 240 A
    with pytest.raises(InstrumentError, match="-222") as info:
        load.set_current(250.0)
    assert info.value.command == "CURR 250"
    assert rig.twin.load.current_a == 0.0


def test_thermocouple_query_on_a_voltage_channel(rig: Rig):
    with pytest.raises(InstrumentError, match="-221") as info:
        rig.connect("scanner").temperatures([101])
    assert info.value.command == "MEAS:TEMP? TC,K,(@101)"


def test_hung_instrument_times_out_then_recovers(rig: Rig):
    supply = rig.connect("supply", timeout_s=0.3)
    server = rig.server("supply")
    server.freeze()
    start = time.monotonic()
    with pytest.raises(InstrumentError, match="timeout") as info:
        supply.measure_voltage()
    elapsed = time.monotonic() - start
    assert 0.25 < elapsed < 1.0  # the timeout, plus scheduling slack on a loaded machine
    assert info.value.command == "MEAS:VOLT?" and info.value.resource == server.resource
    server.thaw()
    assert supply.measure_voltage() > 12


def test_instrument_that_goes_away(rig: Rig):
    supply = rig.connect("supply", timeout_s=0.3)
    rig.server("supply").close()
    with pytest.raises(InstrumentError) as info:
        supply.set_voltage(14.0)
        supply.set_voltage(14.0)  # the first send may still land in the socket buffer
    assert info.value.resource == rig.endpoints["supply"][1]


def test_driver_used_after_close(rig: Rig):
    supply = rig.connect("supply")
    supply.close()
    with pytest.raises(InstrumentError) as info:
        supply.measure_voltage()
    assert info.value.command == "MEAS:VOLT?"
    supply.close()  # closing twice is harmless


def test_nothing_listening():
    # bound but never listening: a connection is refused, and while the probe holds the port no
    # other process (another xdist worker's server) can be given it
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        with pytest.raises(InstrumentError) as info:
            KeysightN5700(f"TCPIP0::127.0.0.1::{port}::SOCKET", "supply", timeout_s=0.3)
    assert str(port) in info.value.resource
    with pytest.raises(InstrumentError, match="open"):
        KeysightN5700("TCPIP0::127.0.0.1::not-a-port::SOCKET", "supply", timeout_s=0.3)


class GarbageDevice(ScpiDevice):
    """An instrument whose replies are wrong in the ways real ones can be."""

    @scpi("MEASure:VOLTage?")
    def _volt(self, args: Args) -> str:
        return "\xff\xfe\x00garbage"

    @scpi("MEASure:CURRent?")
    def _curr(self, args: Args) -> str:
        return "1.0,2.0"

    @scpi("OUTPut?")
    def _outp(self, args: Args) -> str:
        return "maybe"


def test_garbage_replies_raise_naming_the_reply():
    with ScpiServer(GarbageDevice()) as server:
        supply = KeysightN5700(server.resource, "supply", timeout_s=0.5)
        try:
            with pytest.raises(InstrumentError, match="not text"):
                supply.measure_voltage()
            with pytest.raises(InstrumentError, match="'1.0,2.0'"):
                supply.measure_current()
            with pytest.raises(InstrumentError, match="'maybe'"):
                supply.is_on()
            assert supply.identity().startswith("Emulated")
        finally:
            supply.close()


# ================================================================================== server
def raw_client(server: ScpiServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=2.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def ask(sock: socket.socket, line: bytes) -> str:
    sock.sendall(line + b"\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        assert chunk, "server closed the connection"
        data += chunk
    return data.decode("latin-1").rstrip("\n")


def test_header_patterns():
    pattern = HeaderPattern.compile("MEASure[:SCALar]:VOLTage[:DC]?")
    for header in ("MEAS:VOLT", "MEASURE:VOLTAGE:DC", "MEAS:SCAL:VOLT:DC", "MEASure:VOLT"):
        assert pattern.match(header.upper().split(":")), header
    for header in ("MEA:VOLT", "MEAS", "MEAS:VOLT:DC:DC", "MEAS:CURR"):
        assert not pattern.match(header.upper().split(":")), header
    assert pattern.query


def test_short_long_forms_case_and_compound_messages(rig: Rig):
    with raw_client(rig.server("supply")) as sock:
        assert ask(sock, b"volt 12.5;:CURRent:LEVel 3;:syst:err?") == '+0,"No error"'
        assert ask(sock, b"VOLTage?;curr?") == "+1.25000000E+01;+3.00000000E+00"
        sock.sendall(b"\n\r\n  \n")  # empty lines are ignored
        assert ask(sock, b"SYST:ERR?") == '+0,"No error"'
    with raw_client(rig.server("supply")) as sock:
        assert ask(sock, b"MEAS:VOLT?;CURR?").count(";") == 1  # relative: MEAS:CURR?
        assert ask(sock, b":MEASure:SCALar:VOLTage:DC?") != ""
        assert ask(sock, b"*OPC?") == "1"
        assert ask(sock, b"SYST:ERR?") == '+0,"No error"'


def test_error_queue_order_overflow_and_clear(rig: Rig):
    with raw_client(rig.server("load")) as sock:
        sock.sendall(b"CURR 1000\nFOO\n")
        assert ask(sock, b"SYST:ERR?").startswith('-222,"Data out of range')
        assert ask(sock, b"SYST:ERR?") == '-113,"Undefined header"'
        assert ask(sock, b"SYST:ERR?") == '+0,"No error"'
        sock.sendall(b"FOO\n" * 25)
        replies = [ask(sock, b"SYST:ERR?") for _ in range(21)]
        assert replies[:19] == ['-113,"Undefined header"'] * 19
        assert replies[19:] == ['-350,"Queue overflow"', '+0,"No error"']
        sock.sendall(b"FOO;*CLS\n")
        assert ask(sock, b"SYST:ERR?") == '+0,"No error"'


def test_parameter_errors(rig: Rig):
    with raw_client(rig.server("supply")) as sock:
        for line, code in [(b"VOLT", "-109"), (b"VOLT 1,2", "-108"), (b"VOLT abc", "-104"),
                           (b"OUTP MAYBE", "-224"), (b"VOLT 1e9", "-222"), (b"VOLT 20.5", "-222"),
                           (b"VOLT::LEV 1", "-102"), (b"\x00\x01\xff", "-101")]:
            sock.sendall(line + b"\n")
            assert ask(sock, b"SYST:ERR?").startswith(code), line
        assert ask(sock, b"VOLT MAX;VOLT?") == "+2.00000000E+01"  # the N8754A's rated 20 V


def test_rst_puts_the_instruments_in_their_power_on_state(rig: Rig):
    supply, actuator = rig.connect("supply"), rig.connect("actuator")
    supply.set_voltage(14.0)
    supply.output(True)
    supply.reset()
    actuator.reset()
    assert not rig.twin.supply.on and rig.twin.supply.voltage_v == 0.0
    assert not any(rig.twin.contactor_closed.values()) and not actuator.is_closed(301)


def test_server_survives_garbage_long_lines_and_abrupt_disconnects(rig: Rig):
    server = rig.server("supply")
    with raw_client(server) as sock:  # binary noise, then a hang-up mid-line
        sock.sendall(bytes(range(256)) * 4)
        assert ask(sock, b"\n*OPC?") == "1"
        assert ask(sock, b"SYST:ERR?").startswith('-101,"Invalid character;\\x00')
        assert ask(sock, b"*CLS;*OPC?") == "1"
        sock.sendall(b"VOLT 1")  # never terminated: never executed
    with raw_client(server) as sock:  # a line longer than any instrument accepts
        sock.sendall(b"VOLT " + b"9" * 200_000 + b"\nVOLT 13\n")
        assert ask(sock, b"SYST:ERR?").startswith("-363")
        assert ask(sock, b"VOLT?") == "+1.30000000E+01"
    sock = raw_client(server)  # hang up with a reset while a reply is on its way
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.sendall(b"*IDN?\n" * 100)
    sock.close()
    for _ in range(3):  # still serving, one client after another and several at once
        clients = [raw_client(server) for _ in range(3)]
        assert all(ask(c, b"*IDN?").startswith("Keysight") for c in clients)
        for c in clients:
            c.close()
    assert rig.connect("supply").measure_voltage() > 12


def test_server_listens_on_loopback_only_and_closes_promptly():
    with pytest.raises(ValueError, match="loopback"):
        ScpiServer(ScpiDevice(), host="0.0.0.0")
    server = ScpiServer(ScpiDevice())
    sock = raw_client(server)
    assert ask(sock, b"*IDN?") == ScpiDevice.idn
    start = time.monotonic()
    server.close()
    server.close()
    assert time.monotonic() - start < 1.0
    assert sock.recv(10) == b""
    sock.close()
    with pytest.raises(OSError):
        raw_client(server)


# ------------------------------------------------------------------ VISA backend per station
def test_visa_backend_is_chosen_per_station_and_instrument(tmp_path):
    """``visa_library`` at the station (default ``@py``) and per instrument; a backend that is not
    installed is a clear InstrumentError naming it, and a USB resource on @py reaches PyUSB (no
    "install PyUSB" error: it is a dependency)."""
    import yaml as _yaml

    from harness.config.station import load_station
    from instruments.roles import InstrumentError

    path = tmp_path / "visa.yaml"
    path.write_text(_yaml.safe_dump({
        "name": "visa", "visa_library": "@ivi",
        "instruments": {
            "supply": {"driver": "keysight_n5700", "resource": "USB0::0x0957::0x0807::US0001::INSTR",
                       "rating": {"voltage": "60 V", "current": "25 A"}, "calibration_due": __import__("datetime").date(2099, 1, 1),
                       "visa_library": "@py"},
            "load": {"driver": "itech_it8500", "resource": "TCPIP0::192.0.2.1::inst0::INSTR",
                     "rating": {"voltage": "120 V", "current": "240 A"}, "calibration_due": __import__("datetime").date(2099, 1, 1)}}}))
    runtime = load_station(path).as_runtime()["instruments"]
    assert "visa_library" not in runtime["supply"] and runtime["load"]["visa_library"] == "@ivi"
    from harness.bench import _connect
    with pytest.raises(InstrumentError, match="VISA backend @ivi not available"):
        _connect("load", runtime["load"])
    with pytest.raises(InstrumentError) as usb:
        _connect("supply", {**runtime["supply"], "timeout_s": 0.5})
    assert "PyUSB" not in str(usb.value) and "pyusb" not in str(usb.value).lower()
