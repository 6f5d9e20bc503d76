"""Endpoints that serve an :class:`emulator.bench.EmulatedBench` over real wire protocols.

Each endpoint speaks one instrument's dialect and touches the twin only through the bench
(its wiring, its lock, its captures), so drivers cannot tell it from the real instrument
except by ``*IDN?``'s serial number.
"""

from emulator.endpoints.scpi_instruments import start_scpi_endpoints, stop_scpi_endpoints

__all__ = ["start_scpi_endpoints", "stop_scpi_endpoints"]
