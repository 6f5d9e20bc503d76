"""Emulated Hioki BT3562 AC-IR meter: its SCPI dialect over a bench (choices: emulator/endpoints/scpi_instruments.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from emulator.endpoints.scpi.base import BenchDevice
from emulator.scpi_server import Args, ScpiError, scpi

if TYPE_CHECKING:
    from emulator.bench import EmulatedBench


class HiokiBt3562(BenchDevice):
    """Hioki BT3562 battery HiTester on the module its Kelvin leads touch.

    The module is ``bench.wiring.acir_module`` at the moment of the reading (moving the leads
    moves the reading). Resistance is the twin's 1 kHz AC resistance of that module
    (:meth:`Twin.module_ac_resistance`: its series resistance as the twin holds it -- so an aged
    module reads higher -- at the cells' 1 kHz figure, plus its BMS switch) with seeded noise of
    :attr:`noise_ohm` (the twin's generator, as every emulated meter); voltage is the module's
    terminal voltage with the bench's voltage noise. Above the largest range (3 kohm, e.g. the
    BMS switch open) the meter answers its over-range value, ``+10.0000E+8`` (manual 8.6).
    """

    model = "BT3562"
    idn_format = "HIOKI,{model},{serial},V1.00-emulated"
    noise_ohm = 2e-6           # 1 sigma, 2 uohm: the 3 mohm range's last digit
    max_ohm = 3.1e3            # 3000 ohm range, full scale
    over_range_ohm = 10.0e8    # +OF as the BT3562 sends it

    def __init__(self, bench: "EmulatedBench", serial: str):
        super().__init__(bench, serial)
        self.reset()

    def reset(self) -> None:
        self.function, self.continuous = "RV", True
        self.last: tuple[float, float] | None = None

    def _measure(self) -> tuple[float, float]:
        """One (ohm, volts) reading of the module the leads are on now."""
        bench = self.bench
        with bench.lock:
            twin, module = bench.twin, bench.wiring.acir_module
            ohm = twin.module_ac_resistance(module, self.noise_ohm)
            volts = twin.module_terminal_voltage(module)
            volts = twin.noisy(volts, bench.noise.voltage_v)
        return (ohm if ohm <= self.max_ohm else self.over_range_ohm), volts

    def _format(self, reading: tuple[float, float]) -> str:
        ohm, volts = reading
        if self.function == "RESISTANCE":
            return f"{ohm:.4E}"
        if self.function == "VOLTAGE":
            return f"{volts:+.6E}"
        return f"{ohm:.4E},{volts:+.6E}"

    @scpi(":FUNCtion")
    def _func(self, args: Args) -> None:
        args.expect(1)
        self.function = args.choice(0, "RV", "RESistance", "VOLTage")

    @scpi(":FUNCtion?")
    def _func_q(self, args: Args) -> str:
        args.expect(0)
        return self.function

    @scpi(":INITiate:CONTinuous")
    def _cont(self, args: Args) -> None:
        args.expect(1)
        self.continuous = args.boolean(0)

    @scpi(":INITiate:CONTinuous?")
    def _cont_q(self, args: Args) -> str:
        args.expect(0)
        return "ON" if self.continuous else "OFF"

    @scpi(":INITiate[:IMMediate]", "*TRG")
    def _init(self, args: Args) -> None:
        args.expect(0)
        self.last = self._measure()

    @scpi(":FETCh?")
    def _fetch(self, args: Args) -> str:
        args.expect(0)
        if self.continuous:
            return self._format(self._measure())
        if self.last is None:
            raise ScpiError(-230, "free-run is off and nothing was triggered")
        return self._format(self.last)

    @scpi(":READ?")
    def _read(self, args: Args) -> str:
        args.expect(0)
        self.last = self._measure()
        return self._format(self.last)

    @scpi(":ABORt")
    def _abor(self, args: Args) -> None:
        args.expect(0)

