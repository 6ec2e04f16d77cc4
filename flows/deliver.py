"""Entry point for `prefect.yaml` on checkout-based workers: the flow lives in
`pollcat.flows.deliver` (the only installed package)."""

from pollcat.flows.deliver import deliver_download

__all__ = ["deliver_download"]
