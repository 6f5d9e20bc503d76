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


def start_station(dut: str | Path, scenario: str | Path | None = None, seed: int = 0) -> Any:
    """Build the twin of ``dut`` (with a fault ``scenario``) and serve it on loopback: the
    running :class:`emulator.emulate.EmulatedStation`, whose ``station`` describes it in the
    shape of a station file."""
    from emulator.emulate import start_emulated_station
    return start_emulated_station(dut, scenario, seed=seed)


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
