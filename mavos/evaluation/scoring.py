"""Which frames and objects a benchmark scores, and per-video J/F accumulation that streams frames."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mavos.data.records import VideoRecord
from mavos.metrics.region_boundary import boundary_measure, region_similarity

VOID = 255


def scored_gt_frames(record: VideoRecord, exclude_last: bool = True) -> list[int]:
    """Frames with ground truth that count: DAVIS drops the first (given) and the last frame."""
    gt = record.gt_annotations or record.annotations
    frames = sorted(gt)
    if record.scored_frames is not None:
        allowed = set(record.scored_frames)
        frames = [i for i in frames if i in allowed]
    first = min(record.annotations) if record.annotations else 0
    frames = [i for i in frames if i != first]
    if exclude_last and frames and frames[-1] == len(record) - 1:
        frames = frames[:-1]
    return frames


@dataclass
class VideoScores:
    """Per-object lists of per-frame J and F for one video, filled frame by frame."""

    object_ids: list[int]
    j: dict[int, list[float]] = field(default_factory=dict)
    f: dict[int, list[float]] = field(default_factory=dict)

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
        gt = np.where(gt == VOID, 0, gt)
        for obj in self.object_ids:
            p, g = pred == obj, gt == obj
            self.j.setdefault(obj, []).append(float(region_similarity(p, g)))
            self.f.setdefault(obj, []).append(float(boundary_measure(p, g)))

    def rows(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        return ([np.asarray(self.j.get(o, []), dtype=np.float64) for o in self.object_ids],
                [np.asarray(self.f.get(o, []), dtype=np.float64) for o in self.object_ids])
