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

A *shared* instrument (option ``shared``; a station file's ``shared: true``) is one several
processes talk to -- two sockets of an end-of-line station on one DAQ970A or one AC-IR meter.
Every exchange, and every public driver method as a whole, then holds an inter-process lock
(``fcntl.flock`` on a file named after the resource, see :class:`SharedLock`), so one process's
command and its ``SYST:ERR?`` (or a capture's arm ... fetch) never interleave with another's.
An instrument that is not shared takes no file lock at all.

The session is always a pyvisa resource (``visa_library="@py"`` by default, any VISA resource
string a station names); tests of exact bytes may pass an already-open pyvisa-like ``session``.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import math
import numbers
import os
import re
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Protocol

try:
    import fcntl
except ImportError:  # not a POSIX platform: shared instruments are refused at construction
    fcntl = None  # type: ignore[assignment]

import pyvisa
from pyvisa.constants import StatusCode
from pyvisa.errors import VisaIOError

from instruments.roles import Instrument, InstrumentError, SetpointRefused

OVERLOAD = 9.9e37  # SCPI's overload / not-a-number readings are 9.9E37 and 9.91E37
log = logging.getLogger(__name__)


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


# ================================================================================== shared instruments
LOCK_DIR_ENV = "BANKHIL_LOCK_DIR"
_POLL_FIRST_S, _POLL_MAX_S = 0.0005, 0.005  # a waiter polls the lock this often (backing off)


def lock_dir() -> Path:
    """Where the lock files of shared instruments live: ``$BANKHIL_LOCK_DIR``, or
    ``<tempdir>/bankhil-locks``. Every process sharing an instrument must see the same one."""
    configured = os.environ.get(LOCK_DIR_ENV, "").strip()
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "bankhil-locks"


def canonical_resource(resource: str) -> str:
    """The resource string two station files may spell differently for one instrument, in one
    spelling: upper case, board 0 written out (``TCPIP::`` -> ``TCPIP0::``), the default
    VXI-11 device written out (``TCPIP0::host::INSTR`` -> ``TCPIP0::host::INST0::INSTR``).
    A host name and its IP address stay different: name the instrument the same way in each."""
    text = resource.strip().upper()
    text = re.sub(r"^(TCPIP|GPIB|USB|ASRL|VXI|PXI)::", r"\g<1>0::", text)
    parts = text.split("::")
    if parts[0].startswith("TCPIP") and len(parts) == 3 and parts[2] == "INSTR":
        parts.insert(2, "INST0")
    return "::".join(parts)


def lock_path(resource: str, directory: Path | None = None) -> Path:
    """The lock file of ``resource``: ``<lock_dir>/<sha1 of the canonical resource>.lock``."""
    digest = hashlib.sha1(canonical_resource(resource).encode("utf-8")).hexdigest()
    return (directory or lock_dir()) / f"{digest}.lock"


class SharedLock:
    """The inter-process lock of one shared instrument, one object per lock file per process.

    - ``flock(LOCK_EX)`` on ``<sha1>.lock`` is the lock itself; the kernel drops it when the
      holding process dies, so a crashed socket never leaves the instrument locked.
    - a waiter first takes ``<sha1>.gate`` (a turnstile), then the lock: a holder that lets go
      and wants it back at once must pass the gate too, so it cannot starve a waiting peer.
    - re-entrant within the process: ``depth`` counts the holders (nested exclusive sections,
      a transaction inside a driver method, a capture span); the file is locked on 0 -> 1 and
      unlocked on 1 -> 0. Other threads of the same process join the hold (serialising threads
      is the driver's own thread lock).
    - the wait is bounded (polling with ``LOCK_NB``): :meth:`acquire` returns False at the
      deadline, the caller raises.

    The holder writes ``pid <pid> <who>`` into the lock file, for the error a waiter raises.
    """

    _registry: ClassVar[dict[str, "SharedLock"]] = {}
    _registry_guard = threading.Lock()

    def __init__(self, path: Path, resource: str):
        self.path, self.resource = path, resource
        self.gate_path = path.with_suffix(".gate")
        self.depth = 0
        self._mutex = threading.Lock()
        self._fd: int | None = None
        self._gate_fd: int | None = None

    @classmethod
    def for_resource(cls, resource: str) -> "SharedLock":
        path = lock_path(resource)
        with cls._registry_guard:
            lock = cls._registry.get(str(path))
            if lock is None:
                lock = cls._registry[str(path)] = cls(path, resource)
            return lock

    @classmethod
    def _after_fork(cls) -> None:
        """In a forked child: the parent's holds are not ours (flock belongs to the open file,
        which a fork shares), so forget them without unlocking, and reopen on next use."""
        cls._registry_guard = threading.Lock()
        for lock in cls._registry.values():
            for fd in (lock._fd, lock._gate_fd):
                if fd is not None:
                    try:
                        os.close(fd)  # our copy only: the parent's lock stays with the parent
                    except OSError:
                        pass
            lock._fd = lock._gate_fd = None
            lock.depth = 0
            lock._mutex = threading.Lock()

    def _open(self) -> None:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._gate_fd = os.open(self.gate_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)

    @staticmethod
    def _try(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    @staticmethod
    def _poll(fd: int, deadline: float) -> bool:
        pause = _POLL_FIRST_S
        while True:
            if SharedLock._try(fd):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(pause, left))
            pause = min(pause * 2, _POLL_MAX_S)

    def acquire(self, wait_s: float, who: str = "") -> bool:
        """Hold the lock (joining this process's hold if there is one) within ``wait_s``."""
        deadline = time.monotonic() + max(wait_s, 0.0)
        if not self._mutex.acquire(timeout=max(wait_s, 0.0)):
            return False  # another thread of ours is still waiting for the file, as long as we may
        try:
            if self.depth > 0:
                self.depth += 1
                return True
            self._open()
            assert self._fd is not None and self._gate_fd is not None
            if not self._poll(self._gate_fd, deadline):
                return False
            try:
                if not self._poll(self._fd, deadline):
                    return False
            finally:
                fcntl.flock(self._gate_fd, fcntl.LOCK_UN)
            self.depth = 1
            self._note_holder(who)
            return True
        finally:
            self._mutex.release()

    def join(self) -> bool:
        """One more hold, if this process holds the lock already (never waits); else False."""
        with self._mutex:
            if self.depth <= 0:
                return False
            self.depth += 1
            return True

    def release(self) -> None:
        with self._mutex:
            if self.depth <= 0:
                return
            self.depth -= 1
            if self.depth == 0 and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _note_holder(self, who: str) -> None:
        try:
            text = f"pid {os.getpid()} {who}".strip()[:200].encode("utf-8", "replace")
            os.ftruncate(self._fd, 0)  # type: ignore[arg-type]
            os.pwrite(self._fd, text, 0)  # type: ignore[arg-type]
        except OSError:  # only a diagnostic
            pass

    def holder(self) -> str:
        """Who holds (or last held) the lock, as the holder wrote it ('' if unknown)."""
        try:
            return self.path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return ""


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=SharedLock._after_fork)


_ERROR_REPLY = re.compile(r'^\s*([+-]?\d+)\s*,\s*"(.*)"\s*$')
MAX_DRAINED_ERRORS = 20


class ScpiInstrument(Instrument):
    """A SCPI instrument reached through pyvisa, with error checking after every command.

    ``options`` (all optional): ``read_termination`` / ``write_termination`` (``"\\n"``),
    ``error_query`` (``"SYST:ERR?"``), ``clear_on_open`` (send ``*CLS`` when connecting, so an
    old error is not blamed on our first command; default True); drivers add their own.

    ``shared`` (an option, or the keyword; not in :attr:`OPTIONS` because a station file says
    it as the instrument's ``shared: true``): other processes use the same instrument. Then

    - every transaction holds the instrument's :class:`SharedLock` (``fcntl.flock``) for the
      command and its error check; every public method of the driver (``measure``,
      ``arm_digitise``, ``reset``, ...) holds it for all its commands; a driver or a check may
      hold it over more with :meth:`exclusive`;
    - a capture (:attr:`EXCLUSIVE_SPANS`: ``arm_digitise``) holds it until the method that
      ends it (``fetch_waveform``, ``safe_state``, ``reset`` or ``close``) has run, so no peer
      reconfigures the meter between arm and fetch;
    - a wait longer than ``timeout_s * LOCK_WAIT_FACTOR`` raises InstrumentError ("held by
      another socket"); ``safe_state`` waits at most :attr:`SAFE_STATE_LOCK_WAIT_S` and then
      goes safe without the lock (logged): a hung peer must not keep this socket energised.

    Not shared, none of this happens: no lock file, no wrapper, not one extra system call.
    """

    OPTIONS: ClassVar[dict[str, Any]] = {
        "read_termination": "\n",
        "write_termination": "\n",
        "error_query": "SYST:ERR?",
        "clear_on_open": True,
    }
    #: a shared instrument waits at most timeout_s x this for a peer to let go of it
    LOCK_WAIT_FACTOR: ClassVar[float] = 10.0
    #: ... and at most this long in safe_state, which then goes ahead without the lock
    SAFE_STATE_LOCK_WAIT_S: ClassVar[float] = 0.5
    #: a method that starts a sequence spanning calls -> the methods that end it (and close)
    EXCLUSIVE_SPANS: ClassVar[dict[str, tuple[str, ...]]] = {
        "arm_digitise": ("fetch_waveform", "safe_state", "reset"),  # a Dmm capture (roles.Dmm)
    }

    _shared: "SharedLock | None" = None

    def __init__(self, resource: str, name: str, rating: dict[str, float] | None = None,
                 timeout_s: float = 2.0, visa_library: str = "@py",
                 options: dict[str, Any] | None = None, *, session: VisaSession | None = None,
                 shared: bool | None = None):
        self.resource, self.name = resource, name
        self.rating = dict(rating or {})
        self.timeout_s = float(timeout_s)
        options = dict(options or {})
        shared = options.pop("shared", False) if shared is None else shared
        if not isinstance(shared, bool):
            raise ValueError(f"{name}: shared must be true or false, not {shared!r}")
        unknown = set(options or {}) - set(self.OPTIONS)
        if unknown:
            raise ValueError(f"{name}: unknown option(s) {', '.join(sorted(unknown))} for "
                             f"{type(self).__name__} (known: {', '.join(sorted(self.OPTIONS))})")
        self.options = {**self.OPTIONS, **(options or {})}
        self._lock = threading.RLock()
        self._dirty = False
        self._step = ""
        if shared:
            self._share()
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
        held = self._shared is not None and self._hold(command)  # shared: the file lock first
        try:
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
        finally:
            if held:
                self._shared.release()  # type: ignore[union-attr]

    # -- shared instruments ------------------------------------------------------------------
    def _share(self) -> None:
        """Make this driver take the instrument's inter-process lock per use (see the class)."""
        if fcntl is None:
            raise InstrumentError(self.name, self.resource, "open",
                                  "shared: true needs fcntl.flock (Linux or another POSIX system); "
                                  "this platform has none, so sockets cannot share an instrument here")
        self._shared = SharedLock.for_resource(self.resource)
        self._bypass = threading.local()  # set while safe_state goes ahead without the lock
        self._span = False
        self._span_guard = threading.Lock()
        stop = ScpiInstrument
        seen: set[str] = set()
        for klass in type(self).__mro__:
            if klass is stop:
                break
            for attr, value in vars(klass).items():
                if attr in seen:
                    continue
                seen.add(attr)
                if not attr.startswith("_") and inspect.isfunction(value) and attr != "close":
                    setattr(self, attr, self._exclusive_method(attr, getattr(self, attr)))
        for attr in ("reset", "safe_state"):  # inherited from here (reset) or the role: wrap anyway
            if attr not in seen and callable(getattr(self, attr, None)):
                setattr(self, attr, self._exclusive_method(attr, getattr(self, attr)))

    def _exclusive_method(self, attr: str, method: Callable[..., Any]) -> Callable[..., Any]:
        enders = {a for a, ends in self.EXCLUSIVE_SPANS.items() if attr in ends}
        starts = attr in self.EXCLUSIVE_SPANS

        @functools.wraps(method)
        def exclusive_call(*args: Any, **kwargs: Any) -> Any:
            try:
                if attr == "safe_state":
                    with self._safe_hold():
                        return method(*args, **kwargs)
                with self.exclusive(attr):
                    result = method(*args, **kwargs)
                    if starts:
                        self._begin_span()
                    return result
            finally:
                if enders:
                    self._end_span()

        return exclusive_call

    def _hold(self, what: str, wait_s: float | None = None) -> bool:
        """Take the shared lock (True), or join a safe_state going ahead without it (False)."""
        assert self._shared is not None
        if getattr(self._bypass, "on", 0):
            return False
        wait = self.timeout_s * self.LOCK_WAIT_FACTOR if wait_s is None else wait_s
        if not self._shared.acquire(wait, f"{self.name} {self.resource}"):
            holder = self._shared.holder()
            raise self._error(what, f"shared instrument held by another socket for more than {wait:g} s "
                                    f"(holder: {holder or 'unknown'}; lock file {self._shared.path})")
        return True

    @contextmanager
    def exclusive(self, what: str = "exclusive use") -> Iterator[None]:
        """Commands inside run as one unit: on a shared instrument no other process's command
        comes in between (and no other thread of this one's). Nests; not shared, it does nothing."""
        if self._shared is None:
            yield
            return
        held = self._hold(what)
        try:
            with self._lock:
                yield
        finally:
            if held:
                self._shared.release()

    @contextmanager
    def _safe_hold(self) -> Iterator[None]:
        """safe_state's hold: a short wait, then on without the lock rather than not safe."""
        assert self._shared is not None
        if getattr(self._bypass, "on", 0):
            yield
            return
        if self._shared.acquire(self.SAFE_STATE_LOCK_WAIT_S, f"{self.name} {self.resource} safe_state"):
            try:
                yield
            finally:
                self._shared.release()
            return
        log.warning("%s at %s: shared instrument held by another socket (%s) for more than %g s; "
                    "going safe without the lock", self.name, self.resource,
                    self._shared.holder() or "holder unknown", self.SAFE_STATE_LOCK_WAIT_S)
        self._bypass.on = getattr(self._bypass, "on", 0) + 1
        try:
            yield
        finally:
            self._bypass.on -= 1

    def _begin_span(self) -> None:
        """Keep holding the lock after this call (a capture armed: until it is fetched)."""
        with self._span_guard:
            if not self._span and self._shared is not None and self._shared.join():
                self._span = True  # joins the hold of the call that started it: never waits

    def _end_span(self) -> None:
        with self._span_guard:
            if self._span and self._shared is not None:
                self._span = False
                self._shared.release()

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
        with self.exclusive("*RST"):
            self.write("*RST")
            self.write("*CLS")

    def close(self) -> None:
        with self._lock:
            try:
                self._session.close()
            except Exception:  # closing a dead link must not mask the error that killed it
                pass
        if self._shared is not None:
            self._end_span()  # a capture left armed: let the other sockets have the instrument

    def __enter__(self) -> "ScpiInstrument":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.resource!r})"
