"""Numbers as an engineer writes them: engineering form, SI prefixes, no float noise.

``eng(1.15e-05, "V")`` -> ``"11.5 uV"``; ``eng(0.003, "ohm")`` -> ``"3.00 mOhm"``;
``eng(-57.77792360000001, "A")`` -> ``"-57.8 A"``; ``eng(71.0, "V")`` -> ``"71.0 V"``.

Significant digits: three by default (a bench reading rarely carries more), or as many as make
the last digit the size of a given ``resolution`` (an instrument's resolution, or the smallest
step that matters to a limit), so ``eng(12.9734, "V", resolution=0.001)`` is ``"12.973 V"``.
Units that take no prefix (``%``, ``K``, ``degC``, counts) are written in plain decimal form
with the same digits. Used by the console, the Allure parameters, the summary page and
``hil compare``, so the same value reads the same everywhere.
"""

from __future__ import annotations

import math
from typing import Any

# prefix exponent -> symbol (ASCII: reports, CSV and terminals all read it)
PREFIXES = {-12: "p", -9: "n", -6: "u", -3: "m", 0: "", 3: "k", 6: "M", 9: "G"}
# units written with an SI prefix, and how they are spelled then
PREFIXABLE = {"V": "V", "A": "A", "ohm": "Ohm", "W": "W", "J": "J", "s": "s", "Hz": "Hz", "F": "F",
              "H": "H", "Wh": "Wh", "Ah": "Ah", "A2s": "A2s"}
# units written as they are, never prefixed
PLAIN = {"%", "K", "degC", "", "m", "mm2", "Ah/cycle"}
# unit symbols that already carry a prefix: back to the base unit first
PREFIXED = {"mV": ("V", 1e-3), "uV": ("V", 1e-6), "kV": ("V", 1e3), "mA": ("A", 1e-3),
            "uA": ("A", 1e-6), "kA": ("A", 1e3), "mohm": ("ohm", 1e-3), "uohm": ("ohm", 1e-6),
            "kohm": ("ohm", 1e3), "mW": ("W", 1e-3), "kW": ("W", 1e3), "mJ": ("J", 1e-3),
            "kJ": ("J", 1e3), "kWh": ("Wh", 1e3), "ms": ("s", 1e-3), "us": ("s", 1e-6),
            "kHz": ("Hz", 1e3), "mAh": ("Ah", 1e-3)}
DEFAULT_DIGITS = 3


def _digits_for(value: float, resolution: float | None, digits: int | None) -> int:
    if digits is not None:
        return max(1, min(int(digits), 12))
    if resolution and resolution > 0 and value != 0:
        return max(1, min(int(math.floor(math.log10(abs(value)))) - int(math.floor(math.log10(resolution))) + 1, 12))
    return DEFAULT_DIGITS


def _significant(value: float, digits: int) -> str:
    """``value`` with ``digits`` significant digits, trailing zeros kept, no exponent."""
    if value == 0:
        return "0" if digits <= 1 else "0." + "0" * (digits - 1)
    exponent = int(math.floor(math.log10(abs(value))))
    decimals = max(digits - 1 - exponent, 0)
    text = f"{round(value, decimals):.{decimals}f}"
    return text


def eng(value: Any, unit: str = "", *, digits: int | None = None, resolution: float | None = None) -> str:
    """One value in engineering form with its unit (text, flags and None as they are)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if not isinstance(value, (int, float)):
        try:
            value = float(value)  # numpy scalars
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, int) and (not unit or unit in PLAIN):
        return f"{value}{(' ' + unit) if unit else ''}"
    value = float(value)
    if math.isnan(value):
        return "NaN" + (f" {unit}" if unit else "")
    if math.isinf(value):
        return ("-inf" if value < 0 else "inf") + (f" {unit}" if unit else "")
    base, scale = PREFIXED.get(unit, (unit, 1.0))
    value *= scale
    if resolution is not None:
        resolution *= scale
    n = _digits_for(value, resolution, digits)
    if base not in PREFIXABLE:
        return _significant(value, n) + (f" {base}" if base else "")
    if value == 0:
        return _significant(0.0, n) + f" {PREFIXABLE[base]}"
    # round first, so 999.96 mV becomes 1.00 V, not 1000 mV
    exponent = int(math.floor(math.log10(abs(value))))
    rounded = float(f"{value:.{n - 1}e}")
    exponent = int(math.floor(math.log10(abs(rounded)))) if rounded else exponent
    prefix_exp = max(min(3 * math.floor(exponent / 3), 9), -12)
    mantissa = rounded / 10 ** prefix_exp
    return f"{_significant(mantissa, n)} {PREFIXES[prefix_exp]}{PREFIXABLE[base]}"


def compact(value: Any, unit: str = "") -> str:
    """A limit as written: only the digits it has (``10 %``, ``14.6 V``, ``100 mV``)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value:
        mantissa = f"{abs(float(value)):.6e}".split("e")[0].replace(".", "").rstrip("0")
        return eng(value, unit, digits=max(len(mantissa), 1))
    return eng(value, unit)


def duration(seconds: float) -> str:
    """Bench time in the largest unit that fits: ``14 s``, ``2.5 min``, ``4.3 h``."""
    if seconds is None or math.isnan(seconds):
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


__all__ = ["compact", "duration", "eng"]
