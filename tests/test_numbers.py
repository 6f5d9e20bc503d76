"""Engineering form of numbers: what the console, Allure, the summary and compare print."""

from __future__ import annotations

import pytest

from harness.numbers import duration, eng


@pytest.mark.parametrize("value, unit, kwargs, text", [
    (1.15e-05, "V", {}, "11.5 uV"),
    (0.003, "ohm", {}, "3.00 mOhm"),
    (-57.77792360000001, "A", {}, "-57.8 A"),
    (71.0, "V", {}, "71.0 V"),
    (0.0, "V", {}, "0.00 V"),
    (0, "", {}, "0"),
    (3, "", {}, "3"),
    (1e-9, "s", {}, "1.00 ns"),
    (1e9, "W", {}, "1.00 GW"),
    (1e12, "W", {}, "1000 GW"),
    (float("nan"), "V", {}, "NaN V"),
    (float("inf"), "A", {}, "inf A"),
    (-0.000162, "s", {}, "-162 us"),
    (0.99996, "V", {}, "1.00 V"),
    (999.6, "V", {}, "1.00 kV"),
    (12.9734, "V", {"resolution": 0.001}, "12.973 V"),
    (39.4, "%", {}, "39.4 %"),
    (52.17, "K", {}, "52.2 K"),
    (0.061, "V", {"digits": 2}, "61 mV"),
    (3.0, "mohm", {}, "3.00 mOhm"),
    (400.0000000001, "Ah", {}, "400 Ah"),
    (True, "", {}, "true"),
    ("2.1.0", "", {}, "2.1.0"),
    (None, "V", {}, "-"),
])
def test_engineering_form(value: object, unit: str, kwargs: dict, text: str) -> None:
    assert eng(value, unit, **kwargs) == text


@pytest.mark.parametrize("seconds, text", [(14, "14 s"), (2.5, "2.5 s"), (150, "2.5 min"),
                                           (4.3 * 3600, "4.3 h"), (float("nan"), "-")])
def test_bench_time_in_the_largest_fitting_unit(seconds: float, text: str) -> None:
    assert duration(seconds) == text
