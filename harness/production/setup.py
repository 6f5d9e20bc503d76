"""Build a :class:`~harness.production.station.Station` from a station file and a plan.

Everything is read and checked before the first unit: the station file (and each socket's own
station file), its ``eol:`` section, the plan -- a bad file is a FileError (exit 2) and nothing
is energised. The station's name in the store and on labels is the station file's ``name``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config.production import LineSection
from harness.production.launcher import Launcher, WarmLauncher, launcher_for
from harness.production.station import Station, UnitArgs


@dataclass
class OpenedStation:
    station: Station
    mes: Any = None

    def close(self) -> None:
        if self.mes is not None:
            self.mes.stop()


def open_station(station_file: str | Path, plan_arg: str, *, results: str, reports: str | Path,
                 operator: str, unit_args: UnitArgs | None = None,
                 launcher: Launcher | None = None) -> OpenedStation:
    from harness.check_registry import known_checks
    from harness.config import load_plan, load_station
    from harness.plugin import REPO, _resolve
    from harness.production.labels import LabelSection, LabelSink
    from harness.store import ResultStore

    station_path = _resolve(str(station_file), REPO / "fixtures" / "stations").resolve()
    station = load_station(station_path)
    plan = load_plan(_resolve(plan_arg, REPO / "test_plans"), known_checks())
    line = station.eol or LineSection()
    base = station_path.parent
    files = {s.name: (base / s.station if s.station else station_path) for s in line.sockets}
    calibration = {}
    emulated = True
    for path in set(files.values()):
        socket_station = station if path == station_path else load_station(path)
        emulated = emulated and bool(socket_station.emulated)
        if not socket_station.emulated:
            for role, inst in socket_station.instruments.items():
                if inst.calibration_due is not None:
                    calibration[f"{socket_station.name}/{role}"] = inst.calibration_due
    reports = Path(reports)
    reports.mkdir(parents=True, exist_ok=True)
    label_section = line.label or LabelSection(folder=str((reports / "labels").resolve()))
    (reports / "labels").mkdir(parents=True, exist_ok=True)
    labels = LabelSink(label_section, fallback_folder=reports / "labels", base_dir=base)
    mes = None
    if line.mes is not None:
        from harness.production.mes import MesHandoff
        mes = MesHandoff(line.mes, reports / "mes-spool", folder_base=base)
        mes.start()
    store = ResultStore(results)
    launcher = launcher or launcher_for(emulated)  # given: a benchmark comparing the two
    if isinstance(launcher, WarmLauncher):
        launcher.warm_up()  # the imports now, not at the first scan
    built = Station(name=station.name, plan=plan, plan_arg=plan_arg, station_files=files, line=line,
                    store=store, results_url=results, reports=reports, operator=operator,
                    labels=labels, mes=mes, unit_args=unit_args, calibration=calibration,
                    launcher=launcher)
    return OpenedStation(built, mes)
