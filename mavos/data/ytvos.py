"""YouTube-VOS 2019 reader: train (dense annotations every 5th frame) and valid (first appearances only).

In ``valid`` each object is annotated once, on the frame where it first appears, which may be in the
middle of the video; ``meta.json`` lists, per object, the frames the server scores. The submission must
hold exactly the union of those frames, so that union becomes ``scored_frames``. With
``all_frames=True`` the frames come from ``valid_all_frames`` (all 30 fps frames, same names) while the
annotations and the scored set still come from ``valid``.
"""
from __future__ import annotations

from pathlib import Path

from mavos.data.listing import (
    FRAME_EXTENSIONS,
    MASK_EXTENSIONS,
    index_by_stem,
    list_files,
    missing_root,
    natural_key,
    read_json,
)
from mavos.data.records import DatasetError, VideoRecord

_TREE = """\
YTB/2019/                      <- root
  train/
    meta.json
    JPEGImages/<video>/00000.jpg, 00005.jpg, ...
    Annotations/<video>/00000.png, 00005.png, ...
  valid/
    meta.json
    JPEGImages/<video>/00000.jpg, ...
    Annotations/<video>/<first-appearance frame>.png
  valid_all_frames/            (only for all_frames=True)
    JPEGImages/<video>/00000.jpg, 00001.jpg, ..."""

_SPLIT_ALIASES = {"val": "valid", "valid": "valid", "train": "train", "test": "test"}


class YouTubeVOSReader:
    """Lists the videos of one YouTube-VOS split as VideoRecords (files only; no pixels are read).

    ``meta`` of each record holds ``categories`` (object id -> category), ``object_frames`` (object id
    -> frame names listed in meta.json), ``start_frame`` (index of the first annotated frame: earlier
    frames hold no object) and ``split``/``year``/``all_frames``.
    """

    def __init__(self, root: str | Path, split: str = "train", year: int = 2019, all_frames: bool = False):
        if split not in _SPLIT_ALIASES:
            raise ValueError(f"split must be one of {sorted(_SPLIT_ALIASES)}, got {split!r}")
        self.root = Path(root)
        self.split = _SPLIT_ALIASES[split]
        self.year = year
        self.all_frames = all_frames
        self.name = f"ytvos{year}_{self.split}" + ("_all_frames" if all_frames else "")

    @property
    def scores_listed_frames_only(self) -> bool:
        """Whether the benchmark scores only the frames listed in meta.json (valid/test)."""
        return self.split != "train"

    def _split_dir(self) -> Path:
        # Accept both the YTB/2019 folder and its parent YTB/ (the official code appends the year).
        for candidate in (self.root, self.root / str(self.year)):
            if (candidate / self.split).is_dir():
                return candidate / self.split
        raise missing_root(f"YouTube-VOS {self.year} ({self.split})", self.root, _TREE, f"data/YTB/{self.year}")

    def videos(self) -> list[VideoRecord]:
        split_dir = self._split_dir()
        meta_path = split_dir / "meta.json"
        meta = read_json(meta_path, "YouTube-VOS meta.json")
        if not isinstance(meta.get("videos"), dict):
            raise DatasetError(f"{meta_path}: expected a top-level 'videos' object")
        frames_root = split_dir.parent / f"{self.split}_all_frames" if self.all_frames else split_dir
        frames_root = frames_root / "JPEGImages"
        return [
            self._video(vid, meta["videos"][vid], meta_path, frames_root / vid, split_dir / "Annotations" / vid)
            for vid in sorted(meta["videos"], key=natural_key)
        ]

    def _video(self, vid: str, entry: dict, meta_path: Path, frames_dir: Path, ann_dir: Path) -> VideoRecord:
        frames = list_files(frames_dir, FRAME_EXTENSIONS, f"frame folder of video '{vid}'")
        if not frames:
            raise DatasetError(f"{frames_dir}: no frame images for video '{vid}'")
        names = [f.stem for f in frames]
        position = {n: i for i, n in enumerate(names)}
        annotations = index_by_stem(list_files(ann_dir, MASK_EXTENSIONS, f"annotation folder of video '{vid}'"),
                                    names, "annotation", frames_dir)

        objects = entry.get("objects")
        if not isinstance(objects, dict) or not objects:
            raise DatasetError(f"{meta_path}: video '{vid}' has no 'objects'")
        first_frame: dict[int, int] = {}
        categories: dict[int, str] = {}
        object_frames: dict[int, list[str]] = {}
        for key, obj in objects.items():
            try:
                obj_id = int(key)
                listed = sorted(obj["frames"], key=natural_key)
            except (KeyError, TypeError, ValueError) as e:
                raise DatasetError(f"{meta_path}: video '{vid}' object {key!r} is malformed ({e})") from e
            if not listed:
                raise DatasetError(f"{meta_path}: video '{vid}' object {key} lists no frames")
            missing = [n for n in listed if n not in position]
            if missing:
                raise DatasetError(
                    f"{meta_path}: video '{vid}' object {key} lists frame '{missing[0]}' "
                    f"that has no image in {frames_dir}"
                )
            first = position[listed[0]]
            if first not in annotations:
                raise DatasetError(
                    f"{ann_dir / (listed[0] + '.png')}: annotation of object {key}'s first frame does not exist"
                )
            first_frame[obj_id] = first
            categories[obj_id] = str(obj.get("category", ""))
            object_frames[obj_id] = listed

        scored = None
        if self.scores_listed_frames_only:
            scored = sorted({position[n] for listed in object_frames.values() for n in listed})
        return VideoRecord(
            name=vid,
            frames=frames,
            frame_names=names,
            annotations=annotations,
            object_first_frame=dict(sorted(first_frame.items())),
            scored_frames=scored,
            meta={
                "categories": categories,
                "object_frames": object_frames,
                "start_frame": min(first_frame.values()),
                "dataset": self.name,
                "dense": self.split == "train",
                "split": self.split,
                "year": self.year,
                "all_frames": self.all_frames,
            },
        )
