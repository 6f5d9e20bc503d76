"""The qualification summary as a PDF: headless Chromium prints the HTML page (A4, as its
``@page`` rule says), so what is signed is exactly what the page shows.

Chromium is a Debian package (``apt-get install chromium``); without it a clear message says
what to install, and the HTML page is still there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
HINT = "printing the summary needs headless Chromium: apt-get install chromium"


class PdfToolMissing(RuntimeError):
    """No browser to print with."""


def browser() -> str:
    explicit = os.environ.get("BANKHIL_CHROMIUM")
    if explicit and Path(explicit).is_file():
        return explicit
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    raise PdfToolMissing(HINT)


def print_pdf(page: Path, pdf: Path, timeout_s: float = 120.0) -> Path:
    """Print ``page`` (an HTML file) to ``pdf``; return its path."""
    page, pdf = page.resolve(), pdf.resolve()
    pdf.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bankhil-pdf-") as profile:
        command = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                   "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}",
                   "--no-pdf-header-footer", f"--print-to-pdf={pdf}", page.as_uri()]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0 or not pdf.is_file() or pdf.stat().st_size == 0:
        raise RuntimeError(f"chromium could not print {page.name} ({proc.returncode}): "
                           f"{(proc.stderr or proc.stdout)[-1500:]}")
    return pdf


__all__ = ["PdfToolMissing", "browser", "print_pdf"]
