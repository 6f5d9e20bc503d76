"""Repository-level pytest configuration: loads the harness plugin (once it exists) and nothing else."""
