"""Every shipped plan on a CAN-only, a Modbus-only and a CAN+Modbus emulated station: it runs, or
it is refused at validation naming the step and the missing protocol -- never an AttributeError.

The stations are the embedded emulated one with a BMS bus taken away. A plan's requirements are
derived from its steps' checks (``needs``), so validation alone decides; a plan that passes
validation on a reduced station is then run whole there (``hil run``, the real CLI, drivers and
emulated endpoints) and must end without an ERROR step: every protocol a check touched was
declared and present.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bankmodel.files import FileError
from harness.config import load_plan, load_station, validate_run
from test_plans.checks import known_checks
from test_shipped_plans import HEALTHY, shipped_plans
from test_truth_table_parallel import Run, run_in_workers

pytestmark = pytest.mark.long(30)  # every plan accepted on a reduced station, run whole: starts first (tests/conftest.py)

REPO = Path(__file__).resolve().parents[1]
EMULATED = REPO / "fixtures" / "stations" / "emulated.yaml"
BUSES = {"can+modbus": ("can", "modbus"), "can": ("can",), "modbus": ("modbus",)}


def station_with(buses: tuple[str, ...], folder: Path) -> Path:
    """The embedded emulated station with only ``buses`` of its BMS buses."""
    data = yaml.safe_load(EMULATED.read_text(encoding="utf-8"))
    data["bms"] = {bus: spec for bus, spec in data["bms"].items() if bus in buses}
    data["name"] = f"emulated-{'-'.join(buses)}"
    path = folder / f"station_{'_'.join(buses)}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def verdict_of(plan: str, station: Path) -> FileError | None:
    """None if the plan is accepted on the station, else the refusal."""
    checks = known_checks()
    try:
        validate_run(load_plan(REPO / "test_plans" / f"{plan}.yaml", checks), load_station(station),
                     HEALTHY[plan], checks)
    except FileError as err:
        return err
    return None


@pytest.fixture(scope="module")
def stations(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("stations")
    return {kind: station_with(buses, folder) for kind, buses in BUSES.items()}


@pytest.mark.parametrize("plan", shipped_plans())
def test_every_plan_is_accepted_on_the_full_station(plan: str, stations: dict[str, Path]) -> None:
    assert verdict_of(plan, stations["can+modbus"]) is None


def _refusals(stations: dict[str, Path]) -> dict[tuple[str, str], FileError | None]:
    return {(plan, kind): verdict_of(plan, stations[kind]) for plan in shipped_plans() for kind in ("can", "modbus")}


def test_a_refusal_names_the_step_and_the_missing_protocol(stations: dict[str, Path]) -> None:
    refused = {key: err for key, err in _refusals(stations).items() if err is not None}
    assert refused, "a station without a bus should lack something some plan needs"
    for (plan, kind), err in refused.items():
        text = str(err)
        assert "\n" not in text and f"{plan}.yaml:" in text
        assert "step '" in text and "needs protocol '" in text, text
        missing = text.split("needs protocol '")[1].split("'")[0]
        assert missing not in load_station(stations[kind]).protocols()


def test_a_plan_accepted_on_a_reduced_station_runs_without_error(
        stations: dict[str, Path], tmp_path: Path) -> None:
    accepted = [(plan, kind) for (plan, kind), err in _refusals(stations).items() if err is None]
    assert accepted, "some plans need nothing one bus alone cannot give"
    runs = {f"{plan}-{kind}": (plan, kind) for plan, kind in accepted}

    class StationRun(Run):
        def __init__(self, name: str, plan: str, station: Path):
            super().__init__(name, HEALTHY[plan], None, [], plan=plan)
            self.station = station

    table = [StationRun(name, plan, stations[kind]) for name, (plan, kind) in runs.items()]
    outcomes = run_in_workers(tmp_path, table, station_of=lambda run: run.station)  # type: ignore[attr-defined]
    problems = []
    for run in table:
        outcome = outcomes[run.name]
        errors = {step: v for step, v in outcome.steps.items() if v in ("error", "aborted")}
        if ("AttributeError" in outcome.output or "Traceback" in outcome.output or errors
                or outcome.returncode not in (0, 4)):
            problems.append(f"{run.name}: exit {outcome.returncode} {errors}\n{outcome.output[-1500:]}")
    assert not problems, "\n\n".join(problems)
