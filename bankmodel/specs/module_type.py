"""Module type files (fixtures/modules/): cells, BMS switch and protections, thermal data."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from bankmodel.specs.base import FileModel, between

# Sane ranges of a module's figures (see bankmodel.specs.base.between)
Capacity = between(0.1, 10_000.0)           # Ah
CellResistance = between(0.001, 10_000.0)   # mohm
TimeConstant = between(0.01, 100_000.0)     # s
Efficiency = between(0.5, 1.0)
SelfDischarge = between(0.0, 100.0)         # % per month
FetResistance = between(0.001, 10_000.0)    # mohm
FetVoltage = between(1.0, 10_000.0)         # V
ClampResistance = between(0.001, 1_000_000.0)  # mohm
Energy = between(0.001, 1_000_000.0)        # J
CellVoltage = between(0.1, 10.0)            # V per cell
Delay = between(0.0, 3600.0)                # s
Recovery = between(0.0, 86_400.0)           # s
Current = between(0.1, 100_000.0)           # A
Hysteresis = between(0.0, 100.0)            # K
BalanceCurrent = between(0.0, 100_000.0)    # mA
BalanceDelta = between(0.1, 1000.0)         # mV
ModuleVoltage = between(0.1, 10_000.0)      # V
HeatCapacity = between(0.1, 100_000_000.0)  # J/K
Conductance = between(0.001, 10_000.0)      # W/K
SmallResistance = between(0.0, 1000.0)      # mohm


class CellSpec(FileModel):
    """One LFP cell: capacity and a 2RC equivalent circuit (DOMAIN.md section 3)."""

    capacity_ah: Capacity = 100.0
    r0_mohm: CellResistance = 0.6
    r1_mohm: CellResistance = 0.2
    tau1_s: TimeConstant = 15.0
    r2_mohm: CellResistance = 0.3
    tau2_s: TimeConstant = 200.0
    ac_ir_mohm: CellResistance = 0.2
    coulombic_efficiency: Efficiency = 0.999
    self_discharge_pct_per_month: SelfDischarge = 2.0


class FetSpec(FileModel):
    """The BMS switch: back-to-back charge and discharge MOSFET banks in the negative path."""

    rds_on_mohm: FetResistance = 0.75
    vds_rating_v: FetVoltage = 80.0
    avalanche_clamp_v: FetVoltage = 70.0
    clamp_resistance_mohm: ClampResistance = 50.0
    avalanche_energy_j: Energy = 5.0

    @model_validator(mode="after")
    def _clamp_not_below_rating_by_much(self) -> "FetSpec":
        if self.avalanche_clamp_v < 0.5 * self.vds_rating_v:
            raise ValueError("avalanche_clamp_v must be at least half of vds_rating_v")
        return self


class VoltageProtection(FileModel):
    threshold_v: CellVoltage
    delay_s: Delay
    release_v: CellVoltage


class CurrentProtection(FileModel):
    threshold_a: Current
    delay_s: Delay
    recovery_s: Recovery = 30.0


Celsius = Annotated[float, Field(ge=-100, le=300)]


class TemperatureWindow(FileModel):
    min_c: Celsius
    max_c: Celsius
    delay_s: Delay = 2.0
    hysteresis_k: Hysteresis = 5.0

    @model_validator(mode="after")
    def _ordered(self) -> "TemperatureWindow":
        if self.min_c > self.max_c:
            raise ValueError("min_c at most max_c")
        return self


class Protections(FileModel):
    cell_overvoltage: VoltageProtection = VoltageProtection(threshold_v=3.65, delay_s=1.0, release_v=3.40)
    cell_undervoltage: VoltageProtection = VoltageProtection(threshold_v=2.50, delay_s=2.0, release_v=2.90)
    charge_overcurrent: CurrentProtection = CurrentProtection(threshold_a=110.0, delay_s=2.0)
    discharge_overcurrent: CurrentProtection = CurrentProtection(threshold_a=150.0, delay_s=1.0)
    short_circuit: CurrentProtection = CurrentProtection(threshold_a=500.0, delay_s=200e-6, recovery_s=60.0)
    charge_temperature: TemperatureWindow = TemperatureWindow(min_c=0.0, max_c=45.0)
    discharge_temperature: TemperatureWindow = TemperatureWindow(min_c=-20.0, max_c=60.0)


class Balancing(FileModel):
    current_ma: BalanceCurrent = 50.0
    start_cell_v: CellVoltage = 3.40
    delta_mv: BalanceDelta = 15.0


class ModuleLimits(FileModel):
    """What one module's BMS offers to a master: charge/discharge currents and voltages."""

    charge_current_a: Current = 100.0
    discharge_current_a: Current = 100.0
    charge_voltage_v: ModuleVoltage = 14.2
    discharge_voltage_v: ModuleVoltage = 12.0
    taper_start_soc_pct: float = Field(default=95.0, ge=0, le=100)


class TerminalThermal(FileModel):
    heat_capacity_j_per_k: HeatCapacity = 60.0
    to_module_w_per_k: Conductance = 0.5
    to_ambient_w_per_k: Conductance = 0.1


class ModuleThermal(FileModel):
    """Lumped module body: capacity, faces to ambient, side faces that a neighbour may cover."""

    heat_capacity_j_per_k: HeatCapacity = 11000.0
    to_ambient_w_per_k: Conductance = 1.0
    side_w_per_k: Conductance = 0.5
    neighbour_w_per_k: Conductance = 0.6
    terminal: TerminalThermal = TerminalThermal()


class BmsSpec(FileModel):
    fet: FetSpec = FetSpec()
    shunt_mohm: SmallResistance = 0.1
    protections: Protections = Protections()
    balancing: Balancing = Balancing()
    limits: ModuleLimits = ModuleLimits()


class ModuleType(FileModel):
    """A module family: N LFP cells in series, internal links, a BMS, its thermal mass."""

    name: str
    chemistry: str = "LFP"
    model: str
    cells_in_series: int = Field(ge=1, le=32)
    cell: CellSpec = CellSpec()
    links_mohm: SmallResistance = 0.6
    bms: BmsSpec = BmsSpec()
    thermal: ModuleThermal = ModuleThermal()
    nominal_cell_v: CellVoltage = 3.2

    @property
    def nominal_voltage_v(self) -> float:
        return self.cells_in_series * self.nominal_cell_v

    @property
    def capacity_ah(self) -> float:
        return self.cell.capacity_ah
