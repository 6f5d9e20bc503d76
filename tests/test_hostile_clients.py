"""Hostile and broken clients against the emulator's servers (as seen against ``hil emulate``).

- Idle TCP connections must not lock a SCPI instrument up: idle ones are closed after the
  server's idle timeout, there are many slots, and a connection beyond the last slot is closed
  at once instead of being left hanging.
- A socketcand client that stops reading must cost bounded memory: its frames queue up to a
  bound and are then dropped and counted, while a client that reads still gets every frame.
- CAN IDs that do not fit their format (11-bit standard, 29-bit extended) are refused on the
  way in and not forwarded on the way out -- never wrapped (0x800 -> ``000``) or truncated.

Every wait here has a deadline; every socket has a timeout.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid

import can
import pytest

from emulator.endpoints.socketcand_server import (BadCanId, SocketcandServer, check_can_id,
                                                  format_frame, parse_send)
from emulator.scpi_server import ScpiDevice, ScpiServer

IDN = ScpiDevice.idn


def wait_for(condition, timeout_s: float = 5.0, step_s: float = 0.01) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step_s)
    return bool(condition())


# ================================================================================== SCPI
def connect(port: int, timeout_s: float = 2.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def ask(sock: socket.socket, line: bytes) -> str:
    sock.sendall(line + b"\n")
    data = b""
    for _ in range(100):  # bounded: a reply is one short line
        if data.endswith(b"\n"):
            break
        chunk = sock.recv(65536)
        assert chunk, "server closed the connection"
        data += chunk
    return data.decode("latin-1").rstrip("\n")


def closed_by_server(sock: socket.socket, timeout_s: float) -> bool:
    """True if the server ends the connection (EOF or reset) within ``timeout_s``."""
    sock.settimeout(timeout_s)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_idle_connections_do_not_lock_out_a_scpi_instrument():
    idle_s = 1.0
    with ScpiServer(ScpiDevice(), idle_timeout_s=idle_s) as server:
        assert server.max_connections >= 16
        idle = [connect(server.port) for _ in range(12)]  # more than the old limit of 8
        try:
            with connect(server.port) as client:
                start = time.monotonic()
                assert ask(client, b"*IDN?") == IDN
                assert time.monotonic() - start < 1.0
            # the idle ones are closed once they have been silent for the timeout, not before
            assert not closed_by_server(idle[0], idle_s * 0.3)
            start = time.monotonic()
            assert all(closed_by_server(sock, idle_s + 3.0) for sock in idle)
            assert time.monotonic() - start < idle_s + 3.0
            assert wait_for(lambda: server.stats["idle_closed"] >= 12, 3.0), server.stats
        finally:
            for sock in idle:
                sock.close()
        # a client that talks more often than the timeout keeps its connection
        with connect(server.port) as client:
            for _ in range(5):
                assert ask(client, b"*OPC?") == "1"
                time.sleep(idle_s * 0.4)
            assert ask(client, b"*IDN?") == IDN


def test_a_connection_beyond_the_limit_is_closed_at_once_not_left_hanging():
    with ScpiServer(ScpiDevice(), max_connections=3, idle_timeout_s=30.0) as server:
        held = [connect(server.port) for _ in range(3)]
        try:
            assert all(ask(sock, b"*OPC?") == "1" for sock in held)  # all three are served
            extra = connect(server.port)
            start = time.monotonic()
            assert closed_by_server(extra, 2.0), "the connection over the limit was left hanging"
            assert time.monotonic() - start < 1.0
            extra.close()
            assert server.stats["refused"] == 1
            held.pop().close()  # a slot frees: the next client is served
            assert wait_for(lambda: len(server._connections) < 3, 2.0)
            with connect(server.port) as client:
                assert ask(client, b"*IDN?") == IDN
        finally:
            for sock in held:
                sock.close()


def test_idle_timeout_is_configurable_and_can_be_off():
    with pytest.raises(ValueError):
        ScpiServer(ScpiDevice(), idle_timeout_s=0)
    with pytest.raises(ValueError):
        ScpiServer(ScpiDevice(), max_connections=0)
    with ScpiServer(ScpiDevice(), idle_timeout_s=None) as server, connect(server.port) as sock:
        assert not closed_by_server(sock, 0.3)
        assert ask(sock, b"*IDN?") == IDN
    server = ScpiServer(ScpiDevice())  # the defaults: 64 slots, 5 min idle (see its docstring)
    try:
        assert (server.max_connections, server.idle_timeout_s) == (64, 300.0)
    finally:
        server.close()


# ================================================================================== socketcand
def handshake(server: SocketcandServer, channel: str, rcvbuf: int | None = None) -> socket.socket:
    """A raw socketcand client in raw mode (``rcvbuf``: a small receive buffer, set before
    connecting, so a client that does not read is stalled after a few KB)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(2.0)
    sock.connect(server.address)
    assert sock.recv(64) == b"< hi >"
    sock.sendall(f"< open {channel} >".encode())
    assert sock.recv(64) == b"< ok >"
    sock.sendall(b"< rawmode >")
    assert sock.recv(64) == b"< ok >"
    return sock


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def frame(k: int) -> can.Message:
    return can.Message(arbitration_id=0x351 + k % 10, data=k.to_bytes(8, "little"), is_extended_id=False,
                       timestamp=k * 250e-6)


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="RSS read from /proc")
def test_a_stalled_can_reader_costs_bounded_memory_and_does_not_hold_up_others(caplog):
    limit, total, burst = 2000, 100_000, 1000
    channel = f"bankhil-test-{uuid.uuid4().hex[:8]}"
    received = [0]
    stop = threading.Event()

    def read(sock: socket.socket) -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            received[0] += data.count(b"< frame ")  # a tag is never split: it is counted whole

    with SocketcandServer(channels={channel}, client_queue_frames=limit) as server, \
            can.Bus(interface="virtual", channel=channel) as node:
        stalled = handshake(server, channel, rcvbuf=4096)  # subscribes, never reads again
        reader_sock = handshake(server, channel)
        reader = threading.Thread(target=read, args=(reader_sock,), daemon=True)
        reader.start()
        try:
            time.sleep(server.rawmode_grace_s * 2)
            sessions = server.sessions
            assert len(sessions) == 2
            stalled_session = next(s for s in sessions if s.peer == stalled.getsockname())
            reading_session = next(s for s in sessions if s is not stalled_session)
            rss_before = rss_bytes()
            start = time.monotonic()
            lag_ok = True
            for k in range(0, total, burst):
                for j in range(k, k + burst):
                    node.send(frame(j))
                # the reader keeps up burst by burst: a stalled neighbour does not hold it up
                lag_ok &= wait_for(lambda: received[0] >= k + burst - limit, 5.0, 0.001)
                assert time.monotonic() - start < 60.0, "publishing took too long"
            assert wait_for(lambda: received[0] >= total, 5.0), (received[0], total)
            rss_growth = rss_bytes() - rss_before
            assert lag_ok
            assert received[0] == total and reading_session.dropped == 0

            # the stalled client's queue stayed within its bound and the rest was dropped
            assert wait_for(lambda: stalled_session.frames_sent + stalled_session.queued
                            + stalled_session.dropped >= total, 5.0)
            assert stalled_session.max_queued <= limit
            assert stalled_session.queued <= limit
            assert stalled_session.dropped >= total - limit - stalled_session.frames_sent > 0
            assert (stalled_session.frames_sent + stalled_session.queued + stalled_session.dropped
                    == total)
            assert server.counts["frames_dropped"] == stalled_session.dropped
            # nothing piles up on the session's bus behind the queue either
            assert wait_for(lambda: stalled_session.bus.queue.qsize() == 0, 2.0)  # type: ignore[union-attr]
            # the unbounded version kept every frame: ~230 B each, 23 MB for these 100k
            assert rss_growth < 12e6, f"RSS grew {rss_growth / 1e6:.1f} MB"
            print(f"\nstalled reader: {total} frames published, queue bound {limit}, peak "
                  f"{stalled_session.max_queued}, handed to TCP {stalled_session.frames_sent}, "
                  f"dropped {stalled_session.dropped}; reader got {received[0]}; "
                  f"RSS {rss_before / 1e6:.1f} -> {(rss_before + rss_growth) / 1e6:.1f} MB "
                  f"in {time.monotonic() - start:.2f} s")
        finally:
            stop.set()
            stalled.close()
            reader_sock.close()
            reader.join(timeout=2.0)
        # the drop count is reported when the stalled client goes
        assert wait_for(lambda: stalled_session.closed.is_set(), 5.0)
        assert any("dropped" in r.getMessage() and str(stalled_session.dropped) in r.getMessage()
                   for r in caplog.records)


def test_a_stalled_client_before_rawmode_is_bounded_too():
    """A client that opens a channel and never asks for raw mode does not leak either."""
    channel = f"bankhil-test-{uuid.uuid4().hex[:8]}"
    with SocketcandServer(channels={channel}, client_queue_frames=100) as server, \
            can.Bus(interface="virtual", channel=channel) as node, \
            socket.create_connection(server.address, timeout=2.0) as sock:
        assert sock.recv(64) == b"< hi >"
        sock.sendall(f"< open {channel} >".encode())
        assert sock.recv(64) == b"< ok >"
        assert wait_for(lambda: len(server.sessions) == 1, 2.0)
        session = server.sessions[0]
        for k in range(1000):
            node.send(frame(k))
        assert wait_for(lambda: session.queued + session.dropped == 1000, 5.0)
        assert session.queued == 100 and session.dropped == 900
        assert session.bus is not None and wait_for(lambda: session.bus.queue.qsize() == 0, 2.0)  # type: ignore[attr-defined]


def test_sessions_beyond_the_limit_are_closed_at_once():
    channel = f"bankhil-test-{uuid.uuid4().hex[:8]}"
    with SocketcandServer(channels={channel}, max_sessions=2) as server:
        held = [socket.create_connection(server.address, timeout=2.0) for _ in range(2)]
        try:
            assert all(sock.recv(64) == b"< hi >" for sock in held)
            with socket.create_connection(server.address, timeout=2.0) as extra:
                start = time.monotonic()
                assert closed_by_server(extra, 2.0)
                assert time.monotonic() - start < 1.0
            assert server.counts["sessions_refused"] == 1
        finally:
            for sock in held:
                sock.close()


# ================================================================================== CAN IDs
def test_can_ids_are_checked_against_their_format():
    for ident in ("800", "20000000", "1FFFFFFFF", "-1", "+7", "0x7", "7_F", "", "G00", " 7"):
        with pytest.raises(BadCanId):
            parse_send([ident, "0"])
    for ident, value, ext in (("7FF", 0x7FF, False), ("0", 0, False), ("1FFFFFFF", 0x1FFFFFFF, True),
                              ("00000800", 0x800, True), ("0800", 0x800, True)):
        msg = parse_send([ident, "1", "aa"])
        assert (msg.arbitration_id, msg.is_extended_id, bytes(msg.data)) == (value, ext, b"\xaa")
    for bad in (["305", "1", "100"], ["305", "1", "-1"], ["305", "1", "0x1"]):
        with pytest.raises(ValueError):
            parse_send(bad)
    with pytest.raises(BadCanId):
        format_frame(can.Message(arbitration_id=0x800, is_extended_id=False, data=b"\x01"))
    with pytest.raises(BadCanId):
        format_frame(can.Message(arbitration_id=0x20000000, is_extended_id=True, data=b"\x01"))
    assert format_frame(can.Message(arbitration_id=0x7FF, is_extended_id=False, data=b"\x01",
                                    timestamp=1.0)) == "< frame 7FF 1.000000 01 >"
    assert format_frame(can.Message(arbitration_id=0x800, is_extended_id=True, data=b"",
                                    timestamp=1.0)) == "< frame 00000800 1.000000  >"
    assert check_can_id(0x1FFFFFFF, True) == 0x1FFFFFFF
    with pytest.raises(BadCanId):
        check_can_id(-1, True)


def test_out_of_range_can_ids_are_refused_not_relayed():
    channel = f"bankhil-test-{uuid.uuid4().hex[:8]}"
    with SocketcandServer(channels={channel}) as server, \
            can.Bus(interface="virtual", channel=channel) as node:
        sock = handshake(server, channel)
        try:
            time.sleep(server.rawmode_grace_s * 2)
            # client -> bus: only the valid one gets onto the bus, nothing is wrapped
            sock.sendall(b"< send 800 1 aa >< send 20000000 1 bb >< send 1FFFFFFFF 1 cc >"
                         b"< send 7FF 1 dd >< send 1FFFFFFF 1 ee >")
            got = []
            for _ in range(10):
                msg = node.recv(timeout=0.3)
                if msg is None:
                    break
                got.append((msg.arbitration_id, msg.is_extended_id, bytes(msg.data)))
            assert got == [(0x7FF, False, b"\xdd"), (0x1FFFFFFF, True, b"\xee")]
            assert server.counts["bad_can_id"] == 3 and server.counts["bad_send"] == 3
            # bus -> client: a frame whose ID does not fit is not forwarded (no "000" frame)
            node.send(can.Message(arbitration_id=0x800, is_extended_id=False, data=b"\x01"))
            node.send(can.Message(arbitration_id=0x20000000, is_extended_id=True, data=b"\x02"))
            node.send(can.Message(arbitration_id=0x123, is_extended_id=False, data=b"\x03"))
            data = b""
            for _ in range(50):
                if data.count(b">") >= 1 and b" 03 >" in data:
                    break
                data += sock.recv(4096)
            sock.settimeout(0.3)
            try:
                data += sock.recv(4096)  # anything else that might follow
            except TimeoutError:
                pass
            lines = [part.strip() for part in data.decode().split("<") if part.strip()]
            assert len(lines) == 1 and lines[0].startswith("frame 123 ") and lines[0].endswith("03 >")
            assert b"error" not in data  # raw mode: never an < error > python-can would misread
            assert wait_for(lambda: server.counts.get("bad_bus_id") == 2, 2.0), server.counts
            sock.sendall(b"< echo >")  # replies still get through once frames are flowing
            assert sock.recv(64) == b"< echo >"
        finally:
            sock.close()
