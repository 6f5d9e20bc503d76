"""What every emulated bench instrument shares: its bench and its identity."""

from __future__ import annotations

from typing import TYPE_CHECKING

from emulator.scpi_server import ScpiDevice

if TYPE_CHECKING:
    from emulator.bench import EmulatedBench

SCPI_SERIAL_BASE = "EMU"


def bool_text(value: bool) -> str:
    return "1" if value else "0"


class BenchDevice(ScpiDevice):
    """An emulated instrument bound to a bench."""

    model = "device"

    def __init__(self, bench: "EmulatedBench", serial: str):
        super().__init__()
        self.bench = bench
        self.idn = self.idn_format.format(model=self.model, serial=serial)

    idn_format = "Emulated,{model},{serial},1.0-emulated"


# ================================================================================== supply
