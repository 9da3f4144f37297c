"""The one description of a video that every benchmark reader produces.

Readers only list files; pixels are loaded lazily by the consumer (training clips, the evaluator),
so listing LVOS or YouTube-VOS stays cheap.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mavos.errors import MavosError


class DatasetError(MavosError, RuntimeError):
    """Bad or missing data: the message names the file or folder and what is wrong."""


@dataclass
class VideoRecord:
    """One video of a benchmark.

    frames: every frame image in temporal order (for a record of a video file, that file, once per frame).
    frame_names: the stems used for result files (``00000`` for ``00000.jpg``).
    annotations: frame index -> annotation PNG. Dense for DAVIS train/val, first-appearance only for
        YouTube-VOS valid and LVOS ``Annotations_convert``, sparse for Long-Time Video.
    object_first_frame: object id -> index of the first frame whose annotation holds it.
    scored_frames: frame indices whose predictions the benchmark writes/scores (all frames when None).
    gt_annotations: frame index -> dense ground-truth PNG used for scoring (when it differs from
        ``annotations``; e.g. LVOS val scores on the dense ``Annotations``).
    video_file: a video file whose decoded frames are the frames, read in order (``video_file.frame_reader``).
    """

    name: str
    frames: list[Path]
    frame_names: list[str]
    annotations: dict[int, Path]
    object_first_frame: dict[int, int] = field(default_factory=dict)
    scored_frames: list[int] | None = None
    gt_annotations: dict[int, Path] | None = None
    meta: dict = field(default_factory=dict)
    video_file: Path | None = None

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def object_ids(self) -> list[int]:
        return sorted(self.object_first_frame)


def truncate_record(record: VideoRecord, max_frames: int | None) -> VideoRecord:
    """The first ``max_frames`` frames of a video (bounded validation); the record itself when it is shorter."""
    if max_frames is None or len(record) <= max_frames:
        return record
    n = int(max_frames)
    if n < 2:
        raise ValueError(f"max_frames must be at least 2 (a first frame and one to segment), got {n}")
    keep = lambda d: None if d is None else {i: p for i, p in d.items() if i < n}  # noqa: E731
    annotations = keep(record.annotations)
    return VideoRecord(
        name=record.name, frames=record.frames[:n], frame_names=record.frame_names[:n], annotations=annotations,
        object_first_frame={o: f for o, f in record.object_first_frame.items() if f < n},
        scored_frames=None if record.scored_frames is None else [i for i in record.scored_frames if i < n],
        gt_annotations=keep(record.gt_annotations), meta={**record.meta, "truncated_from": len(record)},
        video_file=record.video_file)


def select_videos(records: list[VideoRecord], videos=None, max_frames: int | None = None,
                  source: str = "the val split") -> list[VideoRecord]:
    """A bounded subset: ``videos`` = None (all), a count (the first N) or a list of names; each cut to
    ``max_frames``. A name that is not in ``records`` is an error naming it and where it was looked for."""
    if isinstance(videos, str) and videos != "all":
        videos = [videos]  # videos=dogs-jump on the command line: one name, not its letters
    if videos is None or videos == "all":
        chosen = list(records)
    elif isinstance(videos, int) and not isinstance(videos, bool):
        if videos < 0:
            raise ValueError(f"the number of videos must be >= 0, got {videos}")
        chosen = list(records[:videos])
    else:
        names = [str(v) for v in videos]
        by_name = {r.name: r for r in records}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            shown = ", ".join(sorted(by_name)[:10]) + (" ..." if len(by_name) > 10 else "")
            raise DatasetError(f"{source}: no video named {', '.join(map(repr, unknown))} (it holds {shown})")
        chosen = [by_name[n] for n in names]
    return [truncate_record(r, max_frames) for r in chosen]
