"""Per-object summary of a sequence of per-frame scores: Mean, Recall and Decay (DAVIS definitions)."""
from __future__ import annotations

import warnings

import numpy as np

DECAY_BINS = 4
RECALL_THRESHOLD = 0.5


def decay_bin_edges(num_frames: int) -> np.ndarray:
    """Inclusive frame indices bounding the 4 temporal quarters: ``round(linspace(1, N, 5)) - 1``.

    Halves round up (1e-10 is added before rounding, as in the toolkit). Indices are int64: the official toolkit
    casts them to uint8, which wraps around for N >= 256 frames and turns Decay into NaN or garbage.
    """
    return (np.round(np.linspace(1, num_frames, DECAY_BINS + 1) + 1e-10) - 1).astype(np.int64)


def mean_recall_decay(values) -> tuple[float, float, float]:
    """(Mean, Recall, Decay) of one object's per-frame scores.

    Mean ignores NaN; Recall is the share of frames scoring above 0.5 (NaN counts as a miss);
    Decay is the mean of the first quarter minus the mean of the last, quarters overlapping by one
    frame at their shared edges as in the toolkit. No frames -> NaN for all three.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN slices are NaN, quietly
        mean = float(np.nanmean(v))
        recall = float(np.mean(v > RECALL_THRESHOLD))
        edges = decay_bin_edges(v.size)
        first = v[edges[0]: edges[1] + 1]
        last = v[edges[DECAY_BINS - 1]: edges[DECAY_BINS] + 1]
        decay = float(np.nanmean(first) - np.nanmean(last))
    return mean, recall, decay
