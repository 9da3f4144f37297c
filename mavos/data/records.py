"""The one description of a video that every benchmark reader produces.

Readers only list files; pixels are loaded lazily by the consumer (training clips, the evaluator),
so listing LVOS or YouTube-VOS stays cheap.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class DatasetError(RuntimeError):
    """Bad or missing data: the message names the file or folder and what is wrong."""


@dataclass
class VideoRecord:
    """One video of a benchmark.

    frames: every frame image in temporal order.
    frame_names: the stems used for result files (``00000`` for ``00000.jpg``).
    annotations: frame index -> annotation PNG. Dense for DAVIS train/val, first-appearance only for
        YouTube-VOS valid and LVOS ``Annotations_convert``, sparse for Long-Time Video.
    object_first_frame: object id -> index of the first frame whose annotation holds it.
    scored_frames: frame indices whose predictions the benchmark writes/scores (all frames when None).
    gt_annotations: frame index -> dense ground-truth PNG used for scoring (when it differs from
        ``annotations``; e.g. LVOS val scores on the dense ``Annotations``).
    """

    name: str
    frames: list[Path]
    frame_names: list[str]
    annotations: dict[int, Path]
    object_first_frame: dict[int, int] = field(default_factory=dict)
    scored_frames: list[int] | None = None
    gt_annotations: dict[int, Path] | None = None
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def object_ids(self) -> list[int]:
        return sorted(self.object_first_frame)
