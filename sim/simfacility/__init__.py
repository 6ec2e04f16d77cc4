"""A simulated ICAT facility: ICAT REST, IDS and TopCAT wire APIs in one process.

This package is test and demo infrastructure. The pollcat product never imports it; it talks
to it over HTTP exactly as it talks to a real facility.
"""

from simfacility.facility import SimFacility
from simfacility.server import RunningFacility, running_facility

__all__ = ["SimFacility", "RunningFacility", "running_facility"]
