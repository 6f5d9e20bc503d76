"""Cell chemistry as one word ("LFP", "NMC" ...), whatever text a battery, a DUT file or a BMS
protocol uses for it: compared as chemistry, not as spelling."""

from __future__ import annotations

import re

# Normalised cell chemistry <- the words a battery may use for it (upper case, alphanumerics only;
# a trailing number is a variant: NMC811, LFP12 in a model name such as "LFP12.8-100").
CHEMISTRY_WORDS: dict[str, tuple[str, ...]] = {
    "LFP": ("LFP", "LIFEPO4", "LFEPO4", "LIFEPO", "LFE"),
    "NMC": ("NMC", "NCM", "LINMC", "LINCM"),
    "LTO": ("LTO", "LI4TI5O12"),
    "NCA": ("NCA", "LINCA"),
    "LCO": ("LCO", "LICOO2"),
    "LMO": ("LMO", "LIMN2O4"),
}
_CHEMISTRY_OF_WORD = {word: chem for chem, words in CHEMISTRY_WORDS.items() for word in words}
def normalise_chemistry(text: str | None) -> str | None:
    """The cell chemistry named in a piece of text ("LFP", "NMC", "LTO", "NCA", "LCO", "LMO"),
    or None. The text is split into words at anything but letters and digits; the first word
    that is a known name, or a known name followed by digits, wins:
    ``"LiFePO4 1S4P"`` -> LFP, ``"NMC811"`` -> NMC, ``"LFP12.8-100"`` -> LFP."""
    for word in re.split(r"[^A-Z0-9]+", (text or "").upper()):
        if not word:
            continue
        if word in _CHEMISTRY_OF_WORD:
            return _CHEMISTRY_OF_WORD[word]
        stem = word.rstrip("0123456789")
        if stem != word and stem in _CHEMISTRY_OF_WORD:
            return _CHEMISTRY_OF_WORD[stem]
    return None
