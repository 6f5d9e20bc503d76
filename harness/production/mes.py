"""The MES hand-off: one JSON document per unit, written to a folder the MES watches and/or
POSTed to the MES, never lost.

The document is :meth:`UnitResult.to_json` plus ``schema: "bankhil.unit-result/1"`` (first),
keys in the dataclass order (stable from unit to unit), UTF-8, non-ASCII characters as they are
(:func:`document_bytes`).

Configured by the station file's ``mes:`` section (:class:`MesSection`)::

    mes:
      folder: /srv/mes/inbox            # <serial>_<run uuid>.json, written atomically
      url: http://mes.plant.local/api/unit-results
      timeout: 5 s                      # per POST (connect and read)
      retry_every: 30 s                 # the background retry thread's period

Delivery (:class:`MesHandoff`):

- folder: the document is written to a hidden temp file in the folder (``.<name>.tmp``),
  flushed and fsync'd, then renamed to ``<serial>_<run uuid>.json`` -- a watcher that picks up
  ``*.json`` never sees half a file. A folder that cannot be written (share unmounted, disk
  full) queues the document like a failed POST.
- url: ``POST`` with ``Content-Type: application/json`` and the document's exact bytes,
  with the section's timeout. Only the configured URL is contacted: redirects are not
  followed and the environment's proxy variables and ``.netrc`` are ignored.
- What a reply means:

  * 2xx: delivered.
  * connection refused, DNS failure, timeout, 5xx, and the two 4xx that say "later"
    (408 Request Timeout, 429 Too Many Requests): transient -- the document is queued in the
    spool and sent again by :meth:`MesHandoff.retry_queued` (or the retry thread).
  * any other 4xx, and a 3xx (a redirect we do not follow): the MES *rejected* this document;
    the same bytes would be rejected again, so retrying forever would only block the queue
    behind it. The document and the MES's answer (status, first 4 kB of the body) go to
    ``<spool>/rejected/`` for a person to look at, and the outcome is ``rejected``. The
    queue carries on with the next document.

- The spool (a folder given by the caller, e.g. ``<reports>/mes-spool/``) holds one file per
  pending delivery, ``url/`` and ``folder/`` apart, named ``<sequence>_<serial>_<uuid>.json``
  so that name order is queue order; each is written atomically like the folder delivery and
  removed only after the delivery succeeded (a 2xx, or the rename into the folder). Nothing
  is kept in memory only: a new :class:`MesHandoff` on the same spool (a restart of the
  station) finds every queued document and sends it first.
- Order: documents reach the MES in the order units finished. While something is queued, a
  new document is queued behind it (after one attempt to empty the queue), never sent ahead
  of it; :meth:`retry_queued` stops at the first transient failure so that nothing overtakes
  the head of the queue.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from bankmodel.channels import quantity_between
from bankmodel.files import FileError
from bankmodel.files import validate as _validate_model
from bankmodel.units import Quantity
from harness.config import Document, FileModel
from harness.production.unit import UnitResult

if TYPE_CHECKING:  # requests is imported when a sender is made: a plan run validating a
    import requests  # station file with an eol: section does not load an HTTP client

SCHEMA = "bankhil.unit-result/1"

# outcomes of one delivery
DELIVERED, QUEUED, WRITTEN, REJECTED = "delivered", "queued", "written", "rejected"

# 4xx replies that mean "try again later", not "this document is wrong"
TRANSIENT_4XX = frozenset({408, 429})
_BODY_KEPT = 4096


# ================================================================================== section
def _url(text: str) -> str:
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise PydanticCustomError("mes_url", "an http:// or https:// URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PydanticCustomError("mes_url", "an http:// or https:// URL with a host, "
                                  "e.g. http://mes.plant.local/api/unit-results")
    if parts.username is not None or parts.password is not None:
        raise PydanticCustomError("mes_url", "a URL without user:password@ (no credentials "
                                  "in station files)")
    if parts.fragment:
        raise PydanticCustomError("mes_url", "a URL without #fragment")
    if any(c.isspace() or ord(c) < 32 for c in text):
        raise PydanticCustomError("mes_url", "a URL without spaces or control characters")
    return text


def _folder(text: str) -> str:
    if "\x00" in text or not text.strip():
        raise PydanticCustomError("mes_folder", "a folder path")
    return text


MesUrl = Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(_url)]
MesFolder = Annotated[str, Field(min_length=1, max_length=4000), AfterValidator(_folder)]
MesTimeout = Annotated[Quantity["s"], quantity_between("100 ms", "2 min", "a timeout")]
MesRetry = Annotated[Quantity["s"], quantity_between("1 s", "1 h", "a retry period")]


class MesSection(FileModel):
    """The station file's ``mes:`` section: where each unit's document goes."""

    folder: MesFolder | None = None
    url: MesUrl | None = None
    timeout: MesTimeout = Quantity.parse("5 s")
    retry_every: MesRetry = Quantity.parse("30 s")

    @model_validator(mode="after")
    def _somewhere(self) -> "MesSection":
        if self.folder is None and self.url is None:
            raise PydanticCustomError("mes_target", "a folder, a url, or both")
        return self

    def folder_path(self, base: Path | str | None = None) -> Path | None:
        """The folder as a path; a relative one is taken from ``base`` (the station file's
        folder) when given."""
        if self.folder is None:
            return None
        path = Path(self.folder).expanduser()
        if not path.is_absolute() and base is not None:
            path = Path(base) / path
        return path


class _MesOnly(FileModel):
    mes: MesSection


def mes_section(document: Document) -> MesSection | None:
    """The ``mes:`` section of a loaded station file (None without one); a bad section is a
    :class:`FileError` pointing at its line, like every other station field."""
    data = document.data
    if not isinstance(data, dict) or data.get("mes") is None:
        return None
    model = _validate_model(_MesOnly, {"mes": data["mes"]}, document.located, document.path)
    return model.mes


# ================================================================================== document
def _plain(value: Any) -> Any:
    """JSON-ready: non-finite floats as null (JSON has no NaN), numpy scalars as Python ones."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return _plain(value.item())
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy array
        return _plain(value.tolist())
    return str(value)  # Quantity and the like: as the operator reads it


def unit_document(result: UnitResult) -> dict[str, Any]:
    """The MES document of one unit: ``schema`` first, then :meth:`UnitResult.to_json`."""
    return {"schema": SCHEMA, **_plain(result.to_json())}


def document_bytes(result: UnitResult) -> bytes:
    """The document as sent and written: UTF-8 JSON, stable key order, newline at the end."""
    text = json.dumps(unit_document(result), ensure_ascii=False, indent=2, allow_nan=False)
    return (text + "\n").encode("utf-8")


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _safe(text: str, limit: int = 80) -> str:
    """A file-name part: letters, digits, ``._-``; never hidden, never ``..``."""
    cleaned = _UNSAFE.sub("_", text)[:limit].lstrip(".")
    return cleaned or "_"


def document_name(result: UnitResult) -> str:
    """``<serial>_<run uuid>.json`` (characters a file name cannot hold replaced by ``_``)."""
    return f"{_safe(result.serial)}_{_safe(result.run_uuid)}.json"


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that no reader ever sees part of it: a hidden temp file in
    the same folder, fsync'd, renamed over ``path``; the temp file is removed on failure."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    try:  # the rename itself survives a power cut
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


# ================================================================================== delivery
@dataclass(frozen=True)
class Delivery:
    """What :meth:`MesHandoff.deliver` did with one document.

    ``outcome``: the URL's outcome when a URL is configured (delivered / queued / rejected),
    else the folder's (written / queued). ``folder`` and ``url`` give each target's own."""

    serial: str
    run_uuid: str
    outcome: str
    folder: str | None = None           # written / queued / None (no folder configured)
    url: str | None = None              # delivered / queued / rejected / None (no url)
    file: Path | None = None            # the document in the MES folder
    http_status: int | None = None
    detail: str | None = None           # why it was queued or rejected


@dataclass(frozen=True)
class _Attempt:
    outcome: str                        # DELIVERED / QUEUED (transient) / REJECTED
    status: int | None
    detail: str | None
    body: str | None = None


@dataclass
class _Spool:
    """One target's queue: files in a folder, name order is queue order."""

    root: Path
    _last: int = field(default=0)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for path in self.root.glob("*.json"):  # a restart: continue the sequence
            head = path.name.split("_", 1)[0]
            if head.isdigit():
                self._last = max(self._last, int(head))
        for stale in self.root.glob(".*.tmp"):  # a crash in the middle of a write
            try:
                stale.unlink()
            except OSError:
                pass

    def pending(self) -> list[Path]:
        return sorted(p for p in self.root.glob("*.json") if p.name.split("_", 1)[0].isdigit())

    def put(self, name: str, data: bytes) -> Path:
        self._last = max(self._last + 1, time.time_ns())
        path = self.root / f"{self._last:020d}_{name}"
        write_atomically(path, data)
        return path


class MesHandoff:
    """Delivers each unit's document as the station's ``mes:`` section says; queues what could
    not be delivered in ``spool`` and retries it, in order, until it is.

    ``folder_base``: the folder a relative ``mes.folder`` is taken from (the station file's).
    ``session``: a :class:`requests.Session` to use (tests); by default one of its own that
    ignores proxies and ``.netrc`` from the environment.
    """

    def __init__(self, section: MesSection, spool: Path | str, *,
                 folder_base: Path | str | None = None,
                 session: requests.Session | None = None) -> None:
        self.section = section
        self.spool = Path(spool)
        self.folder = section.folder_path(folder_base)
        if self.folder is not None and not self.folder.is_dir():
            raise FileError(self.folder, None, "mes.folder", "no such folder",
                            "an existing folder the MES reads (it is not created: a missing "
                            "share must not fill a local folder instead)")
        self.url = section.url
        self.timeout_s = section.timeout.value
        self.retry_every_s = section.retry_every.value
        self.rejected_dir = self.spool / "rejected"
        self._url_spool = _Spool(self.spool / "url") if self.url else None
        self._folder_spool = _Spool(self.spool / "folder") if self.folder else None
        if session is None:
            import requests
            session = requests.Session()
            session.trust_env = False  # no proxies, no .netrc: only the configured URL
        self._session = session
        self._lock = threading.RLock()  # one sender at a time: deliver, retry, the thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    # ------------------------------------------------------------------ queue
    def queued(self) -> list[Path]:
        """The documents waiting, in the order they will be sent (URL queue, then folder)."""
        out: list[Path] = []
        for spool in (self._url_spool, self._folder_spool):
            if spool is not None:
                out += spool.pending()
        return out

    # ------------------------------------------------------------------ deliver
    def deliver(self, result: UnitResult) -> Delivery:
        """Hand one unit's document to the MES: write it, POST it, or queue it."""
        data = document_bytes(result)
        name = document_name(result)
        folder_outcome = url_outcome = None
        file = None
        status = None
        detail = None
        with self._lock:
            if self._folder_spool is not None:
                self._flush_folder()
                if self._folder_spool.pending():
                    self._folder_spool.put(name, data)
                    folder_outcome, detail = QUEUED, "behind documents already queued"
                else:
                    try:
                        file = self._write_folder(name, data)
                        folder_outcome = WRITTEN
                    except OSError as exc:
                        self._folder_spool.put(name, data)
                        folder_outcome, detail = QUEUED, f"folder not writable: {exc}"
                        self.last_error = detail
            if self._url_spool is not None:
                self._flush_url()
                waiting = len(self._url_spool.pending())
                if waiting:
                    self._url_spool.put(name, data)
                    url_outcome = QUEUED
                    detail = f"behind {waiting} queued document(s): {self.last_error}"
                else:
                    attempt = self._post(data)
                    url_outcome, status, detail = attempt.outcome, attempt.status, attempt.detail
                    if attempt.outcome == QUEUED:
                        self._url_spool.put(name, data)
                    elif attempt.outcome == REJECTED:
                        self._reject(name, data, attempt)
        outcome = url_outcome if url_outcome is not None else folder_outcome
        assert outcome is not None
        return Delivery(result.serial, result.run_uuid, outcome, folder_outcome, url_outcome,
                        file, status, detail)

    def retry_queued(self) -> dict[str, int]:
        """Send the queued documents in order; each is removed only once delivered (a 2xx, or
        renamed into the folder). Stops at the first transient failure (nothing overtakes
        the head of the queue). Returns counts: delivered, written, rejected, queued (left)."""
        with self._lock:
            counts = {DELIVERED: 0, WRITTEN: 0, REJECTED: 0}
            if self._folder_spool is not None:
                counts[WRITTEN] += self._flush_folder()
            if self._url_spool is not None:
                sent, rejected = self._flush_url()
                counts[DELIVERED] += sent
                counts[REJECTED] += rejected
            counts[QUEUED] = len(self.queued())
            return counts

    def _flush_folder(self) -> int:
        assert self._folder_spool is not None
        written = 0
        for path in self._folder_spool.pending():
            try:
                data = path.read_bytes()
                self._write_folder(path.name.split("_", 1)[1], data)
            except OSError as exc:
                self.last_error = f"folder not writable: {exc}"
                break
            path.unlink()
            written += 1
        return written

    def _flush_url(self) -> tuple[int, int]:
        assert self._url_spool is not None
        sent = rejected = 0
        for path in self._url_spool.pending():
            if self._stop.is_set() and threading.current_thread() is self._thread:
                break
            try:
                data = path.read_bytes()
            except OSError as exc:
                self.last_error = f"spool file unreadable: {exc}"
                break
            attempt = self._post(data)
            if attempt.outcome == QUEUED:
                break
            if attempt.outcome == REJECTED:
                self._reject(path.name.split("_", 1)[1], data, attempt)
                rejected += 1
            else:
                sent += 1
            path.unlink()
        return sent, rejected

    # ------------------------------------------------------------------ targets
    def _write_folder(self, name: str, data: bytes) -> Path:
        assert self.folder is not None
        target = self.folder / name
        write_atomically(target, data)
        return target

    def _post(self, data: bytes) -> _Attempt:
        import requests
        assert self.url is not None
        try:
            reply = self._session.post(
                self.url, data=data, timeout=self.timeout_s, allow_redirects=False,
                headers={"Content-Type": "application/json; charset=utf-8",
                         "Accept": "application/json, */*;q=0.5"})
        except requests.RequestException as exc:
            detail = f"{type(exc).__name__}: {exc}"
            self.last_error = detail
            return _Attempt(QUEUED, None, detail)
        status = reply.status_code
        try:
            body = reply.text[:_BODY_KEPT]
        except Exception:  # noqa: BLE001  (an undecodable body is not a reason to fail)
            body = None
        finally:
            reply.close()
        if 200 <= status < 300:
            return _Attempt(DELIVERED, status, None)
        if status >= 500 or status in TRANSIENT_4XX:
            detail = f"HTTP {status} from the MES"
            self.last_error = detail
            return _Attempt(QUEUED, status, detail, body)
        if 300 <= status < 400:
            where = reply.headers.get("Location", "?")
            return _Attempt(REJECTED, status, f"HTTP {status} redirect to {where} (not followed: "
                                              "only the configured URL is contacted)", body)
        return _Attempt(REJECTED, status, f"HTTP {status}: the MES rejected the document", body)

    def _reject(self, name: str, data: bytes, attempt: _Attempt) -> None:
        """Keep a rejected document and the MES's answer for a person to look at."""
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        stem = name[:-5] if name.endswith(".json") else name
        write_atomically(self.rejected_dir / f"{stem}.json", data)
        reason = {"status": attempt.status, "detail": attempt.detail, "body": attempt.body,
                  "url": self.url, "at": datetime.now().astimezone().isoformat()}
        write_atomically(self.rejected_dir / f"{stem}.reason.json",
                         json.dumps(reason, ensure_ascii=False, indent=2).encode("utf-8"))

    # ------------------------------------------------------------------ thread
    def start(self) -> None:
        """Retry the queue in the background every ``retry_every`` (first right away: a spool
        left by the last run goes out first)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mes-retry", daemon=True)
        self._thread.start()

    def stop(self, wait_s: float | None = None) -> bool:
        """Stop the retry thread; wait at most ``wait_s`` (default: one POST timeout plus a
        second). True if it has stopped. Nothing is lost either way: the spool stays."""
        thread = self._thread
        self._stop.set()
        if thread is None:
            return True
        thread.join(self.timeout_s + 1.0 if wait_s is None else wait_s)
        if thread.is_alive():
            return False
        self._thread = None
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.queued():
                    self.retry_queued()
            except Exception as exc:  # noqa: BLE001  (keep retrying; the spool is intact)
                self.last_error = f"{type(exc).__name__}: {exc}"
            self._stop.wait(self.retry_every_s)

    def __enter__(self) -> "MesHandoff":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        self._session.close()
