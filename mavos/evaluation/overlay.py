"""Overlay video: objects coloured over the frames, to look at a user's result."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from mavos.data.io import atomic_save, davis_palette


def blend(frame: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) RGB frame with each object id painted in its palette colour and outlined."""
    colours = davis_palette()[mask]
    out = frame.astype(np.float32)
    fg = mask > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * colours[fg]
    edges = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    out[edges] = colours[edges]
    return out.clip(0, 255).astype(np.uint8)


def write_overlay_video(pairs: Iterable[tuple[np.ndarray, np.ndarray]], path: str | Path, fps: float = 24.0) -> None:
    """Write (frame, mask) pairs as an mp4 (mp4v), atomically."""
    def save(tmp: str) -> None:
        writer = None
        try:
            for frame, mask in pairs:
                if writer is None:
                    h, w = frame.shape[:2]
                    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                    if not writer.isOpened():
                        raise RuntimeError(f"{path}: OpenCV cannot write mp4 video")
                writer.write(cv2.cvtColor(blend(frame, mask), cv2.COLOR_RGB2BGR))
        finally:
            if writer is not None:
                writer.release()
    atomic_save(save, path)
