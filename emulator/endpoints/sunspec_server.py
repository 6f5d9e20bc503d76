"""The emulated master BMS on Modbus/TCP: the twin as a SunSpec register map (DOMAIN.md section 4).

What an inverter (or the harness, playing one) finds at 40000: ``"SunS"``, model 1 (common),
802 (battery base), 803 (lithium-ion bank), one 804 per string, one 805 per module, then the
end marker. Each served model is a pysunspec2 model object (``sunspec2.device.Model``, built
from the definitions pysunspec2 ships): its points are set from the twin in engineering units,
pysunspec2 applies the scale factors and encodes the points, unimplemented markers included,
and the register image is the models' ``get_mb()`` -- so a SunSpec client (pysunspec2's or the
harness's) reads them as it would a real battery, and no offset or encoding is typed by hand
here.

Why values are rendered on demand rather than on a bench-time timer: nothing can observe the
registers except by reading them, and rendering a 16-module bank costs a few milliseconds, so
a per-second render inside the twin's step loop would only slow long emulations. A read
renders the map from the twin under the bench lock if the bench has moved or been commanded
since the last rendering (so the dozen requests of a full scan cost one rendering), or, if
another thread holds the lock for longer than ``lock_timeout_s``, serves the last rendering.
``Hb`` is the whole seconds of bench time, so it still counts once per bench second, and the
master's own report changes once per ``report_period_s`` as its firmware publishes it.

What goes where (the mapping the harness relies on). The measured figures come from
:mod:`emulator.published`, as the CAN endpoint's do, so both BMS clients see one bank:

- 802 ``V``: sum over series positions of the mean cell-stack voltage of the modules the master
  still hears; ``A``: sum of the module currents of the first series position (+ = charge);
  ``AChaMax``/``ADisChaMax``/``VMax``/``VMin``: the master's charge/discharge current and voltage
  limits; ``SoC``/``SoH``: the master's report; ``AHRtg``: the capacity the master counts
  online (an inverter reading a reduced AHRtg is 004's "module not accepted"), ``WHRtg`` that
  times the nominal bank voltage; ``State``: CONNECTED while the main contactor is closed;
  ``Hb``: whole seconds of bench time; ``CtrlHb``/``SetOp``/``SetInvState``: what the
  controller last wrote.
- ``Evt1``: a protection tripped on a module the master hears sets its family's ``*_ALARM`` bit
  (families: ``emulator.published.ALARM_FAMILIES``, bits: :data:`EVENT_STEMS`), the same
  condition with its debounce timer running, no alarm yet, the ``*_WARNING`` bit; the master's
  communication alarm sets COMMUNICATION_ERROR; a module pending admission sets
  VOLTAGE_IMBALANCE_WARNING; a welded or stuck contactor CONTACTOR_ERROR; a blown fuse or a
  failed-short FET OTHER_ALARM; unequal currents in parallel CURRENT_IMBALANCE_WARNING and a
  module temperature spread TEMPERATURE_IMBALANCE_WARNING (thresholds: :class:`EventThresholds`).
- 803/804/805: per-bank, per-string and per-module figures. In a bank of series *groups* there
  are no physical strings: parallel index Y is reported as the string of modules s1pY..sNpY
  (their stack voltages still add up to the bank's). A module the master no longer hears has
  its measured points unimplemented (the master has no data), its identity points kept.

- Identity: model 1 ``Mn`` (the firmware profile's manufacturer), ``Md`` (the module type's
  model), ``Vr``, ``SN``; ``Opt`` = ``"<chemistry> <N>S<M>P"`` (see :func:`battery_chemistry`);
  802 ``Typ`` the chemistry's family from 802's enumeration.

Chemistry: 802 ``Typ`` is the only chemistry point in the SunSpec definitions pysunspec2 ships
(models 1, 802-805 and the rest: none names a cell chemistry), and its enumeration
(LEAD_ACID, NICKEL_METAL_HYDRATE, NICKEL_CADMIUM, LITHIUM_ION, ..., OTHER) has one LITHIUM_ION
for LFP, NMC, LTO, NCA alike -- so an NMC module would pass a chemistry check made on ``Typ``.
A real device can say more only in manufacturer-specific text: model 1 ``Md`` (32 chars) or
``Opt`` (16 chars, "manufacturer specific value"). ``Md`` must stay the module type's model name
(the model identity check compares it), so the emulated battery puts its cell chemistry as the
first word of ``Opt``, then the bank's configuration: ``"LFP 1S4P"``, ``"NMC 4S1P"``. The
harness's client (instruments/sunspec_bms.py) reads ``Opt`` (then ``Md``) for a chemistry word,
normalises it (LiFePO4 -> LFP, NCM -> NMC, ...) and checks it against ``Typ``.

Writes: a change of ``CtrlHb`` is an inverter heartbeat (``twin.inverter_heartbeat()``);
``SetOp`` CONNECT/DISCONNECT closes/opens the main contactor. Every other register is read-only
(pymodbus answers ILLEGAL_ADDRESS); a request for another unit ID gets no answer.
``silent = True`` stops answering (requests are read and dropped) so silence detection can
be exercised; :meth:`SunSpecServer.override` forces raw register values for malformed-data
tests.

Modbus RTU: ``SunSpecServer(bench, rtu_port="/dev/ttyUSB1")`` serves the same map on a serial
line instead (pymodbus ``ModbusSerialServer``, RTU framer, CRC; ``baudrate``/``parity``/
``stopbits`` as the battery would be set, default the Modbus serial line spec's 19200 8E1).
Without RS485 hardware, :class:`NullModem` is a null-modem cable made of two pseudo-terminals
(``/dev/pts/N`` each end, bytes copied between them): the server opens one end, the harness's
client the other, and every frame crosses a real serial device with RTU framing. A Linux
pseudo-terminal refuses parity bits, so a line over a NullModem runs with parity N.
``corrupt_crc = True`` flips the CRC of every reply (RTU only) for the client's error path.

Run as a process (``python -m emulator.endpoints.sunspec_server --dut 1s4p_diagonal``) it
serves the twin on loopback following wall time and prints ``{"host", "port", "device_id"}``;
with ``--rtu PATH`` on that serial port instead (``--rtu pty``: on a NullModem, whose client end
it prints) and prints ``{"transport": "rtu", "serial_port", "baudrate", "parity", "stopbits",
"device_id"}``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import os
import re
import select
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import sunspec2
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from sunspec2 import device as sunspec_device
from sunspec2 import mdef as sunspec_mdef

from bankmodel.positions import position
from emulator import published
from emulator.bench import EmulatedBench
from emulator.twin import Twin

BASE_ADDRESS = 40000
SUNS_MARKER = (0x5375, 0x6E53)        # "SunS"
END_MODEL_ID = 0xFFFF
MODELS_DIR = Path(sunspec2.__file__).parent / "models" / "json"

# Scale factors (value = raw * 10^sf): 0.1 V, 0.1 A, 1 mV per cell, 0.1 % SoC, 0.1 Ah, 10 Wh,
# 0.1 C. A bank of 4 x 16 rack modules (the firmware profiles' max_series x max_parallel) fits;
# a larger figure saturates at the type's limit, it never turns into an unimplemented marker.
SCALE_FACTORS: dict[str, int] = {
    "AHRtg_SF": -1, "WHRtg_SF": 1, "WChaDisChaMax_SF": 1, "SoC_SF": -1, "SoH_SF": -1,
    "V_SF": -1, "CellV_SF": -3, "A_SF": -1, "AMax_SF": -1, "W_SF": 1, "ModTmp_SF": -1,
    "Tmp_SF": -1,
}
# Implemented range of each integer type: the unimplemented markers lie outside it, so a
# value that saturates can never be mistaken for "not implemented".
_RANGES: dict[str, tuple[int, int]] = {
    "int16": (-0x7FFF, 0x7FFF), "uint16": (0, 0xFFFE), "count": (0, 0xFFFE),
    "enum16": (0, 0xFFFE), "bitfield16": (0, 0x7FFF), "int32": (-0x7FFFFFFF, 0x7FFFFFFF),
    "uint32": (0, 0xFFFFFFFE), "enum32": (0, 0xFFFFFFFE), "bitfield32": (0, 0x7FFFFFFF),
    "sunssf": (-10, 10),
}


# 802 Typ (pysunspec2's enumeration) of a module type's ``chemistry`` (upper case, alphanumerics)
_LITHIUM = ("LFP", "LIFEPO4", "LFEPO4", "NMC", "NCM", "LTO", "NCA", "LCO", "LMO", "LIION", "LITHIUMION")
_BATTERY_TYPES: dict[str, str] = {
    **dict.fromkeys(_LITHIUM, "LITHIUM_ION"),
    **dict.fromkeys(("PB", "LEADACID", "AGM", "GEL", "VRLA", "FLA"), "LEAD_ACID"),
    **dict.fromkeys(("NIMH", "NICKELMETALHYDRIDE"), "NICKEL_METAL_HYDRATE"),
    **dict.fromkeys(("NICD", "NICAD", "NICKELCADMIUM"), "NICKEL_CADMIUM"),
    **dict.fromkeys(("NAS", "SODIUMSULFUR"), "SODIUM_SULFUR"),
    "FLOW": "FLOW", "VRFB": "FLOW",
}


def battery_chemistry(chemistry: str) -> tuple[str, str]:
    """(word for model 1 ``Opt``, 802 ``Typ`` symbol) of a module type's ``chemistry`` text.

    The word is the file's own text without blanks (Opt has 16 characters, shared with the
    configuration); ``Typ`` is the chemistry's family, OTHER for one it does not know.
    """
    word = re.sub(r"\s+", "", chemistry) or "?"
    key = re.sub(r"[^A-Z0-9]", "", word.upper())
    family = _BATTERY_TYPES.get(key)
    if family is None and re.fullmatch(r"(NMC|NCM)\d*", key):  # NMC811, NCM523, ...
        family = "LITHIUM_ION"
    return word, family or "OTHER"


# Evt1 symbol stem <- the alarm family (emulator.published.ALARM_FAMILIES) that raises it.
EVENT_STEMS: dict[str, str] = {
    "over_voltage": "OVER_VOLT",
    "under_voltage": "UNDER_VOLT",
    "over_temperature": "OVER_TEMP",
    "under_temperature": "UNDER_TEMP",
    "charge_over_current": "OVER_CHARGE_CURRENT",
    "discharge_over_current": "OVER_DISCHARGE_CURRENT",
}
assert set(EVENT_STEMS) == set(published.ALARM_FAMILIES), "one Evt1 stem per alarm family"


# =============================================================================== the models
@lru_cache(maxsize=None)
def model_definition(model_id: int) -> dict[str, Any]:
    """pysunspec2's definition of a model, loaded by pysunspec2 from the installed package.

    Loaded from the package directory directly rather than through
    ``sunspec2.device.get_model_def``, which searches the current directory first: a stray
    ``model_802.json`` there would change the map.
    """
    definition = sunspec_mdef.from_json_file(str(MODELS_DIR / sunspec_mdef.to_json_filename(model_id)))
    sunspec_device.add_mappings(definition[sunspec_mdef.GROUP])
    return definition


def repeating_group(model_id: int) -> str | None:
    """Name of the model's repeating group (the models served here have at most one)."""
    groups = model_definition(model_id)["group"].get("groups", [])
    return groups[0]["name"] if groups else None


class ServedModel:
    """One model instance of the map: a pysunspec2 model object, its points addressable by key.

    ``count`` is the number of instances of the model's repeating group; a count held in a
    point (803's NStr, 804's NMod) is set in that point so the map is self-consistent. Keys are
    point names, ``"<group>.<n>.<point>"`` in instance n (1-based) of the repeating group.
    Values are set in engineering units and pysunspec2 applies the scale factors; the
    registers are the model's ``get_mb()``.
    """

    def __init__(self, model_id: int, count: int = 0):
        self.model_id = model_id
        self.address = 0
        definition = model_definition(model_id)
        data: dict[str, Any] = {}
        for sub in definition["group"].get("groups", []):
            spec = str(sub.get("count", ""))
            if spec.isdigit():    # a fixed (or, 0, length-given) count: the instances are the data's
                data[sub["name"]] = [{} for _ in range(count)]
            else:
                data[spec] = count
        self.model = sunspec_device.Model(model_id=model_id, model_def=definition, data=data)
        if self.model.error_info:
            raise ValueError(f"model {model_id}: {self.model.error_info.strip()}")
        self.length = int(self.model.len)     # registers from the ID point to the end
        self.points: dict[str, sunspec_device.Point] = dict(self.model.points)
        for name, instances in self.model.groups.items():
            for index, group in enumerate(instances if isinstance(instances, list) else [instances], start=1):
                self.points.update({f"{name}.{index}.{p}": point for p, point in group.points.items()})
        self._symbols = {key: {str(s["name"]): int(s["value"]) for s in point.pdef.get("symbols", [])}
                         for key, point in self.points.items() if point.pdef.get("symbols")}
        # per key: the point, its type and the implemented range of its raw value
        self._slots = {key: (point, str(point.pdef["type"]), *_RANGES.get(str(point.pdef["type"]),
                                                                         (-(2 ** 63), 2 ** 64 - 1)))
                       for key, point in self.points.items()}
        self._registers: list[int] | None = None   # the last get_mb(), until a point changes
        for name in SCALE_FACTORS.keys() & self.model.points.keys():
            self.set(name, SCALE_FACTORS[name])

    def address_of(self, key: str) -> int:
        return self.address + int(self.points[key].offset)

    def symbols(self, key: str) -> dict[str, int]:
        """Symbol name -> value of an enum or bitfield point."""
        return self._symbols.get(key, {})

    def set(self, key: str, value: Any) -> None:
        """Set a point: engineering units (scaled by pysunspec2 with the point's scale factor),
        a symbol name for an enum, a set of symbol names for a bitfield, text for a string;
        None or NaN for "not implemented". A number beyond the type's range saturates."""
        point, ptype, low, high = self._slots[key]
        before = point.value
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raw = None
        elif ptype == "string":
            size = int(point.len) * 2
            raw = str(value).encode("ascii", "replace")[:size].decode("ascii")
        elif isinstance(value, str):
            raw = self._symbols[key][value]
        elif isinstance(value, (set, frozenset, list, tuple)):
            symbols = self._symbols[key]
            raw = sum(1 << symbols[name] for name in set(value))
        else:
            value = float(value)
            if math.isinf(value):
                raw = high if value > 0 else low
            elif point.sf_required:     # pysunspec2 scales it: raw = value / 10^sf, rounded
                point.set_value(value, computed=True)
                raw = min(max(int(point.value), low), high)
            else:
                raw = min(max(int(round(value)), low), high)
        if raw != point.value:
            point.set_value(raw)
        if raw != before:
            self._registers = None

    def registers(self) -> list[int]:
        """The model's registers, ID point first (pysunspec2's ``get_mb``, big-endian words);
        encoded again only after a point changed."""
        if self._registers is None:
            data = self.model.get_mb()
            self._registers = list(struct.unpack(f">{len(data) // 2}H", data))
        return self._registers


# =============================================================================== the bank
@dataclass(frozen=True)
class EventThresholds:
    """The emulated master's own warning thresholds (firmware behaviour, not test limits)."""

    current_imbalance_a: float = 10.0          # spread of parallel currents above this ...
    current_imbalance_fraction: float = 0.2    # ... plus this fraction of their mean magnitude
    temperature_imbalance_k: float = 10.0      # module temperature spread


@dataclass
class ControllerState:
    """What the controller (inverter) last wrote, and how often it kept the battery alive."""

    ctrl_hb: int = 0
    set_op: str = "CONNECT"
    set_inv_state: str = "INVERTER_STOPPED"
    heartbeats: int = 0
    writes: int = 0


# 805 point <- the module report's field (emulator.published.ModuleReport)
_MODULE_POINTS = {
    "SoC": "soc_pct", "SoH": "soh_pct", "V": "voltage_v", "CellVMax": "cell_v_max",
    "CellVMaxCell": "cell_v_max_cell", "CellVMin": "cell_v_min", "CellVMinCell": "cell_v_min_cell",
    "CellVAvg": "cell_v_avg", "CellTmpMax": "temperature_c", "CellTmpMin": "temperature_c",
    "CellTmpAvg": "temperature_c", "NCellBal": "balancing_cells"}
# one temperature sensor per module: every cell reads it, cell 1 stands for the extremes
_MODULE_CONSTANTS = {"CellTmpMaxCell": 1, "CellTmpMinCell": 1}
# 805 point -> the same figure's name in 804's per-module group
_MODULE_IN_STRING = {name: "Mod" + name for name in (
    "SoC", "SoH", "CellVMax", "CellVMaxCell", "CellVMin", "CellVMinCell", "CellVAvg", "CellTmpMax",
    "CellTmpMaxCell", "CellTmpMin", "CellTmpMinCell", "CellTmpAvg")}
# 804 point (803 string point without its "Str") <- the group summary's field
_GROUP_POINTS = {
    "SoC": "soc_pct", "SoH": "soh_pct", "CellVMax": "cell_v_max", "CellVMaxMod": "cell_v_max_module",
    "CellVMin": "cell_v_min", "CellVMinMod": "cell_v_min_module", "CellVAvg": "cell_v_avg",
    "ModTmpMax": "temperature_max_c", "ModTmpMaxMod": "temperature_max_module",
    "ModTmpMin": "temperature_min_c", "ModTmpMinMod": "temperature_min_module",
    "ModTmpAvg": "temperature_avg_c"}


def _module_values(report: published.ModuleReport | None) -> dict[str, Any]:
    """805 values of one module's report (None each: the master does not hear it)."""
    if report is None:
        return dict.fromkeys(list(_MODULE_POINTS) + list(_MODULE_CONSTANTS))
    values = {point: getattr(report, name) for point, name in _MODULE_POINTS.items()}
    values.update(_MODULE_CONSTANTS)
    return values


def _group_values(summary: published.GroupSummary | None) -> dict[str, Any]:
    """804 values of a string's summary (None each: the master hears none of its modules)."""
    if summary is None:
        return dict.fromkeys(_GROUP_POINTS)
    return {point: getattr(summary, name) for point, name in _GROUP_POINTS.items()}


class BankMap:
    """The whole SunSpec map of one twin: pysunspec2 model objects laid out once, their points
    set from the twin on :meth:`render`."""

    def __init__(self, twin: Twin, thresholds: EventThresholds | None = None):
        self.twin = twin
        self.thresholds = thresholds or EventThresholds()
        spec = twin.spec
        self.position = [position(m) for m in twin.modules]   # (series X, parallel Y) of sXpY
        self.series = max(s for s, _ in self.position)
        self.parallel = max(p for _, p in self.position)
        # strings[p-1] = module indices of s1pY..sNpY in series order
        self.strings = [np.array([twin.module_index[f"s{s}p{p}"] for s in range(1, self.series + 1)])
                        for p in range(1, self.parallel + 1)]
        self.series_of = np.array([s - 1 for s, _ in self.position])
        cells = spec.module_type.cells_in_series
        self.common = ServedModel(1)
        self.battery = ServedModel(802)
        self.bank = ServedModel(803, self.parallel)
        self.string_models = [ServedModel(804, self.series) for _ in self.strings]
        self.module_models = [ServedModel(805, cells) for _ in twin.modules]
        self.models = [self.common, self.battery, self.bank, *self.string_models, *self.module_models]
        evt1 = self.battery.symbols("Evt1")
        missing = [f"{stem}_{kind}" for stem in EVENT_STEMS.values() for kind in ("ALARM", "WARNING")
                   if f"{stem}_{kind}" not in evt1]
        if missing:
            raise ValueError(f"802 Evt1 has no symbol {', '.join(missing)}")
        address = BASE_ADDRESS + 2
        for image in self.models:
            image.address = address
            address += image.length
        self.end_address = address
        if address + 2 > 0x10000:
            raise ValueError(f"the SunSpec map of {len(twin.modules)} modules ends at {address + 2}, "
                             "beyond the Modbus address space")
        self._set_identity()

    @property
    def length(self) -> int:
        return self.end_address + 2 - BASE_ADDRESS

    @property
    def serial(self) -> str:
        """The bank reports the serial of the module its master BMS sits in: the first one."""
        return self.twin.serials[self.twin.modules[0]]

    def writable(self) -> dict[int, str]:
        """Register address -> 802 point name, for the points a controller may write."""
        return {self.battery.address_of(k): k for k in ("CtrlHb", "SetOp", "SetInvState", "AlmRst")}

    def _set_identity(self) -> None:
        twin, spec = self.twin, self.twin.spec
        self.common.set("Mn", spec.firmware.manufacturer)
        self.common.set("Md", spec.module_type.model)
        chemistry, battery_type = battery_chemistry(spec.module_type.chemistry)
        self.common.set("Opt", f"{chemistry} {self.series}S{self.parallel}P")
        self.common.set("Vr", spec.firmware.version)
        self.common.set("SN", self.serial)
        self.battery.set("Typ", battery_type)
        self.battery.set("LocRemCtl", "REMOTE")
        for name in ("Evt2", "EvtVnd1", "EvtVnd2"):
            self.battery.set(name, 0)
        for k, module in enumerate(twin.modules):
            image = self.module_models[k]
            s, p = self.position[k]
            image.set("StrIdx", p)
            image.set("ModIdx", s)
            image.set("NCell", spec.module_type.cells_in_series)
            image.set("SN", twin.serials[module])
        for p, image in enumerate(self.string_models, start=1):
            image.set("Idx", p)
            image.set("Evt2", 0)
            for index in range(1, self.series + 1):
                image.set(f"{repeating_group(804)}.{index}.ModNCell", spec.module_type.cells_in_series)
        for p in range(1, self.parallel + 1):
            self.bank.set(f"string.{p}.StrNMod", self.series)
            self.bank.set(f"string.{p}.StrEvt2", 0)

    # -- events and status ----------------------------------------------------------------------
    def _events(self, now: published.Published, members: np.ndarray | None) -> set[str]:
        """Evt1 symbols raised by the BMS boards of ``members`` (module indices; None: the
        modules the bank reports, see emulator.published)."""
        flags = now.flags(members)
        events = set()
        for family, stem in EVENT_STEMS.items():
            if flags[family].alarm:
                events.add(f"{stem}_ALARM")
            elif flags[family].warning:
                events.add(f"{stem}_WARNING")
        temps = now.temperatures(members)
        if temps.size > 1 and float(temps.max() - temps.min()) > self.thresholds.temperature_imbalance_k:
            events.add("TEMPERATURE_IMBALANCE_WARNING")
        return events

    def _bank_events(self, now: published.Published) -> set[str]:
        twin, report, th = self.twin, now.report, self.thresholds
        events = self._events(now, None)
        if report.comm_alarm:
            events.add("COMMUNICATION_ERROR")
        if report.modules_pending:
            events.add("VOLTAGE_IMBALANCE_WARNING")
        if any(twin.contactor_welded.values()) or any(v is not None for v in twin.contactor_stuck.values()):
            events.add("CONTACTOR_ERROR")
        if any(twin.fuse_blown.values()) or any(twin.fet_state(m) == "failed_short" for m in twin.modules):
            events.add("OTHER_ALARM")
        for s in range(self.series):
            amps = now.current_a[self.series_of == s]
            if amps.size > 1:
                spread = float(amps.max() - amps.min())
                if spread > th.current_imbalance_a + th.current_imbalance_fraction * abs(float(amps.mean())):
                    events.add("CURRENT_IMBALANCE_WARNING")
        return events

    def _string_status(self, members: np.ndarray) -> tuple[set[str], str, int, bool]:
        """(St bits, ConFail symbol, ConSt mask, all contactors closed) of one string."""
        twin = self.twin
        branches = {twin.layout.branch_of_module[twin.modules[k]] for k in members}
        contactors = [c for c in twin.layout.contactors if c in branches]
        closed = [twin.contactor_closed[c] for c in contactors]
        bits = set()
        if bool(twin.master.accepted[members].all()):
            bits.add("STRING_ENABLED")
        if all(closed):
            bits.add("CONTACTOR_STATUS")
        if any(twin.fuse_blown.get(c, False) for c in contactors):
            failure = "FUSE_OPEN"
        elif any(twin.contactor_welded[c] or twin.contactor_stuck[c] is not None for c in contactors):
            failure = "CONTACTOR_FAILURE"
        else:
            failure = "NO_FAILURE"
        mask = sum(1 << i for i, is_closed in enumerate(closed[:31]) if is_closed)
        return bits, failure, mask, all(closed)

    # -- rendering ------------------------------------------------------------------------------
    def render(self, state: ControllerState) -> list[int]:
        """The whole map, 40000 to the end marker, from the twin's present state."""
        now = published.read(self.twin)
        reports = now.module_reports()
        self._render_battery(now, state)
        connected = 0
        for p, members in enumerate(self.strings, start=1):
            status = self._string_status(members)
            heard = members[now.heard[members]]
            events = self._events(now, heard)
            figures = _group_values(now.group_summary(members))
            volts, amps = float(now.stack_v[members].sum()), float(now.current_a[members].mean())
            connected += int(status[3])
            self._render_string_in_bank(p, status, events, figures, amps)
            self._render_string(now, reports, self.string_models[p - 1], members, status, events, figures,
                                volts, amps)
        self._render_bank(now, connected)
        for k, image in enumerate(self.module_models):
            self._render_module(now, reports, image, k)
        registers = list(SUNS_MARKER)
        for image in self.models:
            registers.extend(image.registers())
        registers.extend([END_MODEL_ID, 0])
        return registers

    def _render_battery(self, now: published.Published, state: ControllerState) -> None:
        twin, rep, b = self.twin, now.report, self.battery
        mt = twin.spec.module_type
        nominal_v = self.series * mt.nominal_voltage_v
        volts, amps = now.bank_voltage(), now.bank_current()
        if rep.soc_pct >= 99.5:
            status = "FULL"
        elif rep.soc_pct <= 0.5:
            status = "EMPTY"
        else:
            status = "CHARGING" if amps > 0.5 else "DISCHARGING" if amps < -0.5 else "HOLDING"
        reporting = np.flatnonzero(now.reporting)
        cells = now.cell_v[reporting]
        hi = reporting[int(np.argmax(cells)) // cells.shape[1]]
        lo = reporting[int(np.argmin(cells)) // cells.shape[1]]
        values: dict[str, Any] = {
            "AHRtg": rep.online_capacity_ah, "WHRtg": rep.online_capacity_ah * nominal_v,
            "WChaRteMax": mt.bms.limits.charge_current_a * self.parallel * nominal_v,
            "WDisChaRteMax": mt.bms.limits.discharge_current_a * self.parallel * nominal_v,
            "SoC": rep.soc_pct, "SoH": rep.soh_pct, "ChaSt": status,
            "Hb": int(twin.clock.now) & 0xFFFF, "CtrlHb": state.ctrl_hb, "AlmRst": 0,
            "State": "CONNECTED" if twin.contactor_closed["main"] else "DISCONNECTED",
            "Evt1": self._bank_events(now), "V": volts,
            "VMax": rep.charge_voltage_limit_v, "VMin": rep.discharge_voltage_limit_v,
            "CellVMax": float(cells.max()), "CellVMaxStr": self.position[hi][1],
            "CellVMaxMod": self.position[hi][0],
            "CellVMin": float(cells.min()), "CellVMinStr": self.position[lo][1],
            "CellVMinMod": self.position[lo][0],
            "CellVAvg": float(cells.mean()), "A": amps,
            "AChaMax": rep.charge_current_limit_a, "ADisChaMax": abs(rep.discharge_current_limit_a),
            "W": volts * amps, "ReqInvState": "NO REQUEST", "SetOp": state.set_op,
            "SetInvState": state.set_inv_state}
        for name, value in values.items():
            b.set(name, value)

    def _render_string_in_bank(self, p: int, status: tuple[set[str], str, int, bool], events: set[str],
                               figures: dict[str, Any], amps: float) -> None:
        bank, prefix = self.bank, f"string.{p}."
        bits, failure, mask, _ = status
        bank.set(prefix + "StrSt", bits)
        bank.set(prefix + "StrConFail", failure)
        bank.set(prefix + "StrConSt", mask)
        bank.set(prefix + "StrEvt1", events)
        bank.set(prefix + "StrA", amps if figures["SoC"] is not None else None)
        for name, value in figures.items():
            bank.set(prefix + "Str" + name, value)

    def _render_bank(self, now: published.Published, connected: int) -> None:
        bank = self.bank
        bank.set("NStrCon", connected)
        heard = np.flatnonzero(now.heard)
        for point in ("ModTmpMax", "ModTmpMin"):
            for suffix in ("", "Str", "Mod"):
                bank.set(point + suffix, None)   # the master hears nobody: no figures
        bank.set("ModTmpAvg", None)
        bank.set("NCellBal", None)
        if heard.size:
            temps = now.temperature_c[heard]
            hot, cold = heard[int(np.argmax(temps))], heard[int(np.argmin(temps))]
            for point, k in (("ModTmpMax", hot), ("ModTmpMin", cold)):
                bank.set(point, float(now.temperature_c[k]))
                bank.set(point + "Str", self.position[k][1])
                bank.set(point + "Mod", self.position[k][0])
            bank.set("ModTmpAvg", float(temps.mean()))
            bank.set("NCellBal", int(now.balancing[heard].sum()))
        volts = np.array([now.stack_v[m].sum() for m in self.strings])
        amps = np.array([now.current_a[m].mean() for m in self.strings])
        for name, values in (("StrV", volts), ("StrA", amps)):
            bank.set(name + "Max", float(values.max()))
            bank.set(name + "MaxStr", int(np.argmax(values)) + 1)
            bank.set(name + "Min", float(values.min()))
            bank.set(name + "MinStr", int(np.argmin(values)) + 1)
            bank.set(name + "Avg", float(values.mean()))

    def _render_string(self, now: published.Published, reports: list[published.ModuleReport],
                       image: ServedModel, members: np.ndarray, status: tuple[set[str], str, int, bool],
                       events: set[str], figures: dict[str, Any], volts: float, amps: float) -> None:
        bits, failure, mask, _ = status
        image.set("St", bits)
        image.set("ConFail", failure)
        image.set("ConSt", mask)
        image.set("Evt1", events)
        image.set("V", volts)
        image.set("A", amps)
        image.set("NCellBal", int(now.balancing[members[now.heard[members]]].sum()))
        for name, value in figures.items():
            image.set(name, value)
        group = repeating_group(804)
        for index, k in enumerate(members, start=1):
            values = _module_values(reports[k] if now.heard[k] else None)
            for name, in_string in _MODULE_IN_STRING.items():
                image.set(f"{group}.{index}.{in_string}", values[name])

    def _render_module(self, now: published.Published, reports: list[published.ModuleReport],
                       image: ServedModel, k: int) -> None:
        heard = bool(now.heard[k])
        values = _module_values(reports[k] if heard else None)
        for name, value in values.items():
            image.set(name, value)
        group = repeating_group(805)
        cell_v, balancing, temp = now.cell_v[k].tolist(), now.balancing[k].tolist(), reports[k].temperature_c
        for c, volts in enumerate(cell_v, start=1):
            image.set(f"{group}.{c}.CellV", volts if heard else None)
            image.set(f"{group}.{c}.CellTmp", temp if heard else None)
            image.set(f"{group}.{c}.CellSt", {"CELL_IS_BALANCING"} if balancing[c - 1] else 0)


# =============================================================================== the server
@dataclass
class _Served:
    """What the server answers with: the last rendering, its cache key, forced registers."""

    image: list[int] = field(default_factory=list)
    key: tuple[float, int, int, int] | None = None
    overrides: dict[int, int] = field(default_factory=dict)


class NullModem:
    """Two pseudo-terminals joined like a null-modem cable: what one end writes, the other reads.

    For Modbus RTU without RS485 hardware (POSIX only): :attr:`server_port` and
    :attr:`client_port` are ``/dev/pts/N`` paths that pyserial opens like any serial port; a
    thread copies the bytes between the two masters. Use as a context manager, or :meth:`close`.
    """

    def __init__(self) -> None:
        import pty
        import tty

        self._fds: list[int] = []
        ends = []
        for _ in range(2):
            master, slave = pty.openpty()
            self._fds += [master, slave]
            tty.setraw(slave)   # no echo, no line editing: bytes pass as they are
            ends.append((master, os.ttyname(slave)))
        (self._a, self.server_port), (self._b, self.client_port) = ends
        self.bytes_copied = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._copy, daemon=True, name="sunspec-null-modem")
        self._thread.start()

    def _copy(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._a, self._b], [], [], 0.05)
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:   # no one has that end open right now: nothing to carry
                    continue
                os.write(self._b if fd == self._a else self._a, data)
                self.bytes_copied += len(data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []

    def __enter__(self) -> "NullModem":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SunSpecServer:
    """A Modbus/TCP server on loopback serving one twin's SunSpec map (see the module doc), or,
    with ``rtu_port``, a Modbus RTU server on that serial port.

    ``port=0`` binds a free port; :attr:`port` is the bound one once :meth:`start` returns.
    The server runs its own asyncio loop on a daemon thread, so callers stay synchronous.
    """

    WRITE_CODES = frozenset({5, 6, 15, 16, 22, 23})

    def __init__(self, bench: EmulatedBench, host: str = "127.0.0.1", port: int = 0, device_id: int = 1,
                 thresholds: EventThresholds | None = None, lock_timeout_s: float = 0.5, *,
                 rtu_port: str | None = None, baudrate: int = 19200, parity: str = "E", stopbits: int = 1):
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the emulated SunSpec server binds loopback only, not {host}")
        if parity not in ("N", "E", "O") or stopbits not in (1, 2):
            raise ValueError(f"serial settings {parity!r}/{stopbits!r}: parity N, E or O; stopbits 1 or 2")
        self.bench = bench
        self.host = host
        self.port = port
        self.device_id = device_id
        self.rtu_port = rtu_port
        self.baudrate, self.parity, self.stopbits = int(baudrate), parity, int(stopbits)
        self.corrupt_crc = False
        self.lock_timeout_s = lock_timeout_s
        self.map = BankMap(bench.twin, thresholds)
        self.map.common.set("DA", device_id)
        closed = bench.twin.contactor_closed["main"]
        self.state = ControllerState(set_op="CONNECT" if closed else "DISCONNECT")
        self.silent = False
        self.requests = 0
        self.stale_reads = 0
        self.foreign_requests = 0
        self._served = _Served()
        self._writable = self.map.writable()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        with bench.lock:
            self._served.image = self.map.render(self.state)

    @property
    def heartbeats_received(self) -> int:
        """CtrlHb writes that changed its value (each one an inverter heartbeat)."""
        return self.state.heartbeats

    @property
    def where(self) -> str:
        """``127.0.0.1:15020``, or ``/dev/pts/3 (RTU 19200 8E1)``."""
        if self.rtu_port is None:
            return f"{self.host}:{self.port}"
        return f"{self.rtu_port} (RTU {self.baudrate} 8{self.parity}{self.stopbits})"

    def described(self) -> dict[str, Any]:
        """Where a client finds it, as a station's ``bms.modbus`` entry says it."""
        if self.rtu_port is None:
            return {"host": self.host, "port": self.port, "device_id": self.device_id}
        return {"transport": "rtu", "serial_port": self.rtu_port, "baudrate": self.baudrate,
                "parity": self.parity, "stopbits": self.stopbits, "device_id": self.device_id}

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> "SunSpecServer":
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name=f"sunspec-server-{self.where}", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=10.0)
        if self._error is not None:
            self._thread.join(timeout=2.0)
            raise RuntimeError(f"SunSpec server on {self.where} failed to start: {self._error}")
        if not self._ready.is_set():
            raise RuntimeError(f"SunSpec server on {self.where} did not start within 10 s")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def __enter__(self) -> "SunSpecServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start(); the thread must not die silently
            self._error = exc
            self._ready.set()

    def _simdata(self) -> list[SimData]:
        """The map as SimData blocks: read-only runs, with the writable 802 points between."""
        image, blocks, start = self._served.image, [], 0
        for address in sorted(self._writable) + [BASE_ADDRESS + len(image)]:
            offset = address - BASE_ADDRESS
            if offset > start:
                blocks.append(SimData(BASE_ADDRESS + start, values=image[start:offset],
                                      datatype=DataType.REGISTERS, readonly=True))
            if offset < len(image):
                blocks.append(SimData(address, values=[image[offset]], datatype=DataType.REGISTERS))
            start = offset + 1
        return blocks

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        device = SimDevice(self.device_id, simdata=self._simdata(), action=self._action)
        server: ModbusTcpServer | ModbusSerialServer
        if self.rtu_port is None:
            server = ModbusTcpServer(device, address=(self.host, self.port), trace_packet=self._trace_packet,
                                     trace_pdu=self._trace_pdu)
        else:
            server = ModbusSerialServer(device, framer=FramerType.RTU, port=self.rtu_port,
                                        baudrate=self.baudrate, parity=self.parity, stopbits=self.stopbits,
                                        bytesize=8, trace_packet=self._trace_packet, trace_pdu=self._trace_pdu)
        await server.serve_forever(background=True)
        if self.rtu_port is None:
            sockets = getattr(server.transport, "sockets", None) or []
            self.port = int(sockets[0].getsockname()[1]) if sockets else self.port
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await server.shutdown()

    # -- requests -------------------------------------------------------------------------------
    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        """Drop every reply while silent: the request was read, nothing comes back. With
        ``corrupt_crc`` (RTU), every reply goes out with its CRC's last byte inverted."""
        if sending and self.silent:
            return b""
        if sending and self.corrupt_crc and self.rtu_port is not None and data:
            return data[:-1] + bytes([data[-1] ^ 0xFF])
        return data

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU | None:
        """Ignore requests for another unit ID, as a device on a shared line does.

        (pymodbus 3.16's SimCore would instead fail with a KeyError and answer DEVICE_FAILURE,
        which points a user at the battery rather than at the station's device_id.)
        """
        if not sending and pdu.dev_id != self.device_id:
            self.foreign_requests += 1
            return None
        return pdu

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      registers: list[int], set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        """pymodbus calls this before it serves a request: refresh the registers or apply a write."""
        self.requests += 1
        if self.silent:
            return None
        if function_code in self.WRITE_CODES and set_values is not None:
            return await asyncio.to_thread(self._write, address, [int(v) for v in set_values])
        image = await asyncio.to_thread(self._refresh)
        registers[:len(image)] = image
        return None

    def _refresh(self) -> list[int]:
        """The map as of now (rendered again only if the bench moved or was commanded since)."""
        served, twin = self._served, self.bench.twin
        if self.bench.lock.acquire(timeout=self.lock_timeout_s):
            try:
                key = (twin.clock.now, twin.step_count, len(twin.events), self.state.writes)
                if key != served.key:
                    served.image, served.key = self.map.render(self.state), key
            finally:
                self.bench.lock.release()
        else:
            self.stale_reads += 1
        image = served.image
        if served.overrides:
            image = list(image)
            for address, value in served.overrides.items():
                image[address - BASE_ADDRESS] = value
        return image

    def _write(self, address: int, values: list[int]) -> ExcCodes | None:
        """Apply a controller's write to the twin (under the bench lock); all or nothing."""
        battery = self.map.battery
        points = [(self._writable.get(address + i), v) for i, v in enumerate(values)]
        if any(name is None for name, _ in points):
            return ExcCodes.ILLEGAL_ADDRESS
        symbols = {name: {value: symbol for symbol, value in battery.symbols(name).items()}
                   for name in ("SetOp", "SetInvState")}
        for name, value in points:
            if name in symbols and value not in symbols[name]:
                return ExcCodes.ILLEGAL_VALUE
            if name == "AlmRst" and value not in (0, 1):
                return ExcCodes.ILLEGAL_VALUE
        if not self.bench.lock.acquire(timeout=self.lock_timeout_s):
            return ExcCodes.DEVICE_BUSY
        try:
            twin = self.bench.twin
            for name, value in points:
                if name == "CtrlHb":
                    if value != self.state.ctrl_hb:
                        twin.inverter_heartbeat()
                        self.state.heartbeats += 1
                    self.state.ctrl_hb = value
                elif name == "SetOp":
                    self.state.set_op = symbols["SetOp"][value]
                    twin.set_contactor("main", self.state.set_op == "CONNECT")
                elif name == "SetInvState":
                    self.state.set_inv_state = symbols["SetInvState"][value]
            self.state.writes += 1
        finally:
            self.bench.lock.release()
        return None

    # -- fault injection ------------------------------------------------------------------------
    def address_of(self, model_id: int, point: str, instance: int = 1) -> int:
        """Register address of a point in the ``instance``-th model with this ID (1-based)."""
        images = [image for image in self.map.models if image.model_id == model_id]
        return images[instance - 1].address_of(point)

    def override(self, address: int, value: int) -> None:
        """Serve ``value`` at ``address`` whatever the twin says (malformed-data tests)."""
        if not BASE_ADDRESS <= address < BASE_ADDRESS + self.map.length:
            last = BASE_ADDRESS + self.map.length - 1
            raise ValueError(f"address {address} is outside the map {BASE_ADDRESS}..{last}")
        self._served.overrides[address] = value & 0xFFFF

    def clear_overrides(self) -> None:
        self._served.overrides.clear()


def serve(bench: EmulatedBench, host: str = "127.0.0.1", port: int = 0, device_id: int = 1,
          **serial: Any) -> SunSpecServer:
    """Start a SunSpec server for ``bench`` (the one function the harness's emulated station uses);
    ``rtu_port=...`` (and ``baudrate``, ``parity``, ``stopbits``) for Modbus RTU on that port."""
    return SunSpecServer(bench, host=host, port=port, device_id=device_id, **serial).start()


def main(argv: Iterable[str] | None = None) -> int:
    """Serve a twin's BMS as SunSpec over Modbus/TCP on loopback, following wall time, until
    stdin closes. Prints one JSON line ``{"host", "port", "device_id"}`` once listening."""
    import argparse
    import sys

    from emulator.twin import build_twin

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--dut", default="1s4p_diagonal")
    parser.add_argument("--scenario", default=None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--device-id", type=int, default=1)
    parser.add_argument("--speed", type=float, default=1.0, help="bench seconds per wall second")
    parser.add_argument("--rtu", default=None, metavar="PATH",
                        help="serve Modbus RTU on this serial port instead of TCP ('pty': on a "
                             "pseudo-terminal null modem, whose client end is printed)")
    parser.add_argument("--baudrate", type=int, default=19200)
    parser.add_argument("--parity", choices=("N", "E", "O"), default=None,
                        help="default E (N on a pty: a pseudo-terminal takes no parity)")
    parser.add_argument("--stopbits", type=int, choices=(1, 2), default=1)
    args = parser.parse_args(list(argv) if argv is not None else None)
    bench = EmulatedBench(build_twin(args.dut, args.scenario))
    modem = NullModem() if args.rtu == "pty" else None
    serial: dict[str, Any] = {}
    if args.rtu is not None:
        serial = {"rtu_port": modem.server_port if modem else args.rtu, "baudrate": args.baudrate,
                  "parity": args.parity or ("N" if modem else "E"), "stopbits": args.stopbits}
    server = serve(bench, port=args.port, device_id=args.device_id, **serial)
    described = server.described()
    if modem is not None:
        described["serial_port"] = modem.client_port
    print(json.dumps(described), flush=True)
    runner = threading.Thread(target=bench.run_realtime, kwargs={"speed": args.speed}, daemon=True)
    runner.start()
    try:
        sys.stdin.read()
    finally:
        bench.stop()
        runner.join(timeout=2.0)
        server.stop()
        if modem is not None:
            modem.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
