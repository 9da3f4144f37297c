"""The video a user runs: an uploaded file (checked before anything runs) or an embedded benchmark video.

Uploads are read through the project's reader (``read_video_frames``: decord, PyAV fallback) twice: once
here to check them (decodable, not empty, within the size and length limits) and take the first frame, and
again frame by frame while the model runs, so a long video is never held in memory.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mavos.data.io import read_frame, read_mask
from mavos.data.records import DatasetError
from mavos.data.video_file import read_video_frames
from mavos.errors import MavosError

DEFAULT_FPS = 24.0


class InputError(MavosError, ValueError):
    """Something the user gave that the demo cannot use; the message is shown in the page as it is."""


@dataclass
class VideoSource:
    """One video, as the page knows it: where its frames come from, its size and its first frame."""

    name: str
    num_frames: int
    height: int
    width: int
    fps: float
    first_frame: np.ndarray
    path: Path | None = None                 # a video file, read with read_video_frames
    frame_files: list[Path] | None = None    # or frame images (embedded benchmark)
    first_mask: np.ndarray | None = None     # the benchmark's own first-frame annotation

    def frames(self) -> Iterator[np.ndarray]:
        """(H, W, 3) uint8 RGB frames in order, read lazily."""
        if self.path is not None:
            return read_video_frames(self.path)
        return (read_frame(f) for f in self.frame_files or [])

    def frame_names(self) -> list[str]:
        if self.frame_files is not None:
            return [f.stem for f in self.frame_files]
        return [f"{i:05d}" for i in range(self.num_frames)]

    def describe(self) -> str:
        return f"**{self.name}**: {self.num_frames} frames, {self.width}x{self.height}, {self.fps:g} fps"


def _last_reason(message: str, path: Path) -> str:
    """The fallback reader's reason from a read_video_frames error, without paths or decoder internals."""
    reason = message.rsplit("PyAV: ", 1)[-1].rstrip(")")
    reason = reason.split(": '", 1)[0].replace(str(path), path.name)
    return reason.split("] ", 1)[-1] if reason.startswith("[Errno") else reason


def open_uploaded_video(path: str | Path, max_mb: float, max_frames: int, name: str | None = None) -> VideoSource:
    """Check an uploaded file and describe it; an InputError says what is wrong, naming the file."""
    path = Path(path)
    name = name or path.name
    size_mb = path.stat().st_size / 2 ** 20
    if size_mb > max_mb:
        raise InputError(f"{name} is {size_mb:.1f} MB; this demo accepts videos up to {max_mb:g} MB "
                         f"(start it with max_upload_mb=... to change that).")
    try:
        frames = read_video_frames(path)
        fps = frames.fps or DEFAULT_FPS  # the container's average frame rate (for the overlay video)
        first = next(frames, None)
        count = 0 if first is None else 1
        for _ in frames:
            count += 1
            if count > max_frames:
                raise InputError(f"{name} has more than {max_frames} frames; this demo runs videos of up to "
                                 f"{max_frames} frames (start it with max_frames=... to change that). Cut it first.")
    except DatasetError as e:
        if "no video stream" in str(e) or "no frames" in str(e):
            raise InputError(f"{name} has no video frames.") from e
        raise InputError(f"{name} is not a video this demo can read (mp4, mov, webm, ...): "
                         f"{_last_reason(str(e), path)}") from e
    if first is None:
        raise InputError(f"{name} has no video frames.")
    if count < 2:
        raise InputError(f"{name} has one frame (an image?); a video needs at least two: the first, with its mask, "
                         f"and one to segment.")
    height, width = first.shape[:2]
    return VideoSource(name=Path(name).stem, num_frames=count, height=height, width=width, fps=fps,
                       first_frame=first, path=path)


def benchmark_source(record) -> VideoSource:
    """A ``VideoRecord`` of the embedded benchmark (frame files + first annotation) as a VideoSource."""
    first = read_frame(record.frames[0])
    return VideoSource(name=record.name, num_frames=len(record.frames), height=first.shape[0], width=first.shape[1],
                       fps=DEFAULT_FPS, first_frame=first, frame_files=list(record.frames),
                       first_mask=read_mask(record.annotations[0]))


class BenchmarkVideos:
    """The embedded benchmark's val videos, generated on first use (``SyntheticPrepare``, as ``make run``)."""

    def __init__(self, root: str | Path, **params) -> None:
        self.root = Path(root)
        self.params = params  # generator settings; none = the ones conf/data/synthetic.yaml uses

    def ready(self) -> bool:
        return (self.root / "meta.json").is_file()

    def records(self) -> list:
        from mavos.data.davis import DavisReader
        from mavos.data.synthetic import SyntheticPrepare

        SyntheticPrepare(root=self.root, seed=0, **self.params)()  # no-op when it is there already
        return DavisReader(self.root, split="val").videos()

    def names(self) -> list[str]:
        return [r.name for r in self.records()] if self.ready() else []

    def load(self, name: str | None) -> VideoSource:
        records = self.records()
        by_name = {r.name: r for r in records}
        if name is not None and name not in by_name:
            raise InputError(f"{name}: not a val video of the embedded benchmark ({', '.join(by_name)})")
        return benchmark_source(by_name[name] if name is not None else records[0])
