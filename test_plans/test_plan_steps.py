"""Runs a plan: one test per plan step (parametrised by the harness plugin from --plan).

Each step looks up its check by name, hands it the bench (roles only), its parameters and
limits, and ``measure``; the step fails if any measurement failed (a safety check's failure
leads with "SAFETY LIMIT EXCEEDED", which the report's categories sort on). A step with ``retries`` is
tried again (all attempts stay recorded). A check that must bring the bench to its safe state
itself (a silent BMS) finds the session's safety supervisor in ``ctx.extras["supervisor"]``.
"""

from __future__ import annotations

from harness.measure import MeasurementFailed
from harness.plugin import step_limits, step_params
from harness.reporting.allure_labels import SAFETY_PREFIX, failure_message, label_step
from test_plans.checks import StepContext, load_all


def test_step(plan_step, bankhil_session, measure):  # type: ignore[no-untyped-def]
    checks = load_all()
    check = checks[plan_step.check]
    session = bankhil_session
    # labels in the call phase: allure-pytest names the test when the call starts
    label_step(plan_step, session.ctx.plan, session.ctx.dut_spec, session.ctx.serial)
    ctx = StepContext(session.bench, step_params(plan_step, session.ctx.plan), step_limits(plan_step), measure,
                      plan_step.name, session.ctx.dut_spec, extras={"supervisor": session.supervisor})
    for attempt in range(plan_step.retries + 1):
        first = len(measure.taken)
        try:
            check(ctx)
            session.supervisor.check()
            failures = [m for m in measure.taken[first:] if m.verdict in ("fail", "error")]
            if failures:
                raise MeasurementFailed(failure_message(plan_step.check, [m.line() for m in failures]))
            return
        except MeasurementFailed as failed:
            if attempt == plan_step.retries:
                lines = [m.line() for m in measure.taken[first:] if m.verdict in ("fail", "error")]
                if lines and not str(failed).startswith(SAFETY_PREFIX):
                    raise MeasurementFailed(failure_message(plan_step.check, lines)) from None
                raise
