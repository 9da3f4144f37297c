"""Pure-torch MAVOS / DeAOT networks: no Lightning, no files, no config objects."""
from mavos.model.vos import VOSNetwork

__all__ = ["VOSNetwork"]
