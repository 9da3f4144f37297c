"""mavos: semi-supervised video object segmentation with MAVOS (fixed-size long-term memory)."""

__version__ = "0.1.0"
