"""The pytest plugin: files in, bench assembled, one pytest test per plan step, results out.

Loaded by the repository's conftest.py. It does nothing unless ``--plan`` is given, so the
project's own tests run untouched. With a plan:

1. ``pytest_configure`` validates the station, DUT and plan (and the plan against the station)
   before anything is energised; a bad file ends the run with exit status 2 and one line naming
   file, line, field, what was found and what is allowed.
2. Each plan step becomes a test ``test_plans/test_plan_steps.py::test_step[<step name>]``, so
   ``-k``, ``-m``, ``-x`` and ``--lf`` work.
3. The session fixture assembles the bench and wraps it in the safety supervisor, which brings
   it to safe state on every way out. Measurements go to the result store, Allure and the console
   as they are taken.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bankmodel.files import FileError
from harness.measure import Limits, Measurement, Recorder
from harness.reporting.allure_labels import measurement_parameter
from harness.reporting.artifacts import TraceArtifacts

REPO = Path(__file__).resolve().parents[1]
DEFAULT_STATION = REPO / "fixtures" / "stations" / "emulated.yaml"
DEFAULT_PLAN = REPO / "test_plans" / "bank_smoke.yaml"
DEFAULT_DUT = "1s4p_diagonal"
DEFAULT_RESULTS = "sqlite:///" + str(REPO / "reports" / "results.sqlite")
log = logging.getLogger("bankhil")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bankhil", "bankhil: run a test plan on a bench")
    group.addoption("--plan", default=None, help="plan file (test_plans/*.yaml) or stem")
    group.addoption("--station", default=None, help="station file (default: the emulated station)")
    group.addoption("--dut", default=None, help="DUT file or stem in fixtures/duts/")
    group.addoption("--serial", default=None, help="the DUT's serial number (scanned)")
    group.addoption("--operator", default=os.environ.get("USER", "operator"))
    group.addoption("--scenario", default=None, help="twin fault scenario (emulated stations only)")
    group.addoption("--results", default=None, help="result store URL (default: reports/results.sqlite)")
    group.addoption("--seed", type=int, default=0, help="emulator noise seed")
    group.addoption("--bms-profile", default=None,
                    help="BMS profile of the station's CAN pack (fixtures/bms_profiles/ name or path): "
                         "overrides bms.can.profile; an emulated BMS plays it")
    group.addoption("--run-dir", default=None,
                    help="folder for this run's plots, CAN log and summary (default: beside --alluredir, "
                         "else reports/runs/<time>-<id>)")
    group.addoption("--run-uuid", default=None, help="the run's id in the result store (default: new)")


def _resolve(value: str, folder: Path) -> Path:
    path = Path(value)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return folder / f"{value}.yaml"


@dataclass
class RunContext:
    """Everything validated before the bench is touched."""

    plan: Any
    plan_path: Path
    plan_hash: str
    station: Any  # harness.config.StationFile
    station_path: Path
    dut_spec: Any
    dut_arg: str
    scenario: str | None
    serial: str
    operator: str
    results_url: str
    seed: int
    run_uuid: str = ""
    run_dir: Path = REPO / "reports" / "runs" / "unnamed"
    allure_dir: Path | None = None
    gate_failed: str | None = None
    verdicts: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # step -> instrument/harness error text
    running: tuple[str, Any] | None = None  # (step name, store step id) while a step runs
    aborted: str | None = None  # why the run was interrupted (Ctrl-C, SIGTERM)
    run_verdict: str | None = None
    measurements: list[tuple[str, Measurement]] = field(default_factory=list)
    serial_given: str | None = None  # --serial as scanned (None: the DUT's default serial)

    @classmethod
    def load(cls, config: pytest.Config) -> "RunContext":
        from bankmodel.specs.loading import load_bank_spec
        from harness.config import load_plan, load_station, validate_run
        from harness.check_registry import known_checks

        plan_path = _resolve(config.getoption("--plan"), REPO / "test_plans")
        station_path = _resolve(config.getoption("--station") or str(DEFAULT_STATION),
                                REPO / "fixtures" / "stations")
        from harness.config.station import with_bms_profile
        station = with_bms_profile(load_station(station_path), config.getoption("--bms-profile"))
        checks = known_checks()
        plan = load_plan(plan_path, checks)
        dut_arg = config.getoption("--dut") or _default_dut(plan, station)
        scenario = config.getoption("--scenario")
        if scenario and not station.emulated:
            raise FileError(station_path, None, "--scenario", f"'{scenario}'",
                            "fault scenarios only on an emulated station")
        dut_spec = load_bank_spec(dut_arg, scenario)
        if scenario:
            from harness.emulated import check_scenario
            check_scenario(dut_spec)
        serial = config.getoption("--serial") or _default_serial(dut_spec.dut)
        validate_run(plan, station, dut_spec, checks, scenario=scenario, serial=serial)
        run_uuid = config.getoption("--run-uuid") or str(uuid.uuid4())
        allure_dir = getattr(config.option, "allure_report_dir", None)
        return cls(plan, plan_path, hashlib.sha256(plan_path.read_bytes()).hexdigest()[:16],
                   station, station_path, dut_spec, str(dut_arg), scenario, serial,
                   config.getoption("--operator"),
                   config.getoption("--results") or DEFAULT_RESULTS, config.getoption("--seed"),
                   run_uuid, _run_dir(config.getoption("--run-dir"), allure_dir, run_uuid),
                   Path(allure_dir) if allure_dir else None, serial_given=config.getoption("--serial"))


def _default_serial(dut: Any) -> str:
    """The serial a run records when none was scanned: a one-module DUT is its module (the
    module's own serial, as its BMS reports it); a bank is ``serial_prefix`` + ``batch``."""
    if dut.series * dut.parallel == 1:
        entry = dut.modules.get("s1p1")
        return entry.serial if entry is not None and entry.serial else f"{dut.serial_prefix}{dut.batch}-001"
    return f"{dut.serial_prefix}{dut.batch}"


def _default_dut(plan: Any, station: Any) -> str:
    """The DUT when ``--dut`` is not given: on an emulated station the plan's own ``dut:`` (the
    twin it was written for), then the station's; on hardware the station's (what is wired)."""
    if station.emulated and plan.dut:
        return plan.dut
    return station.dut or plan.dut or DEFAULT_DUT


def _run_dir(option: str | None, allure_dir: str | None, run_uuid: str) -> Path:
    """Where the run keeps its plots, CAN log and summary: asked for, or beside its Allure
    results (``hil run`` puts those in reports/runs/<run>/allure-results), or a new folder."""
    if option:
        return Path(option).resolve()
    if allure_dir and Path(allure_dir).name == "allure-results":
        return Path(allure_dir).resolve().parent
    return REPO / "reports" / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{run_uuid[:8]}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "plan_step: a step of a bankhil test plan")
    if not config.getoption("--plan", default=None):
        return
    # third-party chatter off (pymodbus hex dumps, asyncio debug); python-can's socketcand
    # client warns on every TCP read that splits a frame: not news
    for noisy in ("pymodbus", "asyncio", "pyvisa", "matplotlib", "PIL", "urllib3", "selenium"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("can.interfaces.socketcand").setLevel(logging.ERROR)
    logging.getLogger("can.interfaces.socketcand.socketcand").setLevel(logging.ERROR)
    try:
        config._bankhil = RunContext.load(config)  # type: ignore[attr-defined]
    except FileError as err:
        sys.stderr.write(f"{err}\n")
        sys.stderr.flush()
        os._exit(2)  # nothing energised yet; no traceback, no half-started session
    for step in config._bankhil.plan.steps:  # type: ignore[attr-defined]
        for marker in step.markers:
            config.addinivalue_line("markers", f"{marker}: plan marker")


def _ctx(config: pytest.Config) -> RunContext:
    ctx = getattr(config, "_bankhil", None)
    if ctx is None:
        pytest.skip("no --plan given")
    return ctx


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "plan_step" not in metafunc.fixturenames:
        return
    ctx = getattr(metafunc.config, "_bankhil", None)
    if ctx is None:
        metafunc.parametrize("plan_step", [pytest.param(None, marks=pytest.mark.skip(reason="no --plan"))],
                             ids=["no-plan"])
        return
    params = [pytest.param(step, id=step.name,
                           marks=[getattr(pytest.mark, m) for m in step.markers] + [pytest.mark.plan_step])
              for step in ctx.plan.steps]
    metafunc.parametrize("plan_step", params)


# ============================================================================ session: the bench
@dataclass
class Session:
    ctx: RunContext
    assembled: Any
    supervisor: Any
    store: Any
    run_id: Any
    started_wall: float = field(default_factory=time.monotonic)
    summary_path: Path | None = None
    prepared_after: int | None = None  # safety actions on record at the last preparation

    @property
    def bench(self) -> Any:
        return self.assembled.bench

    def prepare(self, step_id: Any = None) -> None:
        """Bring the bench to the plan's starting state before a step: at the first step, and
        again after anything made it safe (harness/preparation.py). BenchNotReady if it cannot."""
        from harness.config.validate import dut_max_voltage
        from harness.preparation import StartState, over_voltage_level, prepare

        made_safe = len(self.supervisor.actions)
        if self.prepared_after == made_safe:
            return
        plan, station = self.ctx.plan, self.ctx.station
        start = StartState.of(plan.bench)
        supply_v = max((s.setpoints["supply.voltage"].value for s in plan.steps
                        if "supply.voltage" in s.setpoints), default=None)
        rating = station.rating("supply").get("voltage") if "supply" in station.instruments else None
        ovp = over_voltage_level(supply_v, dut_max_voltage(self.ctx.dut_spec),
                                 rating.value if rating is not None else None)

        def note(text: str) -> None:
            self.store.record_event(self.run_id, "preparation", text, step_id=step_id)

        dut = self.ctx.dut_spec.dut
        modules = [f"s{s}p{p}" for s in range(1, dut.series + 1) for p in range(1, dut.parallel + 1)]
        prepare(self.bench, start, modules, ovp_v=ovp, note=note)
        self.prepared_after = len(self.supervisor.actions)


@pytest.fixture(scope="session")
def bankhil_session(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    from harness.bench import assemble
    from harness.store import ResultStore
    from harness.supervisor import SafetySupervisor

    ctx = _ctx(request.config)
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    store = ResultStore(ctx.results_url)
    # a run on this host whose process died (SIGKILL, power) is closed as ABORTED first
    store.abort_dead_runs(HOST, _pid_alive)
    run_id = store.start_run(station=ctx.station.name, operator=ctx.operator,
                             plan_name=ctx.plan.name, plan_version=str(ctx.plan.version),
                             plan_hash=ctx.plan_hash, harness_version=_version(),
                             emulated=bool(ctx.station.emulated), uuid=ctx.run_uuid,
                             extra={**_run_extra(ctx), "host": HOST, "pid": os.getpid()})
    assembled = _assemble_or_close(ctx, store, run_id, assemble)
    bench = assembled.bench
    modules = [{"position": pos, "serial": entry.serial, "firmware": entry.firmware}
               for pos, entry in ctx.dut_spec.dut.modules.items()]

    def record(action: Any) -> None:
        store.record_event(run_id, "safety", f"{action.reason}: {action.instrument} "
                           f"{'safe' if action.ok else 'FAILED: ' + action.detail}")

    instruments = dict(bench.instruments)
    if bench.bms is not None:
        instruments["bms"] = bench.bms
    supervisor = SafetySupervisor(instruments, bench.clock.now, record)
    supervisor.install_signal_handlers()
    bench.clock.interrupt_check = supervisor.check_interrupt
    for instrument in instruments.values():
        instrument.before_io = supervisor.check_interrupt
    if not bench.emulated:
        supervisor.start_watchdog(5.0, lambda role, inst: inst.identity())
    session = Session(ctx, assembled, supervisor, store, run_id)
    request.config._bankhil_session = session  # type: ignore[attr-defined]
    try:
        if bench.bms is not None:
            bench.clock.every(getattr(bench.bms, "period_s", 1.0),
                              _keepalive_duty(bench.bms))
            bench.clock.wait(2.0)  # let the BMS report once before anyone asks it
        identities = _record_identities(session, modules)
        _report_environment(session, identities)
        yield session
    finally:
        if supervisor.interrupt is not None and ctx.aborted is None:
            ctx.aborted = supervisor.interrupt
        supervisor.acknowledge_interrupt()  # the run is unwinding: no second KeyboardInterrupt
        supervisor.stop_watchdog()
        supervisor.safe_state(supervisor.tripped or "end of session")
        if ctx.aborted is not None and ctx.running is not None:
            name, step_id = ctx.running
            ctx.verdicts[name] = "aborted"
            ctx.errors[name] = f"interrupted ({ctx.aborted}) while this step ran"
            try:
                store.finish_step(step_id, "aborted", None, ctx.errors[name])
            except Exception:  # noqa: BLE001 - the run's own verdict below matters more
                log.exception("could not record the aborted step")
        verdict = ctx.run_verdict = _overall(ctx)
        try:
            store.finish_run(run_id, verdict)
        finally:
            assembled.close()
            supervisor.close()  # instruments closed: a late Ctrl-C has nothing to make safe
            supervisor.restore_signal_handlers()
            _report_closing(session)


HOST = socket.gethostname()


def _pid_alive(pid: int) -> bool:
    """True when a process with this id exists on this host (signal 0 probes, sends nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _assemble_or_close(ctx: RunContext, store: Any, run_id: int, assemble: Any) -> Any:
    """Assemble the bench; if that fails the run is closed in the store, never left open.

    A file error found only now (a scenario naming a module the DUT does not have) is still a
    bad file: one line and exit status 2, as at validation -- nothing was energised.
    """
    try:
        from harness.config.station import can_profile
        return assemble(ctx.station, ctx.dut_arg, ctx.scenario, seed=ctx.seed, log_dir=ctx.run_dir,
                        bms_profile=can_profile(ctx.station), unit_serial=ctx.serial_given)
    except FileError as err:
        store.record_event(run_id, "error", f"bad file: {err}")
        store.finish_run(run_id, "error")
        sys.stderr.write(f"{err}\n")
        sys.stderr.flush()
        os._exit(2)
    except KeyboardInterrupt:
        ctx.aborted = ctx.run_verdict = "aborted"
        store.record_event(run_id, "aborted", "interrupted while the bench was assembled")
        store.finish_run(run_id, "aborted")
        raise
    except BaseException as exc:
        ctx.run_verdict = "error"
        ctx.errors["(bench)"] = f"{type(exc).__name__}: {exc}"
        store.record_event(run_id, "error", f"bench assembly failed: {type(exc).__name__}: {exc}")
        store.finish_run(run_id, "error")
        raise


def _keepalive_duty(bms: Any):  # type: ignore[no-untyped-def]
    """The inverter keep-alive in bench time (the client's own thread follows wall time). On a
    virtual clock the next advance takes it in before bench time moves on (harness/emulated.py)."""
    def duty() -> None:
        send = getattr(bms, "send_keepalive_if_due", None) or getattr(bms, "send_heartbeat", None)
        if send is not None and getattr(bms, "heartbeat_on", True):
            send()
    return duty


def _record_identities(session: Session, modules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ctx, store = session.ctx, session.store
    store.add_dut(session.run_id, ctx.serial, ctx.dut_spec.dut.name, modules,
                  firmware=ctx.dut_spec.firmware.version)
    identities = []
    for role, instrument in session.bench.instruments.items():
        entry = session.assembled.runtime.get("instruments", {}).get(role, {})
        try:
            identity = instrument.identity()
        except Exception as exc:  # noqa: BLE001 - recorded, the run decides later
            identity = f"(no answer: {exc})"
        store.add_instrument(session.run_id, role, entry.get("driver", ""), entry.get("resource", ""),
                             identity, entry.get("calibration_due"))
        identities.append({"role": role, "driver": entry.get("driver", ""), "resource": entry.get("resource", ""),
                           "identity": identity, "calibration_due": entry.get("calibration_due")})
    return identities


def _run_extra(ctx: RunContext) -> dict[str, Any]:
    """Kept with the run in the store: where its files are, how it was made, and each step's
    requirement text and sources (the summary page is rebuilt from the store alone)."""
    dut = ctx.dut_spec.dut
    return {"run_dir": str(ctx.run_dir), "allure_dir": str(ctx.allure_dir) if ctx.allure_dir else None,
            "module_model": ctx.dut_spec.module_type.model, "topology": f"{dut.series}S{dut.parallel}P",
            "dut": ctx.dut_arg, "scenario": ctx.scenario, "seed": ctx.seed, "serial": ctx.serial,
            "steps": {step.name: {"description": step.description, "source": list(step.source),
                                  "check": step.check, "severity": step.severity}
                      for step in ctx.plan.steps}}


def _report_environment(session: Session, identities: list[dict[str, Any]]) -> None:
    """Allure's environment, categories and executor files, and the station's identities."""
    from harness.reporting.artifacts import attach_json
    from harness.reporting.environment import (RunEnvironment, write_categories, write_environment,
                                               write_executor)
    ctx = session.ctx
    spec = ctx.dut_spec
    firmware = sorted({spec.firmware.version} | {str(e.firmware) for e in spec.dut.modules.values() if e.firmware})
    env = RunEnvironment(ctx.station.name, bool(ctx.station.emulated), ctx.plan.name, str(ctx.plan.version),
                         ctx.plan_hash, _version(), ctx.serial, spec.module_type.model,
                         f"{spec.dut.name} ({spec.dut.series}S{spec.dut.parallel}P)", firmware, ctx.operator,
                         ctx.run_uuid, ctx.scenario, identities)
    if ctx.allure_dir is not None:
        write_environment(ctx.allure_dir, env)
        write_categories(ctx.allure_dir)
        write_executor(ctx.allure_dir, env, session.run_id, ctx.run_dir)
    attach_json({"station": ctx.station.name, "emulated": bool(ctx.station.emulated), "instruments": identities},
                "station and instrument identities")


def _report_closing(session: Session) -> None:
    """The CAN log and the one-page summary, attached to the session's teardown in Allure."""
    from harness.reporting.artifacts import attach_file
    from harness.reporting.summary import summary_path, write_summary
    ctx = session.ctx
    can_log = getattr(session.bench.bms, "log_path", None)
    if can_log is not None and Path(can_log).is_file():
        attach_file(Path(can_log), "CAN log (candump)", "text")
    try:
        path = write_summary(session.store, session.run_id,
                             summary_path(ctx.run_dir, ctx.serial), ctx.run_dir)
    except Exception as exc:  # noqa: BLE001 - the record is in the store; the page can be rebuilt
        log.warning("summary page not written: %s", exc)
        return
    session.summary_path = path
    attach_file(path, f"qualification summary {ctx.serial}", "html")


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("bankhil")
    except Exception:  # noqa: BLE001
        return "0+unknown"


# the exit status of ``hil run`` for each run verdict (README "Verdicts")
EXIT_BY_VERDICT = {"pass": 0, "fail": 1, "error": 3, "recorded": 4, "aborted": 130}


def overall_verdict(plan_steps: list[str], verdicts: dict[str, str], aborted: bool) -> str:
    """The run's verdict: PASS only when every plan step ran and passed against its limits.

    ABORTED if interrupted; else FAIL if a step failed (the DUT is at fault, whatever else went
    wrong); else ERROR if a step could not be judged; else RECORDED if any step was recorded
    only, skipped or not selected (``-k``): measurements kept, no qualification verdict.
    """
    if aborted:
        return "aborted"
    states = [verdicts.get(name, "not run") for name in plan_steps]
    if not verdicts:
        return "error"
    if "fail" in states:
        return "fail"
    if "error" in states:
        return "error"
    if all(state == "pass" for state in states):
        return "pass"
    return "recorded"


def _overall(ctx: RunContext) -> str:
    return overall_verdict([s.name for s in ctx.plan.steps], ctx.verdicts, ctx.aborted is not None)


# ============================================================================ per step
@pytest.fixture
def bench(bankhil_session: Session) -> Any:
    return bankhil_session.bench


@pytest.fixture
def measure(request: pytest.FixtureRequest, bankhil_session: Session) -> Recorder:
    session = bankhil_session
    step = request.node.callspec.params.get("plan_step") if hasattr(request.node, "callspec") else None
    name = step.name if step is not None else request.node.name
    step_id = session.store.start_step(session.run_id, name, step.check if step else "",
                                       dict(step.parameters) if step else {})
    request.node._bankhil_step_id = step_id  # type: ignore[attr-defined]
    session.ctx.running = (name, step_id)
    recorder = Recorder(session.bench.clock.now)

    def note(text: str) -> None:
        session.store.record_event(session.run_id, "attachment", text, step_id=step_id)

    recorder.trace_sinks.append(TraceArtifacts(session.ctx.run_dir, name, note))

    def to_store(m: Measurement) -> None:
        value = m.value if isinstance(m.value, (int, float, str, bool, type(None))) else str(m.value)
        session.store.record_measurement(step_id, m.name, value, m.unit, m.limits.as_dict(),
                                         m.verdict, m.diagnosis, clock_s=m.at)

    def to_allure(m: Measurement) -> None:
        try:
            import allure
        except ImportError:
            return
        with allure.step(m.line()):
            pass
        measurement_parameter(m.name, f"{m.shown} [{m.limits.describe()}] {m.verdict.upper()}")

    def to_console(m: Measurement) -> None:
        session.ctx.measurements.append((name, m))
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None and request.config.getoption("verbose") >= 0:
            if capture is not None:
                with capture.global_and_fixture_disabled():
                    reporter.write_line(f"    {m.line()}")
            else:
                reporter.write_line(f"    {m.line()}")

    def interrupt_check(m: Measurement) -> None:
        session.supervisor.check_interrupt()

    recorder.sinks.extend([to_store, to_allure, to_console, interrupt_check])
    return recorder


def pytest_runtest_setup(item: pytest.Item) -> None:
    ctx = getattr(item.config, "_bankhil", None)
    if ctx is not None and ctx.gate_failed and "plan_step" in getattr(item, "fixturenames", []):
        pytest.skip(f"gate '{ctx.gate_failed}' failed: nothing further is energised")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # type: ignore[no-untyped-def]
    report = yield
    ctx = getattr(item.config, "_bankhil", None)
    if ctx is None or report.when != "call" or not hasattr(item, "callspec"):
        return report
    step = item.callspec.params.get("plan_step")
    if step is None:
        return report
    verdict, error = _step_verdict(item, call, report)
    if report.failed and item.config.getoption("tbstyle", "auto") != "long":
        # the operator reads what failed, its limit and diagnosis -- not the harness's own
        # traceback (``hil run --debug`` / ``--tb=long`` shows it)
        report.longrepr = _short_failure(step, verdict, error, item)
    ctx.verdicts[step.name] = verdict
    ctx.running = None
    if error:
        ctx.errors[step.name] = error
    item.user_properties.append(("verdict", verdict))
    session = getattr(item.config, "_bankhil_session", None)
    step_id = getattr(item, "_bankhil_step_id", None)
    if session is not None and step_id is not None:
        text = error if error else None if report.passed else \
            str(report.longrepr.reprcrash.message if hasattr(report.longrepr, "reprcrash")
                else report.longrepr)[:2000]
        session.store.finish_step(step_id, verdict if verdict != "not run" else "skipped",
                                  report.duration, text)
        if verdict == "error" or (verdict == "fail" and step.on_fail == "safe_state"):
            session.supervisor.safe_state(f"step {step.name} {'failed' if verdict == 'fail' else 'ended in error'}")
    if report.failed and step.gate:
        ctx.gate_failed = step.name
    return report


def _short_failure(step: Any, verdict: str, error: str | None, item: pytest.Item) -> str:
    recorder = item.funcargs.get("measure") if hasattr(item, "funcargs") else None
    lines = [f"{step.name} ({step.check}): {verdict.upper()}"]
    if recorder is not None:
        lines += [f"  {m.line()}" for m in recorder.taken if m.verdict in ("fail", "error")]
    if error:
        lines.append(f"  {error}")
    return "\n".join(lines)


def _step_verdict(item: pytest.Item, call: pytest.CallInfo, report: Any) -> tuple[str, str | None]:
    """FAIL for a measurement that failed its limit; ERROR (with the instrument, command and
    error text) for anything else that stopped the step; RECORDED when nothing was judged."""
    from harness.measure import MeasurementFailed

    if report.skipped:
        return "not run", None
    if report.passed:
        recorder = item.funcargs.get("measure") if hasattr(item, "funcargs") else None
        if recorder is not None and recorder.taken and recorder.verdict() == "recorded":
            return "recorded", None
        return "pass", None
    exc = call.excinfo.value if call.excinfo is not None else None
    if isinstance(exc, MeasurementFailed):
        return "fail", None
    kind = type(exc).__name__ if exc is not None else "error"
    return "error", f"{kind}: {exc}"[:2000]


def pytest_keyboard_interrupt(excinfo: pytest.ExceptionInfo) -> None:
    for config in _configs:
        ctx = getattr(config, "_bankhil", None)
        session = getattr(config, "_bankhil_session", None)
        reason = "interrupted (Ctrl-C)"
        if session is not None:
            session.supervisor.acknowledge_interrupt()
            reason = session.supervisor.interrupt or session.supervisor.tripped or reason
            session.supervisor.safe_state(reason)
        if ctx is not None and ctx.aborted is None:
            ctx.aborted = reason


_configs: list[pytest.Config] = []


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    _configs.append(session.config)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    ctx = getattr(config, "_bankhil", None)
    if ctx is None:
        return
    from harness.console import summary_table
    terminalreporter.write_line("")
    terminalreporter.write(summary_table(ctx))
    session = getattr(config, "_bankhil_session", None)
    if session is not None:
        bench_s = session.bench.clock.now()
        wall_s = time.monotonic() - session.started_wall
        from harness.numbers import duration
        terminalreporter.write_line(f"bench time {duration(bench_s)} in {wall_s:.1f} s wall "
                                    f"({bench_s / max(wall_s, 1e-9):.0f}x)")
    if session is not None and session.supervisor.actions:
        # one line per reason: what was made safe, and what failed to go safe
        by_reason: dict[str, list[Any]] = {}
        for action in session.supervisor.actions:
            by_reason.setdefault(action.reason, []).append(action)
        for reason, actions in by_reason.items():
            failed = [a.instrument for a in actions if not a.ok]
            text = f"safety: bench made safe ({reason})"
            if failed:
                text += f" -- FAILED to go safe: {', '.join(failed)}"
            terminalreporter.write_line(text)


class StepError(Exception):
    """A step that could not be judged: a measurement without a value, an instrument or harness
    failure. The step ends ERROR (Allure: broken), which says nothing about the DUT."""


@contextlib.contextmanager
def step_deadline(session: "Session", step: Any):  # type: ignore[no-untyped-def]
    """Enforce a step's ``timeout``: bench time at every wait (the clock raises StepTimeout),
    and wall time in a call that hangs (SIGALRM in the main thread raises it there)."""
    from harness.clock import StepTimeout

    if step.timeout is None:
        yield
        return
    limit = float(step.timeout.value)
    clock = session.bench.clock
    what = f"step '{step.name}' exceeded its timeout of {step.timeout}"
    clock.set_deadline(clock.now() + limit, what)
    armed = threading.current_thread() is threading.main_thread()
    previous = None
    if armed:
        def _expired(signum: int, frame: object) -> None:
            raise StepTimeout(what + " (wall time)")
        previous = signal.signal(signal.SIGALRM, _expired)
        signal.setitimer(signal.ITIMER_REAL, limit + 1.0)
    try:
        yield
    finally:
        if armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)  # type: ignore[arg-type]
        clock.set_deadline(None)


def step_limits(step: Any) -> dict[str, Limits]:
    """The plan step's limits as SI :class:`Limits` (see harness.config for the file form)."""
    return {name: limit.to_limits() for name, limit in step.limits.items()}


def step_params(step: Any, plan: Any = None, spec: Any = None) -> dict[str, Any]:
    """The step's parameters over the plan's defaults, quantities in SI; with the check's
    declaration, only the parameters it takes (a plan default may serve other checks)."""
    merged = plan.parameters_for(step) if plan is not None else dict(step.parameters)
    if spec is not None:
        merged = {name: value for name, value in merged.items() if spec.declares_param(name)}
    return {name: (value.si if hasattr(value, "si") else value) for name, value in merged.items()}


def now() -> float:
    return time.time()
