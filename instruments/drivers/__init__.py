"""Driver registry: the ``driver:`` name in a station file -> the class that speaks it.

Names map to ``module:Class`` paths and are imported on first use, so reading a station file
does not import every instrument family (or its dependencies). Other families (CAN and Modbus
BMS clients) register themselves with :func:`register`.
"""

from __future__ import annotations

from importlib import import_module

from instruments.roles import Instrument

_DRIVERS: dict[str, str | type[Instrument]] = {
    "keysight_n5700": "instruments.drivers.keysight_n5700:KeysightN5700",
    "itech_it8500": "instruments.drivers.itech_it8500:ItechIt8500",
    "itech_it6000c": "instruments.drivers.itech_it6000c:ItechIt6000c",
    "keysight_34465a": "instruments.drivers.keysight_34465a:Keysight34465a",
    "keysight_daq970a": "instruments.drivers.keysight_daq970a:KeysightDaq970a",
    "hioki_bt3562": "instruments.drivers.hioki_bt3562:HiokiBt3562",
}


def register(name: str, target: str | type[Instrument]) -> None:
    """Add a driver: a class, or a ``"package.module:Class"`` path imported on first use."""
    _DRIVERS[name] = target


def driver_names() -> list[str]:
    return sorted(_DRIVERS)


def get_driver(name: str) -> type[Instrument]:
    """The class registered as ``name`` (KeyError listing the known names otherwise)."""
    try:
        target = _DRIVERS[name]
    except KeyError:
        raise KeyError(f"no driver '{name}' (known: {', '.join(driver_names())})") from None
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        target = getattr(import_module(module), attr)
        _DRIVERS[name] = target
    return target


__all__ = ["driver_names", "get_driver", "register"]
