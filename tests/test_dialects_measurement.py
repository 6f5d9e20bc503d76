"""The 34465A and BT3562 dialects as a real session uses them: exact bytes and emulated replies.

Two halves per instrument:

- the driver's exact messages, with a fake pyvisa session replaying ``(sent, reply)`` pairs
  (reply ``None`` for a command) -- the whole capture sequence of the 34465A (fixed range,
  autozero off, an aperture inside the interval, trigger, ``SAMP:TIM? MIN`` checked before
  ``INIT``), its refusals (nothing sent), overloads, the ``R?`` block; the BT3562's ``*ESR?``
  after every command, headers off, ``:READ?`` with free-run off, and the reading after a safe
  state;
- the emulated instruments over real loopback sockets (``start_scpi_endpoints``): ranges, NPLC
  and aperture limits (``-222``), ``SAMP:TIM? MIN`` following the configuration, ``*TRG``,
  ``R?``, 9.9E37 beyond a fixed range, ``-113`` for what the meter does not know; the BT3562's
  ``*ESR?`` bits and its absent ``SYST:ERR?``.

Sources: Keysight Truevolt Series Operating and Service Guide (SCPI Programming Reference);
Hioki BT3561A/BT3562/BT3563 Instruction Manual, chapter 8.
"""

from __future__ import annotations

import math
import re
import socket
from contextlib import contextmanager
from typing import Any, Iterator

import pytest

from emulator.bench import EmulatedBench
from emulator.endpoints import start_scpi_endpoints, stop_scpi_endpoints
from emulator.endpoints.scpi.keysight_34465a import Keysight34465a as EmulatedDmm
from emulator.scpi_server import ScpiServer
from emulator.twin import build_twin
from instruments.drivers.hioki_bt3562 import HiokiBt3562, parse_hioki_number
from instruments.drivers.keysight_34465a import Keysight34465a, Overload, parse_block
from instruments.roles import InstrumentError, SetpointRefused

RESOURCE = "TCPIP0::192.0.2.10::5025::SOCKET"
NO_ERROR = '+0,"No error"'
Pairs = list[tuple[str, Any]]


class FakeSession:
    """A pyvisa-like session that asserts every message and replays the replies."""

    def __init__(self, pairs: Pairs):
        self.pairs, self.timeout, self.read_timeouts = list(pairs), 1000.0, []
        self._reply: Any = None

    def write(self, message: str) -> int:
        assert self.pairs, f"unexpected message {message!r} (nothing more expected)"
        expected, reply = self.pairs.pop(0)
        assert message == expected, f"sent {message!r}, expected {expected!r}"
        self._reply = reply
        return len(message)

    def read(self) -> str:
        reply, self._reply = self._reply, None
        assert reply is not None, "read after a message that gets no reply"
        self.read_timeouts.append(self.timeout)
        return reply

    def clear(self) -> None:
        pass

    def close(self) -> None:
        pass


@contextmanager
def expected(cls: type, pairs: Pairs, rating: dict[str, float] | None = None,
             options: dict[str, Any] | None = None) -> Iterator[Any]:
    session = FakeSession(pairs)
    driver = cls(RESOURCE, "dut", rating, 1.0, options=options, session=session)
    driver.fake = session
    yield driver
    assert not session.pairs, f"expected but never sent: {session.pairs}"


# ================================================================================== 34465A driver
def ok(command: str) -> Pairs:
    return [(command, None), ("SYST:ERR?", NO_ERROR)]


DMM_OPEN = ok("*CLS")
APER_MIN = [("VOLT:DC:APER? MIN", "+2.00000000E-05")]


def capture(range_v: str = "100", aperture: str = "2e-05", trigger: Pairs | None = None,
            delay: str = "0", count: int = 4, tim_min: str = "+2.00000000E-05",
            interval: str = "2e-05") -> Pairs:
    """The configuration a capture sends, from CONF to INIT."""
    return (ok(f"CONF:VOLT:DC {range_v}") + ok("VOLT:DC:ZERO:AUTO OFF") + ok(f"VOLT:DC:APER {aperture}")
            + (trigger if trigger is not None else ok("TRIG:SOUR IMM")) + ok(f"TRIG:DEL {delay}")
            + ok("SAMP:SOUR TIM") + ok(f"SAMP:COUN {count}") + [("SAMP:TIM? MIN", tim_min)]
            + ok(f"SAMP:TIM {interval}") + ok("INIT"))


def readings(*values: float) -> str:
    return ",".join(f"{v:+.8E}" for v in values)


def test_capture_sends_fixed_range_autozero_off_aperture_trigger_then_init():
    pairs = DMM_OPEN + APER_MIN + capture() + [("FETC?", readings(0.0, 0.001, 0.002, 0.003))]
    with expected(Keysight34465a, pairs) as dmm:
        dmm.arm_digitise(20e-6, 4)
        wave = dmm.fetch_waveform()
    assert wave.samples == pytest.approx([0.0, 0.001, 0.002, 0.003])
    assert wave.interval_s == 20e-6 and wave.t0_s == 0.0 and wave.unit == "V"


def test_an_interval_a_hair_under_20_us_from_unit_arithmetic_is_20_us():
    pairs = DMM_OPEN + APER_MIN + capture(count=2)
    with expected(Keysight34465a, pairs) as dmm:
        dmm.arm_digitise(20 * 1e-6 * (1 - 1e-15), 2)


def test_aperture_fits_the_interval_and_the_minimum_is_asked_once():
    pairs = (DMM_OPEN + APER_MIN
             + capture(range_v="10", aperture="0.0009", count=50, tim_min="+9.00000000E-04", interval="0.001")
             + capture(range_v="1", aperture="4.4e-05", count=10, tim_min="+4.40000000E-05", interval="5e-05")
             + capture(range_v="1000", aperture="1", count=2, tim_min="+1.00000000E+00", interval="10"))
    with expected(Keysight34465a, pairs, rating={"voltage_v": 1000.0}) as dmm:
        dmm.arm_digitise(1e-3, 50, range_v=10)        # 0.9 ms of the 1 ms
        dmm.arm_digitise(50e-6, 10, range_v=0.5)      # 45 us -> 44 us (2 us steps); 0.5 V -> 1 V range
        dmm.arm_digitise(10.0, 2, range_v=1000)       # capped at the 1 s maximum aperture


def test_bus_trigger_with_slope_and_delay():
    trigger = ok("TRIG:SOUR BUS") + ok("TRIG:SLOP POS")
    pairs = (DMM_OPEN + APER_MIN + capture(trigger=trigger, delay="0.001", count=3) + ok("*TRG")
             + [("FETC?", readings(1.0, 2.0, 3.0))])
    with expected(Keysight34465a, pairs) as dmm:
        dmm.arm_digitise(20e-6, 3, trigger="bus", slope="pos", delay_s=1e-3)
        dmm.trigger()
        wave = dmm.fetch_waveform()
        assert dmm.fake.read_timeouts[-1] == pytest.approx(1000.0 + 1000.0 * (1e-3 + 3 * 20e-6))
    assert wave.t0_s == 1e-3 and wave.times()[0] == 1e-3


def test_level_trigger_sends_source_slope_and_level():
    trigger = ok("TRIG:SOUR INT") + ok("TRIG:SLOP NEG") + ok("TRIG:LEV 5")
    pairs = DMM_OPEN + APER_MIN + capture(range_v="10", trigger=trigger, count=2)
    with expected(Keysight34465a, pairs) as dmm:
        dmm.arm_digitise(20e-6, 2, range_v=10, trigger="INT", slope="NEG", level_v=5.0)


def test_r_readout_waits_with_opc_then_parses_the_block():
    data = readings(0.5, -0.25)
    pairs = (DMM_OPEN + APER_MIN + capture(count=2)
             + [("*OPC?", "1"), ("R?", f"#2{len(data)}{data}")])
    with expected(Keysight34465a, pairs, options={"readout": "R?"}) as dmm:
        dmm.arm_digitise(20e-6, 2)
        wave = dmm.fetch_waveform()
        assert dmm.fake.read_timeouts[-2:] == pytest.approx([1000.0 + 2 * 20e-6 * 1000.0] * 2)
    assert wave.samples == [0.5, -0.25]


def test_block_parsing():
    assert parse_block("#15hello") == "hello"
    assert parse_block("#210" + "x" * 10) == "x" * 10
    for bad in ("hello", "#", "#0", "#3ab", "#15hell", "#15hello!", "#a5hello"):
        with pytest.raises(ValueError):
            parse_block(bad)


def test_a_bad_block_names_the_reply():
    pairs = DMM_OPEN + APER_MIN + capture(count=2) + [("*OPC?", "1"), ("R?", "#15+1.0"), ("SYST:ERR?", NO_ERROR)]
    with expected(Keysight34465a, pairs, options={"readout": "R?"}) as dmm:
        dmm.arm_digitise(20e-6, 2)
        with pytest.raises(InstrumentError, match="announces 5 bytes") as info:
            dmm.fetch_waveform()
    assert info.value.command == "R?"


def test_overloaded_samples_are_an_overload_not_a_number():
    pairs = (DMM_OPEN + APER_MIN + capture(count=3)
             + [("FETC?", "+1.00000000E+01,+9.90000000E+37,-9.90000000E+37")])
    with expected(Keysight34465a, pairs) as dmm:
        dmm.arm_digitise(20e-6, 3)
        with pytest.raises(Overload, match="overload: 2 of 3 samples beyond the 100 V range") as info:
            dmm.fetch_waveform()
    assert info.value.waveform is not None
    assert info.value.waveform.samples == [10.0, math.inf, -math.inf]


def test_single_reading_overload():
    with expected(Keysight34465a, DMM_OPEN + [("MEAS:VOLT:DC?", "+9.90000000E+37")]) as dmm:
        with pytest.raises(Overload, match="overload") as info:
            dmm.measure_voltage()
    assert info.value.command == "MEAS:VOLT:DC?"


@pytest.mark.parametrize("interval, count, kwargs, why", [
    (10e-6, 10, {}, "interval_s"),                        # faster than the meter's 20 us
    (1e-3, 0, {}, "count"),
    (1e-3, 2_000_000, {}, "count"),
    (1e-3, 2.5, {}, "count"),
    (1e-3, 10, {"range_v": 2000}, "above the largest range"),
    (1e-3, 10, {"range_v": 1000}, "rating voltage_v=100"),
    (1e-3, 10, {"trigger": "TIMER"}, "trigger"),
    (1e-3, 10, {"delay_s": -1}, "delay_s"),
    (1e-3, 10, {"slope": "UP"}, "slope"),
    (1e-3, 10, {"trigger": "INT"}, "needs level_v"),
    (1e-3, 10, {"trigger": "INT", "level_v": 200, "range_v": 100}, "level_v"),
    (1e-3, 10, {"level_v": 1.0}, "INT only"),
])
def test_impossible_captures_are_refused_before_anything_is_sent(interval, count, kwargs, why):
    with expected(Keysight34465a, DMM_OPEN, rating={"voltage_v": 100.0}) as dmm:
        with pytest.raises(SetpointRefused, match=why):
            dmm.arm_digitise(interval, count, **kwargs)


def test_a_meter_without_the_dig_option_refuses_20_us():
    pairs = DMM_OPEN + [("VOLT:DC:APER? MIN", "+2.00000000E-04")]
    with expected(Keysight34465a, pairs) as dmm:
        with pytest.raises(SetpointRefused, match="shortest aperture 0.0002 s"):
            dmm.arm_digitise(50e-6, 10)


def test_a_capture_the_meter_would_stretch_is_refused_before_init():
    pairs = DMM_OPEN + APER_MIN + capture(count=10, tim_min="+4.00000000E-05")[:-4]  # no SAMP:TIM, no INIT
    with expected(Keysight34465a, pairs) as dmm:
        with pytest.raises(SetpointRefused, match=r"SAMP:TIM\? MIN is 4e-05 s") as info:
            dmm.arm_digitise(20e-6, 10)
        with pytest.raises(InstrumentError, match="no capture armed"):
            dmm.fetch_waveform()
    assert info.value.command == "SAMP:TIM 2e-05"


def test_trigger_needs_a_bus_capture_and_bad_options_are_refused():
    with expected(Keysight34465a, DMM_OPEN) as dmm:
        with pytest.raises(InstrumentError, match="trigger BUS"):
            dmm.trigger()
    for options, why in [({"readout": "DATA:REM?"}, "readout"), ({"digitise_range_v": 5000.0}, "digitise_range_v")]:
        with pytest.raises(ValueError, match=why):
            Keysight34465a(RESOURCE, "dut", options=options, session=FakeSession([]))


# ================================================================================== BT3562 driver
def esr_ok(command: str) -> Pairs:
    return [(command, None), ("*ESR?", "0")]


ACIR_OPEN = esr_ok("*CLS")
CONFIGURE = (esr_ok(":SYST:HEAD OFF") + esr_ok(":FUNC RV") + esr_ok(":TRIG:SOUR IMM")
             + esr_ok(":INIT:CONT OFF") + esr_ok(":AUT ON"))


def test_acir_checks_esr_not_syst_err_and_reads_with_read():
    pairs = (ACIR_OPEN + CONFIGURE + [(":READ?", " 3.0012E-3, 13.0600E+0"), (":READ?", "  30.012E-3,  3.3000E+0")])
    with expected(HiokiBt3562, pairs) as meter:
        assert meter.measure() == pytest.approx((3.0012e-3, 13.06))
        assert meter.measure() == pytest.approx((30.012e-3, 3.3))


def test_acir_after_a_safe_state_the_next_reading_works():
    pairs = (ACIR_OPEN + CONFIGURE + [(":READ?", " 3.0012E-3, 13.0600E+0")] + esr_ok(":INIT:CONT OFF")
             + CONFIGURE + [(":READ?", " 3.0010E-3, 13.0610E+0")])
    with expected(HiokiBt3562, pairs) as meter:
        meter.measure()
        meter.safe_state()
        assert meter.measure() == pytest.approx((3.0010e-3, 13.061))


def test_acir_reset_reconfigures():
    pairs = ACIR_OPEN + CONFIGURE + [(":READ?", " 3E-3, 13E+0")] + esr_ok("*RST") + esr_ok("*CLS") + CONFIGURE + [
        (":READ?", " 3E-3, 13E+0")]
    with expected(HiokiBt3562, pairs) as meter:
        meter.measure()
        meter.reset()
        meter.measure()


def test_acir_fixed_ranges_and_external_trigger():
    configure = (esr_ok(":SYST:HEAD OFF") + esr_ok(":FUNC RV") + esr_ok(":TRIG:SOUR EXT")
                 + esr_ok(":INIT:CONT OFF") + esr_ok(":RES:RANG 0.03") + esr_ok(":VOLT:RANG 60"))
    options = {"trigger_source": "EXT", "resistance_range_ohm": 0.03, "voltage_range_v": 60.0}
    with expected(HiokiBt3562, ACIR_OPEN + configure + [(":READ?", " 3.0000E-3,-  7.5100E+0")],
                  options=options) as meter:
        assert meter.measure() == pytest.approx((3e-3, -7.51))


@pytest.mark.parametrize("options, why", [
    ({"trigger_source": "BUS"}, "BUS"), ({"resistance_range_ohm": 0.03}, "both"),
    ({"resistance_range_ohm": 0.02, "voltage_range_v": 60.0}, "not a range"),
    ({"resistance_range_ohm": 3.0, "voltage_range_v": 300.0}, "not a range")])
def test_acir_bad_options(options, why):
    with pytest.raises(ValueError, match=why):
        HiokiBt3562(RESOURCE, "dut", options=options, session=FakeSession([]))


@pytest.mark.parametrize("esr, words", [(32, "command error"), (16, "execution error"),
                                        (8, "device-dependent error"), (4, "query error"),
                                        (48, "command error, execution error")])
def test_acir_esr_error_bits_fail_the_command(esr, words):
    pairs = ACIR_OPEN + [(":SYST:HEAD OFF", None), ("*ESR?", str(esr))]
    with expected(HiokiBt3562, pairs) as meter:
        with pytest.raises(InstrumentError, match=f"instrument error: \\*ESR\\? {esr} \\({words}\\)") as info:
            meter.measure()
    assert info.value.command == ":SYST:HEAD OFF"


def test_acir_power_on_bit_means_configure_again():
    """PON in *ESR?: the meter was power-cycled, its settings are the power-on ones -- not an
    error for the command, but the next reading configures it again."""
    pairs = (ACIR_OPEN + CONFIGURE + [(":READ?", " 3E-3, 13E+0")] + [(":INIT:CONT ON", None), ("*ESR?", "128")]
             + CONFIGURE + [(":READ?", " 3E-3, 13E+0")])
    with expected(HiokiBt3562, pairs) as meter:
        meter.measure()
        meter.free_run = True
        meter.measure()


def test_acir_over_range_is_returned_and_a_fault_raises():
    pairs = ACIR_OPEN + CONFIGURE + [(":READ?", " 10.0000E+8, 13.0600E+0"), (":READ?", " 10.0000E+9, 1.00000E+10")]
    with expected(HiokiBt3562, pairs) as meter:
        assert meter.measure() == pytest.approx((1e9, 13.06))  # +OF: the check's limit judges it
        with pytest.raises(InstrumentError, match="measurement fault"):
            meter.measure()


def test_acir_zero_adjust():
    with expected(HiokiBt3562, ACIR_OPEN + [(":ADJ?", "0"), (":ADJ?", "1")]) as meter:
        meter.zero_adjust()
        with pytest.raises(InstrumentError, match="zero adjustment failed"):
            meter.zero_adjust()


def test_hioki_numbers_with_blanks():
    assert parse_hioki_number("    1.36E-3") == pytest.approx(1.36e-3)
    assert parse_hioki_number("-   7.51E+0") == pytest.approx(-7.51)


# ================================================================================== emulated, over sockets
@pytest.fixture
def endpoints() -> Iterator[tuple[EmulatedBench, dict]]:
    bench = EmulatedBench(build_twin("1s4p_diagonal"))
    found = start_scpi_endpoints(bench)
    yield bench, found
    stop_scpi_endpoints(found)


@pytest.fixture
def module_dmm(endpoints) -> Iterator[tuple[EmulatedBench, ScpiServer]]:
    """A 34465A across the first module's terminals (~13 V): signals for range and overload."""
    bench, _ = endpoints
    source = bench.wiring.dmm["dmm_vds"].model_copy(update={"plus": "s1p1.+", "minus": "s1p1.P-"})
    server = ScpiServer(EmulatedDmm(bench, "EMU9999", source), name="dmm_module")
    yield bench, server
    server.close()


class Client:
    """A raw socket client: one line out, one line back."""

    def __init__(self, server_or_port: Any):
        port = server_or_port.port if isinstance(server_or_port, ScpiServer) else server_or_port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode("latin-1") + b"\n")

    def ask(self, line: str) -> str:
        self.send(line)
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(1 << 20)
            assert chunk, "server closed the connection"
            self.buffer += chunk
        reply, _, self.buffer = self.buffer.partition(b"\n")
        return reply.decode("latin-1")

    def error(self) -> str:
        return self.ask("SYST:ERR?")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def dmm_client(endpoints) -> Iterator[Client]:
    bench, found = endpoints
    client = Client(found["dmm_vds"][0])
    yield client
    client.close()


def test_emulated_dmm_ranges_nplc_aperture_limits(dmm_client: Client):
    c = dmm_client
    assert c.ask("VOLT:DC:RANG 15;RANG?") == "+1.00000000E+02"   # the range holding 15 V
    assert c.ask("VOLT:DC:RANG:AUTO?") == "0"
    for command in ("VOLT:DC:RANG 2000", "VOLT:DC:NPLC 200", "VOLT:DC:NPLC 0.0001", "VOLT:DC:APER 1e-5",
                    "VOLT:DC:APER 2", "TRIG:DEL 4000", "SAMP:TIM 4000", "SAMP:COUN 0"):
        c.send(command)
        assert c.error().startswith("-222"), command
    assert c.ask("VOLT:DC:NPLC 0.5;NPLC?") == "+1.00000000E+00"   # rounded up to an allowed NPLC
    assert c.ask("VOLT:DC:APER 2.25e-5;APER?") == "+2.20000000E-05"   # 2 us steps
    assert c.ask("VOLT:DC:APER:ENAB?") == "1"
    assert c.ask("VOLT:DC:APER? MIN") == "+2.00000000E-05"
    assert c.ask("VOLT:DC:NPLC 1;:VOLT:DC:APER:ENAB?") == "0"
    assert c.ask("SENS:VOLT:DC:ZERO:AUTO OFF;AUTO?") == "0"
    assert c.error() == NO_ERROR


def test_emulated_dmm_sample_timer_minimum_follows_the_configuration(dmm_client: Client):
    c = dmm_client
    c.send("CONF:VOLT:DC 10")                                   # NPLC 10 (0.2 s at 50 Hz), autozero on
    assert float(c.ask("SAMP:TIM? MIN")) == pytest.approx(0.4)
    c.send("VOLT:DC:ZERO:AUTO OFF")
    assert float(c.ask("SAMP:TIM? MIN")) == pytest.approx(0.2)
    c.send("VOLT:DC:APER 1e-4")
    assert float(c.ask("SAMP:TIM? MIN")) == pytest.approx(1e-4)
    c.send("VOLT:DC:APER 2e-5")
    assert float(c.ask("SAMP:TIM? MIN")) == pytest.approx(20e-6)
    c.send("VOLT:DC:RANG:AUTO ON")                              # autorange: a range change per sample
    assert float(c.ask("SAMP:TIM? MIN")) > 1e-3
    c.send("VOLT:DC:RANG 10;:VOLT:DC:APER 1e-3;:SAMP:SOUR TIM;COUN 10")
    c.send("SAMP:TIM 1e-4")                                     # shorter than 1 ms of integration
    assert c.error().startswith('-221,"Settings conflict;cannot meet requested timing')
    assert float(c.ask("SAMP:TIM?")) == pytest.approx(1e-3)     # raised to what it can do
    assert c.error() == NO_ERROR


def test_emulated_dmm_bus_trigger_fetch_and_r_block(endpoints, dmm_client: Client):
    bench, _ = endpoints
    c = dmm_client
    c.send("CONF:VOLT:DC 100;:VOLT:DC:ZERO:AUTO OFF;:VOLT:DC:APER 2e-5;:TRIG:SOUR BUS;:TRIG:DEL 0")
    c.send("SAMP:SOUR TIM;COUN 5;TIM 2e-5")
    c.send("*TRG")
    assert c.error().startswith('-211,"Trigger ignored')         # not waiting yet
    c.send("INIT")
    assert c.ask("FETC?") == ""                                 # armed, never triggered
    assert c.error().startswith("-230")
    assert c.ask("*TRG;:TRIG:SOUR?") == "BUS"                     # triggered (and answered: in step)
    bench.advance(1e-3)
    assert c.ask("*OPC?") == "1"
    assert len(c.ask("FETC?").split(",")) == 5
    block = c.ask("R? 2")
    match = re.fullmatch(r"#(\d)(\d+)(.*)", block)
    assert match and len(match.group(2)) == int(match.group(1)) and len(match.group(3)) == int(match.group(2))
    assert len(match.group(3).split(",")) == 2
    assert len(parse_block(c.ask("R?")).split(",")) == 3        # R? removes what it returns
    assert c.ask("R?") == "#10"
    assert c.ask("DATA:POIN?") == "+0"
    assert c.error() == NO_ERROR


def test_emulated_dmm_knows_only_what_the_meter_knows(dmm_client: Client):
    c = dmm_client
    for command in ("VOLT:DC:BOGUS 1", "SAMP:TIM:FOO?", "DIGitize 1"):
        if command.endswith("?"):
            assert c.ask(command) == ""
        else:
            c.send(command)
        assert c.error() == '-113,"Undefined header"', command
    c.send("TRIG:SOUR INT;:INIT")                               # the meter has it; the emulation has not
    assert c.error().startswith('-221,"Settings conflict;level triggering')
    assert c.ask("TRIG:SOUR?") == "INT"


def test_emulated_dmm_overload_beyond_a_fixed_range(module_dmm):
    bench, server = module_dmm
    c = Client(server)
    try:
        assert c.ask("MEAS:VOLT:DC? 10") == "+9.90000000E+37"   # ~13 V above 120 % of 10 V
        assert 12.0 < float(c.ask("MEAS:VOLT:DC? 100")) < 14.0
        assert 12.0 < float(c.ask("MEAS:VOLT:DC?")) < 14.0      # autorange
        assert c.error() == NO_ERROR
    finally:
        c.close()
    dmm = Keysight34465a(server.resource, "dmm_module", {"voltage_v": 1000.0}, 2.0)
    try:
        dmm.arm_digitise(1e-3, 5, range_v=10)
        bench.advance(0.01)
        with pytest.raises(Overload, match="5 of 5 samples beyond the 10 V range") as info:
            dmm.fetch_waveform()
        assert info.value.waveform.samples == [math.inf] * 5
        dmm.arm_digitise(1e-3, 5, range_v=100)
        bench.advance(0.01)
        assert all(12.0 < v < 14.0 for v in dmm.fetch_waveform().samples)
        with pytest.raises(Overload):
            dmm.arm_digitise(1e-3, 5, range_v=0.1)
            bench.advance(0.01)
            dmm.fetch_waveform()
    finally:
        dmm.close()


def test_emulated_dmm_through_the_driver_r_readout_and_bus(endpoints):
    bench, found = endpoints
    dmm = Keysight34465a(found["dmm_shunt"][1], "dmm_shunt", None, 2.0, options={"readout": "R?"})
    try:
        dmm.arm_digitise(20e-6, 100, range_v=1, trigger="BUS", delay_s=0.0)
        dmm.trigger()
        bench.advance(0.01)
        wave = dmm.fetch_waveform()
        assert len(wave.samples) == 100 and all(abs(v) < 1.0 for v in wave.samples)
        with pytest.raises(SetpointRefused):
            dmm.arm_digitise(10e-6, 10)
    finally:
        dmm.close()


# ------------------------------------------------------------------ BT3562, emulated
@pytest.fixture
def acir_client(endpoints) -> Iterator[Client]:
    _, found = endpoints
    client = Client(found["acir"][0])
    yield client
    client.close()


def test_emulated_bt3562_reports_errors_in_esr_only(acir_client: Client):
    c = acir_client
    assert c.ask("*ESR?") == "128"                               # power-on
    assert c.ask("*ESR?") == "0"                                 # cleared by reading
    assert c.ask("SYST:ERR?") == ""                              # no such query on this meter
    assert c.ask("*ESR?") == "32"                                # command error
    c.send(":BOGUS 1")
    c.send(":RES:RANG 5000")                                     # out of range: execution error
    assert c.ask("*ESR?") == str(32 | 16)
    assert c.ask(":READ?") == ""                                 # free-run is on after power-on
    assert c.ask("*ESR?") == "16"
    c.send(":FUNC RV;*CLS")
    assert c.ask("*ESR?") == "0"


def test_emulated_bt3562_read_fetch_and_the_state_after_reset(endpoints, acir_client: Client):
    bench, _ = endpoints
    c = acir_client
    c.send("*RST;*CLS;:INIT:CONT OFF")
    assert c.ask(":FETC?") == ""                                 # nothing measured since: no reading
    assert c.ask("*ESR?") == "16"                                # execution error
    reading = c.ask(":READ?")
    assert re.fullmatch(r"[ -][ \d]*\d\.\d+E[-+]\d,[ -][ \d]*\d\.\d+E[-+]\d", reading), reading
    assert c.ask(":FETC?") == reading                            # the same measurement again
    ohm, volts = (parse_hioki_number(x) for x in reading.split(","))
    expected_ohm, expected_v = bench.ac_ir()
    assert ohm == pytest.approx(expected_ohm, abs=2e-5) and volts == pytest.approx(expected_v, abs=1e-3)
    c.send(":SYST:HEAD ON")
    assert c.ask(":READ?").startswith(":READ ")
    assert c.ask(":SYST:HEAD?") == ":SYSTEM:HEADER ON"
    c.send(":SYST:HEAD OFF;:RES:RANG 0.01;:VOLT:RANG 20")
    assert c.ask(":RES:RANG?;:VOLT:RANG?;:AUT?") == "30E-3;60E+0;OFF"
    assert c.ask(":TRIG:SOUR EXT;:READ?") == ""
    assert c.ask("*ESR?") == "16"                                # EXT: no trigger line here
    assert c.ask("*ESR?") == "0"


def test_emulated_bt3562_fixed_range_over_range_value(acir_client: Client):
    c = acir_client
    c.send(":INIT:CONT OFF;:RES:RANG 0.003;:VOLT:RANG 6")
    ohm_text, volt_text = c.ask(":READ?").split(",")
    assert parse_hioki_number(ohm_text) <= 3.1e-3 or parse_hioki_number(ohm_text) == 1e9
    assert volt_text.strip() == "1.00000E+9"                     # ~13 V on the 6 V range: +OF
    assert c.ask("*ESR?") == "128"                               # only the power-on bit


def test_bt3562_driver_after_safe_state_and_reset_over_sockets(endpoints):
    bench, found = endpoints
    meter = HiokiBt3562(found["acir"][1], "acir", None, 2.0)
    try:
        first = meter.measure()
        meter.safe_state()
        second = meter.measure()                                 # the reading after a safe state
        meter.reset()
        third = meter.measure()
        expected_ohm, _ = bench.ac_ir()
        for ohm, volts in (first, second, third):
            assert ohm == pytest.approx(expected_ohm, abs=2e-5) and 12 < volts < 14
        with pytest.raises(InstrumentError, match=r"\*ESR\? 32 \(command error\)") as info:
            meter.write(":SYST:BOGUS")
        assert info.value.command == ":SYST:BOGUS"
        with pytest.raises(InstrumentError, match="execution error"):
            meter.write(":RES:RANG 5000")
        assert meter.measure()[0] == pytest.approx(expected_ohm, abs=2e-5)
    finally:
        meter.close()


def test_a_refused_rearm_forgets_the_earlier_capture():
    """CONF resets the real meter: once a second arm has sent it, the first capture is gone, so
    a fetch must say nothing is armed even when the second arm is then refused."""
    from instruments.drivers.keysight_34465a import Keysight34465a
    from instruments.roles import InstrumentError

    class Session:
        timeout = 1000.0

        def __init__(self):
            self.sent: list[str] = []
            self.replies: list[str] = []

        def write(self, message):
            self.sent.append(message)
            if message == "VOLT:DC:APER? MIN":
                self.replies.append("+2.00000000E-05")
            elif message == "SAMP:TIM? MIN":
                self.replies.append("+1.00000000E-03" if len([m for m in self.sent if m == message]) > 1
                                    else "+2.00000000E-05")
            elif message == "SYST:ERR?":
                self.replies.append('+0,"No error"')

        def read(self):
            return self.replies.pop(0)

        def clear(self):
            pass

        def close(self):
            pass

    dmm = Keysight34465a("TCPIP0::127.0.0.1::1::SOCKET", "dmm", session=Session())
    dmm.arm_digitise(2e-5, 4)
    with pytest.raises(Exception):
        dmm.arm_digitise(2e-5, 10)  # the meter's minimum interval is now 1 ms: refused after CONF
    with pytest.raises((InstrumentError, RuntimeError), match="no capture armed"):
        dmm.fetch_waveform()
