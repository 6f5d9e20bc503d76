"""Naming a run on the command line: ``hil report 42``, ``hil compare last~1 last``.

A run is named by its number in the result store, by its id (uuid) or an unambiguous prefix of
it (4+ characters: shorter is too easily a mistyped run number), or as ``last`` / ``last~N``
(the N-th before the newest). A name that matches nothing says which store was searched.
"""

from __future__ import annotations

import re
from pathlib import Path

import sqlalchemy as sa

from harness.store import ResultStore, RunRecord, UnknownRecord, run_table

_MIN_UUID_PREFIX = 4
REPO = Path(__file__).resolve().parents[2]
# the store `hil run` writes by default (harness/plugin.py DEFAULT_RESULTS)
DEFAULT_RESULTS = "sqlite:///" + str(REPO / "reports" / "results.sqlite")


class RunNotFound(LookupError):
    """A run reference that names no run (or names several): the message says which."""


def resolve_run(store: ResultStore, ref: str) -> RunRecord:
    """The run a command-line reference names: ``last``/``last~N`` (newest first), a run id, or a
    uuid or uuid prefix (at least 4 characters, unambiguous). :class:`RunNotFound` otherwise."""
    text = str(ref).strip()
    latest = re.fullmatch(r"last(?:~(\d+))?", text.lower())
    if latest:
        return _nth_latest(store, int(latest.group(1) or 0), text)
    if text.isdigit():
        try:
            return store.run(int(text))
        except UnknownRecord:
            pass  # maybe a uuid prefix made of digits
    return _by_uuid_prefix(store, text)


def _nth_latest(store: ResultStore, n: int, text: str) -> RunRecord:
    runs = store.runs(limit=n + 1)
    if len(runs) <= n:
        raise RunNotFound(f"no run {text!r} in result store {store.display_url!r}: "
                          f"it holds {len(runs)} run(s)")
    return runs[n]


def _by_uuid_prefix(store: ResultStore, text: str) -> RunRecord:
    lowered = text.lower()
    if len(lowered) < _MIN_UUID_PREFIX or not re.fullmatch(r"[0-9a-f-]+", lowered):
        raise RunNotFound(f"no run {text!r} in result store {store.display_url!r} "
                          "(give a run id, a run uuid or a uuid prefix of 4+ characters, "
                          "last or last~N)")
    query = (sa.select(run_table.c.uuid).where(run_table.c.uuid.like(f"{lowered}%"))
             .order_by(run_table.c.id).limit(2))
    with store.engine.connect() as conn:
        found = list(conn.execute(query).scalars())
    if not found:
        raise RunNotFound(f"no run {text!r} in result store {store.display_url!r}")
    if len(found) > 1:
        raise RunNotFound(f"run {text!r} is ambiguous in result store {store.display_url!r}: "
                          f"{found[0]}, {found[1]}, ...; give more of the uuid")
    return store.run_by_uuid(found[0])
