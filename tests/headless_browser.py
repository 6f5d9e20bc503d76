"""Headless Chromium for the tests that open a page (the Allure report, the operator panel):
finding the tools, skipping or failing when they are missing (``BANKHIL_REQUIRE_REPORT_TOOLS``),
and one driver set-up instead of one per test module."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from required_tools import required

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--no-first-run", "--disable-extensions")


def missing_tools() -> list[str]:
    missing = []
    if CHROMIUM is None:
        missing.append("chromium")
    if CHROMEDRIVER is None:
        missing.append("chromedriver (chromium-driver)")
    if importlib.util.find_spec("selenium") is None:
        missing.append("selenium")
    return missing


def require_browser() -> None:
    """Skip the test (fail it when CI requires the report tools) if a tool is missing."""
    missing = missing_tools()
    if missing:
        message = f"browser tools missing: {', '.join(missing)}"
        if required("BANKHIL_REQUIRE_REPORT_TOOLS"):
            pytest.fail(message)
        pytest.skip(message)


@contextmanager
def headless_chrome(window: str = "1280,800", *extra_flags: str, page_load_timeout_s: float = 60.0,
                    script_timeout_s: float | None = None) -> Iterator[Any]:
    """A headless Chromium driver, quit on the way out."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for flag in (*FLAGS, *extra_flags, f"--window-size={window}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER or ""), options=options)
    driver.set_page_load_timeout(page_load_timeout_s)
    if script_timeout_s is not None:
        driver.set_script_timeout(script_timeout_s)
    try:
        yield driver
    finally:
        driver.quit()
