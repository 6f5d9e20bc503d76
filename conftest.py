"""Repository-level pytest configuration: loads the harness plugin and nothing else."""

import emulator  # noqa: F401  (sets single-threaded BLAS before numpy is first imported)

pytest_plugins = ["harness.plugin"]
