"""Repository-level pytest configuration: loads the harness plugin and nothing else."""

from harness.emulated import single_threaded_blas

single_threaded_blas()  # before numpy is first imported

pytest_plugins = ["harness.plugin"]
