"""Retest policy and the station lock, decided from the result store's record of each unit.

Why from the store: the operator must hear the unit's history ("failed acir on 2026-11-30,
retest 2 of 3") whichever station, shift or process tested it before, and a lock engaged before
a restart must still hold after it. Pure functions over records, so every rule is tested
without a bench.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from harness.config.production import LockPolicy, RetestPolicy


@dataclass(frozen=True)
class Attempt:
    """One earlier attempt at a unit, as the store has it."""

    run_uuid: str
    verdict: str            # pass / fail / error / aborted / recorded (store spelling)
    failed_step: str | None
    at: datetime


@dataclass(frozen=True)
class Decision:
    allowed: bool
    attempt: int            # the attempt this would be (1-based)
    history: str            # what the operator is told
    refusal: str | None = None


def _day(moment: datetime) -> str:
    return moment.date().isoformat()


def describe(attempt: Attempt) -> str:
    word = {"fail": "failed", "error": "ended in error at", "aborted": "was interrupted at"}.get(attempt.verdict)
    if word is None:
        return f"{attempt.verdict.upper()} on {_day(attempt.at)}"
    where = attempt.failed_step or "an unknown step"
    return f"{word} {where} on {_day(attempt.at)}"


def decide(serial: str, attempts: list[Attempt], policy: RetestPolicy,
           severity: dict[str, str]) -> Decision:
    """May ``serial`` be tested now? ``attempts`` oldest first; ``severity`` maps the plan's step
    names to their severity (a FAIL at a ``critical`` step is never retested)."""
    number = len(attempts) + 1
    if not attempts:
        return Decision(True, 1, f"first test, attempt 1 of {policy.attempts}")
    last = attempts[-1]
    passed = next((a for a in attempts if a.verdict == "pass"), None)
    if passed is not None:
        return Decision(False, number, f"passed on {_day(passed.at)}",
                        f"{serial} already passed on {_day(passed.at)} (run {passed.run_uuid[:8]}): "
                        "nothing to retest -- set it aside for packing")
    if len(attempts) >= policy.attempts:
        return Decision(False, number, f"{describe(last)}; all {policy.attempts} attempts used",
                        f"{serial} has used all {policy.attempts} attempts (last: {describe(last)}): "
                        "to the repair and analysis bench")
    if last.verdict == "fail":
        step = last.failed_step or ""
        if step in policy.never_retest or severity.get(step) == "critical":
            return Decision(False, number, f"{describe(last)} (no retest)",
                            f"{serial} {describe(last)}, a step that is never retested: "
                            "to the repair and analysis bench")
    if last.verdict not in policy.retest_on and last.verdict != "error":  # an ERROR always allows one
        return Decision(False, number, f"{describe(last)} (no retest)",
                        f"{serial} {describe(last)}; this station retests only after "
                        f"{', '.join(v.upper() for v in policy.retest_on)}")
    return Decision(True, number, f"{describe(last)}, retest {number} of {policy.attempts}")


def streak_lock(recent: list[tuple[str, str | None]], policy: LockPolicy) -> str | None:
    """The lock reason when the newest ``policy.consecutive_failures`` finished attempts (newest
    last: (serial, failed step or None for a PASS)) all failed at the same step, else None."""
    n = policy.consecutive_failures
    if len(recent) < n:
        return None
    tail = recent[-n:]
    steps = {step for _, step in tail}
    if len(steps) != 1 or None in steps:
        return None
    step = steps.pop()
    serials = ", ".join(serial for serial, _ in tail)
    return (f"{n} consecutive units failed at {step} ({serials}): a fixture fault is likelier than "
            f"{n} bad units -- check the fixture at that step, then unlock with what was found")
