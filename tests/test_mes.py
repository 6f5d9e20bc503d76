"""The MES hand-off (harness/production/mes.py): the document, the folder, the POST, the spool."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import ValidationError

from bankmodel.files import FileError
from harness.config import load_document
from harness.production import mes
from harness.production.mes import (DELIVERED, QUEUED, REJECTED, SCHEMA, WRITTEN, MesHandoff,
                                    MesSection, document_bytes, document_name, mes_section)
from harness.production.unit import MeasuredValue, UnitResult

T0 = datetime(2026, 11, 30, 8, 15, 0, tzinfo=timezone.utc)


def unit(serial: str = "BM-0001", n: int = 1, **changes) -> UnitResult:
    fields = dict(
        serial=serial, verdict="PASS", attempt=1, attempts_allowed=3,
        run_uuid=f"6f1c2a4e-0000-4000-8000-{n:012d}", station="eol-1", socket="A",
        operator="Zoë Müller", plan="eol_module", plan_version="1.4.0", firmware="2.3.1",
        started_at=T0, finished_at=T0 + timedelta(seconds=42.5), takt_s=44.1,
        measurements=(
            MeasuredValue("ocv", "module_voltage", 13.057, "V", {"low": 12.0, "high": 14.6}, "PASS"),
            MeasuredValue("acir", "acir", 0.00123, "ohm", {"high": 0.002}, "PASS"),
        ))
    fields.update(changes)
    return UnitResult(**fields)


# ================================================================================== server
class _Mes:
    """A stand-in MES on 127.0.0.1: records every request; answers from ``statuses`` (one per
    request, then 200)."""

    def __init__(self, port: int = 0, statuses: list[int] | None = None, delay_s: float = 0.0,
                 headers: dict[str, str] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.requests: list[tuple[str, str, bytes]] = []  # (path, content type, body)
        self.accepted: list[bytes] = []
        self.delay_s = delay_s
        self.extra_headers = headers or {}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                owner.requests.append((self.path, self.headers.get("Content-Type", ""), body))
                if owner.delay_s:
                    time.sleep(owner.delay_s)
                status = owner.statuses.pop(0) if owner.statuses else 200
                if 200 <= status < 300:
                    owner.accepted.append(body)
                reply = json.dumps({"status": status}).encode()
                self.send_response(status)
                for key, value in owner.extra_headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args) -> None:
                pass

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:
                pass  # a client that timed out and left: the broken pipe is the point

        self.server = Server(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/api/unit-results"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def mes_server(**kwargs) -> Iterator[_Mes]:
    server = _Mes(**kwargs)
    try:
        yield server
    finally:
        server.close()


def free_port() -> int:
    """A port nothing listens on (bound, read back, closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def section(**kwargs) -> MesSection:
    return MesSection.model_validate(kwargs)


# ================================================================================== document
def test_document_is_unit_result_plus_schema_in_stable_order() -> None:
    result = unit()
    data = document_bytes(result)
    doc = json.loads(data.decode("utf-8"))
    assert list(doc) == ["schema", *result.to_json()]
    assert doc == {"schema": SCHEMA, **result.to_json()}
    assert doc["measurements"][0] == {"step": "ocv", "name": "module_voltage", "value": 13.057,
                                      "unit": "V", "limits": {"low": 12.0, "high": 14.6},
                                      "verdict": "PASS"}
    assert "Zoë Müller".encode("utf-8") in data  # UTF-8, not \u escapes
    assert document_bytes(result) == data  # the same unit, the same bytes
    assert document_name(result) == "BM-0001_6f1c2a4e-0000-4000-8000-000000000001.json"


def test_document_name_cannot_leave_the_folder() -> None:
    name = document_name(unit(serial="../../etc/passwd"))
    assert "/" not in name and not name.startswith(".")


def test_non_finite_measurement_is_null_not_invalid_json() -> None:
    result = unit(measurements=(MeasuredValue("ocv", "v", float("nan"), "V", None, "ERROR"),))
    assert json.loads(document_bytes(result))["measurements"][0]["value"] is None


# ================================================================================== section
def test_section_defaults_and_values() -> None:
    s = section(url="http://mes.plant.local/api", timeout="2 s", retry_every="1 min")
    assert s.timeout.value == 2 and s.retry_every.value == 60 and s.folder is None
    s = section(folder="inbox")
    assert s.timeout.value == 5 and s.folder_path("/srv/mes") == Path("/srv/mes/inbox")


@pytest.mark.parametrize("data, message", [
    ({}, "a folder, a url, or both"),
    ({"url": "ftp://mes.plant.local/x"}, "http:// or https://"),
    ({"url": "http:///nohost"}, "with a host"),
    ({"url": "http://user:secret@mes.plant.local/"}, "without user:password@"),
    ({"url": "http://mes.plant.local:99999/"}, "http:// or https://"),
    ({"url": "http://mes.plant.local/a b"}, "without spaces"),
    ({"url": "http://mes/", "timeout": "10 min"}, "a timeout from 100 ms to 2 min"),
    ({"url": "http://mes/", "timeout": "5 V"}, ""),
    ({"url": "http://mes/", "timeout": 5}, ""),
    ({"url": "http://mes/", "retry_every": "10 ms"}, "a retry period from 1 s to 1 h"),
    ({"url": "http://mes/", "retry": "1 s"}, "Extra inputs are not permitted"),
    ({"folder": 7}, ""),
])
def test_section_errors(data: dict, message: str) -> None:
    with pytest.raises(ValidationError) as err:
        MesSection.model_validate(data)
    assert message in str(err.value)


def test_section_from_station_file_points_at_the_line(tmp_path: Path) -> None:
    station = tmp_path / "station.yaml"
    station.write_text("name: eol-1\nmes:\n  url: http://mes.plant.local/api\n"
                       "  timeout: 5 min\n", encoding="utf-8")
    with pytest.raises(FileError) as err:
        mes_section(load_document(station))
    assert err.value.line == 4 and err.value.field == "mes.timeout"
    station.write_text("name: eol-1\nmes:\n  url: http://mes.plant.local/api\n  folders: x\n")
    with pytest.raises(FileError) as err:
        mes_section(load_document(station))
    assert err.value.line == 4 and "folder" in err.value.allowed
    station.write_text("name: eol-1\nmes:\n  folder: inbox\n  timeout: 3 s\n")
    assert mes_section(load_document(station)) == section(folder="inbox", timeout="3 s")
    station.write_text("name: eol-1\n")
    assert mes_section(load_document(station)) is None


def test_missing_folder_is_refused_not_created(tmp_path: Path) -> None:
    with pytest.raises(FileError, match="no such folder"):
        MesHandoff(section(folder=str(tmp_path / "share")), tmp_path / "spool")
    assert not (tmp_path / "share").exists()


# ================================================================================== folder
def test_folder_delivery_writes_the_document(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    handoff = MesHandoff(section(folder=str(inbox)), tmp_path / "spool")
    result = unit()
    delivery = handoff.deliver(result)
    assert (delivery.outcome, delivery.folder, delivery.url) == (WRITTEN, WRITTEN, None)
    assert delivery.file == inbox / document_name(result)
    assert sorted(os.listdir(inbox)) == [document_name(result)]  # no temp file left
    assert delivery.file.read_bytes() == document_bytes(result)
    assert handoff.queued() == []


def test_folder_delivery_is_atomic_for_a_watcher(tmp_path: Path) -> None:
    """A watcher polling *.json never reads half a document, even a large one."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    handoff = MesHandoff(section(folder=str(inbox)), tmp_path / "spool")
    many = tuple(MeasuredValue(f"s{i}", f"cell_{i}", 3.3 + i * 1e-4, "V", {"low": 2.5}, "PASS")
                 for i in range(1000))
    done = threading.Event()
    seen: dict[str, int] = {}
    problems: list[str] = []

    def watch() -> None:
        while True:
            last = done.is_set()  # one more look after the writer is done: nothing left unread
            for name in os.listdir(inbox):
                if not name.endswith(".json") or name in seen:
                    continue  # a temp file, or one already read whole (renames are final)
                try:
                    json.loads((inbox / name).read_bytes())
                    seen[name] = seen.get(name, 0) + 1
                except json.JSONDecodeError as exc:
                    problems.append(f"{name}: {exc}")
            if last:
                return

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for n in range(25):
            assert handoff.deliver(unit(n=n, measurements=many)).outcome == WRITTEN
    finally:
        done.set()
        watcher.join()
    assert problems == []
    assert len(os.listdir(inbox)) == 25 and len(seen) == 25


def test_write_that_fails_halfway_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "x.json"

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mes.os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        mes.write_atomically(target, b'{"half": ')
    assert os.listdir(tmp_path) == []


def test_folder_gone_queues_then_writes(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    handoff = MesHandoff(section(folder=str(inbox)), tmp_path / "spool")
    inbox.rmdir()  # the share went away
    first, second = unit(n=1), unit(n=2)
    assert handoff.deliver(first).outcome == QUEUED
    assert handoff.deliver(second).outcome == QUEUED
    assert len(handoff.queued()) == 2
    assert handoff.retry_queued()[QUEUED] == 2  # still gone: nothing lost
    inbox.mkdir()
    assert handoff.retry_queued() == {DELIVERED: 0, WRITTEN: 2, REJECTED: 0, QUEUED: 0}
    assert sorted(os.listdir(inbox)) == sorted([document_name(first), document_name(second)])
    assert (inbox / document_name(first)).read_bytes() == document_bytes(first)


# ================================================================================== POST
def test_post_sends_exactly_the_document(tmp_path: Path) -> None:
    with mes_server() as server:
        handoff = MesHandoff(section(url=server.url, timeout="2 s"), tmp_path / "spool")
        result = unit()
        delivery = handoff.deliver(result)
    assert (delivery.outcome, delivery.url, delivery.http_status) == (DELIVERED, DELIVERED, 200)
    [(path, content_type, body)] = server.requests
    assert path == "/api/unit-results"
    assert content_type.startswith("application/json")
    assert body == document_bytes(result)
    assert handoff.queued() == []


def test_folder_and_url_together(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with mes_server() as server:
        handoff = MesHandoff(section(url=server.url, folder=str(inbox)), tmp_path / "spool")
        delivery = handoff.deliver(unit())
    assert (delivery.outcome, delivery.folder, delivery.url) == (DELIVERED, WRITTEN, DELIVERED)
    assert delivery.file is not None and delivery.file.read_bytes() == server.accepted[0]


def test_failing_server_queues_then_retry_delivers_in_order(tmp_path: Path) -> None:
    units = [unit(n=n) for n in range(1, 5)]
    with mes_server(statuses=[503, 500, 502]) as server:
        handoff = MesHandoff(section(url=server.url), tmp_path / "spool")
        first = handoff.deliver(units[0])                  # 503
        assert (first.outcome, first.http_status) == (QUEUED, 503)
        second = handoff.deliver(units[1])                 # head retried: 500; queued behind
        assert second.outcome == QUEUED and second.http_status is None
        assert len(handoff.queued()) == 2
        assert handoff.retry_queued() == {DELIVERED: 0, WRITTEN: 0, REJECTED: 0, QUEUED: 2}  # 502
        third = handoff.deliver(units[2])                  # head now accepted: queue empties first
        assert third.outcome == DELIVERED
        assert handoff.deliver(units[3]).outcome == DELIVERED
    assert server.accepted == [document_bytes(u) for u in units]  # in the order units finished
    assert handoff.queued() == []
    assert not list((tmp_path / "spool").rglob("*.tmp"))


def test_retry_queued_sends_in_order_and_removes_after_2xx(tmp_path: Path) -> None:
    units = [unit(n=n) for n in range(1, 4)]
    with mes_server(statuses=[503]) as server:
        handoff = MesHandoff(section(url=server.url), tmp_path / "spool")
        assert handoff.deliver(units[0]).outcome == QUEUED
        server.statuses = [503, 503]  # the next two attempts (the head, each time) fail too
        assert handoff.deliver(units[1]).outcome == QUEUED
        assert handoff.deliver(units[2]).outcome == QUEUED
        assert [p.name.split("_", 1)[1] for p in handoff.queued()] == [document_name(u) for u in units]
        assert handoff.retry_queued() == {DELIVERED: 3, WRITTEN: 0, REJECTED: 0, QUEUED: 0}
    assert server.accepted == [document_bytes(u) for u in units]


def test_timeout_is_transient(tmp_path: Path) -> None:
    with mes_server(delay_s=1.0) as server:
        handoff = MesHandoff(section(url=server.url, timeout="200 ms"), tmp_path / "spool")
        began = time.monotonic()
        delivery = handoff.deliver(unit())
        assert time.monotonic() - began < 0.9
        assert delivery.outcome == QUEUED and "Timeout" in (delivery.detail or "")
        server.delay_s = 0
        assert handoff.retry_queued()[DELIVERED] == 1


def test_server_down_then_restart_delivers_the_spool(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/unit-results"
    spool = tmp_path / "spool"
    units = [unit(n=n) for n in range(1, 4)]
    before = MesHandoff(section(url=url, timeout="1 s"), spool)
    outcomes = [before.deliver(u) for u in units]
    assert [d.outcome for d in outcomes] == [QUEUED] * 3
    assert "ConnectionError" in (outcomes[0].detail or "")
    del before  # the station process ends

    with mes_server(port=port) as server:
        after = MesHandoff(section(url=url), spool)  # a new process on the same spool
        assert len(after.queued()) == 3
        assert after.retry_queued()[DELIVERED] == 3
        assert after.deliver(unit(n=4)).outcome == DELIVERED
    assert server.accepted == [document_bytes(u) for u in units] + [document_bytes(unit(n=4))]
    assert after.queued() == []


def test_background_thread_delivers_the_spool_and_stops_promptly(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/x"
    spool = tmp_path / "spool"
    assert MesHandoff(section(url=url), spool).deliver(unit()).outcome == QUEUED
    with mes_server(port=port) as server:
        handoff = MesHandoff(section(url=url, retry_every="1 s", timeout="500 ms"), spool)
        handoff.start()
        try:
            deadline = time.monotonic() + 5
            while handoff.queued() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert handoff.queued() == []
        finally:
            began = time.monotonic()
            assert handoff.stop()
            assert time.monotonic() - began < 1.5
    assert server.accepted == [document_bytes(unit())]


# ================================================================================== 4xx
def test_4xx_is_rejected_recorded_and_not_retried(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with mes_server(statuses=[422]) as server:
        handoff = MesHandoff(section(url=server.url), spool)
        bad, good = unit(n=1), unit(n=2)
        delivery = handoff.deliver(bad)
        assert (delivery.outcome, delivery.http_status) == (REJECTED, 422)
        assert handoff.queued() == []
        assert handoff.deliver(good).outcome == DELIVERED
        assert handoff.retry_queued()[DELIVERED] == 0
    assert len(server.requests) == 2  # the rejected one was sent once, never again
    stem = document_name(bad)[:-5]
    assert (spool / "rejected" / f"{stem}.json").read_bytes() == document_bytes(bad)
    reason = json.loads((spool / "rejected" / f"{stem}.reason.json").read_text())
    assert reason["status"] == 422 and reason["body"] == '{"status": 422}'


def test_4xx_on_a_queued_document_moves_it_aside_and_the_queue_goes_on(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    units = [unit(n=n) for n in range(1, 4)]
    with mes_server(statuses=[503, 503, 503]) as server:
        handoff = MesHandoff(section(url=server.url), spool)
        assert [handoff.deliver(u).outcome for u in units] == [QUEUED] * 3
        server.statuses = [400]  # the head is refused, the rest accepted
        assert handoff.retry_queued() == {DELIVERED: 2, WRITTEN: 0, REJECTED: 1, QUEUED: 0}
    assert server.accepted == [document_bytes(u) for u in units[1:]]
    assert (spool / "rejected" / document_name(units[0])).exists()


def test_429_and_408_are_transient(tmp_path: Path) -> None:
    with mes_server(statuses=[429, 408]) as server:
        handoff = MesHandoff(section(url=server.url), tmp_path / "spool")
        assert handoff.deliver(unit()).outcome == QUEUED
        assert handoff.retry_queued()[QUEUED] == 1
        assert handoff.retry_queued()[DELIVERED] == 1


def test_redirect_is_not_followed(tmp_path: Path) -> None:
    with mes_server() as elsewhere, \
            mes_server(statuses=[307], headers={"Location": "http://127.0.0.1:1/x"}) as server:
        server.extra_headers["Location"] = elsewhere.url
        handoff = MesHandoff(section(url=server.url), tmp_path / "spool")
        delivery = handoff.deliver(unit())
    assert (delivery.outcome, delivery.http_status) == (REJECTED, 307)
    assert elsewhere.requests == []  # only the configured URL is contacted


def test_proxy_environment_is_ignored(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with mes_server() as server:
        handoff = MesHandoff(section(url=server.url), tmp_path / "spool")
        assert handoff.deliver(unit()).outcome == DELIVERED
