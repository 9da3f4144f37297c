"""J and F of one predicted frame, object by object, as every protocol scores a frame.

Numpy and OpenCV only (no torch): evaluation runs it in its writer process (``mavos.evaluation.finishing``),
which then starts in a fraction of a second. ``VideoScorer`` (``protocols``) records what it returns.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from mavos.data.records import DatasetError
from mavos.metrics.region_boundary import DEFAULT_BOUND_TH, boundary_measure, region_similarity

VOID_ID = 255  # "don't care" pixels of the ground truth: scored as background, as the toolkits do

# (object id, slot in the object's per-frame row, J, F)
FrameScore = tuple[int, int, float, float]


def score_frame(pred: np.ndarray, gt: np.ndarray, entries: Iterable[tuple[int, int]], *, binarize: bool = False,
                bound_th: float = DEFAULT_BOUND_TH, index: int = -1, video: str = "",
                source: str | Path = "") -> list[FrameScore]:
    """J and F of the objects ``entries`` ((object id, slot) pairs) of (H, W) ids ``pred`` against ``gt``.

    255 in ``gt`` (void) is background; ``binarize`` scores any id > 0 as object 1 (single-object
    benchmarks). A prediction of another size than its ground truth is a DatasetError naming ``source`` (the
    ground truth's file), the frame and the video.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        where = f"{source}: " if source else ""
        raise DatasetError(f"{where}prediction of frame {index} of '{video}' is {pred.shape[0]}x"
                           f"{pred.shape[1]} but its ground truth is {gt.shape[0]}x{gt.shape[1]}")
    gt = np.where(gt == VOID_ID, 0, gt)
    if binarize:
        pred, gt = (pred > 0).astype(np.uint8), (gt > 0).astype(np.uint8)
    scores = []
    for obj, slot in entries:
        p, g = pred == obj, gt == obj
        scores.append((int(obj), int(slot), float(region_similarity(p, g)),
                       float(boundary_measure(p, g, bound_th=bound_th))))
    return scores
