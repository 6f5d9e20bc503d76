"""A shared instrument (two sockets of an end-of-line station on one meter) is locked per use.

``shared: true`` in a station file -> ``options["shared"]`` -> the driver takes an
inter-process ``flock`` per transaction, per public method, per :meth:`exclusive` block and over
a capture (arm ... fetch). What is proved here:

- two *processes* on one emulated SCPI instrument (the Hioki BT3562 endpoint of an emulated
  bench, over real loopback TCP) never interleave their multi-command sequences: the server's
  own record of what each connection sent, in arrival order, shows each sequence contiguous;
- a peer holding the lock too long is an InstrumentError naming the resource, "held by another
  socket" and the holder's pid;
- ``safe_state`` goes ahead (after a short bound, logged) while a peer holds the lock;
- re-entrancy (nested exclusive sections, public methods inside them), capture spans;
- not shared: no lock file, no wrapper, no wait even while a peer holds the lock;
- the station file's ``shared:`` field, its runtime entry, and ``_connect`` passing it on.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import fcntl
import pytest
import yaml

import instruments.scpi as scpi
from bankmodel.files import FileError
from emulator.bench import EmulatedBench
from emulator.endpoints import start_scpi_endpoints, stop_scpi_endpoints
from emulator.twin import build_twin
from harness.bench import _connect
from harness.config import load_station
from instruments.roles import InstrumentError
from instruments.scpi import ScpiInstrument, SharedLock, canonical_resource, lock_path

REPO = Path(__file__).resolve().parents[1]
RESOURCE = "TCPIP0::192.0.2.30::5025::SOCKET"
NO_ERROR = '+0,"No error"'


# ================================================================================== helpers
class FakeSession:
    """A pyvisa-like session that answers every query; records what was sent, when."""

    def __init__(self) -> None:
        self.timeout = 1000.0
        self.sent: list[str] = []
        self.closed = False
        self._reply = ""

    def write(self, message: str) -> int:
        self.sent.append(message)
        self._reply = NO_ERROR if message == "SYST:ERR?" else "1"
        return len(message)

    def read(self) -> str:
        return self._reply

    def clear(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class Probe(ScpiInstrument):
    """A minimal driver: a two-command sequence, a capture pair, a safe state."""

    def sequence(self) -> None:
        self.write("STEP:ONE")
        self.write("STEP:TWO")

    def arm_digitise(self, interval_s: float = 1e-3, count: int = 10) -> None:
        self.write("INIT")

    def fetch_waveform(self) -> str:
        return self.query("FETC?")

    def safe_state(self) -> None:
        self.write("OUTP OFF")


@pytest.fixture
def lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "locks"
    monkeypatch.setenv(scpi.LOCK_DIR_ENV, str(directory))
    return directory


def probe(shared: bool, timeout_s: float = 0.2, **options: Any) -> Probe:
    return Probe(RESOURCE, "probe", timeout_s=timeout_s, options={"shared": shared, **options},
                 session=FakeSession())


@pytest.fixture
def peer_hold(lock_dir: Path) -> Iterator[Any]:
    """Hold a resource's lock file as a peer socket does (its own open file: flock conflicts)."""
    fds: list[int] = []

    def hold(resource: str = RESOURCE, note: str = "pid 424242 peer-socket") -> int:
        path = lock_path(resource)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.write(fd, note.encode())
        fds.append(fd)
        return fd

    yield hold
    for fd in fds:
        os.close(fd)


def is_locked(resource: str = RESOURCE) -> bool:
    """Whether some open file holds the resource's flock (tested from a fresh open file)."""
    path = lock_path(resource)
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


# ================================================================================== two processes
WORKER = textwrap.dedent("""
    import json, os, sys, time
    from instruments.drivers.hioki_bt3562 import HiokiBt3562
    resource, start, rounds, shared = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
    meter = HiokiBt3562(resource, "acir", timeout_s=2.0, options={"shared": shared})
    print("ready", flush=True)
    while not os.path.exists(start):   # both connected before either starts
        time.sleep(0.001)
    readings = []
    for k in range(rounds):
        meter.configure()                          # 5 commands, each with its *ESR?
        with meter.exclusive("configure+read"):    # a sequence spanning two public calls
            meter.configure()
            readings.append(meter.measure())
    meter.close()
    print(json.dumps({"pid": os.getpid(), "readings": len(readings)}))
""")

CONFIGURE = [":SYST:HEAD OFF", "*ESR?", ":FUNC RV", "*ESR?", ":TRIG:SOUR IMM", "*ESR?",
             ":INIT:CONT OFF", "*ESR?", ":AUT ON", "*ESR?"]


@pytest.fixture
def acir_endpoint() -> Iterator[tuple[Any, str, list[tuple[str, str]]]]:
    """The emulated bench's BT3562 endpoint; its device records (connection, line) in order."""
    bench = EmulatedBench(build_twin("1s4p_diagonal"))
    endpoints = start_scpi_endpoints(bench)
    server, resource = endpoints["acir"]
    received: list[tuple[str, str]] = []
    device = server.device
    execute = device.execute

    def recording(line: str) -> Any:
        with device.lock:  # one order for all connections: the order the device executes them
            received.append((threading.current_thread().name, line))
            return execute(line)

    device.execute = recording  # type: ignore[method-assign]
    try:
        yield server, resource, received
    finally:
        stop_scpi_endpoints(endpoints)


def run_workers(resource: str, tmp_path: Path, shared: bool, rounds: int, env: dict[str, str]) -> list[dict]:
    start = tmp_path / "start"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, resource, str(start), str(rounds),
                               "1" if shared else "0"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready", proc.communicate(timeout=30)[1]
    start.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def runs(received: list[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """Consecutive lines from one connection, grouped: [(connection, [lines...]), ...]."""
    grouped: list[tuple[str, list[str]]] = []
    for conn, line in received:
        if grouped and grouped[-1][0] == conn:
            grouped[-1][1].append(line)
        else:
            grouped.append((conn, [line]))
    return grouped


def test_two_processes_on_one_shared_meter_never_interleave(acir_endpoint, tmp_path: Path, lock_dir: Path):
    _, resource, received = acir_endpoint
    env = {**os.environ, scpi.LOCK_DIR_ENV: str(lock_dir), "PYTHONPATH": str(REPO)}
    rounds = 15
    results = run_workers(resource, tmp_path, shared=True, rounds=rounds, env=env)
    assert [r["readings"] for r in results] == [rounds, rounds]

    connections = {conn for conn, _ in received}
    assert len(connections) == 2
    for conn, lines in runs(received):
        # every contiguous run is whole sequences: the opening *CLS, a lone configure, or an
        # exclusive configure + measure (configure again, then :READ?); never a piece of one
        units: list[list[str]] = []
        k = 0
        while k < len(lines):
            if lines[k:k + 2] == ["*CLS", "*ESR?"]:
                units.append(lines[k:k + 2])
                k += 2
            elif lines[k:k + len(CONFIGURE)] == CONFIGURE:
                units.append(lines[k:k + len(CONFIGURE)])
                k += len(CONFIGURE)
            elif lines[k] == ":READ?":
                units.append([":READ?"])
                k += 1
            else:
                pytest.fail(f"{conn}: a sequence cut short or interleaved at {lines[k:k + 4]}: {lines}")
        # a :READ? always comes straight after the configure of its exclusive block
        for before, unit in zip(units, units[1:]):
            if unit == [":READ?"]:
                assert before == CONFIGURE, f"{conn}: :READ? not in one block with its configure"
    # each process's commands are all there: per round two configures and one :READ?
    for conn in connections:
        lines = [line for c, line in received if c == conn]
        assert lines.count(":READ?") == rounds
        assert lines.count(":FUNC RV") == 2 * rounds
    # and they did take turns: more than one switch between the two connections
    assert len(runs(received)) > 2


# ================================================================================== timeouts
def test_lock_held_by_a_peer_process_times_out_with_a_clear_error(lock_dir: Path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from instruments.scpi import SharedLock
            lock = SharedLock.for_resource({RESOURCE!r})
            assert lock.acquire(5.0, "scanner of socket 2")
            print("held", flush=True)
            sys.stdin.readline()
            lock.release()
        """)], cwd=REPO, env={**os.environ, scpi.LOCK_DIR_ENV: str(lock_dir), "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        meter = probe(True, timeout_s=0.05, clear_on_open=False)  # waits 0.05 s x 10
        t0 = time.monotonic()
        with pytest.raises(InstrumentError) as info:
            meter.sequence()
        waited = time.monotonic() - t0
        text = str(info.value)
        assert RESOURCE in text and "held by another socket" in text
        assert f"pid {holder.pid} scanner of socket 2" in text
        assert "0.5 s" in text and 0.45 < waited < 3.0
        assert meter._session.sent == []  # nothing was sent
    finally:
        holder.communicate("\n", timeout=10)
    meter.sequence()  # the peer let go: works again
    assert meter._session.sent == ["STEP:ONE", "SYST:ERR?", "STEP:TWO", "SYST:ERR?"]


def test_a_waiter_gets_the_lock_as_soon_as_the_peer_lets_go(lock_dir: Path, peer_hold):
    fd = peer_hold()
    meter = probe(True, timeout_s=0.5, clear_on_open=False)  # up to 5 s
    threading.Timer(0.3, lambda: fcntl.flock(fd, fcntl.LOCK_UN)).start()
    t0 = time.monotonic()
    meter.sequence()
    assert 0.25 < time.monotonic() - t0 < 2.0


def test_wait_bound_is_the_timeout_times_the_factor(lock_dir: Path, peer_hold):
    peer_hold()
    meter = probe(True, timeout_s=0.02, clear_on_open=False)
    t0 = time.monotonic()
    with pytest.raises(InstrumentError, match=r"'STEP:ONE'.*held by another socket for more than 0.2 s"
                                              r".*pid 424242 peer-socket"):
        meter.write("STEP:ONE")
    assert 0.18 < time.monotonic() - t0 < 1.5


# ================================================================================== safe state
def test_safe_state_goes_ahead_without_the_lock_when_a_peer_holds_it(lock_dir: Path, peer_hold, caplog):
    meter = probe(True, timeout_s=5.0)  # a transaction would wait up to 50 s
    meter._session.sent.clear()
    peer_hold()
    caplog.set_level(logging.WARNING, logger="instruments.scpi")
    t0 = time.monotonic()
    meter.safe_state()
    took = time.monotonic() - t0
    assert meter._session.sent == ["OUTP OFF", "SYST:ERR?"]
    assert ScpiInstrument.SAFE_STATE_LOCK_WAIT_S * 0.9 < took < 2.0
    assert "going safe without the lock" in caplog.text and "424242" in caplog.text
    # the bypass was for that safe_state only: a plain write waits for the peer again
    meter.timeout_s = 0.02
    with pytest.raises(InstrumentError, match="held by another socket"):
        meter.write("STEP:ONE")


def test_safe_state_takes_the_lock_when_it_is_free_and_ends_a_capture(lock_dir: Path):
    meter = probe(True)
    meter.arm_digitise()
    assert is_locked()  # the capture holds it between arm and fetch
    meter.safe_state()
    assert not is_locked()
    assert meter._session.sent[-2:] == ["OUTP OFF", "SYST:ERR?"]


def test_safe_state_from_another_thread_while_this_process_waits_for_a_peer(lock_dir: Path, peer_hold):
    """The run's thread is waiting (bounded) for the peer; the supervisor's safe-state thread
    must not queue behind it."""
    peer_hold()
    meter = probe(True, timeout_s=0.3, clear_on_open=False)  # the run waits up to 3 s
    errors: list[Exception] = []

    def run() -> None:
        try:
            meter.sequence()
        except InstrumentError as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    meter.safe_state()
    assert time.monotonic() - t0 < 1.5
    assert meter._session.sent[:2] == ["OUTP OFF", "SYST:ERR?"]
    worker.join(10)
    assert errors and "held by another socket" in str(errors[0])


# ================================================================================== re-entrancy, spans
def test_nested_exclusive_and_methods_inside_it_do_not_deadlock(lock_dir: Path):
    meter = probe(True)
    shared = meter._shared
    assert shared is not None and shared.depth == 0 and not is_locked()
    with meter.exclusive("outer"):
        assert is_locked() and shared.depth == 1
        with meter.exclusive("inner"):
            meter.sequence()  # a wrapped public method, its transactions: all nested
            assert shared.depth == 2
        meter.write("STEP:THREE")
        assert is_locked()
    assert shared.depth == 0 and not is_locked()


def test_another_thread_of_the_same_process_joins_the_hold(lock_dir: Path):
    meter = probe(True)
    done = threading.Event()
    with meter.exclusive():
        thread = threading.Thread(target=lambda: (meter.write("FROM:THREAD"), done.set()))
        thread.start()
        time.sleep(0.05)
        assert not done.is_set()  # serialised behind this block by the driver's thread lock
    thread.join(5)
    assert done.is_set() and not is_locked()


def test_a_capture_holds_the_lock_from_arm_to_fetch(lock_dir: Path, peer_hold):
    meter = probe(True)
    meter.arm_digitise()
    assert is_locked() and meter._shared.depth == 1
    meter.write("*TRG")  # in the span: joins it
    meter.arm_digitise()  # re-armed: still one span
    assert meter._shared.depth == 1
    assert meter.fetch_waveform() == "1"
    assert not is_locked() and meter._shared.depth == 0
    meter.arm_digitise()
    meter.close()  # closing ends the span too
    assert not is_locked()


def test_a_failed_arm_holds_nothing(lock_dir: Path):
    meter = probe(True)
    meter._session.write = lambda m: (_ for _ in ()).throw(OSError("link down"))  # type: ignore
    with pytest.raises(InstrumentError):
        meter.arm_digitise()
    assert not is_locked() and meter._shared.depth == 0


def test_a_fork_does_not_inherit_the_hold(lock_dir: Path):
    meter = probe(True)
    with meter.exclusive():
        pid = os.fork()
        if pid == 0:  # child: the parent's hold is not ours
            ok = SharedLock.for_resource(RESOURCE).acquire(0.2) is False
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# ================================================================================== not shared
def test_not_shared_takes_no_file_lock(lock_dir: Path, peer_hold):
    meter = probe(False)
    assert meter._shared is None
    assert "sequence" not in vars(meter) and "safe_state" not in vars(meter)  # no wrappers
    meter.sequence()
    meter.arm_digitise()
    assert not lock_dir.exists()  # no lock file made
    peer_hold()  # a peer holding "its" lock does not slow an unshared driver down
    t0 = time.monotonic()
    meter.sequence()
    with meter.exclusive():
        meter.write("STEP:THREE")
    assert time.monotonic() - t0 < 0.1


def test_shared_must_be_a_bool_and_not_an_option_a_station_lists(lock_dir: Path):
    with pytest.raises(ValueError, match="shared must be true or false"):
        probe("yes")  # type: ignore[arg-type]
    assert "shared" not in ScpiInstrument.OPTIONS  # a station says it as shared:, not in options


def test_no_fcntl_refuses_a_shared_instrument_at_construction(lock_dir: Path, monkeypatch):
    monkeypatch.setattr(scpi, "fcntl", None)
    with pytest.raises(InstrumentError, match="shared: true needs fcntl.flock"):
        probe(True)
    probe(False)  # unshared: fine without it


def test_lock_file_names_one_instrument_however_it_is_spelt(lock_dir: Path):
    assert lock_path("TCPIP::192.0.2.10::INSTR") == lock_path("tcpip0::192.0.2.10::inst0::INSTR")
    assert lock_path("TCPIP0::192.0.2.10::5025::SOCKET") != lock_path("TCPIP0::192.0.2.11::5025::SOCKET")
    assert canonical_resource("GPIB::7::INSTR") == "GPIB0::7::INSTR"
    assert lock_path(RESOURCE).parent == lock_dir and lock_path(RESOURCE).suffix == ".lock"
    assert len(lock_path(RESOURCE).stem) == 40  # sha1


def test_default_lock_dir_is_under_the_temp_dir(monkeypatch):
    import tempfile

    monkeypatch.delenv(scpi.LOCK_DIR_ENV, raising=False)
    assert scpi.lock_dir() == Path(tempfile.gettempdir()) / "bankhil-locks"


# ================================================================================== station file
def station_with_shared(tmp_path: Path, value: Any) -> Path:
    data = yaml.safe_load((REPO / "fixtures" / "stations" / "lab_example.yaml").read_text())
    data["instruments"]["acir"]["shared"] = value
    data["instruments"]["scanner"]["shared"] = value
    data["instruments"]["actuator"]["shared"] = value
    path = tmp_path / "station.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_station_file_shared_reaches_the_runtime_entry(tmp_path: Path):
    station = load_station(station_with_shared(tmp_path, True))
    assert station.instruments["acir"].shared and not station.instruments["supply"].shared
    runtime = station.as_runtime()["instruments"]
    assert runtime["acir"]["shared"] is True and runtime["scanner"]["shared"] is True
    assert "shared" not in runtime["supply"]  # unset: the entry is as it always was
    plain = load_station(REPO / "fixtures" / "stations" / "lab_example.yaml")
    assert not any("shared" in e for e in plain.as_runtime()["instruments"].values())


def test_station_file_shared_must_be_a_boolean(tmp_path: Path):
    with pytest.raises(FileError) as info:
        load_station(station_with_shared(tmp_path, "sometimes"))
    assert "shared" in str(info.value)


def test_connect_passes_shared_to_the_driver(acir_endpoint, lock_dir: Path):
    _, resource, _ = acir_endpoint
    shared = _connect("acir", {"driver": "hioki_bt3562", "resource": resource, "shared": True,
                               "options": {"trigger_source": "IMM"}})
    plain = _connect("acir", {"driver": "hioki_bt3562", "resource": resource})
    try:
        assert shared._shared is not None and shared.options["trigger_source"] == "IMM"
        assert plain._shared is None
        assert shared.measure() and plain.measure()
    finally:
        shared.close()
        plain.close()
