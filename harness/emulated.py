"""The one door from the harness to the emulator.

Nothing else outside ``emulator/`` imports it (tests/test_import_boundary.py proves it), so a
hardware run never loads the twin, numba or the emulated endpoints. Every import of the
emulator below is inside a function: importing this module costs nothing until an emulated
station starts, or ``hil emulate`` / ``hil simulate`` runs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

def single_threaded_blas() -> None:
    """The twin solves many small systems; a multithreaded BLAS makes each one ~4x slower
    (thread start-up dominates a 100 x 100 LU). Effective only before numpy is first imported,
    so the ``hil`` command and the test suite call it first thing."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")


def warm_twin() -> None:
    """Import the emulated bench and load numba's kernels (from its cache) by running a small
    twin for a moment: for a process that forks emulated runs (the station's warm process,
    harness/production/launcher.py), so no unit pays for it."""
    import emulator.emulate  # the endpoints, imported once here  # noqa: F401
    import emulator.twin
    for dut in ("1s1p", "4s4p"):  # a module and a series-parallel bank: every kernel
        twin = emulator.twin.build_twin(dut)
        twin.set_load(10.0)
        twin.load_input(True)
        twin.advance(2.0)


def start_station(dut: str | Path, scenario: str | Path | None = None, seed: int = 0,
                  bms_profile: str | Path | None = None, unit_serial: str | None = None) -> Any:
    """Build the twin of ``dut`` (with a fault ``scenario``) and serve it on loopback: the
    running :class:`emulator.emulate.EmulatedStation`, whose ``station`` describes it in the
    shape of a station file. Its CAN pack plays ``bms_profile`` (None: the full default); a
    one-module DUT's BMS reports ``unit_serial`` (the scanned label)."""
    from emulator.emulate import start_emulated_station
    return start_emulated_station(dut, scenario, seed=seed, bms_profile=bms_profile, unit_serial=unit_serial)


def check_scenario(spec: Any) -> None:
    """Refuse, as a file error at its line, a scenario naming what the DUT does not have --
    before anything is assembled (the layout of the bank is the twin's knowledge)."""
    from emulator.faults import check_targets
    check_targets(spec)


def add_emulate_arguments(parser: argparse.ArgumentParser) -> None:
    """``hil emulate``: the options are the emulator's own."""
    from emulator import emulate
    emulate.add_arguments(parser)
    parser.set_defaults(handler=emulate.run)


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    """``hil simulate``: the options are the emulator's own."""
    from emulator import simulate
    simulate.add_arguments(parser)
    parser.set_defaults(handler=simulate.command)


class SynchronisedBench:
    """What a virtual clock moves on an emulated bench: the twin, with the transports drained.

    Advancing is a barrier, over the transports a hardware bench uses (SCPI and Modbus over TCP
    sockets; CAN on python-can's ``virtual`` bus, which the harness's client shares with the
    emulated BMS in this process): first the emulated BMS takes in every CAN frame the harness
    has sent (keep-alives, service commands) at the present bench time; then, while the twin
    advances, each frame set the emulated BMS publishes is taken off the bus and processed by
    the harness's CAN client before the twin moves on. The client does this in the advancing
    thread (:meth:`CanBms.receive_on_the_caller`: its ``can.Notifier`` thread is stopped), since
    on a virtual clock nothing is sent between steps and a hand-off per report to another
    thread and back only cost time. No driver or check compensates for lag: what a check reads
    after a wait is what the bench showed at that time. Modbus and SCPI are request/response
    and need no barrier.
    """

    def __init__(self, station: Any, wait_s: float = 2.0):
        self.station = station
        self.wait_s = wait_s
        self.can_clients: list[Any] = []
        self.frames_late = 0  # harness frames not taken in within wait_s (counted, not fatal)

    @property
    def now(self) -> float:
        return float(self.station.bench.now)

    def attach_can(self, client: Any) -> None:
        """Hold the twin at each published frame set until ``client`` has processed it (in the
        advancing thread)."""
        self.can_clients.append(client)
        client.receive_on_the_caller()
        self.station.deliver_each_report(
            lambda stamp, frames: client.wait_for_stamp(stamp, frames, self.wait_s))

    def advance(self, seconds: float, max_step: float = 1.0) -> None:
        for client in self.can_clients:
            if not self.station.take_in(int(client.frames_sent), self.wait_s):
                self.frames_late += 1
        self.station.bench.advance(seconds, max_step=max_step)

    def detach(self) -> None:
        self.station.deliver_each_report(None)
        self.can_clients.clear()
