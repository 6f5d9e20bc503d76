"""``hil simulate``: the JSON report, the CSV time series, determinism, and faults in the physics.

Most runs call ``harness.cli.main`` in-process (the interpreter start costs more than a short
run); one goes through ``python -m harness.cli`` to cover the entry point.
"""

from __future__ import annotations

import emulator  # noqa: F401  (one BLAS thread, before numpy: see emulator/__init__.py)

import contextlib
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bankmodel.specs.loading import FIXTURES, load_bank_spec
from emulator.simulate import load_program, resolve_program
from emulator.twin import Twin
from harness.cli import main

REPO = Path(__file__).resolve().parents[1]
DUTS = sorted(p.stem for p in (FIXTURES / "duts").glob("*.yaml"))
PROGRAMS = sorted(p.stem for p in (FIXTURES / "programs").glob("*.yaml"))


def simulate(capsys, *args: str) -> dict:  # type: ignore[no-untyped-def]
    code = main(["simulate", *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err == ""
    return json.loads(out)


def write_program(tmp_path: Path, name: str, steps: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nsteps:\n{steps}", encoding="utf-8")
    return str(path)


# ------------------------------------------------------------------ the command line itself
def test_help_lists_the_subcommands(capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: hil" in out and "simulate" in out and "run" in out and "emulate" in out


def test_entry_point_runs_as_a_module(tmp_path: Path) -> None:
    program = write_program(tmp_path, "short", "  - {kind: load, c_rate: 0.2, seconds: 2}\n")
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "simulate", "--dut", "1s1p",
                           "--program", program], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["program"] == "short" and report["time_s"] == 2.0
    assert report["load"]["current_a"] == pytest.approx(20.0, rel=1e-6)


# ------------------------------------------------------------------ the JSON report
def test_default_run_report_fields(capsys) -> None:  # type: ignore[no-untyped-def]
    r = simulate(capsys, "--dut", "1s4p_same_side")
    modules = ["s1p1", "s1p2", "s1p3", "s1p4"]
    assert (r["dut"], r["scenario"], r["program"], r["seed"]) == ("1s4p_same_side", "healthy",
                                                                "default", 0)
    assert r["bank"]["voltage_v"] == pytest.approx(12.8)
    assert r["bank"]["capacity_ah"] == pytest.approx(400.0)
    assert r["bank"]["energy_kwh"] == pytest.approx(5.12)
    assert r["time_s"] == pytest.approx(130.0)
    assert [s["kind"] for s in r["steps"]] == ["rest", "load", "rest"]
    assert r["steps"][1]["what"] == "load 200 A for 60 s"  # 0.5C of 400 Ah
    assert set(r["branch_currents_a"]) == set(modules)
    assert 12.5 < r["terminal_voltage_v"] < 13.5
    assert {"bank+", "s1p1.+", "s1p1.P-", "s1p4.+", "s1p4.P-"} <= set(r["node_voltages_v"])
    for key in ("soc_pct", "temperature_c", "fet_state", "vds_v", "module_terminal_v"):
        assert set(r[key]) == set(modules), key
    assert all(40 < soc < 50 for soc in r["soc_pct"].values())  # 60 s at 0.5C: ~0.8 % each
    assert set(r["fet_state"].values()) == {"on"}
    assert all(25.0 <= t < 30.0 for t in r["temperature_c"].values())
    peaks = r["peaks"]
    assert set(peaks) >= {"current_a", "vds_v", "avalanche_energy_j"}
    # same-side take-off: the module nearest the take-off carries the most (DOMAIN.md 3)
    branch_peaks = [peaks["current_a"][m] for m in modules]
    assert branch_peaks == sorted(branch_peaks, reverse=True)
    assert peaks["current_a"]["main"] == pytest.approx(200.0, rel=1e-3)
    assert r["master"]["online_capacity_ah"] == pytest.approx(400.0)
    assert r["master"]["counted"] == modules
    assert [e["what"] for e in r["events"]][:2] == ["load setpoint", "load input on"]
    assert r["energy_j"]["load_out"] == pytest.approx(200 * 12.6 * 60, rel=0.05)


def test_bank_rating_of_every_dut(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    program = write_program(tmp_path, "blink", "  - {kind: rest, seconds: 0.5}\n")
    expected = {"1s1p": (12.8, 100, 1.28), "1s4p_diagonal": (12.8, 400, 5.12),
                "1s4p_same_side": (12.8, 400, 5.12), "4s1p": (51.2, 100, 5.12),
                "4s4p": (51.2, 400, 20.48), "rack_48v_3p": (51.2, 300, 15.36)}
    assert set(expected) == set(DUTS)
    for dut, (volts, amp_hours, kwh) in expected.items():
        bank = simulate(capsys, "--dut", dut, "--program", program)["bank"]
        assert (bank["voltage_v"], bank["capacity_ah"], bank["energy_kwh"]) == pytest.approx(
            (volts, amp_hours, kwh)), dut


@pytest.mark.parametrize("dut", DUTS)
def test_every_program_resolves_on_every_dut(dut: str) -> None:
    """Shipped programs name roles, not positions: each one fits each DUT."""
    twin = Twin(load_bank_spec(dut))
    for name in PROGRAMS:
        program, path = load_program(name)
        actions = resolve_program(twin, program, path)
        assert len(actions) == len(program.steps)


# ------------------------------------------------------------------ CSV and determinism
def test_csv_time_series(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "run.csv"
    r = simulate(capsys, "--dut", "1s4p_diagonal", "--csv", str(path), "--sample-s", "5")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(row["time_s"]) for row in rows] == pytest.approx([5.0 * k for k in range(27)])
    columns = set(rows[0])
    assert {"time_s", "terminal_v", "load_a", "supply_a"} <= columns
    for m in ("s1p1", "s1p4"):
        assert {f"i_{m}_a", f"soc_{m}_pct", f"temp_{m}_c", f"vds_{m}_v"} <= columns
    by_time = {float(row["time_s"]): row for row in rows}
    assert float(by_time[5.0]["load_a"]) == pytest.approx(0.0, abs=1e-3)
    assert float(by_time[40.0]["load_a"]) == pytest.approx(200.0, rel=1e-6)
    branch_sum = sum(float(by_time[40.0][f"i_s1p{p}_a"]) for p in range(1, 5))
    assert branch_sum == pytest.approx(-200.0, rel=1e-3)  # + = charging
    socs = [float(row["soc_s1p1_pct"]) for row in rows]
    assert socs[0] == pytest.approx(50.0) and socs[-1] < socs[0]
    assert float(rows[-1]["soc_s1p1_pct"]) == pytest.approx(r["soc_pct"]["s1p1"], abs=1e-6)


def test_same_seed_same_output_and_csv_changes_nothing(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    outputs, csvs = [], []
    for k in range(2):
        path = tmp_path / f"run{k}.csv"
        main(["simulate", "--dut", "1s4p_diagonal", "--scenario", "soc_mismatch", "--seed", "7",
              "--csv", str(path)])
        outputs.append(capsys.readouterr().out)
        csvs.append(path.read_text())
    assert outputs[0] == outputs[1]
    assert csvs[0] == csvs[1]
    # the default 1 s sampling lands on the heartbeat grid: recording does not move the steps
    main(["simulate", "--dut", "1s4p_diagonal", "--scenario", "soc_mismatch", "--seed", "7"])
    assert capsys.readouterr().out == outputs[0]


# ------------------------------------------------------------------ faults move the physics
def test_soc_mismatch_circulates_current_at_rest(capsys) -> None:  # type: ignore[no-untyped-def]
    """004: "modules exchange current at rest" when SOC/voltage are mismatched."""
    healthy = simulate(capsys, "--dut", "1s4p_diagonal", "--scenario", "healthy")
    faulty = simulate(capsys, "--dut", "1s4p_diagonal", "--scenario", "soc_mismatch")
    assert healthy["load"]["on"] is False and faulty["load"]["on"] is False
    assert max(abs(i) for i in healthy["branch_currents_a"].values()) < 0.5
    currents = faulty["branch_currents_a"]
    assert currents["s1p4"] < -3.0  # the fuller module discharges into the others ...
    assert all(currents[m] > 1.0 for m in ("s1p1", "s1p2", "s1p3"))  # ... which charge
    assert sum(currents.values()) == pytest.approx(0.0, abs=0.05)  # nothing leaves the bank
    assert faulty["soc_pct"]["s1p4"] > faulty["soc_pct"]["s1p1"] + 10


def test_unequal_cable_shifts_the_share(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """000: +15 cm on one module's leads changes its share (~2 % at 200 A)."""
    program = write_program(tmp_path, "load10", "  - {kind: load, c_rate: 0.5, seconds: 10}\n")
    healthy = simulate(capsys, "--dut", "1s4p_diagonal", "--program", program)
    longer = simulate(capsys, "--dut", "1s4p_diagonal", "--scenario", "unequal_cable",
                      "--program", program)
    share_h = healthy["branch_currents_a"]["s1p4"] / -200.0
    share_l = longer["branch_currents_a"]["s1p4"] / -200.0
    assert share_l < share_h
    assert 0.005 < (share_h - share_l) / share_h < 0.10


def test_heartbeat_off_zeroes_the_limits(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Good firmware: no inverter keep-alive for > 5 s -> limits zeroed, alarm (004)."""
    steps = ("  - {kind: rest, seconds: 3}\n"
             "  - {kind: heartbeat, enabled: false, seconds: %s}\n")
    kept = simulate(capsys, "--dut", "1s1p", "--program",
                    write_program(tmp_path, "hb_short", steps % 3))
    lost = simulate(capsys, "--dut", "1s1p", "--program",
                    write_program(tmp_path, "hb_long", steps % 8))
    assert kept["master"]["heartbeat_lost"] is False
    assert kept["master"]["discharge_current_limit_a"] == pytest.approx(100.0)
    assert lost["master"]["heartbeat_lost"] is True
    assert lost["master"]["discharge_current_limit_a"] == 0.0
    assert lost["master"]["comm_alarm"] is True


def test_charge_and_discharge_steps(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    charged = simulate(capsys, "--dut", "4s1p", "--program", write_program(
        tmp_path, "charge", "  - {kind: charge, cell_voltage_v: 3.55, c_rate: 0.5, seconds: 30}\n"))
    assert charged["supply"]["setpoint_v"] == pytest.approx(16 * 3.55)
    assert charged["supply"]["region"] == "cc"
    assert charged["supply"]["current_a"] == pytest.approx(50.0, rel=1e-6)
    assert charged["branch_currents_a"]["p1"] == pytest.approx(50.0, rel=1e-4)
    assert all(s > 50.0 for s in charged["soc_pct"].values())
    cut = simulate(capsys, "--dut", "1s1p", "--program", write_program(
        tmp_path, "cut", "  - {kind: discharge, current_a: 50, seconds: 600, until_voltage_v: 12.9}\n"))
    assert cut["steps"][0]["stopped_early"] is True
    assert cut["time_s"] < 600


def test_weak_fet_in_series_fails_short(capsys) -> None:  # type: ignore[no-untyped-def]
    """000: a 12 V-class BMS (40 V MOSFETs) in a 4S string sees ~52 V when it opens: it fails."""
    r = simulate(capsys, "--dut", "4s1p", "--scenario", "weak_fet_series",
                 "--program", "series_fet_open")
    assert r["fet_state"]["s1p1"] == "failed_short"
    assert r["peaks"]["avalanche_energy_j"]["s1p1"] >= 2.0
    assert any("s1p1 MOSFET failed short" in e["what"] for e in r["events"])
    # failed short, the string carries the load again during the hold
    assert r["steps"][3]["peak_branch_current_a"] == pytest.approx(100.0, rel=1e-3)


@pytest.fixture(scope="module")
def healthy_series_fet_open() -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["simulate", "--dut", "4s1p", "--scenario", "healthy",
                     "--program", "series_fet_open"]) == 0
    return json.loads(out.getvalue())


def test_series_rated_fet_blocks(healthy_series_fet_open: dict) -> None:
    """000: an 80 V board blocks the string: off afterwards, Vds never above its rating."""
    r = healthy_series_fet_open
    rating = r["peaks"]["vds_rating_v"]["s1p1"]
    assert rating == 80.0
    assert r["fet_state"]["s1p1"] == "off"
    assert not any("failed" in e["what"] for e in r["events"])
    assert r["peaks"]["avalanche_energy_j"]["s1p1"] < 0.05 * 5.0  # far below its 5 J rating
    hold = r["steps"][3]  # load kept on with the switch open
    assert hold["peak_branch_current_a"] < 0.01
    # the open switch holds the rest of the string: sum of OCVs minus the bus (~52 V, DOMAIN.md 3)
    assert 45.0 < hold["peak_vds_v"] < rating
    # the turn-off kick of the loop inductance is clamped by the board's TVS below the rating
    assert r["steps"][2]["peak_vds_v"] > hold["peak_vds_v"]
    assert r["peaks"]["vds_v"]["s1p1"] < rating
