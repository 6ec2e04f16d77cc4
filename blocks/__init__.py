"""The design card's `blocks/` folder: the block classes live in `pollcat.blocks` (registered
through the `prefect.collections` entry point, so `prefect block register -m pollcat.blocks`
works from anywhere)."""

from pollcat.blocks import DeliveryTarget, PollcatFacility

__all__ = ["DeliveryTarget", "PollcatFacility"]
