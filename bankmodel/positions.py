"""Where a module sits in a bank: ``sXpY`` (series position X of parallel string Y), ``pY`` (a
whole parallel string), and the terminals ``sXpY.+`` / ``sXpY.P-``.

One definition for the station files, the plans' checks, the BMS endpoints and the twin, so a
position means the same thing in every room.
"""

from __future__ import annotations

import re
from typing import Any

# patterns for file models (pydantic ``Field(pattern=...)``)
POSITION_PATTERN = r"^s\d+p\d+$"
BRANCH_PATTERN = r"^(s\d+p\d+|p\d+)$"
CONTACTOR_PATTERN = r"^(s\d+p\d+|p\d+|main)$"

POSITION = re.compile(r"^s(\d+)p(\d+)$")
STRING = re.compile(r"^p(\d+)$")
TERMINAL = re.compile(r"^(s\d+p\d+)\.[+-]$")


def is_position(name: str) -> bool:
    return POSITION.match(name) is not None


def position(module: str) -> tuple[int, int]:
    """(series position, parallel string) of ``sXpY``; ValueError for anything else."""
    match = POSITION.match(module)
    if match is None:
        raise ValueError(f"'{module}' is not a module position like s1p2")
    return int(match.group(1)), int(match.group(2))


def natural_key(text: str) -> list[Any]:
    """Sort key that puts ``s2p10`` after ``s2p9``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def modules_of_branch(branch: str, modules: list[str]) -> list[str]:
    """The modules a branch carries: itself (``sXpY``) or the string ``pY``'s ``s*pY``."""
    if is_position(branch):
        return [branch]
    string = STRING.match(branch)
    if string is None:
        raise ValueError(f"'{branch}' is not a branch like s1p2 or p2")
    return sorted((m for m in modules if is_position(m) and position(m)[1] == int(string.group(1))),
                  key=natural_key)
