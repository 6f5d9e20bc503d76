"""The master BMS: aggregates its modules and talks to the inverter.

It decides which modules are *online* (still talking), which are *accepted* (admitted: voltage
close enough to join, firmware matching), and reports combined limits and capacity from those
only. Comm-loss behaviour and what counts in the totals come from the firmware profile, so a
good release and a candidate with regressions differ only in their files (004).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from emulator.config.firmware import FirmwareProfile


@dataclass
class ModuleView:
    """What the master knows of one module, as its slave BMS reports it."""

    position: str
    branch: str
    firmware: str
    capacity_ah: float
    stack_v: float
    switch_v: float         # voltage across the module's open BMS switch (0 when closed)
    soc: float
    allow_charge: bool
    allow_discharge: bool
    silent: bool


@dataclass
class MasterReport:
    """Everything the master publishes (CAN 0x351..0x379, SunSpec 802-805)."""

    charge_voltage_limit_v: float = 0.0
    charge_current_limit_a: float = 0.0
    discharge_current_limit_a: float = 0.0
    discharge_voltage_limit_v: float = 0.0
    soc_pct: float = 0.0
    soh_pct: float = 100.0
    installed_capacity_ah: float = 0.0
    online_capacity_ah: float = 0.0
    modules_online: int = 0
    modules_offline: int = 0
    modules_pending: int = 0
    blocking_charge: int = 0
    blocking_discharge: int = 0
    heartbeat_lost: bool = False
    comm_alarm: bool = False
    charge_enable: bool = True
    discharge_enable: bool = True
    counted: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    offline: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)


class MasterBms:
    def __init__(self, profile: FirmwareProfile, modules: list[str], branch_of: dict[str, str],
                 series: int, module_limits, cells: int):  # type: ignore[no-untyped-def]
        self.profile = profile
        self.modules = modules
        self.branch_of = branch_of
        self.series = series
        self.limits = module_limits
        self.cells = cells
        self.accepted: dict[str, bool] = {m: True for m in modules}
        self.pending_since: dict[str, float] = {}
        self.ok_since: dict[str, float | None] = {m: None for m in modules}
        self.last_seen: dict[str, float] = {m: 0.0 for m in modules}
        self.last_heartbeat: float | None = None
        self.deaf_from: float | None = None
        self.report = MasterReport()
        self._frozen: MasterReport | None = None
        self.open_main_request = False
        self.events: list[tuple[float, str]] = []

    # -- inputs ---------------------------------------------------------------------------------
    def heartbeat(self, now: float) -> None:
        """The inverter's keep-alive arrived (unless the BMS has gone deaf to it)."""
        if self.deaf_from is not None and now >= self.deaf_from:
            return
        if self.report.heartbeat_lost and self.profile.heartbeat.recover:
            self.events.append((now, "heartbeat restored"))
            self.open_main_request = False
        self.last_heartbeat = now

    def startup_sync(self, views: list[ModuleView]) -> None:
        """At power-up, modules whose voltage is far from their peers stay pending (004)."""
        limit = self.profile.admission.max_delta_v_per_module
        master_fw = self.profile.version
        by_branch: dict[str, float] = {}
        counts: dict[str, int] = {}
        for v in views:
            by_branch[v.branch] = by_branch.get(v.branch, 0.0) + v.stack_v
            counts[v.branch] = counts.get(v.branch, 0) + 1
        reference = float(np.median(list(by_branch.values())))
        for v in views:
            far = abs(by_branch[v.branch] - reference) > limit * counts[v.branch]
            wrong_fw = (v.firmware != master_fw
                        and self.profile.admission.firmware_mismatch == "exclude")
            self.accepted[v.position] = not (far or wrong_fw)

    # -- periodic -------------------------------------------------------------------------------
    def update(self, now: float, views: list[ModuleView]) -> MasterReport:
        prof = self.profile
        limit = prof.admission.max_delta_v_per_module
        for v in views:
            if not v.silent:
                self.last_seen[v.position] = now
            wrong_fw = v.firmware != prof.version and prof.admission.firmware_mismatch == "exclude"
            if not self.accepted[v.position] and not wrong_fw:
                if abs(v.switch_v) <= limit:
                    since = self.ok_since[v.position]
                    if since is None:
                        self.ok_since[v.position] = now
                    elif now - since >= prof.admission.settle_s:
                        self.accepted[v.position] = True
                        self.events.append((now, f"{v.position} admitted"))
                else:
                    self.ok_since[v.position] = None
        online = {v.position: now - self.last_seen[v.position] < prof.slave.timeout_s
                  for v in views}
        counted_cap = [v for v in views if self.accepted[v.position]
                       and (online[v.position] or not prof.slave.drop_capacity)]
        counted_lim = [v for v in views if self.accepted[v.position]
                       and (online[v.position] or not prof.slave.drop_limits)]
        r = MasterReport()
        r.counted = [v.position for v in counted_cap]
        r.pending = [v.position for v in views if not self.accepted[v.position]]
        r.offline = [p for p, ok in online.items() if not ok]
        r.excluded = [v.position for v in views
                      if v.firmware != prof.version and prof.admission.firmware_mismatch == "exclude"]
        r.modules_online = sum(online.values())
        r.modules_offline = len(views) - r.modules_online
        r.modules_pending = len(r.pending)
        r.blocking_charge = sum(not v.allow_charge for v in views)
        r.blocking_discharge = sum(not v.allow_discharge for v in views)
        capacity = self._per_branch_capacity(counted_cap)
        r.online_capacity_ah = capacity
        r.installed_capacity_ah = self._per_branch_capacity(views)
        weight = sum(v.capacity_ah for v in counted_cap)
        r.soc_pct = (100 * sum(v.soc * v.capacity_ah for v in counted_cap) / weight) if weight else 0.0
        lim = self.limits
        r.charge_voltage_limit_v = lim.charge_voltage_v * self.series
        r.discharge_voltage_limit_v = lim.discharge_voltage_v * self.series
        r.charge_current_limit_a = self._combined(counted_lim, "charge")
        r.discharge_current_limit_a = self._combined(counted_lim, "discharge")
        r.comm_alarm = bool(r.offline) and prof.slave.alarm
        self._supervise_heartbeat(now, r)
        r.charge_enable = r.charge_current_limit_a > 0
        r.discharge_enable = r.discharge_current_limit_a > 0
        self.report = r
        return r

    def _supervise_heartbeat(self, now: float, r: MasterReport) -> None:
        hb = self.profile.heartbeat
        if not hb.supervise or self.last_heartbeat is None:
            self._frozen = None
            return
        lost = now - self.last_heartbeat > hb.timeout_s
        if lost and not self.report.heartbeat_lost:
            self.events.append((now, f"inverter heartbeat lost ({hb.on_loss})"))
            self._frozen = self.report
        if not lost and not hb.recover and self.report.heartbeat_lost:
            lost = True  # latched until power cycle
        r.heartbeat_lost = lost
        if not lost:
            self._frozen = None
            return
        r.comm_alarm = r.comm_alarm or hb.alarm
        if hb.on_loss == "zero_limits":
            r.charge_current_limit_a = 0.0
            r.discharge_current_limit_a = 0.0
        elif hb.on_loss == "keep_last" and self._frozen is not None:
            r.charge_current_limit_a = self._frozen.charge_current_limit_a
            r.discharge_current_limit_a = self._frozen.discharge_current_limit_a
        elif hb.on_loss == "open_contactor":
            r.charge_current_limit_a = 0.0
            r.discharge_current_limit_a = 0.0
            self.open_main_request = True

    def _per_branch_capacity(self, views: list[ModuleView]) -> float:
        """Capacity of the bank: parallel branches add, series modules do not."""
        by_series: dict[str, list[float]] = {}
        for v in views:
            series_pos = v.position.split("p")[0]
            by_series.setdefault(series_pos, []).append(v.capacity_ah)
        if not by_series:
            return 0.0
        return min(sum(caps) for caps in by_series.values()) if len(by_series) == self.series else 0.0

    def _combined(self, views: list[ModuleView], direction: str) -> float:
        """Parallel modules add their limits; a series position limits the whole bank."""
        if direction == "charge":
            per = [(v, self.limits.charge_current_a if v.allow_charge else 0.0) for v in views]
        else:
            per = [(v, self.limits.discharge_current_a if v.allow_discharge else 0.0) for v in views]
        by_series: dict[str, float] = {}
        for v, amps in per:
            if direction == "charge" and v.soc * 100 > self.limits.taper_start_soc_pct:
                span = max(100 - self.limits.taper_start_soc_pct, 1e-6)
                amps *= max(0.0, (100 - v.soc * 100) / span)
            by_series[v.position.split("p")[0]] = by_series.get(v.position.split("p")[0], 0.0) + amps
        if len(by_series) < self.series:
            return 0.0
        total = min(by_series.values())
        q = self.profile.limit_quantum_a
        return round(total / q) * q if q else total
