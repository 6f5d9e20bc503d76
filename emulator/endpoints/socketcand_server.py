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
    client: < send ID DLC B0 B1 ... >     put a frame on the bus (bytes in hex)
    client: < echo >                      server: < echo >

Each session opens its own bus on the channel it names (``interface`` virtual by default),
so a client's frames reach every other node on that channel but are not echoed back to it,
as on a real bus. Malformed client commands are counted and dropped, never answered with
``< error >`` in raw mode: python-can's client would take that for an error frame and fail to
parse it. The server never sends a frame until ``rawmode_grace_s`` after its ``< ok >``: the
client reads that ``< ok >`` with one ``recv`` and compares it exactly, so a frame glued to it
would break the handshake. Frames queue on the session's bus meanwhile; none is lost.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
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


def format_frame(msg: can.Message) -> str:
    """One bus frame as the socketcand server line python-can's client parses."""
    stamp = f"{(msg.timestamp or 0.0):.6f}"
    if msg.is_error_frame:
        return f"< error {msg.arbitration_id & 0x1FFFFFFF:08X} {stamp} >"
    ident = f"{msg.arbitration_id:08X}" if msg.is_extended_id else f"{msg.arbitration_id & 0x7FF:03X}"
    return f"< frame {ident} {stamp} {bytes(msg.data).hex().upper()} >"


def parse_send(body: list[str]) -> can.Message:
    """``send ID DLC B0 ...`` tokens to a message; raises ValueError if malformed."""
    if len(body) < 2:
        raise ValueError("send needs an ID and a DLC")
    ident, dlc = body[0], int(body[1], 16)
    data = bytes(int(token, 16) for token in body[2:])
    if dlc != len(data) or dlc > 8:
        raise ValueError(f"DLC {dlc} does not match {len(data)} data bytes")
    extended = len(ident) > 3
    return can.Message(arbitration_id=int(ident, 16), data=data, is_extended_id=extended)


class _Session:
    """One TCP client: command reader on its own thread, bus forwarder on another."""

    def __init__(self, server: "SocketcandServer", conn: socket.socket):
        self.server, self.conn = server, conn
        self.bus: can.BusABC | None = None
        self.raw = False
        self.closed = threading.Event()
        self._send_lock = threading.Lock()

    def write(self, line: str) -> None:
        with self._send_lock:
            self.conn.sendall(line.encode("ascii"))

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
            except (ValueError, can.CanError) as exc:
                self.server.count("bad_send")
                log.debug("dropped malformed send %s: %s", body, exc)
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
        elif verb == "rawmode" and self.bus is not None and not self.raw:
            self.raw = True
            self.write("< ok >")
            threading.Thread(target=self.forward, name="socketcand-forward", daemon=True).start()
        elif verb == "echo":
            self.write("< echo >")
        else:
            self.server.count("unsupported_command")
            if not self.raw:
                self.write(f"< error unsupported {verb} >")

    def forward(self) -> None:
        """Bus -> TCP: batch whatever is queued into one write (keeps up with a full bus)."""
        if self.closed.wait(self.server.rawmode_grace_s):
            return
        bus = self.bus
        assert bus is not None
        try:
            while not self.closed.is_set():
                msg = bus.recv(timeout=0.05)
                if msg is None:
                    continue
                lines = [format_frame(msg)]
                while len(lines) < 512:
                    more = bus.recv(timeout=0.0)
                    if more is None:
                        break
                    lines.append(format_frame(more))
                self.write("".join(lines))
                self.server.count("frames_to_clients", len(lines))
        except (OSError, can.CanError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        try:
            self.conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.conn.close()
        if self.bus is not None:
            self.bus.shutdown()


class SocketcandServer:
    """Serves python-can buses to socketcand clients on a loopback address.

    ``channels``: the channel names a client may open (None: any). ``bus_kwargs`` go to every
    session's ``can.Bus``. ``start()`` returns the (host, port) actually bound (port 0 picks
    a free one). ``counts`` records frames each way and every dropped command.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, interface: str = "virtual",
                 channels: set[str] | None = None, bus_kwargs: dict[str, Any] | None = None,
                 rawmode_grace_s: float = 0.05):
        if not _is_loopback(host):
            raise ValueError(f"socketcand server binds loopback only, not {host!r}")
        if interface == "udp_multicast":
            raise ValueError("udp_multicast traffic leaves the machine; use virtual")
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
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            session = _Session(self, conn)
            self._sessions = [s for s in self._sessions if not s.closed.is_set()] + [session]
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
