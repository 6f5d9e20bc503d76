"""The panel's web application: the page, a small REST interface and the live websocket, all
driving one :class:`~harness.production.state.StationControl`.

Routes:

- ``GET /``: the page (``static/index.html``; script and style sheet under ``/static/``).
- ``GET /api/state``: the station's snapshot (:meth:`StationState.to_json`).
- ``POST /api/sockets/{name}/serial`` ``{"serial": "..."}``: a scanned serial. 202 when the
  station took it; when it refused it (:class:`SerialRefused`), 422 if the serial does not fit
  the station's serial pattern and 409 otherwise (locked, socket busy, attempts used), the
  refusal sentence in ``detail``; 404 for a socket the station does not have; 422 for an empty
  serial.
- ``POST /api/unlock`` ``{"reason": "...", "operator": "..."}``: lifts the station lock; 422
  (with the station's sentence) for an empty reason or operator.
- ``WS /ws``: on connect ``{"type": "snapshot", "state": {...}}``, then for every
  :class:`StationEvent` ``{"type": "event", "event": {...}, "state": {...}}`` -- the state a
  fresh snapshot taken after the event, so the page simply renders the state it last got.

Only the loopback host names are accepted in the ``Host`` header (no DNS rebinding), and a
request that carries an ``Origin`` of another site is refused (a page elsewhere in the
operator's browser cannot scan serials or lift the lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.encoders import jsonable_encoder
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.middleware.trustedhost import TrustedHostMiddleware

from harness.production.state import SerialRefused, StationControl, StationEvent

STATIC = Path(__file__).resolve().parent / "static"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
MAX_PENDING_EVENTS = 1000      # per websocket; past this the oldest are dropped (the state is whole anyway)
NO_CACHE = {"Cache-Control": "no-cache"}


class SerialIn(BaseModel):
    serial: str


class UnlockIn(BaseModel):
    reason: str
    operator: str


class StopIn(BaseModel):
    reason: str = ""


def _json_safe(value: Any) -> Any:
    """JSON that a browser's ``JSON.parse`` reads: NaN and infinities (a failed reading) become
    the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``; dataclasses, datetimes, ... as
    FastAPI encodes them."""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return _json_safe(jsonable_encoder(value))


def _dumps(value: Any) -> str:
    return json.dumps(_json_safe(value), allow_nan=False, separators=(",", ":"))


def _fits_pattern(serial: str, pattern: str | None) -> bool:
    """Whether the serial fits the station's pattern (a regular expression, whole serial); True
    when there is no pattern or it is not one Python reads."""
    if not pattern:
        return True
    try:
        return re.fullmatch(pattern, serial) is not None
    except re.error:
        return True


def _same_origin(origin: str | None, host: str | None) -> bool:
    """No Origin (not a browser's cross-site request) or one naming the host the request came to."""
    if not origin:
        return True
    if origin == "null" or not host:
        return False
    return urlsplit(origin).netloc.lower() == host.lower()


def create_app(control: StationControl, *, allowed_hosts: Iterable[str] = LOOPBACK_HOSTS) -> FastAPI:
    """The panel's FastAPI application for ``control``.

    ``allowed_hosts``: the host names the ``Host`` header may carry (default the loopback
    names; :class:`~harness.production.panel.PanelServer` adds the address it binds)."""
    app = FastAPI(title="bankhil station panel", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.control = control
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(dict.fromkeys(allowed_hosts)))

    @app.middleware("http")
    async def refuse_other_origins(request: Request, call_next: Callable[[Request], Any]) -> Response:
        if request.method not in ("GET", "HEAD", "OPTIONS") and not _same_origin(
                request.headers.get("origin"), request.headers.get("host")):
            return JSONResponse({"detail": "request from another site refused"}, status_code=403)
        return await call_next(request)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def state_json() -> dict[str, Any]:
        return _json_safe(control.snapshot().to_json())

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=NO_CACHE)

    @app.get("/api/state")
    def get_state() -> JSONResponse:
        return JSONResponse(state_json(), headers=NO_CACHE)

    @app.post("/api/sockets/{name}/serial")
    def submit_serial(name: str, body: SerialIn) -> JSONResponse:
        serial = body.serial.strip()
        snapshot = control.snapshot()
        if name not in {s.name for s in snapshot.sockets}:
            return JSONResponse({"detail": f"no socket {name!r} at this station"}, status_code=404)
        if not serial:
            return JSONResponse({"detail": "empty serial: scan the unit's label"}, status_code=422)
        try:
            control.submit_serial(name, serial)
        except SerialRefused as refusal:
            status = 409 if _fits_pattern(serial, snapshot.serial_pattern) else 422
            return JSONResponse({"detail": str(refusal), "refused": True, "socket": name, "serial": serial},
                                status_code=status)
        return JSONResponse({"accepted": True, "socket": name, "serial": serial}, status_code=202)

    @app.post("/api/unlock")
    def unlock(body: UnlockIn) -> JSONResponse:
        reason, operator = body.reason.strip(), body.operator.strip()
        if not operator:
            return JSONResponse({"detail": "the operator's name is needed to unlock"}, status_code=422)
        try:
            control.unlock(reason, operator)
        except ValueError as error:
            return JSONResponse({"detail": str(error) or "a reason is needed to unlock"}, status_code=422)
        return JSONResponse(state_json())

    @app.post("/api/stop")
    def stop(body: StopIn) -> JSONResponse:
        # the loop ends as on Ctrl-C: stop() interrupts running units (their runs make the
        # benches safe) and waits for them -- in a thread, so this request returns at once
        reason = body.reason.strip() or "closed from the panel"
        threading.Thread(target=control.stop, args=(reason,), name="panel-stop", daemon=True).start()
        return JSONResponse({"stopping": True, "reason": reason}, status_code=202)

    @app.websocket("/ws")
    async def live(websocket: WebSocket) -> None:
        if not _same_origin(websocket.headers.get("origin"), websocket.headers.get("host")):
            await websocket.close(code=1008)
            return
        await websocket.accept()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[StationEvent] = asyncio.Queue()

        def push(event: StationEvent) -> None:  # in the event loop
            if queue.qsize() >= MAX_PENDING_EVENTS:
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)

        def listener(event: StationEvent) -> None:  # in a station thread: never block, never raise
            with contextlib.suppress(Exception):
                loop.call_soon_threadsafe(push, event)

        unsubscribe = control.subscribe(listener)   # before the snapshot: no event falls between
        receiver = asyncio.create_task(_until_closed(websocket))
        getter: asyncio.Task[StationEvent] | None = None
        try:
            state = await asyncio.to_thread(state_json)
            await websocket.send_text(_dumps({"type": "snapshot", "state": state}))
            while True:
                getter = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait({getter, receiver}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    break                       # the page went away
                events = [getter.result()]
                while not queue.empty():
                    events.append(queue.get_nowait())
                state_text = _dumps(await asyncio.to_thread(state_json))
                for event in events:
                    await websocket.send_text(
                        f'{{"type":"event","event":{_dumps(event.to_json())},"state":{state_text}}}')
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass                                # closed while sending
        finally:
            with contextlib.suppress(Exception):
                unsubscribe()
            for task in (getter, receiver):
                if task is not None and not task.done():
                    task.cancel()
            with contextlib.suppress(BaseException):
                await receiver

    return app


async def _until_closed(websocket: WebSocket) -> None:
    """Read (and ignore) what the page sends until it closes the connection."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
