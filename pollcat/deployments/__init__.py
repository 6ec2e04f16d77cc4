"""Putting pollcat on a Prefect server: block types, work pool, alerts and one pair of
deployments per facility block, applied idempotently by `bootstrap` (see its docstring)."""
