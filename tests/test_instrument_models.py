"""Real instrument models: SCPI numbers, model tables, refusals over sockets, exact driver bytes.

- SCPI numeric parameters as IEEE 488.2 defines them (units, SI multipliers, MIN/MAX/DEF).
- Each emulated supply and load is one real model and refuses (``-222``) what it refuses,
  reached over real loopback sockets.
- The emulated station names, for each DUT, the smallest real model that serves it, and
  fixtures/stations/emulated.yaml promises no more than those models give.
- The drivers' exact bytes for the new methods (fake session, as tests/test_scpi_protocol.py).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Iterator

import pytest

from emulator.bench import EmulatedBench
from emulator.emulate import DRIVERS, _ratings
from emulator.endpoints.scpi.models import (IT6000C_MODELS, IT8500_MODELS, N5700_MODELS, model,
                                            smallest)
from emulator.endpoints.scpi_instruments import (STATION_FAMILIES, dut_max_voltage, select_models,
                                                 start_scpi_endpoints, stop_scpi_endpoints)
from emulator.scpi_server import ScpiError, parse_numeric
from emulator.twin import build_twin
from instruments.drivers import get_driver
from instruments.drivers.itech_it6000c import ItechIt6000c
from instruments.drivers.itech_it8500 import ItechIt8500
from instruments.drivers.keysight_n5700 import KeysightN5700
from instruments.roles import SetpointRefused, protocols_of
from test_scpi_protocol import OPEN, expected_protocol, ok

REPO = Path(__file__).resolve().parents[1]


# ================================================================================== numbers
@pytest.mark.parametrize("text, unit, value", [
    ("14.2", "V", 14.2), ("14.2 V", "V", 14.2), ("14.2V", "V", 14.2), ("14.2 v", "V", 14.2),
    ("500 mA", "A", 0.5), ("2 ms", "S", 0.002), ("1 KOHM", "OHM", 1e3), ("1 MOHM", "OHM", 1e6),
    ("3 MAV", "V", 3e6), ("1.5E-3 A", "A", 1.5e-3), (".5", "V", 0.5), ("+2e1", "V", 20.0),
    ("100 uV", "V", 1e-4),
])
def test_numeric_with_units_and_multipliers(text: str, unit: str, value: float) -> None:
    assert parse_numeric(text, unit) == pytest.approx(value)


@pytest.mark.parametrize("text, unit, code", [
    ("14.2 V", None, -138), ("14.2 W", "V", -131), ("14.2 XV", "V", -131), ("abc", "V", -104),
    ("nan", "V", -104), ("1.2.3", "V", -121), ("1e999", "V", -222), ("1 ABCDEFGHIJKLMNV", "V", -134),
])
def test_numeric_errors(text: str, unit: str | None, code: int) -> None:
    with pytest.raises(ScpiError) as info:
        parse_numeric(text, unit)
    assert info.value.code == code


# ================================================================================== tables
def test_tables_hold_the_real_members() -> None:
    n5767a = model("N5767A")
    assert (n5767a.voltage_v, n5767a.current_a, n5767a.power_w) == (60, 25, 1500)
    it8516 = model("IT8516C+")
    assert (it8516.voltage_v, it8516.current_a, it8516.power_w) == (120, 240, 3000) and it8516.sinks
    assert not it8516.sources
    big = model("IT6018C-80-450")
    assert (big.voltage_v, big.current_a, big.power_w) == (80, 450, 18000) and big.sources and big.sinks
    for m in IT6000C_MODELS:  # the name carries the ratings: IT60<kW>C-<V>-<A>
        kw, volts, amps = m.name[4:6], *m.name.split("-")[1:]
        assert (int(kw) * 1000, float(volts), float(amps)) == (m.power_w, m.voltage_v, m.current_a)
    for m in N5700_MODELS:  # rectangular supplies: power within 4 % of volts x amps
        assert m.power_w == pytest.approx(m.voltage_v * m.current_a, rel=0.04)
    assert len({m.name for m in (*N5700_MODELS, *IT8500_MODELS, *IT6000C_MODELS)}) == 45 + 14 + 9


def test_smallest_model_that_serves() -> None:
    assert smallest(N5700_MODELS, 18.25, 20).name == "N5745A"  # 750 W: the least power
    assert smallest(IT8500_MODELS, 14.6, 100, 1460).name == "IT8514C+"
    assert smallest(IT8500_MODELS, 58.4, 240, 14016) is None
    assert smallest(IT6000C_MODELS, 73, 240, 14016).name == "IT6018C-80-450"


STATION_OF = {  # DUT -> (supply, load) the emulated station names
    "1s1p": ("IT6006C-80-150", "IT6012C-80-300"),
    "4s1p": ("IT6012C-80-300", "IT6018C-80-450"),  # 120 A x 58.4 V = 7 kW of charge
    "1s4p_diagonal": ("IT6018C-80-450", "IT6018C-80-450"),
    "4s4p": ("IT6018C-80-450", "IT6018C-80-450"),
    "rack_48v_3p": ("IT6012C-80-300", "IT6018C-80-450"),
}


@pytest.mark.parametrize("dut", sorted(STATION_OF))
def test_station_names_the_smallest_model_that_serves_the_dut(dut: str) -> None:
    twin = build_twin(dut)
    chosen = select_models(twin, STATION_FAMILIES)
    assert (chosen["supply"].name, chosen["load"].name) == STATION_OF[dut]
    ratings = _ratings(twin, chosen)
    assert ratings["load"] == {"voltage_v": 80, "current_a": chosen["load"].current_a,
                               "power_w": chosen["load"].power_w}
    assert DRIVERS["supply"] == DRIVERS["load"] == "itech_it6000c"


def _fixture_duts() -> list[str]:
    root = REPO / "fixtures" / "duts"
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


@pytest.mark.parametrize("dut", _fixture_duts())
def test_emulated_station_file_promises_no_more_than_the_models_give(dut: str) -> None:
    """Every setpoint emulated.yaml's ratings allow on this DUT is one its emulated model accepts."""
    from harness.config import load_station
    station = load_station(REPO / "fixtures" / "stations" / "emulated.yaml")
    twin = build_twin(dut)
    top_v = dut_max_voltage(twin)
    for role, chosen in select_models(twin, STATION_FAMILIES).items():
        rating = station.rating(role)
        amps = rating.current.value
        watts = amps * top_v if rating.power is None else min(rating.power.value, amps * top_v)
        assert chosen.voltage_v >= max(rating.voltage.value, top_v * 1.25) - 1e-9, (role, chosen)
        assert chosen.current_a >= amps and chosen.power_w >= watts, (role, chosen)
        assert station.instruments[role].driver == DRIVERS[role]


# ================================================================================== sockets
def _ask(sock: socket.socket, line: str) -> str:
    sock.sendall(line.encode() + b"\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        assert chunk, "server closed the connection"
        data += chunk
    return data.decode("latin-1").rstrip("\n")


@pytest.fixture
def dedicated() -> Iterator[tuple[EmulatedBench, dict]]:
    """1S1P with an N5767A supply and an IT8516C+ load (explicit models)."""
    bench = EmulatedBench(build_twin("1s1p"))
    endpoints = start_scpi_endpoints(bench, {"supply": model("N5767A"), "load": model("IT8516C+")})
    yield bench, endpoints
    stop_scpi_endpoints(endpoints)


def _client(endpoints: dict, role: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", endpoints[role][0].port), timeout=2.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def test_n5767a_refuses_what_an_n5767a_refuses(dedicated) -> None:
    bench, endpoints = dedicated
    with _client(endpoints, "supply") as sock:
        assert _ask(sock, "*IDN?").startswith("Keysight Technologies,N5767A,")
        for line in ("CURR 600", "CURR 25.5", "VOLT 60.5", "VOLT:PROT 67", "VOLT:LIM:LOW 58"):
            sock.sendall(line.encode() + b"\n")
            assert _ask(sock, "SYST:ERR?").startswith('-222,"Data out of range'), line
        assert _ask(sock, "CURR MAX;CURR?") == "+2.50000000E+01"
        assert _ask(sock, "CURR? MAX;CURR? MIN") == "+2.50000000E+01;+0.00000000E+00"
        assert _ask(sock, "VOLT? MAX;:VOLT:PROT? MAX") == "+6.00000000E+01;+6.60000000E+01"
        assert _ask(sock, "VOLT MAX;VOLT?") == "+6.00000000E+01"  # within OVP 66 V / 1.05
        assert _ask(sock, "SYST:ERR?") == '+0,"No error"'


def test_n5700_units_long_forms_and_protection_window(dedicated) -> None:
    bench, endpoints = dedicated
    with _client(endpoints, "supply") as sock:
        assert _ask(sock, "VOLT 14.2 V;VOLT?") == "+1.42000000E+01"
        assert _ask(sock, "SOURce:CURRent:LEVel:IMMediate:AMPLitude 500 mA;CURR?") == "+5.00000000E-01"
        assert _ask(sock, "VOLTage:PROTection:LEVel 16V;:VOLT:PROT?") == "+1.60000000E+01"
        assert _ask(sock, "VOLT:LIM:LOW 12;:VOLTage:LIMit:LOW?") == "+1.20000000E+01"
        assert _ask(sock, "SYST:ERR?") == '+0,"No error"'
        for line in ("VOLT 15.5", "VOLT 12.5", "VOLT:PROT 14.5", "VOLT:LIM:LOW 13.8", "VOLT 14 W", "VOLT DEF"):
            sock.sendall(line.encode() + b"\n")
        errors = [_ask(sock, "SYST:ERR?") for _ in range(7)]
        assert [e.split(",")[0] for e in errors] == ["-222", "-222", "-222", "-222", "-131", "-222", "+0"]
        assert _ask(sock, "VOLT?") == "+1.42000000E+01"


def test_n5700_over_voltage_trips_and_clears(dedicated) -> None:
    bench, endpoints = dedicated
    with _client(endpoints, "supply") as sock:
        _ask(sock, "VOLT 13;CURR 5;:VOLT:PROT 14;:OUTP ON;:OUTP?")
        bank_v = float(_ask(sock, "MEAS:VOLT?"))
        assert bank_v > 12.5
        sock.sendall(b"OUTP OFF;:VOLT 12;:VOLT:PROT 12.6\n")  # OVP below the bank's own voltage
        _ask(sock, "*OPC?")
        sock.sendall(b"OUTP ON\n")
        _ask(sock, "*OPC?")
        bench.advance(0.1)
        assert _ask(sock, "OUTP?") == "0" and int(_ask(sock, "STAT:QUES:COND?")) & 1
        sock.sendall(b"OUTP:PROT:CLE\n")  # the cause is still there: refused
        assert _ask(sock, "SYST:ERR?").startswith("-221")
        sock.sendall(b"VOLT:PROT 16;:OUTP:PROT:CLE\n")
        assert _ask(sock, "STAT:QUES:COND?") == "0" and _ask(sock, "SYST:ERR?") == '+0,"No error"'


def test_it8516c_refuses_above_its_current_and_limits_its_power(dedicated) -> None:
    bench, endpoints = dedicated
    with _client(endpoints, "load") as sock:
        sock.sendall(b"CURR 241\nCURR 250 A\n")
        assert _ask(sock, "SYST:ERR?").startswith("-222") and _ask(sock, "SYST:ERR?").startswith("-222")
        assert _ask(sock, "CURR? MAX;:POW? MAX") == "+2.40000000E+02;+3.00000000E+03"
        assert _ask(sock, "SYST:REM;:FUNC POW;:FUNC?") == "POW"
        assert _ask(sock, "FUNCtion CURRent;:CURR 240;:INP ON;:INP?") == "1"
        bench.advance(0.5)
        volts, amps = float(_ask(sock, "MEAS:VOLT?")), float(_ask(sock, "MEAS:CURR?"))
        assert volts * amps <= 3000 * 1.001 and amps < 240  # power-limited at 3 kW
        assert _ask(sock, "SYST:ERR?") == '+0,"No error"'


def test_regenerative_units_refuse_beyond_their_model() -> None:
    bench = EmulatedBench(build_twin("1s1p"))
    endpoints = start_scpi_endpoints(bench, select_models(bench.twin, STATION_FAMILIES))
    try:
        with _client(endpoints, "supply") as supply, _client(endpoints, "load") as load:
            assert _ask(supply, "*IDN?").startswith("ITECH Ltd.,IT6006C-80-150,")
            assert _ask(load, "*IDN?").startswith("ITECH Ltd.,IT6012C-80-300,")
            for sock, line in ((supply, "CURR:LIM 151"), (supply, "VOLT 81"), (load, "CURR -301"),
                               (load, "POW:LIM:NEG -12001")):
                sock.sendall(line.encode() + b"\n")
                assert _ask(sock, "SYST:ERR?").startswith("-222"), line
            assert _ask(load, "CURR? MIN;:CURR:LIM:NEG? MIN") == "-3.00000000E+02;-3.00000000E+02"
            sock = load
            sock.sendall(b"FUNC CURR;:CURR 10;:OUTP ON\n")  # sourcing in the load role: refused
            assert _ask(sock, "SYST:ERR?").startswith("-221")
            assert _ask(sock, "CURR -50 A;:OUTP ON;:OUTP?") == "1"
            bench.advance(1.0)
            assert float(_ask(sock, "MEAS:CURR?")) == pytest.approx(-50, rel=1e-3)
            assert _ask(supply, "FUNC VOLT;:VOLT 14.2;:CURR:LIM 10;:OUTP ON;:OUTP?") == "1"
            assert _ask(supply, "SYST:ERR?") == _ask(load, "SYST:ERR?") == '+0,"No error"'
    finally:
        stop_scpi_endpoints(endpoints)


def test_regenerative_drivers_charge_and_discharge_over_sockets() -> None:
    bench = EmulatedBench(build_twin("4s1p"))
    endpoints = start_scpi_endpoints(bench, select_models(bench.twin, STATION_FAMILIES))
    cls = get_driver("itech_it6000c")
    supply = cls(endpoints["supply"][1], "supply", {"voltage_v": 80, "current_a": 100}, 1.0)
    load = cls(endpoints["load"][1], "load", {"voltage_v": 80, "current_a": 240}, 1.0)
    try:
        load.set_current(120.0)  # 120 A x ~51 V: 6 kW, within the IT6018C's 18 kW (BMS trips at 150 A)
        load.input(True)
        bench.advance(2.0)
        assert load.measure_current() == pytest.approx(120.0, rel=1e-3)
        load.safe_state()
        supply.set_voltage(56.0)
        supply.set_current(20.0)
        supply.output(True)
        bench.advance(2.0)
        assert supply.measure_current() == pytest.approx(20.0, rel=1e-2)
        supply.safe_state()
        assert not bench.twin.supply.on and not bench.twin.load.on
    finally:
        supply.close()
        load.close()
        stop_scpi_endpoints(endpoints)


# ================================================================================== driver bytes
def test_n5700_protection_bytes() -> None:
    pairs = (OPEN + ok("VOLT:PROT 16") + ok("VOLT:LIM:LOW 11.5") + [("VOLT:LIM:LOW?", "+1.15E+01")]
             + ok("OUTP:PROT:CLE") + [("STAT:QUES:COND?", "1"), ("STAT:QUES:COND?", "0")])
    with expected_protocol(KeysightN5700, pairs, {"voltage_v": 60, "current_a": 25}) as supply:
        supply.program_protection(16, 11.5)
        assert supply.under_voltage_limit == pytest.approx(11.5)
        supply.clear_protection()
        assert supply.questionable_status() == 1
        assert supply.over_voltage_tripped() is False


def test_n5700_protection_above_rating_is_never_sent() -> None:
    with expected_protocol(KeysightN5700, OPEN, {"voltage_v": 60, "current_a": 25}) as supply:
        with pytest.raises(SetpointRefused):
            supply.program_protection(66, 0)
        with pytest.raises(SetpointRefused):
            supply.under_voltage_limit = -1


def test_it8500_remote_power_and_resistance_bytes() -> None:
    pairs = (OPEN + ok("SYST:REM") + ok("POW 1500") + ok("RES 0.5") + [("MEAS:POW?", "1.2E+03")])
    with expected_protocol(ItechIt8500, pairs, {"current_a": 240, "power_w": 3000}) as load:
        load.remote()
        load.power = 1500
        load.resistance = 0.5
        assert load.measured_power == pytest.approx(1200)
        with pytest.raises(SetpointRefused):
            load.power = 3500
    with expected_protocol(ItechIt8500, OPEN + ok("SYST:REM"), options={"remote_on_open": True}):
        pass


def test_it6000c_source_bytes() -> None:
    pairs = (OPEN + ok("FUNC VOLT") + ok("VOLT 56.8") + ok("CURR:LIM 100") + ok("OUTP ON")
             + [("OUTP?", "1"), ("MEAS:VOLT?", "5.6E+01"), ("MEAS:CURR?", "9.9E+01")]
             + ok("VOLT:PROT 60") + ok("OUTP:PROT:CLE") + ok("OUTP OFF"))
    with expected_protocol(ItechIt6000c, pairs, {"voltage_v": 80, "current_a": 100},
                           options={"mode": "source"}) as supply:
        supply.set_voltage(56.8)
        supply.set_current(100)
        supply.output(True)
        assert supply.is_on()
        assert supply.measure_voltage() == pytest.approx(56)
        assert supply.measure_current() == pytest.approx(99)
        supply.program_protection(60, 0.0)
        with pytest.raises(SetpointRefused):
            supply.program_protection(60, 10.0)
        supply.clear_protection()
        supply.safe_state()


def test_it6000c_sink_bytes_and_refusals() -> None:
    pairs = (OPEN + ok("FUNC CURR") + ok("CURR -200") + ok("CURR 0") + ok("OUTP ON")
             + [("MEAS:CURR?", "-2.0E+02")] + ok("*RST") + ok("*CLS") + ok("FUNC CURR") + ok("CURR -1.5"))
    with expected_protocol(ItechIt6000c, pairs, {"voltage_v": 80, "current_a": 240},
                           options={"mode": "sink"}) as load:
        assert load.sinking
        load.set_current(200)
        load.set_current(0)
        load.input(True)
        assert load.measure_current() == pytest.approx(200)  # into the unit: + for a load
        with pytest.raises(SetpointRefused, match="current_a=240"):
            load.set_current(250)
        with pytest.raises(SetpointRefused):
            load.set_current(-5)
        load.reset()
        load.set_current(1.5)


def test_it6000c_mode_option() -> None:
    with expected_protocol(ItechIt6000c, OPEN) as unit:
        assert unit.mode == "source"  # auto: a name not starting with "load" sources
    from test_scpi_protocol import FakeSession, RESOURCE
    assert ItechIt6000c(RESOURCE, "load", None, 1.0, session=FakeSession(OPEN)).sinking
    with pytest.raises(ValueError, match="mode"):
        ItechIt6000c(RESOURCE, "load", None, 1.0, options={"mode": "both"}, session=FakeSession(OPEN))
    assert protocols_of(ItechIt6000c) >= {"supply", "load"}
