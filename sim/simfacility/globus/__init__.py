"""An emulation of Globus Auth (client credentials, identity lookup) and Transfer (guest-collection
permissions), faithful to the wire documents globus-sdk reads; pollcat never imports it."""

from simfacility.globus.app import build_app
from simfacility.globus.server import RunningGlobus, running_globus
from simfacility.globus.state import Fault, GlobusState, Role

__all__ = ["Fault", "GlobusState", "Role", "RunningGlobus", "build_app", "running_globus"]
