"""Putting pollcat on a Prefect server: `python -m deployments.bootstrap` (see its docstring)."""
