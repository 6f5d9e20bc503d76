"""Imported once by an emulated station's warm process, after :mod:`harness.production.preload`:
the twin and its endpoints, and numba's compiled kernels loaded from its cache (a third of a
second per unit otherwise), through the harness's one door to the emulator."""

from harness.emulated import warm_twin

warm_twin()
