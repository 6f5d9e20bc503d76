"""Module type files (fixtures/modules/): cells, BMS switch and protections, thermal data."""

from __future__ import annotations

from pydantic import Field, model_validator

from emulator.config.base import FileModel, Fraction, NonNegative, Positive


class CellSpec(FileModel):
    """One LFP cell: capacity and a 2RC equivalent circuit (DOMAIN.md section 3)."""

    capacity_ah: Positive = 100.0
    r0_mohm: Positive = 0.6
    r1_mohm: Positive = 0.2
    tau1_s: Positive = 15.0
    r2_mohm: Positive = 0.3
    tau2_s: Positive = 200.0
    ac_ir_mohm: Positive = 0.2
    coulombic_efficiency: Fraction = 0.999
    self_discharge_pct_per_month: NonNegative = 2.0


class FetSpec(FileModel):
    """The BMS switch: back-to-back charge and discharge MOSFET banks in the negative path."""

    rds_on_mohm: Positive = 0.75
    vds_rating_v: Positive = 80.0
    avalanche_clamp_v: Positive = 70.0
    clamp_resistance_mohm: Positive = 50.0
    avalanche_energy_j: Positive = 5.0

    @model_validator(mode="after")
    def _clamp_not_below_rating_by_much(self) -> "FetSpec":
        if self.avalanche_clamp_v < 0.5 * self.vds_rating_v:
            raise ValueError("avalanche_clamp_v must be at least half of vds_rating_v")
        return self


class VoltageProtection(FileModel):
    threshold_v: Positive
    delay_s: NonNegative
    release_v: Positive


class CurrentProtection(FileModel):
    threshold_a: Positive
    delay_s: NonNegative
    recovery_s: NonNegative = 30.0


class TemperatureWindow(FileModel):
    min_c: float
    max_c: float
    delay_s: NonNegative = 2.0
    hysteresis_k: NonNegative = 5.0


class Protections(FileModel):
    cell_overvoltage: VoltageProtection = VoltageProtection(threshold_v=3.65, delay_s=1.0, release_v=3.40)
    cell_undervoltage: VoltageProtection = VoltageProtection(threshold_v=2.50, delay_s=2.0, release_v=2.90)
    charge_overcurrent: CurrentProtection = CurrentProtection(threshold_a=110.0, delay_s=2.0)
    discharge_overcurrent: CurrentProtection = CurrentProtection(threshold_a=150.0, delay_s=1.0)
    short_circuit: CurrentProtection = CurrentProtection(threshold_a=500.0, delay_s=200e-6, recovery_s=60.0)
    charge_temperature: TemperatureWindow = TemperatureWindow(min_c=0.0, max_c=45.0)
    discharge_temperature: TemperatureWindow = TemperatureWindow(min_c=-20.0, max_c=60.0)


class Balancing(FileModel):
    current_ma: NonNegative = 50.0
    start_cell_v: Positive = 3.40
    delta_mv: Positive = 15.0


class ModuleLimits(FileModel):
    """What one module's BMS offers to a master: charge/discharge currents and voltages."""

    charge_current_a: Positive = 100.0
    discharge_current_a: Positive = 100.0
    charge_voltage_v: Positive = 14.2
    discharge_voltage_v: Positive = 12.0
    taper_start_soc_pct: float = Field(default=95.0, ge=0, le=100)


class TerminalThermal(FileModel):
    heat_capacity_j_per_k: Positive = 60.0
    to_module_w_per_k: Positive = 0.5
    to_ambient_w_per_k: Positive = 0.1


class ModuleThermal(FileModel):
    """Lumped module body: capacity, faces to ambient, side faces that a neighbour may cover."""

    heat_capacity_j_per_k: Positive = 11000.0
    to_ambient_w_per_k: Positive = 1.0
    side_w_per_k: Positive = 0.5
    neighbour_w_per_k: Positive = 0.6
    terminal: TerminalThermal = TerminalThermal()


class BmsSpec(FileModel):
    fet: FetSpec = FetSpec()
    shunt_mohm: NonNegative = 0.1
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
    links_mohm: NonNegative = 0.6
    bms: BmsSpec = BmsSpec()
    thermal: ModuleThermal = ModuleThermal()
    nominal_cell_v: Positive = 3.2

    @property
    def nominal_voltage_v(self) -> float:
        return self.cells_in_series * self.nominal_cell_v

    @property
    def capacity_ah(self) -> float:
        return self.cell.capacity_ah
