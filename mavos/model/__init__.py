"""Pure-torch MAVOS / DeAOT networks: no Lightning, no files, no config objects."""
from mavos.model.vos import VOSNetwork, build_vos_network

__all__ = ["VOSNetwork", "build_vos_network"]
