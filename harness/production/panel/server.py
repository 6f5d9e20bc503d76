"""The panel served by uvicorn in a background thread, on the loopback interface only."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

import uvicorn

from harness.production.panel.app import LOOPBACK_HOSTS, create_app
from harness.production.state import StationControl

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.version == 4 and address.is_loopback


class PanelServer:
    """The operator panel for ``control`` at ``http://host:port/``.

    ``host`` must be an IPv4 loopback address (or ``localhost``): the panel can scan serials and
    lift the station lock, and is never offered to the network. ``port`` 0 takes a free port;
    :attr:`url` (and :meth:`start`'s answer) tell which."""

    def __init__(self, control: StationControl, host: str = "127.0.0.1", port: int = 0) -> None:
        if not _is_loopback(host):
            raise ValueError(f"the panel serves on the loopback interface only; found host {host!r}")
        self.control = control
        self.host = "127.0.0.1" if host == "localhost" else host
        self.port = port
        self.app = create_app(control, allowed_hosts=(*LOOPBACK_HOSTS, self.host))
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> str:
        """Bind, start uvicorn in a daemon thread, and return the URL once it accepts connections.
        OSError when the port is taken; RuntimeError when the server does not come up."""
        if self._thread is not None:
            raise RuntimeError("the panel is already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        sock.set_inheritable(True)
        self.port = sock.getsockname()[1]
        self._socket = sock
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, ws="websockets-sansio",
                                lifespan="off", timeout_graceful_shutdown=3)
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                                        name=f"panel-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the panel did not start on {self.url}")
            time.sleep(0.02)
        return self.url

    def stop(self) -> None:
        """Close the open pages' websockets and stop the server; idempotent."""
        server, thread = self._server, self._thread
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(STOP_TIMEOUT_S)
            if thread.is_alive():
                server.force_exit = True
                thread.join(STOP_TIMEOUT_S)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> PanelServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
