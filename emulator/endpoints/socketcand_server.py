"""A socketcand-protocol server on loopback, bridging TCP clients onto python-can buses.

Why: the harness and the emulator may run in different processes, and these machines have
no SocketCAN/vcan (DOMAIN.md section 6). python-can's ``socketcand`` interface speaks an
ASCII protocol over TCP; this server speaks the other end of it, so a harness process opens
``can.Bus(interface="socketcand", host=..., port=..., channel=...)`` and reaches a bus living
in the emulator process. ``udp_multicast`` is never used: its traffic leaves the machine.

Protocol subset (what python-can's client uses, as its source reads):

    server: < hi >                        on connect
    client: < open CHANNEL >              server: < ok >   (or < error ... > if not served)
    client: < rawmode >                   server: < ok >
    server: < frame ID SECS.USECS DATA >  every frame on the bus; ID 3 hex digits (standard)
                                          or 8 (extended), DATA contiguous hex
    server: < error ID SECS.USECS >       a CAN error frame
    client: < send ID DLC B0 B1 ... >     put a frame on the bus (bytes in hex); ID of 1-3 hex
                                          digits is standard (<= 7FF), 4-8 extended (<= 1FFFFFFF)
    client: < echo >                      server: < echo >

Each session opens its own bus on the channel it names (``interface`` virtual by default),
so a client's frames reach every other node on that channel but are not echoed back to it,
as on a real bus. Malformed client commands are counted and dropped, never answered with
``< error >`` in raw mode: python-can's client would take that for an error frame and fail to
parse it. That includes a ``send`` whose ID does not fit its format (``800`` as a standard ID,
``20000000`` as an extended one): it is refused (``bad_send`` and ``bad_can_id``), never wrapped
or truncated onto the bus. A frame on the bus with such an ID is not forwarded either
(``bad_bus_id``): a standard 0x800 must not reach the client as ``000``.

The server never sends a frame until ``rawmode_grace_s`` after its ``< ok >``: the client
reads that ``< ok >`` with one ``recv`` and compares it exactly, so a frame glued to it would
break the handshake. Frames queue meanwhile (from ``open`` on); none is lost.

A client that stops reading costs a bounded amount of memory, as a real bus driver would:
each session drains its bus at once into a queue of at most ``client_queue_frames`` frames, and
what does not fit is dropped and counted (``frames_dropped`` in :attr:`SocketcandServer.counts`,
``_Session.dropped`` per client, a warning when that client goes), the newest frames first,
as a full socket receive buffer drops them. Other clients are not held up: each has its own
queue and threads. At most ``max_sessions`` clients at once; one more is closed straight away.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import select
import socket
import threading
import time
from collections import deque
from typing import Any

import can

log = logging.getLogger(__name__)
LOOPBACK_NAMES = {"localhost"}


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


MAX_STANDARD_ID = 0x7FF
MAX_EXTENDED_ID = 0x1FFFFFFF
_HEX_ID = re.compile(r"[0-9A-Fa-f]{1,8}")
_HEX_BYTE = re.compile(r"[0-9A-Fa-f]{1,2}")


class BadCanId(ValueError):
    """A CAN ID that does not fit its format (11-bit standard, 29-bit extended)."""


def check_can_id(arbitration_id: int, extended: bool) -> int:
    """``arbitration_id`` if it fits (standard <= 0x7FF, extended <= 0x1FFFFFFF), else BadCanId."""
    limit = MAX_EXTENDED_ID if extended else MAX_STANDARD_ID
    if not 0 <= arbitration_id <= limit:
        kind = "extended (29-bit)" if extended else "standard (11-bit)"
        raise BadCanId(f"CAN ID 0x{arbitration_id:X} out of range for a {kind} frame")
    return arbitration_id


def format_frame(msg: can.Message) -> str:
    """One bus frame as the socketcand server line python-can's client parses.

    Raises :class:`BadCanId` for an ID that does not fit its format: masking it would put a
    different frame (0x800 -> ``000``) in front of the client.
    """
    stamp = f"{(msg.timestamp or 0.0):.6f}"
    if msg.is_error_frame:  # the ID carries the error class bits, masked as socketcand does
        return f"< error {msg.arbitration_id & 0x1FFFFFFF:08X} {stamp} >"
    check_can_id(msg.arbitration_id, msg.is_extended_id)
    ident = f"{msg.arbitration_id:08X}" if msg.is_extended_id else f"{msg.arbitration_id:03X}"
    return f"< frame {ident} {stamp} {bytes(msg.data).hex().upper()} >"


def parse_send(body: list[str]) -> can.Message:
    """``send ID DLC B0 ...`` tokens to a message; raises ValueError if malformed
    (:class:`BadCanId`, a ValueError, if the ID does not fit its format).

    An ID of up to 3 hex digits is a standard frame, 4 to 8 digits an extended one (python-can
    writes 3 and 8); ``800`` or ``1FFFFFFFF`` are refused, never wrapped or truncated.
    """
    if len(body) < 2:
        raise ValueError("send needs an ID and a DLC")
    ident, dlc = body[0], int(body[1], 16)
    if not _HEX_ID.fullmatch(ident):
        raise BadCanId(f"CAN ID {ident[:16]!r} is not 1 to 8 hex digits")
    if not all(_HEX_BYTE.fullmatch(token) for token in body[2:]):
        raise ValueError("data bytes must be 1 or 2 hex digits each")
    data = bytes(int(token, 16) for token in body[2:])
    if dlc != len(data) or dlc > 8:
        raise ValueError(f"DLC {dlc} does not match {len(data)} data bytes")
    extended = len(ident) > 3
    arbitration_id = check_can_id(int(ident, 16), extended)
    return can.Message(arbitration_id=arbitration_id, data=data, is_extended_id=extended)


# Up to ~10 MB of process memory for a client that stops reading (measured: 9.6 MB RSS);
# 16 s of a full 500 kbit/s bus, so a reader that falls behind for a while loses nothing.
DEFAULT_CLIENT_QUEUE_FRAMES = 65_536
BATCH_FRAMES = 512  # frames per TCP write: keeps up with a full bus in few syscalls
MAX_PENDING_REPLY_BYTES = 1 << 16  # replies (echo) held for a client that does not read
_BACKLOG_POLL_S = 0.005  # how often a backlog is retried while the client's socket is full
_IDLE_POLL_S = 0.05
_MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


class _Session:
    """One TCP client: a command reader on its own thread, and from ``open`` on a forwarder
    thread that drains the session's bus into a bounded queue at once and, from ``rawmode``,
    writes the queue to the client without ever blocking on it. A client that stops reading
    only lets its queue fill: frames that do not fit are dropped and counted (``dropped``)."""

    def __init__(self, server: "SocketcandServer", conn: socket.socket, peer: object = None):
        self.server, self.conn, self.peer = server, conn, peer
        self.bus: can.BusABC | None = None
        self.raw = False
        self.closed = threading.Event()
        self._send_lock = threading.Lock()
        self.queue_limit = server.client_queue_frames
        self._queue: deque[str] = deque()  # formatted frame lines not yet handed to TCP
        self._out = bytearray()  # bytes handed to TCP but not yet taken by the kernel (one batch)
        self._forwarding = False  # raw mode and its grace over: frames go out, writes are buffered
        self._forward_from = 0.0
        self.dropped = 0      # frames the queue had no room for (client not reading fast enough)
        self.bad_bus_ids = 0  # frames on the bus whose ID does not fit its format: not forwarded
        self.max_queued = 0   # the queue's high-water mark
        self.frames_sent = 0
        self.replies_dropped = 0

    @property
    def queued(self) -> int:
        """Frames waiting for this client now."""
        return len(self._queue)

    def write(self, line: str) -> None:
        """A reply. Before forwarding starts it is sent at once (the handshake); after, it goes
        behind the frames already on their way, without blocking on a client that does not read."""
        data = line.encode("ascii")
        with self._send_lock:
            if not self._forwarding:
                self.conn.sendall(data)
                return
            if len(self._out) > MAX_PENDING_REPLY_BYTES + BATCH_FRAMES * 64:
                self.replies_dropped += 1
                self.server.count("replies_dropped")
                return
            self._out += data
            self._send_pending()

    def run(self) -> None:
        try:
            self.write("< hi >")
            buffer = ""
            while not self.closed.is_set():
                chunk = self.conn.recv(65536)
                if not chunk:
                    break
                buffer += chunk.decode("ascii", "replace")
                pos = 0
                while True:  # indices, not slicing: a full bus sends thousands per chunk
                    start = buffer.find("<", pos)
                    end = buffer.find(">", start + 1) if start >= 0 else -1
                    if start < 0 or end < 0:
                        buffer = buffer[start:] if start >= 0 else ""
                        break
                    self.command(buffer[start + 1:end].split())
                    pos = end + 1
                if len(buffer) > 4096:  # no '>' in sight: garbage, not a command
                    self.server.count("garbage_dropped")
                    buffer = ""
        except OSError:
            pass
        finally:
            self.close()

    def command(self, tokens: list[str]) -> None:
        if not tokens:
            self.server.count("empty_command")
            return
        verb, body = tokens[0], tokens[1:]
        if verb == "send" and self.raw and self.bus is not None:
            try:
                self.bus.send(parse_send(body))
                self.server.count("frames_from_clients")
            except BadCanId as exc:
                self.server.count("bad_send")
                self.server.count("bad_can_id")
                log.debug("refused send with a bad CAN ID %s: %s", body[:1], exc)
            except (ValueError, can.CanError) as exc:
                self.server.count("bad_send")
                log.debug("dropped malformed send %s: %s", body[:10], exc)
        elif verb == "open" and len(body) == 1 and self.bus is None:
            if self.server.channels is not None and body[0] not in self.server.channels:
                self.write(f"< error channel {body[0]} not served >")
                return
            try:
                self.bus = can.Bus(interface=self.server.interface, channel=body[0], **self.server.bus_kwargs)
            except Exception as exc:  # noqa: BLE001 - any interface failure is the client's error reply
                self.write(f"< error cannot open {body[0]}: {type(exc).__name__} >")
                return
            self.write("< ok >")
            threading.Thread(target=self.forward, name="socketcand-forward", daemon=True).start()
        elif verb == "rawmode" and self.bus is not None and not self.raw:
            with self._send_lock:
                self._forward_from = time.monotonic() + self.server.rawmode_grace_s
                self.raw = True
                self.conn.sendall(b"< ok >")
        elif verb == "echo":
            self.write("< echo >")
        else:
            self.server.count("unsupported_command")
            if not self.raw:
                self.write(f"< error unsupported {verb} >")

    # -- bus -> queue -> TCP ---------------------------------------------------------------------
    def forward(self) -> None:
        """Drain the bus into the queue as frames come, whatever the client does (the bus never
        backs up behind it), and hand the queue to TCP as far as the client takes it."""
        bus = self.bus
        assert bus is not None
        try:
            while not self.closed.is_set():
                backlog = self._queue or self._out
                msg = bus.recv(timeout=_BACKLOG_POLL_S if backlog else _IDLE_POLL_S)
                if msg is not None:
                    batch = [msg]
                    while len(batch) < BATCH_FRAMES:
                        more = bus.recv(timeout=0.0)
                        if more is None:
                            break
                        batch.append(more)
                    self._enqueue(batch)
                if self.raw and (self._queue or self._out):
                    self._flush()
        except (OSError, can.CanError):
            pass  # the client went (reset, broken pipe), or close() shut the bus under us
        finally:
            self.close()
            with self._send_lock:  # only this thread takes from the queue: clear it here
                self._queue.clear()  # give the memory back now, not when the session is collected
                self._out.clear()

    def _enqueue(self, batch: list[can.Message]) -> None:
        room = self.queue_limit - len(self._queue)
        dropped = bad = 0
        for msg in batch:
            if room <= 0:
                dropped += 1  # overrun: the newest frames go, as from a full receive buffer
                continue
            try:
                self._queue.append(format_frame(msg))
                room -= 1
            except BadCanId as exc:
                bad += 1
                if self.bad_bus_ids + bad == 1:
                    log.warning("socketcand client %s: not forwarding a frame: %s", self.peer, exc)
        self.max_queued = max(self.max_queued, len(self._queue))
        if dropped:
            if not self.dropped:
                log.warning("socketcand client %s is not reading: queue full at %d frames, dropping",
                            self.peer, self.queue_limit)
            self.dropped += dropped
            self.server.count("frames_dropped", dropped)
        if bad:
            self.bad_bus_ids += bad
            self.server.count("bad_bus_id", bad)

    def _flush(self) -> None:
        """Queue -> TCP without blocking: whole batches into ``_out``, ``_out`` into the socket
        as far as it takes it; the rest waits for the next round."""
        with self._send_lock:
            if not self._forwarding:
                if time.monotonic() < self._forward_from:
                    return  # the client is still reading the < ok > of rawmode
                self._forwarding = True
            while True:
                if not self._out:
                    if not self._queue:
                        return
                    n = min(len(self._queue), BATCH_FRAMES)
                    self._out += "".join([self._queue.popleft() for _ in range(n)]).encode("ascii")
                    self.frames_sent += n
                    self.server.count("frames_to_clients", n)
                if not self._send_pending():
                    return

    def _send_pending(self) -> bool:
        """Send what ``_out`` holds without blocking (send lock held); True if all went."""
        while self._out:
            try:
                if _MSG_DONTWAIT:
                    sent = self.conn.send(self._out, _MSG_DONTWAIT)
                else:  # no MSG_DONTWAIT (Windows): send a small piece only when writable
                    if not select.select([], [self.conn], [], 0)[1]:
                        return False
                    sent = self.conn.send(self._out[:4096])
            except (BlockingIOError, InterruptedError):
                return False
            del self._out[:sent]
        return True

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        try:
            self.conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.conn.close()
        left = len(self._queue)  # the forwarder drops them as it stops (within _IDLE_POLL_S)
        if self.bus is not None:
            self.bus.shutdown()
        if self.dropped or self.bad_bus_ids or self.replies_dropped:
            log.warning("socketcand client %s closed: %d frames sent, %d dropped (queue full at %d, "
                        "peak %d), %d not forwarded for a bad ID, %d replies dropped, %d unsent at "
                        "close", self.peer, self.frames_sent, self.dropped, self.queue_limit,
                        self.max_queued, self.bad_bus_ids, self.replies_dropped, left)


class SocketcandServer:
    """Serves python-can buses to socketcand clients on a loopback address.

    ``channels``: the channel names a client may open (None: any). ``bus_kwargs`` go to every
    session's ``can.Bus``. ``start()`` returns the (host, port) actually bound (port 0 picks
    a free one). ``counts`` records frames each way, every dropped command and frame
    (``frames_dropped``: a client's queue was full; ``bad_can_id`` / ``bad_bus_id``: an ID that
    does not fit its format, from a client / on the bus) and ``sessions_refused``.
    ``client_queue_frames`` bounds the frames waiting for one client; ``max_sessions`` the
    clients served at once (one more is closed at once). :attr:`sessions`: the live ones.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, interface: str = "virtual",
                 channels: set[str] | None = None, bus_kwargs: dict[str, Any] | None = None,
                 rawmode_grace_s: float = 0.05, client_queue_frames: int = DEFAULT_CLIENT_QUEUE_FRAMES,
                 max_sessions: int = 64):
        if not _is_loopback(host):
            raise ValueError(f"socketcand server binds loopback only, not {host!r}")
        if interface == "udp_multicast":
            raise ValueError("udp_multicast traffic leaves the machine; use virtual")
        if client_queue_frames < 1 or max_sessions < 1:
            raise ValueError("client_queue_frames and max_sessions must be at least 1")
        self.client_queue_frames = client_queue_frames
        self.max_sessions = max_sessions
        self.host, self.port = host, port
        self.interface = interface
        self.channels = channels
        self.bus_kwargs = dict(bus_kwargs or {})
        self.rawmode_grace_s = rawmode_grace_s
        self.counts: dict[str, int] = {}
        self._counts_lock = threading.Lock()
        self._sessions: list[_Session] = []
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def count(self, what: str, n: int = 1) -> None:
        with self._counts_lock:
            self.counts[what] = self.counts.get(what, 0) + n

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def sessions(self) -> list[_Session]:
        """The clients connected now."""
        return [s for s in self._sessions if not s.closed.is_set()]

    def start(self) -> tuple[str, int]:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen()
        listener.settimeout(0.1)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._stop.clear()
        self._thread = threading.Thread(target=self._accept, name="socketcand-accept", daemon=True)
        self._thread.start()
        return self.address

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, peer = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            live = self.sessions
            if len(live) >= self.max_sessions:
                self.count("sessions_refused")
                refused = self.counts["sessions_refused"]
                if refused == 1 or refused % 100 == 0:  # a flood must not flood the log
                    log.warning("socketcand: refusing %s, %d clients connected (%d refused so far)",
                                peer, len(live), refused)
                conn.close()  # at once: the client sees EOF, not a hang
                continue
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            session = _Session(self, conn, peer)
            self._sessions = live + [session]
            threading.Thread(target=session.run, name="socketcand-session", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for session in self._sessions:
            session.close()
        self._sessions = []

    def __enter__(self) -> "SocketcandServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
