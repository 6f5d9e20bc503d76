"""BMS profiles: the pack as deployed (fixtures/bms_profiles/, bankmodel/bms_profile.py).

A profile says which frames a pack sends and which service commands it takes. These tests load
the shipped profiles and refuse bad ones with a located one-line error; run the emulated BMS in
the strict profile over the real socketcand transport (exactly six IDs on the bus, 0x35E read
as "PYLON", identity without 0x35F, service frames ignored); and run plans through ``hil run
--bms-profile pylontech_strict`` in a subprocess: what the strict pack can serve runs, what
needs a service it lacks is refused with exit 2 and one line naming step, protocol and profile.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import can
import pytest
import yaml

from bankmodel.bms_profile import load_bms_profile, profile_names
from bankmodel.files import FileError
from emulator.bench import EmulatedBench
from emulator.endpoints.can_bms import EmulatedCanBms
from emulator.endpoints.socketcand_server import SocketcandServer
from emulator.twin import build_twin
from harness.config import load_station
from harness.config.station import can_profile, with_bms_profile
from harness.store import ResultStore
from instruments.can_bms import CanBms, NotInProfile
from instruments.roles import BmsService, CapacityReport

REPO = Path(__file__).resolve().parents[1]
EMULATED = REPO / "fixtures" / "stations" / "emulated.yaml"
STRICT_IDS = {0x351, 0x355, 0x356, 0x359, 0x35C, 0x35E}
FULL_IDS = STRICT_IDS | {0x35F, 0x372, 0x373, 0x379}


# ------------------------------------------------------------------------------ loading
def test_shipped_profiles_load() -> None:
    assert {"bankhil_full", "pylontech_strict", "vendor_service_example"} <= set(profile_names())
    full, strict = load_bms_profile("bankhil_full"), load_bms_profile("pylontech_strict")
    assert set(full.frames) == FULL_IDS and full.has_services
    assert full.service_dbc_path() == REPO / "instruments" / "dbc" / "bankhil_service.dbc"
    assert set(strict.frames) == STRICT_IDS and not strict.has_services
    assert strict.service_dbc_path() is None
    vendor = load_bms_profile(REPO / "fixtures" / "bms_profiles" / "vendor_service_example.yaml")
    assert vendor.services is not None and vendor.services.force_disconnect.switch == "OpenSwitch"
    # what each offers a plan through the CAN client
    assert CanBms.protocols_for() == {"bms", "bms_service", "capacity_report"}
    assert CanBms.protocols_for("pylontech_strict") == {"bms"}
    assert CanBms.protocols_for(vendor) == {"bms", "bms_service"}


GOOD = "name: p\nframes: [0x351, 0x355, 0x356, 0x359]\n"
SERVICES = ("services:\n  dbc: bankhil_service.dbc\n"
            "  force_disconnect: {message: Service_ForceDisconnect, switch: ForceOff}\n"
            "  silence_module: {message: Service_SilenceModule, switch: Silent}\n")


@pytest.mark.parametrize("text, line, field, found", [
    ("name: p\nframes: [0x351, 0x355, 0x356, 0x359, 0x3A0]\n", 2, "frames[4]", "928"),
    ("name: p\nframes: [0x351, 0x355, 0x356]\n", 2, "frames", "[849, 853, 854]"),
    ("name: p\nframes: [0x351, 0x355, 0x356, 0x359, 0x351]\n", 2, "frames", "849"),
    ("name: p\nframes: [0x351, 0x355, 0x356, 0x359]\nfrmes: []\n", 3, "frmes", "unknown key"),
    ("name: p\nframes: [0x351, 0x355, 0x356, 0x359]\nprotocol: victron\n", 3, "protocol", "victron"),
    (GOOD + SERVICES.replace("bankhil_service.dbc", "nowhere.dbc"), 4, "services.dbc", "nowhere.dbc"),
    (GOOD + SERVICES.replace("Service_SilenceModule", "Service_Nope"), 6,
     "services.silence_module.message", "Service_Nope"),
    (GOOD + SERVICES.replace("switch: ForceOff", "switch: Opened"), 5, "services.force_disconnect.switch",
     "Opened"),
    (GOOD + "services:\n  dbc: bankhil_service.dbc\n", 4, "services.force_disconnect", "nothing"),
], ids=["unknown_frame", "core_frame_missing", "frame_twice", "misspelt_key", "other_protocol",
        "no_dbc", "no_message", "no_signal", "command_missing"])
def test_a_bad_profile_is_one_located_line(tmp_path: Path, text: str, line: int, field: str,
                                           found: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(FileError) as info:
        load_bms_profile(path)
    err = info.value
    assert (err.line, err.field) == (line, field), str(err)
    assert found in err.found and "\n" not in str(err) and str(path) in str(err)


def test_an_unknown_profile_name_lists_the_shipped_ones() -> None:
    with pytest.raises(FileError, match="no BMS profile 'pylontech_lax'.*pylontech_strict"):
        load_bms_profile("pylontech_lax")


def test_a_station_names_its_profile_and_a_bad_one_is_refused_at_its_line(tmp_path: Path) -> None:
    lab = yaml.safe_load((REPO / "fixtures" / "stations" / "lab_example.yaml").read_text(encoding="utf-8"))
    path = tmp_path / "lab.yaml"
    lab["bms"]["can"]["profile"] = "pylontech_strict"
    path.write_text(yaml.safe_dump(lab, sort_keys=False), encoding="utf-8")
    station = load_station(path)
    assert station.bms.can.profile == "pylontech_strict" and can_profile(station) == "pylontech_strict"
    assert "bms_service" not in station.protocols() and "capacity_report" not in station.protocols()
    assert station.as_runtime()["bms"]["can"]["profile"] == "pylontech_strict"
    lab["bms"]["can"]["profile"] = "nope"
    text = yaml.safe_dump(lab, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(FileError) as info:
        load_station(path)
    assert info.value.field == "bms.can.profile" and "no BMS profile 'nope'" in str(info.value)
    assert info.value.line == text.splitlines().index("    profile: nope") + 1
    # the default is the full profile: every existing station keeps what it had
    emulated = load_station(EMULATED)
    assert can_profile(emulated) is None
    assert {"bms_service", "capacity_report"} <= set(emulated.protocols())
    strict = with_bms_profile(emulated, "pylontech_strict")
    assert can_profile(strict) == "pylontech_strict" and "bms_service" not in strict.protocols()


# ------------------------------------------------------------------------------ the strict pack on the bus
@pytest.fixture
def strict_bus():  # type: ignore[no-untyped-def]
    """The emulated 1S4P BMS in the strict profile, served over socketcand, and a client."""
    channel = f"bankhil-profile-{uuid.uuid4().hex[:8]}"
    bench = EmulatedBench(build_twin("1s4p_diagonal"))
    emu_bus = can.Bus(interface="virtual", channel=channel, preserve_timestamps=True)
    emu = EmulatedCanBms(bench, emu_bus, profile="pylontech_strict").start()
    server = SocketcandServer(interface="virtual", channels={channel})
    host, port = server.start()
    client = CanBms("socketcand", channel, host=host, port=port, clock=lambda: bench.now,
                    profile="pylontech_strict", poll_s=0.001)
    try:
        yield bench, emu, client, channel
    finally:
        client.close()
        emu.stop()
        server.stop()
        emu_bus.shutdown()


def _run(bench: EmulatedBench, emu: EmulatedCanBms, client: CanBms, seconds: float) -> None:
    """Advance bench time, the client's keep-alive on the bench clock, until every frame the
    emulator sent has reached the client."""
    for _ in range(round(seconds / 0.1)):
        bench.advance(0.1)
        client.send_keepalive_if_due()
        deadline = time.monotonic() + 5.0
        while client.frames_received < emu.frames_sent and time.monotonic() < deadline:
            time.sleep(0.001)


def test_the_strict_pack_sends_exactly_its_six_frames(strict_bus) -> None:  # type: ignore[no-untyped-def]
    bench, emu, client, channel = strict_bus
    assert not isinstance(client, BmsService) and not isinstance(client, CapacityReport)
    assert client.provided_protocols() == {"bms"}
    _run(bench, emu, client, 4.0)
    heard = {frame_id for frame_id in FULL_IDS if client.decoded(frame_id) is not None}
    assert heard == STRICT_IDS
    assert emu.frames_sent == 6 * emu.reports_sent and emu.reports_sent >= 4
    assert client.malformed_counts() == dict.fromkeys(client.malformed_counts(), 0)
    # 0x35E is text; identity needs no 0x35F and says the firmware is unknown
    assert client.decoded(0x35E) == {"ManufacturerName": "PYLON"}
    assert client.manufacturer() == "PYLON"
    assert client.identity() == "PYLON BMS, firmware unknown (BMS profile pylontech_strict sends no 0x35F)"
    identity = client.bank_identity()
    assert (identity.manufacturer, identity.firmware) == ("PYLON", None)
    started = time.monotonic()
    with pytest.raises(NotInProfile, match="sends no 0x35F"):
        client.firmware()  # refused at once, not after waiting for a frame that never comes
    assert time.monotonic() - started < 0.5
    with pytest.raises(NotInProfile, match="sends no 0x373"):
        client.cell_temperatures_c()
    with pytest.raises(NotInProfile):
        client.seconds_since_heard(0x372)
    assert client.seconds_since_heard(0x351) < 1.2 and client.seconds_since_heard() < 1.2
    # the module count from 0x359 byte 4; what only extensions carry is unknown
    status = client.status()
    assert status.modules_online == 4 and status.modules_offline is None
    assert status.installed_capacity_ah is None and status.online_capacity_ah is None
    assert client.installed_capacity_ah() is None
    telemetry = client.telemetry()
    assert telemetry.min_cell_v is None and telemetry.soc_pct > 0
    assert client.limits().discharge_current_a > 0  # the keep-alive keeps it out of comm loss
    # no service commands: the client refuses, and a service frame on the bus changes nothing
    with pytest.raises(NotInProfile, match="no service commands"):
        client.force_disconnect(0, True)
    emu.poll()
    ignored = emu.frames_ignored
    with can.Bus(interface="virtual", channel=channel) as injector:  # another tool on the bus
        injector.send(can.Message(arbitration_id=0x3F0, data=bytes([0, 1]), is_extended_id=False))
    _run(bench, emu, client, 0.5)
    emu.poll()
    assert emu.service_commands == 0 and emu.frames_ignored == ignored + 1


def test_the_full_profile_still_takes_service_commands_from_a_vendor_dbc(tmp_path: Path) -> None:
    """A profile's service commands come from its DBC: the vendor example's frames (0x3E0) reach
    the twin, the bench's own (0x3F0) do not."""
    channel = f"bankhil-vendor-{uuid.uuid4().hex[:8]}"
    bench = EmulatedBench(build_twin("1s4p_diagonal"))
    emu_bus = can.Bus(interface="virtual", channel=channel, preserve_timestamps=True)
    emu = EmulatedCanBms(bench, emu_bus, profile="vendor_service_example").start()
    client = CanBms("virtual", channel, clock=lambda: bench.now, profile="vendor_service_example")
    try:
        assert isinstance(client, BmsService) and not isinstance(client, CapacityReport)
        _run(bench, emu, client, 2.0)
        assert client.firmware() == "2.1.0" and client.decoded(0x379) is None
        client.silence_module(2, True)
        with can.Bus(interface="virtual", channel=channel) as injector:
            injector.send(can.Message(arbitration_id=0x3F1, data=bytes([1, 1]), is_extended_id=False))
        _run(bench, emu, client, 0.5)
        emu.poll()
        assert emu.service_commands == 1
        assert list(bench.twin.silent) == [False, False, True, False]
    finally:
        client.close()
        emu.stop()
        emu_bus.shutdown()


# ------------------------------------------------------------------------------ hil run
def hil_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    store = f"sqlite:///{tmp_path / 'results.sqlite'}"
    return subprocess.run([sys.executable, "-m", "harness.cli", "run", *args, "--results", store,
                           "--reports", str(tmp_path / "reports")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def step_verdicts(tmp_path: Path) -> dict[str, str]:
    store = ResultStore(f"sqlite:///{tmp_path / 'results.sqlite'}")
    run = store.runs()[0]
    return {step.name: step.verdict for step in store.steps(run.id)}


def test_series_mosfet_needs_the_service_and_is_refused(tmp_path: Path) -> None:
    result = hil_run(tmp_path, "series_mosfet_4s4p", "--bms-profile", "pylontech_strict")
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert "series_mosfet_4s4p.yaml:" in line and "step 'mosfet_stress_group'" in line
    assert "needs protocol 'bms_service'" in line and "BMS profile 'pylontech_strict'" in line
    assert "Traceback" not in result.stderr


def test_eol_module_on_a_strict_pack(tmp_path: Path) -> None:
    result = hil_run(tmp_path, "eol_module", "--dut", "1s1p", "--bms-profile", "pylontech_strict")
    output = result.stdout[-4000:] + result.stderr[-2000:]
    assert "Traceback" not in output and "AttributeError" not in output
    assert step_verdicts(tmp_path) == {
        "bms_comm": "pass", "unit_serial": "pass", "identity": "pass", "ocv": "pass", "balance": "pass", "acir": "pass",
        "discharge_ocp_trip": "pass"}, output
    assert result.returncode == 0, output


def test_bank_smoke_on_a_strict_pack(tmp_path: Path) -> None:
    """bank_smoke asks nothing of the pack beyond the six frames every Pylontech pack sends."""
    result = hil_run(tmp_path, "bank_smoke", "--bms-profile", "pylontech_strict")
    output = result.stdout[-4000:] + result.stderr[-2000:]
    assert "Traceback" not in output
    assert step_verdicts(tmp_path) == {"bms_identity": "pass", "module_ocv": "pass", "configuration": "pass",
                                       "current_sharing": "pass"}, output
    assert result.returncode == 0, output


def test_a_limit_on_the_installed_capacity_needs_0x379(tmp_path: Path) -> None:
    """A plan limiting the installed capacity (CAN 0x379) on a strict pack: refused, one line
    naming the step, the protocol and the profile."""
    plan = tmp_path / "bank_smoke_capacity.yaml"
    plan.write_text((REPO / "test_plans" / "bank_smoke.yaml").read_text(encoding="utf-8").replace(
        "      online_capacity: {equals: 400 Ah}\n",
        "      online_capacity: {equals: 400 Ah}\n      installed_capacity: {equals: 400 Ah}\n"), encoding="utf-8")
    result = hil_run(tmp_path, str(plan), "--bms-profile", "pylontech_strict")
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    line = result.stderr.strip()
    assert "\n" not in line and "step 'configuration'" in line
    assert "needs protocol 'capacity_report'" in line and "BMS profile 'pylontech_strict'" in line


def test_the_profile_flows_through_the_emulated_station() -> None:
    """start_emulated_station(bms_profile=...) describes its pack's profile; resolve_emulated fills
    `can: auto` with it, and refuses an emulator serving another profile than the run asked for."""
    from emulator.emulate import start_emulated_station, station_file_data
    from harness.config.station import resolve_emulated

    running = start_emulated_station("1s1p", bms_profile="pylontech_strict")
    try:
        assert running.can_bms.profile.name == "pylontech_strict"
        assert station_file_data(running.station)["bms"]["can"]["profile"] == "pylontech_strict"
        asked = with_bms_profile(load_station(EMULATED), "pylontech_strict")
        resolved = resolve_emulated(asked, running.station)
        assert resolved.bms.can.profile == "pylontech_strict" and "bms_service" not in resolved.protocols()
        with pytest.raises(FileError, match="emulated BMS in profile 'pylontech_strict'"):
            resolve_emulated(with_bms_profile(load_station(EMULATED), "bankhil_full"), running.station)
    finally:
        running.stop()
