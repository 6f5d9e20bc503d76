"""The qualification summary as a document people sign: printable (A4), failed requirements
first with their diagnosis and plot, numbers in engineering form, safety events folded, a
signature block; ``hil report --pdf`` prints it, and the PDF reads back (pdftotext)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from required_tools import required

from harness.store import ResultStore

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("summary")
    url = f"sqlite:///{tmp / 'results.sqlite'}"
    result = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--dut", "1s4p_same_side",
                             "--results", url, "--reports", str(tmp / "reports")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    store = ResultStore(url)
    run = store.runs()[0]
    return tmp, url, run


def test_summary_page_is_a_document(failed_run) -> None:  # type: ignore[no-untyped-def]
    _, _, run = failed_run
    page = next(Path(run.extra["run_dir"]).glob("summary-*.html")).read_text()
    assert "@page { size: A4" in page and "Approved by" in page and "Tested by" in page
    first_fail, first_pass = page.index(">FAIL<", page.index("Requirements")), page.index(">PASS<", page.index("Requirements"))
    assert first_fail < first_pass  # failed requirements first
    assert "Parallel Battery Storage: Safe Wiring &amp; BMS Sync" in page  # the document's title
    assert "data:image/png;base64," in page  # the failed step's plot
    assert "e-05" not in page and "000000" not in page  # engineering form, no float noise
    assert page.count("safe state (") <= 3  # safety events folded: one line per reason


def test_pdf_is_printed_and_reads_back(failed_run) -> None:  # type: ignore[no-untyped-def]
    tmp, url, run = failed_run
    if not (shutil.which("chromium") and shutil.which("pdftotext")):
        if required("BANKHIL_REQUIRE_REPORT_TOOLS"):
            pytest.fail("chromium and pdftotext are required (apt-get install chromium poppler-utils)")
        pytest.skip("chromium or pdftotext missing")
    from harness.reporting.pdf import print_pdf
    page = next(Path(run.extra["run_dir"]).glob("summary-*.html"))
    pdf = print_pdf(page, tmp / "summary.pdf")
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout
    assert "FAIL" in text and run.serials[0] in text
    assert "Tested by" in text and "Approved by" in text
    assert "current sharing" in text.lower()


def test_summary_escapes_names_and_shares_the_page_environment(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Serials, plan, step and measurement names are text on the page, never markup; the page
    comes from the one environment every HTML page is rendered through."""
    from harness.reporting import summary, templating

    calls: list[str] = []
    real = templating.environment()

    class Spy:
        def get_template(self, name: str):  # type: ignore[no-untyped-def]
            calls.append(name)
            return real.get_template(name)

    with ResultStore(f"sqlite:///{tmp_path / 'r.sqlite'}") as store:
        run = store.start_run(station="bench-1", operator="<i>op</i>", plan_name="p<script>",
                              emulated=True)
        store.add_dut(run, "<script>SN</script>", "dut", [])
        step = store.start_step(run, "<script>alert(1)</script>", check="c")
        store.record_measurement(step, "<script>m</script>", 3.0, "V", {"kind": "le", "high": 2.0},
                                 "fail")
        store.finish_step(step, "fail", 0.1)
        store.finish_run(run, "fail")
        monkeypatch.setattr(templating, "environment", Spy)
        page = summary.render_summary(store, run)
    assert calls == ["summary.html.j2"]
    assert "<script" not in page and "<i>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;script&gt;m&lt;/script&gt;" in page
    assert "&lt;script&gt;SN&lt;/script&gt;" in page and "&lt;i&gt;op&lt;/i&gt;" in page
