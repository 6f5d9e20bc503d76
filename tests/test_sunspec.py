"""SunSpec over Modbus/TCP: the emulated BMS server and the harness's Bms client, end to end.

Every test runs the real pymodbus server on loopback against a twin, and reads it with a real
client (pysunspec2's own, or the harness's). Bench time moves only by ``bench.advance``; the
client's liveness clock is the bench clock, so silence is timed in bench seconds.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from sunspec2.modbus.client import SunSpecModbusClientDeviceTCP

from bankmodel.positions import position
from emulator.bench import EmulatedBench
from bankmodel.specs.firmware import FirmwareProfile
from bankmodel.specs.loading import FIXTURES, load_bank_spec
from emulator.endpoints.sunspec_server import BASE_ADDRESS, SunSpecServer
from bankmodel.files import load_model
from emulator.twin import Twin
from instruments.roles import InstrumentError
from instruments.sunspec_bms import Malformed, SunSpecBms, decode_model

# ------------------------------------------------------------------------------ helpers


def make_bench(dut: str = "1s4p_diagonal", firmware: str = "good",
               scenario: str | None = None) -> EmulatedBench:
    spec = load_bank_spec(dut, scenario)
    profile = load_model(FirmwareProfile, FIXTURES / "firmware" / f"{firmware}.yaml")
    return EmulatedBench(Twin(replace(spec, firmware=profile)))


# A healthy exchange's time-out. The server is a thread of the test's own process: on a host with
# both cores busy (4 xdist workers) it answered a discovery read later than 0.3 s. A silence
# test waits this long for each request it expects to go unanswered.
REPLY_TIMEOUT_S = 1.5


@pytest.fixture
def rig(request: pytest.FixtureRequest) -> Iterator[SimpleNamespace]:
    """A bench, its SunSpec server and a harness client; ``request.param`` = (dut, firmware)."""
    dut, firmware = getattr(request, "param", ("1s4p_diagonal", "good"))
    bench = make_bench(dut, firmware)
    server = SunSpecServer(bench).start()
    client = SunSpecBms("127.0.0.1", server.port, 1, clock=lambda: bench.now, timeout_s=REPLY_TIMEOUT_S)
    try:
        yield SimpleNamespace(bench=bench, twin=bench.twin, server=server, client=client)
    finally:
        client.close()
        server.stop()


def run(rig: SimpleNamespace, seconds: float, heartbeat: bool = True, step: float = 1.0) -> None:
    """Advance bench time, the client writing CtrlHb once per step (in virtual time) if asked."""
    for _ in range(round(seconds / step)):
        if heartbeat:
            rig.client.send_heartbeat()
        rig.bench.advance(step)


def wait_for(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within the wall-time limit")
        time.sleep(0.002)


def bank_voltage(twin: Twin) -> float:
    """What the master reports: per series position the mean stack voltage, summed."""
    positions = np.array([position(m)[0] for m in twin.modules])
    stack = np.array([twin.module_stack_voltage(m) for m in twin.modules])
    return float(sum(stack[positions == s].mean() for s in np.unique(positions)))


def bank_current(twin: Twin) -> float:
    return sum(twin.module_current(m) for m in twin.modules if position(m)[0] == 1)


def load_on(rig: SimpleNamespace, amps: float) -> None:
    with rig.bench.lock:
        rig.twin.set_load(amps)
        rig.twin.load_input(True)


# ------------------------------------------------------------------------------ (1) pysunspec2


def test_pysunspec2_scans_the_map_and_reads_models_1_and_802(rig):
    load_on(rig, 40.0)
    run(rig, 3)
    device = SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr="127.0.0.1", ipport=rig.server.port, timeout=2)
    try:
        device.scan()
        twin, report = rig.twin, rig.twin.master.report
        ids = [m.model_id for m in device.model_list]
        assert ids == [1, 802, 803] + [804] * 4 + [805] * 4
        assert all(m.error_info == "" for m in device.model_list), [m.error_info for m in device.model_list]
        common = device.models[1][0]
        assert common.Mn.value == twin.spec.firmware.manufacturer
        assert common.Md.value == twin.spec.module_type.model
        assert common.Vr.value == "2.1.0" == twin.spec.firmware.version
        assert common.SN.value == twin.serials["s1p1"]
        battery = device.models[802][0]
        assert battery.SoC.cvalue == pytest.approx(report.soc_pct, abs=0.05)
        assert battery.V.cvalue == pytest.approx(bank_voltage(twin), abs=0.05)
        assert battery.A.cvalue == pytest.approx(bank_current(twin), abs=0.05)
        assert battery.A.cvalue == pytest.approx(-40.0, abs=0.2)          # + = charge
        assert battery.AChaMax.cvalue == pytest.approx(report.charge_current_limit_a)
        assert battery.ADisChaMax.cvalue == pytest.approx(report.discharge_current_limit_a)
        assert battery.Hb.value == int(rig.bench.now)
        assert battery.ChaSt.value == 3                                    # DISCHARGING
        modules = device.models[805]
        assert [m.SN.value for m in modules] == [twin.serials[m] for m in twin.modules]
        for model, name in zip(modules, twin.modules):
            assert model.V.cvalue == pytest.approx(twin.module_stack_voltage(name), abs=0.05)
            assert len(model.groups["lithium-ion-module-cell"]) == twin.spec.module_type.cells_in_series
    finally:
        device.disconnect()


# ------------------------------------------------------------------------------ (2) harness client


@pytest.mark.parametrize("rig", [("1s1p", "good"), ("1s4p_diagonal", "good"), ("4s4p", "good"),
                                 ("4s1p", "good")], indirect=True, ids=lambda p: p[0])
def test_client_reads_what_the_master_reports(rig):
    load_on(rig, 30.0)
    run(rig, 3)
    twin, report = rig.twin, rig.twin.master.report
    limits = rig.client.limits()
    assert limits.charge_voltage_v == pytest.approx(report.charge_voltage_limit_v, abs=0.05)
    assert limits.discharge_voltage_v == pytest.approx(report.discharge_voltage_limit_v, abs=0.05)
    assert limits.charge_current_a == pytest.approx(report.charge_current_limit_a, abs=0.05)
    assert limits.discharge_current_a == pytest.approx(report.discharge_current_limit_a, abs=0.05)
    assert limits.discharge_current_a > 0
    tel = rig.client.telemetry()
    assert tel.soc_pct == pytest.approx(report.soc_pct, abs=0.05)
    assert tel.soh_pct == pytest.approx(report.soh_pct, abs=0.05)
    assert tel.voltage_v == pytest.approx(bank_voltage(twin), abs=0.05)
    assert tel.current_a == pytest.approx(-30.0, abs=0.2)
    temps = [twin.thermocouple(m) for m in twin.modules]
    assert tel.temperature_c == pytest.approx(float(np.mean(temps)), abs=0.05)
    assert tel.min_cell_v is not None and tel.max_cell_v is not None
    assert 2.5 < tel.min_cell_v <= tel.max_cell_v < 3.65
    status = rig.client.status()
    assert status.alarms == set()
    assert status.modules_online == report.modules_online == len(twin.modules)
    assert status.modules_offline == 0
    assert status.online_capacity_ah == pytest.approx(report.online_capacity_ah)
    assert status.charge_enable is report.charge_enable and status.discharge_enable is report.discharge_enable
    assert rig.client.firmware() == twin.spec.firmware.version
    assert twin.serials["s1p1"] in rig.client.identity()


def test_silent_module_drops_out_of_status_and_capacity(rig):
    """004: capacity = sum of online modules; the offline module's 805 reads unimplemented."""
    run(rig, 2)
    rig.twin.silent[3] = True
    run(rig, 5)                                  # slave timeout 3 s
    report, status = rig.twin.master.report, rig.client.status()
    assert status.modules_offline == report.modules_offline == 1
    assert status.online_capacity_ah == pytest.approx(report.online_capacity_ah) == pytest.approx(300)
    assert "communication_error" in status.alarms
    offline = rig.client.model(805, 4)
    assert offline.value("V") is None and offline.value("SN") == rig.twin.serials["s1p4"]


def test_setop_opens_and_closes_the_main_contactor(rig):
    run(rig, 1)
    rig.client.set_operation(False)
    assert not rig.twin.contactor_closed["main"]
    assert rig.client.state() == "DISCONNECTED"
    rig.client.set_operation(True)
    assert rig.twin.contactor_closed["main"]
    assert rig.client.state() == "CONNECTED"
    rig.client.safe_state()
    assert not rig.twin.contactor_closed["main"]


def test_contactor_fault_is_an_event():
    bench = make_bench("1s4p_diagonal", scenario="stuck_contactor")
    with SunSpecServer(bench) as server, SunSpecBms(port=server.port, timeout_s=0.3) as client:
        bench.advance(1.0)
        assert "contactor_error" in client.status().alarms


def test_protection_trips_and_running_debounce_map_to_alarm_and_warning_bits():
    """Unit test of the event mapping alone (no network): the map renders, the client decodes."""
    from emulator.bms import PROTECTIONS
    from emulator.endpoints.sunspec_server import BankMap, ControllerState
    from instruments.sunspec_bms import event_names

    twin = make_bench("1s4p_diagonal").twin
    twin.advance(1.0)
    twin.bms.tripped[PROTECTIONS.index("cell_overvoltage"), 2] = True
    twin.bms.timer[PROTECTIONS.index("cell_undervoltage"), 1] = 0.5
    twin.blow_fuse("s1p4")
    bank = BankMap(twin)
    registers = bank.render(ControllerState())
    start = bank.battery.address - BASE_ADDRESS
    battery = decode_model(802, bank.battery.address, registers[start:start + bank.battery.length])
    alarms, warnings = event_names(battery.symbols("Evt1"))
    assert alarms == {"over_voltage", "other"} and warnings == {"under_voltage"}
    start = bank.bank.address - BASE_ADDRESS
    bank_model = decode_model(803, bank.bank.address, registers[start:start + bank.bank.length])
    strings = bank_model.groups["string"]
    assert strings[3].symbol("StrConFail") == "FUSE_OPEN" and strings[0].symbol("StrConFail") == "NO_FAILURE"
    assert "OVER_VOLT_ALARM" in strings[2].symbols("StrEvt1") and not strings[0].symbols("StrEvt1")


def test_can_and_sunspec_publish_one_bank(tmp_path):
    """Both endpoints take their figures from emulator.published: the same bank voltage, current,
    cell extremes and protection alarms/warnings, during a debounce and after the trip."""
    from emulator.endpoints.can_bms import ALARM_SOURCES, protocol_values
    from emulator.endpoints.sunspec_server import BankMap, ControllerState
    from emulator.published import ALARM_FAMILIES
    from instruments.sunspec_bms import event_names

    scenario = tmp_path / "hot_module_65c.yaml"
    scenario.write_text("name: hot_module_65c\ndescription: middle module at 65 C\nfaults:\n"
                        "  - kind: hot_module\n    module: middle\n    extra_heat_w: 0\n"
                        "    initial_temperature_c: 65\n")
    twin = Twin(load_bank_spec("4s4p", scenario))
    twin.set_load(40.0)
    twin.load_input(True)
    seen = []
    for seconds in (1.5, 2.5):      # inside the 2 s debounce: a warning; then the alarm
        for _ in range(int(seconds * 2)):
            twin.inverter_heartbeat()
            twin.advance(0.5)
        can = protocol_values(twin)
        bank = BankMap(twin)
        registers = bank.render(ControllerState())
        start = bank.battery.address - BASE_ADDRESS
        battery = decode_model(802, bank.battery.address, registers[start:start + bank.battery.length])
        alarms, warnings = event_names(battery.symbols("Evt1"))
        frame = can[0x359]
        assert alarms & set(ALARM_FAMILIES) == {f for bit, f in ALARM_SOURCES.items() if frame[f"Alarm_{bit}"]}
        assert warnings & set(ALARM_FAMILIES) == {f for bit, f in ALARM_SOURCES.items() if frame[f"Warning_{bit}"]}
        seen.append((alarms & set(ALARM_FAMILIES), warnings & set(ALARM_FAMILIES)))
        assert battery.value("V") == pytest.approx(can[0x356]["Voltage"], abs=0.05)
        assert battery.value("A") == pytest.approx(can[0x356]["Current"], abs=0.05)
        assert battery.value("CellVMin") == pytest.approx(can[0x373]["MinCellVoltage"] / 1000, abs=1e-3)
        assert battery.value("CellVMax") == pytest.approx(can[0x373]["MaxCellVoltage"] / 1000, abs=1e-3)
    assert seen == [(set(), {"over_temperature"}), ({"over_temperature"}, set())]


# ------------------------------------------------------------------------------ (3) CtrlHb


@pytest.mark.parametrize("rig, zeroed", [(("1s4p_diagonal", "good"), True),
                                         (("1s4p_diagonal", "candidate"), False)],
                         indirect=["rig"], ids=["good", "candidate"])
def test_limits_after_the_controller_heartbeat_stops(rig, zeroed):
    """Good firmware zeroes AChaMax/ADisChaMax after its 5 s timeout; the candidate keeps them."""
    timeout_s = rig.twin.spec.firmware.heartbeat.timeout_s          # 5 s in both profiles
    run(rig, 5)
    before = rig.client.limits()
    assert before.charge_current_a > 0 and before.discharge_current_a > 0
    run(rig, timeout_s - 1, heartbeat=False, step=0.5)            # within the timeout: unchanged
    assert rig.client.limits() == before
    run(rig, 3, heartbeat=False, step=0.5)                        # 2 s past it
    after = rig.client.limits()
    assert (after.charge_current_a == 0 and after.discharge_current_a == 0) is zeroed
    assert ("communication_error" in rig.client.status().alarms) is zeroed
    run(rig, 2)                                  # the controller comes back
    assert rig.client.limits().discharge_current_a == pytest.approx(before.discharge_current_a)


def test_heartbeat_thread_keeps_the_battery_alive_then_stops(rig):
    rig.client.heartbeat_period_s = 0.01
    rig.client.heartbeat(True)
    try:
        for _ in range(8):                       # beyond the 5 s timeout, one write per bench second
            seen = rig.server.heartbeats_received
            wait_for(lambda: rig.server.heartbeats_received > seen)
            rig.bench.advance(1.0)
        assert rig.client.limits().discharge_current_a > 0
    finally:
        rig.client.heartbeat(False)
    assert not rig.client.heartbeat_on and rig.client.heartbeat_errors == 0
    stopped_at = rig.server.heartbeats_received
    run(rig, rig.twin.spec.firmware.heartbeat.timeout_s + 2, heartbeat=False, step=0.5)
    assert rig.server.heartbeats_received == stopped_at
    assert rig.client.limits().discharge_current_a == 0
    rig.client.heartbeat(True)                   # resume
    wait_for(lambda: rig.server.heartbeats_received > stopped_at)
    rig.client.heartbeat(False)
    rig.bench.advance(1.0)
    assert rig.client.limits().discharge_current_a > 0


def test_only_a_changed_ctrlhb_counts(rig):
    address = rig.server.address_of(802, "CtrlHb")
    rig.client._write(address, [7], "CtrlHb")
    rig.client._write(address, [7], "CtrlHb")
    assert rig.server.heartbeats_received == 1
    rig.client._write(address, [8], "CtrlHb")
    assert rig.server.heartbeats_received == 2
    assert rig.client.model(802).value("CtrlHb") == 8


# ------------------------------------------------------------------------------ (4) Hb


def test_hb_counts_bench_seconds(rig):
    first = rig.client.poll_heartbeat()
    assert first == 0 and rig.client.seconds_since_heard() == 0.0
    run(rig, 3)
    assert rig.client.poll_heartbeat() == first + 3
    rig.bench.advance(0.4)                       # same whole second: Hb has not moved
    assert rig.client.poll_heartbeat() == first + 3
    assert rig.client.seconds_since_heard() == pytest.approx(0.4)
    rig.bench.advance(0.6)
    assert rig.client.seconds_since_heard() == 0.0


# ------------------------------------------------------------------------------ (5) silence


def test_a_silent_server_is_detected_and_timed_in_bench_seconds(rig):
    run(rig, 2)
    assert rig.client.seconds_since_heard() == 0.0
    heartbeats = rig.server.heartbeats_received
    rig.server.silent = True
    with pytest.raises(InstrumentError) as caught:
        rig.client.telemetry()
    assert f"127.0.0.1:{rig.server.port}" in str(caught.value) and "802" in str(caught.value)
    with pytest.raises(InstrumentError):
        rig.client.send_heartbeat()
    assert rig.server.heartbeats_received == heartbeats       # a silent battery hears nothing
    rig.bench.advance(6.0)
    assert rig.client.seconds_since_heard() == pytest.approx(6.0)
    rig.server.silent = False
    assert rig.client.seconds_since_heard() == 0.0           # Hb moved while it was silent
    assert rig.client.telemetry().soc_pct > 0


def test_never_heard_is_infinite():
    with socket.socket() as probe:                           # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = SunSpecBms(port=port, timeout_s=0.2)
    assert client.seconds_since_heard() == float("inf")
    with pytest.raises(InstrumentError) as caught:
        client.limits()
    assert f"127.0.0.1:{port}" in str(caught.value)
    client.close()


# ------------------------------------------------------------------------------ (6) malformed data


def test_unimplemented_required_point_names_model_point_and_register(rig):
    run(rig, 1)
    address = rig.server.address_of(802, "SoC")
    rig.server.override(address, 0xFFFF)
    with pytest.raises(InstrumentError) as caught:
        rig.client.telemetry()
    message = str(caught.value)
    assert "model 802 point SoC" in message and str(address) in message and "0xFFFF" in message
    assert rig.client.limits().charge_current_a > 0          # other reads are unaffected
    rig.server.clear_overrides()
    rig.server.override(rig.server.address_of(802, "A"), 0x8000)
    with pytest.raises(InstrumentError, match=r"point A .*0x8000"):
        rig.client.telemetry()


def test_unimplemented_scale_factor(rig):
    rig.server.override(rig.server.address_of(802, "AMax_SF"), 0x8000)
    with pytest.raises(InstrumentError, match="AMax_SF"):
        rig.client.limits()
    rig.server.override(rig.server.address_of(803, "ModTmp_SF"), 0x8000)
    with pytest.raises(InstrumentError, match="model 803 point ModTmpAvg .*ModTmp_SF"):
        rig.client.telemetry()


def test_no_sunspec_marker(rig):
    rig.server.override(BASE_ADDRESS, 0x0000)
    with pytest.raises(InstrumentError, match="no SunSpec map"):
        rig.client.discover()


def test_broken_model_chain(rig):
    rig.server.override(rig.server.address_of(802, "L"), 0x0FFF)
    with pytest.raises(InstrumentError, match="model header") as caught:
        rig.client.discover()
    assert "ILLEGAL_ADDRESS" in str(caught.value)


def test_map_that_changed_under_the_client(rig):
    rig.client.discover()
    rig.server.override(rig.server.address_of(802, "ID"), 803)
    with pytest.raises(InstrumentError, match="map changed"):
        rig.client.limits()


def test_wrong_device_id_and_refused_writes(rig):
    stranger = SunSpecBms(port=rig.server.port, device_id=7, timeout_s=0.2)
    with pytest.raises(InstrumentError, match="not unit 7"):
        stranger.limits()
    stranger.close()
    assert rig.server.foreign_requests == 3                 # 40000, 0 and 50000 tried
    with pytest.raises(InstrumentError, match="ILLEGAL_ADDRESS"):      # read-only register
        rig.client._write(rig.server.address_of(802, "SoC"), [1], "SoC")
    with pytest.raises(InstrumentError, match="ILLEGAL_VALUE"):        # SetOp 3 is not a symbol
        rig.client._write(rig.server.address_of(802, "SetOp"), [3], "SetOp")
    assert rig.twin.contactor_closed["main"]


def test_short_read_is_an_error_not_a_crash(rig):
    """Unit test of the client's read path alone: a reply with fewer registers than asked."""
    class ShortReply:
        registers = [1, 2]

        def isError(self) -> bool:  # noqa: N802 - pymodbus's name
            return False

    class ShortClient:
        def read_holding_registers(self, address, count, device_id):  # type: ignore[no-untyped-def]
            return ShortReply()

        def close(self) -> None:
            pass

    client = SunSpecBms(port=rig.server.port, timeout_s=0.3)
    client.discover()                                        # the real map, then a short reply
    client._client.close()
    client._client = ShortClient()  # type: ignore[assignment]
    with pytest.raises(InstrumentError, match=r"read 40070\+64 \(model 802\).*short read: 2 of 64"):
        client.limits()


def test_decoder_rejects_a_group_count_that_does_not_fit():
    registers = [804, 10] + [0] * 10
    registers[3] = 50                                        # NMod = 50 modules in 10 registers
    with pytest.raises(Malformed, match="lithium_ion_string_module"):
        decode_model(804, 40000, registers)


# ------------------------------------------------------------------------------ loopback only


def test_server_listens_on_loopback_only(rig):
    port = rig.server.port
    listening = []
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A" and int(local.split(":")[1], 16) == port:      # 0A = LISTEN
            listening.append(local.split(":")[0])
    assert listening == ["0100007F"]                         # 127.0.0.1, not 0.0.0.0
    with pytest.raises(ValueError, match="loopback"):
        SunSpecServer(rig.bench, host="0.0.0.0")
