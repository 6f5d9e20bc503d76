"""Keysight DAQ970A: multiplexer channels (scanner role) and actuator relays (actuator role).

One mainframe fills both roles; a station may bind both to one instance or open it twice.
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterable

from instruments.roles import Actuator, InstrumentError, Scanner
from instruments.scpi import ScpiInstrument, VisaSession, floats, parse_bool

ACTUATOR_SLOT_CHANNELS = tuple(range(301, 321))  # a DAQM903A in slot 3: 20 relays


def channel_list(channels: Iterable[int]) -> str:
    """SCPI channel list, runs of three or more as ranges: ``(@101,102,201:203)``."""
    ordered = sorted(set(channels))
    parts: list[str] = []
    k = 0
    while k < len(ordered):
        end = k
        while end + 1 < len(ordered) and ordered[end + 1] == ordered[end] + 1:
            end += 1
        if end - k >= 2:
            parts.append(f"{ordered[k]}:{ordered[end]}")
        else:
            parts.extend(str(ch) for ch in ordered[k:end + 1])
        k = end + 1
    return "(@" + ",".join(parts) + ")"


class KeysightDaq970a(ScpiInstrument, Scanner, Actuator):
    """Options: ``actuator_channels`` (the relays safe_state opens; default the whole slot-3
    actuator card, 301-320) and ``thermocouple_type`` (``"K"``).

    Channels are sent sorted (the mainframe scans in ascending order) and results mapped back
    to the channel numbers asked for.
    """

    OPTIONS: ClassVar[dict[str, Any]] = {**ScpiInstrument.OPTIONS, "actuator_channels": None,
                                         "thermocouple_type": "K"}

    def __init__(self, resource: str, name: str, rating: dict[str, float] | None = None,
                 timeout_s: float = 2.0, visa_library: str = "@py",
                 options: dict[str, Any] | None = None, *, session: VisaSession | None = None):
        super().__init__(resource, name, rating, timeout_s, visa_library, options, session=session)
        configured = self.options["actuator_channels"]
        self._driven: set[int] = set(configured if configured is not None else ACTUATOR_SLOT_CHANNELS)

    def _channels(self, command: str, channels: Iterable[int]) -> list[int]:
        ordered = sorted(set(int(ch) for ch in channels))
        bad = [ch for ch in ordered if not (1 <= ch // 100 <= 3 and 1 <= ch % 100 <= 99)]
        if bad:
            raise self._error(command, f"channel(s) {bad} do not exist on a DAQ970A (slot 1-3, 01-99)")
        return ordered

    def _read_channels(self, command: str, channels: list[int]) -> dict[int, float]:
        ordered = self._channels(command, channels)
        if not ordered:
            return {}
        full = f"{command}{channel_list(ordered)}"
        values = self.query_value(full, floats(len(ordered)))
        return dict(zip(ordered, values))

    def voltages(self, channels: list[int]) -> dict[int, float]:
        return self._read_channels("MEAS:VOLT:DC? ", channels)

    def temperatures(self, channels: list[int]) -> dict[int, float]:
        return self._read_channels(f"MEAS:TEMP? TC,{self.options['thermocouple_type']},", channels)

    def close_channel(self, channel: int) -> None:
        (ch,) = self._channels("ROUT:CLOS", [channel])
        self._driven.add(ch)
        self.write(f"ROUT:CLOS (@{ch})")

    def open_channel(self, channel: int) -> None:
        (ch,) = self._channels("ROUT:OPEN", [channel])
        self.write(f"ROUT:OPEN (@{ch})")

    def is_closed(self, channel: int) -> bool:
        (ch,) = self._channels("ROUT:CLOS?", [channel])
        return bool(self.query_value(f"ROUT:CLOS? (@{ch})", parse_bool))

    def safe_state(self) -> None:
        """Open every relay this driver drives, then abort a scan (harmless when already safe).

        Relays first: they are what de-energises the bank. Both are attempted; the first
        failure is raised after.
        """
        failures: list[InstrumentError] = []
        for command in (f"ROUT:OPEN {channel_list(self._driven)}", "ABOR"):
            try:
                self.write(command)
            except InstrumentError as exc:
                failures.append(exc)
        if failures:
            raise failures[0]
