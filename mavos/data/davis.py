"""Reader for the DAVIS 2016/2017 folder layout (also used for the embedded synthetic benchmark).

Expected tree::

    <root>/
      ImageSets/<year>/<split>.txt          one sequence name per line
      JPEGImages/<resolution>/<seq>/00000.jpg ...
      Annotations/<resolution>/<seq>/00000.png ...   palette PNGs, value = object id

train/val annotations are dense (one PNG per frame); test-dev/test-challenge annotate the first
frame only (and, for objects appearing later, the frame where they appear).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mavos.data.io import read_mask
from mavos.data.records import DatasetError, VideoRecord

RESOLUTIONS = ("480p", "Full-Resolution")
VOID_ID = 255  # DAVIS marks "don't care" pixels with 255; they are never an object.

EXPECTED_TREE = """\
  <root>/
    ImageSets/<year>/{train,val,test-dev}.txt
    JPEGImages/<resolution>/<sequence>/00000.jpg, 00001.jpg, ...
    Annotations/<resolution>/<sequence>/00000.png, 00001.png, ...
Download DAVIS 2017 (TrainVal, 480p) from https://davischallenge.org/davis2017/code.html and unpack it
so that <root> is the folder holding ImageSets/, JPEGImages/ and Annotations/."""


def _is_dense(split: str) -> bool:
    """DAVIS annotates every frame of train/val; the test splits only give first-appearance masks."""
    return not split.startswith("test")


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header without decoding pixels."""
    try:
        with Image.open(path) as img:
            return img.size
    except Exception as e:
        raise DatasetError(f"{path}: cannot read image header ({e})") from e


def _object_ids(mask: np.ndarray) -> list[int]:
    return [int(v) for v in np.unique(mask) if v != 0 and v != VOID_ID]


class DavisReader:
    """Lists the videos of one DAVIS split; touches the disk only in :meth:`videos`.

    Objects of dense splits are those of the first annotated frame (the DAVIS semi-supervised
    protocol), read from that one mask only; sparse (test) splits read every PNG that exists to find
    each object's first appearance.
    """

    def __init__(self, root: str | Path, split: str = "val", resolution: str = "480p", year: int | str = 2017) -> None:
        if resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
        self.root = Path(root)
        self.split = split
        self.resolution = resolution
        self.year = str(year)
        self.name = f"davis{self.year}-{split}"

    def __repr__(self) -> str:
        return f"DavisReader(root={str(self.root)!r}, split={self.split!r}, resolution={self.resolution!r}, year={self.year})"

    @property
    def image_set_file(self) -> Path:
        return self.root / "ImageSets" / self.year / f"{self.split}.txt"

    def sequence_names(self) -> list[str]:
        """Sequence names listed in the split file, in file order."""
        if not self.root.is_dir():
            raise DatasetError(f"DAVIS root {self.root} does not exist. Expected this tree:\n{EXPECTED_TREE}")
        if not self.image_set_file.is_file():
            raise DatasetError(
                f"{self.image_set_file}: split file is missing (split={self.split!r}, year={self.year}). "
                f"Expected this tree:\n{EXPECTED_TREE}"
            )
        names = [line.strip() for line in self.image_set_file.read_text().splitlines()]
        names = [n for n in names if n]
        if not names:
            raise DatasetError(f"{self.image_set_file}: lists no sequences")
        return names

    def videos(self) -> list[VideoRecord]:
        return [self._video(name) for name in self.sequence_names()]

    def _video(self, name: str) -> VideoRecord:
        frame_dir = self.root / "JPEGImages" / self.resolution / name
        anno_dir = self.root / "Annotations" / self.resolution / name
        if not frame_dir.is_dir():
            raise DatasetError(f"{frame_dir}: frames folder of sequence {name!r} (listed in {self.image_set_file}) is missing")
        frames = sorted(frame_dir.glob("*.jpg"))
        if not frames:
            raise DatasetError(f"{frame_dir}: no .jpg frames")
        if not anno_dir.is_dir():
            raise DatasetError(f"{anno_dir}: annotation folder of sequence {name!r} is missing")
        annos = sorted(anno_dir.glob("*.png"))
        if not annos:
            raise DatasetError(f"{anno_dir}: no .png annotations")

        frame_names = [f.stem for f in frames]
        index_of = {stem: i for i, stem in enumerate(frame_names)}
        annotations: dict[int, Path] = {}
        for a in annos:
            if a.stem not in index_of:
                raise DatasetError(f"{a}: annotation has no matching frame {frame_dir / (a.stem + '.jpg')}")
            annotations[index_of[a.stem]] = a
        dense = _is_dense(self.split)
        if dense and len(annos) != len(frames):
            raise DatasetError(
                f"{anno_dir}: {len(annos)} annotations for {len(frames)} frames in {frame_dir}; "
                f"the {self.split!r} split must be annotated densely"
            )

        first_index = min(annotations)
        first_anno = annotations[first_index]
        first_frame = frames[first_index]
        if _image_size(first_anno) != _image_size(first_frame):
            raise DatasetError(
                f"{first_anno}: annotation size {_image_size(first_anno)} differs from frame "
                f"{first_frame} size {_image_size(first_frame)} (width, height)"
            )

        object_first_frame: dict[int, int] = {}
        scan = [first_index] if dense else sorted(annotations)
        for i in scan:
            for obj in _object_ids(read_mask(annotations[i])):
                object_first_frame.setdefault(obj, i)
        return VideoRecord(
            name=name,
            frames=frames,
            frame_names=frame_names,
            annotations=annotations,
            object_first_frame=object_first_frame,
            scored_frames=None,
            meta={"dataset": self.name, "dense": dense, "resolution": self.resolution},
        )
