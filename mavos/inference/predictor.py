"""A script-facing API in the spirit of SAM2's video predictor: load a model, give masks, iterate masks.

    predictor = VideoPredictor.from_checkpoint("last.ckpt")   # the checkpoint names its network
    for index, mask in predictor.propagate(frames, {0: first_mask}):
        ...
"""
from __future__ import annotations

import numbers
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from mavos.checkpoints.loading import load_network
from mavos.data.listing import first_appearances
from mavos.inference.session import InferenceSession
from mavos.model.vos import VOSNetwork


def object_counts(masks: dict[int, np.ndarray]) -> tuple[int, int]:
    """Objects in the first given mask, and in all of them together (``first_appearances``' rule: ids 1-254)."""
    first = first_appearances(masks, read=lambda m: m.cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m))
    return sum(frame == min(masks) for frame in first.values()), len(first)


class VideoPredictor:
    def __init__(self, net: VOSNetwork, device: torch.device | str | None = None, **session_kwargs):
        self.device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.net = net.to(self.device).eval()
        self.session_kwargs = session_kwargs

    @classmethod
    def from_checkpoint(cls, ckpt_path: str, model: str | None = None, device=None,
                        **session_kwargs) -> "VideoPredictor":
        """The network the checkpoint stores; ``model`` (a config name) only for checkpoints without one."""
        return cls(load_network(ckpt_path, model), device, **session_kwargs)

    def propagate(self, frames: Iterable[np.ndarray], masks: dict[int, np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (frame index, (H, W) uint8 object ids) for every frame from the first given mask on.

        masks: frame index -> (H, W) ids; the first is the starting mask, later ones add new objects.
        """
        if not masks:
            raise ValueError("give at least one mask: {frame_index: mask}")
        bad = [k for k in masks if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0]
        if bad:
            raise ValueError(f"mask frame indices must be whole numbers >= 0 (0 is the first frame), got {bad}")
        start = min(masks)
        session = InferenceSession(self.net, device=self.device, **self.session_kwargs)
        frames_seen = 0
        for i, frame in enumerate(frames):
            frames_seen = i + 1
            if i < start:
                continue
            if i == start:
                if session.compile:  # every object-group shape the given masks make, compiled before the video
                    session.warm_up(tuple(frame.shape[:2]), object_counts(masks))
                session.add_objects(frame, masks[i])
            else:
                session.step(frame, masks.get(i))
            yield i, session.last_mask.to(torch.uint8).cpu().numpy()  # the argmax the session made
        unused = sorted(k for k in masks if k >= frames_seen)
        if unused:
            raise ValueError(f"masks given for frame(s) {unused}, but the video has {frames_seen} frames "
                             f"(indices 0-{frames_seen - 1})")
