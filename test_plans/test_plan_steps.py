"""Runs a plan: one test per plan step (parametrised by the harness plugin from --plan).

Each step looks up its check and declaration by name, hands it the bench (roles only), its
parameters and limits, and ``measure``, and ends in one verdict state (harness/measure.py):

- PASS: every measurement judged against a limit passed (RECORDED ones are shown as such);
- FAIL: a measurement failed its limit -- the DUT is at fault (pytest: failed);
- RECORDED: nothing was judged (the test passes, the run does not qualify);
- ERROR: an instrument or the harness failed (no reading, a timeout, an undeclared name) --
  the verdict says nothing of the DUT (Allure: broken);
- ABORTED: interrupted (the session records it).

A step with ``retries`` is tried again after a FAIL (all attempts stay recorded). A step with a
``timeout`` ends ERROR once it has taken that long (bench time at a wait, wall time in a hung
call). A check that must bring the bench to its safe state itself (a silent BMS) finds the
session's safety supervisor in ``ctx.extras["supervisor"]``.
"""

from __future__ import annotations

from harness.measure import MeasurementFailed
from harness.preparation import BenchNotReady
from harness.plugin import StepError, step_deadline, step_limits, step_params
from harness.reporting.allure_labels import failure_message, label_step
from test_plans.checks import SPECS, StepContext, load_all


def test_step(plan_step, bankhil_session, measure):  # type: ignore[no-untyped-def]
    checks = load_all()
    check = checks[plan_step.check]
    session = bankhil_session
    # labels in the call phase: allure-pytest names the test when the call starts
    label_step(plan_step, session.ctx.plan, session.ctx.dut_spec, session.ctx.serial)
    ctx = StepContext(session.bench, step_params(plan_step, session.ctx.plan, SPECS.get(plan_step.check)),
                      step_limits(plan_step), measure, plan_step.name, session.ctx.dut_spec,
                      extras={"supervisor": session.supervisor, "serial": session.ctx.serial}, spec=SPECS.get(plan_step.check))
    try:
        _run_step(plan_step, session, measure, check, ctx)
    except BaseException as exc:
        # interrupted: the CSVs are attached, nothing is drawn (the bench goes safe first)
        _finish_plots(measure, draw=not isinstance(exc, KeyboardInterrupt))
        raise
    _finish_plots(measure)


def _finish_plots(measure, draw=True):  # type: ignore[no-untyped-def]
    """The step's plots, drawn now that its check is done, attached to it."""
    for sink in measure.trace_sinks:
        finish = getattr(sink, "finish", None)
        if finish is not None:
            finish(draw)


def _run_step(plan_step, session, measure, check, ctx):  # type: ignore[no-untyped-def]
    with step_deadline(session, plan_step):
        try:
            session.prepare(session.ctx.running[1] if session.ctx.running else None)
        except BenchNotReady as exc:
            session.ctx.gate_failed = "bench preparation"
            raise StepError(f"bench preparation: {exc}") from None
        for attempt in range(plan_step.retries + 1):
            first = len(measure.taken)
            try:
                check(ctx)
            except MeasurementFailed:  # a check that stops at its first failed measurement
                pass
            session.supervisor.check()
            verdict = measure.verdict(first)
            if verdict == "error":
                raise StepError("; ".join(m.line() for m in measure.taken[first:] if m.verdict == "error"))
            if verdict != "fail":
                return
            if attempt == plan_step.retries:
                lines = [m.line() for m in measure.taken[first:] if m.verdict == "fail"]
                message = failure_message(plan_step.check, lines)
                raise MeasurementFailed(message)
