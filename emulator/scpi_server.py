"""A SCPI line server on loopback TCP, and the parser that emulated instruments share.

The emulator must be reached through the same drivers and the same wire protocol as a real
bench, so an emulated instrument is a real TCP peer speaking newline-terminated SCPI, as a
LAN instrument does on its raw socket port (VISA ``TCPIP0::host::port::SOCKET``).

Two halves:

- :class:`ScpiDevice` -- one instrument's command tree and IEEE 488.2 status: commands are
  declared once with the SCPI mnemonic convention (``MEASure[:VOLTage][:DC]?``: upper case is
  the short form, the whole word the long form, ``[...]`` optional), matched case-insensitively,
  with ``;`` separating message units. Every failure lands in the error queue
  (``SYST:ERR?``) with its standard SCPI code, as on a real instrument.
- :class:`ScpiServer` -- a threaded TCP server bound to 127.0.0.1 only, one thread per
  connection, that survives garbage bytes, over-long lines and abrupt disconnects (it logs and
  carries on: a test harness must not lose its bench because one client misbehaved). Hostile
  or forgotten clients cannot lock the instrument up: a connection that sends nothing for
  ``idle_timeout_s`` (or does not take its reply within that time) is closed, and a
  connection beyond ``max_connections`` is closed at once instead of being left to hang.

Deliberate difference from real instruments: a *query* that fails (unknown header, execution
error) answers an empty line instead of nothing. A real instrument stays silent and the client
times out; the emulator answers at once so an error-path test costs microseconds, and a driver
that handles both (empty reply -> read the error queue; timeout -> report the timeout) works on
either.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
import selectors
import socket
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator

log = logging.getLogger(__name__)

#: The standard SCPI error texts the emulated instruments use.
SCPI_ERRORS: dict[int, str] = {
    0: "No error",
    -100: "Command error",
    -101: "Invalid character",
    -102: "Syntax error",
    -104: "Data type error",
    -108: "Parameter not allowed",
    -109: "Missing parameter",
    -120: "Numeric data error",
    -121: "Invalid character in number",
    -131: "Invalid suffix",
    -134: "Suffix too long",
    -138: "Suffix not allowed",
    -113: "Undefined header",
    -200: "Execution error",
    -213: "Init ignored",
    -221: "Settings conflict",
    -222: "Data out of range",
    -223: "Too much data",
    -224: "Illegal parameter value",
    -230: "Data corrupt or stale",
    -300: "Device-specific error",
    -350: "Queue overflow",
    -363: "Input buffer overrun",
}

ERROR_QUEUE_LENGTH = 20
_HEADER_CHARS = re.compile(r"^[A-Za-z0-9_:*?]+$")


class ScpiError(Exception):
    """A command failed; raised by handlers, queued by the device as ``code,"text;detail"``."""

    def __init__(self, code: int, detail: str = ""):
        self.code, self.detail = code, detail
        super().__init__(f"{code} {SCPI_ERRORS.get(code, 'Error')}" + (f"; {detail}" if detail else ""))


# ================================================================================== headers
@dataclass(frozen=True)
class _Node:
    short: str
    long: str
    optional: bool

    def matches(self, token: str) -> bool:
        return token == self.short or token == self.long


@dataclass(frozen=True)
class HeaderPattern:
    """A compiled command header: its nodes and whether it is the query form."""

    text: str
    nodes: tuple[_Node, ...]
    query: bool

    @classmethod
    def compile(cls, text: str) -> "HeaderPattern":
        query = text.endswith("?")
        body = text[:-1] if query else text
        nodes: list[_Node] = []
        for optional, word in re.findall(r"(\[?):?([A-Za-z*][A-Za-z0-9]*)\]?", body):
            short = "".join(ch for ch in word if ch.isupper() or ch.isdigit() or ch == "*")
            nodes.append(_Node(short, word.upper(), bool(optional)))
        if not nodes:
            raise ValueError(f"empty SCPI header pattern {text!r}")
        return cls(text, tuple(nodes), query)

    def match(self, tokens: list[str]) -> bool:
        return self._match(0, tokens, 0)

    def _match(self, i: int, tokens: list[str], j: int) -> bool:
        if i == len(self.nodes):
            return j == len(tokens)
        node = self.nodes[i]
        if j < len(tokens) and node.matches(tokens[j]) and self._match(i + 1, tokens, j + 1):
            return True
        return node.optional and self._match(i + 1, tokens, j)


def scpi(*patterns: str) -> Callable[[Callable], Callable]:  # type: ignore[type-arg]
    """Declare a device method as the handler of one or more SCPI headers."""

    def mark(func: Callable) -> Callable:  # type: ignore[type-arg]
        func._scpi_patterns = getattr(func, "_scpi_patterns", ()) + patterns  # type: ignore[attr-defined]
        return func

    return mark


# ================================================================================== parameters
def _split_outside(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside quotes and parentheses (channel lists contain commas)."""
    parts, depth, quote, start = [], 0, "", 0
    for k, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(depth - 1, 0)
        elif ch == sep and depth == 0:
            parts.append(text[start:k])
            start = k + 1
    parts.append(text[start:])
    return parts


#: IEEE 488.2 (7.7.3.4) suffix multipliers. ``M`` is milli; mega is ``MA`` -- except in
#: ``MOHM`` and ``MHZ``, which SCPI (vol. 1, 7.2.1) reads as megohm and megahertz.
SUFFIX_MULTIPLIERS: dict[str, float] = {
    "EX": 1e18, "PE": 1e15, "T": 1e12, "G": 1e9, "MA": 1e6, "K": 1e3, "M": 1e-3,
    "U": 1e-6, "N": 1e-9, "P": 1e-12, "F": 1e-15, "A": 1e-18,
}
_MEGA_UNITS = {"MOHM": 1e6, "MHZ": 1e6}
_NUMERIC = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:\s*E\s*[+-]?\d+)?)\s*([A-Za-z/]*)$", re.I)
MAX_SUFFIX = 12  # IEEE 488.2 7.7.3.2: a suffix program data element is at most 12 characters


def parse_numeric(text: str, unit: str | None = None) -> float:
    """A decimal numeric program data element with its optional suffix, in base units.

    Why not ``float()``: a real instrument accepts ``14.2 V`` and ``500 mA`` (the unit is part
    of the SCPI grammar), and refuses ``inf``/``nan`` and ``1_0`` that Python would take.
    """
    match = _NUMERIC.match(text.strip())
    if match is None:
        code = -121 if text.strip()[:1] in "+-.0123456789" else -104
        raise ScpiError(code, text)
    mantissa, suffix = match.group(1).replace(" ", ""), match.group(2).upper()
    value = float(mantissa)
    if suffix:
        if len(suffix) > MAX_SUFFIX:
            raise ScpiError(-134, text)
        if unit is None:
            raise ScpiError(-138, text)
        value *= suffix_scale(suffix, unit.upper(), text)
    if not math.isfinite(value):
        raise ScpiError(-222, text)
    return value


def suffix_scale(suffix: str, unit: str, text: str) -> float:
    """The factor a suffix (``MV``, ``KOHM``, ``MOHM``) applies for a parameter in ``unit``."""
    if suffix == unit:
        return 1.0
    if suffix in _MEGA_UNITS and suffix.endswith(unit):
        return _MEGA_UNITS[suffix]
    if suffix.endswith(unit):
        multiplier = suffix[: -len(unit)]
        if multiplier in SUFFIX_MULTIPLIERS:
            return SUFFIX_MULTIPLIERS[multiplier]
    raise ScpiError(-131, f"{text} (unit {unit})")


class Args:
    """The parameters of one message unit, with typed accessors raising SCPI errors."""

    def __init__(self, text: str):
        text = text.strip()
        self.items = [p.strip() for p in _split_outside(text, ",")] if text else []

    def __len__(self) -> int:
        return len(self.items)

    def expect(self, least: int, most: int | None = None) -> None:
        most = least if most is None else most
        if len(self.items) < least:
            raise ScpiError(-109)
        if len(self.items) > most:
            raise ScpiError(-108)

    def number(self, k: int, low: float, high: float, default: float | None = None,
               unit: str | None = None) -> float:
        """A numeric parameter as IEEE 488.2 / SCPI define it, range-checked (-222 outside).

        ``MIN``/``MINimum`` and ``MAX``/``MAXimum`` give ``low``/``high``; ``DEF``/``DEFault``
        gives ``default`` (``-224`` where the command has none). ``unit`` is the parameter's
        SCPI unit (``"V"``, ``"A"``, ``"W"``, ``"OHM"``, ``"S"``): a suffix naming it, with an
        optional SI multiplier, is accepted (``14.2 V``, ``14.2V``, ``500 mA``, ``2 ms``); a
        parameter without a unit refuses any suffix (``-138``), a wrong one is ``-131``.
        """
        text = self.items[k].strip()
        word = text.upper()
        if word in ("MIN", "MINIMUM"):
            return low
        if word in ("MAX", "MAXIMUM"):
            return high
        if word in ("DEF", "DEFAULT"):
            if default is None:
                raise ScpiError(-224, text)
            return default
        value = parse_numeric(text, unit)
        if not low <= value <= high:
            raise ScpiError(-222, f"{text} not in [{low:g}, {high:g}]")
        return value

    def limit_query(self, low: float, high: float, default: float | None = None) -> str | None:
        """The optional ``MIN``/``MAX``/``DEF`` of a setting's query (``VOLT? MAX``): the
        formatted limit, or None when the query asks for the present setting."""
        self.expect(0, 1)
        if not self.items:
            return None
        word = self.items[0].upper()
        if word in ("MIN", "MINIMUM"):
            return format_reading(low)
        if word in ("MAX", "MAXIMUM"):
            return format_reading(high)
        if word in ("DEF", "DEFAULT") and default is not None:
            return format_reading(default)
        raise ScpiError(-224, self.items[0])

    def boolean(self, k: int) -> bool:
        text = self.items[k].upper()
        if text in ("ON", "1"):
            return True
        if text in ("OFF", "0"):
            return False
        raise ScpiError(-224, self.items[k])

    def choice(self, k: int, *words: str) -> str:
        """One of ``words`` (SCPI mnemonics, short or long form); returns the long form."""
        token = self.items[k].upper()
        for word in words:
            node = HeaderPattern.compile(word).nodes[0]
            if node.matches(token):
                return node.long
        raise ScpiError(-224, self.items[k])

    def channels(self, k: int) -> list[int]:
        """A channel list ``(@101,103:105)`` as channel numbers in the order given."""
        text = self.items[k].replace(" ", "")
        if not (text.startswith("(@") and text.endswith(")")):
            raise ScpiError(-104, f"expected a channel list, got {self.items[k]}")
        channels: list[int] = []
        for part in text[2:-1].split(","):
            try:
                first, _, last = part.partition(":")
                a, b = int(first), int(last or first)
            except ValueError:
                raise ScpiError(-104, f"bad channel {part!r}") from None
            if a // 100 != b // 100 or b < a:
                raise ScpiError(-222, f"channel range {part} must stay within one slot")
            channels.extend(range(a, b + 1))
        return channels


def format_reading(value: float) -> str:
    """Readings in the Keysight style (``+1.30599583E+01``)."""
    return f"{value:+.8E}"


# ================================================================================== device
Handler = Callable[["ScpiDevice", Args], "str | None"]


class ScpiDevice:
    """One emulated instrument: command tree, error queue, IEEE 488.2 common commands.

    Subclasses declare handlers with :func:`scpi`; a handler takes :class:`Args` and returns
    the reply text for a query (``None`` for a command) or raises :class:`ScpiError`.
    Commands execute one message unit at a time under the device lock, so several
    connections to one instrument see one consistent state, as on a real instrument.
    """

    idn: str = "Emulated,SCPI device,0,0"
    _table: ClassVar[list[tuple[HeaderPattern, str]]] = []

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls._build_table()

    @classmethod
    def _build_table(cls) -> None:
        """Collect the handlers declared with :func:`scpi` on this class and its bases."""
        table: list[tuple[HeaderPattern, str]] = []
        for klass in reversed(cls.__mro__):
            for attr, func in vars(klass).items():
                for pattern in getattr(func, "_scpi_patterns", ()):
                    table.append((HeaderPattern.compile(pattern), attr))
        cls._table = table

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.errors: deque[tuple[int, str]] = deque()
        self.closing = threading.Event()
        self._resolved: dict[tuple[str, bool], tuple[Handler, list[str]] | None] = {}

    # -- error queue -------------------------------------------------------------------------
    def push_error(self, code: int, detail: str = "") -> None:
        text = SCPI_ERRORS.get(code, "Error") + (f";{detail}" if detail else "")
        with self.lock:
            if len(self.errors) >= ERROR_QUEUE_LENGTH:
                self.errors[-1] = (-350, SCPI_ERRORS[-350])
            else:
                self.errors.append((code, text))

    def next_error(self) -> str:
        with self.lock:
            code, text = self.errors.popleft() if self.errors else (0, SCPI_ERRORS[0])
        return f'{code:+d},"{text}"'

    # -- execution ---------------------------------------------------------------------------
    def execute(self, line: str) -> str | None:
        """Run one program message; the reply line (without terminator), or None if no query."""
        replies: list[str] = []
        path: list[str] = []
        with self.lock:
            for unit in _split_outside(line, ";"):
                unit = unit.strip()
                if not unit:
                    continue
                header, _, params = unit.partition(" ")
                if "\t" in header:
                    header, _, rest = header.partition("\t")
                    params = rest + " " + params
                is_query = header.endswith("?")
                try:
                    handler, path = self._resolve(header, path)
                    reply = handler(self, Args(params))
                    if is_query:
                        replies.append("" if reply is None else str(reply))
                except ScpiError as exc:
                    self.push_error(exc.code, exc.detail)
                    if is_query:
                        replies.append("")
                except Exception:  # a handler bug must not take the server down
                    log.exception("%s: command %r failed", type(self).__name__, unit)
                    self.push_error(-300, "emulator fault")
                    if is_query:
                        replies.append("")
        return ";".join(replies) if replies else None

    def _resolve(self, header: str, path: list[str]) -> tuple[Handler, list[str]]:
        if not _HEADER_CHARS.match(header):
            raise ScpiError(-101, header[:40].encode("unicode_escape").decode("ascii"))
        query = header.endswith("?")
        body = header[:-1] if query else header
        if body.startswith("*"):
            found = self._lookup(body.upper(), query)
            if found is None:
                raise ScpiError(-113)
            return found[0], path
        absolute = body.startswith(":")
        tokens = [t for t in body.upper().lstrip(":").split(":")]
        if any(not t for t in tokens):
            raise ScpiError(-102, header)
        candidates = [tokens] if absolute or not path else [path + tokens, tokens]
        for full in candidates:
            found = self._lookup(":".join(full), query)
            if found is not None:
                return found[0], full[:-1]
        raise ScpiError(-113)

    def _lookup(self, key: str, query: bool) -> tuple[Handler, list[str]] | None:
        cache_key = (key, query)
        if cache_key not in self._resolved:
            tokens = key.split(":")
            found = None
            for pattern, attr in self._table:
                if pattern.query == query and pattern.match(tokens):
                    found = (getattr(type(self), attr), tokens)
                    break
            if len(self._resolved) < 4096:
                self._resolved[cache_key] = found
            return found
        return self._resolved[cache_key]

    # -- IEEE 488.2 common commands and SYSTem ------------------------------------------------
    @scpi("*IDN?")
    def _idn(self, args: Args) -> str:
        args.expect(0)
        return self.idn

    @scpi("*RST")
    def _rst(self, args: Args) -> None:
        args.expect(0)
        self.reset()

    @scpi("*CLS")
    def _cls(self, args: Args) -> None:
        args.expect(0)
        self.errors.clear()

    @scpi("*OPC?")
    def _opc_query(self, args: Args) -> str:
        args.expect(0)
        return "1"

    @scpi("*OPC", "*WAI")
    def _opc(self, args: Args) -> None:
        args.expect(0)

    @scpi("*ESR?")
    def _esr(self, args: Args) -> str:
        args.expect(0)
        return "0"

    @scpi("SYSTem:ERRor[:NEXT]?")
    def _syst_err(self, args: Args) -> str:
        args.expect(0)
        return self.next_error()

    @scpi("SYSTem:VERSion?")
    def _syst_vers(self, args: Args) -> str:
        args.expect(0)
        return "1999.0"

    def reset(self) -> None:
        """``*RST``: the instrument's power-on settings. Subclasses extend."""


ScpiDevice._build_table()


# ================================================================================== server
def _require_loopback(host: str) -> None:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"emulated instruments listen on loopback only, not {host}")


class ScpiServer:
    """Serve one :class:`ScpiDevice` on 127.0.0.1 (``port=0``: a free port, see :attr:`port`).

    :meth:`freeze` makes the instrument stop answering (it still reads its input), so tests
    can exercise a hung instrument; :attr:`history` keeps the last lines received, so a test
    can prove a command was never sent.

    Connection limits: at most ``max_connections`` at once; one more is accepted and closed
    straight away (the client sees the connection end at once, not a hang). A connection that
    sends nothing for ``idle_timeout_s`` seconds -- or leaves a reply unread that long -- is
    closed (``None``: never). :attr:`stats` counts ``accepted``, ``refused`` and
    ``idle_closed`` connections.

    Why the idle default is minutes, not seconds: a driver holds its connection for a whole
    run and does not reconnect, and pyvisa-py takes a connection the server closed for a
    *timeout* (the command sent on it is lost -- a safe-state ``OUTP OFF`` included). In the
    harness's in-process emulated mode nothing polls an instrument between uses, and tests
    hold a probe connection idle while a run starts (tests/test_kill_safety.py: 13-22 s on
    a loaded machine, up to ~150 s allowed). With 64 slots, a few forgotten connections
    lock nobody out; the timeout only has to reclaim them eventually.
    """

    def __init__(self, device: ScpiDevice, port: int = 0, host: str = "127.0.0.1",
                 name: str = "", max_line: int = 1 << 16, max_connections: int = 64,
                 idle_timeout_s: float | None = 300.0):
        _require_loopback(host)
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if idle_timeout_s is not None and not idle_timeout_s > 0:
            raise ValueError("idle_timeout_s must be positive (or None: no timeout)")
        self.device, self.name = device, name or type(device).__name__
        self.max_line, self.max_connections = max_line, max_connections
        self.idle_timeout_s = idle_timeout_s
        self.stats: dict[str, int] = {"accepted": 0, "refused": 0, "idle_closed": 0}
        self.history: deque[str] = deque(maxlen=1000)
        self._frozen = threading.Event()
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((host, port))
            self._listener.listen(min(max_connections, socket.SOMAXCONN))
        except OSError:
            self._listener.close()
            raise
        self.host, self.port = self._listener.getsockname()[:2]
        self._wake_r, self._wake_w = socket.socketpair()
        self._connections: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._guard = threading.Lock()
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"scpi-{self.name}-accept",
                                          daemon=True)
        self._acceptor.start()

    @property
    def resource(self) -> str:
        """The VISA resource string a driver opens to reach this instrument."""
        return f"TCPIP0::{self.host}::{self.port}::SOCKET"

    def freeze(self) -> None:
        """Stop answering (input is read and discarded) until :meth:`thaw`."""
        self._frozen.set()

    def thaw(self) -> None:
        self._frozen.clear()

    # -- connections -------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stop.is_set():
                ready = [key.fileobj for key, _ in selector.select()]
                if self._stop.is_set() or self._listener not in ready:
                    continue
                try:
                    conn, peer = self._listener.accept()
                except OSError as exc:
                    log.info("%s: accept failed: %s", self.name, exc)
                    continue
                with self._guard:
                    if len(self._connections) >= self.max_connections:
                        self.stats["refused"] += 1
                        refused = self.stats["refused"]
                        if refused == 1 or refused % 100 == 0:  # a flood must not flood the log
                            log.warning("%s: refusing %s, %d connections open (%d refused so far)",
                                        self.name, peer, len(self._connections), refused)
                        conn.close()  # at once: the client sees EOF, not a hang
                        continue
                    self.stats["accepted"] += 1
                    self._connections.add(conn)
                    thread = threading.Thread(target=self._serve, args=(conn, peer), daemon=True,
                                              name=f"scpi-{self.name}-{peer[1]}")
                    self._threads = [t for t in self._threads if t.is_alive()] + [thread]
                thread.start()

    def _serve(self, conn: socket.socket, peer: tuple) -> None:  # type: ignore[type-arg]
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(self.idle_timeout_s)  # bounds each recv (idle) and sendall (unread reply)
        log.debug("%s: connection from %s", self.name, peer)
        try:
            for line in self._lines(conn):
                self.history.append(line[:200])
                if self._frozen.is_set():
                    continue
                reply = self.device.execute(line)
                if reply is not None:
                    conn.sendall(reply.encode("latin-1", "replace") + b"\n")
        except TimeoutError:
            with self._guard:
                self.stats["idle_closed"] += 1
            log.info("%s: connection from %s closed: nothing sent (or no reply taken) for %g s",
                     self.name, peer, self.idle_timeout_s)
        except OSError as exc:  # reset by peer, broken pipe, shut down by close()
            if not self._stop.is_set():
                log.info("%s: connection from %s ended: %s", self.name, peer, exc)
        except Exception:
            log.exception("%s: connection from %s failed", self.name, peer)
        finally:
            with self._guard:
                self._connections.discard(conn)
            conn.close()

    def _lines(self, conn: socket.socket) -> Iterator[str]:
        """Decoded lines from a connection; over-long lines are dropped with -363."""
        buffer = bytearray()
        overrun = False
        while not self._stop.is_set():
            data = conn.recv(65536)
            if not data:
                return
            buffer += data
            while True:
                end = buffer.find(b"\n")
                if end < 0:
                    break
                raw = bytes(buffer[:end])
                del buffer[:end + 1]
                if overrun:  # the tail of a line already dropped
                    overrun = False
                    continue
                yield raw.rstrip(b"\r").decode("latin-1")
            if len(buffer) > self.max_line:
                if not overrun:
                    log.warning("%s: input line over %d bytes dropped", self.name, self.max_line)
                    self.device.push_error(-363, f"line over {self.max_line} bytes")
                overrun = True
                buffer.clear()

    # -- shutdown ----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop accepting, end every connection and join the threads."""
        if self._stop.is_set():
            return
        self._stop.set()
        self.device.closing.set()
        self._wake_w.send(b"x")
        self._acceptor.join(timeout=2.0)
        with self._guard:
            connections, threads = list(self._connections), list(self._threads)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(timeout=2.0)
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> "ScpiServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
