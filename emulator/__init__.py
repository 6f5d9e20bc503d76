"""The bank twin: a physics model of LiFePO4 modules and banks, and its emulated endpoints.

The twin never imports the harness. Build one with :func:`emulator.twin.build_twin`.
"""
