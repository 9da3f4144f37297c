"""J&F of whole videos as a torchmetrics Metric whose per-object results gather across DDP ranks.

Each ``update`` scores one video: per object and frame J and F, reduced at once to the object's
Mean/Recall/Decay (so only six numbers per object are kept, however long the video). ``compute``
averages over all objects of all videos, like the DAVIS toolkit's global table.

Per-object rows survive DDP gathering because every state is a tensor concatenated across ranks
(``dist_reduce_fx="cat"``): the video name is stored as its UTF-8 bytes in a fixed-width uint8 row
(``VIDEO_NAME_BYTES`` wide, zero-padded), next to the object id and the six statistics, so
``per_object_rows()`` can rebuild ``<video>_<id>`` on any rank after the gather.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from mavos.metrics.region_boundary import DEFAULT_BOUND_TH, boundary_measure, region_similarity
from mavos.metrics.statistics import mean_recall_decay

VOID_ID = 255
VIDEO_NAME_BYTES = 256
STAT_STATES: tuple[str, ...] = ("j_mean", "j_recall", "j_decay", "f_mean", "f_recall", "f_decay")
GLOBAL_COLUMNS: tuple[str, ...] = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
_STATE_COLUMN = {
    "j_mean": "J-Mean", "j_recall": "J-Recall", "j_decay": "J-Decay",
    "f_mean": "F-Mean", "f_recall": "F-Recall", "f_decay": "F-Decay",
}


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def encode_video_name(name: str) -> torch.Tensor:
    """``name`` as a (VIDEO_NAME_BYTES,) uint8 tensor of its UTF-8 bytes, zero-padded."""
    raw = name.encode("utf-8")
    if len(raw) > VIDEO_NAME_BYTES or b"\0" in raw:
        raise ValueError(f"video name {name!r} must be at most {VIDEO_NAME_BYTES} UTF-8 bytes without NUL")
    row = torch.zeros(VIDEO_NAME_BYTES, dtype=torch.uint8)
    if raw:
        row[: len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    return row


def decode_video_name(row: torch.Tensor) -> str:
    """Inverse of :func:`encode_video_name`."""
    return bytes(row.cpu().tolist()).rstrip(b"\0").decode("utf-8")


class JFMetric(Metric):
    """DAVIS-style J&F over videos; DDP-safe (every state is concatenated across ranks).

    bound_th: boundary tolerance of F (fraction of the image diagonal, or pixels when >= 1).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, bound_th: float = DEFAULT_BOUND_TH, **kwargs):
        super().__init__(**kwargs)
        self.bound_th = bound_th
        for name in STAT_STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.add_state("object_ids", default=[], dist_reduce_fx="cat")
        self.add_state("video_names", default=[], dist_reduce_fx="cat")

    def update(self, pred, gt, num_objects: int | None = None, video: str = "", frame_mask=None) -> None:
        """Score one video.

        pred, gt: (T, H, W) integer object ids (numpy or torch). In ``gt``, 255 (void) is background.
        num_objects: objects 1..num_objects are scored (DAVIS: the max id of the first GT frame);
            None -> the largest non-void id anywhere in ``gt``. Predicted ids above it are ignored
            (the benchmark protocols reject such results before they get here).
        frame_mask: optional (T,) bool, the frames to score (e.g. DAVIS drops the first and last).
        """
        pred_ids, gt_ids = _to_numpy(pred), _to_numpy(gt)
        if pred_ids.ndim != 3 or pred_ids.shape != gt_ids.shape:
            raise ValueError(
                f"video '{video}': pred and gt must both be (T, H, W), got {pred_ids.shape} and {gt_ids.shape}"
            )
        if frame_mask is not None:
            keep = _to_numpy(frame_mask).astype(bool)
            if keep.shape != (gt_ids.shape[0],):
                raise ValueError(f"video '{video}': frame_mask must be ({gt_ids.shape[0]},), got {keep.shape}")
            pred_ids, gt_ids = pred_ids[keep], gt_ids[keep]
        if num_objects is None:
            valid = gt_ids[gt_ids != VOID_ID]
            num_objects = int(valid.max()) if valid.size else 0
        j_rows, f_rows = [], []
        for obj in range(1, num_objects + 1):
            pred_obj, gt_obj = pred_ids == obj, gt_ids == obj
            j_rows.append(np.atleast_1d(region_similarity(pred_obj, gt_obj)))
            f_rows.append(np.atleast_1d(boundary_measure(pred_obj, gt_obj, bound_th=self.bound_th)))
        self.add_object_scores(j_rows, f_rows, video=video, object_ids=list(range(1, num_objects + 1)))

    def add_object_scores(
        self,
        j_per_object: Sequence,
        f_per_object: Sequence,
        video: str = "",
        object_ids: Sequence[int] | None = None,
    ) -> None:
        """Record objects from their per-frame J and F (one 1-D array per object; lengths may differ).

        For protocols that choose frames per object (LVOS scores each object on its own range).
        object_ids: default 1..K.
        """
        if len(j_per_object) != len(f_per_object):
            raise ValueError(f"video '{video}': {len(j_per_object)} J rows but {len(f_per_object)} F rows")
        ids = list(range(1, len(j_per_object) + 1)) if object_ids is None else [int(i) for i in object_ids]
        if len(ids) != len(j_per_object):
            raise ValueError(f"video '{video}': {len(ids)} object ids for {len(j_per_object)} objects")
        if not ids:
            return
        stats = np.array(
            [mean_recall_decay(j) + mean_recall_decay(f) for j, f in zip(j_per_object, f_per_object)],
            dtype=np.float64,
        )
        for column, name in enumerate(STAT_STATES):
            getattr(self, name).append(torch.as_tensor(stats[:, column], device=self.device))
        self.object_ids.append(torch.tensor(ids, dtype=torch.int64, device=self.device))
        self.video_names.append(encode_video_name(video).to(self.device).repeat(len(ids), 1))

    def _gathered(self, name: str) -> torch.Tensor | None:
        state = getattr(self, name)
        if isinstance(state, torch.Tensor):
            return state
        return dim_zero_cat(state) if len(state) else None

    def compute(self) -> dict[str, float]:
        """Means over all objects of all videos: J&F-Mean, J-Mean, J-Recall, J-Decay, F-Mean, F-Recall, F-Decay.

        NaN when nothing was scored.
        """
        out = {}
        for name in STAT_STATES:
            values = self._gathered(name)
            out[_STATE_COLUMN[name]] = float("nan") if values is None else float(values.double().mean())
        out["J&F-Mean"] = (out["J-Mean"] + out["F-Mean"]) / 2
        return {column: out[column] for column in GLOBAL_COLUMNS}

    def per_object_rows(self) -> list[dict]:
        """One dict per scored object, in update order (rank-major after a DDP gather).

        Keys: ``Sequence`` (``<video>_<id>``), ``video``, ``object_id`` and the six statistics
        (``J-Mean`` ... ``F-Decay``). Gathers across ranks like ``compute``.
        """
        with self.sync_context(should_sync=not self._is_synced, should_unsync=True):
            ids = self._gathered("object_ids")
            if ids is None:
                return []
            names = [decode_video_name(row) for row in self._gathered("video_names")]
            stats = {name: self._gathered(name).double().cpu().tolist() for name in STAT_STATES}
        rows = []
        for k, (video, obj) in enumerate(zip(names, ids.cpu().tolist())):
            row = {"Sequence": f"{video}_{obj}", "video": video, "object_id": int(obj)}
            row.update({_STATE_COLUMN[name]: stats[name][k] for name in STAT_STATES})
            rows.append(row)
        return rows
