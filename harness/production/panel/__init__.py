"""The operator panel of the end-of-line station: a page in the browser that shows each socket
(serial entry, step and progress, measurements, the verdict in large letters) and the station
lock, and follows the station live over a websocket.

    from harness.production.panel import PanelServer
    panel = PanelServer(control)          # any StationControl; 127.0.0.1, a free port
    url = panel.start()                   # uvicorn in a background thread; the URL once listening
    ...
    panel.stop()

:func:`create_app` builds the FastAPI application alone (for another server or for tests).
The page, its script and its style sheet are files of this package (``static/``): nothing is
fetched from the internet and nothing is built.
"""

from __future__ import annotations

from harness.production.panel.app import create_app
from harness.production.panel.server import PanelServer

__all__ = ["PanelServer", "create_app"]
