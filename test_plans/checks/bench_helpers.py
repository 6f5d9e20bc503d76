"""Bench conveniences the checks share: outputs off, the bank's contactors (the bank as built,
branches opened for a reading), modules in bank order, the AC-IR meter's reading, waiting and
integrating on the bench clock.

Roles only (``bench.load``, ``bench.supply``, ``bench.set_contactor``, ``bench.actuator``,
``bench.acir``, the channel map); every wait is on ``bench.clock``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

from bankmodel.positions import POSITION, natural_key, position


def outputs_off(bench: Any) -> None:
    """Load input and supply output off (roles the station has)."""
    if "load" in bench.instruments:
        bench.load.input(False)
    if "supply" in bench.instruments:
        bench.supply.output(False)


def branch_contactors(bench: Any) -> list[str]:
    """Branch contactors the actuator drives (every one but ``main``), in bank order."""
    return sorted((name for name in bench.channels.actuator_channels().values() if name != "main"), key=natural_key)


def connect_bank(bench: Any, gap_s: float = 0.5) -> list[str]:
    """Close every branch contactor that is open, then the main one: the bank as built.

    A check that needs the whole bank calls this first, so it runs after an earlier step (or the
    safety supervisor) opened something. Gated plans stop before it when a step failed.
    """
    closed = []
    for name in branch_contactors(bench) + ["main"]:
        try:
            channel = bench.channels.contactor_channel(name)
        except KeyError:
            continue
        if not bench.actuator.is_closed(channel):
            bench.set_contactor(name, True)
            closed.append(name)
            bench.clock.wait(gap_s)
    return closed


def contactor_closed(bench: Any, name: str) -> bool:
    return bool(bench.actuator.is_closed(bench.channels.contactor_channel(name)))


@contextmanager
def branches_opened(bench: Any, gap_s: float = 0.5, restore: bool = True) -> Iterator[list[str]]:
    """Every branch contactor that is closed is opened through the actuator role (load and
    supply first off); the block runs with the branches open; on leaving, the ones opened here
    are closed again, one every ``gap_s`` (``restore``), whatever happened. Yields the branches
    opened. A bank without branch contactors yields ``[]`` (nothing to open)."""
    outputs_off(bench)
    opened = []
    if bench.channels.actuator:
        for name in branch_contactors(bench):
            if contactor_closed(bench, name):
                bench.set_contactor(name, False)
                opened.append(name)
    try:
        yield opened
    finally:
        if restore:
            outputs_off(bench)
            for name in opened:
                bench.set_contactor(name, True)
                bench.clock.wait(gap_s)


def can_open_modules(bench: Any) -> bool:
    """Whether every module's terminals can be read open-circuit: the bank has branch contactors
    the actuator drives, or no module has a parallel peer (one module, or one string)."""
    if bench.channels.actuator and branch_contactors(bench):
        return True
    positions = [POSITION.match(m) for m in bench.channels.module_voltage_channels()]
    series = [int(m.group(1)) for m in positions if m]
    return len(series) == len(set(series))


def module_order(bench: Any) -> list[str]:
    """Module positions in bank order (series position first, then parallel index): the order
    of the SunSpec 805 models and the index the bench service commands use."""
    modules = list(bench.channels.module_voltage_channels())
    return sorted(modules, key=lambda m: position(m))


def module_resistances(bench: Any) -> dict[str, float]:
    """AC-IR (ohm) of the modules the station's AC-IR meter reaches (its leads: the channel map's
    ``acir_module``), read while the branches are open; ``{}`` without an ``acir`` role. A
    station whose meter reaches one module gives one reading: module-to-module evidence needs at
    least two."""
    if "acir" not in bench.instruments or not bench.channels.acir_module:
        return {}
    ohm, _ = bench.acir.measure()
    return {bench.channels.acir_module: float(ohm)}


def poll_until(bench: Any, done: Callable[[], bool], timeout_s: float, poll_s: float) -> float | None:
    """Wait on the bench clock until ``done()``; the bench seconds it took, or None on timeout."""
    start = bench.clock.now()
    while True:
        if done():
            return bench.clock.now() - start
        if bench.clock.now() - start >= timeout_s - 1e-9:
            return None
        bench.clock.wait(min(poll_s, timeout_s - (bench.clock.now() - start)))


def ah_while(bench: Any, read_amps: Callable[[], float], seconds: float, sample_s: float) -> float:
    """Wait ``seconds`` of bench time, integrating an instrument's current reading (Ah): one
    reading in the middle of every ``sample_s`` (midpoint rule: exact for a constant current,
    second-order for a tapering one, and never a reading taken as the output switches)."""
    total, left = 0.0, seconds
    while left > 1e-9:
        chunk = min(sample_s, left)
        bench.clock.wait(chunk / 2)
        amps = read_amps()
        bench.clock.wait(chunk / 2)
        total += amps * chunk / 3600.0
        left -= chunk
    return total
