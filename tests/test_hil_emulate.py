"""`hil emulate` as a separate process: real drivers reach it over loopback; it stops cleanly.

This is the cross-process path a lab uses: the emulated bench runs on its own, writes a station
file, and a VISA tool, python-can (socketcand) and a Modbus client talk to it as to hardware.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import can
import pytest
import yaml

from emulator.endpoints.scpi.models import model
from instruments.drivers import get_driver

REPO = Path(__file__).resolve().parents[1]


def _start(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, dict]:
    station_path = tmp_path / "station.yaml"
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "emulate", "--dut", "1s4p_diagonal",
         "--speed", "10", "--write-station", str(station_path), *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if station_path.exists() and station_path.stat().st_size > 0:
            time.sleep(0.3)
            return proc, yaml.safe_load(station_path.read_text())
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    out, err = proc.communicate()
    pytest.fail(f"hil emulate did not write its station file\n{out}\n{err}")


def _stop(proc: subprocess.Popen, sig: int) -> tuple[int, str, str]:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    return proc.returncode, out, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_emulate_serves_drivers_and_stops_on_signal(tmp_path, sig):
    proc, station = _start(tmp_path)
    try:
        assert station["emulated"] is False  # a running bench: real endpoints, wall clock
        for role in ("supply", "load", "scanner", "actuator", "acir", "dmm_vds", "dmm_shunt"):
            assert station["instruments"][role]["resource"].startswith("TCPIP0::127.0.0.1::")
        # the station's supply and load are IT6000C units, one per role (``mode`` source/sink);
        # the ratings given the drivers here are within the models the station file names
        supply_cfg = station["instruments"]["supply"]
        supply_rating = {"voltage_v": 20, "current_a": 100}
        assert model(supply_cfg["model"]).serves(supply_rating["voltage_v"], supply_rating["current_a"])
        supply = get_driver(supply_cfg["driver"])(supply_cfg["resource"], "supply", rating=supply_rating,
                                                  options=supply_cfg.get("options"))
        load_cfg = station["instruments"]["load"]
        load_rating = {"voltage_v": 24, "current_a": 240}
        assert model(load_cfg["model"]).serves(load_rating["voltage_v"], load_rating["current_a"])
        load = get_driver(load_cfg["driver"])(load_cfg["resource"], "load", rating=load_rating,
                                              options=load_cfg.get("options"))
        try:
            assert supply.identity().startswith(f"ITECH Ltd.,{supply_cfg['model']},")
            assert supply_cfg["model"].startswith("IT60") and supply_cfg["options"] == {"mode": "source"}
            assert load_cfg["options"] == {"mode": "sink"}
            load.set_current(20.0)
            load.input(True)
            time.sleep(1.0)
            assert load.measure_current() == pytest.approx(20.0, abs=0.5)
            assert 12.0 < load.measure_voltage() < 14.0
        finally:
            supply.close()
            load.close()
        cfg = station["bms"]["can"]
        bus = can.Bus(interface="socketcand", host=cfg["host"], port=cfg["port"], channel=cfg["channel"])
        try:
            seen = set()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not {0x351, 0x355} <= seen:
                msg = bus.recv(timeout=0.5)
                if msg is not None:
                    seen.add(msg.arbitration_id)
            assert 0x351 in seen and 0x355 in seen
        finally:
            bus.shutdown()
        from harness.config import load_station
        assert load_station(tmp_path / "station.yaml").name == "emulated-1s4p_diagonal"
    finally:
        code, out, err = _stop(proc, sig)
    assert code == 0, err
    assert "stopped: load and supply off" in out
    assert "Traceback" not in err


def test_emulate_rejects_a_bad_dut_with_exit_2(tmp_path):
    bad = tmp_path / "duts" / "bad.yaml"
    bad.parent.mkdir()
    bad.write_text("name: bad\nmodule_type: lfp_12v8_100ah\nseries: 0\nparallel: 1\n")
    result = subprocess.run([sys.executable, "-m", "harness.cli", "emulate", "--dut", str(bad)],
                            cwd=REPO, capture_output=True, text=True, timeout=60,
                            env={**os.environ})
    assert result.returncode == 2
    assert f"{bad}:3: series" in result.stderr
    assert "Traceback" not in result.stderr
