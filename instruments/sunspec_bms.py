"""The battery's BMS over Modbus/TCP with SunSpec models: the harness plays the inverter.

Discovery follows the SunSpec rule (DOMAIN.md section 4): ``"SunS"`` at 40000, else 0, else
50000, then the chain of (ID, length) blocks up to ID 0xFFFF. Each model's registers, read over
pymodbus, are fed to a pysunspec2 model object (``sunspec2.device.Model``, from the definitions
pysunspec2 ships; ``set_mb``) and its points read back from it, values raw x 10^SF as pysunspec2
computes them -- so a standard map needs no per-device table. One model object is kept per
model found and fed again on every read of it.

Why the transport is pymodbus and not pysunspec2's client: the harness needs one connection
shared by the keep-alive thread and the checks, bounded time-outs, and every failure as an
:class:`~instruments.roles.InstrumentError` naming ``host:port`` (or the serial port) and the
register or model -- a bad reply must fail the measurement, never crash the run.

Two transports, one code path above them: Modbus/TCP (``SunSpecBms(host, port)``), or Modbus
RTU on an RS485 serial line (:meth:`SunSpecBms.rtu`, a :class:`SerialLine`: pymodbus's
``ModbusSerialClient`` with the RTU framer, port opened by pyserial). Both clients answer the same
``read_holding_registers``/``write_register(s)`` calls, so discovery, decoding and the role
are the same code; only the failure texts differ. On RTU a reply that arrived but failed its
CRC check is named as such (the client keeps the bytes of the last exchange), as is a port
that cannot be opened (no such device, no permission, settings the port refuses). The serial
defaults are the Modbus over Serial Line specification's (V1.02: 19200 bit/s is the default
rate, even parity the default parity, 8 data bits, 1 stop bit); many batteries ship at 9600 8N1,
so a station names what its battery is set to.

What the role's answers are made of:

- telemetry: 802 ``V``, ``A`` (+ = charge), ``SoC``, ``SoH``, ``CellVMin``/``CellVMax``;
  temperature 803 ``ModTmpAvg`` (NaN if the battery has no 803). V, A and SoC are required;
- limits: 802 ``VMax`` (charge voltage), ``AChaMax``, ``ADisChaMax``, ``VMin`` (discharge
  voltage), all required;
- status: 802 ``Evt1`` bits as names (an ``*_ALARM`` bit or an error/fault bit is an alarm,
  a ``*_WARNING`` bit a warning; see :data:`EVENT_NAMES`), ``AHRtg`` as the online capacity,
  modules online/offline from the 805 models (a module whose measured points are all
  unimplemented is offline), charge/discharge enabled while the current limit is above zero.
  SunSpec carries no installed capacity: that stays None.
- identity: model 1 ``Mn``, ``Md``, ``SN``, ``Vr`` and the cell chemistry (:meth:`SunSpecBms.chemistry`).
  802 ``Typ`` alone cannot tell LFP from NMC or LTO: its enumeration (LEAD_ACID,
  NICKEL_METAL_HYDRATE, NICKEL_CADMIUM, LITHIUM_ION, ...) has one LITHIUM_ION for all of them,
  and no other model pysunspec2 ships names a chemistry. So the chemistry is read from the
  manufacturer-specific text a device can carry it in -- a word of model 1 ``Opt``, else of
  ``Md`` (the emulated battery writes ``Opt = "LFP 1S4P"``) -- normalised by
  :func:`normalise_chemistry` (LiFePO4 -> LFP, NCM523 -> NMC, ...), and checked against ``Typ``
  (text saying LFP on a LEAD_ACID ``Typ`` is an error, not an answer). Without such a word the
  answer is ``Typ``'s family (``LI-ION`` for LITHIUM_ION: lithium-ion, chemistry not stated).
- liveness: ``Hb`` must change (the battery increments it every second); a reply with ``Hb``
  unchanged is not a sign of life, a missing reply neither. :meth:`seconds_since_heard` is
  measured on the ``clock`` given at construction -- the bench clock under emulation, so
  silence is timed in bench seconds.
- keep-alive: ``CtrlHb`` written with a new value every ``heartbeat_period_s`` (wall time) on a
  background thread while :meth:`heartbeat` is on; :meth:`send_heartbeat` writes once, for a
  caller that drives time itself.
"""

from __future__ import annotations

import math
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import sunspec2
from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.framer.rtu import FramerRTU
from sunspec2 import device as sunspec_device
from sunspec2 import mb as sunspec_mb
from sunspec2 import mdef as sunspec_mdef

from bankmodel.chemistry import CHEMISTRY_WORDS, normalise_chemistry  # noqa: F401  (re-exported)
from bankmodel.positions import natural_key
from instruments.roles import (BankIdentity, Bms, BmsLimits, BmsStatus, BmsTelemetry, InstrumentError,
                               ModuleReport, ModuleReports, normalise_version)

BASE_ADDRESSES = (40000, 0, 50000)


def _number(value: Any) -> float | None:
    return None if value is None else float(value)

SUNS_MARKER = (0x5375, 0x6E53)   # "SunS"
END_MODEL_ID = 0xFFFF
MAX_READ = 125                   # registers per Modbus read request
MAX_MODELS = 512                 # a longer chain is a broken map, not a battery
MODELS_DIR = Path(sunspec2.__file__).parent / "models" / "json"

# Evt1 symbol stem -> the harness's name for it (the rest are their symbol stem, lower case).
EVENT_NAMES = {"OVER_TEMP": "over_temperature", "UNDER_TEMP": "under_temperature",
               "OVER_VOLT": "over_voltage", "UNDER_VOLT": "under_voltage",
               "OVER_CHARGE_CURRENT": "charge_over_current",
               "OVER_DISCHARGE_CURRENT": "discharge_over_current"}


# 802 Typ symbol -> the chemistry family it stands for (None: says nothing)
TYPE_FAMILY = {"LITHIUM_ION": "LI-ION", "LEAD_ACID": "LEAD_ACID", "NICKEL_METAL_HYDRATE": "NIMH",
               "NICKEL_CADMIUM": "NICD", "CARBON_ZINC": "CARBON_ZINC", "ZINC_CHLORIDE": "ZINC_CHLORIDE",
               "ALKALINE": "ALKALINE", "RECHARGEABLE_ALKALINE": "RECHARGEABLE_ALKALINE",
               "SODIUM_SULFUR": "SODIUM_SULFUR", "FLOW": "FLOW", "OTHER": None,
               "NOT APPLICABLE_UNKNOWN": None}
_LITHIUM_CHEMISTRIES = frozenset(CHEMISTRY_WORDS)  # bankmodel.chemistry


class Malformed(ValueError):
    """Data that does not decode as the model says (turned into an InstrumentError)."""


# =============================================================================== decoding
# A model read from the battery is decoded by pysunspec2: the registers are fed to a
# ``sunspec2.device.Model`` built from the definition pysunspec2 ships (``set_mb``), and every
# point's value, scale factor applied, is pysunspec2's. What this module adds is what a
# measurement needs and pysunspec2 leaves out: a repeating-group count that does not fit the
# declared length, an unimplemented or out-of-range scale factor and text that does not decode
# are errors naming the model, point and register, never a silently wrong number.
@lru_cache(maxsize=None)
def model_definition(model_id: int) -> dict[str, Any] | None:
    """pysunspec2's definition of a model (None if the package does not ship it).

    Loaded by pysunspec2 from the package's own directory rather than through
    ``sunspec2.device.get_model_def``, which searches the current directory first.
    """
    path = MODELS_DIR / sunspec_mdef.to_json_filename(model_id)
    if not path.is_file():
        return None
    definition = sunspec_mdef.from_json_file(str(path))
    sunspec_device.add_mappings(definition[sunspec_mdef.GROUP])
    return definition


@dataclass(frozen=True)
class _GroupLayout:
    """One repeating group of a model: its count (a literal, or the point holding it) and size."""

    name: str
    count: str
    count_point: Any          # the pysunspec2 point of a model prototype holding the count, or None
    length: int               # registers per instance


@dataclass(frozen=True)
class _Layout:
    """Where a model's fixed points end and its repeating groups begin (from pysunspec2)."""

    fixed: int                # registers of the fixed points, ID and L included
    groups: tuple[_GroupLayout, ...]
    points: Mapping[str, Any]  # name -> pysunspec2 point of the fixed part (offset, pdef)


@lru_cache(maxsize=None)
def _layout(model_id: int) -> _Layout | None:
    """The model's layout, read off a pysunspec2 prototype with one instance of each repeating
    group; None for a model pysunspec2 does not ship or cannot lay out without data (nested
    repeating groups: pysunspec2 alone then checks the data)."""
    definition = model_definition(model_id)
    if definition is None:
        return None
    gdef = definition[sunspec_mdef.GROUP]
    data: dict[str, Any] = {}
    for sub in gdef.get("groups", []):
        count = str(sub.get("count", ""))
        if count.isdigit():
            data[sub["name"]] = [{}]
        else:
            data[count] = 1
    try:
        prototype = sunspec_device.Model(model_id=model_id, model_def=definition, data=data)
    except sunspec_device.ModelError:
        return None
    groups = []
    for sub in gdef.get("groups", []):
        count = str(sub.get("count", ""))
        instances = prototype.groups.get(sub["name"])
        if not isinstance(instances, list) or not instances:
            return None
        groups.append(_GroupLayout(sub["name"], count, None if count.isdigit() else prototype.points[count],
                                   int(instances[0].len)))
    return _Layout(int(prototype.points_len), tuple(groups), dict(prototype.points))


def top_point(model_id: int, name: str) -> tuple[int, Mapping[str, Any]]:
    """(offset from the model's ID point, definition) of a point of the model's fixed part."""
    layout = _layout(model_id)
    point = None if layout is None else layout.points.get(name)
    if point is None:
        raise KeyError(f"model {model_id} has no point {name}")
    return int(point.offset), point.pdef


def _marker(pdef: Mapping[str, Any]) -> str:
    size = pdef.get("size") or sunspec_mb.point_type_info[pdef["type"]].len
    data = sunspec_mb.create_unimpl_value(pdef["type"], len=int(size) * 2)
    return "0x" + data.hex().upper() if len(data) <= 4 else "unimplemented"


class Point:
    """One point of a model read from the battery: its register address, definition, and the
    pysunspec2 point holding its value (``raw``: the register value, None if unimplemented)."""

    __slots__ = ("name", "address", "pdef", "point")

    def __init__(self, name: str, address: int, point: Any):
        self.name, self.address, self.point = name, address, point
        self.pdef: Mapping[str, Any] = point.pdef

    @property
    def raw(self) -> Any:
        return self.point.value


class Block:
    """A model read from the battery, or one instance of a repeating group inside it: a view of
    a pysunspec2 model object. A later read of the same model updates the object, and so every
    view of it: take what you need from a block before reading its model again."""

    def __init__(self, model_id: int, address: int, group: Any = None, parent: "Block | None" = None):
        self.model_id = model_id
        self.address = address
        self.parent = parent
        self.group = group
        self.points: dict[str, Point] = {}
        self.groups: dict[str, list[Block]] = {}
        if group is None:
            return
        base = int(group.model.model_addr)
        self.points = {name: Point(name, base + int(p.offset), p) for name, p in group.points.items()}
        for name, instances in group.groups.items():
            instances = instances if isinstance(instances, list) else [instances]
            self.groups[name] = [Block(model_id, base + int(g.offset), g, self) for g in instances]

    def where(self, name: str) -> str:
        point = self.points.get(name)
        at = f" at {point.address}" if point else ""
        return f"model {self.model_id} point {name}{at}"

    def raw(self, name: str) -> Any:
        """The point's register value (None if unimplemented or not in the model)."""
        point = self.points.get(name)
        return None if point is None else point.raw

    def scale(self, point: Point) -> int:
        """The point's scale factor: a literal, or a sunssf point of this group or its model.
        An unimplemented or out-of-range one is :class:`Malformed`."""
        sf = point.pdef.get("sf")
        if sf is None:
            return 0
        if isinstance(sf, int) or str(sf).lstrip("-").isdigit():
            if point.point.sf_value is None:   # pysunspec2 forgets it while the point is unimplemented
                point.point.sf_value = int(sf)
            return int(sf)
        block: Block | None = self
        while block is not None and sf not in block.points:
            block = block.parent
        if block is None or block.points[sf].raw is None:
            raise Malformed(f"{self.where(point.name)}: scale factor {sf} not implemented")
        value = int(block.points[sf].raw)
        if not -10 <= value <= 10:
            raise Malformed(f"{self.where(point.name)}: scale factor {sf} = {value} out of range")
        return value

    def value(self, name: str) -> Any:
        """The engineering value (raw x 10^SF, computed by pysunspec2), text, or raw
        enum/bitfield; None if unimplemented."""
        point = self.points.get(name)
        if point is None or point.raw is None:
            return None
        if point.pdef["type"] == "string" or point.pdef.get("sf") is None:
            return point.raw
        self.scale(point)    # checked first: pysunspec2 would leave the value unscaled
        return float(point.point.cvalue)

    def require(self, name: str) -> Any:
        value = self.value(name)
        if value is None:
            point = self.points.get(name)
            marker = "" if point is None else f" ({_marker(point.pdef)})"
            raise Malformed(f"{self.where(name)}: not implemented{marker}")
        return value

    def symbols(self, name: str) -> set[str]:
        """Names of the bits set in a bitfield point (unknown bits as ``BIT<n>``)."""
        point = self.points.get(name)
        if point is None or point.raw is None:
            return set()
        names = {int(s["value"]): str(s["name"]) for s in point.pdef.get("symbols", [])}
        return {names.get(bit, f"BIT{bit}") for bit in range(32) if int(point.raw) >> bit & 1}

    def symbol(self, name: str) -> str | None:
        point = self.points.get(name)
        if point is None or point.raw is None:
            return None
        names = {int(s["value"]): str(s["name"]) for s in point.pdef.get("symbols", [])}
        return names.get(int(point.raw), str(point.raw))


def _group_counts(model_id: int, address: int, data: bytes) -> tuple[int, ...] | None:
    """Instances of each repeating group in a model's data, checked against its length: a count
    that is not implemented, or that the declared length cannot hold, is :class:`Malformed`.
    None if the model's layout is unknown (pysunspec2 alone reads it)."""
    layout = _layout(model_id)
    if layout is None:
        return None
    registers, offset, counts = len(data) // 2, layout.fixed, []
    for group in layout.groups:
        point = group.count_point
        if point is None:
            count = int(group.count) or max(registers - offset, 0) // group.length
        else:
            start = int(point.offset) * 2
            chunk = data[start:start + int(point.len) * 2]
            count = point.info.data_to(chunk) if len(chunk) == int(point.len) * 2 else None
            if count is None or not point.info.is_impl(count):
                raise Malformed(f"model {model_id} at {address}: group count {group.count} not implemented")
        if offset + count * group.length > registers:
            raise Malformed(f"model {model_id} at {address}: {count} x {group.name} need "
                            f"{offset + count * group.length - 2} registers, length is {registers - 2}")
        offset += count * group.length
        counts.append(count)
    return tuple(counts)


def _model_counts(model: Any) -> tuple[int, ...]:
    return tuple(len(g) if isinstance(g, list) else 1 for g in model.groups.values())


def decode_model(model_id: int, address: int, registers: list[int], reuse: Block | None = None) -> Block:
    """Decode one model (``registers`` from its ID point to the end of its length) with
    pysunspec2: the registers are fed to a model object (``set_mb``) and read back from it.

    ``reuse`` is an earlier decoding of the same model at the same address: its model object is
    fed the new registers (``set_mb``) if its repeating groups have the same instances -- several
    times cheaper than a new object -- and the same block is returned. A new object is built
    from the data itself (pysunspec2 sets every point from it as it builds). Points beyond the length a battery declares read
    as unimplemented (older revisions are shorter); a repeating group whose declared count does
    not fit is malformed, as is data pysunspec2 cannot decode.
    """
    definition = model_definition(model_id)
    if definition is None:
        return Block(model_id, address)
    data = struct.pack(f">{len(registers)}H", *registers)
    counts = _group_counts(model_id, address, data)
    group = reuse.group if reuse is not None and reuse.model_id == model_id and reuse.address == address else None
    if group is not None and counts is not None and _model_counts(group) == counts:
        group.error_info = ""
        group.set_mb(data, dirty=False)
        block = reuse
    else:   # a new object: pysunspec2 lays out the repeating groups from the data's counts
        try:
            group = sunspec_device.Model(model_id=model_id, model_addr=address, model_len=len(registers) - 2,
                                         model_def=definition, data=data)
        except sunspec_device.ModelError as exc:
            raise Malformed(f"model {model_id} at {address}: {exc}") from exc
        block = Block(model_id, address, group)
    # the declared length differing from the definition's is legal (older revisions): not an error
    errors = [line for line in group.error_info.splitlines() if line and not line.startswith("Model length")]
    if errors:
        raise Malformed(f"model {model_id} at {address}: {'; '.join(errors)}")
    return block


def event_names(bits: set[str]) -> tuple[set[str], set[str]]:
    """(alarms, warnings) from Evt1 symbol names."""
    alarms, warnings = set(), set()
    for bit in bits:
        stem, _, kind = bit.rpartition("_")
        if kind == "WARNING":
            warnings.add(EVENT_NAMES.get(stem, stem.lower()))
        elif kind == "ALARM":
            alarms.add(EVENT_NAMES.get(stem, stem.lower()))
        else:
            alarms.add(bit.lower())
    return alarms, warnings


def _exception_text(reply: Any) -> str:
    """A Modbus exception response as text: code and name (ILLEGAL_ADDRESS, ...)."""
    code = getattr(reply, "exception_code", None)
    try:
        name = ExcCodes(code).name
    except ValueError:
        name = "unknown"
    return f"exception response {code:#04x} {name}" if isinstance(code, int) else f"error reply {reply}"


def _transport_problem(exc: Exception, device_id: int) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ModbusIOException):
        text += f" (no reply: battery silent, or not unit {device_id} at this address)"
    return text


@dataclass(frozen=True)
class SerialLine:
    """A serial line as Modbus RTU uses it (RS485, through a USB adapter or a built-in port).

    Defaults are the Modbus over Serial Line specification's (V1.02): 19200 bit/s, even parity,
    8 data bits (RTU always uses 8), 1 stop bit. ``port`` is what pyserial opens:
    ``/dev/ttyUSB0``, ``/dev/serial/by-id/...``, ``COM3``."""

    port: str
    baudrate: int = 19200
    parity: str = "E"        # N, E or O
    stopbits: int = 1
    bytesize: int = 8

    def __post_init__(self) -> None:
        if not self.port:
            raise ValueError("a serial port is needed for Modbus RTU, e.g. /dev/ttyUSB0")
        if self.parity not in ("N", "E", "O"):
            raise ValueError(f"parity {self.parity!r}: N, E or O")
        if self.stopbits not in (1, 2):
            raise ValueError(f"stopbits {self.stopbits!r}: 1 or 2")
        if self.bytesize not in (7, 8):
            raise ValueError(f"bytesize {self.bytesize!r}: 8 (Modbus RTU), or 7")
        if not isinstance(self.baudrate, int) or self.baudrate <= 0:
            raise ValueError(f"baudrate {self.baudrate!r}: a rate in bit/s, e.g. 9600 or 19200")

    @property
    def settings(self) -> str:
        """``"19200 8E1"``."""
        return f"{self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"

    def __str__(self) -> str:
        return f"{self.port} (Modbus RTU {self.settings})"


def _crc_ok(frame: bytes) -> bool:
    """Whether an RTU frame (address, PDU, CRC low byte first) carries a good CRC."""
    return len(frame) >= 4 and FramerRTU.compute_CRC(frame[:-2]) == int.from_bytes(frame[-2:], "big")


def _serial_open_problem(line: SerialLine) -> str:
    """Why pyserial cannot open the line as configured ("" if it can, now)."""
    import serial   # pyserial, pymodbus's serial dependency

    try:
        port = serial.serial_for_url(line.port, baudrate=line.baudrate, parity=line.parity,
                                     stopbits=line.stopbits, bytesize=line.bytesize, timeout=0,
                                     exclusive=True)
    except Exception as exc:  # pyserial raises SerialException, termios.error, ValueError
        text = str(exc)
        if "Invalid argument" in text:   # termios EINVAL: the device refuses these settings
            text += f" (the port refuses the settings {line.settings})"
        return text
    port.close()
    return ""


# =============================================================================== the role
@dataclass(frozen=True)
class ModelRef:
    """A model found by discovery: its ID, the address of its ID point and its length."""

    model_id: int
    address: int
    length: int


class SunSpecBms(Bms, ModuleReports):
    """The Bms role over Modbus (TCP, or RTU on a serial line) + SunSpec (see the module doc).

    ``SunSpecBms(host, port, device_id)`` is Modbus/TCP; ``serial_line=SerialLine(...)`` (or
    :meth:`rtu`) is Modbus RTU on that serial line, ``host``/``port`` then unused."""

    soc_resolution_pct = 0.1  # 802 SoC with SoC_SF -1

    def __init__(self, host: str | None = "127.0.0.1", port: int | None = 502, device_id: int = 1, *,
                 serial_line: SerialLine | None = None,
                 name: str = "bms", timeout_s: float = 1.0, heartbeat_period_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 base_addresses: tuple[int, ...] = BASE_ADDRESSES, driven: bool = False):
        self.name = name
        self.device_id = int(device_id)
        self.serial_line = serial_line
        self.timeout_s = float(timeout_s)
        self.heartbeat_period_s = heartbeat_period_s
        self.base_addresses = base_addresses
        self._clock = clock
        self._received = bytearray()   # RTU: the bytes of the last exchange's reply, as they came
        self._client: ModbusTcpClient | ModbusSerialClient
        if serial_line is None:
            if not host or port is None:
                raise ValueError("Modbus/TCP needs a host and a port (or serial_line for Modbus RTU)")
            self.host, self.port = host, int(port)
            self.resource = f"{host}:{self.port}"
            self._client = ModbusTcpClient(host, port=self.port, timeout=timeout_s, retries=0,
                                           reconnect_delay=0)
        else:
            self.host, self.port = None, None
            self.resource = str(serial_line)
            self._client = ModbusSerialClient(serial_line.port, framer=FramerType.RTU,
                                              baudrate=serial_line.baudrate, parity=serial_line.parity,
                                              stopbits=serial_line.stopbits, bytesize=serial_line.bytesize,
                                              timeout=timeout_s, retries=0, reconnect_delay=0,
                                              trace_packet=self._trace_packet)
        self._io = threading.RLock()
        self._models: list[ModelRef] | None = None
        self._decoded: dict[ModelRef, Block] = {}   # the model objects, fed again on each read
        self._ctrl_hb = 0
        self.last_keepalive_s: float | None = None  # clock time of the last CtrlHb written
        self._last_hb: int | None = None
        self._last_heard: float | None = None
        self._hb_stop = threading.Event()
        self._hb_thread: threading.Thread | None = None
        # driven: the bench clock's periodic duty sends the keep-alive (send_keepalive_if_due),
        # in bench time, virtual or wall; no thread of its own
        self._driven = driven
        self._hb_wanted = False
        self._next_hb = 0.0
        self.heartbeats_sent = 0
        self.heartbeat_errors = 0
        self.last_heartbeat_error: InstrumentError | None = None

    @classmethod
    def from_resource(cls, resource: str, device_id: int = 1, **kwargs: Any) -> "SunSpecBms":
        """``"host:port"`` (as a station file writes it) -> a client."""
        host, _, port = resource.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"SunSpec BMS resource '{resource}' is not host:port")
        return cls(host, int(port), device_id, **kwargs)

    @classmethod
    def rtu(cls, serial_port: str, device_id: int = 1, *, baudrate: int = 19200, parity: str = "E",
            stopbits: int = 1, bytesize: int = 8, **kwargs: Any) -> "SunSpecBms":
        """A client on a Modbus RTU serial line (defaults: the Modbus serial line spec's 19200 8E1)."""
        line = SerialLine(serial_port, int(baudrate), str(parity), int(stopbits), int(bytesize))
        return cls(None, None, device_id, serial_line=line, **kwargs)

    @classmethod
    def from_settings(cls, cfg: Mapping[str, Any], **kwargs: Any) -> "SunSpecBms":
        """A client from a station's bus entry in runtime form (``ModbusBus.runtime()``):
        ``{host, port, device_id, ...}`` for TCP, ``{transport: rtu, serial_port, baudrate,
        parity, stopbits, device_id, ...}`` for RTU; ``timeout_s``/``heartbeat_period_s`` if set."""
        extra = {k: cfg[k] for k in ("timeout_s", "heartbeat_period_s") if cfg.get(k) is not None}
        device_id = int(cfg.get("device_id") or 1)
        if cfg.get("transport", "tcp") == "rtu":
            if not cfg.get("serial_port"):
                raise ValueError("Modbus RTU bus without a serial_port (e.g. /dev/ttyUSB0)")
            serial = {k: cfg[k] for k in ("baudrate", "parity", "stopbits", "bytesize") if cfg.get(k) is not None}
            return cls.rtu(str(cfg["serial_port"]), device_id, **serial, **extra, **kwargs)
        if not cfg.get("host") or cfg.get("port") is None:
            raise ValueError(f"Modbus/TCP bus without host and port: {dict(cfg)}")
        return cls(str(cfg["host"]), int(cfg["port"]), device_id, **extra, **kwargs)

    @property
    def transport(self) -> str:
        """``"tcp"`` or ``"rtu"``."""
        return "tcp" if self.serial_line is None else "rtu"

    # -- transport ------------------------------------------------------------------------------
    def _error(self, command: str, problem: str) -> InstrumentError:
        return InstrumentError(self.name, self.resource, command, problem)

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        """RTU: keep the raw bytes of each reply (a reply that failed its CRC check never
        reaches the caller, but its bytes tell that it came)."""
        if sending:
            self._received.clear()
        else:
            self._received.extend(data)
        return data

    def _problem(self, exc: Exception) -> str:
        """A failed exchange as text: what pymodbus said, and what it means on this transport."""
        line = self.serial_line
        if line is None:
            return _transport_problem(exc, self.device_id)
        if isinstance(exc, ConnectionException):
            reason = _serial_open_problem(line)
            return f"cannot open serial port {line.port}" + (f": {reason}" if reason else "")
        if isinstance(exc, ModbusIOException):
            got = bytes(self._received)
            if got and not _crc_ok(got):
                return (f"a reply came ({len(got)} bytes) but failed its CRC check: noise on the RS485 "
                        f"line, missing termination, or a baud rate/parity other than {line.settings}")
            if got and got[0] != self.device_id:
                return (f"a reply from unit {got[0]}, not unit {self.device_id}: another device "
                        "answers on this line")
            if got:
                return f"{type(exc).__name__}: {exc} (reply of {len(got)} bytes not understood)"
            return (f"no reply within {self.timeout_s:g} s on {line.port}: battery silent, not unit "
                    f"{self.device_id}, another baud rate/parity than {line.settings}, or A/B swapped")
        return f"{type(exc).__name__}: {exc}"

    def _read(self, address: int, count: int, what: str) -> list[int]:
        """``count`` holding registers from ``address``, in requests of at most 125."""
        registers: list[int] = []
        while len(registers) < count:
            start, size = address + len(registers), min(MAX_READ, count - len(registers))
            command = f"read {start}+{size} ({what})"
            with self._io:
                try:
                    reply = self._client.read_holding_registers(start, count=size, device_id=self.device_id)
                except Exception as exc:  # pymodbus raises several kinds; all are a failed read
                    problem = self._problem(exc)
                    self._client.close()  # a late answer must not pair with the next request
                    raise self._error(command, problem) from exc
            if reply.isError():
                raise self._error(command, _exception_text(reply))
            got = list(getattr(reply, "registers", []) or [])
            if len(got) != size:
                raise self._error(command, f"short read: {len(got)} of {size} registers")
            registers.extend(got)
        return registers

    def _write(self, address: int, values: list[int], what: str) -> None:
        command = f"write {address}={values} ({what})"
        with self._io:
            try:
                if len(values) == 1:
                    reply = self._client.write_register(address, values[0], device_id=self.device_id)
                else:
                    reply = self._client.write_registers(address, values, device_id=self.device_id)
            except Exception as exc:
                problem = self._problem(exc)
                self._client.close()
                raise self._error(command, problem) from exc
        if reply.isError():
            raise self._error(command, _exception_text(reply))

    # -- discovery ------------------------------------------------------------------------------
    def discover(self) -> list[ModelRef]:
        """Find the SunSpec map and walk its (ID, length) chain; the result is kept."""
        with self._io:
            base, problems = None, []
            for candidate in self.base_addresses:
                try:
                    marker = self._read(candidate, 2, "SunS marker")
                except InstrumentError as exc:
                    if self.serial_line is not None and isinstance(exc.__cause__, ConnectionException):
                        raise self._error("discover", exc.problem) from exc   # the port: no use trying on
                    problems.append(f"{candidate}: {exc.problem}")
                    continue
                if tuple(marker) == SUNS_MARKER:
                    base = candidate
                    break
                problems.append(f"{candidate}: {marker[0]:#06x} {marker[1]:#06x} is not 'SunS'")
            if base is None:
                raise self._error("discover", "no SunSpec map: " + "; ".join(problems))
            models, address = [], base + 2
            while True:
                model_id, length = self._read(address, 2, "model header")
                if model_id == END_MODEL_ID:
                    break
                if len(models) >= MAX_MODELS or address + 2 + length > 0x10000:
                    raise self._error("discover", f"broken model chain at {address} (model {model_id}, "
                                                  f"length {length})")
                models.append(ModelRef(model_id, address, length))
                address += 2 + length
            self._models = models
            self._decoded = {ref: block for ref, block in self._decoded.items() if ref in models}
            return models

    def models(self) -> list[ModelRef]:
        return self._models if self._models is not None else self.discover()

    def refs(self, model_id: int) -> list[ModelRef]:
        return [ref for ref in self.models() if ref.model_id == model_id]

    def read_model(self, ref: ModelRef) -> Block:
        """Read and decode one model; a header that moved means the map changed (rediscover)."""
        registers = self._read(ref.address, ref.length + 2, f"model {ref.model_id}")
        if registers[0] != ref.model_id or registers[1] != ref.length:
            self._models = None
            raise self._error(f"read model {ref.model_id} at {ref.address}",
                              f"header is ({registers[0]}, {registers[1]}), expected "
                              f"({ref.model_id}, {ref.length}): the map changed")
        with self._io:
            try:
                block = decode_model(ref.model_id, ref.address, registers, self._decoded.get(ref))
            except Malformed as exc:
                self._decoded.pop(ref, None)
                raise self._error(f"decode model {ref.model_id} at {ref.address}", str(exc)) from exc
            self._decoded[ref] = block
            return block

    def model(self, model_id: int, instance: int = 1) -> Block:
        refs = self.refs(model_id)
        if len(refs) < instance:
            raise self._error(f"model {model_id}", f"not in the map (models: "
                                                   f"{', '.join(str(r.model_id) for r in self.models())})")
        return self.read_model(refs[instance - 1])

    def _optional(self, model_id: int) -> Block | None:
        refs = self.refs(model_id)
        return self.read_model(refs[0]) if refs else None

    @contextmanager
    def _decoding(self, what: str) -> Iterator[None]:
        """Data that does not decode (unimplemented where required, bad scale factor) is an
        InstrumentError naming the model, point and register."""
        try:
            yield
        except Malformed as exc:
            raise self._error(what, str(exc)) from exc

    def _battery(self) -> Block:
        block = self.model(802)
        self._note_heartbeat(block.raw("Hb"))
        return block

    # -- the role -------------------------------------------------------------------------------
    def identity(self) -> str:
        """``"<Mn> <Md> SN <SN> firmware <Vr> chemistry <chemistry>"`` (a chemistry that
        contradicts 802 ``Typ`` is shown with the contradiction, not raised: this is also the
        watchdog's probe)."""
        common, battery = self.model(1), self._optional(802)
        with self._decoding("identity"):
            chemistry, conflict = self._chemistry(common, battery)
            text = (f"{common.require('Mn')} {common.require('Md')} SN {common.require('SN')} "
                    f"firmware {common.value('Vr') or '?'} chemistry {chemistry or '?'}")
            return text + (f" ({conflict})" if conflict else "")

    def chemistry(self) -> str | None:
        """The battery's cell chemistry, normalised: ``"LFP"``, ``"NMC"``, ``"LTO"`` (also NCA,
        LCO, LMO) from model 1 ``Opt`` or ``Md``; else 802 ``Typ``'s family (``"LI-ION"``,
        ``"LEAD_ACID"``, ``"NIMH"``, ...); None if the battery says nothing. Text that
        contradicts ``Typ`` is an :class:`InstrumentError` (see the module doc)."""
        common, battery = self.model(1), self._optional(802)
        with self._decoding("chemistry"):
            chemistry, conflict = self._chemistry(common, battery)
        if conflict:
            raise self._error("chemistry", conflict)
        return chemistry

    @staticmethod
    def _chemistry(common: Block, battery: Block | None) -> tuple[str | None, str | None]:
        """(chemistry, contradiction or None) from model 1 text and 802 Typ."""
        typ = battery.symbol("Typ") if battery is not None else None
        family = TYPE_FAMILY.get(typ) if typ is not None else None   # an unknown value says nothing
        for name in ("Opt", "Md"):
            chemistry = normalise_chemistry(common.value(name))
            if chemistry is None:
                continue
            if family is not None and family != "LI-ION" and chemistry in _LITHIUM_CHEMISTRIES:
                return chemistry, (f"model 1 {name} {common.value(name)!r} says {chemistry}, "
                                   f"{battery.where('Typ') if battery else 'Typ'} says {typ}")
            return chemistry, None
        return family, None

    def firmware(self) -> str:
        """Model 1 ``Vr``, in the one form every driver reports (``normalise_version``)."""
        common = self.model(1)
        with self._decoding("firmware"):
            return normalise_version(common.require("Vr"))

    # -- ModuleReports: what the bank BMS publishes per module (805), per string (804), of itself (1)
    def module_reports(self) -> dict[str, ModuleReport]:
        """Model 805 of every module, by position ``s{ModIdx}p{StrIdx}``. The voltage is the sum
        of its cell voltages (1 mV each) where reported, else 805 ``V`` (0.1 V)."""
        out: dict[str, ModuleReport] = {}
        for ref in self.refs(805):
            block = self.read_model(ref)
            with self._decoding("module_reports"):
                s, p = block.value("ModIdx"), block.value("StrIdx")
                if s is None or p is None:
                    continue
                cells = [c.value("CellV") for c in next(iter(block.groups.values()), [])]
                volts = sum(cells) if cells and all(v is not None for v in cells) else _number(block.value("V"))
                serial = block.value("SN")
                balancing = block.value("NCellBal")
                place = f"s{int(s)}p{int(p)}"
                out[place] = ModuleReport(
                    place, volts, _number(block.value("SoC")), _number(block.value("SoH")),
                    None if serial is None else str(serial).strip("\0 "), _number(block.value("CellTmpAvg")),
                    _number(block.value("CellVMin")), _number(block.value("CellVMax")),
                    None if balancing is None else int(balancing))
        return dict(sorted(out.items(), key=lambda kv: natural_key(kv[0])))

    def string_enabled(self) -> dict[str, bool]:
        """Model 804 of every string: ``p{Idx}`` -> whether the master has enabled (admitted) it."""
        out: dict[str, bool] = {}
        for ref in self.refs(804):
            block = self.read_model(ref)
            with self._decoding("string_enabled"):
                out[f"p{int(block.value('Idx'))}"] = "STRING_ENABLED" in block.symbols("St")
        return out

    def bank_identity(self) -> BankIdentity:
        """Model 1 (maker, model, firmware, serial) and the chemistry (1 ``Opt``/``Md``, 802)."""
        common = self.model(1)
        with self._decoding("bank_identity"):
            maker, model, serial = common.value("Mn"), common.value("Md"), common.value("SN")
            version = common.value("Vr")
        return BankIdentity(None if maker is None else str(maker), None if model is None else str(model),
                            None if version is None else normalise_version(version),
                            None if serial is None else str(serial), self.chemistry())

    def serial(self) -> str:
        common = self.model(1)
        with self._decoding("serial"):
            return str(common.require("SN"))

    def telemetry(self) -> BmsTelemetry:
        battery, bank = self._battery(), self._optional(803)
        with self._decoding("telemetry"):
            temperature = None if bank is None else bank.value("ModTmpAvg")
            if temperature is None and bank is not None:
                temperature = bank.value("ModTmpMax")
            soh = battery.value("SoH")
            return BmsTelemetry(
                voltage_v=float(battery.require("V")), current_a=float(battery.require("A")),
                temperature_c=math.nan if temperature is None else float(temperature),
                soc_pct=float(battery.require("SoC")), soh_pct=math.nan if soh is None else float(soh),
                min_cell_v=battery.value("CellVMin"), max_cell_v=battery.value("CellVMax"))

    def limits(self) -> BmsLimits:
        battery = self._battery()
        with self._decoding("limits"):
            return BmsLimits(charge_voltage_v=float(battery.require("VMax")),
                             charge_current_a=float(battery.require("AChaMax")),
                             discharge_current_a=float(battery.require("ADisChaMax")),
                             discharge_voltage_v=float(battery.require("VMin")))

    def status(self) -> BmsStatus:
        battery = self._battery()
        modules = [self.read_model(ref) for ref in self.refs(805)]
        with self._decoding("status"):
            online = sum(1 for m in modules if any(m.value(p) is not None for p in ("V", "SoC", "CellVAvg")))
            battery.require("Evt1")
            alarms, warnings = event_names(battery.symbols("Evt1"))
            charge, discharge = battery.value("AChaMax"), battery.value("ADisChaMax")
            return BmsStatus(
                alarms=alarms, warnings=warnings,
                modules_online=online if modules else None,
                modules_offline=len(modules) - online if modules else None,
                installed_capacity_ah=None, online_capacity_ah=battery.value("AHRtg"),
                charge_enable=None if charge is None else charge > 0,
                discharge_enable=None if discharge is None else discharge > 0)

    def state(self) -> str | None:
        """802 State as its symbol name (CONNECTED, DISCONNECTED, ...)."""
        return self._battery().symbol("State")

    def set_operation(self, connect: bool) -> None:
        """802 SetOp: ask the battery to connect (close its main contactor) or disconnect."""
        op = "CONNECT" if connect else "DISCONNECT"
        offset, pdef = top_point(802, "SetOp")
        symbols = {str(s["name"]): int(s["value"]) for s in pdef.get("symbols", [])}
        self._write(self._ref_802().address + offset, [symbols[op]], f"model 802 SetOp {op}")

    def safe_state(self) -> None:
        """Ask the battery to open its main contactor (SetOp DISCONNECT)."""
        self.set_operation(False)

    # -- keep-alive and liveness ----------------------------------------------------------------
    def _ref_802(self) -> ModelRef:
        refs = self.refs(802)
        if not refs:
            raise self._error("model 802", "not in the map")
        return refs[0]

    def _point_address(self, point: str) -> int:
        return self._ref_802().address + top_point(802, point)[0]

    def send_heartbeat(self) -> int:
        """Write the next CtrlHb value once (what the keep-alive thread does each period)."""
        with self._io:
            value = (self._ctrl_hb + 1) & 0xFFFF
            self._write(self._point_address("CtrlHb"), [value], "model 802 CtrlHb")
            self._ctrl_hb = value
            self.heartbeats_sent += 1
            self.last_keepalive_s = self._clock()  # what the battery's comm-loss timer counts from
            return value

    @property
    def period_s(self) -> float:
        return self.heartbeat_period_s

    def send_keepalive_if_due(self) -> bool:
        """The CtrlHb keep-alive from the bench clock's duty, at its period of bench time (a
        driven client); True if one was written."""
        if not self._hb_wanted or self._clock() < self._next_hb - 1e-9:
            return False
        self._next_hb = self._clock() + self.heartbeat_period_s
        try:
            self.send_heartbeat()
        except InstrumentError as exc:  # counted; the next one is tried on schedule
            self.heartbeat_errors += 1
            self.last_heartbeat_error = exc
            return False
        return True

    def heartbeat(self, on: bool) -> None:
        if self._driven:
            if on and not self._hb_wanted:
                self._next_hb = self._clock()
            self._hb_wanted = bool(on)
            return
        if on and self._hb_thread is None:
            self._hb_stop.clear()
            self._hb_thread = threading.Thread(target=self._keep_alive, daemon=True,
                                               name=f"sunspec-ctrlhb-{self.resource}")
            self._hb_thread.start()
        elif not on and self._hb_thread is not None:
            self._hb_stop.set()
            self._hb_thread.join(timeout=5.0)
            self._hb_thread = None

    @property
    def heartbeat_on(self) -> bool:
        return self._hb_wanted if self._driven else self._hb_thread is not None

    def _keep_alive(self) -> None:
        """Write CtrlHb, then watch Hb, every period until stopped; failures are counted."""
        while True:
            try:
                self.send_heartbeat()
                self.poll_heartbeat()
            except InstrumentError as exc:
                self.heartbeat_errors += 1
                self.last_heartbeat_error = exc
            if self._hb_stop.wait(self.heartbeat_period_s):
                return

    def _note_heartbeat(self, hb: int | None) -> None:
        if hb is not None and hb != self._last_hb:
            self._last_heard = self._clock()
        self._last_hb = hb

    def poll_heartbeat(self) -> int | None:
        """Read Hb once and note whether it moved; None (and no sign of life) if no reply."""
        try:
            (hb,) = self._read(self._point_address("Hb"), 1, "model 802 Hb")
        except InstrumentError:
            return None
        self._note_heartbeat(hb if hb != 0xFFFF else None)
        return hb

    def seconds_since_heard(self) -> float:
        """Clock seconds since Hb was last seen to change (inf if it never was)."""
        self.poll_heartbeat()
        return math.inf if self._last_heard is None else self._clock() - self._last_heard

    def close(self) -> None:
        self.heartbeat(False)
        with self._io:
            self._client.close()

    def __enter__(self) -> "SunSpecBms":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
