"""Apply a fault scenario to a freshly built twin.

Targets are resolved against the DUT: a position (``s2p3``), a parallel string (``p2``) or a
role (``first``, ``middle``, ``last``). A target the DUT does not have is a file error naming
the scenario's line, so a scenario that cannot apply never runs silently healthy.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bankmodel.specs import scenario as sc
from bankmodel.specs.loading import BankSpec, load_bank_spec
from bankmodel.files import FileError, load_yaml

if TYPE_CHECKING:
    from emulator.twin import Twin


class _Resolver:
    def __init__(self, twin: "Twin", spec: BankSpec):
        self.twin = twin
        self.spec = spec
        self.index = 0

    def _error(self, field: str, found: str, allowed: str) -> FileError:
        path = self.spec.scenario_path or "(scenario)"
        line = None
        if self.spec.scenario_path:
            try:
                _, located = load_yaml(self.spec.scenario_path)
                line = located.line_of(("faults", self.index, field))
            except FileError:
                line = None
        return FileError(path, line, f"faults[{self.index}].{field}", found, allowed)

    @staticmethod
    def _by_role(items: list[str], role: str) -> str | None:
        return {"first": items[0], "last": items[-1], "middle": items[len(items) // 2]}.get(role)

    def module(self, target: str, field: str = "module") -> str:
        modules = self.twin.modules
        found = self._by_role(modules, target) or (target if target in modules else None)
        if found is None:
            raise self._error(field, f"'{target}'",
                              f"a module of this DUT ({modules[0]}..{modules[-1]}) or first/middle/last")
        return found

    def branch(self, target: str, field: str) -> str:
        branches = self.twin.layout.branches
        if target == "main":
            return "main"
        found = self._by_role(branches, target)
        if found is None and target in branches:
            found = target
        if found is None and target in self.twin.layout.branch_of_module:
            found = self.twin.layout.branch_of_module[target]
        if found is None:
            raise self._error(field, f"'{target}'",
                              f"a branch of this DUT ({', '.join(branches)}), main, or first/middle/last")
        return found


def apply_scenario(twin: "Twin", spec: BankSpec) -> None:
    resolve = _Resolver(twin, spec)
    for index, fault in enumerate(spec.scenario.faults):
        resolve.index = index
        _apply(twin, fault, resolve)


def _apply(twin: "Twin", fault: object, resolve: _Resolver) -> None:  # noqa: C901 - a dispatch table
    if isinstance(fault, sc.SocOffset):
        k = twin.module_index[resolve.module(fault.module)]
        twin.cell_soc[k, :] = fault.soc_pct / 100.0
    elif isinstance(fault, sc.AgedModule):
        twin.age_module(resolve.module(fault.module), fault.capacity_factor, fault.resistance_factor)
    elif isinstance(fault, sc.LooseLug):
        module_target, polarity = fault.terminal.rsplit(".", 1)
        terminal = f"{resolve.module(module_target, 'terminal')}.{polarity}"
        lugs = twin.lug_parts(terminal)
        if not lugs:
            raise resolve._error("terminal", f"'{fault.terminal}'",
                                 "a module terminal with a cable lug in this DUT")
        for element, part in lugs:
            twin.set_part_resistance(element, part, fault.contact_mohm * 1e-3)
    elif isinstance(fault, sc.UnequalCable):
        branch = resolve.branch(fault.branch, "branch")
        if branch == "main":
            raise resolve._error("branch", "'main'", "a parallel branch")
        length, _ = _lead_length(twin, branch)
        scale = (length + fault.extra_length_m) / length if length > 0 else 1.0
        if scale <= 0:
            raise resolve._error("extra_length_m", str(fault.extra_length_m),
                                 f"more than -{length} m (the lead's length)")
        twin.lengthen_lead(branch, scale)
    elif isinstance(fault, sc.WeakFet):
        k = twin.module_index[resolve.module(fault.module)]
        twin.fet_rating_v[k] = fault.vds_rating_v
        twin.fet_clamp_v[k] = fault.avalanche_clamp_v
        twin.fet_eas_j[k] = fault.avalanche_energy_j
    elif isinstance(fault, sc.FirmwareMismatch):
        twin.firmware[resolve.module(fault.module)] = fault.version
    elif isinstance(fault, sc.SilentModule):
        k = twin.module_index[resolve.module(fault.module)]
        twin.schedule(fault.at_s, lambda k=k: twin.silent.__setitem__(k, True),
                      f"{twin.modules[k]} stops talking to the master")
    elif isinstance(fault, sc.HeartbeatLoss):
        twin.master.deaf_from = fault.at_s
    elif isinstance(fault, sc.SilentBms):
        twin.master.silent_from = fault.at_s
    elif isinstance(fault, sc.StuckContactor):
        twin.stick_contactor(resolve.branch(fault.contactor, "contactor"), fault.stuck)
    elif isinstance(fault, sc.BlownFuse):
        twin.blow_fuse(resolve.branch(fault.branch, "branch"))
    elif isinstance(fault, sc.HotModule):
        k = twin.module_index[resolve.module(fault.module)]
        twin.extra_heat_w[k] += fault.extra_heat_w
        if fault.initial_temperature_c is not None:
            twin.thermal.temperature[twin.thermal.index[twin.modules[k]]] = fault.initial_temperature_c
    elif isinstance(fault, sc.BmsSerial):
        module = resolve.module(fault.module)
        twin.serials[module] = fault.serial
        twin.serial_faulted.add(module)
    elif isinstance(fault, sc.HungInstrument):
        twin.instrument_hangs[fault.role] = fault.at_s  # the endpoints freeze it (emulator/emulate.py)
    else:  # pragma: no cover - the scenario model admits no other kinds
        raise TypeError(f"unknown fault {fault!r}")


def _lead_length(twin: "Twin", branch: str) -> tuple[float, float]:
    ic = twin.spec.dut.interconnect
    override = ic.leads.get(branch)
    length = ic.lead.length_m if override is None or override.length_m is None else override.length_m
    section = (ic.lead.cross_section_mm2 if override is None or override.cross_section_mm2 is None
               else override.cross_section_mm2)
    return length, section


def check_targets(spec: BankSpec) -> None:
    """Every module, terminal, branch and contactor a scenario names exists in the DUT.

    The twin resolves targets when it is built (below), which in a ``hil run``
    is after the bench is assembled; resolving them here, against the DUT's layout alone, makes
    a scenario that cannot apply a FileError at its line before anything starts.
    """
    if not spec.scenario.faults:
        return
    from types import SimpleNamespace

    from emulator.topology import build_layout

    layout = build_layout(spec)
    twin = SimpleNamespace(modules=layout.modules, layout=layout, spec=spec)
    resolve = _Resolver(twin, spec)  # type: ignore[arg-type]
    for index, fault in enumerate(spec.scenario.faults):
        resolve.index = index
        if isinstance(fault, sc.LooseLug):
            module_target, polarity = fault.terminal.rsplit(".", 1)
            terminal = f"{resolve.module(module_target, 'terminal')}.{polarity}"
            if not layout.lug_parts(terminal):
                raise resolve._error("terminal", f"'{fault.terminal}'",
                                     "a module terminal with a cable lug in this DUT")
        elif isinstance(fault, sc.UnequalCable):
            branch = resolve.branch(fault.branch, "branch")
            if branch == "main":
                raise resolve._error("branch", "'main'", "a parallel branch")
            length, _ = _lead_length(twin, branch)  # type: ignore[arg-type]
            if length + fault.extra_length_m <= 0:
                raise resolve._error("extra_length_m", f"{fault.extra_length_m:g}",
                                     f"more than -{length:g} m (the lead's length)")
        elif isinstance(fault, sc.StuckContactor):
            resolve.branch(fault.contactor, "contactor")
        elif isinstance(fault, sc.BlownFuse):
            resolve.branch(fault.branch, "branch")
        elif hasattr(fault, "module"):
            resolve.module(fault.module)


def load_bank(dut: str | Path, scenario: str | Path | None = None) -> BankSpec:
    """The twin's files, validated, with the scenario's targets checked against the DUT."""
    spec = load_bank_spec(dut, scenario)
    check_targets(spec)
    return spec
