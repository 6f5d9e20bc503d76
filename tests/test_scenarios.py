"""Every fault scenario in fixtures/scenarios/ applies to every DUT in fixtures/duts/.

A scenario names its targets by role (first/middle/last), so each one composes with any DUT:
the twin builds and advances. A combination that is physically impossible must be refused with
a FileError naming the scenario's line -- never a crash -- and is listed in REFUSED.
"""

from __future__ import annotations

import emulator  # noqa: F401  (one BLAS thread, before numpy: see emulator/__init__.py)

import math
import re
from pathlib import Path

import numpy as np
import pytest

from bankmodel.specs.loading import FIXTURES, load_bank_spec
from bankmodel.specs.scenario import ScenarioFile
from bankmodel.files import FileError, load_model
from emulator.twin import Twin

SCENARIOS = sorted((FIXTURES / "scenarios").glob("*.yaml"))
DUTS = sorted((FIXTURES / "duts").glob("*.yaml"))
SEEDS = sorted(p.name for p in (Path(__file__).resolve().parents[2] / "shared" / "seeds").glob("*.txt"))

# (scenario stem, DUT stem) pairs that must be refused. None today: on a 1S1P or a 4S1P the
# "last branch" of unequal_cable, blown_fuse and stuck_contactor is the only string, which is
# a real (if drastic) fault, not an impossible one.
REFUSED: set[tuple[str, str]] = set()

EXPECTED = {"healthy", "soc_mismatch", "ocv_mismatch_0v2", "aged_module", "loose_lug",
            "unequal_cable", "weak_fet_series", "firmware_mismatch", "silent_module",
            "heartbeat_loss", "stuck_contactor", "blown_fuse", "hot_module", "label_serial_mismatch",
            "hung_acir"}


# faults of the bench, not of the DUT: no source document describes them
BENCH_FAULTS = {"hung_instrument"}


def test_the_scenario_set() -> None:
    assert {p.stem for p in SCENARIOS} == EXPECTED


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_file_is_valid_named_and_sourced(path: Path) -> None:
    scenario = load_model(ScenarioFile, path)
    assert scenario.name == path.stem
    assert scenario.description
    assert (len(scenario.faults) == 0) == (path.stem == "healthy")
    text = path.read_text(encoding="utf-8")
    comment = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    cited = set(re.findall(r"\b(00[0-9])\b", comment))
    bench_only = bool(scenario.faults) and all(f.kind in BENCH_FAULTS for f in scenario.faults)
    assert cited or bench_only, f"{path.name} cites no source document"
    if SEEDS:  # the seeds live beside the repository, in ../shared/seeds/
        assert cited <= {name[:3] for name in SEEDS}, cited
    for fault in scenario.faults:  # composable: roles, never positions
        for field in ("module", "branch", "contactor", "terminal"):
            target = getattr(fault, field, None)
            if target is not None:
                assert target.split(".")[0] in ("first", "middle", "last"), (path.name, target)


@pytest.mark.parametrize("dut", DUTS, ids=[p.stem for p in DUTS])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_applies_to_dut(scenario: Path, dut: Path) -> None:
    if (scenario.stem, dut.stem) in REFUSED:
        with pytest.raises(FileError) as err:
            Twin(load_bank_spec(dut, scenario))
        assert str(scenario) in str(err.value)
        return
    twin = Twin(load_bank_spec(dut, scenario))
    twin.inverter_heartbeat()
    twin.advance(1.0)
    assert twin.clock.now == pytest.approx(1.0)
    assert math.isfinite(twin.terminal_voltage)
    assert np.all(np.isfinite(twin.branch_v)) and np.all(np.isfinite(twin.branch_i))
    soc = twin.soc()
    assert np.all((soc >= 0) & (soc <= 1))
    # at rest nothing leaves the bank: the branch currents add up to zero
    assert sum(twin.branch_currents().values()) == pytest.approx(0.0, abs=1e-3)


def _twin(scenario: str, dut: str = "4s4p") -> Twin:
    return Twin(load_bank_spec(dut, scenario))


def test_each_fault_lands_where_it_says() -> None:
    """On a 4S4P (roles: first s1p1, middle s3p1, last s4p4) each fault changes its target."""
    healthy = _twin("healthy")
    k_first, k_mid, k_last = (healthy.module_index[m] for m in ("s1p1", "s3p1", "s4p4"))

    twin = _twin("soc_mismatch")
    assert twin.soc()[k_last] == pytest.approx(0.70) and twin.soc()[k_first] == pytest.approx(0.50)
    twin = _twin("ocv_mismatch_0v2")
    assert healthy.ocv()[k_last] - twin.ocv()[k_last] == pytest.approx(0.2, abs=0.01)
    twin = _twin("aged_module")
    assert twin.cell_capacity_as[k_mid].max() == pytest.approx(0.8 * healthy.cell_capacity_as[k_mid].max())
    assert twin.r_series[k_mid] == pytest.approx(1.6 * healthy.r_series[k_mid])
    twin = _twin("weak_fet_series")
    assert twin.fet_rating_v[k_first] == 40.0 and twin.fet_rating_v[k_last] == 80.0
    twin = _twin("firmware_mismatch")
    assert twin.firmware["s4p4"] == "1.9.0" and twin.firmware["s1p1"] == twin.spec.firmware.version
    twin = _twin("stuck_contactor")
    twin.set_contactor("s4p4", False)
    assert twin.contactor_closed["s4p4"] is True  # welded: the open command does nothing
    twin = _twin("blown_fuse")
    assert twin.fuse_blown["s4p4"] and not twin.fuse_blown["s4p3"]
    twin = _twin("hot_module")
    assert twin.thermocouple("s3p1") == pytest.approx(50.0) and twin.thermocouple("s1p1") == 25.0
    twin = _twin("loose_lug")
    lugs = [e.parts["lug_module"] for e in twin.layout.resistive
            if e.heat_to.get("lug_module") == "s4p4.+"]
    assert lugs == [pytest.approx(0.5e-3)]
    twin = _twin("unequal_cable")
    lead = {e.name: e.parts.get("cable") for e in twin.layout.resistive}
    lead_h = {e.name: e.parts.get("cable") for e in healthy.layout.resistive}
    for name in ("s4p4.lead+", "s4p4.lead-"):
        assert lead[name] / lead_h[name] == pytest.approx((0.8 + 0.15) / 0.8)
    assert lead["s4p3.lead+"] == lead_h["s4p3.lead+"]


def test_timed_faults_fire_at_their_time() -> None:
    twin = _twin("silent_module", "1s4p_diagonal")
    for second in range(26):
        twin.inverter_heartbeat()
        twin.advance(1.0)
    assert twin.master.report.offline == ["s1p3"]  # middle of four; silent from 20 s, 3 s timeout
    twin = _twin("heartbeat_loss", "1s1p")
    for second in range(37):
        twin.inverter_heartbeat()
        twin.advance(1.0)
    assert twin.master.report.heartbeat_lost  # deaf from 30 s, 5 s timeout


def test_an_impossible_target_is_a_file_error(tmp_path: Path) -> None:
    """A position the DUT lacks is refused with the scenario's file and line, not a crash."""
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nfaults:\n  - kind: aged_module\n    module: s2p1\n")
    with pytest.raises(FileError) as err:
        Twin(load_bank_spec("1s4p_diagonal", path))
    assert str(err.value).startswith(f"{path}:4: faults[0].module: found 's2p1'")
