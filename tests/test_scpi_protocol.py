"""Each SCPI driver's exact bytes, without a server.

A fake pyvisa-like session replays a list of ``(sent, reply)`` pairs (reply ``None`` for a
command, an exception to raise it on the read) and fails on the first message that differs.
This pins the wire protocol of every driver method, including the error check after every
command (``SYST:ERR?``; ``*ESR?`` on the BT3562) and what is *not* sent when a setpoint is refused.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import pytest
from pyvisa.constants import StatusCode
from pyvisa.errors import VisaIOError

from instruments import roles
from instruments.drivers import driver_names, get_driver
from instruments.drivers.hioki_bt3562 import HiokiBt3562
from instruments.drivers.itech_it8500 import ItechIt8500
from instruments.drivers.keysight_34465a import Keysight34465a
from instruments.drivers.keysight_daq970a import KeysightDaq970a, channel_list
from instruments.drivers.keysight_n5700 import KeysightN5700
from instruments.roles import InstrumentError, SetpointRefused

RESOURCE = "TCPIP0::192.0.2.10::5025::SOCKET"
NO_ERROR = '+0,"No error"'
Pairs = list[tuple[str, Any]]


def ok(command: str) -> Pairs:
    """A command and the clean error check that follows it."""
    return [(command, None), ("SYST:ERR?", NO_ERROR)]


OPEN = ok("*CLS")


class FakeSession:
    """Stands in for a pyvisa MessageBasedResource; asserts the exact messages sent."""

    def __init__(self, pairs: Pairs):
        self.pairs = list(pairs)
        self.timeout = 1000.0
        self.read_timeouts: list[float] = []
        self.cleared = 0
        self.closed = False
        self._reply: Any = None

    def write(self, message: str) -> int:
        assert self.pairs, f"unexpected message {message!r} (nothing more expected)"
        expected, reply = self.pairs.pop(0)
        assert message == expected, f"sent {message!r}, expected {expected!r}"
        if isinstance(reply, OSError):
            raise reply
        self._reply = reply
        return len(message)

    def read(self) -> str:
        reply, self._reply = self._reply, None
        assert reply is not None, "read after a message that gets no reply"
        self.read_timeouts.append(self.timeout)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def clear(self) -> None:
        self.cleared += 1

    def close(self) -> None:
        self.closed = True


@contextmanager
def expected_protocol(cls: type, pairs: Pairs, rating: dict[str, float] | None = None,
                      options: dict[str, Any] | None = None) -> Iterator[Any]:
    session = FakeSession(pairs)
    driver = cls(RESOURCE, "dut", rating, 1.0, options=options, session=session)
    driver.fake = session
    yield driver
    assert not session.pairs, f"expected but never sent: {session.pairs}"


def timeout() -> VisaIOError:
    return VisaIOError(StatusCode.error_timeout)


# ================================================================================== supply
SUPPLY_RATING = {"voltage_v": 60.0, "current_a": 120.0}


def test_supply_commands():
    pairs = (OPEN + ok("VOLT 14.4") + ok("CURR 10") + ok("VOLT:PROT 15.5") + ok("OUTP ON")
             + [("OUTP?", "1"), ("MEAS:VOLT?", "+1.44000000E+01"), ("MEAS:CURR?", "9.98"),
                ("VOLT?", "+1.44000000E+01")] + ok("OUTP OFF"))
    with expected_protocol(KeysightN5700, pairs, SUPPLY_RATING) as supply:
        supply.set_voltage(14.4)
        supply.set_current(10)
        supply.over_voltage_protection = 15.5
        supply.output(True)
        assert supply.is_on() is True
        assert supply.measure_voltage() == pytest.approx(14.4)
        assert supply.measure_current() == pytest.approx(9.98)
        assert supply.voltage == pytest.approx(14.4)
        supply.safe_state()


def test_supply_identity():
    idn = "Keysight Technologies,N5767A,US12345678,A.01.02"
    with expected_protocol(KeysightN5700, OPEN + [("*IDN?", idn + "\r")]) as supply:
        assert supply.identity() == idn
    with expected_protocol(KeysightN5700, OPEN + [("*IDN?", "hello")]) as supply:
        with pytest.raises(InstrumentError, match="identity 'hello'"):
            supply.identity()


@pytest.mark.parametrize("attr, value", [("set_voltage", 60.5), ("set_current", 121),
                                         ("set_voltage", -1.0), ("set_current", float("nan")),
                                         ("set_voltage", "14")])
def test_supply_refuses_bad_setpoints_before_sending(attr, value):
    with expected_protocol(KeysightN5700, OPEN, SUPPLY_RATING) as supply:
        with pytest.raises(SetpointRefused) as info:
            getattr(supply, attr)(value)
    assert info.value.instrument == "dut" and info.value.resource == RESOURCE


def test_rating_names_the_refused_command():
    with expected_protocol(KeysightN5700, OPEN, SUPPLY_RATING) as supply:
        with pytest.raises(SetpointRefused, match="above the rating voltage_v=60") as info:
            supply.over_voltage_protection = 66
    assert info.value.command == "VOLT:PROT 66"


def test_without_a_rating_only_the_instrument_limits_apply():
    with expected_protocol(KeysightN5700, OPEN + ok("VOLT 500")) as supply:
        supply.set_voltage(500)


def test_numbers_are_written_short_and_exact():
    with expected_protocol(KeysightN5700, OPEN + ok("VOLT 0.3") + ok("CURR 2.5e-05") + ok("CURR 100")) as s:
        s.set_voltage(0.1 + 0.2)
        s.set_current(25e-6)
        s.set_current(100)


# ================================================================================== errors
def test_instrument_error_after_a_command_names_the_command():
    pairs = OPEN + [("VOLT 14.4", None), ("SYST:ERR?", '-222,"Data out of range"'),
                    ("SYST:ERR?", '-221,"Settings conflict"'), ("SYST:ERR?", NO_ERROR)]
    with expected_protocol(KeysightN5700, pairs) as supply:
        with pytest.raises(InstrumentError) as info:
            supply.set_voltage(14.4)
    err = info.value
    assert (err.instrument, err.resource, err.command) == ("dut", RESOURCE, "VOLT 14.4")
    assert '-222,"Data out of range"' in err.problem and "-221" in err.problem
    assert supply.fake.cleared == 0  # the instrument answered: no resync needed


def test_timeout_names_resource_and_command_and_resyncs_next_time():
    pairs = OPEN + [("MEAS:VOLT?", timeout()), ("MEAS:VOLT?", "13.1")]
    with expected_protocol(KeysightN5700, pairs) as supply:
        with pytest.raises(InstrumentError, match="timeout") as info:
            supply.measure_voltage()
        assert info.value.command == "MEAS:VOLT?" and info.value.resource == RESOURCE
        assert supply.fake.cleared == 0
        assert supply.measure_voltage() == pytest.approx(13.1)
        assert supply.fake.cleared == 1  # a late reply is flushed before the next exchange


def test_timeout_of_the_error_check_names_the_command():
    pairs = OPEN + [("OUTP ON", None), ("SYST:ERR?", timeout())]
    with expected_protocol(KeysightN5700, pairs) as supply:
        with pytest.raises(InstrumentError, match="no reply to 'SYST:ERR\\?'") as info:
            supply.output(True)
    assert info.value.command == "OUTP ON"


def test_other_io_errors_become_instrument_errors():
    pairs = OPEN + [("OUTP OFF", BrokenPipeError(32, "Broken pipe")),
                    ("MEAS:VOLT?", VisaIOError(StatusCode.error_connection_lost)),
                    ("MEAS:CURR?", UnicodeDecodeError("ascii", b"\xff\xfe", 0, 1, "bad"))]
    with expected_protocol(KeysightN5700, pairs) as supply:
        with pytest.raises(InstrumentError, match="Broken pipe"):
            supply.safe_state()
        with pytest.raises(InstrumentError, match="I/O error"):
            supply.measure_voltage()
        with pytest.raises(InstrumentError, match="not text"):
            supply.measure_current()


@pytest.mark.parametrize("reply, why", [("garbage", "could not convert"), ("", "could not convert"),
                                        ("1.0,2.0", "could not convert"),
                                        ("+9.9E+37", "overload"), ("9.91E37", "overload"),
                                        ("nan", "overload")])
def test_unparseable_reply_names_the_reply(reply, why):
    pairs = OPEN + [("MEAS:VOLT?", reply), ("SYST:ERR?", NO_ERROR)]
    with expected_protocol(KeysightN5700, pairs) as supply:
        with pytest.raises(InstrumentError, match=why) as info:
            supply.measure_voltage()
    assert repr(reply) in info.value.problem and info.value.command == "MEAS:VOLT?"


def test_unparseable_reply_reports_the_instruments_error():
    pairs = OPEN + [("MEAS:VOLT?", ""), ("SYST:ERR?", '-113,"Undefined header"'), ("SYST:ERR?", NO_ERROR)]
    with expected_protocol(KeysightN5700, pairs) as supply:
        with pytest.raises(InstrumentError, match='-113,"Undefined header"'):
            supply.measure_voltage()


@pytest.mark.parametrize("reply", ["garbage", "0", '0,No error', ""])
def test_unparseable_error_query_reply(reply):
    pairs = OPEN + [("OUTP OFF", None), ("SYST:ERR?", reply)]
    with expected_protocol(KeysightN5700, pairs) as supply:
        with pytest.raises(InstrumentError, match="to SYST:ERR\\?") as info:
            supply.safe_state()
    assert info.value.command == "OUTP OFF"


def test_error_query_can_be_changed():
    pairs = [("*CLS", None), (":SYST:ERR:NEXT?", NO_ERROR)]
    # opening sends *CLS and then the configured query (not SYST:ERR?); the context manager fails
    # if a pair is left unsent or a different command arrives
    with expected_protocol(KeysightN5700, pairs, options={"error_query": ":SYST:ERR:NEXT?"}) as supply:
        assert supply.options["error_query"] == ":SYST:ERR:NEXT?"


def test_unknown_option_is_refused():
    with pytest.raises(ValueError, match="unknown option"):
        KeysightN5700(RESOURCE, "dut", options={"chanels": [301]}, session=FakeSession([]))


def test_failed_open_closes_the_session():
    session = FakeSession([("*CLS", BrokenPipeError(32, "Broken pipe"))])
    with pytest.raises(InstrumentError) as info:
        KeysightN5700(RESOURCE, "dut", session=session)
    assert info.value.command == "*CLS" and session.closed


def test_controls_are_documented():
    assert "VOLT?" in KeysightN5700.voltage.__doc__ and "VOLT {}" in KeysightN5700.voltage.__doc__
    with expected_protocol(KeysightN5700, OPEN) as supply:
        with pytest.raises(AttributeError, match="read-only"):
            supply.measured_voltage = 3.0


# ================================================================================== load
def test_load_commands():
    pairs = (OPEN + ok("FUNC CURR") + ok("CURR 50") + ok("CURR 20") + ok("INP ON")
             + [("INP?", "1"), ("MEAS:VOLT?", "12.9"), ("MEAS:CURR?", "+5.00000000E+01")] + ok("INP OFF"))
    with expected_protocol(ItechIt8500, pairs, {"current_a": 200}) as load:
        load.set_current(50)
        load.set_current(20)  # already in CC mode
        load.input(True)
        assert load.is_on()
        assert load.measure_voltage() == pytest.approx(12.9)
        assert load.measure_current() == pytest.approx(50)
        load.safe_state()


def test_load_refuses_before_even_changing_mode():
    with expected_protocol(ItechIt8500, OPEN, {"current_a": 200}) as load:
        with pytest.raises(SetpointRefused, match="current_a=200"):
            load.set_current(250)


def test_load_reset_forgets_the_mode():
    pairs = OPEN + ok("FUNC CURR") + ok("CURR 1") + ok("*RST") + ok("*CLS") + ok("FUNC CURR") + ok("CURR 2")
    with expected_protocol(ItechIt8500, pairs) as load:
        load.set_current(1)
        load.reset()
        load.set_current(2)


# ================================================================================== DMM
APER_MIN = [("VOLT:DC:APER? MIN", "+2.00000000E-05")]  # asked once per driver (DIG option: 20 us)


def capture(count: int, interval: str, aperture: str, tim_min: str, range_v: str = "100") -> Pairs:
    """What ``arm_digitise(interval, count)`` sends with the defaults (fixed 100 V range,
    ``TRIG:SOUR IMM``, no delay), from ``CONF`` to ``INIT``; the meter's ``SAMP:TIM? MIN`` is
    asked (and answered ``tim_min``) before the interval is set."""
    return (ok(f"CONF:VOLT:DC {range_v}") + ok("VOLT:DC:ZERO:AUTO OFF") + ok(f"VOLT:DC:APER {aperture}")
            + ok("TRIG:SOUR IMM") + ok("TRIG:DEL 0") + ok("SAMP:SOUR TIM") + ok(f"SAMP:COUN {count}")
            + [("SAMP:TIM? MIN", tim_min)] + ok(f"SAMP:TIM {interval}") + ok("INIT"))


def test_dmm_reads_and_digitises():
    samples = ",".join(f"{0.001 * k:+.8E}" for k in range(4))
    pairs = (OPEN + [("MEAS:VOLT:DC?", "+1.30600000E+01")] + APER_MIN
             + capture(4, "2e-05", aperture="2e-05", tim_min="+2.00000000E-05")
             + [("FETC?", samples)] + ok("ABOR"))
    with expected_protocol(Keysight34465a, pairs) as dmm:
        assert dmm.measure_voltage() == pytest.approx(13.06)
        dmm.arm_digitise(20e-6, 4)
        wave = dmm.fetch_waveform()
        dmm.safe_state()
    assert isinstance(wave, roles.Waveform)
    assert wave.samples == pytest.approx([0.0, 0.001, 0.002, 0.003])
    assert wave.interval_s == 20e-6 and wave.unit == "V" and wave.times()[-1] == pytest.approx(60e-6)


def test_dmm_fetch_waits_as_long_as_the_capture_takes():
    pairs = (OPEN + APER_MIN + capture(10, "0.5", aperture="0.45", tim_min="+4.50000000E-01")
             + [("FETC?", ",".join(["1"] * 10)), ("MEAS:VOLT:DC?", "1")])
    with expected_protocol(Keysight34465a, pairs) as dmm:
        dmm.arm_digitise(0.5, 10)
        dmm.fetch_waveform()
        dmm.measure_voltage()
        # *CLS, APER? MIN, 7 settings, SAMP:TIM? MIN, SAMP:TIM, INIT at the normal timeout; FETC?
        # with the 5 s capture added; the timeout is back to normal for the next reading
        assert dmm.fake.read_timeouts == [1000.0] * 12 + [6000.0, 1000.0]


def test_dmm_accepts_numpy_numbers():
    np = pytest.importorskip("numpy")
    pairs = OPEN + APER_MIN + capture(5, "0.001", aperture="0.0009", tim_min="+9.00000000E-04")
    with expected_protocol(Keysight34465a, pairs) as dmm:
        dmm.arm_digitise(np.float64(1e-3), np.int64(5))


def test_dmm_wrong_sample_count_is_an_error():
    pairs = (OPEN + APER_MIN + capture(3, "0.001", aperture="0.0009", tim_min="+9.00000000E-04")
             + [("FETC?", "1,2"), ("SYST:ERR?", NO_ERROR)])
    with expected_protocol(Keysight34465a, pairs) as dmm:
        dmm.arm_digitise(1e-3, 3)
        with pytest.raises(InstrumentError, match="expected 3 value"):
            dmm.fetch_waveform()


def test_dmm_fetch_without_arming_sends_nothing():
    with expected_protocol(Keysight34465a, OPEN) as dmm:
        with pytest.raises(InstrumentError, match="no capture armed"):
            dmm.fetch_waveform()


@pytest.mark.parametrize("interval, count, why", [(1e-3, 0, "count"), (1e-3, 2_000_000, "count"),
                                                  (0.0, 10, "interval_s"), (1e-3, 2.5, "count")])
def test_dmm_refuses_impossible_captures(interval, count, why):
    # every argument is checked before anything is sent: the session expects nothing after *CLS
    with expected_protocol(Keysight34465a, OPEN) as dmm:
        with pytest.raises(SetpointRefused, match=why):
            dmm.arm_digitise(interval, count)
        with pytest.raises(InstrumentError, match="no capture armed"):
            dmm.fetch_waveform()


# ================================================================================== DAQ970A
def test_channel_lists():
    assert channel_list([101, 102]) == "(@101,102)"
    assert channel_list([203, 201, 202]) == "(@201:203)"
    assert channel_list([101, 103, 104, 105, 107, 101]) == "(@101,103:105,107)"
    assert channel_list(range(301, 321)) == "(@301:320)"


def test_scanner_commands_sorted_and_mapped_back():
    pairs = OPEN + [("MEAS:VOLT:DC? (@101,102,105)", "+1.3E+01,+1.31E+01,-5.0E-04"),
                    ("MEAS:TEMP? TC,K,(@201:203)", "25.0,25.5,26.0")]
    with expected_protocol(KeysightDaq970a, pairs) as daq:
        assert daq.voltages([105, 102, 101]) == {101: 13.0, 102: 13.1, 105: -5e-4}
        assert daq.temperatures([203, 201, 202]) == {201: 25.0, 202: 25.5, 203: 26.0}
        assert daq.voltages([]) == {}


def test_scanner_thermocouple_type_option():
    pairs = OPEN + [("MEAS:TEMP? TC,T,(@201)", "25.0")]
    with expected_protocol(KeysightDaq970a, pairs, options={"thermocouple_type": "T"}) as daq:
        assert daq.temperatures([201]) == {201: 25.0}


def test_scanner_wrong_count_names_the_reply():
    pairs = OPEN + [("MEAS:VOLT:DC? (@101,102)", "+1.3E+01"), ("SYST:ERR?", NO_ERROR)]
    with expected_protocol(KeysightDaq970a, pairs) as daq:
        with pytest.raises(InstrumentError, match="expected 2 value") as info:
            daq.voltages([101, 102])
    assert info.value.command == "MEAS:VOLT:DC? (@101,102)" and "'+1.3E+01'" in info.value.problem


def test_actuator_commands_and_safe_state():
    pairs = (OPEN + ok("ROUT:CLOS (@301)") + [("ROUT:CLOS? (@301)", "1")] + ok("ROUT:OPEN (@301)")
             + [("ROUT:CLOS? (@301)", "0")] + ok("ROUT:OPEN (@301:320)") + ok("ABOR"))
    with expected_protocol(KeysightDaq970a, pairs) as daq:
        daq.close_channel(301)
        assert daq.is_closed(301) is True
        daq.open_channel(301)
        assert daq.is_closed(301) is False
        daq.safe_state()


def test_actuator_safe_state_opens_configured_and_driven_channels():
    pairs = OPEN + ok("ROUT:CLOS (@325)") + ok("ROUT:OPEN (@301,302,325)") + ok("ABOR")
    with expected_protocol(KeysightDaq970a, pairs, options={"actuator_channels": [301, 302]}) as daq:
        daq.close_channel(325)
        daq.safe_state()


def test_actuator_safe_state_tries_everything_and_raises_the_first_failure():
    pairs = OPEN + [("ROUT:OPEN (@301:320)", None), ("SYST:ERR?", timeout())] + ok("ABOR")
    with expected_protocol(KeysightDaq970a, pairs) as daq:
        with pytest.raises(InstrumentError) as info:
            daq.safe_state()
    assert info.value.command == "ROUT:OPEN (@301:320)"


@pytest.mark.parametrize("channel", [42, 401, 300, 1000])
def test_actuator_rejects_channels_that_cannot_exist(channel):
    with expected_protocol(KeysightDaq970a, OPEN) as daq:
        with pytest.raises(InstrumentError, match="do not exist"):
            daq.close_channel(channel)


# ================================================================================== AC-IR
def esr_ok(command: str) -> Pairs:
    """A BT3562 command and its error check: the Standard Event Status Register, not SYST:ERR?."""
    return [(command, None), ("*ESR?", "0")]


ACIR_OPEN = esr_ok("*CLS")
ACIR_CONFIGURE = (esr_ok(":SYST:HEAD OFF") + esr_ok(":FUNC RV") + esr_ok(":TRIG:SOUR IMM")
                  + esr_ok(":INIT:CONT OFF") + esr_ok(":AUT ON"))


def test_acir_configures_once_then_fetches():
    # configured before the first reading only; each reading is a new :READ?; after a safe state
    # (free-run off) the next reading configures the meter again
    pairs = (ACIR_OPEN + ACIR_CONFIGURE + [(":READ?", " 3.0012E-3, 13.0600E+0"),
                                           (":READ?", " 3.0010E-3, 13.0610E+0")]
             + esr_ok(":INIT:CONT OFF") + ACIR_CONFIGURE + [(":READ?", "3E-03,13")])
    with expected_protocol(HiokiBt3562, pairs) as meter:
        assert meter.measure() == pytest.approx((3.0012e-3, 13.06))
        assert meter.measure() == pytest.approx((3.0010e-3, 13.061))
        meter.safe_state()
        assert meter.measure() == pytest.approx((3e-3, 13.0))


def test_acir_single_value_reply_is_an_error():
    pairs = ACIR_OPEN + ACIR_CONFIGURE + [(":READ?", " 3.0012E-3"), ("*ESR?", "0")]
    with expected_protocol(HiokiBt3562, pairs) as meter:
        with pytest.raises(InstrumentError, match="expected 2 value") as info:
            meter.measure()
    assert info.value.command == ":READ?"


# ================================================================================== registry
ROLE_OF = {"keysight_n5700": roles.DcSupply, "itech_it8500": roles.ElectronicLoad,
           "keysight_34465a": roles.Dmm, "keysight_daq970a": (roles.Scanner, roles.Actuator),
           "hioki_bt3562": roles.AcIrMeter}


@pytest.mark.parametrize("name", sorted(ROLE_OF))
def test_registry_resolves_each_driver_to_its_role(name):
    cls = get_driver(name)
    for role in ROLE_OF[name] if isinstance(ROLE_OF[name], tuple) else (ROLE_OF[name],):
        assert issubclass(cls, role)
    assert not getattr(cls, "__abstractmethods__", None), f"{cls} leaves {cls.__abstractmethods__} abstract"
    assert name in driver_names()


def test_registry_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="keysight_n5700"):
        get_driver("keysight_n6700")
