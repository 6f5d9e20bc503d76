"""Cross-checks between a plan, a station and a DUT, before anything is energised.

Each file can be valid on its own and the run still be wrong: a plan for 12.8 V modules pointed
at a 4S4P bank, a step that needs an AC-IR meter on a bench without one, 200 A asked of a load
rated 120 A, a channel map wired for a 4P bank on a 1P DUT, an instrument past its calibration
date. :func:`validate_run` finds these and raises :class:`~bankmodel.files.FileError` pointing at
the line to change (the plan's setpoint, the station's rating, ...), naming the other file's line
where that helps.

What the DUT can put across an instrument is taken from its module type: cells in series times
the cell over-voltage threshold (a BMS that works lets a module go no higher), times modules in
series for instruments across the bank; the AC-IR meter only ever touches one module.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bankmodel.positions import POSITION, STRING
from bankmodel.specs.loading import BankSpec, load_bank_spec
from harness.config import today as _today
from harness.config.plan import PlanFile, load_plan
from harness.config.station import StationFile, load_station

TOPOLOGY = re.compile(r"^(\d+)S(\d+)P$", re.I)
MODULE_ROLES = {"acir"}  # roles that see one module's voltage, not the bank's


@dataclass(frozen=True)
class RunConfig:
    """Everything a run is built from, validated together."""

    plan: PlanFile
    station: StationFile
    bank: BankSpec


def dut_max_voltage(bank: BankSpec, whole_bank: bool = True) -> float:
    """The highest voltage a healthy DUT presents: cells x cell OVP threshold (x series)."""
    module = bank.module_type
    volts = module.cells_in_series * module.bms.protections.cell_overvoltage.threshold_v
    return volts * (bank.dut.series if whole_bank else 1)


def _fmt(volts: float, unit: str = "V") -> str:
    return f"{volts:.4g} {unit}"


# ================================================================================== plan x DUT
def dut_names(bank: BankSpec) -> list[str]:
    """What a plan's ``applies_to`` may name: DUT name, module type name and model, topology."""
    dut, module = bank.dut, bank.module_type
    return [dut.name, module.name, module.model, f"{dut.series}S{dut.parallel}P"]


def check_applies_to(plan: PlanFile, bank: BankSpec) -> None:
    """The plan names this DUT: by DUT name, by topology (4S4P), or -- only for a single module
    (1S1P) -- by module type name or model. A module plan never applies to a bank of modules."""
    names = dut_names(bank)
    single = bank.dut.series == 1 and bank.dut.parallel == 1
    for entry in plan.applies_to:
        if TOPOLOGY.match(entry) and entry.upper() == names[3]:
            return
        if fnmatch.fnmatchcase(names[0], entry):
            return
        if single and any(fnmatch.fnmatchcase(name, entry) for name in names[1:3]):
            return
    module_only = [e for e in plan.applies_to
                   if any(fnmatch.fnmatchcase(n, e) for n in names[1:3]) and not single]
    hint = (f" -- '{module_only[0]}' names a module model: a module plan applies to one module "
            f"(1S1P), never to a {names[3]} bank") if module_only else ""
    raise plan.error(("applies_to",), f"{plan.applies_to} (DUT '{bank.dut.name}', module "
                     f"{bank.module_type.model}, {names[3]}){hint}",
                     "an entry naming this DUT: " + ", ".join(names[:1] + [names[3]])
                     + (", " + ", ".join(names[1:3]) if single else "") + " (globs like 'lfp_*' work)")


def check_serial(plan: PlanFile, serial: str) -> None:
    plan.check_serial(serial)


# ================================================================================== plan x station
def check_roles(plan: PlanFile, station: StationFile) -> None:
    have = station.roles()
    where = f"roles of {station.path or 'the station'}: " + ", ".join(sorted(have))
    for index, role in enumerate(plan.requires):
        if role not in have:
            raise plan.error(("requires", index), f"role '{role}' (not on this station)", where)
    for s, step in enumerate(plan.steps):
        for index, role in enumerate(step.requires):
            if role not in have:
                raise plan.error(("steps", s, "requires", index), f"role '{role}' (not on this station)",
                                 where)
        for key in step.setpoints:
            role = key.partition(".")[0]
            if role not in station.instruments:
                raise plan.error(step.setpoint_loc(s, key), f"a setpoint on '{role}' (not on this "
                                 "station)", "instrument roles of the station: "
                                 + ", ".join(sorted(station.instruments)))


def check_protocols(plan: PlanFile, station: StationFile) -> None:
    """Every step's check finds the role protocols it needs on this station, and every
    instrument a step's parameters name exists and provides what the check uses it for.

    The plan's requirements are derived from its steps (the checks' ``needs``), so a plan that
    a station cannot serve is refused here, with the step and the missing protocol, before
    anything is energised -- never an AttributeError halfway through a run.
    """
    offered = station.protocols()
    have = ", ".join(f"{name} ({'/'.join(sorted(by))})" for name, by in sorted(offered.items())) or "none"
    withheld = _withheld_by_bms_profile(station)
    for s, step in enumerate(plan.steps):
        for protocol in sorted(step.needs):
            if protocol not in offered:
                what = f"step '{step.name}': check '{step.check}' needs protocol '{protocol}' " \
                       f"({PROTOCOL_WORDS.get(protocol, protocol)})"
                if protocol in withheld:  # the CAN client could, the pack as deployed cannot
                    profile, why = withheld[protocol]
                    raise plan.error(("steps", s, "check"),
                                     f"{what}, which BMS profile '{profile}' of the CAN bus of "
                                     f"{station.path or 'the station'} does not provide ({why})",
                                     f"a BMS profile with it, or a station providing it; this one "
                                     f"provides: {have}")
                raise plan.error(("steps", s, "check"),
                                 f"{what}, which no instrument or bus of {station.path or 'the station'} "
                                 "provides", f"a station providing it; this one provides: {have}")
        for role, (protocol, where) in step.instrument_roles.items():
            loc = ("steps", s, *where) if where[0] == "parameters" else where
            if role not in station.instruments:
                raise plan.error(loc, f"step '{step.name}': instrument '{role}' (not on this station)",
                                 "instrument roles of the station: " + ", ".join(sorted(station.instruments)))
            if role not in offered.get(protocol, set()):
                raise plan.error(loc, f"step '{step.name}': instrument '{role}', which does not provide "
                                 f"protocol '{protocol}'", f"one of: {', '.join(sorted(offered.get(protocol, ()))) or 'none'}")


def _withheld_by_bms_profile(station: StationFile) -> dict[str, tuple[str, str]]:
    """Protocol -> (profile, why) for what the station's CAN pack lacks by its BMS profile."""
    if station.bms.can is None:
        return {}
    from bankmodel.bms_profile import FULL_PROFILE
    from harness.config.station import can_profile
    from instruments.can_bms import CanBms

    profile = can_profile(station) or FULL_PROFILE
    return {protocol: (profile, why) for protocol, why in CanBms.withheld_by(profile).items()}


# protocol -> what it is, for a person reading a refusal
PROTOCOL_WORDS = {
    "supply": "a DC supply", "load": "an electronic load", "digitiser": "a digitising DMM",
    "scanner": "a scanner", "actuator": "contactor relays", "acir": "an AC-IR meter",
    "bms": "BMS telemetry over CAN or Modbus",
    "module_reports": "per-module BMS reports, e.g. SunSpec models 805/804 over Modbus",
    "bms_service": "BMS service commands (force a module's switch open, silence a module)",
    "capacity_report": "the installed capacity the BMS reports (CAN 0x379; SunSpec has none)",
}


def check_setpoints(plan: PlanFile, station: StationFile, bank: BankSpec | None = None) -> None:
    """Each setpoint within its instrument's rating; power within the power rating.

    The power a current setpoint implies uses the step's voltage setpoint on that instrument,
    or else the highest voltage the DUT can present.
    """
    bank_v = dut_max_voltage(bank) if bank is not None else None
    for s, step in enumerate(plan.steps):
        for key, value in step.setpoints.items():
            role, _, quantity = key.partition(".")
            rating = station.rating(role).get(quantity)
            loc = step.setpoint_loc(s, key)
            if rating is None:
                raise plan.error(loc, f"'{value}' on {role}, which has no {quantity} rating",
                                 f"a station that rates {role}'s {quantity} (rating: {{{quantity}: "
                                 f"...}} at {station.where('instruments', role, 'rating')})")
            if abs(value.value) > rating.value:
                raise plan.error(loc, f"'{value}'",
                                 f"at most {rating}: the {quantity} rating of {role} "
                                 f"({station.where('instruments', role, 'rating', quantity)})")
        for role in sorted(step.setpoint_roles()):
            power = station.rating(role).power
            current = step.setpoints.get(f"{role}.current")
            if power is None or current is None:
                continue
            volts_q = step.setpoints.get(f"{role}.voltage")
            volts = volts_q.value if volts_q is not None else bank_v
            if volts is None:
                continue
            watts = abs(current.value) * volts
            if watts > power.value:
                basis = f"at {volts_q}" if volts_q is not None else f"at up to {_fmt(volts)} from the DUT"
                raise plan.error(step.setpoint_loc(s, f"{role}.current"),
                                 f"'{current}' ({watts:.0f} W {basis})",
                                 f"at most {power.value / volts:.4g} A: the power rating {power} of "
                                 f"{role} ({station.where('instruments', role, 'rating', 'power')})")


# ================================================================================== station x DUT
def check_voltage_ratings(station: StationFile, bank: BankSpec) -> None:
    """No instrument (or rated channel) exposed to more voltage than it is rated for."""
    for role, inst in station.instruments.items():
        rating = inst.rating.voltage
        if rating is None:
            continue
        whole = role not in MODULE_ROLES
        need = dut_max_voltage(bank, whole_bank=whole)
        if rating.value < need:
            what = "the bank" if whole else "one module"
            raise station.error(("instruments", role, "rating", "voltage"), f"'{rating}'",
                                f"at least {_fmt(need)}: {what} of DUT '{bank.dut.name}' reaches "
                                f"{_fmt(need)} (cell over-voltage threshold x cells in series)")
    cmap = station.channel_map
    if cmap is None:
        return
    need = dut_max_voltage(bank)
    for index, entry in enumerate(cmap.scanner):
        rated = entry.rating.voltage if getattr(entry, "rating", None) is not None else None
        if rated is not None and rated.value < need:
            raise station.error(("channels", "scanner", index, "rating", "voltage"), f"'{rated}'",
                                f"at least {_fmt(need)}, the highest voltage of DUT '{bank.dut.name}'")


def _position_error(name: str, bank: BankSpec) -> str | None:
    dut = bank.dut
    match = POSITION.match(name)
    if match:
        s, p = int(match.group(1)), int(match.group(2))
        if not (1 <= s <= dut.series and 1 <= p <= dut.parallel):
            return f"positions s1p1..s{dut.series}p{dut.parallel} of the {dut.series}S{dut.parallel}P DUT"
        return None
    match = STRING.match(name)
    if match and not 1 <= int(match.group(1)) <= dut.parallel:
        return f"branches p1..p{dut.parallel} of the {dut.series}S{dut.parallel}P DUT"
    return None


def check_channels_fit_dut(station: StationFile, bank: BankSpec) -> None:
    """Every module, branch and contactor the channel map names exists in the DUT."""
    cmap = station.channel_map
    if cmap is None:
        return

    def check(loc: tuple[Any, ...], name: str) -> None:
        why = _position_error(name.split(".")[0], bank)
        if why:
            raise station.error(loc, f"'{name}'", why)

    for index, entry in enumerate(cmap.scanner):
        for field in ("plus", "minus", "branch", "point"):
            value = getattr(entry, field, None)
            if value:
                check(("channels", "scanner", index, field), value)
    for index, entry in enumerate(cmap.actuator):
        check(("channels", "actuator", index, "contactor"), entry.contactor)
    for name, source in cmap.dmm.items():
        for field in ("plus", "minus", "branch", "point"):
            value = getattr(source, field, None)
            if value:
                check(("channels", "dmm", name, field), value)
    if cmap.acir_module:
        check(("channels", "acir_module"), cmap.acir_module)


def check_shunt_ratings(plan: PlanFile, station: StationFile, bank: BankSpec) -> None:
    """A rated shunt must carry what its branch may carry: the plan's largest current setpoint,
    up to the DUT's branch fuse (a branch can take the whole bank current when others open)."""
    cmap = station.channel_map
    if cmap is None:
        return
    currents = [abs(v.value) for step in plan.steps for k, v in step.setpoints.items()
                if k.endswith(".current")]
    if not currents:
        return
    need = min(max(currents), bank.dut.protection.branch_fuse_a)
    shunts = [("scanner", i, e) for i, e in enumerate(cmap.scanner)] + \
        [("dmm", name, e) for name, e in cmap.dmm.items()]
    for group, key, entry in shunts:
        rating = getattr(entry, "rating", None)
        rated = rating.current if rating is not None else None
        if getattr(entry, "kind", "") == "shunt" and rated is not None and rated.value < need:
            raise station.error(("channels", group, key, "rating", "current"), f"'{rated}'",
                                f"at least {need:.4g} A: the plan sets up to {max(currents):.4g} A and "
                                f"branch {entry.branch} is fused at "
                                f"{bank.dut.protection.branch_fuse_a:g} A")


def check_calibration(station: StationFile, on: dt.date) -> None:
    for role, inst in station.instruments.items():
        due = inst.calibration_due
        if due is not None and due < on:
            raise station.error(("instruments", role, "calibration_due"),
                                f"{due.isoformat()} (overdue on {on.isoformat()})",
                                f"a calibration due date on or after {on.isoformat()}: "
                                f"recalibrate {role} and update the date")


# ================================================================================== all
def validate_run(plan: PlanFile | Path | str, station: StationFile | Path | str,
                 dut: str | Path | BankSpec, known_checks: Any, *,
                 scenario: str | Path | None = None, serial: str | None = None,
                 on: dt.date | None = None) -> RunConfig:
    """Load what is given as a path and run every cross-check; raise FileError at the first.

    ``on`` is the date calibration is checked against (today if not given).
    """
    station_model = station if isinstance(station, StationFile) else load_station(station)
    plan_model = plan if isinstance(plan, PlanFile) else load_plan(plan, known_checks)
    bank = dut if isinstance(dut, BankSpec) else load_bank_spec(dut, scenario)
    if scenario and not isinstance(dut, BankSpec):
        from harness.emulated import check_scenario
        check_scenario(bank)
    check_applies_to(plan_model, bank)
    if serial is not None:
        check_serial(plan_model, serial)
    check_calibration(station_model, on or _today())
    check_voltage_ratings(station_model, bank)
    check_channels_fit_dut(station_model, bank)
    check_roles(plan_model, station_model)
    check_protocols(plan_model, station_model)
    check_setpoints(plan_model, station_model, bank)
    check_shunt_ratings(plan_model, station_model, bank)
    return RunConfig(plan_model, station_model, bank)


__all__ = ["RunConfig", "check_applies_to", "check_calibration", "check_channels_fit_dut",
           "check_protocols", "check_roles", "check_serial", "check_setpoints", "check_shunt_ratings",
           "check_voltage_ratings", "dut_max_voltage", "dut_names", "validate_run"]
