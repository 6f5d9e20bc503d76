"""The bank twin: a physics model of LiFePO4 modules and banks, and its emulated endpoints.

The twin never imports the harness. Build one with :func:`emulator.twin.build_twin`.
"""

import os as _os

# The twin solves many small systems; a multithreaded BLAS makes each one ~4x slower (thread
# start-up dominates a 100 x 100 LU). Applies only if numpy has not been imported yet.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")
