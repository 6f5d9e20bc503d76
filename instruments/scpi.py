"""SCPI instruments over pyvisa: one base class, properties declared once.

Why a base class: every SCPI driver needs the same few guarantees, and a bench is only as safe
as the weakest driver --

- every command is followed by ``SYST:ERR?``, so an instrument that silently refused a
  setpoint (``-222,"Data out of range"``) fails the step that sent it, not a later one;
- every failure (instrument error, timeout, dropped connection, a reply that does not parse)
  becomes :class:`~instruments.roles.InstrumentError` naming instrument, resource and command,
  never a bare pyvisa or parsing exception;
- a setpoint above the station's rating for the instrument is refused with
  :class:`~instruments.roles.SetpointRefused` *before* anything is sent;
- after an I/O failure the next command first clears the session, so a late reply to a timed
  out query is not read as the answer to the next one.

Drivers declare SCPI properties with :func:`control` / :func:`measurement` (a descriptor: get
command, set command, codec, validator, rating key) instead of hand-written getters/setters.

The session is always a pyvisa resource (``visa_library="@py"`` by default, any VISA resource
string a station names); tests of exact bytes may pass an already-open pyvisa-like ``session``.
"""

from __future__ import annotations

import math
import numbers
import re
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Protocol

import pyvisa
from pyvisa.constants import StatusCode
from pyvisa.errors import VisaIOError

from instruments.roles import Instrument, InstrumentError, SetpointRefused

OVERLOAD = 9.9e37  # SCPI's overload / not-a-number readings are 9.9E37 and 9.91E37


class VisaSession(Protocol):
    """What a driver needs of a pyvisa message-based resource."""

    timeout: float  # ms

    def write(self, message: str) -> Any: ...

    def read(self) -> str: ...

    def clear(self) -> Any: ...

    def close(self) -> Any: ...


# ================================================================================== codecs
def format_number(value: float) -> str:
    """Shortest faithful text for a number (``14.4``, ``2e-05``, ``100``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{float(value):.10g}"


def parse_float(text: str) -> float:
    """One reading; overload and NaN markers are errors, not numbers."""
    value = float(text.strip())
    if not math.isfinite(value) or abs(value) >= OVERLOAD:
        raise ValueError(f"overload or invalid reading {text.strip()}")
    return value


def floats(count: int | None = None) -> Callable[[str], list[float]]:
    """A parser for comma-separated readings, exactly ``count`` of them if given."""

    def parse(text: str) -> list[float]:
        items = text.strip().split(",") if text.strip() else []
        if count is not None and len(items) != count:
            raise ValueError(f"expected {count} value(s), got {len(items)}")
        if not items:
            raise ValueError("empty reply")
        return [parse_float(item) for item in items]

    return parse


def parse_bool(text: str) -> bool:
    word = text.strip().upper()
    if word in ("1", "ON"):
        return True
    if word in ("0", "OFF"):
        return False
    raise ValueError(f"not a boolean: {text.strip()!r}")


def parse_word(text: str) -> str:
    word = text.strip().strip('"').upper()
    if not word or not re.fullmatch(r"[A-Z0-9_+\-.]+", word):
        raise ValueError(f"not a SCPI word: {text.strip()!r}")
    return word


def parse_int(text: str) -> int:
    value = float(text.strip())
    if not value.is_integer():
        raise ValueError(f"not an integer: {text.strip()!r}")
    return int(value)


@dataclass(frozen=True)
class Codec:
    """How a property's value is written into a command and read back from a reply."""

    format: Callable[[Any], str]
    parse: Callable[[str], Any]


FLOAT = Codec(format_number, parse_float)
INT = Codec(lambda v: str(int(v)), parse_int)
ON_OFF = Codec(lambda v: "ON" if v else "OFF", parse_bool)
WORD = Codec(lambda v: str(v).upper(), parse_word)


# ================================================================================== validators
Validator = Callable[[Any], Any]


def in_range(low: float = -math.inf, high: float = math.inf) -> Validator:
    """A finite number within [low, high]."""

    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{value!r} is not a number")
        if not math.isfinite(value) or not low <= value <= high:
            raise ValueError(f"{value!r} is outside [{low:g}, {high:g}]")
        return value

    return check


non_negative = in_range(0.0)


def int_range(low: int, high: int) -> Validator:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
            raise ValueError(f"{value!r} is not an integer in [{low}, {high}]")
        return value

    return check


def one_of(*words: str) -> Validator:
    def check(value: Any) -> str:
        if str(value).upper() not in words:
            raise ValueError(f"{value!r} is not one of {', '.join(words)}")
        return str(value).upper()

    return check


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not a bool")
    return value


# ================================================================================== properties
class Control:
    """A SCPI property: reading it queries ``get_cmd``, assigning it sends ``set_cmd``.

    ``set_cmd`` has one ``{}`` for the formatted value. ``rating`` names the key of the
    instrument's rating (``"voltage_v"``) that bounds the value: above it, the assignment is
    refused before anything is sent.
    """

    def __init__(self, get_cmd: str | None, set_cmd: str | None, doc: str, codec: Codec = FLOAT,
                 validator: Validator | None = None, rating: str | None = None):
        self.get_cmd, self.set_cmd, self.codec = get_cmd, set_cmd, codec
        self.validator, self.rating = validator, rating
        commands = " / ".join(c for c in (get_cmd, set_cmd) if c)
        self.__doc__ = f"{doc} (SCPI {commands})"
        self.attr = "?"

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = name

    def __get__(self, obj: "ScpiInstrument | None", owner: type) -> Any:
        if obj is None:
            return self
        if self.get_cmd is None:
            raise AttributeError(f"{self.attr} is write-only")
        return obj.query_value(self.get_cmd, self.codec.parse)

    def __set__(self, obj: "ScpiInstrument", value: Any) -> None:
        obj.write(self.command_for(obj, value))

    def command_for(self, obj: "ScpiInstrument", value: Any) -> str:
        """The command that sets ``value``, after validation and the rating check."""
        if self.set_cmd is None:
            raise AttributeError(f"{self.attr} is read-only")
        try:
            checked = self.validator(value) if self.validator else value
            command = self.set_cmd.format(self.codec.format(checked))
        except (ValueError, TypeError) as exc:
            raise SetpointRefused(obj.name, obj.resource, self.set_cmd.format(value),
                                  f"{self.attr}: {exc}") from None
        limit = obj.rating.get(self.rating) if self.rating else None
        if limit is not None and checked > limit:
            raise SetpointRefused(obj.name, obj.resource, command,
                                  f"{self.attr} {checked:g} is above the rating {self.rating}={limit:g}")
        return command


def control(get_cmd: str | None, set_cmd: str | None, doc: str, codec: Codec = FLOAT,
            validator: Validator | None = None, rating: str | None = None) -> Any:
    """Declare a SCPI property (in the spirit of PyMeasure's ``Instrument.control``)."""
    return Control(get_cmd, set_cmd, doc, codec, validator, rating)


def measurement(get_cmd: str, doc: str, codec: Codec = FLOAT) -> Any:
    """Declare a read-only SCPI property."""
    return Control(get_cmd, None, doc, codec)


# ================================================================================== base class
def _disable_nagle(session: Any) -> None:
    """Turn Nagle's algorithm off on a raw-socket session.

    A command followed by ``SYST:ERR?`` is two small sends; with Nagle on, the second waits
    for the ACK of the first, which the instrument delays (~40 ms on Linux): every checked
    write would take 40 ms instead of 0.1 ms. NI-VISA sets ``VI_ATTR_TCPIP_NODELAY`` by
    default; pyvisa-py 0.8 does not, and rejects setting it (its setter is not wired up), so
    we fall back to the socket its session holds. Best effort: a backend without either keeps
    working, only slower.
    """
    try:
        session.set_visa_attribute(pyvisa.constants.VI_ATTR_TCPIP_NODELAY, pyvisa.constants.VI_TRUE)
        return
    except Exception:
        pass
    try:
        sock = session.visalib.sessions[session.session].interface
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except Exception:
        pass


_ERROR_REPLY = re.compile(r'^\s*([+-]?\d+)\s*,\s*"(.*)"\s*$')
MAX_DRAINED_ERRORS = 20


class ScpiInstrument(Instrument):
    """A SCPI instrument reached through pyvisa, with error checking after every command.

    ``options`` (all optional): ``read_termination`` / ``write_termination`` (``"\\n"``),
    ``error_query`` (``"SYST:ERR?"``), ``clear_on_open`` (send ``*CLS`` when connecting, so an
    old error is not blamed on our first command; default True); drivers add their own.
    """

    OPTIONS: ClassVar[dict[str, Any]] = {
        "read_termination": "\n",
        "write_termination": "\n",
        "error_query": "SYST:ERR?",
        "clear_on_open": True,
    }

    def __init__(self, resource: str, name: str, rating: dict[str, float] | None = None,
                 timeout_s: float = 2.0, visa_library: str = "@py",
                 options: dict[str, Any] | None = None, *, session: VisaSession | None = None):
        self.resource, self.name = resource, name
        self.rating = dict(rating or {})
        self.timeout_s = float(timeout_s)
        unknown = set(options or {}) - set(self.OPTIONS)
        if unknown:
            raise ValueError(f"{name}: unknown option(s) {', '.join(sorted(unknown))} for "
                             f"{type(self).__name__} (known: {', '.join(sorted(self.OPTIONS))})")
        self.options = {**self.OPTIONS, **(options or {})}
        self._lock = threading.RLock()
        self._dirty = False
        self._step = ""
        self._session = session if session is not None else self._open(visa_library)
        if self.options["clear_on_open"]:
            try:
                self.write("*CLS")
            except InstrumentError:
                self.close()
                raise

    def _open(self, visa_library: str) -> VisaSession:
        timeout_ms = self.timeout_s * 1000.0
        try:
            manager = pyvisa.ResourceManager(visa_library)
        except Exception as exc:  # pyvisa: OSError/ValueError, often without a word of detail
            raise InstrumentError(self.name, self.resource, "open",
                                  f"VISA backend {visa_library} not available ({exc or type(exc).__name__}): "
                                  "@ivi needs a vendor VISA (Keysight IO Libraries, NI-VISA) installed; "
                                  "@py (pyvisa-py) needs nothing more") from exc
        try:
            session = manager.open_resource(
                self.resource, open_timeout=int(timeout_ms), timeout=timeout_ms,
                read_termination=self.options["read_termination"],
                write_termination=self.options["write_termination"])
        except Exception as exc:
            raise InstrumentError(self.name, self.resource, "open", f"cannot open: {exc}") from exc
        if self.resource.upper().endswith("::SOCKET"):
            _disable_nagle(session)
        return session  # type: ignore[return-value]

    # -- transactions ------------------------------------------------------------------------
    @contextmanager
    def _transaction(self, command: str) -> Iterator[None]:
        """One exchange under the driver lock; I/O failures become InstrumentError."""
        if self.before_io is not None:
            self.before_io()
        with self._lock:
            if self._dirty:
                self._resync()
            clean = False
            try:
                yield
                clean = True
            except InstrumentError:
                clean = True  # the instrument answered: the session is in step
                raise
            except VisaIOError as exc:
                raise self._error(command, self._describe_io(exc)) from exc
            except pyvisa.errors.Error as exc:  # e.g. InvalidSession: used after close()
                raise self._error(command, f"VISA error during '{self._step}': {exc}") from exc
            except UnicodeDecodeError as exc:
                raise self._error(command, f"reply to '{self._step}' is not text: "
                                           f"{exc.object[:40]!r}") from exc
            except OSError as exc:
                raise self._error(command, f"connection failed during '{self._step}': {exc}") from exc
            finally:
                if not clean:
                    self._dirty = True

    def _describe_io(self, exc: VisaIOError) -> str:
        if exc.error_code == StatusCode.error_timeout:
            return f"no reply to '{self._step}' within {self.timeout_s:g} s (timeout)"
        return f"I/O error during '{self._step}': {exc.description or exc}"

    def _error(self, command: str, problem: str) -> InstrumentError:
        return InstrumentError(self.name, self.resource, command, problem)

    def _resync(self) -> None:
        """Discard whatever a failed exchange left in the input (a late reply)."""
        try:
            self._session.clear()
        except Exception:  # best effort: the next exchange reports a dead link itself
            pass
        self._dirty = False

    def _send(self, message: str) -> None:
        self._step = message
        self._session.write(message)

    def _ask(self, message: str) -> str:
        self._send(message)
        return self._session.read().strip()

    def _check_errors(self, command: str) -> None:
        """Read the error queue after ``command``; any error fails that command."""
        errors: list[str] = []
        for _ in range(MAX_DRAINED_ERRORS):
            reply = self._ask(self.options["error_query"])
            match = _ERROR_REPLY.match(reply)
            if match is None:
                raise self._error(command, f"unparseable reply {reply!r} to {self.options['error_query']}")
            if int(match.group(1)) == 0:
                break
            errors.append(f'{int(match.group(1))},"{match.group(2)}"')
        if errors:
            raise self._error(command, "instrument error " + "; then ".join(errors))

    def _pending_errors(self) -> str:
        """Best effort, after a bad reply: what the instrument's error queue says about it."""
        try:
            self._check_errors("")
        except InstrumentError as exc:
            return f"; {exc.problem}"
        except Exception:
            self._dirty = True
        return ""

    # -- public I/O --------------------------------------------------------------------------
    def write(self, command: str, check: bool = True) -> None:
        """Send a command, then (``check``) read ``SYST:ERR?``: an error raises, naming it."""
        with self._transaction(command):
            self._send(command)
            if check:
                self._check_errors(command)

    def query(self, command: str) -> str:
        """Send a query and return its reply line (stripped)."""
        with self._transaction(command):
            return self._ask(command)

    def query_value(self, command: str, parse: Callable[[str], Any] = parse_float) -> Any:
        """Query and parse; a reply that does not parse raises, with the instrument's error."""
        with self._transaction(command):
            reply = self._ask(command)
            try:
                return parse(reply)
            except (ValueError, TypeError) as exc:
                detail = self._pending_errors()
                raise self._error(command, f"unparseable reply {reply[:80]!r}: {exc}{detail}") from None

    @contextmanager
    def longer_timeout(self, extra_s: float) -> Iterator[None]:
        """Allow ``extra_s`` more than the timeout (a capture that takes that long to finish)."""
        with self._lock:
            self._session.timeout = (self.timeout_s + max(extra_s, 0.0)) * 1000.0
            try:
                yield
            finally:
                self._session.timeout = self.timeout_s * 1000.0

    # -- Instrument --------------------------------------------------------------------------
    def identity(self) -> str:
        reply = self.query("*IDN?")
        if len(reply.split(",")) < 4:  # IEEE 488.2: maker, model, serial, firmware
            raise self._error("*IDN?", f"unparseable identity {reply[:80]!r}")
        return reply

    def reset(self) -> None:
        """``*RST`` then ``*CLS``: the instrument's power-on settings, an empty error queue."""
        self.write("*RST")
        self.write("*CLS")

    def close(self) -> None:
        with self._lock:
            try:
                self._session.close()
            except Exception:  # closing a dead link must not mask the error that killed it
                pass

    def __enter__(self) -> "ScpiInstrument":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.resource!r})"
