"""Test plans (YAML) and the check code they run."""
