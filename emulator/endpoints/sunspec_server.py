"""The emulated master BMS on Modbus/TCP: the twin as a SunSpec register map (DOMAIN.md section 4).

What an inverter (or the harness, playing one) finds at 40000: ``"SunS"``, model 1 (common),
802 (battery base), 803 (lithium-ion bank), one 804 per string, one 805 per module, then the
end marker. The registers are laid out from pysunspec2's own JSON model definitions -- point
order, sizes, scale-factor points, enum and bitfield symbols, unimplemented markers -- so a
SunSpec client (pysunspec2's or the harness's) reads them as it would a real battery, and no
offset is typed by hand here.

Why values are rendered on demand rather than on a bench-time timer: nothing can observe the
registers except by reading them, and rendering a 16-module bank costs a few milliseconds, so
a per-second render inside the twin's step loop would only slow long emulations. A read
renders the map from the twin under the bench lock if the bench has moved or been commanded
since the last rendering (so the dozen requests of a full scan cost one rendering), or, if
another thread holds the lock for longer than ``lock_timeout_s``, serves the last rendering.
``Hb`` is the whole seconds of bench time, so it still counts once per bench second, and the
master's own report changes once per ``report_period_s`` as its firmware publishes it.

What goes where (the mapping the harness relies on; the same definitions as the CAN
endpoint, so both BMS clients see one bank):

- 802 ``V``: sum over series positions of the mean cell-stack voltage of the modules the master
  still hears; ``A``: sum of the module currents of the first series position (+ = charge);
  ``AChaMax``/``ADisChaMax``/``VMax``/``VMin``: the master's charge/discharge current and voltage
  limits; ``SoC``/``SoH``: the master's report; ``AHRtg``: the capacity the master counts
  online (an inverter reading a reduced AHRtg is 004's "module not accepted"), ``WHRtg`` that
  times the nominal bank voltage; ``State``: CONNECTED while the main contactor is closed;
  ``Hb``: whole seconds of bench time; ``CtrlHb``/``SetOp``/``SetInvState``: what the
  controller last wrote.
- ``Evt1``: a protection tripped on a module the master hears sets its ``*_ALARM`` bit, the same
  condition with its debounce timer running sets the ``*_WARNING`` bit; the master's
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

Run as a process (``python -m emulator.endpoints.sunspec_server --dut 1s4p_diagonal``) it
serves the twin on loopback following wall time and prints ``{"host", "port", "device_id"}``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import re
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import sunspec2
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from sunspec2 import mb as sunspec_mb

from emulator.bench import EmulatedBench
from emulator.bms import PROTECTIONS
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
_POSITION = re.compile(r"^s(\d+)p(\d+)$")


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


def _position(module: str) -> tuple[int, int]:
    """(series position X, parallel index Y) of a module named sXpY."""
    match = _POSITION.match(module)
    if match is None:
        raise ValueError(f"module name '{module}' is not a position like s1p2")
    return int(match.group(1)), int(match.group(2))

# Evt1 symbol stem <- module BMS protections that raise it (names in emulator.bms.PROTECTIONS).
EVENT_SOURCES: dict[str, tuple[str, ...]] = {
    "OVER_VOLT": ("cell_overvoltage",),
    "UNDER_VOLT": ("cell_undervoltage",),
    "OVER_TEMP": ("charge_over_temperature", "discharge_over_temperature"),
    "UNDER_TEMP": ("charge_under_temperature", "discharge_under_temperature"),
    "OVER_CHARGE_CURRENT": ("charge_overcurrent",),
    "OVER_DISCHARGE_CURRENT": ("discharge_overcurrent", "short_circuit"),
}


# =============================================================================== model layout
@lru_cache(maxsize=None)
def model_definition(model_id: int) -> dict[str, Any]:
    """pysunspec2's JSON definition of a model, read from the installed package.

    Read from the package directory directly: ``sunspec2.device.get_model_def`` searches the
    current directory first, so a stray ``model_802.json`` there would change the map.
    """
    path = MODELS_DIR / f"model_{model_id}.json"
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


def repeating_group(model_id: int) -> str | None:
    """Name of the model's repeating group (the models served here have at most one)."""
    groups = model_definition(model_id)["group"].get("groups", [])
    return groups[0]["name"] if groups else None


def _point_size(pdef: Mapping[str, Any]) -> int:
    size = pdef.get("size")
    return int(size) if size is not None else int(sunspec_mb.point_type_info[pdef["type"]].len)


def _to_registers(data: bytes) -> list[int]:
    return list(struct.unpack(f">{len(data) // 2}H", data))


@dataclass(frozen=True)
class Slot:
    """One point of one model instance: where it sits, how it is encoded and scaled."""

    key: str                  # "SoC", or "string.2.StrSoC" in instance 2 of a repeating group
    pdef: Mapping[str, Any]
    offset: int               # registers from the model's ID point
    size: int
    sf_key: str | None        # the scale-factor point's key (group first, then model, as SunSpec)
    sf_fixed: int | None      # a literal scale factor in the definition
    symbols: Mapping[str, int]
    unimplemented: tuple[int, ...]

    @property
    def type(self) -> str:
        return str(self.pdef["type"])


class ModelImage:
    """The registers of one model instance, with its points addressable by name.

    ``count`` is the number of instances of the model's repeating group; a count held in a
    point (803's NStr, 804's NMod) is written into that point so the map is self-consistent.
    """

    def __init__(self, model_id: int, count: int = 0):
        self.model_id = model_id
        self.address = 0
        self.slots: dict[str, Slot] = {}
        self._sf: dict[str, int] = {}
        gdef = model_definition(model_id)["group"]
        top = {p["name"] for p in gdef["points"]}
        offset = self._lay_out(gdef["points"], "", top, set(), 0)
        for sub in gdef.get("groups", []):
            names = {p["name"] for p in sub["points"]}
            for index in range(1, count + 1):
                offset = self._lay_out(sub["points"], f"{sub['name']}.{index}.", top, names, offset)
        self.length = offset
        self.registers = [0] * offset
        for slot in self.slots.values():
            self._store(slot, None)
        self.set("ID", model_id)
        self.set("L", offset - 2)
        for sub in gdef.get("groups", []):
            if not str(sub.get("count", "")).isdigit():
                self.set(str(sub["count"]), count)
        for name in top:
            if name in SCALE_FACTORS:
                self.set(name, SCALE_FACTORS[name])

    def _lay_out(self, points: list[dict[str, Any]], prefix: str, top: set[str], local: set[str],
                 offset: int) -> int:
        for pdef in points:
            sf = pdef.get("sf")
            sf_key = sf_fixed = None
            if isinstance(sf, int) or (isinstance(sf, str) and re.fullmatch(r"-?\d+", sf)):
                sf_fixed = int(sf)
            elif sf is not None:
                if sf not in local and sf not in top:
                    raise ValueError(f"model {self.model_id}: scale factor {sf} of {pdef['name']} not found")
                sf_key = prefix + sf if sf in local else sf
            size = _point_size(pdef)
            key = prefix + pdef["name"]
            symbols = {str(s["name"]): int(s["value"]) for s in pdef.get("symbols", [])}
            unimpl = tuple(_to_registers(sunspec_mb.create_unimpl_value(pdef["type"], len=size * 2)))
            self.slots[key] = Slot(key, pdef, offset, size, sf_key, sf_fixed, symbols, unimpl)
            offset += size
        return offset

    # -- values ---------------------------------------------------------------------------------
    def address_of(self, key: str) -> int:
        return self.address + self.slots[key].offset

    def set(self, key: str, value: Any) -> None:
        """Store a value: engineering units (scaled by the point's scale factor), a symbol name
        for an enum, a set of symbol names for a bitfield, text for a string; None or NaN for
        "not implemented"."""
        slot = self.slots[key]
        if slot.type == "sunssf":
            self._sf.clear()
        self._store(slot, self._raw(slot, value))

    def _scale(self, slot: Slot) -> int:
        if slot.sf_fixed is not None:
            return slot.sf_fixed
        assert slot.sf_key is not None
        sf = self._sf.get(slot.sf_key)
        if sf is None:
            raw = self.registers[self.slots[slot.sf_key].offset]
            sf = raw - 0x10000 if raw & 0x8000 else raw
            if sf == sunspec_mb.SUNS_UNIMPL_SUNSSF:
                raise ValueError(f"model {self.model_id}: {slot.key} needs {slot.sf_key}, which is not set")
            self._sf[slot.sf_key] = sf
        return sf

    def _raw(self, slot: Slot, value: Any) -> Any:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        ptype = slot.type
        if ptype == "string":
            return str(value)
        if isinstance(value, str):
            return slot.symbols[value]
        if isinstance(value, (set, frozenset, list, tuple)):
            return sum(1 << slot.symbols[name] for name in set(value))
        if slot.sf_key is not None or slot.sf_fixed is not None:
            value = float(value) / 10.0 ** self._scale(slot)
        low, high = _RANGES.get(ptype, (-(2 ** 63), 2 ** 64 - 1))
        return min(max(int(round(float(value))), low), high)

    def _store(self, slot: Slot, raw: Any) -> None:
        """Big-endian registers of the raw value (SunSpec: high word first)."""
        start, size = slot.offset, slot.size
        if raw is None:
            self.registers[start:start + size] = slot.unimplemented
        elif slot.type == "string":
            data = raw.encode("ascii", "replace")[:size * 2].ljust(size * 2, b"\0")
            self.registers[start:start + size] = _to_registers(data)
        else:
            unsigned = raw & ((1 << (16 * size)) - 1)
            for i in range(size):
                self.registers[start + i] = (unsigned >> (16 * (size - 1 - i))) & 0xFFFF


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


@dataclass
class _Readings:
    """One consistent reading of the bank as its BMSs report it (arrays by module)."""

    heard: np.ndarray
    stack_v: np.ndarray
    current_a: np.ndarray
    temperature_c: np.ndarray
    soc_pct: np.ndarray
    soh_pct: np.ndarray
    cell_v: np.ndarray         # module x cell
    balancing: np.ndarray      # module x cell
    tripped: np.ndarray        # protection x module
    pending: np.ndarray        # protection x module: condition present, debounce running
    modules: list[dict[str, Any]] = field(default_factory=list)  # 805 values by module


def _cell_voltages(twin: Twin) -> np.ndarray:
    """Cell voltages (modules x cells) as the module BMS boards last sampled them.

    Prefers a public ``Twin.cell_voltages()`` if the twin offers one; otherwise the inputs the
    twin last gave its BMS boards (the same numbers, not yet public).
    """
    getter = getattr(twin, "cell_voltages", None)
    if callable(getter):
        return np.asarray(getter())
    return np.asarray(twin._bms_inputs.cell_v)


# 805 point -> the same figure's name in 804's per-module group
_MODULE_IN_STRING = {name: "Mod" + name for name in (
    "SoC", "SoH", "CellVMax", "CellVMaxCell", "CellVMin", "CellVMinCell", "CellVAvg", "CellTmpMax",
    "CellTmpMaxCell", "CellTmpMin", "CellTmpMinCell", "CellTmpAvg")}
_GROUP_FIGURES = ("SoC", "SoH", "CellVMax", "CellVMaxMod", "CellVMin", "CellVMinMod", "CellVAvg",
                  "ModTmpMax", "ModTmpMaxMod", "ModTmpMin", "ModTmpMinMod", "ModTmpAvg")


class BankMap:
    """The whole SunSpec map of one twin: layout once, values on :meth:`render`."""

    def __init__(self, twin: Twin, thresholds: EventThresholds | None = None):
        self.twin = twin
        self.thresholds = thresholds or EventThresholds()
        spec = twin.spec
        self.position = [_position(m) for m in twin.modules]   # (series X, parallel Y) of sXpY
        self.series = max(s for s, _ in self.position)
        self.parallel = max(p for _, p in self.position)
        # strings[p-1] = module indices of s1pY..sNpY in series order
        self.strings = [np.array([twin.module_index[f"s{s}p{p}"] for s in range(1, self.series + 1)])
                        for p in range(1, self.parallel + 1)]
        self.series_of = np.array([s - 1 for s, _ in self.position])
        self._rows = {name: j for j, name in enumerate(PROTECTIONS)}
        cells = spec.module_type.cells_in_series
        self.common = ModelImage(1)
        self.battery = ModelImage(802)
        self.bank = ModelImage(803, self.parallel)
        self.string_models = [ModelImage(804, self.series) for _ in self.strings]
        self.module_models = [ModelImage(805, cells) for _ in twin.modules]
        self.models = [self.common, self.battery, self.bank, *self.string_models, *self.module_models]
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

    # -- reading the twin -----------------------------------------------------------------------
    def _read(self) -> _Readings:
        twin = self.twin
        report = twin.master.report
        tripped = np.asarray(twin.bms.tripped, dtype=bool)
        r = _Readings(
            heard=np.array([m not in report.offline for m in twin.modules]),
            stack_v=np.array([twin.module_stack_voltage(m) for m in twin.modules]),
            current_a=np.array([twin.module_current(m) for m in twin.modules]),
            temperature_c=np.array([twin.thermocouple(m) for m in twin.modules]),
            soc_pct=twin.soc() * 100.0,
            soh_pct=twin.cell_capacity_as.min(axis=1) / 3600.0 / twin.spec.module_type.capacity_ah * 100.0,
            cell_v=_cell_voltages(twin),
            balancing=np.asarray(twin.bms.balancing, dtype=bool),
            tripped=tripped,
            pending=(np.asarray(twin.bms.timer) > 0) & ~tripped,
        )
        # one vectorised pass for every per-module figure, then plain Python values
        columns = {
            "SoC": r.soc_pct, "SoH": r.soh_pct, "V": r.stack_v,
            "CellVMax": r.cell_v.max(axis=1), "CellVMaxCell": r.cell_v.argmax(axis=1) + 1,
            "CellVMin": r.cell_v.min(axis=1), "CellVMinCell": r.cell_v.argmin(axis=1) + 1,
            "CellVAvg": r.cell_v.mean(axis=1), "CellTmpMax": r.temperature_c,
            "CellTmpMaxCell": np.ones(len(r.heard), dtype=int), "CellTmpMin": r.temperature_c,
            "CellTmpMinCell": np.ones(len(r.heard), dtype=int), "CellTmpAvg": r.temperature_c,
            "NCellBal": r.balancing.sum(axis=1)}
        lists = {name: values.tolist() for name, values in columns.items()}
        r.modules = [{name: lists[name][k] for name in columns} for k in range(len(r.heard))]
        return r

    def _bank_voltage(self, r: _Readings) -> float:
        """Sum over series positions of the mean stack voltage of the modules heard."""
        use = r.heard if r.heard.any() else np.ones_like(r.heard)
        total = 0.0
        for s in range(self.series):
            members = self.series_of == s
            chosen = members & use if (members & use).any() else members
            total += float(r.stack_v[chosen].mean())
        return total

    def _group_figures(self, r: _Readings, members: np.ndarray) -> dict[str, Any]:
        """SoC, SoH, cell and module-temperature statistics of the heard modules among
        ``members`` (module positions counted along the string); None each if none is heard."""
        use = members[r.heard[members]]
        if use.size == 0:
            return dict.fromkeys(_GROUP_FIGURES)
        cells, temps = r.cell_v[use], r.temperature_c[use]
        hi = int(np.argmax(cells)) // cells.shape[1]
        lo = int(np.argmin(cells)) // cells.shape[1]
        hot, cold = int(np.argmax(temps)), int(np.argmin(temps))
        return {
            "SoC": float(r.soc_pct[use].mean()), "SoH": float(r.soh_pct[use].mean()),
            "CellVMax": float(cells.max()), "CellVMaxMod": self.position[use[hi]][0],
            "CellVMin": float(cells.min()), "CellVMinMod": self.position[use[lo]][0],
            "CellVAvg": float(cells.mean()),
            "ModTmpMax": float(temps[hot]), "ModTmpMaxMod": self.position[use[hot]][0],
            "ModTmpMin": float(temps[cold]), "ModTmpMinMod": self.position[use[cold]][0],
            "ModTmpAvg": float(temps.mean())}

    def _events(self, r: _Readings, members: np.ndarray) -> set[str]:
        """Evt1 symbols raised by the BMS boards of the heard modules among ``members``."""
        use = members[r.heard[members]]
        events = set()
        for stem, sources in EVENT_SOURCES.items():
            rows = [self._rows[name] for name in sources]
            if r.tripped[rows][:, use].any():
                events.add(f"{stem}_ALARM")
            elif r.pending[rows][:, use].any():
                events.add(f"{stem}_WARNING")
        temps = r.temperature_c[use]
        if temps.size > 1 and float(temps.max() - temps.min()) > self.thresholds.temperature_imbalance_k:
            events.add("TEMPERATURE_IMBALANCE_WARNING")
        return events

    def _bank_events(self, r: _Readings) -> set[str]:
        twin, report, th = self.twin, self.twin.master.report, self.thresholds
        events = self._events(r, np.arange(len(twin.modules)))
        if report.comm_alarm:
            events.add("COMMUNICATION_ERROR")
        if report.modules_pending:
            events.add("VOLTAGE_IMBALANCE_WARNING")
        if any(twin.contactor_welded.values()) or any(v is not None for v in twin.contactor_stuck.values()):
            events.add("CONTACTOR_ERROR")
        if any(twin.fuse_blown.values()) or any(twin.fet_state(m) == "failed_short" for m in twin.modules):
            events.add("OTHER_ALARM")
        for s in range(self.series):
            amps = r.current_a[self.series_of == s]
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
        r = self._read()
        self._render_battery(r, state)
        connected = 0
        for p, members in enumerate(self.strings, start=1):
            status = self._string_status(members)
            events = self._events(r, members)
            figures = self._group_figures(r, members)
            volts, amps = float(r.stack_v[members].sum()), float(r.current_a[members].mean())
            connected += int(status[3])
            self._render_string_in_bank(r, p, status, events, figures, amps)
            self._render_string(r, self.string_models[p - 1], members, status, events, figures, volts, amps)
        self._render_bank(r, connected)
        for k, image in enumerate(self.module_models):
            self._render_module(r, image, k)
        registers = list(SUNS_MARKER)
        for image in self.models:
            registers.extend(image.registers)
        registers.extend([END_MODEL_ID, 0])
        return registers

    def _render_battery(self, r: _Readings, state: ControllerState) -> None:
        twin, rep, b = self.twin, self.twin.master.report, self.battery
        mt = twin.spec.module_type
        nominal_v = self.series * mt.nominal_voltage_v
        volts = self._bank_voltage(r)
        amps = float(r.current_a[self.series_of == 0].sum())
        if rep.soc_pct >= 99.5:
            status = "FULL"
        elif rep.soc_pct <= 0.5:
            status = "EMPTY"
        else:
            status = "CHARGING" if amps > 0.5 else "DISCHARGING" if amps < -0.5 else "HOLDING"
        heard = np.flatnonzero(r.heard) if r.heard.any() else np.arange(len(r.heard))
        cells = r.cell_v[heard]
        hi = heard[int(np.argmax(cells)) // cells.shape[1]]
        lo = heard[int(np.argmin(cells)) // cells.shape[1]]
        values: dict[str, Any] = {
            "AHRtg": rep.online_capacity_ah, "WHRtg": rep.online_capacity_ah * nominal_v,
            "WChaRteMax": mt.bms.limits.charge_current_a * self.parallel * nominal_v,
            "WDisChaRteMax": mt.bms.limits.discharge_current_a * self.parallel * nominal_v,
            "SoC": rep.soc_pct, "SoH": rep.soh_pct, "ChaSt": status,
            "Hb": int(twin.clock.now) & 0xFFFF, "CtrlHb": state.ctrl_hb, "AlmRst": 0,
            "State": "CONNECTED" if twin.contactor_closed["main"] else "DISCONNECTED",
            "Evt1": self._bank_events(r), "V": volts,
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

    def _render_string_in_bank(self, r: _Readings, p: int, status: tuple[set[str], str, int, bool],
                               events: set[str], figures: dict[str, Any], amps: float) -> None:
        bank, prefix = self.bank, f"string.{p}."
        bits, failure, mask, _ = status
        bank.set(prefix + "StrSt", bits)
        bank.set(prefix + "StrConFail", failure)
        bank.set(prefix + "StrConSt", mask)
        bank.set(prefix + "StrEvt1", events)
        bank.set(prefix + "StrA", amps if figures["SoC"] is not None else None)
        for name, value in figures.items():
            bank.set(prefix + "Str" + name, value)

    def _render_bank(self, r: _Readings, connected: int) -> None:
        bank = self.bank
        bank.set("NStrCon", connected)
        heard = np.flatnonzero(r.heard)
        if heard.size:
            temps = r.temperature_c[heard]
            hot, cold = heard[int(np.argmax(temps))], heard[int(np.argmin(temps))]
            for point, k in (("ModTmpMax", hot), ("ModTmpMin", cold)):
                bank.set(point, float(r.temperature_c[k]))
                bank.set(point + "Str", self.position[k][1])
                bank.set(point + "Mod", self.position[k][0])
            bank.set("ModTmpAvg", float(temps.mean()))
            bank.set("NCellBal", int(r.balancing[heard].sum()))
        volts = np.array([r.stack_v[m].sum() for m in self.strings])
        amps = np.array([r.current_a[m].mean() for m in self.strings])
        for name, values in (("StrV", volts), ("StrA", amps)):
            bank.set(name + "Max", float(values.max()))
            bank.set(name + "MaxStr", int(np.argmax(values)) + 1)
            bank.set(name + "Min", float(values.min()))
            bank.set(name + "MinStr", int(np.argmin(values)) + 1)
            bank.set(name + "Avg", float(values.mean()))

    def _render_string(self, r: _Readings, image: ModelImage, members: np.ndarray,
                       status: tuple[set[str], str, int, bool], events: set[str],
                       figures: dict[str, Any], volts: float, amps: float) -> None:
        bits, failure, mask, _ = status
        image.set("St", bits)
        image.set("ConFail", failure)
        image.set("ConSt", mask)
        image.set("Evt1", events)
        image.set("V", volts)
        image.set("A", amps)
        image.set("NCellBal", int(r.balancing[members[r.heard[members]]].sum()))
        for name, value in figures.items():
            image.set(name, value)
        group = repeating_group(804)
        for index, k in enumerate(members, start=1):
            heard, values = bool(r.heard[k]), r.modules[k]
            for name, in_string in _MODULE_IN_STRING.items():
                image.set(f"{group}.{index}.{in_string}", values[name] if heard else None)

    def _render_module(self, r: _Readings, image: ModelImage, k: int) -> None:
        heard, values = bool(r.heard[k]), r.modules[k]
        for name, value in values.items():
            image.set(name, value if heard else None)
        group = repeating_group(805)
        cell_v, balancing, temp = r.cell_v[k].tolist(), r.balancing[k].tolist(), values["CellTmpAvg"]
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


class SunSpecServer:
    """A Modbus/TCP server on loopback serving one twin's SunSpec map (see the module doc).

    ``port=0`` binds a free port; :attr:`port` is the bound one once :meth:`start` returns.
    The server runs its own asyncio loop on a daemon thread, so callers stay synchronous.
    """

    WRITE_CODES = frozenset({5, 6, 15, 16, 22, 23})

    def __init__(self, bench: EmulatedBench, host: str = "127.0.0.1", port: int = 0, device_id: int = 1,
                 thresholds: EventThresholds | None = None, lock_timeout_s: float = 0.5):
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the emulated SunSpec server binds loopback only, not {host}")
        self.bench = bench
        self.host = host
        self.port = port
        self.device_id = device_id
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

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> "SunSpecServer":
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name=f"sunspec-server-{self.host}:{self.port}",
                                        daemon=True)
        self._thread.start()
        self._ready.wait(timeout=10.0)
        if self._error is not None:
            raise RuntimeError(f"SunSpec server on {self.host}:{self.port} failed to start: {self._error}")
        if not self._ready.is_set():
            raise RuntimeError(f"SunSpec server on {self.host}:{self.port} did not start within 10 s")
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
        server = ModbusTcpServer(device, address=(self.host, self.port), trace_packet=self._trace_packet,
                                 trace_pdu=self._trace_pdu)
        await server.serve_forever(background=True)
        sockets = getattr(server.transport, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else self.port
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await server.shutdown()

    # -- requests -------------------------------------------------------------------------------
    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        """Drop every reply while silent: the request was read, nothing comes back."""
        return b"" if sending and self.silent else data

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
        symbols = {name: {int(s["value"]): s["name"] for s in battery.slots[name].pdef.get("symbols", [])}
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


def serve(bench: EmulatedBench, host: str = "127.0.0.1", port: int = 0, device_id: int = 1) -> SunSpecServer:
    """Start a SunSpec server for ``bench`` (the one function the harness's emulated station uses)."""
    return SunSpecServer(bench, host=host, port=port, device_id=device_id).start()


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
    args = parser.parse_args(list(argv) if argv is not None else None)
    bench = EmulatedBench(build_twin(args.dut, args.scenario))
    server = serve(bench, port=args.port, device_id=args.device_id)
    print(json.dumps({"host": server.host, "port": server.port, "device_id": server.device_id}), flush=True)
    runner = threading.Thread(target=bench.run_realtime, kwargs={"speed": args.speed}, daemon=True)
    runner.start()
    try:
        sys.stdin.read()
    finally:
        bench.stop()
        runner.join(timeout=2.0)
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
