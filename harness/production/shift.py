"""A scripted shift: the scans an operator would make, in order, with no person -- for CI, for
rehearsing a line on the emulated bench, and for the station benchmark.

A shift file (YAML, loaded safely and validated) lists scans; on an emulated station a scan may
put a fault into that attempt's unit (a fault ``scenario`` or another ``dut`` file), which is
how a shift has faulty units at all; ``unlock`` says what the shift lead writes when the
station locks::

    name: demo shift
    unlock: {reason: "AC-IR Kelvin clips replaced", operator: shift lead}
    scans:
      - serial: BH12-B0001-001
      - {serial: BH12-B0001-006, scenario: hung_acir}
      - {serial: BH12-B0001-006}            # its retest
      - {serial: BH12-B0001-012, dut: fixtures/duts/series/1s1p_bms_lax.yaml}

Each scan goes to the first free socket (several sockets run units side by side). A scan the
station refuses is kept with the station's sentence (a shift may expect refusals: a unit with no
attempts left); when the refusal is the lock, the shift lifts it with ``unlock`` and scans again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from bankmodel.specs.base import FileModel


class Scan(FileModel):
    serial: Annotated[str, Field(min_length=1, max_length=64)]
    scenario: Annotated[str, Field(min_length=1)] | None = None
    dut: Annotated[str, Field(min_length=1)] | None = None


class Unlock(FileModel):
    reason: Annotated[str, Field(min_length=1)]
    operator: Annotated[str, Field(min_length=1)]


class ShiftFile(FileModel):
    name: str = "shift"
    unlock: Unlock | None = None
    scans: Annotated[list[Scan], Field(min_length=1)]


def load_shift(path: str | Path) -> ShiftFile:
    from harness.config import load_document, validate_document
    return validate_document(ShiftFile, load_document(path))


@dataclass
class ShiftLog:
    """What happened to each scan, in order: ``started`` or the refusal sentence."""

    outcomes: list[tuple[str, str]] = field(default_factory=list)   # (serial, "started" | refusal)
    unlocks: int = 0
    wall_s: float = 0.0


def unit_args_for(shift: ShiftFile):  # type: ignore[no-untyped-def]
    """The ``hil run`` arguments of each (serial, attempt): the scan's fault, counted per serial in
    script order (the n-th scan of a serial is its n-th attempt)."""
    per: dict[tuple[str, int], list[str]] = {}
    counts: dict[str, int] = {}
    for scan in shift.scans:
        counts[scan.serial] = counts.get(scan.serial, 0) + 1
        args: list[str] = []
        if scan.scenario:
            args += ["--scenario", scan.scenario]
        if scan.dut:
            args += ["--dut", scan.dut]
        per[(scan.serial, counts[scan.serial])] = args

    def args(serial: str, attempt: int, socket: str) -> list[str]:
        return list(per.get((serial, attempt), []))
    return args


def run_shift(station: Any, shift: ShiftFile, *, poll_s: float = 0.05, timeout_s: float = 3600.0) -> ShiftLog:
    """Feed the shift's scans to ``station`` (harness.production.station.Station) and wait for the
    last unit; return what became of each scan."""
    from harness.production.state import SerialRefused

    log = ShiftLog()
    started = time.monotonic()
    deadline = started + timeout_s
    for scan in shift.scans:
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"shift '{shift.name}' did not finish within {timeout_s:.0f} s")
            if scan.serial in station.running_serials().values():
                time.sleep(poll_s)  # its earlier attempt is still on a socket
                continue
            free = station.idle_sockets()
            if not free:
                time.sleep(poll_s)
                continue
            try:
                station.submit_serial(free[0], scan.serial)
                log.outcomes.append((scan.serial, "started"))
                break
            except SerialRefused as refused:
                if station.snapshot().lock.locked and shift.unlock is not None:
                    station.wait_idle()  # the lead looks at the fixture with nothing running
                    station.unlock(shift.unlock.reason, shift.unlock.operator)
                    log.unlocks += 1
                    continue
                log.outcomes.append((scan.serial, str(refused)))
                break
    station.wait_idle()
    log.wall_s = time.monotonic() - started
    return log

