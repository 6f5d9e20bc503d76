"""Plots drawn in a process of their own while the bench runs on.

Why: drawing a trace (matplotlib: layout, rasterising, PNG) costs ~0.2 s of CPU per plot, about
an eighth of a long emulated plan -- time the main process spends with the bench waiting. One
worker process (spawned, so it shares no thread or lock with the run) draws while the next
step runs; the step collects its pictures before it ends (``TraceArtifacts.finish``), so every
plot is attached to the step that took it. The worker ignores Ctrl-C: an interrupted run
makes its bench safe first and loses at most the pictures still being drawn (their CSVs are
written at once, in the run's own process). When the worker cannot start, plots are drawn
in-process, as before.
"""

from __future__ import annotations

import multiprocessing
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

_POOL: ProcessPoolExecutor | None = None
_FAILED = False


def _quiet() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run handles Ctrl-C; the drawer finishes or dies


def _draw(trace: Any, path: str) -> str:
    from harness.reporting import plots
    return str(plots.render(trace, Path(path)))


def start() -> None:
    """Start the worker now (importing matplotlib there takes a second: better during bench
    assembly than at the first plot)."""
    global _POOL, _FAILED
    if _POOL is not None or _FAILED:
        return
    try:
        _POOL = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                    initializer=_quiet)
        _POOL.submit(_warm)
    except Exception:  # noqa: BLE001 - no worker: draw in-process
        _POOL, _FAILED = None, True


def _warm() -> None:
    import importlib
    importlib.import_module("harness.reporting.plots")  # matplotlib loaded before the first plot


def draw(trace: Any, path: Path) -> Future:
    """A future for ``path`` drawn from ``trace`` (in the worker, or at once in-process)."""
    start()
    if _POOL is not None:
        try:
            return _POOL.submit(_draw, trace, str(path))
        except Exception:  # noqa: BLE001 - a broken pool: draw here
            pass
    done: Future = Future()
    try:
        done.set_result(_draw(trace, str(path)))
    except Exception as exc:  # noqa: BLE001
        done.set_exception(exc)
    return done


def stop() -> None:
    """Wait for the pictures in hand and end the worker (end of session)."""
    global _POOL
    pool, _POOL = _POOL, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=False)
