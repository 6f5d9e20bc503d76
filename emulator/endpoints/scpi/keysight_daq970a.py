"""Emulated Keysight DAQ970A data-acquisition system: its SCPI dialect over a bench (choices: emulator/endpoints/scpi_instruments.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from emulator.endpoints.scpi.base import BenchDevice, bool_text
from emulator.scpi_server import Args, ScpiError, format_reading, scpi

if TYPE_CHECKING:
    from emulator.bench import EmulatedBench, Input


class KeysightDaq970a(BenchDevice):
    """Keysight DAQ970A: DAQM901A multiplexers (slots 1-2) and a DAQM903A actuator (slot 3).

    Measurement channels are ``bench.wiring.scanner``; relay channels that drive contactor
    coils are ``bench.wiring.actuator``. Any channel 101-399 exists as a relay (ROUT:CLOS/OPEN
    work on it); measuring a channel with nothing wired to it is ``-222``.
    """

    model = "DAQ970A"
    idn_format = "Keysight Technologies,{model},{serial},A.03.02-emulated"
    tc_types = ("B", "E", "J", "K", "N", "R", "S", "T")

    def __init__(self, bench: "EmulatedBench", serial: str):
        super().__init__(bench, serial)
        with bench.lock:
            self.relays = {ch: bench.twin.contactor_closed[name] for ch, name in bench.wiring.actuator_channels().items()}
        self.scan_list: list[int] = []
        self.readings: list[float] | None = None

    def reset(self) -> None:
        with self.bench.lock:
            for name in self.bench.wiring.actuator_channels().values():
                self.bench.twin.set_contactor(name, False)
        self.relays = {ch: False for ch in self.relays}
        self.scan_list, self.readings = [], None

    @staticmethod
    def _exists(channels: list[int]) -> list[int]:
        for ch in channels:
            if not (1 <= ch // 100 <= 3 and 1 <= ch % 100 <= 99):
                raise ScpiError(-222, f"channel {ch} does not exist")
        return channels

    def _input(self, ch: int, kind: str) -> "Input":
        source = self.bench.wiring.scanner_channels().get(ch)
        if source is None:
            raise ScpiError(-222, f"nothing wired to channel {ch}")
        is_tc = source.kind == "thermocouple"
        if (kind == "TEMP") != is_tc:
            what = "a thermocouple" if is_tc else f"a {source.kind} input"
            raise ScpiError(-221, f"channel {ch} is {what}, not for {kind}")
        return source

    def _function(self, ch: int) -> str:
        source = self.bench.wiring.scanner_channels().get(ch)
        return "TEMP" if source is not None and source.kind == "thermocouple" else "VOLT"

    def _measure(self, channels: list[int], kind: str | None = None) -> str:
        sources = [self._input(ch, kind or self._function(ch)) for ch in self._exists(channels)]
        with self.bench.lock:
            values = [self.bench.read(source, noisy=True) for source in sources]
        return ",".join(format_reading(v) for v in values)

    def _tc_args(self, args: Args) -> list[int]:
        if len(args) < 2:
            raise ScpiError(-109)
        if args.choice(0, "TCouple", "RTD", "FRTD", "THERmistor", "FTHermistor", "DEFault") not in (
                "TCOUPLE", "DEFAULT"):
            raise ScpiError(-221, "channels are wired to thermocouples")
        if len(args) > 2 and args.items[1].upper() not in self.tc_types + ("DEF",):
            raise ScpiError(-224, f"thermocouple type {args.items[1]}")
        return args.channels(len(args) - 1)

    @scpi("MEASure:VOLTage[:DC]?")
    def _meas_volt(self, args: Args) -> str:
        if len(args) == 0:
            raise ScpiError(-109, "channel list")
        channels = args.channels(len(args) - 1)
        self.scan_list = channels
        return self._measure(channels, "VOLT")

    @scpi("MEASure:TEMPerature?")
    def _meas_temp(self, args: Args) -> str:
        channels = self._tc_args(args)
        self.scan_list = channels
        return self._measure(channels, "TEMP")

    @scpi("CONFigure:VOLTage[:DC]")
    def _conf_volt(self, args: Args) -> None:
        if len(args) == 0:
            raise ScpiError(-109, "channel list")
        channels = self._exists(args.channels(len(args) - 1))
        for ch in channels:
            self._input(ch, "VOLT")
        self.scan_list = channels

    @scpi("CONFigure:TEMPerature")
    def _conf_temp(self, args: Args) -> None:
        channels = self._exists(self._tc_args(args))
        for ch in channels:
            self._input(ch, "TEMP")
        self.scan_list = channels

    @scpi("ROUTe:SCAN")
    def _scan(self, args: Args) -> None:
        args.expect(1)
        channels = self._exists(args.channels(0))
        for ch in channels:
            self._input(ch, self._function(ch))
        self.scan_list = channels

    @scpi("ROUTe:SCAN?")
    def _scan_q(self, args: Args) -> str:
        args.expect(0)
        return "(@" + ",".join(str(ch) for ch in self.scan_list) + ")"

    @scpi("INITiate[:IMMediate]")
    def _init(self, args: Args) -> None:
        args.expect(0)
        if not self.scan_list:
            raise ScpiError(-221, "empty scan list")
        self.readings = [float(v) for v in self._measure(self.scan_list).split(",")]

    @scpi("FETCh?")
    def _fetch(self, args: Args) -> str:
        args.expect(0)
        if self.readings is None:
            raise ScpiError(-230, "no readings: INIT first")
        return ",".join(format_reading(v) for v in self.readings)

    @scpi("READ?")
    def _read(self, args: Args) -> str:
        self._init(args)
        return self._fetch(args)

    @scpi("ABORt")
    def _abor(self, args: Args) -> None:
        args.expect(0)

    def _drive(self, channels: list[int], closed: bool) -> None:
        channels = self._exists(channels)
        with self.bench.lock:
            for ch in channels:
                self.relays[ch] = closed
                name = self.bench.wiring.actuator_channels().get(ch)
                if name is not None:
                    self.bench.twin.set_contactor(name, closed)

    @scpi("ROUTe:CLOSe")
    def _close(self, args: Args) -> None:
        args.expect(1)
        self._drive(args.channels(0), True)

    @scpi("ROUTe:OPEN")
    def _open(self, args: Args) -> None:
        args.expect(1)
        self._drive(args.channels(0), False)

    @scpi("ROUTe:CLOSe?")
    def _close_q(self, args: Args) -> str:
        args.expect(1)
        return ",".join(bool_text(self.relays.get(ch, False)) for ch in self._exists(args.channels(0)))

    @scpi("ROUTe:OPEN?")
    def _open_q(self, args: Args) -> str:
        args.expect(1)
        return ",".join(bool_text(not self.relays.get(ch, False)) for ch in self._exists(args.channels(0)))
