"""Entry point for `prefect.yaml` on checkout-based workers: the flow lives in
`pollcat.flows.sweep` (the only installed package)."""

from pollcat.flows.sweep import sweep

__all__ = ["sweep"]
