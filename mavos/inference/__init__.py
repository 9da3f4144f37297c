"""Streaming inference: the per-video state that both training and evaluation drive frame by frame."""
from mavos.inference.tracker import ObjectTracker
from mavos.inference.session import InferenceSession

__all__ = ["ObjectTracker", "InferenceSession"]
