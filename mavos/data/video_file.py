"""A user's own video: a video file or a folder of frames, plus a first-frame mask.

Video files are decoded behind one function, :func:`read_video_frames`: decord by default (fast,
frame-accurate), PyAV where decord is not installed or cannot read the file, and for files with a display
rotation (portrait phone videos): decord fails on 90 / 270 degrees (dmlc/decord#336), so those go through PyAV,
which turns each frame the way a player shows it.

Why a JPEG cache: a :class:`VideoRecord` lists frame *files* so every consumer (inference, writers,
the evaluator) reads videos the same way. :class:`VideoFileReader` therefore decodes the video once
into a folder of JPEG frames (quality 95) and reuses that folder on later runs. The folder is complete
only when its ``.complete`` marker (written last, atomically) names the same source file, size and
modification time, so an interrupted decode or an edited video is decoded again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mavos.data.io import atomic_save, is_binary_mask_file, read_user_mask, write_frame
from mavos.data.listing import (
    first_appearances,
    FRAME_EXTENSIONS,
    MASK_EXTENSIONS,
    check_same_size,
    index_by_stem,
    list_files,
)
from mavos.data.records import DatasetError, VideoRecord

_MARKER = ".complete"
log = logging.getLogger(__name__)


def read_video_frames(path: str | Path, backend: str = "auto") -> Iterator[np.ndarray]:
    """Open a video and return an iterator of its frames as (H, W, 3) uint8 RGB arrays.

    backend: ``auto`` (decord, then PyAV when decord is missing or fails to read the file's first frames;
    PyAV for a file with a display rotation), ``decord`` or ``pyav``. Frames are upright as a player shows them
    (PyAV applies the display rotation). The file is opened and its first frames decoded before this returns,
    so an unreadable video raises a DatasetError naming it here rather than later.
    """
    path = Path(path)
    if backend not in ("auto", "decord", "pyav"):
        raise ValueError(f"backend must be 'auto', 'decord' or 'pyav', got {backend!r}")
    if not path.is_file():
        raise DatasetError(f"{path}: video file does not exist")
    errors = []
    if backend == "auto" and display_rotation(path):
        backend = "pyav"
    if backend in ("auto", "decord"):
        try:
            return _decord_frames(path)
        except Exception as e:  # ImportError, or decord's own error type for a file it cannot open
            errors.append(f"decord: {e}")
            if backend == "decord":
                raise DatasetError(f"{path}: cannot open video with decord ({e})") from e
    try:
        return _pyav_frames(path)
    except Exception as e:
        errors.append(f"PyAV: {e}")
        raise DatasetError(f"{path}: cannot open video ({'; '.join(errors)})") from e


def display_rotation(path: Path) -> int:
    """The counter-clockwise angle (degrees, a multiple of 90) a player turns the video's frames by: its display
    matrix, as PyAV reads it from the first frame; 0 without one, or without PyAV."""
    try:
        import av
    except ImportError:
        return 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return 0
            for frame in container.decode(container.streams.video[0]):
                return _quarter_turns(frame) * 90
    except Exception:  # noqa: BLE001 - unreadable here: the readers below say why
        return 0
    return 0


def _quarter_turns(frame) -> int:
    """0-3: counter-clockwise quarter turns of a PyAV frame's display rotation (``np.rot90``'s k)."""
    return int(round(float(getattr(frame, "rotation", 0) or 0) / 90.0)) % 4


def _decord_frames(path: Path, batch: int = 16) -> Iterator[np.ndarray]:
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    if len(reader) == 0:
        raise ValueError("no frames")

    def read(begin: int) -> np.ndarray:
        return reader.get_batch(list(range(begin, min(begin + batch, len(reader))))).asnumpy()

    first = read(0)  # here, not in the iterator: a file decord opens but cannot decode falls back to PyAV

    def frames() -> Iterator[np.ndarray]:
        for begin in range(0, len(reader), batch):
            try:
                chunk = first if begin == 0 else read(begin)
            except Exception as e:  # decord's error type lives in a private module
                raise DatasetError(f"{path}: video decoding failed at frame {begin} ({e})") from e
            yield from (np.ascontiguousarray(f, dtype=np.uint8) for f in chunk)

    return frames()


def _pyav_frames(path: Path) -> Iterator[np.ndarray]:
    import av

    container = av.open(str(path))
    if not container.streams.video:
        container.close()
        raise ValueError("no video stream")

    def frames() -> Iterator[np.ndarray]:
        try:
            for frame in container.decode(container.streams.video[0]):
                image = frame.to_ndarray(format="rgb24")
                turns = _quarter_turns(frame)
                yield np.ascontiguousarray(np.rot90(image, turns)) if turns else image
        except av.FFmpegError as e:
            raise DatasetError(f"{path}: video decoding failed ({e})") from e
        finally:
            container.close()

    return frames()




def _note_binary(annotations: dict[int, Path]) -> None:
    """Say so when a 0/255 binary mask is read as one object (the rule of ``read_user_mask``)."""
    for path in annotations.values():
        if is_binary_mask_file(path):
            log.info("%s: a binary 0/255 mask, read as one object (id 1)", path)


class VideoFileReader:
    """One video file with the mask of its first frame, as a single VideoRecord.

    frame_dir: where the decoded JPEG frames are cached; default
    ``<tmp>/mavos_video_frames/<name>-<hash of path, size, mtime>``, so re-runs reuse it.
    """

    def __init__(
        self,
        video_path: str | Path,
        mask_path: str | Path,
        name: str | None = None,
        frame_dir: str | Path | None = None,
        backend: str = "auto",
    ):
        self.video_path = Path(video_path)
        self.mask_path = Path(mask_path)
        self.name = name or self.video_path.stem
        self.frame_dir = Path(frame_dir) if frame_dir is not None else None
        self.backend = backend

    def _source_stamp(self) -> dict:
        stat = self.video_path.stat()
        # "upright": frames are decoded turned by the display rotation (cache folders of older decodes are not reused)
        return {"source": str(self.video_path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                "orientation": "upright"}

    def _cache_dir(self, stamp: dict) -> Path:
        if self.frame_dir is not None:
            return self.frame_dir
        digest = hashlib.sha1(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / "mavos_video_frames" / f"{self.name}-{digest}"

    def decode(self) -> list[Path]:
        """Decode the video into the cache folder unless a complete decode of this file is there."""
        if not self.video_path.is_file():
            raise DatasetError(f"{self.video_path}: video file does not exist")
        stamp = self._source_stamp()
        folder = self._cache_dir(stamp)
        marker = folder / _MARKER
        if marker.is_file():
            try:
                done = json.loads(marker.read_text())
            except ValueError:
                done = {}
            frames = [folder / f"{i:05d}.jpg" for i in range(int(done.get("frames", 0)))]
            if {k: done.get(k) for k in stamp} == stamp and frames and all(f.is_file() for f in frames):
                return frames
        marker.unlink(missing_ok=True)
        frames = []
        for i, frame in enumerate(read_video_frames(self.video_path, self.backend)):
            path = folder / f"{i:05d}.jpg"
            write_frame(path, frame)
            frames.append(path)
        if not frames:
            raise DatasetError(f"{self.video_path}: video has no frames")
        text = json.dumps({**stamp, "frames": len(frames)})
        atomic_save(lambda tmp: Path(tmp).write_text(text), marker)
        return frames

    def videos(self) -> list[VideoRecord]:
        if not self.mask_path.is_file():
            raise DatasetError(f"{self.mask_path}: first-frame mask does not exist")
        frames = self.decode()
        check_same_size(self.mask_path, frames[0])
        annotations = {0: self.mask_path}
        first = first_appearances(annotations, read=read_user_mask)
        if not first:
            raise DatasetError(f"{self.mask_path}: first-frame mask holds no object (all pixels are 0, or 255 in a "
                               f"palette PNG, where 255 means void)")
        _note_binary(annotations)
        return [
            VideoRecord(
                name=self.name,
                frames=frames,
                frame_names=[f.stem for f in frames],
                annotations=annotations,
                object_first_frame=first,
                meta={"dataset": "video", "dense": False, "start_frame": 0, "source": str(self.video_path),
                      "user_masks": True},
            )
        ]


class FrameFolderReader:
    """A folder of frames plus a folder of PNG masks named after their frames, as one VideoRecord.

    The earliest mask is the first-frame mask (the video starts there, ``meta["start_frame"]``); later
    masks may add objects, each one entering at the first mask that holds it.
    """

    def __init__(self, frames_dir: str | Path, masks_dir: str | Path, name: str | None = None):
        self.frames_dir = Path(frames_dir)
        self.masks_dir = Path(masks_dir)
        self.name = name or self.frames_dir.name

    def videos(self) -> list[VideoRecord]:
        frames = list_files(self.frames_dir, FRAME_EXTENSIONS, "frame")
        if not frames:
            raise DatasetError(f"{self.frames_dir}: no frame images (.jpg, .jpeg, .png)")
        names = [f.stem for f in frames]
        if len(set(names)) != len(names):
            raise DatasetError(f"{self.frames_dir}: two frames share a name with different extensions")
        annotations = index_by_stem(list_files(self.masks_dir, MASK_EXTENSIONS, "mask"), names, "mask", self.frames_dir)
        if not annotations:
            raise DatasetError(f"{self.masks_dir}: no mask PNGs")
        for index, mask in annotations.items():
            check_same_size(mask, frames[index])
        first = first_appearances(annotations, read=read_user_mask)
        if not first:
            raise DatasetError(f"{self.masks_dir}: the masks hold no object (all pixels are 0, or 255 in palette "
                               f"PNGs, where 255 means void)")
        _note_binary(annotations)
        start = min(annotations)
        return [
            VideoRecord(
                name=self.name,
                frames=frames,
                frame_names=names,
                annotations=annotations,
                object_first_frame=first,
                scored_frames=list(range(start, len(frames))),
                meta={"dataset": "frames", "dense": False, "start_frame": start, "user_masks": True},
            )
        ]
