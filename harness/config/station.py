"""Station files (fixtures/stations/): what is on the bench, where, how far it may be driven.

A station says which driver fills which role at which address, what each instrument is rated
for, when it is due for calibration, which scanner channel measures which node, shunt or
thermocouple, which actuator relay drives which contactor, and how the BMS buses are reached.
Wiring lives here and nowhere else (DESIGN.md), so check code only ever names roles and nodes.

Format, abridged (every quantity with its unit; ``fixtures/stations/lab_example.yaml`` is a
complete, commented example)::

    name: lab-bench-2
    emulated: false
    instruments:
      supply:                                   # role -> instrument
        driver: keysight_n5700                  # a name in instruments.drivers
        resource: TCPIP0::192.0.2.10::inst0::INSTR
        model: N5767A                           # informative
        rating: {voltage: "60 V", current: "25 A", power: "1500 W"}
        calibration_due: 2027-03-31
        timeout: "2 s"
        options: {}                             # passed to the driver, checked against it
      scanner:
        driver: keysight_daq970a
        cards: [{slot: 1, model: DAQM901A}, {slot: 3, model: DAQM903A}]
    bms:
      can: {interface: pcan, channel: PCAN_USBBUS1, bitrate: 500000}
      modbus: {host: 192.0.2.20, port: 502, device_id: 1}
    channels:
      scanner:
        - {channel: 101, kind: voltage, plus: s1p1.+, minus: s1p1.P-}
        - {channel: 105, kind: shunt, branch: p1, resistance: "50 uohm", rating: {current: "300 A"}}
        - {channel: 201, kind: thermocouple, point: s1p1.+}
      actuator:
        - {channel: 301, contactor: p1}
      dmm:
        dmm_vds: {kind: voltage, plus: s1p1.P-, minus: s1p1.B-}
      acir_module: s1p1

``auto`` (an instrument's ``resource``, ``channels``, ``bms.can``, ``bms.modbus``) is allowed
only in an emulated station: the emulator fills it in when it starts, with the loopback
addresses of its endpoints and the channel map of its default wiring
(:func:`emulator.bench.default_wiring`: slot 1 module voltages then branch shunts, slot 2
thermocouples, slot 3 contactor relays). :func:`resolve_emulated` does that substitution.
Ratings are never ``auto``: they are what the plan's setpoints are checked against before
anything starts, emulated or not.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args

from pydantic import (AfterValidator, BeforeValidator, Field, PrivateAttr, WrapSerializer,
                      WrapValidator, field_validator, model_validator)
from pydantic import BaseModel
from pydantic_core import PydanticCustomError

from harness.config import FileModel, SourcedFile, load_document, validate_document
from harness.config.production import LineSection
from bankmodel.channels import (ActuatorChannel, ChannelMap, Rating, Role, ScannerChannel, ShuntChannel,
                                ShuntInput, ThermocoupleChannel, ThermocoupleInput, VoltageChannel,
                                VoltageInput, input_of, quantity_between)
from bankmodel.units import Quantity
from instruments.drivers import driver_names, get_driver

AUTO = "auto"


InstrumentTimeout = Annotated[Quantity["s"], quantity_between("1 ms", "1 h", "a timeout")]
BusTimeout = Annotated[Quantity["s"], quantity_between("1 ms", "10 min", "a timeout")]
BusPeriod = Annotated[Quantity["s"], quantity_between("10 ms", "10 min", "a period")]


# ================================================================================== auto
def _auto_or(model_name: str, example: str):  # type: ignore[no-untyped-def]
    """Validator: the text ``auto`` as it is, anything else as the model.

    Without this a ``Model | Literal['auto']`` union reports every error twice, under
    made-up field names (``channels.ChannelMap.scanner``); here errors keep the file's paths.
    """

    def validate(value: Any, handler: Any) -> Any:
        if value == AUTO:
            return AUTO
        if isinstance(value, str) or not isinstance(value, (dict, BaseModel)):
            raise PydanticCustomError(
                "auto_or_mapping",
                f"'auto' (emulated stations only) or a mapping of {model_name}, e.g. {example}")
        return handler(value)

    return WrapValidator(validate)


def _serialise_auto(value: Any, handler: Any) -> Any:
    return value if value == AUTO else handler(value)


# ================================================================================== instruments
def _known_driver(name: str) -> str:
    known = driver_names()
    if name not in known:
        raise PydanticCustomError("unknown_driver", "a registered driver: " + ", ".join(known))
    return name


_VISA = [
    re.compile(r"^TCPIP\d*::[^:\s]+::(inst\d+|hislip\d+)::INSTR$", re.I),
    re.compile(r"^TCPIP\d*::[^:\s]+::INSTR$", re.I),
    re.compile(r"^TCPIP\d*::[^:\s]+::\d{1,5}::SOCKET$", re.I),
    re.compile(r"^USB\d*::(0x[0-9a-f]{1,4}|\d+)::(0x[0-9a-f]{1,4}|\d+)::[^:\s]+(::\d+)?::(INSTR|RAW)$", re.I),
    re.compile(r"^ASRL[^:\s]+::INSTR$", re.I),
    re.compile(r"^GPIB\d*::\d{1,2}(::\d{1,2})?::INSTR$", re.I),
]
VISA_FORMS = ("TCPIP0::host::inst0::INSTR, TCPIP0::host::hislip0::INSTR, TCPIP0::host::port::SOCKET, "
              "USB0::0xVVVV::0xPPPP::serial::INSTR, ASRL/dev/ttyUSB0::INSTR or ASRL3::INSTR, "
              "GPIB0::addr::INSTR")


def _visa_resource(text: str) -> str:
    if text == AUTO or any(p.match(text) for p in _VISA):
        return text
    raise PydanticCustomError("visa_resource",
                              f"a VISA resource string: {VISA_FORMS}; or 'auto' in an emulated station")


# DAQ970A plug-in modules: (what the card does, channels per slot). Channel n of slot s is s*100+n.
CARDS: dict[str, tuple[Literal["mux", "actuator"], int]] = {
    "DAQM901A": ("mux", 22),       # 20 voltage channels + 2 current channels (21, 22)
    "DAQM902A": ("mux", 16),       # 16-channel reed multiplexer
    "DAQM903A": ("actuator", 20),  # 20 form-C relays
    "DAQM908A": ("mux", 40),       # 40-channel single-ended multiplexer
}
SLOTTED_DRIVERS = {"keysight_daq970a": 3}  # driver -> number of slots


class Card(FileModel):
    slot: int = Field(ge=1, le=3)
    model: Literal["DAQM901A", "DAQM902A", "DAQM903A", "DAQM908A"]


def _date(value: Any) -> Any:
    """Dates as YAML writes them (2027-03-31); text is refused with the form that works."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    raise PydanticCustomError("date", "a date written as YYYY-MM-DD (unquoted), e.g. 2027-03-31")


CalibrationDate = Annotated[dt.date, BeforeValidator(_date)]
OptionValue = Union[bool, int, float, str, list[int], list[str]]


def _visa_library(value: str) -> str:
    if value in ("@py", "@ivi") or (value.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", value)):
        return value
    raise PydanticCustomError("visa_library", "a VISA backend: @py (pyvisa-py, the default), @ivi "
                              "(the vendor VISA installed on this machine: Keysight IO Libraries, NI-VISA) "
                              "or the absolute path of a VISA library file")


VisaLibrary = Annotated[str, AfterValidator(_visa_library)]


class InstrumentEntry(FileModel):
    """One bench instrument in one role."""

    driver: Annotated[str, AfterValidator(_known_driver)]
    resource: Annotated[str, AfterValidator(_visa_resource)]
    model: str = ""
    serial: str = ""
    rating: Rating = Rating()
    calibration_due: CalibrationDate | None = None
    timeout: InstrumentTimeout | None = None
    cards: list[Card] = Field(default_factory=list)
    options: dict[str, OptionValue] = Field(default_factory=dict)
    visa_library: VisaLibrary | None = None  # this instrument's VISA backend (default: the station's)
    # One physical instrument reached from several sockets of an end-of-line station (one
    # DAQ970A or AC-IR meter for two fixtures): every station file that names it (same resource)
    # must say ``shared: true``, so each socket's driver takes an inter-process lock per use
    # (instruments.scpi.ScpiInstrument, option ``shared``); a socket that leaves it out talks
    # to the instrument unlocked, in between the others' commands.
    shared: bool = False

    @field_validator("cards")
    @classmethod
    def _one_card_per_slot(cls, cards: list[Card]) -> list[Card]:
        slots = [c.slot for c in cards]
        if len(slots) != len(set(slots)):
            raise PydanticCustomError("card_slots", "one card per slot (slots 1-3)")
        return cards

    @property
    def is_auto(self) -> bool:
        return self.resource == AUTO

    def driver_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the driver class: resource, rating, timeout, options."""
        kwargs: dict[str, Any] = {"resource": self.resource, "rating": self.rating.for_driver(),
                                  "options": dict(self.options)}
        if self.timeout is not None:
            kwargs["timeout_s"] = self.timeout.value
        return kwargs


# ================================================================================== BMS buses
CanInterface = Literal["pcan", "kvaser", "socketcan", "socketcand", "vector", "ixxat", "slcan",
                       "gs_usb", "virtual"]
CAN_INTERFACES = get_args(CanInterface)
CAN_BITRATES = (10_000, 20_000, 50_000, 100_000, 125_000, 250_000, 500_000, 800_000, 1_000_000)


def _host(text: str) -> str:
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    if re.fullmatch(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*",
                    text):
        return text
    raise PydanticCustomError("host", "an IP address or host name, e.g. 192.0.2.20")


Host = Annotated[str, AfterValidator(_host)]
Port = Annotated[int, Field(ge=1, le=65535)]


def _bitrate(value: int) -> int:
    if value not in CAN_BITRATES:
        raise PydanticCustomError("can_bitrate", "a CAN bitrate in bit/s: "
                                  + ", ".join(str(b) for b in CAN_BITRATES))
    return value


def _bms_profile(name: str) -> str:
    """A BMS profile that loads (by name in fixtures/bms_profiles/, or a path): refused at the
    station's line, with the profile's own error, before anything is connected."""
    from bankmodel.bms_profile import load_bms_profile
    from bankmodel.files import FileError

    try:
        load_bms_profile(name)
    except FileError as err:
        raise PydanticCustomError("bms_profile", "a BMS profile that loads ({problem})",
                                  {"problem": str(err)}) from None
    return name


BmsProfileName = Annotated[str, Field(min_length=1, max_length=300), AfterValidator(_bms_profile)]


class CanBus(FileModel):
    """A CAN interface as python-can names it, and the BMS profile of the pack on it.
    ``udp_multicast`` is not offered: its frames leave the machine.

    ``profile`` (:mod:`bankmodel.bms_profile`): which frames the pack sends and which service
    commands it takes, by name in ``fixtures/bms_profiles/`` or a path; unset, the full
    ``bankhil_full`` profile (every frame 0x351-0x379 and the bench's service frames), so a
    station written before profiles existed means what it meant then."""

    interface: CanInterface
    channel: Annotated[str, Field(min_length=1, max_length=200)] | Annotated[int, Field(ge=0, le=65535)]
    bitrate: Annotated[int, AfterValidator(_bitrate)] = 500_000
    host: Host | None = None
    port: Port | None = None
    protocol: Literal["pylontech"] = "pylontech"
    keepalive_period: BusPeriod = Quantity.parse("1 s")
    profile: BmsProfileName | None = None

    @model_validator(mode="after")
    def _socketcand_needs_address(self) -> "CanBus":
        remote = self.host is not None or self.port is not None
        if self.interface == "socketcand" and (self.host is None or self.port is None):
            raise PydanticCustomError(
                "can_socketcand", "host and port of the socketcand server with interface socketcand")
        if self.interface != "socketcand" and remote:
            raise PydanticCustomError(
                "can_local", f"no host/port with interface {self.interface} (only socketcand is remote)")
        return self

    def bus_kwargs(self) -> dict[str, Any]:
        """Arguments for the CAN BMS client (``instruments.can_bms.CanBms``): ``can.Bus``'s
        (interface, channel, bitrate, host, port) and, when one is named, the ``profile`` the
        client reads the pack in (the client keeps it; python-can never sees it)."""
        kwargs: dict[str, Any] = {"interface": self.interface, "channel": self.channel,
                                  "bitrate": self.bitrate}
        if self.interface == "socketcand":
            kwargs.update(host=self.host, port=self.port)
        if self.profile is not None:
            kwargs["profile"] = self.profile
        return kwargs


def can_profile(station: "StationFile") -> str | None:
    """The BMS profile named for the station's CAN pack: the bus entry's ``profile``, or, for
    an emulated ``can: auto``, the one a run asked for (:func:`with_bms_profile`); None for the
    full default."""
    can = station.bms.can
    if isinstance(can, CanBus) and can.profile is not None:
        return can.profile
    return station._can_profile


def with_bms_profile(station: "StationFile", profile: str | None) -> "StationFile":
    """The station with its CAN pack in ``profile`` (``hil run --bms-profile``): the bus entry's
    ``profile`` replaced, or for an emulated ``can: auto`` remembered until the emulator starts
    in it (:func:`resolve_emulated` checks that it did). None: the station as it is. A profile
    that does not load, or a station without CAN, is a FileError."""
    if profile is None:
        return station
    from bankmodel.bms_profile import load_bms_profile

    load_bms_profile(profile)  # a bad profile: its own located error
    can = station.bms.can
    if can is None:
        raise station.error(("bms",), f"--bms-profile {profile} on a station without a CAN bus",
                            "a station with bms.can (a BMS profile describes a CAN pack)")
    if isinstance(can, CanBus):
        bms = station.bms.model_copy(update={"can": can.model_copy(update={"profile": profile})})
        return station.model_copy(update={"bms": bms})
    copy = station.model_copy()  # can: auto -- filled in by resolve_emulated from the emulator
    copy._can_profile = profile
    return copy


class ModbusBus(FileModel):
    """A SunSpec battery over Modbus: TCP (the default), or RTU on an RS485 serial line.

    TCP, as every station file before RTU wrote it (``transport: tcp`` may be written)::

        modbus: {host: 192.0.2.20, port: 502, device_id: 1}

    RTU (``serial_port`` is what pyserial opens: ``/dev/ttyUSB0``, ``/dev/serial/by-id/...``,
    ``COM3``; never ``port``, which is a TCP port number)::

        modbus: {transport: rtu, serial_port: /dev/ttyUSB0, baudrate: 9600, parity: N,
                 stopbits: 1, device_id: 1}

    Unset serial settings are the Modbus over Serial Line specification's defaults (V1.02:
    19200 bit/s, even parity, 1 stop bit; RTU always uses 8 data bits). Many batteries ship
    at 9600 8N1: write what the battery is set to. ``host``/``port`` with ``transport: rtu``,
    or a serial setting with TCP, is an error at its own line.
    """

    SERIAL_FIELDS: ClassVar[tuple[str, ...]] = ("serial_port", "baudrate", "parity", "stopbits")
    SERIAL_DEFAULTS: ClassVar[dict[str, Any]] = {"baudrate": 19200, "parity": "E", "stopbits": 1}
    BAUDRATES: ClassVar[tuple[int, ...]] = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
    SERIAL_PORT_FORMS: ClassVar[tuple[re.Pattern[str], ...]] = (
        re.compile(r"^/dev/(?!(.*/)?\.\.(/|$))[A-Za-z0-9._+:/-]{1,200}$"),
        re.compile(r"^(\\\\\.\\)?COM[1-9][0-9]{0,2}$", re.I),
    )

    transport: Literal["tcp", "rtu"] = "tcp"
    host: Host | None = None
    port: Port | None = None                # filled in (502) for TCP
    serial_port: str | None = None
    baudrate: int | None = None             # filled in for RTU (SERIAL_DEFAULTS)
    parity: Literal["N", "E", "O"] | None = None
    stopbits: Literal[1, 2] | None = None
    device_id: int = Field(default=1, ge=1, le=247)
    timeout: BusTimeout = Quantity.parse("1 s")
    heartbeat_period: BusPeriod = Quantity.parse("1 s")

    @model_validator(mode="before")
    @classmethod
    def _transport_defaults(cls, data: Any) -> Any:
        """TCP's port 502, RTU's serial defaults, where the file leaves them out."""
        if not isinstance(data, dict):
            return data
        transport = data.get("transport", "tcp")
        if transport == "tcp" and data.get("port") is None:
            return {**data, "port": 502}
        if transport == "rtu":
            return {**data, **{k: v for k, v in cls.SERIAL_DEFAULTS.items() if data.get(k) is None}}
        return data

    @field_validator("host", "port")
    @classmethod
    def _tcp_only(cls, value: Any, info: Any) -> Any:
        if value is not None and info.data.get("transport") == "rtu":
            raise PydanticCustomError(
                "modbus_rtu_no_tcp", "no {field} with transport rtu: the serial line is serial_port "
                "(e.g. /dev/ttyUSB0), baudrate, parity, stopbits", {"field": info.field_name})
        return value

    @field_validator(*SERIAL_FIELDS)
    @classmethod
    def _rtu_only(cls, value: Any, info: Any) -> Any:
        if value is not None and info.data.get("transport", "tcp") == "tcp" and "transport" in info.data:
            raise PydanticCustomError(
                "modbus_tcp_no_serial", "no {field} with transport tcp (the default): write "
                "transport: rtu for a serial line, or host and port for TCP", {"field": info.field_name})
        return value

    @field_validator("serial_port")
    @classmethod
    def _serial_port_form(cls, value: str | None) -> str | None:
        if value is not None and not any(p.match(value) for p in cls.SERIAL_PORT_FORMS):
            raise PydanticCustomError("serial_port", "a serial device: /dev/ttyUSB0, /dev/ttyS1, "
                                      "/dev/serial/by-id/..., or COM3")
        return value

    @field_validator("baudrate")
    @classmethod
    def _standard_baudrate(cls, value: int | None) -> int | None:
        if value is not None and value not in cls.BAUDRATES:
            raise PydanticCustomError("baudrate", "a serial baud rate in bit/s: "
                                      + ", ".join(str(b) for b in cls.BAUDRATES))
        return value

    @model_validator(mode="after")
    def _transport_complete(self) -> "ModbusBus":
        if self.transport == "tcp" and self.host is None:
            raise PydanticCustomError(
                "modbus_tcp_host", "host (an IP address or host name, e.g. 192.0.2.20) with transport "
                "tcp (the default); or transport: rtu and serial_port: /dev/ttyUSB0 for a serial line")
        if self.transport == "rtu" and self.serial_port is None:
            raise PydanticCustomError(
                "modbus_rtu_port", "serial_port (e.g. /dev/ttyUSB0) with transport rtu")
        return self

    @property
    def resource(self) -> str:
        """``192.0.2.20:502``, or ``/dev/ttyUSB0 (Modbus RTU 19200 8E1)``: as the client names it."""
        if self.transport == "rtu":
            return f"{self.serial_port} (Modbus RTU {self.baudrate} 8{self.parity}{self.stopbits})"
        return f"{self.host}:{self.port}"

    def runtime(self) -> dict[str, Any]:
        """Plain data for the SunSpec client (``SunSpecBms.from_settings``): TCP as
        ``{host, port, device_id, timeout_s, heartbeat_period_s}``; RTU as ``{transport: rtu,
        serial_port, baudrate, parity, stopbits, device_id, timeout_s, heartbeat_period_s}``."""
        common = {"device_id": self.device_id, "timeout_s": self.timeout.value,
                  "heartbeat_period_s": self.heartbeat_period.value}
        if self.transport == "rtu":
            return {"transport": "rtu", "serial_port": self.serial_port, "baudrate": self.baudrate,
                    "parity": self.parity, "stopbits": self.stopbits, **common}
        return {"host": self.host, "port": self.port, **common}


AutoCan = Annotated[CanBus, _auto_or("interface, channel, bitrate",
                                     "{interface: pcan, channel: PCAN_USBBUS1, bitrate: 500000}"),
                    WrapSerializer(_serialise_auto)]
AutoModbus = Annotated[ModbusBus, _auto_or("host, port, device_id",
                                           "{host: 192.0.2.20, port: 502, device_id: 1}"),
                       WrapSerializer(_serialise_auto)]


class BmsBuses(FileModel):
    can: AutoCan | None = None
    modbus: AutoModbus | None = None


AutoChannels = Annotated[ChannelMap, _auto_or("scanner, actuator, dmm, acir_module",
                                              "{scanner: [{channel: 101, kind: voltage, ...}]}"),
                         WrapSerializer(_serialise_auto)]


# ================================================================================== station
class StationFile(SourcedFile):
    """A whole bench. Load with :func:`load_station`, which also runs the checks that need
    line numbers (``auto`` outside emulation, drivers' options, channel numbers)."""

    name: Annotated[str, Field(min_length=1)]
    description: str = ""
    emulated: bool = False
    visa_library: VisaLibrary = "@py"  # VISA backend of every instrument (an entry may override it)
    # bench seconds per wall second: 1 on hardware; `hil emulate --speed N --write-station` writes N,
    # so a rehearsal against a faster-than-real-time emulator still measures in bench seconds
    time_scale: Annotated[float, Field(gt=0, le=1000)] = 1.0
    dut: str | None = Field(default=None, description="the DUT this bench is wired for: the "
                            "default when a run names none (a file or a stem in fixtures/duts/)")
    instruments: Annotated[dict[Role, InstrumentEntry], Field(min_length=1)]
    bms: BmsBuses = BmsBuses()
    channels: AutoChannels = Field(default_factory=ChannelMap)
    eol: LineSection | None = None  # end-of-line station: sockets, retest, labels, MES (hil station)

    _label: ClassVar[str] = "<station>"
    # the BMS profile a run asked for while bms.can is still 'auto' (with_bms_profile)
    _can_profile: str | None = PrivateAttr(default=None)

    def where(self, *loc: Any) -> str:
        """``'stations/lab.yaml:12'``: for messages about another file that point here."""
        line = self.line(*loc)
        return f"{self.path}:{line}" if line else str(self.path or "<station>")

    def roles(self) -> set[str]:
        """Every role a plan may require: instruments, and ``bms``/``bms.can``/``bms.modbus``."""
        roles = set(self.instruments)
        if self.bms.can is not None:
            roles |= {"bms", "bms.can"}
        if self.bms.modbus is not None:
            roles |= {"bms", "bms.modbus"}
        return roles

    def protocols(self) -> dict[str, set[str]]:
        """Role protocol -> what provides it here (instrument roles; ``bms.can``/``bms.modbus``),
        from the driver classes the station names (nothing is connected). The CAN pack's share
        is its BMS profile's (``CanBms.protocols_for``): ``bms_service`` only with the profile's
        service DBC, ``capacity_report`` only when it sends 0x379."""
        from instruments.roles import protocols_of

        provided: dict[str, set[str]] = {role: protocols_of(get_driver(inst.driver))
                                         for role, inst in self.instruments.items()}
        if self.bms.can is not None:
            from instruments.can_bms import CanBms
            provided["bms.can"] = CanBms.protocols_for(can_profile(self))
        if self.bms.modbus is not None:
            from instruments.sunspec_bms import SunSpecBms
            provided["bms.modbus"] = protocols_of(SunSpecBms)
        offered: dict[str, set[str]] = {}
        for who, protocols in provided.items():
            for protocol in protocols:
                offered.setdefault(protocol, set()).add(who)
        return offered

    def rating(self, role: str) -> Rating:
        return self.instruments[role].rating

    @property
    def channel_map(self) -> ChannelMap | None:
        """The channel map, or None while it is ``auto`` (before :func:`resolve_emulated`)."""
        return None if self.channels == AUTO else self.channels  # type: ignore[return-value]

    def as_runtime(self) -> dict[str, Any]:
        """Plain data in the shape ``emulator.emulate.start_emulated_station`` describes a bench:
        SI numbers with the unit in the key (``rating: {current_a: 240.0}``, ``shunt_ohm``),
        channel numbers as keys, ``auto`` kept where it is still to be filled in."""
        instruments: dict[str, Any] = {}
        for role, inst in self.instruments.items():
            entry: dict[str, Any] = {"driver": inst.driver, "resource": inst.resource}
            if inst.rating.for_driver():
                entry["rating"] = inst.rating.for_driver()
            if inst.options:
                entry["options"] = dict(inst.options)
            if inst.timeout is not None:
                entry["timeout_s"] = inst.timeout.value
            visa = inst.visa_library or self.visa_library
            if visa != "@py":
                entry["visa_library"] = visa
            if inst.calibration_due is not None:
                entry["calibration_due"] = inst.calibration_due.isoformat()
            if inst.shared:
                entry["shared"] = True
            instruments[role] = entry
        bms: dict[str, Any] = {}
        if self.bms.can is not None:
            bms["can"] = AUTO if self.bms.can == AUTO else {
                **self.bms.can.bus_kwargs(), "period_s": self.bms.can.keepalive_period.value}
        if self.bms.modbus is not None:
            bus = self.bms.modbus
            bms["modbus"] = AUTO if bus == AUTO else bus.runtime()
        out: dict[str, Any] = {"name": self.name, "emulated": self.emulated}
        if self.dut is not None:
            out["dut"] = self.dut
        out.update(instruments=instruments, bms=bms)
        # the one ChannelMap type (bankmodel.channels): the bench uses it as it is
        out["channels"] = AUTO if self.channel_map is None else self.channel_map
        return out

    @property
    def resolved(self) -> bool:
        """No ``auto`` left: ready for the bench to connect."""
        return (self.channels != AUTO and self.bms.can != AUTO and self.bms.modbus != AUTO
                and not any(i.is_auto for i in self.instruments.values()))


# ================================================================================== checks
# Role name (or prefix) -> the role interface its driver must implement (instruments.roles).
ROLE_INTERFACES = {"supply": "DcSupply", "load": "ElectronicLoad", "scanner": "Scanner",
                   "actuator": "Actuator", "acir": "AcIrMeter", "dmm": "Dmm"}


def role_interface(role: str) -> str | None:
    """The interface a role needs: exact names, and ``dmm*`` for any DMM (``dmm_vds``)."""
    if role in ROLE_INTERFACES:
        return ROLE_INTERFACES[role]
    return "Dmm" if role.startswith("dmm") else None


def _check_auto(station: StationFile) -> None:
    if station.emulated:
        return
    hint = "'auto' is filled in by the emulator: only in an emulated station (emulated: true)"
    for role, inst in station.instruments.items():
        if inst.is_auto:
            raise station.error(("instruments", role, "resource"), "'auto'",
                                f"a VISA resource string ({VISA_FORMS}); {hint}")
    for bus in ("can", "modbus"):
        if getattr(station.bms, bus) == AUTO:
            raise station.error(("bms", bus), "'auto'", f"the {bus} bus settings; {hint}")
    if station.channels == AUTO:
        raise station.error(("channels",), "'auto'", f"the channel map of this bench; {hint}")


def _check_calibration_present(station: StationFile) -> None:
    if station.emulated:
        return
    for role, inst in station.instruments.items():
        if inst.calibration_due is None:
            raise station.error(("instruments", role), f"no calibration_due for {role}",
                                "calibration_due: YYYY-MM-DD on every instrument of a real bench")


def _check_drivers(station: StationFile) -> None:
    """Options the driver knows, a driver that implements the role, cards only where slots are."""
    import instruments.roles as roles_module

    for role, inst in station.instruments.items():
        cls = get_driver(inst.driver)
        known = getattr(cls, "OPTIONS", None)
        if known is not None:
            for option, value in inst.options.items():
                if option not in known:
                    raise station.error(("instruments", role, "options", option),
                                        f"unknown option '{option}' for {inst.driver}",
                                        "options: " + ", ".join(sorted(known)))
                wanted = _option_kind(known[option], value)
                if wanted is not None:
                    raise station.error(("instruments", role, "options", option), repr(value),
                                        f"{wanted} for {inst.driver}'s option '{option}' "
                                        f"(default {known[option]!r})")
        interface = role_interface(role)
        if interface is not None and not issubclass(cls, getattr(roles_module, interface)):
            fits = sorted(name for name, kind in ROLE_INTERFACES.items()
                          if issubclass(cls, getattr(roles_module, kind)))
            article = "an" if interface[0] in "AEIOU" else "a"
            raise station.error(("instruments", role, "driver"),
                                f"'{inst.driver}' in role '{role}' (it is not {article} {interface})",
                                f"{article} {interface} driver for role '{role}'; {inst.driver} fits "
                                + (", ".join(fits) or "no standard role"))
        if inst.cards and inst.driver not in SLOTTED_DRIVERS:
            raise station.error(("instruments", role, "cards"), f"cards on {inst.driver}",
                                "cards only on a mainframe with slots: " + ", ".join(SLOTTED_DRIVERS))


def _option_kind(default: Any, value: Any) -> str | None:
    """What a driver option must be, judged by its default (None if ``value`` fits): a flag
    stays true/false, text stays text, a number a number; an option without a default (a list
    of channels) takes a list of whole numbers or text."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, str):
        return None if isinstance(value, str) and len(value) <= 200 else "text (at most 200 characters)"
    if isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else "a number"
    if default is None:
        return None if isinstance(value, list) else "a list"
    return None


def cards_of(station: StationFile, role: str) -> list[Card]:
    """The cards fitted in a role's mainframe: its own list, or that of another role on the same
    resource (scanner and actuator are usually one DAQ970A; its cards are listed once)."""
    inst = station.instruments[role]
    if inst.cards or inst.is_auto:
        return list(inst.cards)
    for other in station.instruments.values():
        if other.resource == inst.resource and other.driver == inst.driver and other.cards:
            return list(other.cards)
    return []


def _channel_rule(station: StationFile, role: str, kind: Literal["mux", "actuator"],
                  channel: int) -> str | None:
    """Why a channel number does not exist on the role's instrument (None if it does)."""
    inst = station.instruments[role]
    slots = SLOTTED_DRIVERS.get(inst.driver)
    if slots is None:
        return None
    slot, number = divmod(channel, 100)
    if not 1 <= slot <= slots or number < 1:
        return f"slot*100 + channel, slot 1-{slots} (e.g. 101, 201, 301)"
    cards = cards_of(station, role)
    card = next((c.model for c in cards if c.slot == slot), None)
    if cards and card is None:
        fitted = ", ".join(f"slot {c.slot}: {c.model}" for c in cards)
        return f"a channel on a fitted card ({fitted})"
    if card is None:
        return None if number <= 99 else f"channels {slot}01-{slot}99 in slot {slot}"
    card_kind, count = CARDS[card]
    if card_kind != kind:
        wanted = "a multiplexer" if kind == "mux" else "an actuator"
        return f"{wanted} card's channel; slot {slot} holds a {card} ({card_kind})"
    if number > count:
        return f"channels {slot * 100 + 1}-{slot * 100 + count} (slot {slot} holds a {card})"
    return None


def _check_channels(station: StationFile) -> None:
    cmap = station.channel_map
    if cmap is None:
        return
    for group, role, kind in (("scanner", "scanner", "mux"), ("actuator", "actuator", "actuator")):
        entries = getattr(cmap, group)
        if entries and role not in station.instruments:
            raise station.error(("channels", group), f"{group} channels but no '{role}' instrument",
                                f"an instrument in role '{role}' under instruments")
        seen: dict[int, int] = {}
        for index, entry in enumerate(entries):
            if entry.channel in seen:
                raise station.error(("channels", group, index, "channel"),
                                    f"channel {entry.channel} twice (also entry {seen[entry.channel]})",
                                    "each channel once")
            seen[entry.channel] = index
            why = _channel_rule(station, role, kind, entry.channel)  # type: ignore[arg-type]
            if why:
                raise station.error(("channels", group, index, "channel"),
                                    f"channel {entry.channel}", why)
    scan, act = station.instruments.get("scanner"), station.instruments.get("actuator")
    if scan and act and scan.resource == act.resource:  # one mainframe: one set of channels
        shared = set(cmap.scanner_channels()) & set(cmap.actuator_channels())
        if shared:
            channel = min(shared)
            index = next(i for i, c in enumerate(cmap.actuator) if c.channel == channel)
            raise station.error(("channels", "actuator", index, "channel"),
                                f"channel {channel}, also a scanner channel of the same mainframe",
                                "a relay channel not used by the scanner")
    for name in cmap.dmm:
        if name not in station.instruments:
            raise station.error(("channels", "dmm", name), f"'{name}' (no such instrument)",
                                "a DMM role under instruments: " + ", ".join(
                                    r for r in station.instruments if role_interface(r) == "Dmm"))
        if role_interface(name) != "Dmm":
            raise station.error(("channels", "dmm", name), f"'{name}' (not a DMM role)",
                                "a role named dmm or dmm_<something>")
    if cmap.acir_module is not None and "acir" not in station.instruments:
        raise station.error(("channels", "acir_module"), "acir_module but no 'acir' instrument",
                            "an instrument in role 'acir'")


def _check_ratings_present(station: StationFile) -> None:
    """A source or sink of energy without a voltage and current rating could be driven anywhere:
    the supervisor and the setpoint checks need both (safe by default)."""
    if "bms" in station.instruments:
        raise station.error(("instruments", "bms"), "an instrument named 'bms'",
                            "another role name: 'bms' is the battery, reached through bms: can/modbus")
    for role, inst in station.instruments.items():
        if role_interface(role) not in ("DcSupply", "ElectronicLoad"):
            continue
        for quantity in ("voltage", "current"):
            if inst.rating.get(quantity) is None:
                raise station.error(("instruments", role, "rating"), f"no {quantity} rating for {role}",
                                    f"rating: {{voltage: ..., current: ...}} on the {role} "
                                    "(what it may be set to)")


def check_station(station: StationFile) -> StationFile:
    """The checks that need more than one field: each raises FileError with its line."""
    _check_auto(station)
    _check_ratings_present(station)
    _check_calibration_present(station)
    _check_drivers(station)
    _check_channels(station)
    return station


def load_station(path: Path | str) -> StationFile:
    """Load and check a station file; raise FileError (file, line, field, found, allowed)."""
    document = load_document(path)
    station = validate_document(StationFile, document)
    return check_station(station)


# ================================================================================== emulation
def resolve_emulated(station: StationFile, described: dict[str, Any]) -> StationFile:
    """Fill every ``auto`` of an emulated station from the running emulator's description.

    ``described`` is ``EmulatedStation.station`` (from :func:`emulator.emulate.
    start_emulated_station`). Resources, the CAN and Modbus endpoints and the channel map come
    from it; ratings and calibration dates stay the station file's, since those are what the
    plan was checked against. A role the emulator does not serve, or one it serves with another
    driver, is an error in the station file.
    """
    offered = described.get("instruments", {})
    instruments: dict[str, InstrumentEntry] = {}
    for role, inst in station.instruments.items():
        if inst.is_auto:
            if role not in offered:
                raise station.error(("instruments", role), f"role '{role}' with resource auto",
                                    "a role the emulated bench serves: " + ", ".join(offered))
            if offered[role]["driver"] != inst.driver:
                raise station.error(("instruments", role, "driver"), f"'{inst.driver}'",
                                    f"'{offered[role]['driver']}', the driver the emulated "
                                    f"{role} speaks")
            inst = inst.model_copy(update={"resource": _visa_resource(offered[role]["resource"])})
        instruments[role] = inst
    update: dict[str, Any] = {"instruments": instruments}
    bms = described.get("bms", {})
    can, modbus = station.bms.can, station.bms.modbus
    if can == AUTO:
        # the pack runs the profile the emulator says it runs; a run that asked for another one
        # (with_bms_profile) must not be served a different pack without a word
        wanted, running = station._can_profile, bms["can"].get("profile")
        if wanted is not None and running is not None:
            from bankmodel.bms_profile import load_bms_profile
            if load_bms_profile(wanted).name != load_bms_profile(running).name:
                raise station.error(("bms", "can"), f"an emulated BMS in profile '{running}'",
                                    f"the emulated BMS in profile '{wanted}', the one this run "
                                    "asked for (start the emulator with its bms_profile)")
        profile = wanted if wanted is not None else running
        can = CanBus.model_validate({**{k: v for k, v in bms["can"].items()
                                        if k in ("interface", "channel", "bitrate", "host", "port")},
                                     **({"profile": str(profile)} if profile is not None else {})})
    if modbus == AUTO:
        modbus = ModbusBus.model_validate(bms["modbus"])
    update["bms"] = BmsBuses(can=can, modbus=modbus)
    if station.channels == AUTO:
        update["channels"] = described["channels"]  # the emulator's own ChannelMap
    resolved = station.model_copy(update=update)  # keeps the document: errors still name the file
    return check_station(resolved)


__all__ = ["AUTO", "ActuatorChannel", "BmsBuses", "CanBus", "Card", "ChannelMap", "InstrumentEntry",
           "ModbusBus", "Rating", "ScannerChannel", "ShuntChannel", "ShuntInput", "StationFile",
           "ThermocoupleChannel", "ThermocoupleInput", "VoltageChannel", "VoltageInput",
           "can_profile", "cards_of", "check_station", "input_of", "load_station",
           "resolve_emulated", "role_interface", "with_bms_profile"]
