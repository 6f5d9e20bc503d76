"""Repository-level pytest configuration: loads the harness plugin (once it exists) and nothing else."""

import emulator  # noqa: F401  (sets single-threaded BLAS before numpy is first imported)
