"""The emulated bench: one twin, its wiring to instrument inputs, and who moves its clock.

Emulated endpoints (SCPI servers, the CAN BMS, the SunSpec server) never touch the twin's
internals: they read *inputs* -- a voltage between two nodes, a shunt, a thermocouple -- as the
wiring says an instrument channel is connected, and they command the bench as a real bench
would (supply, load, contactor coils, BMS service commands). Every access holds the bench lock,
so endpoints on several threads see one consistent twin.

Time moves in one of two ways: a test harness advances the virtual clock explicitly
(:meth:`EmulatedBench.advance`), or ``hil emulate`` runs it against wall time
(:meth:`EmulatedBench.run_realtime`). Armed digitiser captures limit the twin's step to their
sample interval so a waveform has the resolution asked for.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from bankmodel.channels import ChannelMap, Input
from bankmodel.units import Quantity
from emulator.twin import Twin


def default_wiring(twin: Twin) -> ChannelMap:
    """The wiring an emulated station uses: every module, every shunt, every thermocouple.

    Scanner channels follow the DAQ970A card layout: slot 1 (101-140) module voltages and
    shunts, slot 2 (201-240) thermocouples; the actuator card is slot 3 (301-...). It is the
    one channel-map type (:class:`bankmodel.channels.ChannelMap`) a station file describes.
    """
    shunt = Quantity.of(twin.spec.dut.interconnect.shunt_uohm, "uohm")
    scanner: list[dict[str, Any]] = []
    channel = 101
    for module in twin.modules:
        scanner.append({"channel": channel, "kind": "voltage", "plus": f"{module}.+", "minus": f"{module}.P-"})
        channel += 1
    for branch in twin.layout.branches:
        scanner.append({"channel": channel, "kind": "shunt", "branch": branch, "resistance": shunt})
        channel += 1
    channel = 201
    for point in twin.thermal.names:
        scanner.append({"channel": channel, "kind": "thermocouple", "point": point})
        channel += 1
    actuator = [{"channel": 301 + k, "contactor": name} for k, name in enumerate(twin.layout.contactors)]
    first = twin.modules[0]
    dmm = {"dmm_vds": {"kind": "voltage", "plus": f"{first}.P-", "minus": f"{first}.B-"},
           "dmm_shunt": {"kind": "shunt", "branch": twin.layout.branches[-1], "resistance": shunt}}
    return ChannelMap.model_validate({"scanner": scanner, "actuator": actuator, "dmm": dmm,
                                      "acir_module": first}, strict=False)


@dataclass
class Noise:
    """Seeded measurement noise (1 sigma) per kind of input."""

    voltage_v: float = 50e-6
    shunt_v: float = 0.2e-6
    temperature_c: float = 0.05


class Capture:
    """A digitiser capture: samples of one input at a fixed interval of bench time."""

    def __init__(self, bench: "EmulatedBench", source: Input, interval_s: float, count: int):
        self.bench, self.source = bench, source
        self.interval_s, self.count = interval_s, count
        self.samples: list[float] = []
        self.t0_s = bench.twin.clock.now
        self._next = self.t0_s
        self._sample(bench.twin)

    def _sample(self, twin: Twin) -> None:
        while not self.done and twin.clock.now >= self._next - 1e-12:
            self.samples.append(self.bench.read(self.source, noisy=True))
            self._next = self.t0_s + len(self.samples) * self.interval_s

    def observe(self, twin: Twin, dt: float) -> None:
        self._sample(twin)

    def cancel(self) -> None:
        """Abort: keep what was sampled, stop sampling (and stop limiting the twin's step)."""
        self.count = len(self.samples)

    @property
    def done(self) -> bool:
        return len(self.samples) >= self.count


class BenchLock:
    """The bench's re-entrant lock; whoever takes it first (not re-entering) calls ``on_entry``
    with it held -- the bench brings its twin up to the present there (:meth:`EmulatedBench.to_present`).

    ``with lock:``, ``acquire(blocking, timeout)`` and ``release()`` as :class:`threading.RLock`.
    """

    def __init__(self, on_entry: Callable[[], None]):
        self._lock = threading.RLock()
        self._held = threading.local()
        self._on_entry = on_entry

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not self._lock.acquire(blocking, timeout):
            return False
        depth = getattr(self._held, "depth", 0)
        self._held.depth = depth + 1
        if depth == 0:
            try:
                self._on_entry()
            except BaseException:
                self.release()
                raise
        return True

    def release(self) -> None:
        self._held.depth -= 1
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class EmulatedBench:
    def __init__(self, twin: Twin, wiring: ChannelMap | None = None, noise: Noise | None = None):
        self.twin = twin
        self.wiring = wiring or default_wiring(twin)
        self.noise = noise or Noise()
        self.lock = BenchLock(self.to_present)
        self.captures: list[Capture] = []
        self._stop = threading.Event()
        # (wall time, bench time, speed) while run_realtime follows wall time
        self._wall_origin: tuple[float, float, float] | None = None

    # -- reading inputs -----------------------------------------------------------------------
    def read(self, source: Input, noisy: bool = True) -> float:
        twin = self.twin
        with self.lock:
            if source.kind == "voltage":
                return twin.probe(source.plus, source.minus, self.noise.voltage_v if noisy else 0.0)
            if source.kind == "shunt":
                volts = twin.shunt_current(source.branch) * source.shunt_ohm
                return twin.noisy(volts, self.noise.shunt_v if noisy else 0.0)
            return twin.thermocouple(source.point, self.noise.temperature_c if noisy else 0.0)

    def capture(self, source: Input, interval_s: float, count: int) -> Capture:
        with self.lock:
            capture = Capture(self, source, interval_s, count)
            self.captures = [c for c in self.captures if not c.done] + [capture]
            self.twin.observers.append(capture.observe)
            return capture

    def ac_ir(self) -> tuple[float, float]:
        """1 kHz AC resistance and voltage of the module the AC-IR leads touch: the twin's own
        impedance of that module (a fault that raises its resistance shows here)."""
        twin = self.twin
        with self.lock:
            module = self.wiring.acir_module
            ohm = twin.module_ac_resistance(module, noise_ohm=2e-6)
            volts = twin.module_terminal_voltage(module)
            return ohm, twin.noisy(volts, self.noise.voltage_v)

    # -- time ---------------------------------------------------------------------------------
    def _max_step(self, max_step: float) -> float:
        active = [c.interval_s for c in self.captures if not c.done]
        return min([max_step] + active)

    def advance(self, seconds: float, max_step: float = 1.0) -> None:
        """Advance bench time (virtual clock); captures in progress keep their resolution."""
        with self.lock:
            target = self.twin.clock.now + seconds
            while self.twin.clock.now < target - 1e-12:
                step_limit = self._max_step(max_step)
                chunk = min(target - self.twin.clock.now, max(step_limit * 1000, 1.0))
                self.twin.advance(chunk, max_step=step_limit)
                self.captures = [c for c in self.captures if not c.done]
                self.twin.observers = [o for o in self.twin.observers
                                       if not (hasattr(o, "__self__") and isinstance(o.__self__, Capture)
                                               and o.__self__.done)]

    def run_realtime(self, speed: float = 1.0, tick_s: float = 0.01) -> None:
        """Follow wall time (times ``speed``) until :meth:`stop`; the caller's thread blocks.

        Every ``tick_s`` the twin is brought up to the present, and so it is whenever an
        endpoint takes the bench lock (:meth:`to_present`): on a busy host this thread may not
        run for a while, and a command taken in meanwhile would otherwise act in the twin's
        past -- a load switched on 0.5 s back in bench time, so its 1 s over-current debounce
        ended 0.5 s of wall time after the harness's command."""
        self._wall_origin = (time.monotonic(), self.twin.clock.now, speed)
        try:
            while not self._stop.is_set():
                with self.lock:  # taking it brings the twin to the present
                    pass
                self._stop.wait(tick_s)
        finally:
            self._wall_origin = None

    def to_present(self) -> None:
        """Following wall time: advance the twin to now (called with the bench lock held, by
        the lock itself for whoever takes it first). On a virtual clock nothing: time moves
        only when the harness advances it."""
        origin = self._wall_origin
        if origin is None:
            return
        wall, bench, speed = origin
        behind = bench + (time.monotonic() - wall) * speed - self.twin.clock.now
        if behind > 0:
            self.advance(behind)

    def stop(self) -> None:
        self._stop.set()

    @property
    def now(self) -> float:
        return self.twin.clock.now
