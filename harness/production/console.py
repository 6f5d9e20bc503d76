"""The station in a terminal: serials from standard input (a barcode scanner types the label and
presses Enter), steps and measurements as they come, and a large PASS / FAIL per unit.

Input lines:

- ``SERIAL`` -- the unit for the first free socket;
- ``SOCKET: SERIAL`` -- the unit for that socket;
- ``unlock: REASON`` -- lift the station lock (the operator's name is the run's operator);
- ``quit`` or end of input -- stop when the running units are done (Ctrl-C: at once, benches safe).
"""

from __future__ import annotations

import threading
from typing import Any, TextIO

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from harness.production.state import SerialRefused, StationEvent

STYLE = {"PASS": "bold white on green", "FAIL": "bold white on red", "ERROR": "bold black on yellow",
         "ABORTED": "bold black on yellow", "RECORDED": "bold black on cyan"}


def verdict_panel(data: dict[str, Any]) -> Panel:
    """The unit's verdict as an operator reads it from across the bench."""
    verdict = str(data.get("verdict", ""))
    body = Text(f"\n  {verdict}  \n", style=STYLE.get(verdict, "bold"), justify="center")
    lines = [f"{data.get('serial')}   attempt {data.get('attempt')} of {data.get('attempts_allowed')}   "
             f"takt {data.get('takt_s', 0):.1f} s"]
    if verdict != "PASS":
        lines.append(f"step: {data.get('failed_step') or '-'}")
        if data.get("diagnosis"):
            lines.append(str(data["diagnosis"]))
    body.append("\n" + "\n".join(lines), style="bold")
    return Panel(body, title=f"socket {data.get('socket')}", expand=True)


class ConsoleView:
    """Prints the station's events; thread-safe (events come from the sockets' threads)."""

    def __init__(self, console: Console | None = None, verbose: bool = True):
        self.console = console or Console()
        self.verbose = verbose
        self._lock = threading.Lock()

    def __call__(self, event: StationEvent) -> None:
        with self._lock:
            self._show(event)

    def _show(self, event: StationEvent) -> None:
        data, where = event.data, f"[{event.socket}]" if event.socket else ""
        kind = event.kind
        if kind == "unit_started":
            self.console.print(f"{where} {data['serial']}: {data['history']}")
        elif kind == "step_started" and self.verbose:
            self.console.print(f"{where}   {data['step']} ...")
        elif kind == "measurement" and self.verbose:
            self.console.print(f"{where}     {data['shown']}", highlight=False)
        elif kind == "unit_finished":
            self.console.print(verdict_panel({**data, "socket": event.socket}))
        elif kind == "serial_refused":
            self.console.print(f"{where} [bold red]REFUSED[/] {data.get('serial')}: {data.get('message')}")
        elif kind == "locked":
            self.console.print(Panel(Text(f"STATION LOCKED\n{data['reason']}", style="bold white on red")))
        elif kind == "unlocked":
            self.console.print(f"[bold green]lock lifted[/] by {data['operator']}: {data['reason']}")
        elif kind == "stopped":
            self.console.print(f"station stopped: {data.get('reason')}")


def read_serials(station: Any, stream: TextIO, operator: str, console: Console | None = None) -> None:
    """Feed scanned lines to ``station`` until ``quit`` or end of input."""
    console = console or Console()
    for raw in stream:
        line = raw.strip()
        if not line:
            continue
        if line.lower() in ("quit", "exit"):
            break
        if line.lower().startswith("unlock:"):
            try:
                station.unlock(line.split(":", 1)[1], operator)
            except ValueError as exc:
                console.print(f"[red]{exc}[/]")
            continue
        socket, _, serial = line.partition(":") if ":" in line else ("", "", line)
        socket, serial = socket.strip(), serial.strip()
        if not socket:
            free = station.idle_sockets()
            if not free:
                console.print("[yellow]every socket is busy: scan again when one is free[/]")
                continue
            socket = free[0]
        try:
            station.submit_serial(socket, serial)
        except SerialRefused:
            pass  # the view prints the refusal (it is an event)
