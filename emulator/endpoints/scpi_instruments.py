"""The five SCPI dialects of DOMAIN.md section 5, served from an :class:`EmulatedBench`.

Each class is one instrument as its driver sees it: the command set the harness uses, the
instrument's own ranges (out of range -> ``-222``), and its readings taken from the twin through
the bench -- supply and load through the twin's bench methods, DMM and scanner through the bench
wiring (``bench.read`` / ``bench.capture``), the AC-IR meter through the module the wiring puts
its leads on (``twin.module_ac_resistance``), relays through ``twin.set_contactor``. Every twin
access holds ``bench.lock``.

Choices where the emulator cannot do what the instrument does, documented once here:

- ``FETC?`` on the 34465A blocks until the capture completes, as the instrument does, *while
  bench time moves* (``hil emulate``'s real-time runner). If bench time stands still for
  :attr:`Keysight34465a.stall_s` (virtual clock, and the caller is blocked in FETC? so nobody
  will advance it), it answers an empty line and queues ``-230,"Data corrupt or stale"``: the
  driver reports "capture not complete" at once instead of hanging until its timeout.
- The DAQ970A's relays start in the state of the twin's contactors (the twin is built with
  its contactors closed, as a bench already set up would be); ``*RST`` opens them all, which
  opens the contactors, as on the real bench.
- The N5700 keeps VOLT <= VOLT:PROT (the instrument keeps a 5 % margin) and does not trip on
  over-voltage; the IT8500+ models constant-current mode only and no power limit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emulator.endpoints.scpi.base import SCPI_SERIAL_BASE
from emulator.endpoints.scpi.hioki_bt3562 import HiokiBt3562
from emulator.endpoints.scpi.itech_it8500 import ItechIt8500
from emulator.endpoints.scpi.keysight_34465a import Keysight34465a
from emulator.endpoints.scpi.keysight_daq970a import KeysightDaq970a
from emulator.endpoints.scpi.keysight_n5700 import KeysightN5700
from emulator.scpi_server import ScpiDevice, ScpiServer

if TYPE_CHECKING:
    from emulator.bench import EmulatedBench


Endpoints = dict[str, tuple[ScpiServer, str]]


def start_scpi_endpoints(bench: "EmulatedBench") -> Endpoints:
    """One loopback SCPI server per instrument of the emulated bench.

    Keys are role names: ``supply``, ``load``, one per DMM in the wiring (``dmm_vds``,
    ``dmm_shunt``), ``scanner`` and ``actuator`` (the same DAQ970A server), ``acir``.
    Values are ``(server, VISA resource string)``. Close them with :func:`stop_scpi_endpoints`.
    """
    serials = iter(f"{SCPI_SERIAL_BASE}{k:04d}" for k in range(1, 1000))
    devices: list[tuple[list[str], ScpiDevice]] = [
        (["supply"], KeysightN5700(bench, next(serials))),
        (["load"], ItechIt8500(bench, next(serials))),
    ]
    for name, source in bench.wiring.dmm.items():
        devices.append(([name], Keysight34465a(bench, next(serials), source)))
    devices.append((["scanner", "actuator"], KeysightDaq970a(bench, next(serials))))
    if bench.wiring.acir_module:
        devices.append((["acir"], HiokiBt3562(bench, next(serials))))
    endpoints: Endpoints = {}
    try:
        for roles, device in devices:
            server = ScpiServer(device, name=roles[0])
            for role in roles:
                endpoints[role] = (server, server.resource)
    except BaseException:
        stop_scpi_endpoints(endpoints)
        raise
    return endpoints


def stop_scpi_endpoints(endpoints: Endpoints) -> None:
    """Close every server once (the scanner and actuator share one)."""
    for server in {id(s): s for s, _ in endpoints.values()}.values():
        server.close()
