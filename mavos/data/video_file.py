"""A user's own video: a video file or a folder of frames, plus a first-frame mask.

Video files are decoded behind one function, :func:`read_video_frames`: decord by default (fast,
frame-accurate), PyAV where decord is not installed or cannot read the file, and for files with a display
rotation (portrait phone videos): decord fails on 90 / 270 degrees (dmlc/decord#336), so those go through PyAV,
which turns each frame the way a player shows it.

A video file is read as it is, never re-encoded: :class:`VideoFileReader` lists it as a ``VideoRecord`` whose
``video_file`` is set (its frame count, frame rate and first frame are read when it is listed), and consumers
read a record's frames through :func:`frame_reader`, which decodes a video file in order, frame by frame, while
the model runs. So ``evaluate.py data=video`` feeds the model the same pixels as ``VideoPredictor`` and the
demo, writes nothing before the first frame is segmented, and keeps no copy of the frames on disk.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from mavos.data.io import is_binary_mask_file, read_frame, read_user_mask
from mavos.data.listing import (
    first_appearances,
    FRAME_EXTENSIONS,
    MASK_EXTENSIONS,
    check_same_size,
    image_size,
    index_by_stem,
    list_files,
)
from mavos.data.records import DatasetError, VideoRecord

log = logging.getLogger(__name__)


class VideoFrames:
    """An opened video's frames in order, as (H, W, 3) uint8 RGB arrays (an iterator), with what the file says
    about itself: ``fps``, its average frame rate (0.0 where the container does not say), and ``count()``, the
    number of frames this iterator yields in all (decord's index; PyAV: a decoding pass, exact but not free)."""

    def __init__(self, frames: Iterator[np.ndarray], fps: float, count: Callable[[], int]):
        self._frames, self.fps, self._count = frames, fps, count

    def __iter__(self) -> "VideoFrames":
        return self

    def __next__(self) -> np.ndarray:
        return next(self._frames)

    def count(self) -> int:
        return self._count()


def read_video_frames(path: str | Path, backend: str = "auto") -> VideoFrames:
    """Open a video and return an iterator of its frames as (H, W, 3) uint8 RGB arrays (a :class:`VideoFrames`).

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


def _decord_frames(path: Path, batch: int = 16) -> VideoFrames:
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

    return VideoFrames(frames(), float(reader.get_avg_fps() or 0.0), lambda: len(reader))


def _pyav_frames(path: Path) -> VideoFrames:
    import av

    container = av.open(str(path))
    if not container.streams.video:
        container.close()
        raise ValueError("no video stream")
    rate = container.streams.video[0].average_rate

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

    return VideoFrames(frames(), float(rate) if rate else 0.0, lambda: _pyav_count(path))


def _pyav_count(path: Path) -> int:
    """Frames PyAV decodes from the file (containers' own counts can be missing or off; decoding is exact)."""
    import av

    try:
        with av.open(str(path)) as container:
            return sum(1 for _ in container.decode(container.streams.video[0]))
    except av.FFmpegError as e:
        raise DatasetError(f"{path}: video decoding failed ({e})") from e


class _FramesInOrder:
    """Frame ``i`` of a video file, asked for in increasing order: one decoder from the first frame, passing
    over frames nobody asks for (a video file has no cheap random access, and evaluation reads each frame once,
    in order). Opened on the first call, so on the thread that reads."""

    def __init__(self, path: Path, backend: str, frames: int):
        self.path, self.backend, self.frames = path, backend, frames
        self._decoded: VideoFrames | None = None
        self._next = 0

    def __call__(self, index: int) -> np.ndarray:
        if index < self._next:
            raise ValueError(f"{self.path}: frame {index} asked for after frame {self._next - 1}; a video file is "
                             f"read in order")
        if self._decoded is None:
            self._decoded = read_video_frames(self.path, self.backend)
        for frame in self._decoded:
            self._next += 1
            if self._next - 1 == index:
                return frame
        raise DatasetError(f"{self.path}: the video ends after {self._next} frames, but {self.frames} were listed "
                           f"when it was opened (was it changed or truncated since?)")


def frame_reader(record: VideoRecord) -> Callable[[int], np.ndarray]:
    """How to read frame ``i`` of a record as (H, W, 3) uint8 RGB: its image file, or, for a record of a video
    file, the decoder's next frames (then frames must be asked for in increasing order)."""
    if record.video_file is not None:
        return _FramesInOrder(Path(record.video_file), str(record.meta.get("video_backend", "auto")), len(record))
    return lambda index: read_frame(record.frames[index])




def _note_binary(annotations: dict[int, Path]) -> None:
    """Say so when a 0/255 binary mask is read as one object (the rule of ``read_user_mask``)."""
    for path in annotations.values():
        if is_binary_mask_file(path):
            log.info("%s: a binary 0/255 mask, read as one object (id 1)", path)


class VideoFileReader:
    """One video file with the mask of its first frame, as a single VideoRecord that reads the file itself.

    Listing opens the file and reads its frame count, frame rate and first frame (to check the mask's size);
    the frames are decoded while the model runs (:func:`frame_reader`). ``record.frames`` names the video file
    for each frame; ``meta["source"]`` records its size and modification time, so an edited video is not taken
    for the one a resumed evaluation already segmented.
    """

    def __init__(self, video_path: str | Path, mask_path: str | Path, name: str | None = None,
                 backend: str = "auto"):
        self.video_path = Path(video_path)
        self.mask_path = Path(mask_path)
        self.name = name or self.video_path.stem
        self.backend = backend

    def videos(self) -> list[VideoRecord]:
        if not self.mask_path.is_file():
            raise DatasetError(f"{self.mask_path}: first-frame mask does not exist")
        decoded = read_video_frames(self.video_path, self.backend)
        first = next(decoded, None)
        count = decoded.count() if first is not None else 0
        if count == 0:
            raise DatasetError(f"{self.video_path}: video has no frames")
        if count == 1:
            raise DatasetError(f"{self.video_path}: one frame (an image?); a video needs at least two: the first, "
                               f"with its mask, and one to segment")
        (mh, mw), (fh, fw) = image_size(self.mask_path), first.shape[:2]
        if (mh, mw) != (fh, fw):
            raise DatasetError(f"{self.mask_path}: mask is {mw}x{mh} (WxH) but the frames of {self.video_path} are "
                               f"{fw}x{fh}")
        annotations = {0: self.mask_path}
        first_seen = first_appearances(annotations, read=read_user_mask)
        if not first_seen:
            raise DatasetError(f"{self.mask_path}: first-frame mask holds no object (all pixels are 0, or 255 in a "
                               f"palette PNG, where 255 means void)")
        _note_binary(annotations)
        stat = self.video_path.stat()
        meta = {"dataset": "video", "dense": False, "start_frame": 0, "user_masks": True,
                "source": {"path": str(self.video_path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
                "video_backend": self.backend}
        if decoded.fps > 0:
            meta["fps"] = decoded.fps
        return [
            VideoRecord(
                name=self.name,
                frames=[self.video_path] * count,
                frame_names=[f"{i:05d}" for i in range(count)],
                annotations=annotations,
                object_first_frame=first_seen,
                video_file=self.video_path,
                meta=meta,
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
