"""The Bms role over CAN: the harness plays the inverter on a Pylontech-compatible bus.

Any python-can interface a station names works (``virtual`` in one process, ``socketcand``
across processes, ``socketcan``/``pcan``/... on a real bench): interface, channel and every
other keyword (host, port, bitrate, ...) pass straight to ``can.Bus``.

Frames are decoded with ``instruments/dbc/pylontech_lv.dbc`` (DOMAIN.md section 4). What the
client keeps and why:

- the latest decoded values per frame ID and the time each ID (and anything at all) was last
  heard, on the *bench* clock given as ``clock`` (default ``time.monotonic``), so silence is
  timed in the same seconds the checks wait in, virtual or wall;
- a candump-format log (``can.CanutilsLogWriter``; read back with ``can.LogReader`` when the
  file name ends in ``.log``) of every frame both ways, stamped with that clock, so the CAN
  log lines up with the measurements it explains;
- counts of malformed frames by reason, because a flaky BMS must show up as data, never as a
  crashed harness: ``unknown_id`` (extended IDs and IDs not in the DBC), ``wrong_dlc``
  (length differs from the DBC; 0x305 from another inverter may have any length),
  ``undecodable`` (cantools fails, a value outside its DBC range, 0x359 without its 'P','N'
  marker, 0x35E not printable ASCII), ``error_frame`` and ``remote_frame``. A malformed frame
  is logged and counted and never becomes telemetry.

The keep-alive (0x305, eight zero bytes) goes out every ``period_s`` of the clock, from a
background thread or -- better on a virtual clock, where a thread cannot know when bench time
will jump -- from the bench clock's periodic duties calling :meth:`CanBms.send_keepalive_if_due`
(the thread then stands back). ``heartbeat(False)`` stops it, ``heartbeat(True)`` resumes it at
once.

The BMS profile (``profile=``, a :class:`bankmodel.bms_profile.BmsProfile` or its name/path in
``fixtures/bms_profiles/``; default ``bankhil_full``) says which frames the pack sends and which
service commands it takes. Many Pylontech-protocol packs send only the core frames, so nothing
here depends on a frame the profile does not list: identity is the manufacturer (0x35E) and the
firmware from 0x35F only where the pack sends it (else :meth:`CanBms.identity` says "firmware
unknown" and :meth:`CanBms.firmware` raises :class:`NotInProfile`, an InstrumentError, at once --
never a wait for a frame that will not come); the module count falls back to 0x359 byte 4
without 0x372; reading a frame the profile does not list raises :class:`NotInProfile`. What
the client provides to a plan follows (:meth:`CanBms.protocols_for`): ``bms_service`` only with
the profile's service DBC, ``capacity_report`` only when it sends 0x379.

0x35E's manufacturer is text: the DBC gives the layout (an 8-byte signal flagged ``AsciiText``);
cantools would decode it as one integer, so those bytes are read here as ASCII ("PYLON").

Service commands (the profile's vendor DBC; the full profile's is
``instruments/dbc/bankhil_service.dbc``, IDs 0x3F0/0x3F1, loaded beside the protocol DBC):
:meth:`CanBms.force_disconnect` opens one module's BMS switch (the fault disconnect of 000's
series MOSFET stress test) and :meth:`CanBms.silence_module` makes one module stop reporting to
its master (004's silent module). They are not part of the inverter protocol: a real bench sends
the same commands with the BMS vendor's service tool (or pulls the module's link cable through a
relay) -- the station's BMS profile decides which frames, if any; the emulated BMS takes them
from the bus. A command returns once sent, as on a real bus: it takes effect when it arrives
(on an emulated bench in virtual time, before bench time moves on: harness/emulated.py).

Frames are received by a ``can.Notifier`` (python-can's own receive thread) and dated on the
bench clock as they arrive. There is no catching up and no sender time: on an emulated bench in
virtual time, bench time does not move on until every published frame has arrived here
(:meth:`CanBms.wait_for_stamp`, used by the virtual clock's barrier), so arrival time is bench
time, exactly as on a real bus.

``safe_state()`` de-energises nothing (a BMS client has no output) and never raises. What it
does with the keep-alive is the ``safe_state_heartbeat`` policy:
``"keep"`` (default) leaves it as it is, so the bank's comm-loss behaviour does not change
while the supervisor opens contactors; ``"resume"`` restores it, so a bank left in comm-loss
by a failed test recovers; ``"stop"`` ends it, as an inverter going away would, so a real
BMS derates or opens on its own.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Literal

import can
import cantools
from cantools.database.can import Database

from bankmodel.bms_profile import FULL_PROFILE, BmsProfile, hex_id, load_bms_profile
from bankmodel.can_frame import Frame
from instruments.roles import (BankIdentity, Bms, BmsLimits, BmsService, BmsStatus, BmsTelemetry,
                               CapacityReport, InstrumentError, normalise_version, protocols_of)

DBC_PATH = Path(__file__).resolve().parent / "dbc" / "pylontech_lv.dbc"
SERVICE_DBC_PATH = Path(__file__).resolve().parent / "dbc" / "bankhil_service.dbc"
KEEPALIVE_ID = 0x305
FORCE_DISCONNECT_ID = 0x3F0
SILENCE_MODULE_ID = 0x3F1
PN_MARKER = (0x50, 0x4E)
# 0x359 signal suffix -> the name the role reports in BmsStatus.alarms / .warnings
ALARM_NAMES = {"OverVoltage": "over_voltage", "UnderVoltage": "under_voltage",
               "OverTemp": "over_temperature", "UnderTemp": "under_temperature",
               "DischargeOverCurrent": "discharge_over_current",
               "ChargeOverCurrent": "charge_over_current", "BmsInternal": "bms_internal"}
# protocol name -> the frame a profile must send for the client to provide it (beyond the core)
FRAME_PROTOCOLS = {"capacity_report": 0x379}
MALFORMED_REASONS = ("unknown_id", "wrong_dlc", "undecodable", "error_frame", "remote_frame")
SafeStateHeartbeat = Literal["keep", "resume", "stop"]
Clock = Callable[[], float]


def parse_resource(resource: str) -> dict[str, Any]:
    """A station ``resource:`` string to ``can.Bus`` keywords.

    ``INTERFACE://CHANNEL[?key=value&...]``, or for socketcand
    ``socketcand://HOST:PORT/CHANNEL``; numeric query values become ints
    (``socketcan://can0?bitrate=500000``, ``virtual://bank0``).
    """
    url = urllib.parse.urlsplit(resource)
    if not url.scheme or not (url.netloc or url.path):
        raise ValueError(f"CAN resource {resource!r}: expected INTERFACE://CHANNEL[?key=value]")
    kwargs: dict[str, Any] = {"interface": url.scheme}
    if url.scheme == "socketcand":
        kwargs.update(host=url.hostname, port=url.port, channel=url.path.lstrip("/"))
    else:
        kwargs["channel"] = url.netloc + url.path
    for key, value in urllib.parse.parse_qsl(url.query):
        kwargs[key] = int(value) if value.lstrip("-").isdigit() else value
    return kwargs


class _Receiver(can.Listener):
    """The client's ear on the bus: every frame goes through :meth:`CanBms.process`; a failing
    bus is counted in ``bus_errors`` (and slows the retry), never raised."""

    def __init__(self, client: "CanBms"):
        self.client = client

    def on_message_received(self, msg: can.Message) -> None:
        try:
            self.client.process(msg)
        except Exception as exc:  # pragma: no cover - the decoder catches its own
            self.client._bus_error(exc)

    def on_error(self, exc: Exception) -> None:
        self.client._bus_error(exc)
        self.client._closing.wait(0.05)


class NotInProfile(InstrumentError):
    """Asked for something the pack, as its BMS profile says, does not send or take: known at
    once, never waited for (a frame that will not come, a service command with no frame)."""


def as_profile(profile: BmsProfile | str | Path | None) -> BmsProfile:
    """A loaded profile, by itself, by name or path, or the full default (None)."""
    if isinstance(profile, BmsProfile):
        return profile
    return load_bms_profile(profile if profile is not None else FULL_PROFILE)


def text_signals(db: Database) -> dict[int, list[tuple[str, int, int]]]:
    """Frame ID -> its ASCII text signals as (name, first byte, byte count): the signals the DBC
    flags ``AsciiText`` (byte aligned, little-endian: byte 0 is the first character)."""
    found: dict[int, list[tuple[str, int, int]]] = {}
    for m in db.messages:
        for sig in m.signals:
            attrs = sig.dbc.attributes if sig.dbc is not None else {}
            if "AsciiText" in attrs and attrs["AsciiText"].value:
                found.setdefault(m.frame_id, []).append((sig.name, sig.start // 8, sig.length // 8))
    return found


def _num(value: float) -> float:
    """A decoded value without binary-scaling noise (14.200000000000001 -> 14.2)."""
    return round(float(value), 6)


class _Decoder:
    """DBC lookup and validation for one frame: the hot path, kept free of locks and I/O."""

    def __init__(self, db: Database):
        self.messages = {m.frame_id: m for m in db.messages}
        self.texts = text_signals(db)
        # only signals whose DBC range is narrower than their raw range need a check
        self.ranges: dict[int, list[tuple[str, float, float]]] = {}
        for m in db.messages:
            checks = []
            for s in m.signals:
                raw_max = (1 << s.length) - 1 if not s.is_signed else (1 << (s.length - 1)) - 1
                raw_min = 0 if not s.is_signed else -(1 << (s.length - 1))
                full = (raw_min * s.scale + s.offset, raw_max * s.scale + s.offset)
                low = s.minimum if s.minimum is not None else full[0]
                high = s.maximum if s.maximum is not None else full[1]
                if low > full[0] + 1e-9 or high < full[1] - 1e-9:
                    checks.append((s.name, low, high))
            self.ranges[m.frame_id] = checks
        # per frame ID, the last payload and what it decoded to: a BMS repeats most of its frames
        # unchanged from one report to the next (limits, enables, counts, identity)
        self._last: dict[int, tuple[bytes, tuple[str | None, dict[str, Any] | None]]] = {}

    def decode(self, msg: can.Message) -> tuple[str | None, dict[str, Any] | None]:
        """(malformed reason or None, decoded signals or None)."""
        plain = not (msg.is_error_frame or msg.is_remote_frame or msg.is_extended_id)
        last = self._last.get(msg.arbitration_id) if plain else None
        if last is not None and last[0] == msg.data:
            reason, values = last[1]
        else:
            reason, values = self._decode(msg)
            if plain:
                self._last[msg.arbitration_id] = (bytes(msg.data), (reason, values))
        return reason, None if values is None else dict(values)  # a copy: the caller keeps it

    def _decode(self, msg: can.Message) -> tuple[str | None, dict[str, Any] | None]:
        if msg.is_error_frame:
            return "error_frame", None
        if msg.is_remote_frame:
            return "remote_frame", None
        spec = None if msg.is_extended_id else self.messages.get(msg.arbitration_id)
        if spec is None:
            return "unknown_id", None
        frame_id = msg.arbitration_id
        data = bytes(msg.data)
        if frame_id == KEEPALIVE_ID:
            return None, {}
        if len(data) != spec.length:
            return "wrong_dlc", None
        try:
            values = spec.decode(data, decode_choices=False)
        except Exception:  # cantools raises several types; all mean the same here
            return "undecodable", None
        assert isinstance(values, dict)
        for name, low, high in self.ranges[frame_id]:
            if not low - 1e-9 <= values[name] <= high + 1e-9:
                return "undecodable", None
        if frame_id == 0x359 and (values["MarkerP"], values["MarkerN"]) != PN_MARKER:
            return "undecodable", None
        for name, first, count in self.texts.get(frame_id, ()):
            raw = data[first:first + count].rstrip(b"\0 ")
            if not all(32 <= b < 127 for b in raw):
                return "undecodable", None
            values[name] = raw.decode("ascii")
        return None, values


# optional protocols -> their role interface: a client provides one only if its profile has it
_OPTIONAL: dict[str, type] = {"bms_service": BmsService, "capacity_report": CapacityReport}
_VARIANTS: dict[tuple[type, frozenset[str]], type] = {}
_VARIANTS_LOCK = threading.Lock()


def _variant(cls: type, protocols: frozenset[str]) -> type:
    """``cls`` that also *is* the role interfaces of ``protocols`` (one class per combination):
    so ``isinstance(client, BmsService)`` -- what the bench and its preparation ask -- is true
    exactly when the client's profile has service commands."""
    if not protocols:
        return cls
    with _VARIANTS_LOCK:
        key = (cls, protocols)
        if key not in _VARIANTS:
            bases = tuple(_OPTIONAL[p] for p in sorted(protocols))
            _VARIANTS[key] = type(cls.__name__, (cls, *bases),
                                  {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                                   "__doc__": cls.__doc__})
        return _VARIANTS[key]


class CanBms(Bms):
    """A Pylontech-compatible battery as the inverter sees it, over any python-can bus.

    An instance is also a :class:`~instruments.roles.BmsService` when its BMS profile has
    service commands and a :class:`~instruments.roles.CapacityReport` when it sends 0x379: what
    it provides is what the pack, as deployed, offers (:meth:`protocols_for`)."""

    name = "bms"
    soc_resolution_pct = 1.0  # 0x355 carries whole percent

    def __new__(cls, *args: Any, **kwargs: Any) -> "CanBms":
        withheld = cls.withheld_by(kwargs.get("profile"))  # a bad profile: FileError, nothing opened
        return super().__new__(_variant(cls, frozenset(_OPTIONAL) - set(withheld)))

    def __init__(self, interface: str, channel: str | None = None, *, period_s: float = 1.0,
                 clock: Clock = time.monotonic, log_path: str | Path | None = None,
                 dbc_path: str | Path | None = None, heartbeat_on: bool = True,
                 safe_state_heartbeat: SafeStateHeartbeat = "keep",
                 stale_after_s: float | None = None, wait_s: float = 1.0,
                 poll_s: float = 0.005, name: str = "bms", service_dbc_path: str | Path | None = None,
                 profile: BmsProfile | str | Path | None = None, **bus_kwargs: Any):
        if safe_state_heartbeat not in ("keep", "resume", "stop"):
            raise ValueError(f"safe_state_heartbeat {safe_state_heartbeat!r}: keep, resume or stop")
        self.name = name
        self.resource = f"{interface}:{channel}" + "".join(f" {k}={v}" for k, v in sorted(bus_kwargs.items()))
        self.period_s = period_s
        self.report_period_s = 1.0  # the BMS reports every second (Pylontech protocol)
        self.safe_state_heartbeat = safe_state_heartbeat
        self.stale_after_s = stale_after_s
        self.wait_s = wait_s
        self._clock = clock
        self._poll_s = poll_s
        # the newest stamp a received frame carried (the sender's or the adapter's clock): what
        # a virtual-time barrier waits on (wait_for_stamp); never used to date a frame
        self.newest_stamp = -float("inf")
        self._at_newest = 0  # frames processed that carried newest_stamp
        self._arrived = threading.Condition()
        # the pack as deployed: a bad profile is a FileError before any bus is opened
        self.profile = as_profile(profile)
        db = cantools.database.load_file(str(dbc_path or DBC_PATH), strict=True)
        assert isinstance(db, Database)
        # service commands: only a profile with services has them, from its vendor DBC
        self._commands: dict[str, tuple[Any, str, str]] = {}
        if self.profile.services is not None:
            service_db = cantools.database.load_file(
                str(service_dbc_path or self.profile.service_dbc_path()), strict=True)
            assert isinstance(service_db, Database)
            for command in ("force_disconnect", "silence_module"):
                spec = getattr(self.profile.services, command)
                message = service_db.get_message_by_name(spec.message)
                db.messages.append(message)
                self._commands[command] = (message, spec.module, spec.switch)
            db.refresh()
        self.db = db
        # frames the inverter side sends (0x305, service commands): never a sign of the battery's life
        self._inverter_ids = {m.frame_id for m in db.messages if "INVERTER" in m.senders} | \
            {message.frame_id for message, _, _ in self._commands.values()}
        self._decoder = _Decoder(db)
        self._state_lock = threading.Lock()
        self._latest: dict[int, tuple[float, dict[str, Any]]] = {}
        self._heard_at: dict[int, float] = {}
        self._last_heard: float | None = None
        self._opened_at = clock()
        self.malformed: Counter[str] = Counter()
        self.frames_received = 0
        self.frames_sent = 0
        self.keepalives_sent = 0
        self.bus_errors = 0
        self.last_bus_error = ""
        self._log_lock = threading.Lock()
        self._log: can.CanutilsLogWriter | None = None
        self.log_path = Path(log_path) if log_path else None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            label = str(channel or interface).replace(" ", "_") or "can0"
            self._log = can.CanutilsLogWriter(self.log_path, channel=label)
        try:
            self._bus = can.Bus(interface=interface, channel=channel, **bus_kwargs)
        except Exception as exc:
            if self._log is not None:
                self._log.stop()
            raise InstrumentError(self.name, self.resource, "open", str(exc)) from exc
        self._heartbeat_on = heartbeat_on
        self._next_keepalive = clock()
        self.last_keepalive_s: float | None = None  # bench time of the last 0x305 sent
        self._driven_at = -float("inf")
        self._send_lock = threading.Lock()
        self._closing = threading.Event()
        self._wake = threading.Event()
        self._threads = [threading.Thread(target=self._keepalive_loop, name=f"{name}-keepalive", daemon=True)]
        for thread in self._threads:
            thread.start()
        self._notifier = can.Notifier(self._bus, [_Receiver(self)], timeout=0.05)
        self._on_the_caller = False  # receive_on_the_caller(): no receive thread

    @classmethod
    def from_resource(cls, resource: str, **kwargs: Any) -> "CanBms":
        """Open from a station ``resource:`` string (see :func:`parse_resource`)."""
        return cls(**{**parse_resource(resource), **kwargs})

    # ================================================================== receive
    def process(self, msg: can.Message) -> str | None:
        """Log, classify, decode and store one received frame; returns the malformed reason.

        The receive thread's whole path, public so a benchmark can time it without a bus.
        """
        carried = msg.timestamp
        now = self._clock()
        msg.timestamp, msg.is_rx = now, True
        self._write_log(msg)
        reason, values = self._decoder.decode(msg)
        with self._state_lock:
            self.frames_received += 1
            if not msg.is_error_frame and (msg.arbitration_id not in self._inverter_ids or msg.is_extended_id):
                self._last_heard = now  # anything the battery side sent, even garbage, is a sign of life
            if reason is not None:
                self.malformed[reason] += 1
            elif msg.arbitration_id not in self._inverter_ids:
                self._latest[msg.arbitration_id] = (now, values)  # type: ignore[assignment]
                self._heard_at[msg.arbitration_id] = now
        with self._arrived:
            if carried and carried > self.newest_stamp:
                self.newest_stamp, self._at_newest = carried, 1
            elif carried and carried == self.newest_stamp:
                self._at_newest += 1
            self._arrived.notify_all()
        return reason

    def receive_on_the_caller(self) -> None:
        """Stop the receive thread; from now on frames are taken off the bus by whoever waits
        for them (:meth:`wait_for_stamp`, :meth:`pump`), in its own thread.

        For a bench on a virtual clock, which calls this when it attaches the client: there
        nothing is sent between the clock's steps, and the clock waits for every report anyway,
        so handing each report to the receive thread and back was pure cost (about a sixth of
        a bank qualification: two thread wake-ups per bench second). Frames are processed by
        the same :meth:`process`, in the order they arrived."""
        self._notifier.stop(timeout=2.0)
        self._on_the_caller = True
        self.pump()

    def pump(self) -> int:
        """Process every frame waiting on the bus now (receiving on the caller); how many."""
        handled = 0
        while (msg := self._recv(0.0)) is not None:
            self.process(msg)
            handled += 1
        return handled

    def _recv(self, timeout_s: float) -> can.Message | None:
        try:
            return self._bus.recv(timeout=timeout_s)
        except Exception as exc:  # counted, as the receive thread counts it; the waiter times out
            self._bus_error(exc)
            return None

    def wait_for_stamp(self, stamp: float, count: int = 1, timeout_s: float = 1.0) -> bool:
        """Wait (wall time, at most ``timeout_s``) until ``count`` frames carrying ``stamp`` (or
        any later one) have been processed. An emulated bench stamps its frames in bench time,
        so its virtual clock uses this as a barrier: a whole published frame set has arrived
        before bench time moves on. False on timeout (frames lost, or the reader stuck)."""
        deadline = time.monotonic() + timeout_s

        def arrived() -> bool:  # stamps cross socketcand in whole microseconds
            if self.newest_stamp > stamp + 1e-6:
                return True
            return self.newest_stamp >= stamp - 1e-6 and self._at_newest >= count

        if self._on_the_caller:
            while not arrived():
                msg = self._recv(max(0.0, min(deadline - time.monotonic(), 0.05)))
                if msg is not None:
                    self.process(msg)
                elif time.monotonic() >= deadline or self._closing.is_set():
                    return False
            return True
        with self._arrived:
            while not arrived():
                left = deadline - time.monotonic()
                if left <= 0 or self._closing.is_set():
                    return False
                self._arrived.wait(min(left, 0.05))
        return True

    def _bus_error(self, exc: BaseException) -> None:
        with self._state_lock:
            self.bus_errors += 1
            self.last_bus_error = f"{type(exc).__name__}: {exc}"

    def _write_log(self, msg: can.Message) -> None:
        if self._log is not None:
            with self._log_lock:
                if self._log is not None:
                    self._log.on_message_received(msg)

    # ================================================================== keep-alive
    def _keepalive_loop(self) -> None:
        while not self._closing.is_set():
            with self._state_lock:
                driven = self._clock() - self._driven_at < 2 * self.period_s
            if not driven:
                self._send_if_due()
            # driven by the bench clock: look again now and then, not 200 times a second
            self._wake.wait(0.1 if driven else self._poll_s)
            self._wake.clear()

    def keepalive_pending(self) -> bool:
        """A keep-alive is due on the clock and not yet sent (lets a virtual-clock caller sync)."""
        with self._state_lock:
            return self._heartbeat_on and self._clock() >= self._next_keepalive

    def send_keepalive_if_due(self) -> bool:
        """Send the keep-alive now if it is due; True if one was sent.

        For a bench clock that runs periodic duties in bench time: called from there, the
        keep-alive goes out at exactly its bench time, between the emulator's steps, rather
        than whenever the background thread looks at a virtual clock. While a caller drives
        it (a call within the last two periods of the clock), the thread stands back; if the
        calls stop, the thread takes over again.
        """
        with self._state_lock:
            self._driven_at = self._clock()
        return self._send_if_due()

    def _send_if_due(self) -> bool:
        with self._send_lock:  # the thread and a clock duty never both send the same one
            if not self.keepalive_pending():
                return False
            now = self._clock()
            msg = Frame.of(KEEPALIVE_ID, bytes(8), now)
            try:
                self._bus.send(msg)
                sent = True
            except Exception as exc:  # counted in bus_errors; the next one is tried on schedule
                self._bus_error(exc)
                sent = False
            if sent:
                self._write_log(msg)
            with self._state_lock:
                self.frames_sent += sent
                self.keepalives_sent += sent
                if sent:
                    self.last_keepalive_s = now  # what the battery's comm-loss timer counts from
                # keep the cadence; after a clock jump (virtual time) restart it from now
                nxt = self._next_keepalive + self.period_s
                self._next_keepalive = nxt if nxt > now else now + self.period_s
            return sent

    def heartbeat(self, on: bool) -> None:
        with self._state_lock:
            if on and not self._heartbeat_on:
                self._next_keepalive = self._clock()
            self._heartbeat_on = bool(on)
        self._wake.set()

    @property
    def heartbeat_on(self) -> bool:
        return self._heartbeat_on

    # ================================================================== bench service commands
    def _service(self, command: str, module_index: int, on: bool) -> None:
        """Send one service command as the profile's vendor DBC lays it out (other signals 0)."""
        what = f"{command}({module_index}, {bool(on)})"
        if command not in self._commands:
            raise NotInProfile(self.name, self.resource, what,
                               f"BMS profile {self.profile.name} has no service commands")
        if not 0 <= int(module_index) <= 255:
            raise ValueError(f"module index {module_index}: 0..255")
        message, module_signal, switch_signal = self._commands[command]
        values = {sig.name: 0 for sig in message.signals}
        values.update({module_signal: int(module_index), switch_signal: int(bool(on))})
        data = message.encode(values, strict=True)
        frame_id = message.frame_id
        msg = can.Message(arbitration_id=frame_id, data=data, is_extended_id=False,
                          timestamp=self._clock(), is_rx=False)
        try:
            with self._send_lock:
                self._bus.send(msg)
        except Exception as exc:
            self._bus_error(exc)
            raise InstrumentError(self.name, self.resource, what, str(exc)) from exc
        self._write_log(msg)
        with self._state_lock:
            self.frames_sent += 1

    def force_disconnect(self, module_index: int, on: bool) -> None:
        """Service command (0x3F0 in the full profile): open (``on``) or release one module's
        BMS switch.

        ``module_index`` is the module's 0-based index in bank order (series position first, then
        parallel index: s1p1, s1p2, ..., s2p1, ...; the order of the SunSpec 805 models). On a real
        bench this is the BMS vendor's service tool; the frame is the profile's stand-in for it.
        :class:`NotInProfile` if the profile has no service commands.
        """
        self._service("force_disconnect", module_index, on)

    def silence_module(self, module_index: int, on: bool) -> None:
        """Service command (0x3F1 in the full profile): make one module stop reporting to its
        master (``on``), or restore it -- a pulled link cable (004: one module stays offline).
        Index as in :meth:`force_disconnect`."""
        self._service("silence_module", module_index, on)

    # ================================================================== profile
    @classmethod
    def protocols_for(cls, profile: BmsProfile | str | Path | None = None) -> set[str]:
        """The role protocols this client provides for a pack of ``profile``: the class's
        (:func:`instruments.roles.protocols_of`: ``bms``) plus ``bms_service`` with the profile's
        service DBC and ``capacity_report`` when it sends 0x379. What a station offers a
        plan (``StationFile.protocols``) is this, not the class alone."""
        return (protocols_of(cls) - set(_OPTIONAL)) | (set(_OPTIONAL) - set(cls.withheld_by(profile)))

    @classmethod
    def withheld_by(cls, profile: BmsProfile | str | Path | None = None) -> dict[str, str]:
        """Protocol -> why a pack of ``profile`` does not provide it (for a refusal's message)."""
        loaded = as_profile(profile)
        withheld: dict[str, str] = {}
        if not loaded.has_services:
            withheld["bms_service"] = "it has no service commands"
        for protocol, frame_id in FRAME_PROTOCOLS.items():
            if not loaded.sends(frame_id):
                withheld[protocol] = f"it sends no {hex_id(frame_id)}"
        return withheld

    def provided_protocols(self) -> set[str]:
        """The protocols this connected client provides (see :meth:`protocols_for`)."""
        return self.protocols_for(self.profile)

    def sends(self, frame_id: int) -> bool:
        """Whether the pack sends ``frame_id`` (its BMS profile says so)."""
        return self.profile.sends(frame_id)

    def _not_sent(self, frame_id: int, what: str) -> NotInProfile:
        return NotInProfile(self.name, self.resource, what,
                            f"BMS profile {self.profile.name} sends no {hex_id(frame_id)} "
                            f"({what} unknown on this bus)")

    # ================================================================== state
    def seconds_since_heard(self, frame_id: int | None = None) -> float:
        """Clock seconds since the battery sent anything (or ``frame_id`` decoded cleanly);
        counted from opening if never heard. A frame the profile does not list is refused
        (:class:`NotInProfile`): its silence would say nothing about the pack."""
        if frame_id is not None and not self.profile.sends(frame_id):
            raise self._not_sent(frame_id, "seconds_since_heard")
        with self._state_lock:
            last = self._last_heard if frame_id is None else self._heard_at.get(frame_id)
        return self._clock() - (self._opened_at if last is None else last)

    def malformed_counts(self) -> dict[str, int]:
        with self._state_lock:
            return {reason: self.malformed.get(reason, 0) for reason in MALFORMED_REASONS}

    def decoded(self, frame_id: int) -> dict[str, Any] | None:
        """The latest cleanly decoded signals of one frame (physical units), or None."""
        with self._state_lock:
            entry = self._latest.get(frame_id)
        return dict(entry[1]) if entry else None

    def _need(self, frame_id: int, what: str, wait: bool = False) -> dict[str, Any]:
        if not self.profile.sends(frame_id):
            raise self._not_sent(frame_id, what)
        deadline = time.monotonic() + (self.wait_s if wait else 0.0)
        while True:
            with self._state_lock:
                entry = self._latest.get(frame_id)
            if entry is not None or time.monotonic() >= deadline:
                break
            time.sleep(0.005)
        if entry is None:
            raise InstrumentError(self.name, self.resource, what, f"no 0x{frame_id:03X} frame received yet")
        age = self._clock() - entry[0]
        if self.stale_after_s is not None and age > self.stale_after_s:
            raise InstrumentError(self.name, self.resource, what,
                                  f"0x{frame_id:03X} is {age:.1f} s old (stale after {self.stale_after_s} s)")
        return entry[1]

    # ================================================================== role
    def firmware(self) -> str:
        """``major.minor.0`` from 0x35F, in the one form every driver reports
        (:func:`instruments.roles.normalise_version`); the protocol carries no patch number or
        pre-release tag, so 2.1.3 reads as 2.1.0. :class:`NotInProfile` at once when the
        profile sends no 0x35F: the firmware is unknown on this bus."""
        code = int(self._need(0x35F, "firmware", wait=True)["FirmwareVersion"])
        return normalise_version(f"{code >> 8}.{code & 0xFF}")

    def manufacturer(self) -> str:
        """The maker's name from 0x35E, as text ("PYLON")."""
        return str(self._need(0x35E, "identity", wait=True)["ManufacturerName"])

    def bank_identity(self) -> BankIdentity:
        """What the pack says it is on this bus: maker (0x35E), firmware and model number
        (0x35F); None for what its profile does not send. Waits (boundedly) for the first report,
        as :meth:`identity` does."""
        maker = self.manufacturer() if self.profile.sends(0x35E) else None
        firmware = model = None
        if self.profile.sends(0x35F):
            firmware = self.firmware()
            model = str(int(self._need(0x35F, "identity")["BatteryModel"]))
        return BankIdentity(manufacturer=maker, model=model, firmware=firmware)

    def identity(self) -> str:
        """``"PYLON BMS, firmware 2.1.0"``, or ``"PYLON BMS, firmware unknown (BMS profile
        pylontech_strict sends no 0x35F)"``. It needs only frames the profile lists (the
        watchdog asks this): a pack that sends nothing at all still fails it."""
        if self.profile.sends(0x35E):
            maker = self.manufacturer()
        else:
            self._need(self.profile.frames[0], "identity", wait=True)  # it talks: that is the answer
            maker = "unnamed"
        if self.profile.sends(0x35F):
            firmware = self.firmware()
        else:
            firmware = f"unknown (BMS profile {self.profile.name} sends no 0x35F)"
        return f"{maker} BMS, firmware {firmware}"

    def telemetry(self) -> BmsTelemetry:
        soc = self._need(0x355, "telemetry")
        meas = self._need(0x356, "telemetry")
        cells = self.decoded(0x373)
        return BmsTelemetry(voltage_v=_num(meas["Voltage"]), current_a=_num(meas["Current"]),
                            temperature_c=_num(meas["Temperature"]), soc_pct=_num(soc["SOC"]),
                            soh_pct=_num(soc["SOH"]),
                            min_cell_v=_num(cells["MinCellVoltage"] / 1000) if cells else None,
                            max_cell_v=_num(cells["MaxCellVoltage"] / 1000) if cells else None)

    def cell_temperatures_c(self) -> tuple[float, float]:
        """(min, max) module temperature from 0x373, converted from integer kelvin
        (:class:`NotInProfile` when the profile sends no 0x373)."""
        cells = self._need(0x373, "cell_temperatures")
        return _num(cells["MinTemperature"] - 273.15), _num(cells["MaxTemperature"] - 273.15)

    def limits(self) -> BmsLimits:
        v = self._need(0x351, "limits")
        return BmsLimits(charge_voltage_v=_num(v["ChargeVoltageLimit"]),
                         charge_current_a=_num(v["ChargeCurrentLimit"]),
                         discharge_current_a=abs(_num(v["DischargeCurrentLimit"])),
                         discharge_voltage_v=_num(v["DischargeVoltageLimit"]))

    def status(self) -> BmsStatus:
        """Alarms and warnings (0x359, required), module counts, capacities and enables
        (0x372, 0x35F, 0x379, 0x35C: None until heard, or never sent). Modules online: 0x372,
        else the module count of 0x359 byte 4 (every pack sends it)."""
        flags = self._need(0x359, "status")
        counts, info = self.decoded(0x372), self.decoded(0x35F)
        installed, requests = self.decoded(0x379), self.decoded(0x35C)
        online = int(counts["ModulesOnline"]) if counts else int(flags["ModuleCount"])
        return BmsStatus(
            alarms={name for bit, name in ALARM_NAMES.items() if flags[f"Alarm_{bit}"]},
            warnings={name for bit, name in ALARM_NAMES.items() if flags[f"Warning_{bit}"]},
            modules_online=online,
            modules_offline=int(counts["ModulesOffline"]) if counts else None,
            installed_capacity_ah=_num(installed["InstalledCapacity"]) if installed else None,
            online_capacity_ah=_num(info["OnlineCapacity"]) if info else None,
            charge_enable=bool(requests["ChargeEnable"]) if requests else None,
            discharge_enable=bool(requests["DischargeEnable"]) if requests else None)

    def installed_capacity_ah(self) -> float | None:
        """0x379 installed capacity, None until heard (or when the profile sends no 0x379)."""
        installed = self.decoded(0x379)
        return _num(installed["InstalledCapacity"]) if installed else None

    def safe_state(self) -> None:
        try:
            if self.safe_state_heartbeat == "resume":
                self.heartbeat(True)
            elif self.safe_state_heartbeat == "stop":
                self.heartbeat(False)
        except Exception:  # noqa: BLE001 - safe_state must never raise
            pass

    def flush_log(self) -> None:
        with self._log_lock:
            if self._log is not None:
                self._log.file.flush()

    def close(self) -> None:
        """Stop the threads, release the bus, close the log. Safe to call twice."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._wake.set()
        with self._arrived:
            self._arrived.notify_all()
        self._notifier.stop(timeout=2.0)
        for thread in self._threads:
            thread.join(timeout=2.0)
        try:
            self._bus.shutdown()
        except Exception:  # noqa: BLE001 - closing a failed bus must not raise
            pass
        with self._log_lock:
            if self._log is not None:
                self._log.stop()
                self._log = None

    def __enter__(self) -> "CanBms":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
