"""`hil compare`: run B against run A, classified and ordered regressions first.

Unit tests build small runs straight into a temporary SQLite store through ResultStore's write
API, one classification at a time; the must-show runs `firmware_qualification` on the released
firmware (2.1.0) and on the candidate (2.2.0-rc1) with `hil run`, then compares them: the two
comm-loss steps the candidate breaks come first as regressions, nothing healthy is among them,
and one Allure result with the HTML and CSV attached lands in the allure-results folder.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from harness.reporting import compare as cmp
from harness.store import ResultStore

REPO = Path(__file__).resolve().parents[1]

LE_2 = {"kind": "le", "high": 2.0}
LE_10 = {"kind": "le", "high": 10.0}
RECORD = {"kind": "record"}

# One measurement: (name, value, unit, limits, verdict)
M = tuple[str, Any, str, dict[str, Any], str]


def make_run(store: ResultStore, steps: dict[str, tuple[str, list[M]]], *, plan: str = "p",
             serial: str = "SN-1", model: str = "dut", firmware: str | None = None,
             modules: list[dict[str, Any]] | None = None, verdict: str = "pass") -> int:
    """A finished run with the given steps ({name: (verdict, measurements)}) in order."""
    run_id = store.start_run(station="bench-1", operator="op", plan_name=plan, plan_version="1.0",
                             emulated=True)
    store.add_dut(run_id, serial, model, modules or [], firmware=firmware)
    for name, (step_verdict, measurements) in steps.items():
        step_id = store.start_step(run_id, name, check=name)
        for m_name, value, unit, limits, m_verdict in measurements:
            store.record_measurement(step_id, m_name, value, unit, limits, m_verdict)
        store.finish_step(step_id, step_verdict, 0.1)
    store.finish_run(run_id, verdict)
    return run_id


@pytest.fixture
def store(tmp_path: Path):
    with ResultStore(f"sqlite:///{tmp_path / 'r.sqlite'}") as s:
        yield s


def row(comparison: cmp.Comparison, step: str, measurement: str | None = None) -> cmp.Row:
    found = [r for r in comparison.rows if r.step == step and r.measurement == measurement]
    assert len(found) == 1, (step, measurement, comparison.rows)
    return found[0]


# ------------------------------------------------------------------ classification


@pytest.fixture
def pair(store: ResultStore) -> cmp.Comparison:
    """Two runs with one step per classification."""
    a = make_run(store, {
        "only_a_step": ("pass", [("gone_with_step", 1.0, "V", LE_2, "pass")]),
        "regress": ("pass", [("r", 1.0, "V", LE_2, "pass")]),
        "improve": ("fail", [("i", 3.0, "V", LE_2, "fail")]),
        "drift": ("pass", [("moved", 1.0, "s", LE_10, "pass"), ("jitter", 1.0, "s", LE_10, "pass"),
                           ("into_band", 1.0, "V", LE_2, "pass"),
                           ("limits", 1.0, "V", LE_2, "pass"),
                           ("text", "2.1.0", "", RECORD, "pass"),
                           ("record", 400.0, "A", RECORD, "pass")]),
        "steady": ("pass", [("s", 1.0, "V", LE_2, "pass"), ("nan", math.nan, "V", RECORD, "pass"),
                            ("loop", 1.0, "V", LE_2, "pass"), ("loop", 1.5, "V", LE_2, "pass")]),
        "lost": ("pass", [("kept", 1.0, "V", LE_2, "pass"), ("dropped", 1.0, "V", LE_2, "pass")]),
        "grew": ("pass", [("kept", 1.0, "V", LE_2, "pass")]),
    }, verdict="fail")
    b = make_run(store, {
        "regress": ("fail", [("r", 3.0, "V", LE_2, "fail")]),
        "improve": ("pass", [("i", 1.0, "V", LE_2, "pass")]),
        "drift": ("pass", [("moved", 2.0, "s", LE_10, "pass"), ("jitter", 1.2, "s", LE_10, "pass"),
                           ("into_band", 1.9, "V", {**LE_2, "marginal_pct": 10}, "marginal"),
                           ("limits", 1.0, "V", {"kind": "le", "high": 3.0}, "pass"),
                           ("text", "2.2.0-rc1", "", RECORD, "pass"),
                           ("record", 390.0, "A", RECORD, "pass")]),
        "steady": ("pass", [("s", 1.0, "V", LE_2, "pass"), ("nan", math.nan, "V", RECORD, "pass"),
                            ("loop", 1.0, "V", LE_2, "pass"), ("loop", 2.5, "V", LE_2, "fail")]),
        "lost": ("pass", [("kept", 1.0, "V", LE_2, "pass")]),
        "grew": ("fail", [("kept", 1.0, "V", LE_2, "pass"), ("new_bad", 9.0, "V", LE_2, "fail"),
                          ("new_ok", 1.0, "V", LE_2, "pass")]),
        "only_b_step": ("pass", [("fresh", 1.0, "V", LE_2, "pass")]),
        "only_b_failing": ("error", []),
    })
    return cmp.compare_runs(store, a, b)


def test_pass_to_fail_is_a_regression_of_step_and_measurement(pair):
    assert row(pair, "regress").kind == "regression"
    r = row(pair, "regress", "r")
    assert (r.kind, r.verdict_a, r.verdict_b, r.delta) == ("regression", "pass", "fail", 2.0)


def test_fail_to_pass_is_an_improvement(pair):
    assert row(pair, "improve").kind == "improvement"
    assert row(pair, "improve", "i").kind == "improvement"


def test_same_verdict_changed_by_value_band_limits_or_text(pair):
    moved = row(pair, "drift", "moved")  # 1 s of a 10 s window: 10 % > 5 %; shown as % of A's 1 s
    assert moved.kind == "changed" and moved.delta_pct == pytest.approx(100.0)
    assert "window" in moved.note
    assert row(pair, "drift", "jitter").kind == "same"  # 0.2 s of 10 s: 2 %
    band = row(pair, "drift", "into_band")
    assert band.kind == "changed" and "marginal" in band.note
    limits = row(pair, "drift", "limits")
    assert limits.kind == "changed" and "<= 2 V -> <= 3 V" in limits.note
    assert row(pair, "drift", "text").kind == "changed"
    assert row(pair, "drift", "record").kind == "same"  # 10 A of 400 A: 2.5 %
    assert row(pair, "drift").kind == "same"  # the step's own verdict did not move


def test_nothing_moved_is_same_nan_included(pair):
    assert row(pair, "steady").kind == "same"
    assert row(pair, "steady", "s").kind == "same"
    assert row(pair, "steady", "nan").kind == "same"


def test_a_name_recorded_twice_is_paired_by_occurrence(pair):
    assert row(pair, "steady", "loop").kind == "same"
    second = row(pair, "steady", "loop[2]")
    assert (second.kind, second.value_a, second.value_b) == ("regression", 1.5, 2.5)


def test_measurement_gone_from_a_step_that_passed_is_a_regression(pair):
    gone = row(pair, "lost", "dropped")
    assert gone.kind == "regression" and "disappeared" in gone.note
    assert row(pair, "lost", "kept").kind == "same"


def test_new_measurements_failing_is_a_regression_healthy_is_only_in_b(pair):
    assert row(pair, "grew", "new_bad").kind == "regression"
    assert row(pair, "grew", "new_ok").kind == "only_in_b"


def test_steps_of_one_run_only(pair):
    assert row(pair, "only_a_step").kind == "only_in_a"
    assert row(pair, "only_a_step", "gone_with_step").kind == "only_in_a"  # not "disappeared"
    assert row(pair, "only_b_step").kind == "only_in_b"
    assert row(pair, "only_b_step", "fresh").kind == "only_in_b"
    assert row(pair, "only_b_failing").kind == "regression"  # a new step that errors


def test_rows_ordered_by_kind_then_plan_order(pair):
    ranks = [cmp.KINDS.index(r.kind) for r in pair.rows]
    assert ranks == sorted(ranks)
    assert pair.rows[0].kind == "regression"
    regressions = [(r.step, r.measurement) for r in pair.regressions]
    assert regressions[:2] == [("regress", None), ("regress", "r")]  # step before its rows
    steps = [s for s, _ in regressions]
    assert steps.index("regress") < steps.index("steady") < steps.index("lost") \
        < steps.index("grew") < steps.index("only_b_failing")  # plan order within the kind
    assert pair.counts["improvement"] == 2 and pair.counts["changed"] == 4


def test_same_run_against_itself_is_all_same(store):
    a = make_run(store, {"s": ("pass", [("x", 1.0, "V", LE_2, "pass")])})
    comparison = cmp.compare_runs(store, a, a)
    assert {r.kind for r in comparison.rows} == {"same"} and not comparison.regressions


def test_relative_tolerance_is_a_parameter(store):
    a = make_run(store, {"s": ("pass", [("x", 1.0, "s", LE_10, "pass")])})
    b = make_run(store, {"s": ("pass", [("x", 1.3, "s", LE_10, "pass")])})  # 3 % of 10 s
    assert row(cmp.compare_runs(store, a, b), "s", "x").kind == "same"
    assert row(cmp.compare_runs(store, a, b, rel_tol=0.02), "s", "x").kind == "changed"


def test_unfinished_step_in_b_counts_as_failing(store):
    a = make_run(store, {"s": ("pass", [])})
    b = store.start_run(station="bench-1", operator="op", plan_name="p", emulated=True)
    store.start_step(b, "s")  # killed before finish_step
    assert row(cmp.compare_runs(store, a, b), "s").kind == "regression"


# ------------------------------------------------------------------ run headers


def test_header_firmware_from_dut_then_modules_then_measurement(store):
    own = make_run(store, {}, firmware="3.0.0", model="bank")
    modules = make_run(store, {}, modules=[{"position": "s1p1", "firmware": "2.1.0"},
                                           {"position": "s1p2", "firmware": "2.1.0"}])
    measured = make_run(store, {"fw": ("pass", [("master_firmware", "2.2.0-rc1", "", RECORD,
                                                 "pass")])})
    headers = cmp.compare_runs(store, own, modules), cmp.compare_runs(store, measured, own)
    assert (headers[0].run_a.firmware, headers[0].run_a.firmware_source) == ("3.0.0", "dut")
    assert (headers[0].run_b.firmware, headers[0].run_b.firmware_source) == ("2.1.0", "modules")
    assert headers[1].run_a.firmware == "2.2.0-rc1"
    assert headers[1].run_a.firmware_source == "measurement master_firmware"
    a = headers[0].run_a
    assert (a.plan_name, a.plan_version, a.serials, a.models, a.station, a.verdict) == \
        ("p", "1.0", ("SN-1",), ("bank",), "bench-1", "pass")


# ------------------------------------------------------------------ finding runs


def test_resolve_run_by_id_uuid_prefix_and_last(store):
    first, second = make_run(store, {}), make_run(store, {})
    uuid = store.run(first).uuid
    assert cmp.resolve_run(store, str(first)).id == first
    assert cmp.resolve_run(store, uuid).id == first
    assert cmp.resolve_run(store, uuid[:8].upper()).id == first
    assert cmp.resolve_run(store, "last").id == second
    assert cmp.resolve_run(store, "last~1").id == first
    for bad in ("last~2", "999", "zz", "abc", "0000000000"):
        with pytest.raises(cmp.RunNotFound):
            cmp.resolve_run(store, bad)


# ------------------------------------------------------------------ the command


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cmp.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_match_hil_run():
    from harness.plugin import DEFAULT_RESULTS
    args = parse("last~1", "last")
    assert args.results == DEFAULT_RESULTS and args.format == "text" and not args.no_allure
    assert Path(args.out).parts[-2:] == ("reports", "compare")
    assert args.alluredir is None  # run B's own allure-results, so its report shows the comparison


def test_run_not_found_exits_2_with_one_line(store, tmp_path, capsys):
    make_run(store, {})
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    assert cmp.command(parse("1", "42", "--results", url, "--out", str(tmp_path / "o"),
                             "--no-allure")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "42" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_missing_store_exits_2_and_is_not_created(tmp_path, capsys):
    path = tmp_path / "nowhere" / "r.sqlite"
    assert cmp.command(parse("1", "2", "--results", f"sqlite:///{path}", "--no-allure")) == 2
    assert "no result store" in capsys.readouterr().err
    assert not path.exists() and not path.parent.exists()


def test_no_regression_exits_0_and_writes_csv_json_html(store, tmp_path, capsys):
    a = make_run(store, {"<s&>": ("pass", [("x", 1.0, "V", LE_2, "pass")])})
    b = make_run(store, {"<s&>": ("pass", [("x", 1.0, "V", LE_2, "pass")])})
    out = tmp_path / "out"
    args = parse(str(a), str(b), "--results", f"sqlite:///{tmp_path / 'r.sqlite'}", "--out",
                 str(out), "--alluredir", str(tmp_path / "allure"))
    assert cmp.command(args) == 0
    printed = capsys.readouterr().out
    assert "NO REGRESSION" in printed and f"{a}-vs-{b}.html" in printed
    page = (out / f"{a}-vs-{b}.html").read_text()
    assert "&lt;s&amp;&gt;" in page and "<s&>" not in page and "<script" not in page
    assert (out / f"{a}-vs-{b}.csv").read_text().splitlines()[0].startswith("kind,step,")
    assert json.loads((out / f"{a}-vs-{b}.json").read_text())["summary"]["same"] == 2
    result = next((tmp_path / "allure").glob("*-result.json"))
    assert json.loads(result.read_text())["status"] == "passed"


def test_json_format_prints_the_comparison(store, tmp_path, capsys):
    a = make_run(store, {"s": ("pass", [("x", 1.0, "V", LE_2, "pass")])})
    b = make_run(store, {"s": ("fail", [("x", 3.0, "V", LE_2, "fail")])})
    args = parse("last~1", "last", "--results", f"sqlite:///{tmp_path / 'r.sqlite'}", "--out",
                 str(tmp_path / "out"), "--no-allure", "--format", "json")
    assert cmp.command(args) == 1
    doc = json.loads(capsys.readouterr().out)
    assert (doc["run_a"]["id"], doc["run_b"]["id"]) == (a, b)
    assert doc["rows"][0]["kind"] == "regression" and doc["files"]["allure"] is None


# ------------------------------------------------------------------ the HTML page


class _Cells(HTMLParser):
    """A page's table rows as [(tr class, [cell text, ...])], as a browser reads them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[tuple[str | None, list[str]]] = []
        self.tags: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "tr":
            self.rows.append((dict(attrs).get("class"), []))
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1][1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def cells(page: str) -> _Cells:
    parsed = _Cells()
    parsed.feed(page)
    parsed.close()
    return parsed


EVIL_STEP = "<script>alert('step')</script>"
EVIL_MEASUREMENT = '<script src="x.js"></script>&'


def test_html_escapes_step_and_measurement_names(store):
    """A name is text on the page, never markup: `<script>` reads as written, runs nothing."""
    a = make_run(store, {EVIL_STEP: ("pass", [(EVIL_MEASUREMENT, 1.0, "V", LE_2, "pass")])},
                 serial="<b>SN</b>")
    b = make_run(store, {EVIL_STEP: ("fail", [(EVIL_MEASUREMENT, 3.0, "V", LE_2, "fail")])})
    page = cmp.render_html(cmp.compare_runs(store, a, b))
    assert "<script" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(&#39;step&#39;)&lt;/script&gt;" in page
    assert "&lt;script src=&#34;x.js&#34;&gt;&lt;/script&gt;&amp;" in page
    parsed = cells(page)
    assert "script" not in parsed.tags and "b" not in parsed.tags
    rows = {tuple(texts[1:3]): (kind, texts) for kind, texts in parsed.rows if kind}
    assert rows[(EVIL_STEP, "(step)")][0] == "regression"
    assert rows[(EVIL_STEP, EVIL_MEASUREMENT)][0] == "regression"
    assert ["DUT serial", "<b>SN</b>", "SN-1"] in [texts for _, texts in parsed.rows]


def test_html_page_has_both_runs_the_counts_and_every_row(pair):
    """The page a reader gets: both runs side by side, the counts line, one row per pair with
    the ten columns, numbers right-aligned, the kinds coloured by the inline style."""
    page = cmp.render_html(pair)
    assert page.startswith("<!DOCTYPE html>") and f"<title>{pair.title}</title>" in page
    assert f"<h1>{pair.title}</h1>" in page
    assert "tr.regression td { background: #fde2e2; }" in page and "td.num {" in page
    counts = ", ".join(f"{n} {kind}" for kind, n in pair.counts.items() if n)
    assert f"<p>{counts} (relative tolerance 5 %)</p>" in page
    parsed = cells(page)
    head = [texts for kind, texts in parsed.rows[:9]]
    assert head[0] == ["", "A (reference)", "B"]
    assert [texts[0] for texts in head[1:]] == [label for label, _ in pair.run_a.lines()]
    assert parsed.rows[9] == (None, list(cmp.HTML_COLUMNS))
    body = parsed.rows[10:]
    assert [kind for kind, _ in body] == [row.kind for row in pair.rows]
    assert all(len(texts) == len(cmp.HTML_COLUMNS) for _, texts in body)
    regress = next(texts for _, texts in body if texts[1:3] == ["regress", "r"])
    assert regress == ["regression", "regress", "r", "pass", "fail", "1 V", "3 V", "<= 2 V",
                       "+2.00 V (+200.0 % of A)", ""]
    assert page.count('<td class="num">') == 3 * len(pair.rows)


def test_no_html_is_built_from_strings():
    """Every HTML page comes from a template under harness/reporting/templates (autoescaped);
    no source builds tags in strings. A line that only *matches* a tag (to take it out of a
    page someone else drew) says so with ``# pattern, not markup``."""
    tag = re.compile(r"<(?:!DOCTYPE|html|head|body|table|tr|td|th|p|div|pre|h[1-6]|ul|ol|li|span"
                     r"|img|style|script)(?:\s[^<>]*)?>", re.IGNORECASE)
    found = [f"{path.relative_to(REPO)}:{n}: {line.strip()}"
             for folder in ("harness", "emulator", "test_plans", "instruments")
             for path in sorted((REPO / folder).rglob("*.py"))
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if tag.search(line) and not line.rstrip().endswith("# pattern, not markup")]
    assert not found, "HTML built from strings (use a template):\n" + "\n".join(found)


def test_pages_share_one_autoescaping_environment(pair, monkeypatch):
    """The comparison page is rendered through the environment the summary page uses, and
    every template there is autoescaped."""
    from harness.reporting import templating
    env = templating.environment()
    assert env is templating.environment()
    templates = sorted(p.name for p in templating.TEMPLATES.glob("*.j2"))
    assert {"compare.html.j2", "summary.html.j2"} <= set(templates)
    assert all(env.autoescape(name) for name in templates)
    used: list[str] = []
    monkeypatch.setattr(templating, "environment", lambda: SimpleNamespace(
        get_template=lambda name: used.append(name) or env.get_template(name)))
    cmp.render_html(pair)
    assert used == ["compare.html.j2"]


# ------------------------------------------------------------------ must-show: firmware


def hil_run(dut: str, tmp: Path) -> subprocess.Popen:
    reports = tmp / ("reports-" + dut.replace("/", "_"))
    return subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", "firmware_qualification", "--dut", dut,
         "--results", f"sqlite:///{tmp / 'r.sqlite'}", "--reports", str(reports)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def firmware_runs(tmp_path_factory) -> tuple[Path, int, int]:
    """Released (2.1.0) and candidate (2.2.0-rc1) firmware through the same plan, in parallel;
    (folder, good run id, candidate run id)."""
    tmp = tmp_path_factory.mktemp("firmware")
    good, candidate = hil_run("1s4p_diagonal", tmp), hil_run("series/1s4p_diagonal_candidate", tmp)
    outputs = {}
    for name, proc in (("good", good), ("candidate", candidate)):
        try:
            outputs[name] = proc.communicate(timeout=600)[0]
        except subprocess.TimeoutExpired:
            for other in (good, candidate):
                other.kill()
            raise
    assert good.returncode == 0, outputs["good"][-3000:]
    assert candidate.returncode == 1, outputs["candidate"][-3000:]
    with ResultStore(f"sqlite:///{tmp / 'r.sqlite'}") as store:
        by_model = {store.duts(run.id)[0].model: run.id for run in store.runs()}
    return tmp, by_model["1s4p_diagonal"], by_model["1s4p_diagonal_candidate"]


FAILED_BY_CANDIDATE = {"comm_loss_heartbeat", "comm_loss_silent_module"}


def test_candidate_firmware_regressions_come_first(firmware_runs):
    tmp, good, candidate = firmware_runs
    with ResultStore(f"sqlite:///{tmp / 'r.sqlite'}") as store:
        comparison = cmp.compare_runs(store, good, candidate)
    n = len(comparison.regressions)
    assert n and all(r.kind == "regression" for r in comparison.rows[:n])
    assert {r.step for r in comparison.rows[:n] if r.measurement is None} == FAILED_BY_CANDIDATE
    assert {r.step for r in comparison.regressions} == FAILED_BY_CANDIDATE  # nothing healthy
    assert {r.measurement for r in comparison.regressions if r.measurement} >= \
        {"reaction_time", "totals_drop_time"}
    for step in ("firmware_consistency", "aggregation", "admission"):
        assert row(comparison, step).kind == "same"
    assert (comparison.run_a.firmware, comparison.run_b.firmware) == ("2.1.0", "2.2.0-rc1")
    assert comparison.run_a.verdict == "pass" and comparison.run_b.verdict == "fail"


def test_compare_command_writes_files_and_allure_result(firmware_runs, capsys):
    tmp, good, candidate = firmware_runs
    allure = tmp / "allure-results"
    args = parse(str(good), str(candidate), "--results", f"sqlite:///{tmp / 'r.sqlite'}",
                 "--out", str(tmp / "compare"), "--alluredir", str(allure))
    assert cmp.command(args) == 1
    printed = capsys.readouterr().out
    assert "comm_loss_heartbeat" in printed and "REGRESSION" in printed
    stem = tmp / "compare" / f"{good}-vs-{candidate}"
    for suffix in (".csv", ".json", ".html"):
        assert stem.with_suffix(suffix).is_file() and str(stem.with_suffix(suffix)) in printed
    results = [json.loads(p.read_text()) for p in allure.glob("*-result.json")]
    assert len(results) == 1
    result = results[0]
    assert result["name"] == f"Comparison: firmware_qualification run {good} vs run {candidate}"
    assert result["status"] == "failed"
    labels = {(label["name"], label["value"]) for label in result["labels"]}
    assert {("epic", "Firmware comparison"), ("feature", "hil compare")} <= labels
    assert "comm_loss_heartbeat" in result["description"]
    assert "comm_loss_silent_module" in result["description"]
    attached = {a["type"]: allure / a["source"] for a in result["attachments"]}
    assert set(attached) == {"text/html", "text/csv"}
    assert attached["text/html"].read_text() == stem.with_suffix(".html").read_text()
    assert attached["text/csv"].is_file()


def test_percentages_are_one_kind_relative_to_run_a() -> None:
    """The same +24 s reads the same percentage whatever the limits: % of run A's value."""
    from types import SimpleNamespace as NS

    from harness.reporting.compare import value_change
    a = NS(value=6.0, limit_kind="le", low=None, high=7.0, nominal=None, limits_extra=None)
    b = NS(value=30.0, limit_kind="le", low=None, high=7.0, nominal=None, limits_extra=None)
    b_wide = NS(value=30.0, limit_kind="in_range", low=0.0, high=100.0, nominal=None, limits_extra=None)
    assert value_change(a, b, 0.05)[1] == pytest.approx(400.0)
    assert value_change(a, b_wide, 0.05)[1] == pytest.approx(400.0)


def test_runs_of_different_plans_are_refused_unless_forced(tmp_path, capsys) -> None:
    """exit 2 with one line when the plans differ; --force compares anyway."""
    from harness.reporting.compare import command
    from harness.store import ResultStore
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    store = ResultStore(url)
    ids = [store.start_run(station="s", operator="o", plan_name=name, emulated=True,
                           extra={"module_model": "LFP12.8-100", "topology": "1S4P"})
           for name in ("bank_smoke", "eol_module")]
    for run_id in ids:
        store.finish_run(run_id, "pass")
    store.close()
    args = __import__("argparse").Namespace(
        run_a=str(ids[0]), run_b=str(ids[1]), results=url, out=str(tmp_path / "out"), alluredir=None,
        no_allure=True, format="text", tolerance=5.0, force=False)
    assert command(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bank_smoke" in err[0] and "eol_module" in err[0] and "--force" in err[0]
    args.force = True
    assert command(args) == 0
