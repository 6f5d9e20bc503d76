"""Station and plan files: the good ones load, every bad one stops the run before anything starts.

A bad file must be reported as ``FileError`` with the file, the line, the field path, what was
found and what is allowed -- that is what ``hil run`` prints (exit status 2, no traceback). Each
bad case below writes one station or plan to tmp_path next to a good counterpart and runs the
whole validation (:func:`harness.config.validate_run`) against a real DUT from fixtures/duts/,
so a case fails only for its own reason. Expected lines are found from a fragment of the bad
text, so editing the base files does not silently shift them.
"""

from __future__ import annotations

import datetime as dt
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from bankmodel.files import FileError
from harness.config import load_plan, load_station, validate_run
from harness.config.plan import Limit
from harness.config.station import resolve_emulated
from bankmodel.units import Quantity, UnitError
from test_plans.checks.spec import CheckSpec, Measure, Param

REPO = Path(__file__).resolve().parents[1]
STATIONS = REPO / "fixtures" / "stations"
ON = dt.date(2026, 12, 1)  # the date calibration is checked against: fixed, so tests do not age

# declarations of a few checks, as the real ones are made (test_plans/checks/spec.py)
CHECKS: dict[str, CheckSpec] = {
    "module_voltage": CheckSpec("module_voltage", {"settle": Param("s"), "samples": Param(kind="count")},
                                {"voltage": Measure("V", required=True)}),
    "discharge_current": CheckSpec(
        "discharge_current",
        {"load_current": Param("A", setpoint="load.current"), "load_power": Param("W", setpoint="load.power"),
         "duration": Param("s"), "samples": Param(kind="count"), "settle": Param("s"),
         "module": Param(kind="text"), "firmware": Param(kind="text"), "topology": Param(kind="text")},
        {"current": Measure("A", required=True), "voltage": Measure("V")}),
    "ir_match": CheckSpec("ir_match", {}, {"delta_ir": Measure("mohm")}),
    "firmware_consistency": CheckSpec("firmware_consistency", {}, {"versions_equal": Measure("")}),
    "parallel_inrush": CheckSpec("parallel_inrush", {}, {"peak_current": Measure("A"),
                                                         "settle_s": Measure("s")}),
}

STATION = """\
name: test-bench
emulated: false
instruments:
  supply:
    driver: keysight_n5700
    resource: TCPIP0::192.0.2.10::inst0::INSTR
    rating: {voltage: "60 V", current: "25 A", power: "1500 W"}
    calibration_due: 2027-06-30
  load:
    driver: itech_it8500
    resource: USB0::0x2EC7::0x8500::800000000000000001::INSTR
    rating: {voltage: "120 V", current: "240 A"}
    calibration_due: 2027-03-31
  scanner:
    driver: keysight_daq970a
    resource: TCPIP0::192.0.2.12::inst0::INSTR
    rating: {voltage: "300 V"}
    cards: [{slot: 1, model: DAQM901A}, {slot: 3, model: DAQM903A}]
    calibration_due: 2027-02-28
  actuator:
    driver: keysight_daq970a
    resource: TCPIP0::192.0.2.12::inst0::INSTR
    calibration_due: 2027-02-28
bms:
  can: {interface: pcan, channel: PCAN_USBBUS1, bitrate: 500000}
channels:
  scanner:
    - {channel: 101, kind: voltage, plus: s1p1.+, minus: s1p1.P-}
    - {channel: 102, kind: shunt, branch: p1, resistance: "50 uohm", rating: {current: "300 A"}}
  actuator:
    - {channel: 301, contactor: p1}
    - {channel: 302, contactor: main}
"""

PLAN = """\
name: eol
version: "1.0.0"
applies_to: [LFP12.8-100]
serial_pattern: "BH12-[0-9]{6}"
requires: [supply, load]
steps:
  - name: ocv
    check: module_voltage
    source: 000_b9e4f7d000b6acbf.txt
    limits:
      voltage: {in_range: ["12.0 V", "14.6 V"], marginal_pct: 5}
    gate: true
  - name: discharge
    check: discharge_current
    parameters: {load_current: "100 A", duration: "10 s"}
    limits:
      current: {within_pct: {nominal: "100 A", pct: 2}}
    retries: 1
"""


def sub(text: str, old: str, new: str) -> str:
    """Replace exactly one occurrence: a case that stops matching its base fails loudly."""
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
    return text.replace(old, new)


def line_with(text: str, fragment: str) -> int:
    """1-based line of the first line containing ``fragment``."""
    for number, line in enumerate(text.splitlines(), start=1):
        if fragment in line:
            return number
    raise AssertionError(f"{fragment!r} not in the text")


@dataclass
class Case:
    id: str
    bad: str                # "station" or "plan": which file the error must name
    text: str               # the bad file
    at: str | None          # fragment of the line the error must name (None: no line)
    field: str              # expected field path ("" for the file as a whole)
    found: str              # fragment of 'found'
    allowed: str            # fragment of 'allowed' (what would have been accepted)
    dut: str = "1s1p"


def station_case(id: str, text: str, at: str | None, field: str, found: str, allowed: str,
                 dut: str = "1s1p") -> Case:
    return Case(id, "station", text, at, field, found, allowed, dut)


def plan_case(id: str, text: str, at: str | None, field: str, found: str, allowed: str,
              dut: str = "1s1p") -> Case:
    return Case(id, "plan", text, at, field, found, allowed, dut)


S, P = STATION, PLAN

CASES = [
    # ------------------------------------------------------------------ station, on its own
    station_case("station-yaml-syntax", sub(S, 'current: "240 A"}', 'current: "240 A"}}'),
                 '"240 A"}}', "", "invalid YAML", "YAML syntax"),
    station_case("station-unknown-key", sub(S, "    calibration_due: 2027-06-30",
                                            "    calibraton_due: 2027-06-30"),
                 "calibraton_due", "instruments.supply.calibraton_due", "unknown key 'calibraton_due'",
                 "keys: calibration_due, cards, driver, model, options, rating, resource, serial, shared, timeout, visa_library"),
    station_case("station-wrong-type", sub(S, "emulated: false", "emulated: sometimes"),
                 "emulated:", "emulated", "'sometimes'", "boolean"),
    station_case("station-missing-field", sub(S, "    driver: itech_it8500\n", ""),
                 "resource: USB0", "instruments.load.driver", "field missing", "required"),
    station_case("station-current-rating-in-volts", sub(S, 'current: "25 A"', 'current: "25 V"'),
                 'current: "25 V"', "instruments.supply.rating.current", "'25 V'",
                 "a current (A, mA, uA, kA)"),
    station_case("station-unknown-unit", sub(S, 'current: "240 A"', 'current: "240 Amp"'),
                 '"240 Amp"', "instruments.load.rating.current", "'240 Amp'", "a current"),
    station_case("station-no-unit", sub(S, 'voltage: "300 V"', "voltage: 300"),
                 "voltage: 300", "instruments.scanner.rating.voltage", "300",
                 "written as a number and a unit"),
    station_case("station-unknown-driver", sub(S, "driver: keysight_n5700", "driver: keysight_n5701"),
                 "keysight_n5701", "instruments.supply.driver", "'keysight_n5701'", "keysight_n5700"),
    station_case("station-driver-wrong-role", sub(S, "driver: keysight_n5700", "driver: itech_it8500"),
                 "driver: itech_it8500", "instruments.supply.driver", "not a DcSupply", "fits load"),
    station_case("station-unknown-driver-option",
                 sub(S, "    calibration_due: 2027-06-30", "    calibration_due: 2027-06-30\n"
                     "    options: {baud_rate: 9600}"),
                 "baud_rate", "instruments.supply.options.baud_rate", "unknown option 'baud_rate'",
                 "read_termination"),
    station_case("station-load-without-current-rating",
                 sub(S, 'rating: {voltage: "120 V", current: "240 A"}', 'rating: {voltage: "120 V"}'),
                 'rating: {voltage: "120 V"}', "instruments.load.rating", "no current rating for load",
                 "rating: {voltage: ..., current: ...}"),
    station_case("station-calibration-malformed",
                 sub(S, "calibration_due: 2027-03-31", "calibration_due: 31.03.2027"),
                 "31.03.2027", "instruments.load.calibration_due", "'31.03.2027'", "YYYY-MM-DD"),
    station_case("station-calibration-impossible-date",
                 sub(S, "calibration_due: 2027-03-31", "calibration_due: 2027-02-30"),
                 "2027-02-30", "instruments.load.calibration_due", "'2027-02-30'", "a real date"),
    station_case("station-calibration-missing", sub(S, "    calibration_due: 2027-03-31\n", ""),
                 "driver: itech_it8500", "instruments.load", "no calibration_due", "every instrument"),
    station_case("station-duplicate-key",
                 sub(S, '    rating: {voltage: "120 V", current: "240 A"}\n',
                     '    rating: {voltage: "120 V", current: "240 A"}\n    rating: {current: "1 A"}\n'),
                 'rating: {current: "1 A"}', "instruments.load.rating", "'rating' twice", "each key once"),
    station_case("station-python-tag-refused",
                 sub(S, "resource: TCPIP0::192.0.2.10::inst0::INSTR",
                     'resource: !!python/object/apply:os.system ["touch {tmp}/PWNED"]'),
                 "!!python", "instruments.supply.resource", "python/object/apply:os.system",
                 "no tags"),
    station_case("station-python-name-tag-refused",
                 sub(S, "name: test-bench", "name: !!python/name:os.system"),
                 "name:", "name", "python/name:os.system", "plain YAML data"),
    station_case("station-merge-key-refused",
                 sub(S, "bms:\n", "base: &b {interface: pcan, channel: PCAN_USBBUS1}\nbms:\n").replace(
                     "  can: {interface: pcan, channel: PCAN_USBBUS1, bitrate: 500000}",
                     "  can: {<<: *b, bitrate: 500000}"),
                 "<<: *b", "bms.can", "merge key", "written out"),
    station_case("station-channel-out-of-range",
                 sub(S, "{channel: 101, kind: voltage", "{channel: 125, kind: voltage"),
                 "channel: 125", "channels.scanner[0].channel", "channel 125", "101-122"),
    station_case("station-channel-no-card",
                 sub(S, "{channel: 101, kind: voltage", "{channel: 201, kind: voltage"),
                 "channel: 201", "channels.scanner[0].channel", "channel 201", "fitted card"),
    station_case("station-relay-on-multiplexer",
                 sub(S, "{channel: 302, contactor: main}", "{channel: 110, contactor: main}"),
                 "channel: 110", "channels.actuator[1].channel", "channel 110", "actuator card"),
    station_case("station-channel-twice",
                 sub(S, "{channel: 102, kind: shunt", "{channel: 101, kind: shunt"),
                 "{channel: 101, kind: shunt", "channels.scanner[1].channel", "channel 101 twice",
                 "each channel once"),
    station_case("station-shunt-without-resistance", sub(S, ' resistance: "50 uohm",', ""),
                 "kind: shunt", "channels.scanner[1].resistance", "field missing", "required"),
    station_case("station-unknown-channel-kind", sub(S, "kind: voltage", "kind: current"),
                 "kind: current", "channels.scanner[0]", "'current'", "'voltage', 'shunt', 'thermocouple'"),
    station_case("station-auto-on-real-bench",
                 sub(S, "resource: USB0::0x2EC7::0x8500::800000000000000001::INSTR", "resource: auto"),
                 "resource: auto", "instruments.load.resource", "'auto'", "emulated: true"),
    station_case("station-bad-visa-resource",
                 sub(S, "resource: TCPIP0::192.0.2.10::inst0::INSTR", "resource: 192.0.2.10:5025"),
                 "192.0.2.10:5025", "instruments.supply.resource", "'192.0.2.10:5025'",
                 "TCPIP0::host::inst0::INSTR"),
    station_case("station-can-bitrate", sub(S, "bitrate: 500000", "bitrate: 512000"),
                 "bitrate: 512000", "bms.can.bitrate", "512000", "500000"),
    station_case("station-can-udp-multicast-refused", sub(S, "interface: pcan", "interface: udp_multicast"),
                 "udp_multicast", "bms.can.interface", "'udp_multicast'", "'socketcan'"),
    station_case("station-empty", "", None, "", "an empty file", "a YAML mapping"),
    station_case("station-not-a-mapping", "- supply\n- load\n", "- supply", "", "a list",
                 "a YAML mapping"),
    # ------------------------------------------------------------------ plan, on its own
    plan_case("plan-yaml-syntax", sub(P, 'applies_to: [LFP12.8-100]', 'applies_to: [LFP12.8-100'),
              "serial_pattern", "", "invalid YAML", "YAML syntax"),
    plan_case("plan-unknown-key", sub(P, "    retries: 1", "    retry: 1"),
              "retry: 1", "steps[1].retry", "unknown key 'retry'", "retries"),
    plan_case("plan-wrong-type", sub(P, "    retries: 1", "    retries: twice"),
              "retries: twice", "steps[1].retries", "'twice'", "integer"),
    plan_case("plan-missing-field", sub(P, "    check: discharge_current\n", ""),
              "- name: discharge", "steps[1].check", "field missing", "required"),
    plan_case("plan-current-limit-in-volts", sub(P, 'nominal: "100 A"', 'nominal: "100 V"'),
              "current: {within_pct", "steps[1].limits.current", "a limit in a voltage",
              "a current (A, mA, uA, kA): discharge_current measures current in A"),
    plan_case("plan-current-parameter-in-volts", sub(P, 'load_current: "100 A"', 'load_current: "14 V"'),
              "load_current", "steps[1].parameters.load_current", "'14 V'", "a current"),
    plan_case("plan-setpoints-copy-refused",
              sub(P, '    parameters: {load_current: "100 A", duration: "10 s"}',
                  '    parameters: {load_current: "100 A", duration: "10 s"}\n    setpoints: {load.current: "100 A"}'),
              "setpoints:", "steps[1].setpoints", "unknown key 'setpoints'", "parameters"),
    plan_case("plan-unknown-parameter", sub(P, 'duration: "10 s"', 'duraton: "10 s"'),
              "duraton", "steps[1].parameters.duraton", "which discharge_current does not take",
              "parameters of discharge_current: load_current"),
    plan_case("plan-missing-required-limit",
              sub(P, '      current: {within_pct: {nominal: "100 A", pct: 2}}', '      voltage: {le: "15 V"}'),
              'voltage: {le: "15 V"}', "steps[1].limits", "no limit on 'current'", "current"),
    plan_case("plan-current-limit-in-volts-by-name",
              sub(P, "    retries: 1", "    retries: 1\n  - name: inrush\n    check: parallel_inrush\n"
                  "    limits: {peak_current: {le: \"300 V\"}, settle_s: {le: \"2 s\"}}"),
              "peak_current", "steps[2].limits.peak_current", "a limit in a voltage (<= 300 V)",
              "a current (A, mA, uA, kA): parallel_inrush measures peak_current in A"),
    plan_case("plan-nested-too-deeply", "name: deep\nsteps: " + "[" * 600 + "]" * 600 + "\n",
              None, "", "nested too deeply", "a plain file"),
    plan_case("plan-unknown-unit", sub(P, '"14.6 V"', '"14.6 Volt"'),
              "14.6 Volt", "steps[0].limits.voltage.in_range[1]", "'14.6 Volt'", "units"),
    plan_case("plan-limit-without-unit", sub(P, '["12.0 V", "14.6 V"]', "[12.0, 14.6]"),
              "in_range: [12.0, 14.6]", "steps[0].limits.voltage", "a limit in a plain number",
              "a voltage (V, mV, uV, kV): module_voltage measures voltage in V"),
    plan_case("plan-limit-mixed-dimensions", sub(P, '["12.0 V", "14.6 V"]', '["12.0 V", "14.6 A"]'),
              "in_range:", "steps[0].limits.voltage", "{'in_range'", "values of one dimension"),
    plan_case("plan-limit-two-kinds", sub(P, '{in_range: ["12.0 V", "14.6 V"], marginal_pct: 5}',
                                          '{le: "14.6 V", ge: "12.0 V"}'),
              "le:", "steps[0].limits.voltage", "'le'", "exactly one of"),
    plan_case("plan-limit-reversed-range", sub(P, '["12.0 V", "14.6 V"]', '["14.6 V", "12.0 V"]'),
              "in_range:", "steps[0].limits.voltage", "'in_range'", "lo <= hi"),
    plan_case("plan-limit-unknown-measurement",
              sub(P, "      voltage: {in_range", "      volts: {in_range"),
              "volts:", "steps[0].limits.volts", "which module_voltage does not measure",
              "limits on what module_voltage measures: voltage"),
    plan_case("plan-unknown-check", sub(P, "check: module_voltage", "check: module_volts"),
              "check: module_volts", "steps[0].check", "unknown check 'module_volts'",
              "discharge_current, firmware_consistency"),
    plan_case("plan-duplicate-step-name", sub(P, "- name: discharge", "- name: ocv  # again"),
              "ocv  # again", "steps[1].name", "'ocv' twice", "unique step names"),
    plan_case("plan-step-name-not-an-id", sub(P, "- name: discharge", "- name: Discharge test"),
              "Discharge test", "steps[1].name", "'Discharge test'", "lowercase letters, digits and _"),
    plan_case("plan-version-is-a-number", sub(P, 'version: "1.0.0"', "version: 1.10"),
              "version:", "version", "1.1", "quoted version"),
    plan_case("plan-serial-pattern-bad-regex", sub(P, '"BH12-[0-9]{6}"', '"BH12-[0-9"'),
              "serial_pattern", "serial_pattern", "'BH12-[0-9'", "compiles"),
    plan_case("plan-negative-retries", sub(P, "retries: 1", "retries: -1"),
              "retries: -1", "steps[1].retries", "-1", "greater than or equal to 0"),
    plan_case("plan-reserved-marker", sub(P, "    retries: 1", "    retries: 1\n    markers: [skip]"),
              "markers: [skip]", "steps[1].markers[0]", "'skip'", "not one of pytest's own"),
    plan_case("plan-bad-source", sub(P, "source: 000_b9e4f7d000b6acbf.txt", "source: seed0.txt"),
              "seed0.txt", "steps[0].source[0]", "'seed0.txt'", "000_b9e4f7d000b6acbf.txt"),
    plan_case("plan-python-tag-refused", sub(P, "name: eol", "name: !!python/object/new:os.system [ls]"),
              "name:", "name", "python/object/new:os.system", "no tags"),
    plan_case("plan-alias-bomb-refused",
              "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
              + "".join(f"{c}: &{c} [" + ", ".join([f"*{p}"] * 10) + "]\n"
                        for p, c in zip("abcdefg", "bcdefgh"))
              + "name: bomb\n", "a:", "", "values once aliases are expanded", "fewer nested aliases"),
    plan_case("plan-no-steps", P.split("steps:")[0] + "steps: []\n",
              "steps: []", "steps", "[]", "at least 1 item"),
    plan_case("plan-applies-to-empty", sub(P, "applies_to: [LFP12.8-100]", "applies_to: []"),
              "applies_to", "applies_to", "[]", "at least 1 item"),
    # ------------------------------------------------------------------ plan x station x DUT
    plan_case("run-setpoint-above-rating", sub(P, 'load_current: "100 A"', 'load_current: "300 A"'),
              "load_current", "steps[1].parameters.load_current", "'300 A'", "at most 240 A"),
    plan_case("run-role-missing-on-station",
              sub(P, "    retries: 1", "    retries: 1\n    requires: [acir]"),
              "requires: [acir]", "steps[1].requires[0]", "role 'acir'", "actuator, bms, bms.can"),
    plan_case("run-setpoint-on-unrated-quantity",
              sub(P, 'parameters: {load_current: "100 A", duration: "10 s"}',
                  'parameters: {load_power: "500 W", duration: "10 s"}'),
              "load_power", "steps[1].parameters.load_power", "no power rating", "rating: {power"),
    plan_case("run-applies-to-other-dut", sub(P, "applies_to: [LFP12.8-100]", "applies_to: [RACK48-*, 4S4P]"),
              "applies_to", "applies_to", "DUT '1s1p'", "1s1p, 1S1P, lfp_12v8_100ah, LFP12.8-100"),
    station_case("run-station-cannot-carry-dut-voltage",
                 sub(S, 'rating: {voltage: "60 V", current: "25 A", power: "1500 W"}',
                     'rating: {voltage: "20 V", current: "25 A"}'),
                 'voltage: "20 V"', "instruments.supply.rating.voltage", "'20 V'",
                 "at least 58.4 V: the bank of DUT '4s4p'", dut="4s4p"),
    station_case("run-channel-names-module-not-in-dut",
                 sub(S, "plus: s1p1.+, minus: s1p1.P-", "plus: s1p2.+, minus: s1p2.P-"),
                 "s1p2.+", "channels.scanner[0].plus", "'s1p2.+'", "s1p1..s1p1 of the 1S1P DUT"),
    station_case("run-calibration-overdue",
                 sub(S, "calibration_due: 2027-03-31", "calibration_due: 2026-03-31"),
                 "2026-03-31", "instruments.load.calibration_due", "overdue", "recalibrate load"),
    station_case("run-shunt-rating-below-setpoint",
                 sub(S, 'rating: {current: "300 A"}', 'rating: {current: "50 A"}'),
                 'rating: {current: "50 A"}', "channels.scanner[1].rating.current", "'50 A'",
                 "at least 100 A"),
]

# Power: 200 A from a 4S bank (up to 58.4 V) is 11.7 kW, and the load is rated 3000 W
# (the station gets a power rating for this case in _station_for).
CASES += [
    Case("run-setpoint-above-power-rating", "plan",
         sub(sub(P, 'load_current: "100 A"', 'load_current: "200 A"'),
             "applies_to: [LFP12.8-100]", "applies_to: [4S4P]").replace(
             'in_range: ["12.0 V", "14.6 V"]', 'in_range: ["48 V", "58.4 V"]').replace(
             'nominal: "100 A"', 'nominal: "200 A"'),
         "load_current", "steps[1].parameters.load_current", "11680 W at up to 58.4 V",
         "at most 51.37 A: the power rating 3000 W", dut="4s4p"),
]


def _station_for(case: Case) -> str:
    """The good station, fitted to the case's DUT where the case is about the plan."""
    text = STATION
    if case.id == "run-setpoint-above-power-rating":
        text = sub(text, 'rating: {voltage: "120 V", current: "240 A"}',
                   'rating: {voltage: "120 V", current: "240 A", power: "3000 W"}')
    if case.dut == "4s4p":
        text = text.replace("branch: p1", "branch: s1p1").replace("contactor: p1", "contactor: s1p1")
    return text


def run(tmp_path: Path, station: str, plan: str, dut: str):  # type: ignore[no-untyped-def]
    station_path, plan_path = tmp_path / "station.yaml", tmp_path / "plan.yaml"
    station_path.write_text(station.replace("{tmp}", str(tmp_path)), encoding="utf-8")
    plan_path.write_text(plan, encoding="utf-8")
    return validate_run(plan_path, station_path, dut, CHECKS, on=ON, serial="BH12-000123")


def test_there_are_enough_distinct_bad_files() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len({c.text for c in CASES}) == len(CASES)
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_file_stops_the_run_with_file_line_field_found_allowed(tmp_path: Path, case: Case) -> None:
    station = _station_for(case) if case.bad == "plan" else case.text
    plan = case.text if case.bad == "plan" else (
        sub(PLAN, "applies_to: [LFP12.8-100]", "applies_to: [4S4P]").replace(
            'in_range: ["12.0 V", "14.6 V"]', 'in_range: ["48 V", "58.4 V"]')
        if case.dut == "4s4p" else PLAN)
    with pytest.raises(FileError) as info:
        run(tmp_path, station, plan, case.dut)
    err = info.value
    assert Path(err.path) == tmp_path / f"{case.bad}.yaml", str(err)
    expected_line = line_with(case.text, case.at) if case.at else None
    if case.at is None:
        assert err.line in (None, 1), str(err)
    else:
        assert err.line == expected_line, str(err)
    assert err.field == case.field, str(err)
    assert case.found in err.found, str(err)
    assert case.allowed in err.allowed, str(err)
    message = str(err)
    assert "Traceback" not in message and "\n" not in message  # one line for the operator
    assert not (tmp_path / "PWNED").exists()  # nothing in a file is ever executed


# ====================================================================== good files
def test_good_base_files_validate_together(tmp_path: Path) -> None:
    config = run(tmp_path, STATION, PLAN, "1s1p")
    assert [s.name for s in config.plan.steps] == ["ocv", "discharge"]
    assert config.bank.dut.name == "1s1p" and config.station.name == "test-bench"
    # the discharge step's load setpoint is derived from its declared parameter and was rated
    assert config.plan.steps[1].setpoints["load.current"] == Quantity.parse("100 A")


def test_emulated_station_loads_with_auto_everywhere() -> None:
    station = load_station(STATIONS / "emulated.yaml")
    assert station.emulated and not station.resolved
    assert station.channel_map is None and station.channels == "auto"
    assert {"supply", "load", "scanner", "actuator", "acir", "dmm_vds", "dmm_shunt"} <= station.roles()
    assert {"bms", "bms.can", "bms.modbus"} <= station.roles()
    assert all(inst.resource == "auto" for inst in station.instruments.values())
    assert station.rating("load").current == Quantity.parse("240 A")
    assert station.instruments["supply"].driver_kwargs()["rating"] == {"voltage_v": 80.0,
                                                                        "current_a": 120.0}


@pytest.mark.parametrize("dut", sorted(p.stem for p in (REPO / "fixtures" / "duts").glob("*.yaml")))
def test_emulated_station_carries_every_fixture_dut(tmp_path: Path, dut: str) -> None:
    plan = sub(PLAN, "applies_to: [LFP12.8-100]", "applies_to: ['*']").replace(
        "requires: [supply, load]", "requires: [supply, load, scanner, actuator, acir, bms]")
    (tmp_path / "plan.yaml").write_text(plan, encoding="utf-8")
    config = validate_run(tmp_path / "plan.yaml", STATIONS / "emulated.yaml", dut, CHECKS, on=ON)
    assert config.bank.dut.name == dut


def test_lab_example_loads_and_fits_its_dut(tmp_path: Path) -> None:
    station = load_station(STATIONS / "lab_example.yaml")
    assert not station.emulated and station.resolved and station.dut == "1s4p_diagonal"
    supply = station.instruments["supply"]
    assert supply.resource == "TCPIP0::192.0.2.13::30000::SOCKET" and supply.model == "IT6006C-80-150"
    assert supply.driver_kwargs() == {"resource": supply.resource, "options": {"mode": "source"},
                                      "timeout_s": 2.0,
                                      "rating": {"voltage_v": 80.0, "current_a": 150.0, "power_w": 6000.0}}
    assert station.instruments["acir"].resource.startswith("ASRL")
    assert station.instruments["load"].resource.endswith("::SOCKET")
    assert station.instruments["load"].options == {"mode": "sink"}
    assert station.instruments["dmm_shunt"].options == {"digitise_range_v": 0.1}
    assert station.bms.can.bus_kwargs() == {"interface": "pcan", "channel": "PCAN_USBBUS1",
                                            "bitrate": 500000}
    assert station.bms.modbus.host == "192.0.2.20" and station.bms.modbus.port == 502
    cmap = station.channel_map
    assert cmap.actuator_channels() == {301: "s1p1", 302: "s1p2", 303: "s1p3", 304: "s1p4", 305: "main"}
    shunt = cmap.scanner_channels()[105]
    assert shunt.kind == "shunt" and shunt.resistance.to("uohm") == pytest.approx(50)
    assert all(i.calibration_due > ON for i in station.instruments.values())
    plan = sub(PLAN, "applies_to: [LFP12.8-100]", "applies_to: [1s4p_*]").replace(
        'load.current: "100 A"', 'load.current: "200 A"').replace('nominal: "100 A"', 'nominal: "200 A"')
    (tmp_path / "plan.yaml").write_text(plan, encoding="utf-8")
    validate_run(tmp_path / "plan.yaml", station, "1s4p_diagonal", CHECKS, on=ON)
    runtime = station.as_runtime()
    assert runtime["channels"].shunt_channels()["s1p1"] == (105, pytest.approx(50e-6))
    assert runtime["instruments"]["load"]["rating"]["current_a"] == 300.0
    assert runtime["channels"].dmm["dmm_shunt"].branch == "s1p4"


def test_lab_example_has_comments_for_a_person() -> None:
    text = (STATIONS / "lab_example.yaml").read_text(encoding="utf-8")
    comments = [line for line in text.splitlines() if line.strip().startswith("#")]
    assert len(comments) >= 20
    assert "192.0.2." in text and "127.0.0.1" not in text  # documentation addresses only
    for fragment in ("N5767A", "IT8516C+", "34465A", "DAQ970A", "DAQM901A", "DAQM903A", "BT3562",
                     "pcan", "kvaser", "socketcan", "bitrate", "modbus", "calibration_due"):
        assert fragment in text


def test_plan_loads_with_parameters_limits_and_defaults(tmp_path: Path) -> None:
    text = sub(PLAN, "steps:", 'defaults: {settle: "2 s", samples: 5}\nsteps:').replace(
        'parameters: {load_current: "100 A", duration: "10 s"}',
        'parameters: {load_current: "100 A", duration: "10 min", samples: 20, module: s1p1, firmware: 1.9.0, '
        'topology: 4S4P}')
    (tmp_path / "plan.yaml").write_text(text, encoding="utf-8")
    plan = load_plan(tmp_path / "plan.yaml", CHECKS)
    ocv, discharge = plan.steps
    assert ocv.gate and not discharge.gate and discharge.retries == 1
    assert ocv.source == ["000_b9e4f7d000b6acbf.txt"]
    params = plan.parameters_for(discharge)
    assert params["duration"].to("s") == 600 and params["settle"] == Quantity.parse("2 s")
    assert params["samples"] == 20 and params["module"] == "s1p1"
    assert params["firmware"] == "1.9.0" and params["topology"] == "4S4P"
    assert plan.parameters_for(ocv)["samples"] == 5
    assert discharge.setpoints["load.current"].value == 100.0
    assert plan.roles_for(discharge) == {"supply", "load"}
    assert plan.serial_matches("BH12-000001") and not plan.serial_matches("BH12-1")
    assert plan.line("steps", 1, "check") == line_with(text, "check: discharge_current")
    # a dumped plan reads back as the same plan
    (tmp_path / "again.yaml").write_text(yaml.safe_dump(plan.model_dump(mode="json")), encoding="utf-8")
    again = load_plan(tmp_path / "again.yaml", CHECKS)
    assert again.steps[1].setpoints == plan.steps[1].setpoints
    assert again.model_dump() == plan.model_dump()


def test_a_misspelled_limit_is_refused_not_recorded(tmp_path: Path) -> None:
    """A limit must name what the check declares: a typo is an error, never a silent record."""
    text = sub(PLAN, "      voltage: {in_range", "      volts: {in_range")
    (tmp_path / "plan.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(FileError) as info:
        load_plan(tmp_path / "plan.yaml", CHECKS)
    assert info.value.field == "steps[0].limits.volts"
    assert "limits on what module_voltage measures: voltage" in info.value.allowed


def test_serial_not_matching_the_plan(tmp_path: Path) -> None:
    (tmp_path / "station.yaml").write_text(STATION, encoding="utf-8")
    (tmp_path / "plan.yaml").write_text(PLAN, encoding="utf-8")
    with pytest.raises(FileError) as info:
        validate_run(tmp_path / "plan.yaml", tmp_path / "station.yaml", "1s1p", CHECKS, on=ON,
                     serial="XX-1")
    assert info.value.field == "serial_pattern" and info.value.line == line_with(PLAN, "serial_pattern")
    assert "BH12-" in info.value.allowed


def test_missing_file_is_a_file_error(tmp_path: Path) -> None:
    with pytest.raises(FileError) as info:
        load_station(tmp_path / "nope.yaml")
    assert "no such file" in info.value.found


# ====================================================================== emulated resolution
def _described(dut: str = "1s1p") -> dict:
    """What start_emulated_station describes, without starting endpoints (wiring of the twin)."""
    from emulator.bench import default_wiring
    from bankmodel.specs.loading import load_bank_spec
    from emulator.emulate import DMM_DRIVER, DRIVERS
    from emulator.twin import Twin

    wiring = default_wiring(Twin(load_bank_spec(dut)))
    roles = ["supply", "load", *wiring.dmm, "scanner", "actuator", "acir"]
    return {
        "name": f"emulated-{dut}", "emulated": True,
        "instruments": {r: {"driver": DRIVERS.get(r, DMM_DRIVER),
                            "resource": f"TCPIP0::127.0.0.1::{5000 + k}::SOCKET"}
                        for k, r in enumerate(roles)},
        "bms": {"can": {"interface": "socketcand", "host": "127.0.0.1", "port": 29536,
                        "channel": "bankhil-x", "bitrate": 500000},
                "modbus": {"host": "127.0.0.1", "port": 15020, "device_id": 1}},
        "channels": wiring,
    }


@pytest.mark.parametrize("dut", ["1s1p", "4s4p"])
def test_resolve_emulated_fills_every_auto(dut: str) -> None:
    station = load_station(STATIONS / "emulated.yaml")
    described = _described(dut)
    resolved = resolve_emulated(station, described)
    assert resolved.resolved
    assert resolved.instruments["supply"].resource == described["instruments"]["supply"]["resource"]
    assert resolved.rating("supply") == station.rating("supply")  # ratings stay the file's
    assert resolved.bms.can.bus_kwargs()["port"] == 29536 and resolved.bms.modbus.port == 15020
    cmap = resolved.channel_map
    assert cmap == described["channels"]  # the emulator's wiring is a ChannelMap: one type
    assert cmap.actuator_channels() == described["channels"].actuator_channels()
    assert set(cmap.dmm) == {"dmm_vds", "dmm_shunt"}


def test_resolve_emulated_refuses_a_driver_the_emulator_does_not_speak() -> None:
    station = load_station(STATIONS / "emulated.yaml")
    described = _described()
    described["instruments"]["acir"]["driver"] = "some_other_meter"
    with pytest.raises(FileError) as info:
        resolve_emulated(station, described)
    assert info.value.field == "instruments.acir.driver"
    assert info.value.line == line_with((STATIONS / "emulated.yaml").read_text(), "hioki_bt3562")
    assert "some_other_meter" in info.value.allowed


def test_resolve_emulated_refuses_a_role_the_emulator_does_not_serve(tmp_path: Path) -> None:
    text = (STATIONS / "emulated.yaml").read_text(encoding="utf-8").replace(
        "\nbms:\n", "\n  dmm_spare:\n    driver: keysight_34465a\n    resource: auto\n\nbms:\n")
    (tmp_path / "station.yaml").write_text(text, encoding="utf-8")
    station = load_station(tmp_path / "station.yaml")  # valid on its own
    with pytest.raises(FileError) as info:
        resolve_emulated(station, _described())
    assert info.value.field == "instruments.dmm_spare" and "dmm_vds" in info.value.allowed


def test_resolve_against_a_running_emulator() -> None:
    from emulator.emulate import start_emulated_station

    running = start_emulated_station("1s1p")
    try:
        resolved = resolve_emulated(load_station(STATIONS / "emulated.yaml"), running.station)
    finally:
        running.stop()
    assert resolved.resolved
    assert resolved.instruments["scanner"].resource.startswith("TCPIP0::127.0.0.1::")


def test_the_emulated_wiring_is_the_station_file_channel_map() -> None:
    """One channel-map type: the emulator's wiring reads its shunts as quantities, like a file."""
    from bankmodel.channels import ChannelMap
    from emulator.bench import default_wiring
    from emulator.twin import build_twin

    cmap = default_wiring(build_twin("1s4p_diagonal"))
    assert isinstance(cmap, ChannelMap)
    assert cmap.scanner_channels()[105].resistance.to("uohm") == pytest.approx(50)
    assert cmap.contactor_channel("main") == 305 and cmap.acir_module == "s1p1"


# ====================================================================== units and limits
@pytest.mark.parametrize("text, unit, value", [
    ("14.2 V", "V", 14.2), ("200 A", "A", 200.0), ("3 mohm", "ohm", 0.003), ("0.1 V", "mV", 100.0),
    ("30 K", "K", 30.0), ("5 %", "%", 5.0), ("500 us", "s", 500e-6), ("2 s", "ms", 2000.0),
    ("-20 degC", "degC", -20.0), ("1.28 kWh", "Wh", 1280.0), ("100 Ah", "Ah", 100.0),
    ("1 kHz", "Hz", 1000.0), ("3 mΩ", "uohm", 3000.0), ("25 °C", "degC", 25.0), ("14.2V", "V", 14.2),
    ("10 min", "s", 600.0), ("1 h", "min", 60.0), ("50 mJ", "J", 0.05), ("1.5 kW", "W", 1500.0),
    ("1e-3 A", "mA", 1.0), ("2 kA", "A", 2000.0), ("500 mA", "A", 0.5), ("20 uohm", "mohm", 0.02),
])
def test_quantities_parse_and_convert(text: str, unit: str, value: float) -> None:
    assert Quantity.parse(text).to(unit) == pytest.approx(value)


@pytest.mark.parametrize("text, expect, allowed", [
    ("14 V", "A", "a current (A, mA, uA, kA) -- 'V' is a voltage unit"),
    ("30 degC", "K", "a temperature difference (K)"),
    ("300 K", "degC", "an absolute temperature (degC)"),
    ("3 Mohm", "ohm", "a resistance"),
    (200, "A", "e.g. '200 A'"),
    ("A200", "A", "a current"),
    (True, "A", "a current"),
])
def test_quantity_errors_name_the_expected_dimension(text: object, expect: str, allowed: str) -> None:
    with pytest.raises(UnitError) as info:
        Quantity.parse(text, expect)
    assert allowed in info.value.allowed


def test_quantities_compare_only_within_a_dimension() -> None:
    assert Quantity.parse("100 mA") < Quantity.parse("1 A")
    assert Quantity.parse("1000 mV") == Quantity.parse("1 V")
    assert str(Quantity.parse("3 mohm")) == "3 mohm"
    with pytest.raises(TypeError):
        _ = Quantity.parse("1 V") < Quantity.parse("1 A")


@pytest.mark.parametrize("limit, value, verdict", [
    ({"in_range": ["12.0 V", "14.6 V"]}, 13.0, "pass"),
    ({"in_range": ["12.0 V", "14.6 V"]}, 14.7, "fail"),
    ({"in_range": ["12.0 V", "14.6 V"], "marginal_pct": 10}, 14.5, "marginal"),
    ({"le": "0.1 V", "marginal_pct": 20}, 0.09, "marginal"),
    ({"le": "0.1 V"}, 0.095, "pass"),
    ({"le": "3 mohm"}, 0.0031, "fail"),
    ({"ge": "60 V"}, 80, "pass"),
    ({"within_pct": {"nominal": "50 A", "pct": 10}}, 56, "fail"),
    ({"within_pct": {"nominal": "50 A", "pct": "10 %"}}, 54, "pass"),
    ({"equals": 4}, 4, "pass"),
    ({"equals": "2.1.0"}, "2.1.1", "fail"),
    ({"le": "30 K"}, 12, "pass"),
])
def test_limit_verdicts(limit: dict, value: object, verdict: str) -> None:
    """A plan limit is judged by the one judge (harness.measure.Limits.judge), in SI units."""
    assert Limit.model_validate(limit).to_limits().judge(value) == verdict


def test_limit_to_measure_limits_in_base_units() -> None:
    limits = Limit.model_validate({"le": "3 mohm", "marginal_pct": 10}).to_limits()
    assert (limits.kind, limits.high, limits.unit, limits.marginal_pct) == ("le", pytest.approx(0.003),
                                                                              "ohm", 10.0)
    within = Limit.model_validate({"within_pct": {"nominal": "200 A", "pct": 5}}).to_limits()
    assert (within.low, within.high, within.unit) == (pytest.approx(190.0), pytest.approx(210.0), "A")


def test_bad_file_message_is_one_line_with_everything(tmp_path: Path) -> None:
    path = tmp_path / "station.yaml"
    path.write_text(sub(STATION, 'current: "25 A"', 'current: "25 V"'), encoding="utf-8")
    with pytest.raises(FileError) as info:
        load_station(path)
    line = line_with(STATION, 'current: "25 A"')
    assert str(info.value).startswith(f"{path}:{line}: instruments.supply.rating.current: "
                                      "found '25 V'; allowed: a current")


def test_documented_example_in_docstring_is_valid(tmp_path: Path) -> None:
    """The format shown in harness/config/plan.py's docstring loads as written."""
    from harness.config import plan as plan_module

    doc = plan_module.__doc__ or ""
    block = doc.split("Format::", 1)[1].split("\nA limit is", 1)[0]
    (tmp_path / "plan.yaml").write_text(textwrap.dedent(block), encoding="utf-8")
    plan = load_plan(tmp_path / "plan.yaml", {"module_voltage": CHECKS["module_voltage"]})
    assert plan.steps[0].limits["voltage"].kind == "in_range"


# ------------------------------------------------------------------ BANKHIL_REQUIRE_* read alike
@pytest.mark.parametrize("variable", ["BANKHIL_REQUIRE_NGSPICE", "BANKHIL_REQUIRE_POSTGRES",
                                      "BANKHIL_REQUIRE_REPORT_TOOLS"])
@pytest.mark.parametrize("value, expected", [("1", True), ("0", False), ("", False), ("yes", False),
                                             ("true", False), (" 1 ", True)])
def test_require_variables_read_the_same_way(monkeypatch: pytest.MonkeyPatch, variable: str,
                                             value: str, expected: bool) -> None:
    from required_tools import required
    monkeypatch.setenv(variable, value)
    assert required(variable) is expected
