"""LVOS v1 reader: long videos (minutes) whose objects leave the view and come back.

The validation annotations are dense (every annotated frame holds every visible object);
``Annotations_convert`` (made by LVOS-api's ``convert_mask_for_eval.py``) keeps only each object's
first-appearance mask, YouTube-VOS style, and is what MAVOS feeds the model. When the dense
``Annotations`` sit beside it they become ``gt_annotations`` for scoring. MAVOS starts every video at
its first labelled frame: that index is ``meta["start_frame"]``.

``valid_meta.json`` (lvos-evaluation v1: ``videos -> <video> -> objects -> <id> -> frame_range
{start, end, frame_nums}``, frame *numbers* as in the 8-digit file names) is read when present: the
toolkit scores object ``id`` on frame numbers ``range(start, end, 5)``; ``meta["frame_ranges"]`` keeps
the ranges and ``scored_frames`` is the union of those frames.
"""
from __future__ import annotations

from pathlib import Path


from mavos.data.listing import (
    first_appearances,
    FRAME_EXTENSIONS,
    MASK_EXTENSIONS,
    index_by_stem,
    list_files,
    list_subfolders,
    missing_root,
    read_json,
    read_lines,
)
from mavos.data.records import DatasetError, VideoRecord

_TREE = """\
LVOS/                          <- root
  train/                       (split_dir; MAVOS uses val_480p for val)
    JPEGImages/<video>/00000001.jpg, ...
    Annotations/<video>/00000001.png, ...
  val/
    JPEGImages/<video>/...
    Annotations/<video>/...             dense ground truth
    Annotations_convert/<video>/...     first appearance of each object only
    valid_meta.json                     (optional: per-object frame ranges for scoring)
  test/
    JPEGImages/...  Annotations/..."""

SCORING_STEP = 5  # lvos-evaluation v1 scores every 5th frame number inside an object's range


class LVOSReader:
    """Lists the videos of one LVOS v1 split as VideoRecords.

    annotations: the annotation folder fed to the model (``Annotations_convert`` for val as in MAVOS,
        ``Annotations`` for train). first_appearance_only: whether that folder holds only first
        appearances (default: its name ends with ``_convert``); first appearances are then found by
        reading those few PNGs. For dense folders they come from the meta file when it has frame
        ranges, else from reading every PNG.
    split_dir: the folder under root holding the split (default: ``split``; e.g. ``val_480p``).
    meta_file: the per-object frame-range JSON inside the split folder (default: ``valid_meta.json``
        for val, ``<split>_meta.json`` otherwise; read only when it exists).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        annotations: str = "Annotations_convert",
        frames_dir: str = "JPEGImages",
        split_dir: str | None = None,
        first_appearance_only: bool | None = None,
        meta_file: str | None = None,
        dense_annotations: str = "Annotations",
        unseen_videos: str | Path | None = None,
    ):
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        self.root = Path(root)
        self.split = split
        self.annotations = annotations
        self.frames_dir = frames_dir
        self.split_dir = split_dir or split
        self.first_appearance_only = (
            annotations.endswith("_convert") if first_appearance_only is None else first_appearance_only
        )
        self.meta_file = meta_file or ("valid_meta.json" if split == "val" else f"{split}_meta.json")
        self.dense_annotations = dense_annotations
        self.unseen_videos = unseen_videos
        self.name = f"lvos_{split}"

    def videos(self) -> list[VideoRecord]:
        split_path = self.root / self.split_dir
        if not (split_path / self.frames_dir).is_dir():
            raise missing_root(f"LVOS v1 ({self.split})", split_path, _TREE, f"data/LVOS/{self.split_dir}")
        meta_path = split_path / self.meta_file
        meta_videos = {}
        if meta_path.is_file():
            meta_videos = read_json(meta_path, "LVOS meta file").get("videos")
            if not isinstance(meta_videos, dict):
                raise DatasetError(f"{meta_path}: expected a top-level 'videos' object")
        dense_root = split_path / self.dense_annotations
        use_dense_gt = self.first_appearance_only and dense_root.is_dir()
        unseen = self._unseen()
        records = [
            self._video(split_path, vid, meta_videos.get(vid), meta_path, dense_root if use_dense_gt else None)
            for vid in list_subfolders(split_path / self.frames_dir, "LVOS frames")
        ]
        for record in records:
            record.meta["unseen"] = record.name in unseen
        return records

    def _unseen(self) -> set[str]:
        """Videos of unseen categories (lvos-evaluation's ``unseen_videos.txt``), for the seen/unseen split."""
        if self.unseen_videos in (None, ""):
            return set()
        path = Path(self.unseen_videos)
        if not path.is_file():
            raise DatasetError(f"{path}: LVOS scoring needs lvos-evaluation's unseen_videos.txt (set "
                               f"data.unseen_videos=... to its path)")
        return set(read_lines(path, "LVOS unseen-video list"))

    def _video(
        self, split_path: Path, vid: str, meta: dict | None, meta_path: Path, dense_root: Path | None
    ) -> VideoRecord:
        frames_dir = split_path / self.frames_dir / vid
        frames = list_files(frames_dir, FRAME_EXTENSIONS, f"frame folder of video '{vid}'")
        if not frames:
            raise DatasetError(f"{frames_dir}: no frame images for video '{vid}'")
        names = [f.stem for f in frames]
        ann_dir = split_path / self.annotations / vid
        annotations = index_by_stem(list_files(ann_dir, MASK_EXTENSIONS, f"annotation folder of video '{vid}'"),
                                    names, "annotation", frames_dir)
        if not annotations:
            raise DatasetError(f"{ann_dir}: no annotation PNGs for video '{vid}'")
        gt = None
        if dense_root is not None and (dense_root / vid).is_dir():
            gt = index_by_stem(list_files(dense_root / vid, MASK_EXTENSIONS, "dense annotation folder"),
                               names, "annotation", frames_dir)

        frame_ranges = _frame_ranges(meta, meta_path, vid) if meta is not None else {}
        if not self.first_appearance_only and frame_ranges:
            first = _first_frames_from_ranges(frame_ranges, names, meta_path, vid)
        else:
            first = first_appearances(annotations)
        if not first:
            raise DatasetError(f"{ann_dir}: the annotations of video '{vid}' hold no object")
        start = min(first.values())

        if frame_ranges:
            by_number = _index_by_number(names, frames_dir)
            scored: set[int] = set()
            for obj_id, rng in frame_ranges.items():
                for number in range(rng["start"], rng["end"], SCORING_STEP):
                    if number not in by_number:
                        raise DatasetError(
                            f"{meta_path}: video '{vid}' object {obj_id} is scored on frame {number:08d} "
                            f"which has no image in {frames_dir}"
                        )
                    scored.add(by_number[number])
            scored_frames = sorted(scored)
        else:
            scored_frames = list(range(start, len(frames)))
        return VideoRecord(
            name=vid,
            frames=frames,
            frame_names=names,
            annotations=annotations,
            object_first_frame=dict(sorted(first.items())),
            scored_frames=scored_frames,
            gt_annotations=gt,
            meta={
                "dataset": self.name,
                "dense": not self.first_appearance_only,
                "start_frame": start,
                "frame_ranges": frame_ranges,
                "split": self.split,
            },
        )


def _frame_ranges(meta: dict, meta_path: Path, vid: str) -> dict[int, dict[str, int]]:
    """Per-object ``{start, end, frame_nums}`` as integers, from one video's meta entry."""
    ranges: dict[int, dict[str, int]] = {}
    for key, obj in (meta.get("objects") or {}).items():
        try:
            rng = obj["frame_range"]
            ranges[int(key)] = {k: int(rng[k]) for k in ("start", "end", "frame_nums")}
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{meta_path}: video '{vid}' object {key!r} has a malformed frame_range ({e})") from e
    return ranges  # meta order: the toolkit numbers an object's row by its position there


def _index_by_number(names: list[str], frames_dir: Path) -> dict[int, int]:
    try:
        return {int(n): i for i, n in enumerate(names)}
    except ValueError as e:
        raise DatasetError(f"{frames_dir}: LVOS frame names must be numbers (e.g. 00000001.jpg) ({e})") from e


def _first_frames_from_ranges(
    ranges: dict[int, dict[str, int]], names: list[str], meta_path: Path, vid: str
) -> dict[int, int]:
    by_number = {int(n): i for i, n in enumerate(names)}
    first = {}
    for obj_id, rng in ranges.items():
        if rng["start"] not in by_number:
            raise DatasetError(f"{meta_path}: video '{vid}' object {obj_id} starts at frame {rng['start']:08d}, which has no image")
        first[obj_id] = by_number[rng["start"]]
    return first


