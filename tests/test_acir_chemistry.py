"""Two identity figures a bank check relies on, end to end through the emulated instruments.

AC-IR: the emulated Hioki BT3562 reads, over its loopback SCPI socket, the 1 kHz AC resistance of
the module its leads are on *as the twin has it*, so a fault that raises a module's resistance
raises its reading. By hand from fixtures/modules/lfp_12v8_100ah.yaml: at 1 kHz the RC pairs are
short-circuited and the cells count at their 1 kHz figure, so a healthy module reads
4 x 0.2 (cells) + 0.6 (links, terminals) + 0.1 (shunt) + 2 x 0.75 (charge + discharge FET)
= 3.0 mohm; ``aged_module`` multiplies the module's series resistance (cells, links, shunt -- what
the twin's fault scales) by 1.6: 1.6 x 1.5 + 1.5 = 3.9 mohm, the cells' share 0.8 -> 1.28 mohm.

Chemistry: 802 ``Typ`` is LITHIUM_ION for LFP, NMC and LTO alike; the emulated battery carries the
chemistry in model 1 ``Opt`` and the harness's SunSpec client decodes it, over a real pymodbus
TCP connection on 127.0.0.1, to "LFP", "NMC", "LTO".
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from emulator.bench import EmulatedBench
from bankmodel.specs.loading import FIXTURES, load_bank_spec
from emulator.endpoints import start_scpi_endpoints, stop_scpi_endpoints
from emulator.endpoints.sunspec_server import SunSpecServer
from emulator.twin import Twin, build_twin
from instruments.drivers import get_driver
from instruments.roles import InstrumentError
from instruments.sunspec_bms import SunSpecBms, normalise_chemistry

MOHM = 1e-3
# module type figures (fixtures/modules/lfp_12v8_100ah.yaml), mohm
CELLS_AC, LINKS, SHUNT, FET_PATH = 4 * 0.2, 0.6, 0.1, 2 * 0.75
HEALTHY_MOHM = CELLS_AC + LINKS + SHUNT + FET_PATH                      # 3.0
AGED_MOHM = 1.6 * (CELLS_AC + LINKS + SHUNT) + FET_PATH                 # 3.9
# the limits of the shipped plans (test_plans/eol_module.yaml, parallel_bank_1s4p.yaml)
ACIR_RANGE_MOHM, ACIR_REFERENCE_MOHM, ACIR_DELTA_MOHM = (1.0, 20.0), 3.0, 3.0
NOISE_MOHM = 0.002 * 5                                                  # 5 sigma of the meter's noise


# ------------------------------------------------------------------------------ AC-IR over SCPI


class Meter:
    """The emulated bench's Hioki BT3562 through its driver; :meth:`on` moves the Kelvin leads."""

    def __init__(self, bench: EmulatedBench):
        self.bench = bench
        self.endpoints = start_scpi_endpoints(bench)
        self.driver = get_driver("hioki_bt3562")(self.endpoints["acir"][1], "acir", None, 1.0)

    def on(self, module: str) -> tuple[float, float]:
        with self.bench.lock:
            self.bench.wiring = self.bench.wiring.model_copy(update={"acir_module": module})
        return self.driver.measure()

    def close(self) -> None:
        self.driver.close()
        stop_scpi_endpoints(self.endpoints)


@pytest.fixture
def meter() -> Iterator:
    meters: list[Meter] = []

    def make(dut: str, scenario: str | None = None) -> Meter:
        meters.append(Meter(EmulatedBench(build_twin(dut, scenario, seed=3))))
        return meters[-1]

    yield make
    for m in meters:
        m.close()


def test_healthy_module_reads_its_figure_within_the_plan_limits(meter):
    m = meter("1s1p")
    ohm, volts = m.on("s1p1")
    assert ohm / MOHM == pytest.approx(HEALTHY_MOHM, abs=NOISE_MOHM)
    assert ACIR_RANGE_MOHM[0] <= ohm / MOHM <= ACIR_RANGE_MOHM[1]
    assert abs(ohm / MOHM - ACIR_REFERENCE_MOHM) <= ACIR_DELTA_MOHM
    assert volts == pytest.approx(m.bench.twin.module_terminal_voltage("s1p1"), abs=1e-3)


def test_aged_module_reads_its_higher_resistance(meter):
    """1S1P: the aged module is the only one; without the fault reaching the meter it read 3.0."""
    healthy, _ = meter("1s1p").on("s1p1")
    aged, _ = meter("1s1p", "aged_module").on("s1p1")
    assert aged / MOHM == pytest.approx(AGED_MOHM, abs=NOISE_MOHM)
    # the part the fault scales (everything but the switch) is 1.6 x, within the noise
    assert (aged / MOHM - FET_PATH) / (healthy / MOHM - FET_PATH) == pytest.approx(1.6, rel=0.02)
    # still inside the datasheet range: a 1.6 x aged 100 Ah module is a few tenths of a mohm up
    assert ACIR_RANGE_MOHM[0] <= aged / MOHM <= ACIR_RANGE_MOHM[1]


def test_1s4p_aged_module_stands_out_from_its_peers(meter):
    """The leads moved across a 1S4P: only the aged one (middle = s1p3) differs, by the fault's
    ratio on its series part -- 0.9 mohm, which is inside 003's +-3 mohm batch tolerance: a
    1.6 x aged 100 Ah module does not fail that criterion, the ratio shows it."""
    m = meter("1s4p_diagonal", "aged_module")
    readings = {module: m.on(module)[0] / MOHM for module in m.bench.twin.modules}
    peers = [readings[x] for x in ("s1p1", "s1p2", "s1p4")]
    for value in peers:
        assert value == pytest.approx(HEALTHY_MOHM, abs=NOISE_MOHM)
    peer = sum(peers) / len(peers)
    assert readings["s1p3"] - peer == pytest.approx(AGED_MOHM - HEALTHY_MOHM, abs=NOISE_MOHM)
    assert (readings["s1p3"] - FET_PATH) / (peer - FET_PATH) == pytest.approx(1.6, rel=0.02)
    assert abs(readings["s1p3"] - peer) < ACIR_DELTA_MOHM


def test_open_bms_switch_reads_over_range(meter):
    """Leads on a module whose BMS has opened its MOSFETs: no path, the meter's +OF value."""
    m = meter("1s1p")
    with m.bench.lock:
        m.bench.twin.bms_force_off("s1p1")
    m.bench.advance(0.1, max_step=1e-3)
    ohm, _ = m.on("s1p1")
    assert ohm == pytest.approx(1e9)


# ------------------------------------------------------------------------------ chemistry over SunSpec


def module_type_copy(folder: Path, chemistry: str) -> str:
    """A DUT (1S1P) whose module type is fixtures/modules/lfp_12v8_100ah.yaml with another
    chemistry and nothing else changed -- same model name, so only the chemistry can tell."""
    source = (FIXTURES / "modules" / "lfp_12v8_100ah.yaml").read_text()
    assert "\nchemistry: LFP\n" in source
    stem = f"test_{chemistry.lower()}_12v_100ah"
    (folder / "modules").mkdir(parents=True, exist_ok=True)
    (folder / "duts").mkdir(parents=True, exist_ok=True)
    (folder / "modules" / f"{stem}.yaml").write_text(
        source.replace("name: lfp_12v8_100ah", f"name: {stem}")
              .replace("\nchemistry: LFP\n", f"\nchemistry: {chemistry}\n"))
    dut = folder / "duts" / f"{stem}_1s1p.yaml"
    dut.write_text((FIXTURES / "duts" / "1s1p.yaml").read_text()
                   .replace("module_type: lfp_12v8_100ah", f"module_type: {stem}"))
    return str(dut)


def chemistry_over_modbus(dut: str) -> tuple[str | None, str, str | None, str]:
    """(client.chemistry(), identity(), 802 Typ symbol, module type's chemistry) over TCP."""
    twin = Twin(load_bank_spec(dut))
    bench = EmulatedBench(twin)
    with SunSpecServer(bench, host="127.0.0.1") as server, \
            SunSpecBms("127.0.0.1", server.port, 1, timeout_s=0.5) as client:
        return (client.chemistry(), client.identity(), client.model(802).symbol("Typ"),
                twin.spec.module_type.chemistry)


@pytest.mark.parametrize("chemistry, expected", [("NMC", "NMC"), ("LTO", "LTO"), ("LiFePO4", "LFP"),
                                                 ("NCM811", "NMC")])
def test_chemistry_is_reported_as_chemistry(tmp_path, chemistry, expected):
    got, identity, typ, declared = chemistry_over_modbus(module_type_copy(tmp_path, chemistry))
    assert declared == chemistry
    assert got == expected
    assert identity.endswith(f"chemistry {expected}")
    assert typ == "LITHIUM_ION"            # what 802 alone can say: the same for every lithium cell


def test_shipped_lfp_module_is_lfp_and_nmc_is_not():
    lfp = chemistry_over_modbus("1s1p")
    assert lfp[0] == "LFP" and lfp[2] == "LITHIUM_ION"
    assert "SN BH12-B0001-001 firmware" in lfp[1] and lfp[1].endswith("chemistry LFP")


def test_nmc_and_lfp_differ_with_the_same_model_name(tmp_path):
    nmc = chemistry_over_modbus(module_type_copy(tmp_path, "NMC"))
    lfp = chemistry_over_modbus("1s1p")
    assert nmc[0] == "NMC" != lfp[0] == "LFP"
    assert nmc[1].split(" chemistry ")[0].split(" SN ")[0] == lfp[1].split(" chemistry ")[0].split(" SN ")[0]


def test_text_that_contradicts_typ_is_an_error():
    """A battery whose Opt says LFP while 802 Typ says LEAD_ACID contradicts itself."""
    bench = EmulatedBench(build_twin("1s1p"))
    with SunSpecServer(bench) as server, SunSpecBms("127.0.0.1", server.port, 1, timeout_s=0.5) as client:
        typ = client.model(802).points["Typ"]
        lead_acid = {s["name"]: int(s["value"]) for s in typ.pdef["symbols"]}["LEAD_ACID"]
        server.override(typ.address, lead_acid)
        with pytest.raises(InstrumentError, match=r"Opt 'LFP 1S1P' says LFP.*Typ.*LEAD_ACID"):
            client.chemistry()
        assert "LEAD_ACID" in client.identity()          # shown, not raised (the watchdog probes it)
        for register in range(8):                        # Opt blank: Md "LFP12.8-100" still says LFP
            server.override(server.address_of(1, "Opt") + register, 0)
        with pytest.raises(InstrumentError, match=r"Md 'LFP12.8-100' says LFP"):
            client.chemistry()
        for register in range(16):                       # Md blank too: no word left, Typ's family
            server.override(server.address_of(1, "Md") + register, 0)
        assert client.chemistry() == "LEAD_ACID"


@pytest.mark.parametrize("text, expected", [
    ("LFP 1S4P", "LFP"), ("LiFePO4 16S16P", "LFP"), ("LFP12.8-100", "LFP"), ("NMC 4S1P", "NMC"),
    ("ncm523", "NMC"), ("LTO", "LTO"), ("1s4p_diagonal 1S", None), ("", None), (None, None)])
def test_normalise_chemistry(text, expected):
    assert normalise_chemistry(text) == expected
