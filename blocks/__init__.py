"""Prefect blocks: the only configuration a facility writes (a facility and its targets)."""

from blocks.facility import PollcatFacility
from blocks.targets import DeliveryTarget

__all__ = ["PollcatFacility", "DeliveryTarget"]
