"""The real members of each emulated instrument family, as data, and how a bench picks one.

An emulated instrument is one real model: it accepts what that model accepts and refuses
(``-222``) what it refuses, so a plan that passes on the emulated station does not ask a real
bench for what no real instrument of the family gives. Figures are the manufacturers' published
ratings (programming range details live in each endpoint module):

- Keysight N5700 (750 W and 1500 W, 1U) and N8700 (3.3 kW and 5 kW, 2U) system DC supplies:
  *Keysight N5700 Series Programming Guide / User's Guide* (N5741A-N5772A) and *N8700 Series
  User's Guide* (N8731A-N8762A) -- one SCPI command set, rectangular output: the power is
  rated volts x rated amps (the 6 V and 8 V 1500 W members are current-limited below it).
- ITECH IT8500+ DC electronic loads: *IT8500+ Series Programming Guide* (V2.0, 2022: models
  IT8511+ ... IT8516C+) and the IT8500+ datasheet for each member's voltage, current and power.
- ITECH IT6000C regenerative (bidirectional) DC supplies: *IT6000C Series Programming Guide*
  and datasheet; the model name carries the ratings (``IT6018C-80-450``: 18 kW, 80 V, +/-450 A,
  sourcing and sinking alike). Only the 3U units (6, 12, 18 kW) of three voltage lines are
  listed; bigger systems are these units in parallel.

The search tools available when this was written did not return the datasheet tables
themselves; the figures above are the published ones as known to the author and should be
checked against the current datasheets when a lab orders a unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence


@dataclass(frozen=True)
class InstrumentModel:
    """One real instrument model and its ratings.

    ``power_w`` bounds volts x amps (a load or regenerative unit limits there; an N5700 is
    rectangular, so its power is simply voltage_v x current_a). ``sinks``/``sources``: what the
    unit can do with current (a regenerative unit does both).
    """

    name: str
    family: str
    voltage_v: float
    current_a: float
    power_w: float
    sources: bool = True
    sinks: bool = False

    def serves(self, voltage_v: float, current_a: float, power_w: float = 0.0) -> bool:
        """Can this model be set to ``current_a`` at up to ``voltage_v`` and deliver (or take)
        ``power_w``?"""
        return (self.voltage_v >= voltage_v and self.current_a >= current_a
                and self.power_w >= power_w)

    def rating(self) -> dict[str, float]:
        """The station-file rating of this model (``voltage_v``, ``current_a``, ``power_w``)."""
        return {"voltage_v": self.voltage_v, "current_a": self.current_a, "power_w": self.power_w}


def _family(family: str, rows: Iterable[tuple[str, float, float, float]], *, sources: bool = True,
            sinks: bool = False) -> tuple[InstrumentModel, ...]:
    return tuple(InstrumentModel(name, family, v, a, w, sources, sinks) for name, v, a, w in rows)


N5700 = "Keysight N5700/N8700"
IT8500 = "ITECH IT8500+"
IT6000C = "ITECH IT6000C"

#: Keysight N5700 (750 W: N5741A-N5752A, 1500 W: N5761A-N5772A) and N8700 (3.3 kW:
#: N8731A-N8742A, 5 kW: N8754A-N8762A): name, volts, amps, watts.
N5700_MODELS: tuple[InstrumentModel, ...] = _family(N5700, [
    ("N5741A", 6, 100, 600), ("N5742A", 8, 90, 720), ("N5743A", 12.5, 60, 750),
    ("N5744A", 20, 38, 760), ("N5745A", 30, 25, 750), ("N5746A", 40, 19, 760),
    ("N5747A", 60, 12.5, 750), ("N5748A", 80, 9.5, 760), ("N5749A", 100, 7.5, 750),
    ("N5750A", 150, 5, 750), ("N5751A", 300, 2.5, 750), ("N5752A", 600, 1.3, 780),
    ("N5761A", 6, 180, 1080), ("N5762A", 8, 165, 1320), ("N5763A", 12.5, 120, 1500),
    ("N5764A", 20, 76, 1520), ("N5765A", 30, 50, 1500), ("N5766A", 40, 38, 1520),
    ("N5767A", 60, 25, 1500), ("N5768A", 80, 19, 1520), ("N5769A", 100, 15, 1500),
    ("N5770A", 150, 10, 1500), ("N5771A", 300, 5, 1500), ("N5772A", 600, 2.6, 1560),
    ("N8731A", 8, 400, 3200), ("N8732A", 10, 330, 3300), ("N8733A", 15, 220, 3300),
    ("N8734A", 20, 165, 3300), ("N8735A", 30, 110, 3300), ("N8736A", 40, 85, 3400),
    ("N8737A", 60, 55, 3300), ("N8738A", 80, 42, 3360), ("N8739A", 100, 33, 3300),
    ("N8740A", 150, 22, 3300), ("N8741A", 300, 11, 3300), ("N8742A", 600, 5.5, 3300),
    ("N8754A", 20, 250, 5000), ("N8755A", 30, 170, 5100), ("N8756A", 40, 125, 5000),
    ("N8757A", 60, 85, 5100), ("N8758A", 80, 65, 5200), ("N8759A", 100, 50, 5000),
    ("N8760A", 150, 34, 5100), ("N8761A", 300, 17, 5100), ("N8762A", 600, 8.5, 5100),
])

#: ITECH IT8500+ electronic loads: name, volts, amps, watts (all sink only).
IT8500_MODELS: tuple[InstrumentModel, ...] = _family(IT8500, [
    ("IT8511+", 120, 30, 150), ("IT8511A+", 150, 30, 150), ("IT8511B+", 500, 10, 150),
    ("IT8512+", 120, 30, 300), ("IT8512A+", 150, 30, 300), ("IT8512B+", 500, 15, 300),
    ("IT8512C+", 120, 60, 300), ("IT8512H+", 800, 5, 300), ("IT8513A+", 150, 60, 400),
    ("IT8513B+", 500, 30, 600), ("IT8513C+", 120, 120, 600), ("IT8514C+", 120, 240, 1500),
    ("IT8514B+", 500, 60, 1500), ("IT8516C+", 120, 240, 3000),
], sources=False, sinks=True)

#: ITECH IT6000C regenerative supplies (3U units): name, volts, +/- amps, +/- watts.
IT6000C_MODELS: tuple[InstrumentModel, ...] = _family(IT6000C, [
    ("IT6006C-80-150", 80, 150, 6000), ("IT6012C-80-300", 80, 300, 12000),
    ("IT6018C-80-450", 80, 450, 18000),
    ("IT6006C-500-40", 500, 40, 6000), ("IT6012C-500-80", 500, 80, 12000),
    ("IT6018C-500-120", 500, 120, 18000),
    ("IT6006C-800-25", 800, 25, 6000), ("IT6012C-800-50", 800, 50, 12000),
    ("IT6018C-800-75", 800, 75, 18000),
], sources=True, sinks=True)

ALL_MODELS: dict[str, InstrumentModel] = {m.name: m for m in (*N5700_MODELS, *IT8500_MODELS,
                                                              *IT6000C_MODELS)}


def model(name: str) -> InstrumentModel:
    """A model by name (KeyError naming the known ones otherwise)."""
    try:
        return ALL_MODELS[name]
    except KeyError:
        raise KeyError(f"no instrument model {name!r} (known: {', '.join(sorted(ALL_MODELS))})") from None


def smallest(models: Sequence[InstrumentModel], voltage_v: float, current_a: float,
             power_w: float = 0.0) -> InstrumentModel | None:
    """The smallest model (least power, then least current, then least voltage) that serves
    the need, or None: a lab buys the smallest unit that does the job."""
    able = [m for m in models if m.serves(voltage_v, current_a, power_w)]
    return min(able, key=lambda m: (m.power_w, m.current_a, m.voltage_v), default=None)


def largest(models: Sequence[InstrumentModel], voltage_v: float) -> InstrumentModel | None:
    """The model with the most current (then power) among those rated for ``voltage_v``: what
    comes closest when no member serves the need."""
    able = [m for m in models if m.voltage_v >= voltage_v]
    return max(able, key=lambda m: (m.current_a, m.power_w), default=None)
