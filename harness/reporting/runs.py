"""Naming a run on the command line: ``hil report 42``, ``hil report 3f2a9c1e``, ``hil report last``.

A run is named by its number in the result store, by its id (uuid) or an unambiguous prefix of
it, or as ``last`` / ``last~N`` (the N-th before the newest). A name that matches nothing is a
bad input: one line saying which store was searched and what it holds.
"""

from __future__ import annotations

import re

from emulator.files import FileError
from harness.store import ResultStore, RunRecord


def resolve_run(store: ResultStore, name: str | None) -> RunRecord:
    text = (name or "last").strip()
    where = f"result store {store.display_url}"
    last = re.fullmatch(r"last(?:~(\d+))?", text)
    if last:
        back = int(last.group(1) or 0)
        runs = store.runs(limit=back + 1)
        if len(runs) <= back:
            raise FileError(where, None, "run", f"'{text}'", f"the store holds {len(runs)} run(s)")
        return runs[back]
    if text.isdigit():
        try:
            return store.run(int(text))
        except Exception:  # noqa: BLE001 - the store says "unknown", we say it in one line
            raise FileError(where, None, "run", f"'{text}'", "a run number in the store") from None
    matches = [run for run in store.runs(limit=None) if run.uuid.startswith(text.lower())]
    if len(matches) == 1:
        return matches[0]
    found = "matches several runs" if matches else "matches no run"
    raise FileError(where, None, "run", f"'{text}' ({found})",
                    "a run number, a run id or its unique prefix, 'last' or 'last~N'")
