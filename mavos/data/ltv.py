"""Long-Time Video (LTV, from AFB-URR) reader: three single-object videos with sparse annotations.

Only sampled frames are annotated. ``annotations`` lists every annotated frame, but only the first
one is an input (``object_first_frame``); the others are ground truth, and ``scored_frames`` holds
them (annotated frames except the first, as AFB-URR's ``score_longvideo.py`` scores).

LTV is single-object: as in MAVOS, every label id > 0 is the one object. The reader only lists files,
so it flags this with ``meta["binarize"] = True``; whoever reads these PNGs (the inference input, the
scorer) maps ``mask > 0`` to id 1 — :func:`binarize` does it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mavos.data.listing import (
    FRAME_EXTENSIONS,
    MASK_EXTENSIONS,
    index_by_stem,
    list_files,
    list_subfolders,
    missing_root,
    read_lines,
)
from mavos.data.records import DatasetError, VideoRecord

_TREE = """\
LongVideo/                     <- root
  JPEGImages/<video>/00000.jpg, ...      (rat, dressage, blueboy)
  Annotations/<video>/00000.png, ...     sparse: only sampled frames
  ImageSets/val.txt                      one video name per line"""


def binarize(mask: np.ndarray) -> np.ndarray:
    """LTV's single object: every id > 0 becomes 1 (uint8)."""
    return (np.asarray(mask) > 0).astype(np.uint8)


class LongTimeVideoReader:
    """Lists the Long-Time Video sequences named in ``split_file`` (all folders when it is None)."""

    def __init__(self, root: str | Path, split_file: str | None = "ImageSets/val.txt"):
        self.root = Path(root)
        self.split_file = split_file
        self.name = "ltv"

    def videos(self) -> list[VideoRecord]:
        if not (self.root / "JPEGImages").is_dir():
            raise missing_root("Long-Time Video", self.root, _TREE, "data/LongVideo")
        if self.split_file is None:
            names = list_subfolders(self.root / "JPEGImages", "LTV frames")
        else:
            names = read_lines(self.root / self.split_file, "LTV split list")
        return [self._video(name) for name in names]

    def _video(self, name: str) -> VideoRecord:
        frames_dir = self.root / "JPEGImages" / name
        frames = list_files(frames_dir, FRAME_EXTENSIONS, f"frame folder of video '{name}'")
        if not frames:
            raise DatasetError(f"{frames_dir}: no frame images for video '{name}'")
        stems = [f.stem for f in frames]
        ann_dir = self.root / "Annotations" / name
        annotations = index_by_stem(list_files(ann_dir, MASK_EXTENSIONS, f"annotation folder of video '{name}'"),
                                    stems, "annotation", frames_dir)
        if not annotations:
            raise DatasetError(f"{ann_dir}: no annotation PNGs for video '{name}'")
        annotated = sorted(annotations)
        return VideoRecord(
            name=name,
            frames=frames,
            frame_names=stems,
            annotations=annotations,
            object_first_frame={1: annotated[0]},
            scored_frames=annotated[1:],
            meta={"dataset": self.name, "dense": False, "binarize": True, "start_frame": annotated[0]},
        )
