"""Prefect blocks: the only configuration a facility writes (a facility and its targets).

Registered through the `prefect.collections` entry point, so `prefect block register -m
pollcat.blocks` works from any directory once pollcat is installed.
"""

from pollcat.blocks.facility import PollcatFacility
from pollcat.blocks.notifications import OperatorEmail
from pollcat.blocks.targets import DeliveryTarget

__all__ = ["PollcatFacility", "DeliveryTarget", "OperatorEmail"]
