"""The example stations tell the truth: each runs the plans it says it runs, and no other.

For every example station (fixtures/stations/lab_example.yaml, eol_example.yaml) and EVERY
shipped plan (test_plans/*.yaml), the validation ``hil run`` does before anything is energised
(:func:`harness.config.validate_run`, with the DUT and serial ``hil run`` would take on that
bench; nothing is connected) either accepts the plan or refuses it with one line naming what the
bench lacks. What to expect is :data:`EXPECTED`, and README.md's table under "Example stations
and the plans they run" must say the same.

Two things ``validate_run`` does not judge yet and a real run needs, checked here for the runs
it accepts (so an example cannot pass validation and still stop halfway through a run):

- a step's digitiser is reached by its role name (``parallel_inrush``: ``dmm_shunt`` on a branch
  shunt; ``series_mosfet_stress``: ``dmm_vds`` across a switch), not merely "some DMM";
- the bench reaches ``supply``/``load``/``scanner``/``actuator``/``acir`` by role name
  (:class:`harness.bench.Bench`), while validation accepts the protocol from any role (a DAQ970A
  under ``scanner`` alone "provides" the actuator protocol).
"""

from __future__ import annotations

import copy
import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from bankmodel.files import FileError
from bankmodel.specs.loading import load_bank_spec
from harness.check_registry import known_checks
from harness.config import load_plan, load_station, validate_run
from harness.plugin import _default_dut

REPO = Path(__file__).resolve().parents[1]
STATIONS = REPO / "fixtures" / "stations"
PLANS = REPO / "test_plans"
README = REPO / "README.md"
SECTION = "Example stations and the plans they run"
ON = dt.date(2026, 12, 1)  # calibration is checked against a fixed date, so the test does not age

EXAMPLES = ("lab_example", "eol_example")
RUNS = "runs"


@dataclass(frozen=True)
class Refused:
    """A refusal: the README's short reason, and what the error must name (its field, and a
    fragment of what it found)."""

    reason: str
    field: str
    found: str


def _wrong_dut(reason: str, dut: str) -> Refused:
    """The plan is for another DUT than the one the bench is wired for."""
    return Refused(reason, "applies_to", f"DUT '{dut}'")


def _lab(reason: str) -> Refused:
    return _wrong_dut(reason + "; wired for 1S4P", "1s4p_diagonal")


def _eol(reason: str) -> Refused:
    return _wrong_dut(reason + "; one module (1S1P)", "1s1p")


# plan -> station -> "runs" or the refusal. README.md's table is this, cell for cell.
EXPECTED: dict[str, dict[str, str | Refused]] = {
    "bank_qualification_4s4p": {"lab_example": _lab("4S4P plan"), "eol_example": _eol("4S4P plan")},
    "bank_smoke": {"lab_example": RUNS, "eol_example": _eol("1S4P plan")},
    "commissioning_parallel": {"lab_example": _lab("48 V rack plan"), "eol_example": _eol("48 V rack plan")},
    "eol_module": {"lab_example": _lab("module (1S1P) plan"), "eol_example": RUNS},
    "firmware_degraded_1s4p": {"lab_example": RUNS, "eol_example": _eol("1S4P/4S1P plan")},
    "firmware_qualification": {"lab_example": RUNS, "eol_example": _eol("1S4P/4S1P plan")},
    "module_protection_1s1p": {"lab_example": _lab("module (1S1P) plan"),
                               "eol_example": Refused("no supply", "requires[1]", "role 'supply'")},
    "parallel_bank_1s4p": {"lab_example": RUNS, "eol_example": _eol("1S4P plan")},
    "rack_parallel_48v": {"lab_example": _lab("48 V rack plan"), "eol_example": _eol("48 V rack plan")},
    "series_mosfet_4s4p": {"lab_example": _lab("4S4P plan"), "eol_example": _eol("4S4P plan")},
    "series_string_4s1p": {"lab_example": _lab("4S1P plan"), "eol_example": _eol("4S1P plan")},
    "series_strings_4s2p": {"lab_example": _lab("4S2P plan"), "eol_example": _eol("4S2P plan")},
}

# check -> (its digitiser parameter's default role, the kind of input that role must be wired to)
DIGITISERS = {"parallel_inrush": ("dmm_shunt", "shunt"), "series_mosfet_stress": ("dmm_vds", "voltage")}
# protocols harness.bench.Bench reaches through the role of the same name
BY_ROLE = ("supply", "load", "scanner", "actuator", "acir")


def _cell(outcome: str | Refused) -> str:
    return outcome if isinstance(outcome, str) else outcome.reason


def expected_table() -> str:
    """EXPECTED as the Markdown table README.md carries."""
    lines = ["| plan | " + " | ".join(EXAMPLES) + " |", "|---" * (len(EXAMPLES) + 1) + "|"]
    for plan, row in sorted(EXPECTED.items()):
        lines.append(f"| {plan} | " + " | ".join(_cell(row[s]) for s in EXAMPLES) + " |")
    return "\n".join(lines)


def shipped_plans() -> list[str]:
    return sorted(p.stem for p in PLANS.glob("*.yaml"))


@pytest.fixture(scope="module")
def checks():  # type: ignore[no-untyped-def]
    return known_checks()


def run_validation(station_name: str, plan_name: str, checks, station=None):  # type: ignore[no-untyped-def]
    """What ``hil run <plan> --station <station>`` validates: the station's DUT (what is wired),
    the default serial, every cross-check -- and nothing connected."""
    station = station if station is not None else load_station(STATIONS / f"{station_name}.yaml")
    plan = load_plan(PLANS / f"{plan_name}.yaml", checks)
    dut = load_bank_spec(_default_dut(plan, station))
    serial = f"{dut.dut.serial_prefix}{dut.dut.batch}"
    return validate_run(plan, station, dut, checks, serial=serial, on=ON)


# ------------------------------------------------------------------------------ the table
def test_every_shipped_plan_has_an_expected_outcome_on_every_example() -> None:
    assert sorted(EXPECTED) == shipped_plans(), (
        "test_plans/ and EXPECTED differ: add the new plan's outcome on each example station "
        "(and the row of README.md's table)")
    for plan, row in EXPECTED.items():
        assert sorted(row) == sorted(EXAMPLES), plan


@pytest.mark.parametrize("station_name", EXAMPLES)
@pytest.mark.parametrize("plan_name", shipped_plans())
def test_validation_runs_or_refuses_as_the_table_says(station_name: str, plan_name: str, checks) -> None:  # type: ignore[no-untyped-def]
    expected = EXPECTED.get(plan_name, {}).get(station_name)
    assert expected is not None, f"no expected outcome for {plan_name} on {station_name}"
    if expected == RUNS:
        config = run_validation(station_name, plan_name, checks)
        assert config.plan.name == plan_name
        return
    assert isinstance(expected, Refused)
    with pytest.raises(FileError) as info:
        run_validation(station_name, plan_name, checks)
    err = info.value
    assert "\n" not in str(err), str(err)
    assert err.field == expected.field and expected.found in err.found, str(err)
    assert Path(err.path).name == f"{plan_name}.yaml", str(err)  # the plan's line is the one to read


def _readme_table() -> dict[str, dict[str, str]] | None:
    """The table under the README heading SECTION: plan -> station -> cell (None: no section)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next((i for i, line in enumerate(lines)
                  if line.lstrip().startswith("#") and SECTION.lower() in line.lower()), None)
    if start is None:
        return None
    rows: list[list[str]] = []
    for line in lines[start + 1:]:
        if line.lstrip().startswith("#"):
            break
        if line.strip().startswith("|"):
            rows.append([c.strip().strip("`").strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            break  # the first table only
    if not rows:
        return {}
    header, body = rows[0], [r for r in rows[1:] if not all(re.fullmatch(r":?-+:?", c) for c in r)]
    assert [h.lower() for h in header] == ["plan", *EXAMPLES], f"README table header: {header}"
    table: dict[str, dict[str, str]] = {}
    for row in body:
        assert len(row) == len(header), f"README table row {row}"
        table[row[0]] = dict(zip(EXAMPLES, row[1:]))
    return table


def test_readme_table_says_what_validation_does() -> None:
    table = _readme_table()
    if table is None:
        pytest.fail(f"README.md has no section titled '{SECTION}' yet; it should carry this table:\n\n"
                    + expected_table())
    expected = {plan: {s: _cell(row[s]) for s in EXAMPLES} for plan, row in EXPECTED.items()}
    assert table == expected, ("README.md's table under '" + SECTION + "' differs from the "
                               "validation's outcomes; it should read:\n\n" + expected_table())


# ------------------------------------------------------------------------------ beyond validate_run
@pytest.mark.parametrize("station_name", EXAMPLES)
def test_accepted_runs_find_every_role_and_digitiser_by_name(station_name: str, checks) -> None:  # type: ignore[no-untyped-def]
    station = load_station(STATIONS / f"{station_name}.yaml")
    cmap = station.channel_map
    for plan_name, row in EXPECTED.items():
        if row[station_name] != RUNS:
            continue
        plan = run_validation(station_name, plan_name, checks, station).plan
        for step in plan.steps:
            for protocol in sorted(set(step.needs) & set(BY_ROLE)):
                assert protocol in station.instruments, (
                    f"{plan_name} step '{step.name}' needs '{protocol}': the bench reaches it by that "
                    f"role name, which {station_name} lacks")
            if step.check in DIGITISERS:
                default, kind = DIGITISERS[step.check]
                role = str(plan.parameters_for(step).get("dmm", default))
                assert role in station.instruments, f"{plan_name} step '{step.name}': no '{role}' on {station_name}"
                wired = cmap.dmm.get(role)
                assert wired is not None and wired.kind == kind, (
                    f"{plan_name} step '{step.name}': {role} must be wired to a {kind} in channels.dmm")


def test_the_shunt_digitiser_uses_a_range_a_shunt_can_fill() -> None:
    """A 50 uohm shunt gives 5 mV at 100 A: on the 34465A's default 100 V range that is noise."""
    station = load_station(STATIONS / "lab_example.yaml")
    dmm = station.instruments["dmm_shunt"]
    assert dmm.driver == "keysight_34465a" and dmm.options.get("digitise_range_v") in (0.1, 1.0)


@pytest.mark.parametrize("station_name", EXAMPLES)
def test_examples_are_real_benches_with_documentation_addresses(station_name: str) -> None:
    text = (STATIONS / f"{station_name}.yaml").read_text(encoding="utf-8")
    station = load_station(STATIONS / f"{station_name}.yaml")
    assert not station.emulated and station.resolved and station.dut
    assert all(i.calibration_due is not None and i.calibration_due > ON for i in station.instruments.values())
    assert all(i.model for i in station.instruments.values())
    hosts = re.findall(r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b", text)
    assert hosts and all(h.startswith("192.0.2.") for h in hosts), hosts
    comments = [line for line in text.splitlines() if line.strip().startswith("#")]
    assert len(comments) >= 20
    # the header lists every shipped plan, as run or not
    for plan in shipped_plans():
        assert re.search(rf"^#\s+(runs|not)\s+{plan}\b", text, re.M), f"{plan} not in {station_name}'s header"


def test_eol_example_holds_what_eol_module_needs_and_nothing_more(tmp_path: Path, checks) -> None:  # type: ignore[no-untyped-def]
    station = load_station(STATIONS / "eol_example.yaml")
    assert set(station.instruments) == {"load", "scanner", "actuator", "acir"}
    assert station.bms.can is not None and station.bms.can.interface in ("pcan", "kvaser")
    assert station.bms.modbus is not None
    base = yaml.safe_load((STATIONS / "eol_example.yaml").read_text(encoding="utf-8"))
    # each of these taken away, validation refuses eol_module (the actuator and the CAN bus are
    # held by the by-role check above and by the plan's CAN-only figures: validation accepts a
    # DAQ970A's relays under 'scanner', and SunSpec alone for the 'bms' protocol)
    for gone in ("load", "scanner", "acir", "modbus"):
        document = copy.deepcopy(base)
        if gone == "modbus":
            del document["bms"]["modbus"]
        else:
            entry = document["instruments"].pop(gone)
            if gone == "acir":
                del document["channels"]["acir_module"]
            if gone == "scanner":
                del document["channels"]["scanner"]
                document["instruments"]["actuator"]["cards"] = entry["cards"]
        path = tmp_path / f"without_{gone}.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        with pytest.raises(FileError):
            run_validation("eol_example", "eol_module", checks, load_station(path))
