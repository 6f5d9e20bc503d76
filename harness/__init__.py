"""The harness: the run, its files, the bench, the safety supervisor, results and the CLI."""
