"""Common base for file models: unknown keys are errors, types are strict, numbers are bounded.

Strict: a file's ``parallel: "4"`` or ``recover: "yes"`` is refused, not coerced to 4 or true
(YAML already gives numbers and true/false their own types; quoted text is text). A whole
number is still accepted where a decimal is expected (``capacity_ah: 100``).

Bounded: every decimal is finite (no ``.inf``/``.nan``) and within the sane range of what it
measures (:func:`between`, per field in the models): a twin built from
``cross_section_mm2: 1e-300`` or ``tau1_s: 1e308`` would fail (or never finish) long after the
file was accepted, with the bench already assembled.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

MAX_VALUE = 1e6       # no figure of a module, bank or firmware profile comes near it
MIN_POSITIVE = 1e-9   # the smallest meaningful positive figure (1 ns, 1 nohm-scale parts)


class FileModel(BaseModel):
    """Strict model: a misspelt key is reported, never silently ignored; no type coercion."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


Positive = Annotated[float, Field(ge=MIN_POSITIVE, le=MAX_VALUE, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, le=MAX_VALUE, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
# A file stem in fixtures/<folder>/ (``lfp_12v8_100ah``, ``series/lfp_12v8_100ah_bms_lax``):
# no absolute path, no ``..``, nothing that could name a device or another tree.
STEM_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}){0,3}$")


def _stem(text: str) -> str:
    if not STEM_PATTERN.match(text):
        raise PydanticCustomError("stem", "a file stem in the fixtures folder, e.g. lfp_12v8_100ah "
                                  "or series/lfp_12v8_100ah_bms_lax (no absolute path, no ..)")
    return text


Stem = Annotated[str, AfterValidator(_stem)]


def between(low: float, high: float) -> Any:
    """A decimal from ``low`` to ``high`` inclusive: the sane range of one physical figure.

    Ranges are wide (a figure a real module, bank or firmware could have, with margin) but
    close enough that a typo of a few orders of magnitude, or a hostile value, is refused
    when the file is loaded instead of failing a run after the bench is assembled.
    """
    return Annotated[float, Field(ge=low, le=high, allow_inf_nan=False)]
