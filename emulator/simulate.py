"""Run a bench program against the twin and report what happened (``hil simulate``).

This module knows the twin and its files only -- no harness import -- so anyone can inspect the
twin with ``python -m emulator.simulate --dut 4s1p --scenario weak_fet_series --program
series_fet_open`` as well as through ``hil simulate``.

The run is deterministic: the virtual clock advances in pieces that end on every whole second
while the simulated inverter sends its keep-alive, and on every CSV sample time, so a sample is
taken at exactly its time stamp and the same files and seed give the same output, byte for byte.
With the default 1 s sampling the CSV grid is the heartbeat grid: recording changes nothing.

The twin's own observers (``twin.observers``, called after every internal step) carry the CSV
recorder and the per-step peaks; the report reads the twin's public state at the end.
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    # Small nodal matrices: one BLAS thread is several times faster (see harness/cli.py).
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import csv  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, TextIO  # noqa: E402

import numpy as np  # noqa: E402

from bankmodel.specs.loading import FIXTURES, BankSpec, resolve_fixture  # noqa: E402
from emulator.faults import load_bank  # noqa: E402
from bankmodel.files import FileError, load_model, load_yaml  # noqa: E402
from emulator.program import (Charge,  # noqa: E402
                              CloseContactor, Discharge, Heartbeat, Load, OpenContactor,
                              OpenFets, ProgramFile, ReleaseFets, Rest)
from emulator.twin import Twin  # noqa: E402

HEARTBEAT_PERIOD_S = 1.0
DEFAULT_MAX_STEP_S = 1.0
MAX_CSV_ROWS = 1_000_000
_EPS = 1e-9


# ====================================================================== files
def _existing(name_or_path: str | Path, folder: str, what: str) -> Path:
    """Resolve a path or bare stem; a missing file is a FileError listing what exists."""
    path = resolve_fixture(name_or_path, folder)
    if not path.is_file():
        stems = sorted(p.stem for p in (FIXTURES / folder).glob("*.yaml"))
        raise FileError(path, None, "", f"no such {what} file",
                        f"a path to a YAML file or one of: {', '.join(stems) or '(none)'}")
    return path


def load_program(name_or_path: str | Path) -> tuple[ProgramFile, Path]:
    path = _existing(name_or_path, "programs", "program")
    return load_model(ProgramFile, path), path


def load_files(dut: str | Path, scenario: str | Path | None,
               program: str | Path | None) -> tuple[BankSpec, ProgramFile, Path]:
    """Validate every file before anything is built; raise FileError on the first bad one."""
    dut_path = _existing(dut, "duts", "DUT")
    scenario_path = _existing(scenario, "scenarios", "scenario") if scenario else None
    spec = load_bank(dut_path, scenario_path)
    prog, prog_path = load_program(program or "default")
    return spec, prog, prog_path


# ====================================================================== the program, resolved
class _Targets:
    """Resolve a program's names and roles against a built twin (errors name the file's line)."""

    def __init__(self, twin: Twin, path: Path):
        self.twin = twin
        self.path = path
        self._located = None

    def _line(self, loc: tuple[Any, ...]) -> int | None:
        if self._located is None:
            try:
                _, self._located = load_yaml(self.path)
            except FileError:
                return None
        return self._located.line_of(loc)

    def error(self, index: int, field_name: str, found: str, allowed: str) -> FileError:
        return FileError(self.path, self._line(("steps", index, field_name)),
                         f"steps[{index}].{field_name}", found, allowed)

    @staticmethod
    def _role(items: list[str], name: str) -> str | None:
        if not items:
            return None
        return {"first": items[0], "middle": items[len(items) // 2], "last": items[-1]}.get(name)

    def module(self, index: int, name: str) -> str:
        modules = self.twin.modules
        found = self._role(modules, name) or (name if name in modules else None)
        if found is None:
            raise self.error(index, "module", f"'{name}'",
                             f"a module of this DUT ({', '.join(modules)}) or first/middle/last")
        return found

    def contactor(self, index: int, name: str) -> str:
        layout = self.twin.layout
        branches = list(layout.branches)
        found = self._role(branches, name)
        if found is None and name in self.twin.contactor_closed:
            found = name
        if found is None and name in layout.branch_of_module:
            found = layout.branch_of_module[name]
        if found is None:
            raise self.error(index, "contactor", f"'{name}'",
                             f"a contactor of this DUT ({', '.join(self.twin.contactor_closed)}) "
                             "or first/middle/last")
        return found


@dataclass
class _Action:
    """One program step, resolved: what to do at its start, how long, when to stop early."""

    index: int
    kind: str
    describe: str
    start: Callable[[], None]
    seconds: float
    max_step_s: float
    stop: Callable[[Twin], bool] | None = None


@dataclass
class Inverter:
    """The simulated inverter: sends its keep-alive once a second while enabled."""

    heartbeat: bool = True


def resolve_program(twin: Twin, program: ProgramFile, path: Path,
                    inverter: Inverter | None = None) -> list[_Action]:
    """Turn program steps into actions on this twin; raise FileError before anything runs."""
    inverter = inverter if inverter is not None else Inverter()
    targets = _Targets(twin, path)
    rating = twin.bank_rating()
    cells_total = twin.cells * twin.spec.dut.series
    actions: list[_Action] = []

    def amps(step: Load | Charge) -> float:
        return step.current_a if step.current_a is not None else step.c_rate * rating["capacity_ah"]

    for i, step in enumerate(program.steps):
        max_step = step.max_step_s or DEFAULT_MAX_STEP_S
        if isinstance(step, Rest):
            def start() -> None:
                if twin.load.on:
                    twin.load_input(False)
                if twin.supply.on:
                    twin.supply_output(False)
            actions.append(_Action(i, step.kind, f"rest {step.seconds:g} s", start,
                                   step.seconds, max_step))
        elif isinstance(step, Load):  # also Discharge
            current = amps(step)

            def start(current: float = current, min_v: float | None = step.min_voltage_v) -> None:
                if twin.supply.on:
                    twin.supply_output(False)
                twin.set_load(current, min_v)
                if not twin.load.on:
                    twin.load_input(True)
            stop = None
            text = f"{step.kind} {current:g} A for {step.seconds:g} s"
            if isinstance(step, Discharge):
                cutoff = (step.until_voltage_v if step.until_voltage_v is not None
                          else step.until_cell_voltage_v * cells_total
                          if step.until_cell_voltage_v is not None else None)
                if cutoff is not None:
                    text += f" or until {cutoff:g} V"

                    def stop(tw: Twin, cutoff: float = cutoff) -> bool:
                        return tw.terminal_voltage <= cutoff
            actions.append(_Action(i, step.kind, text, start, step.seconds, max_step, stop))
        elif isinstance(step, Charge):
            volts = (step.voltage_v if step.voltage_v is not None
                     else step.cell_voltage_v * cells_total)
            current = amps(step)

            def start(volts: float = volts, current: float = current) -> None:
                if twin.load.on:
                    twin.load_input(False)
                twin.set_supply(volts, current)
                if not twin.supply.on:
                    twin.supply_output(True)
            stop = None
            text = f"charge {volts:g} V / {current:g} A for {step.seconds:g} s"
            if step.until_current_a is not None:
                text += f" or until below {step.until_current_a:g} A"

                def stop(tw: Twin, floor: float = step.until_current_a) -> bool:
                    # only once the supply has entered CV: a CC start may be below the floor
                    return tw.supply.region == "cv" and tw.supply_reading()[1] < floor
            actions.append(_Action(i, step.kind, text, start, step.seconds, max_step, stop))
        elif isinstance(step, (CloseContactor, OpenContactor)):
            name = targets.contactor(i, step.contactor)
            closed = isinstance(step, CloseContactor)
            actions.append(_Action(
                i, step.kind, f"{'close' if closed else 'open'} contactor {name}",
                lambda name=name, closed=closed: twin.set_contactor(name, closed),
                step.seconds, max_step))
        elif isinstance(step, (OpenFets, ReleaseFets)):
            module = targets.module(i, step.module)
            off = isinstance(step, OpenFets)
            actions.append(_Action(
                i, step.kind, f"{'open' if off else 'release'} {module} MOSFETs",
                lambda module=module, off=off: twin.bms_force_off(module, off),
                step.seconds, max_step))
        elif isinstance(step, Heartbeat):
            actions.append(_Action(
                i, step.kind, f"inverter heartbeat {'on' if step.enabled else 'off'}",
                lambda on=step.enabled: setattr(inverter, "heartbeat", on),
                step.seconds, max_step))
        else:  # pragma: no cover - the program model admits no other kinds
            raise TypeError(f"unknown step {step!r}")
    return actions


# ====================================================================== sampling
class CsvRecorder:
    """A twin observer that records one row at every multiple of ``sample_s``."""

    def __init__(self, twin: Twin, sample_s: float):
        self.sample_s = sample_s
        self.next_k = 0
        self.branches = list(twin.layout.branches)
        self.modules = list(twin.modules)
        self.header = (["time_s", "terminal_v", "load_a", "supply_a"]
                       + [f"i_{b}_a" for b in self.branches]
                       + [f"soc_{m}_pct" for m in self.modules]
                       + [f"temp_{m}_c" for m in self.modules]
                       + [f"vds_{m}_v" for m in self.modules])
        self.rows: list[list[float]] = []

    def due(self, now: float) -> bool:
        return now >= self.next_k * self.sample_s - _EPS

    def next_time(self) -> float:
        return self.next_k * self.sample_s

    def record(self, twin: Twin) -> None:
        soc = twin.soc()
        temps = [twin.thermocouple(m) for m in self.modules]
        row = ([twin.clock.now, twin.terminal_voltage, twin.load_reading()[1],
                twin.supply_reading()[1]]
               + [twin.shunt_current(b) for b in self.branches]
               + [100.0 * float(s) for s in soc] + temps + [twin.vds(m) for m in self.modules])
        self.rows.append([_round(v) for v in row])
        now = twin.clock.now
        while self.due(now):
            self.next_k += 1

    def __call__(self, twin: Twin, dt: float) -> None:  # a twin observer
        if self.due(twin.clock.now):
            self.record(twin)

    def write(self, path: Path) -> None:
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.header)
            writer.writerows(self.rows)


class StepPeaks:
    """A twin observer: the largest |Vds| and |branch current| during the current program step."""

    def __init__(self, twin: Twin):
        self.modules = list(twin.modules)            # the order of twin.fet_voltages()
        self.branches = list(twin.layout.branches)   # the order of twin.lead_currents()
        self.reset(twin)

    def reset(self, twin: Twin) -> None:
        # zeros, not the last solution: that one predates the step's own command
        self.vds = np.zeros(len(self.modules))
        self.current = np.zeros(len(self.branches))
        self.steps = 0

    def __call__(self, twin: Twin, dt: float) -> None:
        np.maximum(self.vds, np.abs(twin.fet_voltages()), out=self.vds)
        np.maximum(self.current, np.abs(twin.lead_currents()), out=self.current)
        self.steps += 1

    def summary(self) -> dict[str, Any]:
        if not self.steps:  # a step of zero seconds
            return {"peak_vds_v": None, "peak_vds_module": None,
                    "peak_branch_current_a": None, "peak_branch": None}
        k, j = int(np.argmax(self.vds)), int(np.argmax(self.current))
        return {"peak_vds_v": _round(self.vds[k]), "peak_vds_module": self.modules[k],
                "peak_branch_current_a": _round(self.current[j]),
                "peak_branch": self.branches[j]}


# ====================================================================== the run
@dataclass
class RunResult:
    twin: Twin
    program: ProgramFile
    program_path: Path
    seed: int
    steps_run: list[dict[str, Any]] = field(default_factory=list)
    recorder: CsvRecorder | None = None


def run(spec: BankSpec, program: ProgramFile, program_path: Path, seed: int = 0,
        sample_s: float = 1.0, record: bool = False) -> RunResult:
    """Build the twin, run the program on it, return the twin in its final state."""
    if not (sample_s > 0 and math.isfinite(sample_s)):
        raise ValueError(f"sample period must be a positive number of seconds, not {sample_s}")
    if record and program.duration_s / sample_s > MAX_CSV_ROWS:
        raise ValueError(f"--sample-s {sample_s:g} over this {program.duration_s:g} s program "
                         f"would record {program.duration_s / sample_s:.3g} rows; at most "
                         f"{MAX_CSV_ROWS} (raise --sample-s)")
    twin = Twin(spec, seed=seed)
    inverter = Inverter()
    actions = resolve_program(twin, program, program_path, inverter)
    result = RunResult(twin, program, program_path, seed)
    recorder = CsvRecorder(twin, sample_s) if record else None
    result.recorder = recorder
    if recorder is not None:
        twin.observers.append(recorder)
        recorder.record(twin)  # t = 0
    peaks = StepPeaks(twin)
    twin.observers.append(peaks)
    next_heartbeat = [0]  # index of the next whole second

    def heartbeat_due() -> None:
        while twin.clock.now >= next_heartbeat[0] * HEARTBEAT_PERIOD_S - _EPS:
            if inverter.heartbeat:
                twin.inverter_heartbeat()
            next_heartbeat[0] += 1

    for action in actions:
        action.start()
        heartbeat_due()
        peaks.reset(twin)
        began = twin.clock.now
        end = began + action.seconds
        stopped_early = False
        while end - twin.clock.now > 1e-12:
            boundary = end
            if inverter.heartbeat:
                boundary = min(boundary, next_heartbeat[0] * HEARTBEAT_PERIOD_S)
            if recorder is not None:
                boundary = min(boundary, recorder.next_time())
            twin.advance(boundary - twin.clock.now, max_step=action.max_step_s)
            heartbeat_due()
            if action.stop is not None and action.stop(twin):
                stopped_early = True
                break
        result.steps_run.append({"step": action.index, "kind": action.kind, "what": action.describe,
                                 "start_s": _round(began), "end_s": _round(twin.clock.now),
                                 "stopped_early": stopped_early, **peaks.summary()})
    if recorder is not None and recorder.rows[-1][0] < twin.clock.now - _EPS:
        recorder.record(twin)  # the final state, even off the sample grid
    return result


# ====================================================================== the report
def _round(value: float) -> float | None:
    value = float(value)
    if not math.isfinite(value):
        return None
    return float(f"{value:.9g}")


def _clean(obj: Any) -> Any:
    """JSON-safe: numpy scalars to Python, non-finite floats to null, 9 significant digits."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if hasattr(obj, "item"):  # numpy scalar
        return _clean(obj.item())
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return _round(obj)
    return str(obj)


def report(result: RunResult) -> dict[str, Any]:
    twin = result.twin
    spec = twin.spec
    modules = list(twin.modules)
    soc = twin.soc()
    ocv = twin.ocv()
    events = ([(t, "twin", what) for t, what in twin.events]
              + [(t, "master", what) for t, what in twin.master.events])
    events.sort(key=lambda e: e[0])  # stable: twin before master at the same instant
    load_v, load_a = twin.load_reading()
    supply_v, supply_a = twin.supply_reading()
    out = {
        "dut": spec.dut.name,
        "dut_file": str(spec.dut_path),
        "scenario": spec.scenario.name,
        "scenario_file": str(spec.scenario_path) if spec.scenario_path else None,
        "faults": [f.kind for f in spec.scenario.faults],
        "program": result.program.name,
        "program_file": str(result.program_path),
        "seed": result.seed,
        "bank": {**twin.bank_rating(), "series": spec.dut.series, "parallel": spec.dut.parallel,
                 "arrangement": spec.dut.arrangement if spec.dut.parallel > 1 else "strings",
                 "module_type": spec.module_type.name, "firmware": spec.firmware.version},
        "time_s": twin.clock.now,
        "internal_steps": twin.step_count,
        "steps": result.steps_run,
        "terminal_voltage_v": twin.terminal_voltage,
        "load": {"on": twin.load.on, "setpoint_a": twin.load.current_a, "region": twin.load.region,
                 "voltage_v": load_v, "current_a": load_a},
        "supply": {"on": twin.supply.on, "setpoint_v": twin.supply.voltage_v,
                   "limit_a": twin.supply.current_a, "region": twin.supply.region,
                   "voltage_v": supply_v, "current_a": supply_a},
        "branch_currents_a": twin.branch_currents(),
        "node_voltages_v": {"bank+": twin.node_voltage("bank+"),
                            **{f"{m}.{t}": twin.node_voltage(f"{m}.{t}")
                               for m in modules for t in ("+", "P-")}},
        "module_terminal_v": {m: twin.module_terminal_voltage(m) for m in modules},
        "module_ocv_v": {m: float(ocv[k]) for k, m in enumerate(modules)},
        "module_current_a": {m: twin.module_current(m) for m in modules},
        "soc_pct": {m: 100.0 * float(soc[k]) for k, m in enumerate(modules)},
        "temperature_c": {m: twin.thermocouple(m) for m in modules},
        "fet_state": {m: twin.fet_state(m) for m in modules},
        "vds_v": {m: twin.vds(m) for m in modules},
        "firmware": dict(twin.firmware),
        "contactors": {name: {"closed": twin.contactor_closed[name],
                              "welded": twin.contactor_welded[name],
                              "stuck": twin.contactor_stuck[name]}
                       for name in twin.contactor_closed},
        "fuses": {name: {"rating_a": rating, "blown": twin.fuse_blown[name]}
                  for name, rating in twin.layout.fuses.items()},
        "peaks": {
            "current_a": dict(twin.peaks.current_a),
            "vds_v": {m: float(twin.peaks.vds_v[k]) for k, m in enumerate(modules)},
            "vds_rating_v": {m: float(twin.fet_rating_v[k]) for k, m in enumerate(modules)},
            "avalanche_energy_j": {m: float(twin.fet_energy_j[k]) for k, m in enumerate(modules)},
        },
        "master": dataclasses.asdict(twin.master.report),
        "events": [{"t_s": t, "source": source, "what": what} for t, source, what in events],
        "energy_j": dataclasses.asdict(twin.energy),
    }
    return _clean(out)


# ====================================================================== command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``simulate`` options (used by ``hil simulate`` and ``python -m emulator.simulate``)."""
    parser.add_argument("--dut", required=True, metavar="DUT",
                        help="DUT file, or a name in fixtures/duts/ (e.g. 4s4p)")
    parser.add_argument("--scenario", metavar="SCENARIO",
                        help="fault scenario file, or a name in fixtures/scenarios/ "
                             "(default: healthy, no faults)")
    parser.add_argument("--program", metavar="PROGRAM",
                        help="bench program file, or a name in fixtures/programs/ (default: default)")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seed of the twin's noise generator (default 0)")
    parser.add_argument("--csv", type=Path, metavar="PATH",
                        help="write a time series here (one row every --sample-s)")
    parser.add_argument("--sample-s", type=_positive_float, default=1.0, metavar="X",
                        help="CSV sample period in seconds (default 1)")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive number of seconds")
    return value


def command(args: argparse.Namespace, stdout: TextIO | None = None) -> int:
    """Run ``simulate`` from parsed arguments; FileError propagates to the caller."""
    stdout = stdout or sys.stdout
    spec, program, program_path = load_files(args.dut, args.scenario, args.program)
    if args.csv is not None:  # find out now, not after the run, that it cannot be written
        try:
            args.csv.open("a", encoding="utf-8").close()
        except OSError as exc:
            raise FileError(args.csv, None, "--csv", f"a path that cannot be written "
                            f"({exc.strerror or exc.__class__.__name__})",
                            "a file path in an existing, writable folder") from None
    result = run(spec, program, program_path, seed=args.seed, sample_s=args.sample_s,
                 record=args.csv is not None)
    if args.csv is not None and result.recorder is not None:
        result.recorder.write(args.csv)
    json.dump(report(result), stdout, indent=2, allow_nan=False)
    stdout.write("\n")
    stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (no harness): ``python -m emulator.simulate --dut 1s1p``."""
    parser = argparse.ArgumentParser(prog="python -m emulator.simulate",
                                     description="Run a bench program on the bank twin.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return command(args)
    except FileError as err:
        print(str(err), file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
