"""The SCPI instruments of an emulated bench, each a real model sized to the DUT.

Each class is one instrument as its driver sees it: the command set the harness uses, the
real model's ranges (out of range -> ``-222``), and its readings taken from the twin through
the bench -- supply and load through the twin's bench methods, DMM and scanner through the bench
wiring (``bench.read`` / ``bench.capture``), the AC-IR meter through the module the wiring puts
its leads on (``twin.module_ac_resistance``), relays through ``twin.set_contactor``. Every twin
access holds ``bench.lock``.

Which models (:func:`select_models`): for each energy role the smallest real member of the
role's family (:mod:`emulator.endpoints.scpi.models`) that serves the DUT (:func:`bench_needs`):
rated for the bank's highest voltage x 1.25, for the DUT's BMS current limit (charge for the
supply, discharge for the load, all branches together) and at least the station envelope
(:data:`SUPPLY_ENVELOPE_A`, :data:`LOAD_ENVELOPE_A` -- the currents fixtures/stations/emulated.yaml
rates, so every setpoint that file lets a plan ask for is one the emulated model accepts), with
the power that envelope current takes at the bank's highest voltage. Two sets of families:

- :data:`STATION_FAMILIES`, the emulated *station* (``start_emulated_station``, ``hil run`` on
  fixtures/stations/emulated.yaml): ITECH IT6000C regenerative units in both roles. One station
  file serves every DUT with one driver per role, and the fixture banks ask for 240 A at 58.4 V
  (14 kW) and 100 A of charge at 56.8 V, which no N5700/N8700 supply or IT8500+ load does.
- :data:`DEDICATED_FAMILIES`, the default of :func:`start_scpi_endpoints`: the dedicated
  instruments of DOMAIN.md section 5 (Keysight N5700/N8700 supply, ITECH IT8500+ load), for
  module-scale work and for the drivers' end-to-end tests.

When no member of a family serves the need, the member with the most current that is rated for
the voltage is used (and logged): the emulated instrument then refuses what that model refuses.

Choices where the emulator cannot do what the instrument does, documented once here:

- ``FETC?`` on the 34465A blocks until the capture completes, as the instrument does, *while
  bench time moves* (``hil emulate``'s real-time runner). If bench time stands still for
  :attr:`Keysight34465a.stall_s` (virtual clock, and the caller is blocked in FETC? so nobody
  will advance it), it answers an empty line and queues ``-230,"Data corrupt or stale"``: the
  driver reports "capture not complete" at once instead of hanging until its timeout.
- The DAQ970A's relays start in the state of the twin's contactors (the twin is built with
  its contactors closed, as a bench already set up would be); ``*RST`` opens them all, which
  opens the contactors, as on the real bench.
- Protection and power limits act when an instrument is addressed, not at every twin step
  (see each endpoint module: N5700 over-voltage trip, IT8500+ and IT6000C power limit).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

from emulator.endpoints.scpi.base import SCPI_SERIAL_BASE
from emulator.endpoints.scpi.hioki_bt3562 import HiokiBt3562
from emulator.endpoints.scpi.itech_it6000c import ItechIt6000c
from emulator.endpoints.scpi.itech_it8500 import ItechIt8500
from emulator.endpoints.scpi.keysight_34465a import Keysight34465a
from emulator.endpoints.scpi.keysight_daq970a import KeysightDaq970a
from emulator.endpoints.scpi.keysight_n5700 import KeysightN5700
from emulator.endpoints.scpi.models import (IT6000C_MODELS, IT8500_MODELS, N5700_MODELS, InstrumentModel,
                                            largest, smallest)
from emulator.scpi_server import ScpiDevice, ScpiServer

if TYPE_CHECKING:
    from emulator.bench import EmulatedBench
    from emulator.twin import Twin

log = logging.getLogger(__name__)

Endpoints = dict[str, tuple[ScpiServer, str]]
Families = Mapping[str, Sequence[InstrumentModel]]

VOLTAGE_HEADROOM = 1.25  # instruments rated for the bank's highest voltage x 1.25
SUPPLY_ENVELOPE_A = 120.0  # the supply current fixtures/stations/emulated.yaml rates
LOAD_ENVELOPE_A = 240.0  # the load current fixtures/stations/emulated.yaml rates

STATION_FAMILIES: dict[str, Sequence[InstrumentModel]] = {"supply": IT6000C_MODELS, "load": IT6000C_MODELS}
DEDICATED_FAMILIES: dict[str, Sequence[InstrumentModel]] = {"supply": N5700_MODELS, "load": IT8500_MODELS}


@dataclass(frozen=True)
class Need:
    """What one energy role must give: rated volts, amps, and watts at the bank's voltage."""

    voltage_v: float
    current_a: float
    power_w: float


def dut_max_voltage(twin: "Twin") -> float:
    """The bank's highest healthy voltage: cells x cell over-voltage threshold x series."""
    module = twin.spec.module_type
    return module.cells_in_series * module.bms.protections.cell_overvoltage.threshold_v * twin.spec.dut.series


def bench_needs(twin: "Twin") -> dict[str, Need]:
    """The supply and load a bench for this DUT needs (see the module docstring)."""
    dut, limits = twin.spec.dut, twin.spec.module_type.bms.limits
    top_v = dut_max_voltage(twin)
    return {
        "supply": Need(top_v * VOLTAGE_HEADROOM, max(SUPPLY_ENVELOPE_A, dut.parallel * limits.charge_current_a),
                       SUPPLY_ENVELOPE_A * top_v),
        "load": Need(top_v * VOLTAGE_HEADROOM, max(LOAD_ENVELOPE_A, dut.parallel * limits.discharge_current_a),
                     LOAD_ENVELOPE_A * top_v),
    }


def select_models(twin: "Twin", families: Families = DEDICATED_FAMILIES) -> dict[str, InstrumentModel]:
    """For each role in ``families``: the smallest member that serves the DUT, else the one
    closest (most current at the voltage), else the family's biggest."""
    chosen: dict[str, InstrumentModel] = {}
    for role, need in bench_needs(twin).items():
        members = families.get(role)
        if not members:
            continue
        pick = smallest(members, need.voltage_v, need.current_a, need.power_w)
        if pick is None:
            pick = largest(members, need.voltage_v) or max(members, key=lambda m: m.power_w)
            log.warning("no %s model serves %s's %s (%.4g V, %.4g A, %.4g W): emulating %s",
                        pick.family, twin.spec.dut.name, role, need.voltage_v, need.current_a,
                        need.power_w, pick.name)
        chosen[role] = pick
    return chosen


def _energy_device(role: str, instrument: InstrumentModel, bench: "EmulatedBench", serial: str) -> ScpiDevice:
    """The emulated endpoint class of ``instrument``'s family, bound to ``role``."""
    if instrument in N5700_MODELS and role == "supply":
        return KeysightN5700(bench, serial, instrument)
    if instrument in IT8500_MODELS and role == "load":
        return ItechIt8500(bench, serial, instrument)
    if instrument in IT6000C_MODELS:
        return ItechIt6000c(bench, serial, instrument, role=role)
    raise ValueError(f"{instrument.name} ({instrument.family}) cannot serve the {role} role")


def start_scpi_endpoints(bench: "EmulatedBench",
                         models: Mapping[str, InstrumentModel] | None = None) -> Endpoints:
    """One loopback SCPI server per instrument of the emulated bench.

    ``models``: the real model per energy role (``supply``, ``load``); by default
    ``select_models(bench.twin)`` (the dedicated instruments, sized to the DUT).
    Keys are role names: ``supply``, ``load``, one per DMM in the wiring (``dmm_vds``,
    ``dmm_shunt``), ``scanner`` and ``actuator`` (the same DAQ970A server), ``acir``.
    Values are ``(server, VISA resource string)``. Close them with :func:`stop_scpi_endpoints`.
    """
    chosen = dict(models) if models is not None else select_models(bench.twin)
    serials = iter(f"{SCPI_SERIAL_BASE}{k:04d}" for k in range(1, 1000))
    devices: list[tuple[list[str], ScpiDevice]] = [
        ([role], _energy_device(role, chosen[role], bench, next(serials)))
        for role in ("supply", "load") if role in chosen]
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
