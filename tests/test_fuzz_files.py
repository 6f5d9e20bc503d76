"""Property-based fuzzing of the four file types ``hil run`` reads: station, plan, DUT, scenario.

Each example starts from a shipped file (fixtures/stations/emulated.yaml, test_plans/bank_smoke.yaml,
fixtures/duts/1s4p_diagonal.yaml, fixtures/scenarios/*.yaml), mutates it -- values replaced by
random scalars, text, lists or mappings, keys deleted or added, values turned into text, shared
values written as anchors and aliases, a value made to contain itself (a recursive alias), YAML
tags and other hostile snippets inserted into the text -- and loads it the way ``hil run`` does
(``harness.plugin.RunContext.load``: the file's own loader, then the cross-file checks against
the other shipped files).

The property: every file is either accepted or refused with ``FileError`` whose message is one
line (``file:line: field: found ...; allowed: ...``) starting with the mutated file's path when
the file itself is refused; no other exception, within a time bound per example (CPU seconds,
and a wall-clock watchdog against a hang), and nothing in a file is ever executed (a
``!!python/object/apply:os.system`` tag would create a marker file).

200 examples per file type by default (``BANKHIL_FUZZ_EXAMPLES=2500`` for a longer hunt); the
count of accepted and refused files is printed per type (``pytest -s``).
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bankmodel.specs.loading import load_bank_spec
from bankmodel.files import FileError
from harness.config import load_plan, load_station, validate_run

REPO = Path(__file__).resolve().parents[1]
STATION = REPO / "fixtures" / "stations" / "emulated.yaml"
DUT = REPO / "fixtures" / "duts" / "1s4p_diagonal.yaml"
PLAN = REPO / "test_plans" / "bank_smoke.yaml"
SCENARIOS = sorted((REPO / "fixtures" / "scenarios").glob("*.yaml"))
BASES: dict[str, list[Path]] = {"station": [STATION], "plan": [PLAN], "dut": [DUT],
                                "scenario": SCENARIOS}
MESSAGE = re.compile(r"^[^\n\r]+: [^\n\r]*: found [^\n\r]*; allowed: [^\n\r]*$")

EXAMPLES_PER_KIND = int(os.environ.get("BANKHIL_FUZZ_EXAMPLES", "200"))  # more for a long hunt
# Time bound per example: 2 s of CPU (process time), checked in _fuzz, and a 30 s wall-clock
# watchdog against a hang (a blocked read uses no CPU). Hypothesis' own wall-clock deadline is
# off: on a loaded machine it fails examples that took 40 ms of CPU (flaky, not a finding).
CPU_SECONDS_PER_EXAMPLE = 2.0
WALL_SECONDS_PER_EXAMPLE = 30
FUZZ = settings(max_examples=EXAMPLES_PER_KIND, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ====================================================================== what a mutation writes
def _keys(data: Any) -> set[str]:
    if isinstance(data, dict):
        return set(data) | {k for v in data.values() for k in _keys(v)}
    if isinstance(data, list):
        return {k for v in data for k in _keys(v)}
    return set()


# field names of the shipped files, so that added keys are sometimes ones a model knows
KNOWN_KEYS = sorted(set().union(*(_keys(yaml.safe_load(p.read_text())) for ps in BASES.values()
                                  for p in ps))
                    | {"timeout", "options", "serial_pattern", "retries", "markers", "defaults",
                       "modules", "leads", "cards", "channels", "calibration_due", "seriez"})
TEXTS = ["yes", "no", "on", "true", "4", "-1", "1e308", "1e308 s", "1e-300 s", "-5 s", "0 s",
         "2 s", "200 A", "-200 A", "0 A", "1e9 V", "14.2 V", "nan V", "inf s", "10 %", "5 Mohm",
         "auto", "s1p1", "s9p9", "p1", "main", "last", "first.+", "../../../../dev/zero",
         "/dev/zero", "(a+)+b", "(a|aa)+b", "((a{1000}){1000}){1000}", "2026-02-30", "", " ",
         "\x00", "a\nb", "x" * 400, "1.10", "TCPIP0::host::inst0::INSTR", "keysight_n5700"]
SNIPPETS = [
    "loop: &a [*a]\n",
    "loop: &m {self: *m}\n",
    "".join(["l0: &l0 [x, x, x, x, x, x, x, x, x]\n"]
            + [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n" for i in range(1, 9)]),
    "deep: " + "[" * 500 + "]" * 500 + "\n",
    "base: &b {k: 1}\nmerged: {<<: *b}\n",
    "when: 2026-02-30\n",
    "big: " + "9" * 5000 + "\n",
    "x: *undefined\n",
    "---\nname: second\n",
    "? [a, b]\n: 1\n",
    "bin: !!binary aGVsbG8=\n",
    "set: !!set {a, b}\n",
    "name: dup\n",
    "\t- tab\n",
]
TAGS = ['!!python/object/apply:os.system ["touch {marker}"]', "!!python/name:os.system",
        '!!python/object/new:os.system ["touch {marker}"]', "!!python/object:builtins.object {}",
        "!!binary aGVsbG8=", "!!float", "!!str", "!!int", "!custom", "&anchor", "*undefined"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(TEXTS),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.sampled_from(KNOWN_KEYS), children, max_size=4)),
    max_leaves=8)


QUANTITY = re.compile(r"^\s*[-+]?[\d.]+(e[-+]?\d+)?\s*(?P<unit>[A-Za-z%]+)\s*$")
numbers = st.one_of(st.integers(min_value=-10**6, max_value=10**6),
                    st.floats(min_value=-1e7, max_value=1e7, allow_nan=False),
                    st.sampled_from([0, 1, -1, 0.0, 1e-12, -1e-12, 1e308, -1e308, 2**63,
                                     float("inf"), float("nan")]))


@st.composite
def perturbed(draw: Any, value: Any) -> Any:
    """A value of the same kind as ``value``: another flag, number, or quantity in its unit --
    files that get past the types and reach the bounds and the cross-file checks."""
    if isinstance(value, bool):
        return draw(st.booleans())
    if isinstance(value, (int, float)):
        return draw(numbers)
    if isinstance(value, str):
        match = QUANTITY.match(value)
        if match:
            number = draw(numbers)
            return f"{number:g} {match.group('unit')}" if isinstance(number, float) else \
                f"{number} {match.group('unit')}"
        return draw(st.one_of(st.sampled_from(TEXTS), st.text(max_size=12, alphabet=st.characters(
            blacklist_categories=("Cs",)))))
    return draw(values)


def _paths(data: Any, prefix: tuple[Any, ...] = (), seen: set[int] | None = None) -> list[tuple[Any, ...]]:
    seen = set() if seen is None else seen
    if isinstance(data, (dict, list)):
        if id(data) in seen:  # a value made recursive by an earlier mutation
            return [prefix]
        seen.add(id(data))
    out = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            out += _paths(value, prefix + (key,), seen)
    elif isinstance(data, list):
        for index, value in enumerate(data):
            out += _paths(value, prefix + (index,), seen)
    return out


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


@st.composite
def mutated(draw: Any, kind: str, marker: Path) -> str:
    """The text of a shipped file of ``kind`` after one to three mutations."""
    base = draw(st.sampled_from(BASES[kind]))
    data = yaml.safe_load(base.read_text())
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        paths = _paths(data)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["perturb"] * 6 + ["replace", "replace", "delete", "delete",
                                                      "add", "text", "alias", "recursive"]))
        target = _get(data, path)
        parent, key = (_get(data, path[:-1]), path[-1]) if path else (None, None)
        if op == "add" or parent is None:
            if isinstance(target, dict):
                target[draw(st.sampled_from(KNOWN_KEYS))] = draw(values)
            elif isinstance(target, list):
                target.insert(draw(st.integers(0, len(target))), draw(values))
            else:
                parent[key] = [target, draw(values)]  # type: ignore[index]
        elif op == "perturb":
            parent[key] = draw(perturbed(target))
        elif op == "replace":
            parent[key] = draw(values)
        elif op == "delete":
            del parent[key]
        elif op == "text":
            parent[key] = str(target)
        elif op == "alias":  # the same value in two places: written as &id001 ... *id001
            parent[key] = _get(data, draw(st.sampled_from(paths)))
        elif op == "recursive" and isinstance(target, list):
            target.append(target)  # written as &id001 [..., *id001]
        elif op == "recursive" and isinstance(target, dict):
            target["self"] = target
        else:
            parent[key] = [target]
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    extra = draw(st.sampled_from(["none"] * 5 + ["snippet", "tag"]))
    lines = text.splitlines(keepends=True)
    if extra == "snippet":
        at = draw(st.integers(0, len(lines)))
        text = "".join(lines[:at] + [draw(st.sampled_from(SNIPPETS))] + lines[at:])
    elif extra == "tag":
        tag = draw(st.sampled_from(TAGS)).replace("{marker}", str(marker))
        candidates = [i for i, line in enumerate(lines) if re.match(r"^\s*(- )?[\w.+-]+: \S", line)]
        if candidates:
            i = draw(st.sampled_from(candidates))
            head, _, _ = lines[i].partition(": ")
            lines[i] = f"{head}: {tag}\n"
            text = "".join(lines)
    return text


# ====================================================================== loading like hil run
@pytest.fixture(scope="module")
def checks():  # type: ignore[no-untyped-def]
    from test_plans.checks import known_checks
    return known_checks()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def load_like_hil_run(kind: str, path: Path, checks: Any) -> bool:
    """What RunContext.load does with the mutated file in place of the shipped one.

    A FileError from the mutated file's own loader must name that file; one from the cross
    checks may name any of the files (a plan that does not apply to a mutated DUT names the
    plan's line)."""
    try:
        if kind == "station":
            station = load_station(path)
        elif kind == "plan":
            plan = load_plan(path, checks)
        elif kind == "dut":
            bank = load_bank_spec(path)
        else:
            bank = load_bank_spec(DUT, path)
    except FileError as err:
        message = str(err)
        assert MESSAGE.match(message), message
        assert message.startswith(f"{path}:"), message
        return False
    try:
        if kind != "station":
            station = load_station(STATION)
        if kind != "plan":
            plan = load_plan(PLAN, checks)
        if kind in ("station", "plan"):  # the DUT named by the plan or the station
            dut = plan.dut if station.emulated and plan.dut else station.dut or plan.dut or DUT
            bank = load_bank_spec(dut)
        serial = f"{bank.dut.serial_prefix}{bank.dut.batch}"
        validate_run(plan, station, bank, checks, serial=serial)
    except FileError as err:
        assert MESSAGE.match(str(err)), str(err)
    return True


class _Hang(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Hang(f"an example took more than {WALL_SECONDS_PER_EXAMPLE} s of wall time")


def _fuzz(kind: str, text: str, workdir: Path, checks: Any, counts: Counter[str]) -> None:
    path = workdir / f"{kind}.yaml"
    path.write_text(text, encoding="utf-8")
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(WALL_SECONDS_PER_EXAMPLE)
    started = time.process_time()
    try:
        accepted = load_like_hil_run(kind, path, checks)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    cpu = time.process_time() - started
    assert cpu < CPU_SECONDS_PER_EXAMPLE, f"{cpu:.2f} s of CPU for one file"
    assert not (workdir / "PWNED").exists(), "a file's content was executed"
    counts["accepted" if accepted else "refused"] += 1


@pytest.mark.parametrize("kind", ["station", "plan", "dut", "scenario"])
def test_a_mutated_file_is_accepted_or_refused_on_one_line(kind: str, workdir: Path, checks) -> None:  # type: ignore[no-untyped-def]
    marker = workdir / "PWNED"
    counts: Counter[str] = Counter()

    @FUZZ
    @given(text=mutated(kind, marker))
    def fuzz(text: str) -> None:
        _fuzz(kind, text, workdir, checks, counts)

    started = time.monotonic()
    fuzz()
    print(f"fuzz {kind}: {sum(counts.values())} files ({counts['accepted']} past their own "
          f"loader, {counts['refused']} refused by it) in {time.monotonic() - started:.1f} s")
    # the generator reached both paths: files the loader takes and files it refuses (a loader
    # that refused everything, or a generator that only made valid files, would pass silently)
    assert counts["accepted"] > 0 and counts["refused"] > 0, counts
    assert not marker.exists()
