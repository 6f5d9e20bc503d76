"""The test suite's own configuration: it runs serially or in parallel with pytest-xdist.

    python -m pytest -q -n 3 --dist loadgroup

Three workers on two cores: part of the suite waits on real time (the wall-clock bench against
``hil emulate``, the kill tests, the shift's processes), and the third worker computes meanwhile
(measured: 4 min 44 s with 3 workers, 5 min 28 s with 2, the same tests, 2 cores; on a
slower day 5 min 14-31 s with 3 and 5 min 33 s with 4: the two cores are the limit; on that
day, with the station's units forked from a warm process, plots drawn in the run's process
and the bytecode written once, 3 min 45 s with 3).

What parallel workers could share, and how each gets its own:

- Result stores, run folders, CAN logs: every test passes its own ``--results`` /
  ``--reports`` / ``--run-dir`` / ``log_dir`` under ``tmp_path`` (per worker under xdist:
  ``<basetemp>/popen-gw<N>/``), never the defaults in reports/.
- TCP ports: every emulated endpoint binds port 0 (a free port, read back from the server).
- Virtual CAN buses: python-can's ``virtual`` interface lives in one process; channel names
  carry a random suffix anyway.
- Fixtures that start emulators or run whole plans once per module (the truth tables'
  ``outcomes``, the shipped plans, the rendered report, ...): under xdist every worker that gets
  one test of such a module would build the fixture again. Their tests are put in one
  ``xdist_group`` per module, so ``--dist loadgroup`` sends them to a single worker while every
  other test is spread one by one.
- Order: a test module that takes long (the wall-clock bench waits minutes on real time, the
  scripted shift, the truth tables' hours of bench time) is marked ``long(seconds)`` with
  about what it takes alone; those start first, longest first, so nothing long begins when the
  rest is done and a worker that only waits (wall clock) overlaps the workers that compute.
  xdist's own reordering (by the number of tests in a group) is turned off for this order.
- The environment: xdist tells a worker who it is in ``PYTEST_XDIST_*`` variables, which every
  ``hil run`` started from a test would inherit -- its own pytest session would then believe it
  is an xdist worker (pytest-benchmark, for one, disables itself and says so in the run's
  output). They are taken out of the environment for the tests, so a child process runs as it
  does in a serial run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

XDIST_VARIABLES = ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID")
SHARED_SCOPES = ("module", "class", "package")
# module-scoped but costing nothing to build again on another worker: no reason to keep their
# tests together (test_hostile_files.py, test_fuzz_files.py: the check registry, a folder;
# test_station_protocols.py: three station files)
CHEAP_SHARED_FIXTURES = {"checks", "workdir", "stations"}


def _twin_kernels_compiled() -> bool:
    """Whether numba's on-disk cache holds machine code of the twin's kernels as they are now."""
    kernels = REPO / "emulator" / "kernels.py"
    index = list((REPO / "emulator" / "__pycache__").glob("kernels.*.nbi"))
    return bool(index) and min(p.stat().st_mtime for p in index) >= kernels.stat().st_mtime


def _compile_twin_kernels() -> None:
    """Fill numba's cache once, before any worker starts: on a fresh clone every process that
    builds a twin first would compile the kernels itself (~6.5 CPU-s each), and at the start of
    a parallel run a dozen do at once -- the workers, ``hil emulate``, ``hil run`` and truth-table
    processes. A series-parallel bank run for two seconds compiles every kernel. If it fails, the
    tests that build a twin say why; the suite is not stopped here."""
    code = ("from harness.emulated import single_threaded_blas; single_threaded_blas()\n"
            "from emulator.twin import build_twin\n"
            "twin = build_twin('4s4p'); twin.set_load(10.0); twin.load_input(True); twin.advance(2.0)\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=False, timeout=600,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


PROJECT_PACKAGES = ("bankmodel", "emulator", "harness", "instruments", "test_plans")


def _compile_project_bytecode() -> None:
    """Write the project's ``.pyc`` files once, before any worker starts. A machine that sets
    ``PYTHONDONTWRITEBYTECODE`` (this one does) never caches them, so each of the suite's few
    hundred processes (``hil run``, ``hil emulate``, the truth tables' drivers) compiled the
    harness from source again: ~0.25 CPU-s each. :mod:`compileall` writes them regardless, and
    Python reads them as usual; a file changed later is compiled again from source, as always."""
    import compileall
    for package in PROJECT_PACKAGES:
        compileall.compile_dir(REPO / package, quiet=1, workers=1)


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the main process only
        _compile_project_bytecode()
        if not _twin_kernels_compiled():
            _compile_twin_kernels()
    # registered by pytest-xdist; again here so `-p no:xdist` runs without an unknown-marker warning
    config.addinivalue_line("markers", "xdist_group(name): run these tests on one xdist worker")
    config.addinivalue_line("markers", "long(seconds): about how long the module takes alone; "
                                       "the longest start first")
    if hasattr(config.option, "loadscopereorder"):  # xdist: keep the order set below
        config.option.loadscopereorder = False


def _expected_seconds(item: pytest.Item) -> float:
    marker = item.get_closest_marker("long")
    return float(marker.args[0]) if marker is not None and marker.args else 0.0


def _shares_a_fixture(item: pytest.Item) -> bool:
    """Whether the test uses a module-, class- or package-scoped fixture: one instance shared with
    other tests of its module, built again on every worker that runs one of them."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    for name in info.names_closure:
        if name in CHEAP_SHARED_FIXTURES:
            continue
        defs = info.name2fixturedefs.get(name)
        if defs and defs[-1].scope in SHARED_SCOPES:
            return True
    return False


@pytest.hookimpl(tryfirst=True)  # before xdist's worker reads the groups into the test ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _shares_a_fixture(item) and not any(item.iter_markers("xdist_group")):
            item.add_marker(pytest.mark.xdist_group(item.path.stem))


@pytest.hookimpl(trylast=True, specname="pytest_collection_modifyitems")  # after pytest-randomly
def pytest_collection_modifyitems_long_first(items: list[pytest.Item]) -> None:  # (its shuffle undoes it)
    items.sort(key=lambda item: -_expected_seconds(item))  # stable: the rest keep their order


@pytest.fixture(scope="session", autouse=True)
def _child_processes_run_as_in_a_serial_run() -> Iterator[None]:
    """No ``PYTEST_XDIST_*`` variables for the processes the tests start (see the module doc).
    Session-scoped and autouse, so it is in place before any module fixture starts one."""
    with pytest.MonkeyPatch.context() as patch:
        for variable in XDIST_VARIABLES:
            if variable in os.environ:
                patch.delenv(variable)
        yield
