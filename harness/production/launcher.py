"""How the station starts each unit's ``hil run``: forked from a warm process, or cold.

Why: a unit's run on an emulated module spent about 2 of its 3 CPU-seconds before the first
command reached the bench -- the interpreter, imports (pytest, pydantic, numpy, SQLAlchemy, the
drivers, matplotlib), numba's kernels loaded from its cache -- and every unit's takt paid it
again. :class:`WarmLauncher` pays it once per station: a process of the standard library's
``forkserver`` imports all that when the station opens, and each unit is a fork of it.

What stays as it was with one process per unit: the unit is a process of its own (its own
bench, safety supervisor and signal handlers; a crash or a hang touches no other socket),
started with the same ``hil run`` command line, cwd and environment, its output in its log,
its exit status the run's verdict; SIGINT makes it safe and ABORTED. What the warm process
imports is chosen by the station: a hardware station's imports nothing from ``emulator/``
(:mod:`harness.production.preload`), an emulated one's also the twin
(:mod:`harness.production.preload_emulated`).

:class:`ColdLauncher` starts ``python -m harness.cli run ...`` afresh: for another interpreter
(``python=``), a platform without ``forkserver``, or a process whose forkserver already
imported something else (it is one per process; the first station sets its imports).
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import subprocess
import sys
import threading
import types
from pathlib import Path
from typing import Any, Protocol, Sequence

REPO = Path(__file__).resolve().parents[2]
PRELOAD_HARDWARE = ("harness.production.preload",)
PRELOAD_EMULATED = ("harness.production.preload", "harness.production.preload_emulated")


class UnitProcess(Protocol):
    """The part of :class:`subprocess.Popen` the station uses."""

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    @property
    def returncode(self) -> int | None: ...


class Launcher(Protocol):
    def start(self, argv: Sequence[str], log: Any) -> UnitProcess:
        """Start ``hil <argv>`` with stdout and stderr into ``log`` (an open file)."""


class ColdLauncher:
    """``python -m harness.cli <argv>``, a new interpreter per unit."""

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python

    def start(self, argv: Sequence[str], log: Any) -> UnitProcess:
        return subprocess.Popen([self.python, "-m", "harness.cli", *argv], cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


class _ForkedUnit:
    """A unit forked by the forkserver, seen as a :class:`subprocess.Popen` (exit status, or
    minus the signal that ended it)."""

    def __init__(self, process: Any) -> None:
        self._process = process
        self.pid: int = process.pid

    def poll(self) -> int | None:
        return self._process.exitcode

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:  # ended in between
                pass


_FORKSERVER_LOCK = threading.Lock()
_FORKSERVER_PRELOAD: tuple[str, ...] | None = None  # what this process's forkserver imported


class WarmLauncher:
    """Each unit forked from a process that imported ``preload`` once (see the module doc)."""

    def __init__(self, preload: Sequence[str]) -> None:
        global _FORKSERVER_PRELOAD
        self.preload = tuple(preload)
        self._context = multiprocessing.get_context("forkserver")
        with _FORKSERVER_LOCK:
            if _FORKSERVER_PRELOAD is None:
                self._context.set_forkserver_preload(list(self.preload))
                _FORKSERVER_PRELOAD = self.preload
            elif _FORKSERVER_PRELOAD != self.preload:
                raise RuntimeError(f"this process's forkserver imports {_FORKSERVER_PRELOAD}, not "
                                   f"{self.preload}")

    def warm_up(self) -> None:
        """Start the warm process now (its imports take seconds: better when the station opens
        than at the first scan)."""
        from multiprocessing import forkserver
        forkserver.ensure_running()

    def start(self, argv: Sequence[str], log: Any) -> UnitProcess:
        process = self._context.Process(target=_run_unit, name=f"hil {' '.join(argv[:2])}",
                                        args=(list(argv), log.name, str(REPO), dict(os.environ)))
        with _main_module_hidden():
            process.start()
        return _ForkedUnit(process)


_START_LOCK = threading.Lock()


@contextlib.contextmanager
def _main_module_hidden() -> Any:
    """multiprocessing runs the parent's ``__main__`` again in every child it starts (the rule
    of its spawn and forkserver methods), so a unit would run the station's own script once more
    -- all of it, if the script has no ``if __name__ == "__main__"`` guard -- or fail at once when
    there is no file (a script read from standard input). A unit needs nothing from it: its
    target lives in this module. So while a unit starts, the parent shows a bare ``__main__``."""
    with _START_LOCK:
        main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            sys.modules["__main__"] = main


def launcher_for(emulated: bool, python: str = sys.executable) -> Launcher:
    """A warm launcher with the imports of an emulated or a hardware station; a cold one when
    forking is not possible here or the process's forkserver imports something else."""
    if python != sys.executable or "forkserver" not in multiprocessing.get_all_start_methods():
        return ColdLauncher(python)
    try:
        return WarmLauncher(PRELOAD_EMULATED if emulated else PRELOAD_HARDWARE)
    except RuntimeError:
        return ColdLauncher(python)


def _run_unit(argv: list[str], log_path: str, cwd: str, env: dict[str, str]) -> None:
    """In the forked unit: become ``hil <argv>`` as :class:`ColdLauncher` would start it, then
    leave as an interpreter does (exit handlers run; the exit status is the run's)."""
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.argv = ["hil", *argv]
    from harness.cli import main
    try:
        code = main(argv)
    finally:
        atexit._run_exitfuncs()  # what the interpreter runs at exit; multiprocessing does not
        sys.stdout.flush()
        sys.stderr.flush()
    sys.exit(code)
