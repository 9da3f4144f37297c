"""J&F of whole videos as a torchmetrics Metric whose per-object results gather across DDP ranks.

Each video adds its objects' per-frame J and F (from ``protocols.VideoScorer``), reduced at once to the
object's Mean/Recall/Decay and LVOS's V, so only a few numbers per object are kept however long the
video. ``compute`` follows the benchmark's toolkit: DAVIS / Long-Time Video average over all objects of all
videos; LVOS averages the seen and unseen groups separately and then the groups.

Every state is a list of tensors concatenated across ranks (``dist_reduce_fx="cat"``) that always holds at
least one correctly shaped (possibly empty) tensor: a rank that scored no video (3 videos on 4 GPUs) still
takes part in the gathers with states of the same number of dimensions as the others'. The video name is stored as its UTF-8 bytes in a fixed-width uint8 row (``VIDEO_NAME_BYTES``), so
``per_object_rows()`` can rebuild ``<video>_<id>`` on any rank after the gather. Move the metric to the
device of the process group's backend (CUDA for NCCL) with ``.to(device)``.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from mavos.metrics.frame_scores import VOID_ID
from mavos.metrics.statistics import mean_recall_decay

VIDEO_NAME_BYTES = 256
PROTOCOLS = ("davis", "ltv", "lvos")
STATISTICS: tuple[str, ...] = ("J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
GLOBAL_COLUMNS: tuple[str, ...] = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
LVOS_GLOBAL_COLUMNS: tuple[str, ...] = (
    "J&F-Mean", "J-Mean", "J-seen-Mean", "J-unseen-Mean", "F-Mean", "F-seen-Mean", "F-unseen-Mean",
    "V-Mean", "V-seen-Mean", "V-unseen-Mean",
)


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


def lvos_variation(j_values, f_values) -> float:
    """LVOS's V of one object: RMS deviation of per-frame (J+F)/2 from its mean (variance rounded to 4 places)."""
    jf = (np.asarray(j_values, np.float64) + np.asarray(f_values, np.float64)) / 2
    if jf.size == 0:
        return float("nan")
    variance = np.nansum((np.nanmean(jf) - jf) ** 2) / jf.size
    return math.sqrt(round(float(variance), 4))


# state -> (shape of an empty state, dtype): one row per object
_EMPTY = {
    "stats": ((0, len(STATISTICS)), torch.float64),
    "variation": ((0,), torch.float64),
    "unseen": ((0,), torch.uint8),
    "object_ids": ((0,), torch.int64),
    "positions": ((0,), torch.int64),
    "video_names": ((0, VIDEO_NAME_BYTES), torch.uint8),
}


class JFMetric(Metric):
    """Benchmark J&F over videos; DDP-safe (tensor states concatenated across ranks).

    protocol: ``davis`` / ``ltv`` (means over all objects) or ``lvos`` (seen / unseen groups and V).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, protocol: str = "davis", **kwargs):
        super().__init__(**kwargs)
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.protocol = protocol
        for name in _EMPTY:
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self._seed_empty()

    def _seed_empty(self) -> None:
        """Start every state with an empty tensor of its row shape (see the module docstring)."""
        for name, (shape, dtype) in _EMPTY.items():
            getattr(self, name).append(torch.zeros(shape, dtype=dtype, device=self.device))

    def reset(self) -> None:
        super().reset()
        self._seed_empty()

    def _state(self, name: str) -> torch.Tensor:
        """A state as one tensor (a list before a gather, a tensor after it)."""
        value = getattr(self, name)
        return dim_zero_cat(value) if isinstance(value, list) else value

    def update(self, pred, gt=None, num_objects: int | None = None, video: str = "", frame_mask=None) -> None:
        """Add one scored video: a finished ``protocols.VideoScorer``, or whole arrays ``pred``, ``gt``.

        Arrays: (T, H, W) ids, void (255) in ``gt`` is background; objects 1..num_objects are scored (None: the
        largest non-void id in ``gt``), missing objects score as empty masks; frame_mask: optional (T,) bool,
        the frames that count. Arrays go through ``protocols.VideoScorer`` over every frame, the one scoring path.
        """
        from mavos.metrics.protocols import ScorePlan, VideoScorer

        if isinstance(pred, VideoScorer):
            self.add_video(pred)
            return

        pred_ids = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
        gt_ids = gt.detach().cpu().numpy() if isinstance(gt, torch.Tensor) else np.asarray(gt)
        if pred_ids.ndim != 3 or pred_ids.shape != gt_ids.shape:
            raise ValueError(f"video '{video}': pred and gt must both be (T, H, W), got {pred_ids.shape} and "
                             f"{gt_ids.shape}")
        keep = np.ones(len(gt_ids), bool) if frame_mask is None else np.asarray(
            frame_mask.cpu() if isinstance(frame_mask, torch.Tensor) else frame_mask).astype(bool)
        if keep.shape != (gt_ids.shape[0],):
            raise ValueError(f"video '{video}': frame_mask must be ({gt_ids.shape[0]},), got {keep.shape}")
        if num_objects is None:
            valid = gt_ids[keep][gt_ids[keep] != VOID_ID]
            num_objects = int(valid.max()) if valid.size else 0
        scorer = VideoScorer(ScorePlan.dense(video, list(range(1, num_objects + 1)), np.flatnonzero(keep).tolist()))
        for t in np.flatnonzero(keep):
            scorer.add(int(t), pred_ids[t], gt_ids[t])
        self.add_video(scorer)

    def add_video(self, scorer) -> None:
        """Record the objects of one scored video (a finished ``protocols.VideoScorer``); prefer ``update``."""
        plan = scorer.plan
        self.add_object_scores(*scorer.rows(), video=plan.video, object_ids=plan.objects, unseen=plan.unseen)

    def add_object_scores(self, j_per_object: Sequence, f_per_object: Sequence, video: str = "",
                          object_ids: Sequence[int] | None = None, unseen: bool = False) -> None:
        """Record objects from their per-frame J and F (one 1-D array per object; lengths may differ)."""
        if len(j_per_object) != len(f_per_object):
            raise ValueError(f"video '{video}': {len(j_per_object)} J rows but {len(f_per_object)} F rows")
        ids = list(range(1, len(j_per_object) + 1)) if object_ids is None else [int(i) for i in object_ids]
        if len(ids) != len(j_per_object):
            raise ValueError(f"video '{video}': {len(ids)} object ids for {len(j_per_object)} objects")
        if not ids:
            return
        stats = torch.tensor([mean_recall_decay(j) + mean_recall_decay(f) for j, f in zip(j_per_object, f_per_object)],
                             dtype=torch.float64, device=self.device)
        variation = torch.tensor([lvos_variation(j, f) for j, f in zip(j_per_object, f_per_object)],
                                 dtype=torch.float64, device=self.device)
        n = len(ids)
        self.stats.append(stats)
        self.variation.append(variation)
        self.unseen.append(torch.full((n,), int(unseen), dtype=torch.uint8, device=self.device))
        self.object_ids.append(torch.tensor(ids, dtype=torch.int64, device=self.device))
        self.positions.append(torch.arange(1, n + 1, dtype=torch.int64, device=self.device))
        self.video_names.append(encode_video_name(video).to(self.device).repeat(n, 1))

    @property
    def num_objects(self) -> int:
        """Objects recorded on this rank (before any gather)."""
        return int(self._state("object_ids").shape[0])

    def compute(self) -> dict[str, float]:
        """The global row of the protocol's table (NaN where nothing was scored)."""
        stats = self._state("stats").double().cpu().numpy()
        if self.protocol != "lvos":
            means = {c: (float(stats[:, k].mean()) if len(stats) else float("nan")) for k, c in enumerate(STATISTICS)}
            means["J&F-Mean"] = (means["J-Mean"] + means["F-Mean"]) / 2
            return {c: means[c] for c in GLOBAL_COLUMNS}
        unseen = self._state("unseen").cpu().numpy().astype(bool)
        values = {"J": stats[:, 0], "F": stats[:, 3], "V": self._state("variation").double().cpu().numpy()}

        def group_mean(v: np.ndarray, group: bool) -> float:
            return float(v[unseen == group].mean()) if (unseen == group).any() else float("nan")

        def over_groups(*vals: float) -> float:  # a subset with one group only: that group gives the number
            present = [v for v in vals if not math.isnan(v)]
            return float(np.mean(present)) if present else float("nan")

        out = {}
        for m, v in values.items():
            seen_mean, unseen_mean = group_mean(v, False), group_mean(v, True)
            out[f"{m}-seen-Mean"], out[f"{m}-unseen-Mean"] = seen_mean, unseen_mean
            out[f"{m}-Mean"] = over_groups(seen_mean, unseen_mean)
        out["J&F-Mean"] = over_groups(out["J-seen-Mean"], out["F-seen-Mean"], out["J-unseen-Mean"],
                                      out["F-unseen-Mean"])
        return {c: out[c] for c in LVOS_GLOBAL_COLUMNS}

    def per_object_rows(self) -> list[dict]:
        """One dict per scored object, in update order (rank-major after a DDP gather).

        Keys: ``Sequence`` (``<video>_<id>``; LVOS: ``<video>_<k>``, k its position in the video's meta file),
        ``video``, ``object_id``, the six statistics, ``V-Mean`` and ``unseen``. Gathers across ranks.
        """
        with self.sync_context(should_sync=not self._is_synced, should_unsync=True):
            names = [decode_video_name(row) for row in self._state("video_names")]
            ids = self._state("object_ids").cpu().tolist()
            positions = self._state("positions").cpu().tolist()
            stats = self._state("stats").double().cpu().tolist()
            variation = self._state("variation").double().cpu().tolist()
            unseen = self._state("unseen").cpu().tolist()
        rows = []
        for k, (video, obj) in enumerate(zip(names, ids)):
            label = positions[k] if self.protocol == "lvos" else obj
            row = {"Sequence": f"{video}_{label}", "video": video, "object_id": int(obj)}
            row.update(dict(zip(STATISTICS, stats[k])))
            row.update({"V-Mean": variation[k], "unseen": bool(unseen[k])})
            rows.append(row)
        return rows

    def per_video_rows(self) -> list[dict]:
        """J&F, J, F per video (means over its objects), in order of first appearance; gathers across ranks."""
        videos: dict[str, list[dict]] = {}
        for row in self.per_object_rows():
            videos.setdefault(row["video"], []).append(row)
        out = []
        for video, rows in videos.items():
            j = float(np.mean([r["J-Mean"] for r in rows]))
            f = float(np.mean([r["F-Mean"] for r in rows]))
            out.append({"video": video, "objects": len(rows), "J&F": (j + f) / 2, "J": j, "F": f})
        return out
