"""Listing benchmark folders: sorted frame/mask files, JSON metadata and errors that name the path.

Every reader lists files through these helpers so a missing folder, an unreadable ``meta.json`` or a
mask whose size differs from its frame produce the same kind of message: the path, then what is wrong.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image

from mavos.data.records import DatasetError

FRAME_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")
MASK_EXTENSIONS: tuple[str, ...] = (".png",)

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key that orders ``frame2`` before ``frame10`` (and zero-padded names as usual)."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in _DIGITS.split(name))


def list_files(folder: Path, extensions: tuple[str, ...], what: str) -> list[Path]:
    """Files of ``folder`` with one of ``extensions`` (case-insensitive), in natural order of their stems."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: {what} folder does not exist")
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions and not p.name.startswith(".")]
    return sorted(files, key=lambda p: natural_key(p.stem))


def list_subfolders(folder: Path, what: str) -> list[str]:
    """Names of the sub-folders of ``folder`` (one per video), in natural order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: {what} folder does not exist")
    return sorted((p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=natural_key)


def read_json(path: Path, what: str) -> dict:
    """Load a JSON file; a missing or malformed file is a DatasetError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: {what} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot parse {what} ({e})") from e


def read_lines(path: Path, what: str) -> list[str]:
    """Non-empty stripped lines of a text file (a split list such as ``ImageSets/val.txt``)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: {what} does not exist")
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image; the pixels are decoded too, so a corrupt file is caught here."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            width, height = img.size
            img.load()
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: image does not exist") from e
    except Exception as e:  # PIL raises several exception types for corrupt files
        raise DatasetError(f"{path}: cannot read image ({e})") from e
    return height, width


def check_same_size(mask: Path, frame: Path) -> None:
    """Raise a DatasetError naming both files when a mask and its frame differ in size."""
    mask_hw, frame_hw = image_size(mask), image_size(frame)
    if mask_hw != frame_hw:
        raise DatasetError(
            f"{mask}: mask is {mask_hw[1]}x{mask_hw[0]} (WxH) but its frame {frame} is {frame_hw[1]}x{frame_hw[0]}"
        )


def index_by_stem(files: list[Path], frame_names: list[str], what: str, frames_folder: Path) -> dict[int, Path]:
    """Map each file to the index of the frame with the same stem; a file without a frame is an error."""
    position = {name: i for i, name in enumerate(frame_names)}
    mapped: dict[int, Path] = {}
    for f in files:
        if f.stem not in position:
            raise DatasetError(f"{f}: {what} has no frame image named '{f.stem}.*' in {frames_folder}")
        mapped[position[f.stem]] = f
    return mapped


def missing_root(dataset: str, root: Path, tree: str, default: str) -> DatasetError:
    """The error for a dataset that is not where the config points: where to put it and its layout."""
    return DatasetError(
        f"{root}: {dataset} not found. Put the dataset there (default location: {default}, see data/README.md) "
        f"or point the config at it with data.root=/path/to/it (data=ytvos_davis, the YouTube-VOS + DAVIS mix "
        f"of experiment=pre_ytb_dav, reads data.ytvos_root and data.davis_root instead). Expected layout:\n{tree}"
    )


def first_appearances(annotations: dict[int, Path], read=None) -> dict[int, int]:
    """Object id -> first annotated frame whose mask holds it, reading masks in temporal order (255 = void).

    read: the mask reader (default ``read_mask``; user videos use ``read_user_mask``).
    """
    import numpy as np

    from mavos.data.io import read_mask

    read = read or read_mask
    first: dict[int, int] = {}
    for index in sorted(annotations):
        for obj_id in np.unique(read(annotations[index])):
            if 0 < obj_id < 255 and int(obj_id) not in first:
                first[int(obj_id)] = index
    return first
