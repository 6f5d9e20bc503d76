"""The master BMS: aggregates its modules and talks to the inverter.

It decides which modules are *online* (still talking), which are *accepted* (admitted: voltage
close enough to join, firmware matching), and reports combined limits and capacity from those
only. Comm-loss behaviour and what counts in the totals come from the firmware profile, so a
good release and a candidate with regressions differ only in their files (004).

Each report period :meth:`MasterBms.update` makes the master's decisions (which modules are
seen, admitted, whether the inverter's heartbeat is lost, whether to open the main contactor)
and keeps a snapshot of what it saw; the :class:`MasterReport` it publishes is built from that
snapshot only when someone reads ``report`` (CAN, SunSpec, a test) and is then the same object
until the next update. A twin running hours of bench time at one-second steps with nobody
listening so never pays for the lists and sums of a report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bankmodel.positions import is_position, position
from emulator import kernels as kn
from bankmodel.specs.firmware import FirmwareProfile
from bankmodel.specs.module_type import ModuleLimits


@dataclass
class ModuleViews:
    """What the master knows of its modules, as their slave BMSs report it (arrays by module)."""

    stack_v: np.ndarray      # each module's cell-stack voltage as its BMS measures it
    current_a: np.ndarray    # each module's current, + = charge
    soc: np.ndarray          # fraction
    capacity_ah: np.ndarray
    allow_charge: np.ndarray
    allow_discharge: np.ndarray
    silent: np.ndarray
    firmware: list[str]


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


@dataclass
class _Tick:
    """What the master saw and decided at one update: enough to build that update's report."""

    now: float
    views: ModuleViews
    refused: np.ndarray
    accepted: np.ndarray
    online: np.ndarray
    supervised: bool
    heartbeat_lost: bool
    frozen: MasterReport | None


class MasterBms:
    def __init__(self, profile: FirmwareProfile, modules: list[str], branch_of: dict[str, str],
                 series: int, module_limits: ModuleLimits):
        self.profile = profile
        self.modules = modules
        self.series = series
        self.limits = module_limits
        self.series_index = np.array([position(m)[0] - 1 for m in modules])
        branches = sorted(set(branch_of.values()))
        self.branch_index = np.array([branches.index(branch_of[m]) for m in modules])
        self.branch_size = np.bincount(self.branch_index)
        # peers: the branches a branch is compared with -- its own parallel group in a bank of
        # series groups (branch = module sXpY), all strings in a bank of strings (branch = pY)
        self.branch_peer = np.array([position(b)[0] - 1 if is_position(b) else 0 for b in branches])
        count = len(modules)
        self._names = np.array(modules)
        self.accepted = np.ones(count, dtype=bool)
        self.ok_since = np.full(count, np.nan)
        self.last_seen = np.zeros(count)
        self.last_heartbeat: float | None = None
        self.deaf_from: float | None = None
        # bench time from which the master stops transmitting to the inverter (the silent_bms
        # fault): its own decisions go on; the endpoints that publish them read this and go quiet
        self.silent_from: float | None = None
        self._tick: _Tick | None = None       # the latest update's snapshot
        self._report: MasterReport | None = None  # its report, once built
        self._heartbeat_lost = False          # what the latest report says
        self._frozen: MasterReport | None = None
        self._refused_key: list[str] | None = None
        self._refused = np.zeros(count, dtype=bool)
        self.open_main_request = False
        self.events: list[tuple[float, str]] = []

    @property
    def report(self) -> MasterReport:
        """What the master publishes, as of its latest update (built on first read)."""
        if self._report is None:
            self._report = MasterReport() if self._tick is None else self._build_report(self._tick)
        return self._report

    # -- inputs ---------------------------------------------------------------------------------
    def heartbeat(self, now: float) -> None:
        """The inverter's keep-alive arrived (unless the BMS has gone deaf to it)."""
        if self.deaf_from is not None and now >= self.deaf_from:
            return
        if self._heartbeat_lost and self.profile.heartbeat.recover:
            self.events.append((now, "heartbeat restored"))
            self.open_main_request = False
        self.last_heartbeat = now

    def _firmware_refused(self, views: ModuleViews) -> np.ndarray:
        """Modules excluded for their firmware version (cached while the versions are the same)."""
        if views.firmware != self._refused_key:
            self._refused_key = list(views.firmware)
            if self.profile.admission.firmware_mismatch != "exclude":
                self._refused = np.zeros(len(self.modules), dtype=bool)
            else:
                self._refused = np.array([fw != self.profile.version for fw in views.firmware])
        return self._refused

    def _branch_deltas(self, views: ModuleViews, reference_mask: np.ndarray) -> np.ndarray:
        """Per module: |its branch's voltage - the mean of its peers in reference_mask| per module."""
        branch_v = np.bincount(self.branch_index, weights=views.stack_v)
        branch_ref = np.bincount(self.branch_index, weights=reference_mask.astype(float))
        use = branch_ref == self.branch_size  # every module of the branch is a reference
        peers = self.branch_peer
        total = np.bincount(peers, weights=branch_v * use)
        count = np.bincount(peers, weights=use.astype(float))
        mean = np.divide(total, count, out=np.full(len(total), np.nan), where=count > 0)
        delta = np.abs(branch_v - mean[peers]) / self.branch_size
        return delta[self.branch_index]

    def startup_sync(self, views: ModuleViews) -> None:
        """At power-up, a branch whose voltage is far from its peers' median stays pending (004)."""
        limit = self.profile.admission.max_delta_v_per_module
        branch_v = np.bincount(self.branch_index, weights=views.stack_v) / self.branch_size
        far = np.zeros(len(branch_v), dtype=bool)
        for peer in np.unique(self.branch_peer):
            group = self.branch_peer == peer
            far[group] = np.abs(branch_v[group] - np.median(branch_v[group])) > limit
        self.accepted = ~far[self.branch_index] & ~self._firmware_refused(views)

    # -- periodic -------------------------------------------------------------------------------
    def update(self, now: float, views: ModuleViews) -> None:
        """One report period: who is seen, who is admitted, heartbeat supervision.

        The views must not change afterwards (the twin passes fresh arrays, and the switch
        permissions, which the BMS replaces rather than edits): the report is built from them
        when read.
        """
        prof = self.profile
        refused = self._firmware_refused(views)
        online = np.empty(len(self.modules), dtype=bool)  # kept by this update's snapshot
        waiting_any = kn.master_seen(float(now), float(prof.slave.timeout_s), views.silent,
                                     self.last_seen, self.accepted, refused, online)
        if waiting_any:
            waiting = ~self.accepted & ~refused
            # compare the module's own report with its accepted peers' reports, near rest only
            at_rest = abs(float(views.current_a.sum())) / self.series <= prof.admission.max_bank_current_a
            delta = self._branch_deltas(views, self.accepted & ~views.silent)
            close = (delta <= prof.admission.max_delta_v_per_module) & at_rest
            self.ok_since = np.where(waiting & close & np.isnan(self.ok_since), now, self.ok_since)
            self.ok_since = np.where(waiting & ~close, np.nan, self.ok_since)
            admit = waiting & close & (now - self.ok_since >= prof.admission.settle_s)
            for k in np.flatnonzero(admit):
                self.accepted[k] = True
                self.events.append((now, f"{self.modules[k]} admitted"))
        supervised, lost = self._supervise_heartbeat(now)
        self._tick = _Tick(now, views, refused, self.accepted.copy(), online, supervised, lost,
                           self._frozen)
        self._report = None
        self._heartbeat_lost = lost

    def _supervise_heartbeat(self, now: float) -> tuple[bool, bool]:
        """Heartbeat state at this update: (supervised, lost); events and the contactor request.

        On the update where the heartbeat is found lost, the previous report is kept as the
        frozen one (firmware that keeps its last limits publishes those).
        """
        hb = self.profile.heartbeat
        last = self.last_heartbeat
        if last is None and hb.from_power_up:
            last = 0.0
        if not hb.supervise or last is None:
            self._frozen = None
            return False, False
        lost = now - last > hb.timeout_s
        if lost and not self._heartbeat_lost:
            self.events.append((now, f"inverter heartbeat lost ({hb.on_loss})"))
            self._frozen = self.report  # the previous update's report
        if not lost and not hb.recover and self._heartbeat_lost:
            lost = True  # latched until power cycle
        if not lost:
            self._frozen = None
            return True, False
        if not (hb.on_loss == "keep_last" and self._frozen is not None):
            self.open_main_request = hb.on_loss == "open_contactor"
        return True, True

    def _build_report(self, tick: _Tick) -> MasterReport:
        """The report of one update, from its snapshot."""
        prof, views = self.profile, tick.views
        accepted, online, names = tick.accepted, tick.online, self._names
        counted_cap = accepted & (online | (not prof.slave.drop_capacity))
        counted_lim = accepted & (online | (not prof.slave.drop_limits))
        r = MasterReport()
        r.counted = names[counted_cap].tolist()
        r.pending = names[~accepted].tolist()
        r.offline = names[~online].tolist()
        r.excluded = names[tick.refused].tolist()
        r.modules_online = int(online.sum())
        r.modules_offline = len(self.modules) - r.modules_online
        r.modules_pending = len(r.pending)
        r.blocking_charge = int((~views.allow_charge).sum())
        r.blocking_discharge = int((~views.allow_discharge).sum())
        r.online_capacity_ah = self._bank_sum(views.capacity_ah * counted_cap)
        r.installed_capacity_ah = self._bank_sum(views.capacity_ah)
        weight = float(np.sum(views.capacity_ah * counted_cap))
        r.soc_pct = 100 * float(np.sum(views.soc * views.capacity_ah * counted_cap)) / weight if weight else 0.0
        lim = self.limits
        r.charge_voltage_limit_v = lim.charge_voltage_v * self.series
        r.discharge_voltage_limit_v = lim.discharge_voltage_v * self.series
        span = max(100 - lim.taper_start_soc_pct, 1e-6)
        taper = np.clip((100 - views.soc * 100) / span, 0.0, 1.0)
        charge = lim.charge_current_a * views.allow_charge * taper * counted_lim
        discharge = lim.discharge_current_a * views.allow_discharge * counted_lim
        r.charge_current_limit_a = self._quantise(self._bank_sum(charge))
        r.discharge_current_limit_a = self._quantise(self._bank_sum(discharge))
        r.comm_alarm = bool(r.offline) and prof.slave.alarm
        if tick.supervised:
            hb = prof.heartbeat
            r.heartbeat_lost = tick.heartbeat_lost
            if tick.heartbeat_lost:
                r.comm_alarm = r.comm_alarm or hb.alarm
                if hb.on_loss == "keep_last" and tick.frozen is not None:
                    r.charge_current_limit_a = tick.frozen.charge_current_limit_a
                    r.discharge_current_limit_a = tick.frozen.discharge_current_limit_a
                else:
                    r.charge_current_limit_a = 0.0
                    r.discharge_current_limit_a = 0.0
        r.charge_enable = r.charge_current_limit_a > 0
        r.discharge_enable = r.discharge_current_limit_a > 0
        return r

    def _bank_sum(self, per_module: np.ndarray) -> float:
        """Parallel modules add; the weakest series position limits the bank."""
        per_series = np.bincount(self.series_index, weights=per_module, minlength=self.series)
        return float(per_series.min()) if len(per_series) else 0.0

    def _quantise(self, amps: float) -> float:
        q = self.profile.limit_quantum_a
        return round(amps / q) * q if q else amps
