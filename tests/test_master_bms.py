"""Master BMS behaviour (004): admission, aggregation, comm loss; good vs candidate firmware."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bankmodel.specs.loading import load_bank_spec
from emulator.twin import Twin


def twin_with(dut: str, firmware: str = "good", **dut_updates) -> Twin:  # type: ignore[no-untyped-def]
    spec = load_bank_spec(dut)
    from bankmodel.specs.firmware import FirmwareProfile
    from bankmodel.specs.loading import FIXTURES
    from bankmodel.files import load_model
    profile = load_model(FirmwareProfile, FIXTURES / "firmware" / f"{firmware}.yaml")
    spec = replace(spec, firmware=profile, dut=spec.dut.model_copy(update=dut_updates))
    return Twin(spec)


def run_with_heartbeat(twin: Twin, seconds: float, heartbeat: bool = True) -> None:
    for _ in range(int(seconds)):
        if heartbeat:
            twin.inverter_heartbeat()
        twin.advance(1.0)


def test_healthy_bank_reports_full_limits_and_capacity():
    twin = twin_with("1s4p_diagonal")
    run_with_heartbeat(twin, 3)
    r = twin.master.report
    assert r.modules_online == 4 and r.modules_pending == 0
    assert r.online_capacity_ah == pytest.approx(400)
    assert r.charge_current_limit_a == pytest.approx(400)
    assert r.discharge_current_limit_a == pytest.approx(400)
    assert r.charge_voltage_limit_v == pytest.approx(14.2)


def test_series_bank_limits_come_from_the_weakest_position():
    twin = twin_with("4s4p")
    run_with_heartbeat(twin, 2)
    r = twin.master.report
    assert r.charge_voltage_limit_v == pytest.approx(56.8)
    assert r.discharge_current_limit_a == pytest.approx(400)
    assert r.installed_capacity_ah == pytest.approx(400)


@pytest.mark.parametrize("firmware, expect_zero", [("good", True), ("candidate", False)])
def test_heartbeat_loss(firmware, expect_zero):
    """Good firmware zeroes its limits within its timeout; the candidate keeps the last ones."""
    twin = twin_with("1s4p_diagonal", firmware)
    run_with_heartbeat(twin, 5)
    assert twin.master.report.discharge_current_limit_a > 0
    run_with_heartbeat(twin, 7, heartbeat=False)   # timeout is 5 s in both profiles
    r = twin.master.report
    assert r.heartbeat_lost
    assert (r.discharge_current_limit_a == 0) is expect_zero
    assert (r.charge_current_limit_a == 0) is expect_zero
    run_with_heartbeat(twin, 2)                     # the inverter comes back
    assert not twin.master.report.heartbeat_lost
    assert twin.master.report.discharge_current_limit_a == pytest.approx(400)


@pytest.mark.parametrize("firmware, expect_capacity", [("good", 300), ("candidate", 400)])
def test_silent_module_drops_out_of_the_totals(firmware, expect_capacity):
    """004: capacity = sum of online modules; the candidate keeps counting a silent one."""
    twin = twin_with("1s4p_diagonal", firmware)
    run_with_heartbeat(twin, 2)
    twin.silent[3] = True
    run_with_heartbeat(twin, 5)  # slave timeout 3 s
    r = twin.master.report
    assert r.modules_offline == 1 and r.offline == ["s1p4"]
    assert r.online_capacity_ah == pytest.approx(expect_capacity)
    assert r.comm_alarm


def test_mismatched_module_stays_pending_until_close_then_counts():
    """004: a module with too large a voltage difference stays pending, is admitted once close.

    The master compares the module's reported voltage with its accepted peers', at rest only (under
    load their I*R drop would hide the difference), so loading the bank never admits it early.
    """
    twin = twin_with("1s4p_diagonal")
    twin.set_module_soc("s1p4", 2.0)       # far below its 50 % peers: ~ -0.6 V
    twin.power_up_sync()
    run_with_heartbeat(twin, 3)
    r = twin.master.report
    assert r.pending == ["s1p4"]
    assert r.online_capacity_ah == pytest.approx(300)
    assert twin.fet_state("s1p4") == "off"
    assert abs(twin.shunt_current("s1p4")) < 0.01
    # discharge the bank towards the pending module's voltage; the master compares at rest
    twin.set_load(300)
    for _ in range(60):
        twin.load_input(True)
        twin.advance(60.0)
        twin.load_input(False)
        run_with_heartbeat(twin, 30)
        if not twin.master.report.pending:
            break
    assert twin.master.report.pending == []
    r = twin.master.report
    assert r.pending == []
    assert r.online_capacity_ah == pytest.approx(400)
    assert any("s1p4 admitted" in what for _, what in twin.master.events)


def test_firmware_mismatch_is_excluded_and_reduces_capacity():
    twin = twin_with("1s4p_diagonal")
    twin.firmware["s1p2"] = "1.9.0"
    twin.power_up_sync()
    run_with_heartbeat(twin, 3)
    r = twin.master.report
    assert r.excluded == ["s1p2"]
    assert r.online_capacity_ah == pytest.approx(300)
