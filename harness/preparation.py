"""Bench preparation: every run, and every step after the bench was made safe, starts from one
known state -- whatever the previous run (or step) left behind.

Why: the safety supervisor opens every contactor and turns every output off at the end of a run,
on a failed step and on Ctrl-C. On a real bench nothing closes them again by itself, so the next
run used to find the bank disconnected and fail its first gate (``bank_voltage = 8.80 V
[48..58.4 V]``); a run killed while a step held a group's BMS switches open left them open.

What preparation does, in this order (each part only if the station has the role for it):

1. **Outputs off, protections programmed**: load input and supply output off; on a supply that
   can (``ProgrammableProtection``), over-voltage protection at the highest voltage the plan asks
   of the supply or the DUT can present (the larger), plus 5 %, never above the supply's rating;
   under-voltage limit at zero (a charger must be allowed to start from a flat bank).
2. **BMS to its normal state**: the inverter keep-alive on; where the station has BMS service
   commands, every module's BMS switch released (a service disconnect left by an interrupted
   series stress step). Module silencing is not touched: a scenario's silent module is a fault
   of the DUT, not of the bench.
3. **Contactors to the plan's starting state** (``bench.contactors``, default ``closed``). Before
   a branch contactor closes, the branch's open-circuit voltage is compared with the bus it joins
   -- the branches already closed, or the first branch to close: 000 asks for a pre-parallel
   difference of at most 0.1 V per unit, so the plan's ``bench.connect_match`` (default 100 mV)
   is per module in series. A branch outside it is left open and noted, naming it and both
   voltages; nothing is closed onto a mismatch. The main contactor closes last, outputs off (004: the
   main disconnect only after the BMSs are normal).

A branch left open is noted, not an error: it is the DUT's condition (a module at another
charge), and the plan's checks find the open branch and say why, as they would on a bench
set up by hand. :class:`BenchNotReady` is for a bench that cannot be prepared at all (an
instrument refusing the protection levels): the step it precedes ends ERROR and the rest of
the plan is not run -- nothing about the DUT is concluded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from bankmodel.positions import modules_of_branch, natural_key

MAIN = "main"
OVP_MARGIN = 1.05


class BenchNotReady(RuntimeError):
    """The bench could not be brought to the plan's starting state."""


@dataclass(frozen=True)
class StartState:
    """What every step starts from, in SI: the plan's ``bench:`` block (harness.config.plan.
    BenchStart, where the defaults and their sources live)."""

    contactors: str                     # "closed" or "open"
    connect_match_v: float              # per module in series
    settle_s: float                     # bench seconds after the last contactor closes
    bms_ready_within_s: float           # longest BMS recovery to wait for

    @classmethod
    def of(cls, block: Any) -> "StartState":
        return cls(block.contactors, block.connect_match.value, block.settle.value, block.bms_ready_within.value)


@dataclass
class Preparation:
    """What one preparation did, for the record (``store.record_event``)."""

    actions: list[str] = field(default_factory=list)

    def did(self, text: str) -> None:
        self.actions.append(text)

    def text(self) -> str:
        return "; ".join(self.actions) if self.actions else "bench already in its starting state"


def over_voltage_level(plan_supply_v: float | None, dut_max_v: float, rating_v: float | None) -> float:
    """OVP for the supply: the plan's highest supply voltage or the DUT's highest voltage,
    whichever is larger, plus 5 %; never above the supply's rating (the rating is what the
    bench was validated against)."""
    level = max(plan_supply_v or 0.0, dut_max_v) * OVP_MARGIN
    return min(level, rating_v) if rating_v else level


def prepare(bench: Any, start: StartState, modules: list[str], *, ovp_v: float | None = None,
            note: Callable[[str], None] | None = None) -> Preparation:
    """Bring ``bench`` (harness.bench.Bench) to ``start``; raise :class:`BenchNotReady` if it
    cannot be done safely. ``modules`` are the DUT's positions in bank order (series position
    first: the index a BMS service command names). Idempotent: on a bench already there it
    changes nothing but the protection levels it programs again."""
    done = Preparation()
    modules = sorted(modules, key=natural_key)
    _outputs_off(bench, ovp_v, done)
    _bms_normal(bench, modules, done)
    if "actuator" in bench.instruments and bench.channels.actuator:
        _contactors(bench, start, modules, done)
    if note is not None:
        note(done.text())
    return done


# ---------------------------------------------------------------------------------- parts
def _outputs_off(bench: Any, ovp_v: float | None, done: Preparation) -> None:
    instruments = bench.instruments
    if "load" in instruments and instruments["load"].is_on():
        instruments["load"].input(False)
        done.did("load input off")
    if "supply" in instruments:
        supply = instruments["supply"]
        if supply.is_on():
            supply.output(False)
            done.did("supply output off")
        program = getattr(supply, "program_protection", None)
        if program is not None and ovp_v is not None:
            try:
                program(ovp_v, 0.0)
            except Exception as exc:  # noqa: BLE001 - InstrumentError / SetpointRefused: a bench fault
                raise BenchNotReady(f"the supply refused its protection levels (OVP {ovp_v:.4g} V, "
                                    f"UVL 0 V): {exc}") from exc
            done.did(f"supply OVP {ovp_v:.4g} V, UVL 0 V")


def _bms_normal(bench: Any, modules: list[str], done: Preparation) -> None:
    bms = bench.bms  # the client that plays the inverter; another bus's client stays as it is
    if bms is not None and not getattr(bms, "heartbeat_on", True):
        bms.heartbeat(True)
        done.did("inverter keep-alive resumed")
    if bench.provides("bms_service"):
        service = bench.provider("bms_service")
        for k in range(len(modules)):
            service.force_disconnect(k, False)
        done.did(f"BMS switches of {len(modules)} modules released (service command)")


def _contactors(bench: Any, start: StartState, modules: list[str], done: Preparation) -> None:
    actuator = bench.instruments["actuator"]
    channels = {name: ch for ch, name in bench.channels.actuator_channels().items()}
    closed = {name: actuator.is_closed(ch) for name, ch in channels.items()}
    branches = [name for name in channels if name != MAIN]
    if start.contactors == "open":
        for name in [MAIN, *branches]:
            if closed.get(name):
                bench.set_contactor(name, False)
                done.did(f"contactor {name} opened")
        return
    to_close = [b for b in branches if not closed[b]]
    if to_close:
        _await_bms_ready(bench, start.bms_ready_within_s, done)
        volts = _branch_voltages(bench, branches, modules)
        joined = [b for b in branches if closed[b]]
        for branch in to_close:
            if branch not in volts:
                done.did(f"contactor {branch} left open: no scanner channel measures its modules, so its "
                         "voltage cannot be matched to the bus")
                continue
            if joined:
                bus_v = sum(volts[b] for b in joined) / len(joined)
                series = len(modules_of_branch(branch, modules))
                limit = start.connect_match_v * series
                if abs(volts[branch] - bus_v) > limit:
                    # never closed onto a mismatch; the plan's checks find the open branch and say why
                    done.did(f"contactor {branch} left open: branch at {volts[branch]:.3f} V, bus at "
                             f"{bus_v:.3f} V, {abs(volts[branch] - bus_v) * 1000:.0f} mV over the "
                             f"{limit * 1000:.0f} mV allowed before paralleling (000: 0.1 V per unit)")
                    continue
            bench.set_contactor(branch, True)
            joined.append(branch)
            done.did(f"contactor {branch} closed at {volts[branch]:.3f} V")
    if MAIN in channels and not closed[MAIN]:
        bench.set_contactor(MAIN, True)
        done.did("main contactor closed (outputs off)")
    if to_close or (MAIN in channels and not closed[MAIN]):
        bench.clock.wait(start.settle_s)


def _await_bms_ready(bench: Any, within_s: float, done: Preparation) -> None:
    """Before anything is connected: give the BMS up to ``within_s`` of bench time to report no
    alarm and both directions enabled -- an over-current trip of the previous run recovers after
    its fixed time, and until then its module reads as disconnected. Never an error: a BMS that
    is still not ready is the DUT's condition, noted here and judged by the plan's checks."""
    bms = bench.bms
    if bms is None:
        return
    waited = 0.0
    while True:
        status = bms.status()
        blocked = sorted(status.alarms) + [f"{d} disabled" for d, on in
                                           (("charge", status.charge_enable), ("discharge", status.discharge_enable))
                                           if on is False]
        if not blocked:
            if waited:
                done.did(f"BMS ready after {waited:.0f} s")
            return
        if waited >= within_s:
            done.did(f"BMS still reports {', '.join(blocked)} after {waited:.0f} s (left to the checks)")
            return
        bench.clock.wait(1.0)
        waited += 1.0


def _branch_voltages(bench: Any, branches: list[str], modules: list[str]) -> dict[str, float]:
    """Open-circuit voltage of each branch: the sum of its modules' terminal voltages (a branch
    of a parallel bank is one module; a string's is its series modules)."""
    readings = bench.module_voltages()
    volts = {}
    for branch in branches:
        members = modules_of_branch(branch, modules)
        if members and all(m in readings for m in members):
            volts[branch] = sum(readings[m] for m in members)
    return volts
