"""CAN benchmarks for the BMS client (not tests: shared machines are noisy; we report figures).

1. Decode throughput: frames per second through ``CanBms.process`` -- the receive thread's
   whole path (log line, classify, DBC decode, range checks, store) -- with and without the
   candump log. Target: >= 50,000 frames/s on one core.
2. Zero loss at full bus load: a 500 kbit/s bus carries ~4,000 8-byte frames/s, so 60 s of
   traffic is 240,000 protocol frames, time-stamped 250 us apart. They go from a sender node
   through (a) the virtual bus and (b) the virtual bus, our socketcand server, TCP and
   python-can's socketcand interface, into the client's receive + decode + log path; every
   frame is counted, and the log is read back with ``can.LogReader`` and compared frame by
   frame (ID and data, in order) with what was sent. Frames are pushed as fast as the path
   takes them, so frames/s over 4,000 is headroom over a real bus.
3. Paced: the socketcand path at exactly 4,000 frames/s of wall time for a few seconds, with
   the largest backlog the client had (frames received behind frames sent).

Run:  python benchmarks/bench_can.py [--seconds 60] [--paced-seconds 5]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import uuid
from pathlib import Path

import can

from emulator.endpoints.can_bms import FrameEncoder, load_dbc, protocol_values
from emulator.endpoints.socketcand_server import SocketcandServer
from emulator.twin import build_twin
from instruments.can_bms import CanBms

BUS_FRAMES_PER_S = 4000  # 500 kbit/s, 8-byte standard frames with stuffing: ~125 bits each


def protocol_frames(count: int, rate_hz: float = BUS_FRAMES_PER_S) -> list[can.Message]:
    """``count`` real protocol frames (the 10 battery IDs in turn) ``1/rate_hz`` apart.

    0x356's current changes every cycle so that a dropped or reordered frame changes the data
    sequence, not only the count.
    """
    twin = build_twin("1s4p_diagonal")
    twin.advance(2.0)
    values = protocol_values(twin)
    encoder = FrameEncoder(load_dbc())
    template = encoder.encode(values, 0.0)
    frames = []
    for k in range(count):
        base = template[k % len(template)]
        data = bytes(base.data)
        if base.arbitration_id == 0x356:
            values[0x356]["Current"] = ((k // len(template)) % 2000 - 1000) / 10
            data = bytes(encoder.encode({0x356: values[0x356]}, 0.0)[0].data)
        frames.append(can.Message(arbitration_id=base.arbitration_id, data=data, is_extended_id=False,
                                  timestamp=k / rate_hz))
    return frames


def _copy(frames: list[can.Message]) -> list[can.Message]:
    return [can.Message(arbitration_id=f.arbitration_id, data=f.data, is_extended_id=False,
                        timestamp=f.timestamp) for f in frames]


def decode_throughput(count: int, workdir: Path) -> dict[str, float]:
    frames = protocol_frames(count)
    result: dict[str, float] = {"frames": count}
    for label, log_path in (("with_log", workdir / "decode.log"), ("without_log", None)):
        client = CanBms("virtual", f"bench-{uuid.uuid4().hex[:8]}", heartbeat_on=False, log_path=log_path)
        batch = _copy(frames)
        try:
            start = time.perf_counter()
            for msg in batch:
                client.process(msg)
            wall = time.perf_counter() - start
            assert client.frames_received == count and sum(client.malformed_counts().values()) == 0
        finally:
            client.close()
        result[f"{label}_frames_per_s"] = round(count / wall)
        result[f"{label}_us_per_frame"] = round(wall / count * 1e6, 2)
    return result


def _open_path(transport: str, channel: str, log_path: Path) -> tuple[CanBms, SocketcandServer | None]:
    if transport == "socketcand":
        server = SocketcandServer(interface="virtual", channels={channel})
        host, port = server.start()
        client = CanBms("socketcand", channel, host=host, port=port, heartbeat_on=False, log_path=log_path)
        return client, server
    return CanBms("virtual", channel, heartbeat_on=False, log_path=log_path), None


def zero_loss(transport: str, frames: list[can.Message], workdir: Path) -> dict[str, object]:
    """Push every frame as fast as the path takes it; count, decode, log, read back, compare."""
    channel = f"bench-{uuid.uuid4().hex[:8]}"
    log_path = workdir / f"load_{transport}.log"
    sender = can.Bus(interface="virtual", channel=channel, preserve_timestamps=True)
    client, server = _open_path(transport, channel, log_path)
    try:
        if server is not None:
            time.sleep(server.rawmode_grace_s * 2)  # the session starts forwarding after its grace
        start = time.perf_counter()
        for msg in _copy(frames):
            sender.send(msg)
        progress, stalled_since = -1, time.perf_counter()
        while client.frames_received < len(frames) and time.perf_counter() - stalled_since < 5.0:
            if client.frames_received != progress:
                progress, stalled_since = client.frames_received, time.perf_counter()
            time.sleep(0.001)
        wall = time.perf_counter() - start
        received, malformed = client.frames_received, sum(client.malformed_counts().values())
        bus_errors = client.bus_errors
    finally:
        client.close()
        if server is not None:
            server.stop()
        sender.shutdown()
    logged = [(m.arbitration_id, bytes(m.data)) for m in can.LogReader(log_path)]
    sent = [(m.arbitration_id, bytes(m.data)) for m in frames]
    return {"transport": transport, "frames": len(frames), "simulated_s": len(frames) / BUS_FRAMES_PER_S,
            "received": received, "lost": len(frames) - received, "malformed": malformed,
            "bus_errors": bus_errors, "log_lines": len(logged), "log_matches_sent": logged == sent,
            "wall_s": round(wall, 3), "frames_per_s": round(received / wall),
            "x_bus_load": round(received / wall / BUS_FRAMES_PER_S, 1)}


def paced(seconds: float, workdir: Path) -> dict[str, object]:
    """socketcand path at exactly the bus rate of wall time; largest backlog in frames."""
    frames = protocol_frames(int(seconds * BUS_FRAMES_PER_S))
    channel = f"bench-{uuid.uuid4().hex[:8]}"
    sender = can.Bus(interface="virtual", channel=channel)
    client, server = _open_path("socketcand", channel, workdir / "paced.log")
    backlog = 0
    try:
        time.sleep(0.1)
        start = time.perf_counter()
        for k, msg in enumerate(_copy(frames)):
            due = start + k / BUS_FRAMES_PER_S
            while time.perf_counter() < due:
                time.sleep(0.0005)
            sender.send(msg)
            if k % 40 == 0:
                backlog = max(backlog, k - client.frames_received)
        deadline = time.perf_counter() + 5.0
        while client.frames_received < len(frames) and time.perf_counter() < deadline:
            time.sleep(0.001)
        received = client.frames_received
    finally:
        client.close()
        assert server is not None
        server.stop()
        sender.shutdown()
    return {"transport": "socketcand", "wall_s": seconds, "frames": len(frames), "received": received,
            "lost": len(frames) - received, "max_backlog_frames": backlog,
            "max_backlog_ms": round(backlog / BUS_FRAMES_PER_S * 1000, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="simulated seconds of full bus load")
    parser.add_argument("--decode-frames", type=int, default=200_000)
    parser.add_argument("--paced-seconds", type=float, default=5.0, help="0 skips the paced run")
    args = parser.parse_args()
    # python-can's socketcand client warns on every TCP read that splits a frame: routine here
    logging.getLogger("can.interfaces.socketcand").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        frames = protocol_frames(int(args.seconds * BUS_FRAMES_PER_S))
        report = {
            "decode": decode_throughput(args.decode_frames, workdir),
            "full_load_virtual": zero_loss("virtual", frames, workdir),
            "full_load_socketcand": zero_loss("socketcand", frames, workdir),
        }
        if args.paced_seconds > 0:
            report["paced_socketcand"] = paced(args.paced_seconds, workdir)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
