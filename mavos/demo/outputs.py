"""The files a run offers: an overlay video a browser can play, the PNG masks (zip), per-frame numbers (CSV).

Browsers play H.264 in mp4 but not the MPEG-4 Part 2 ("mp4v") that OpenCV writes (``write_overlay_video``),
so the overlay is encoded with PyAV's libx264 here; the frames are ``blend``ed exactly as evaluation's
overlays. Where libx264 is missing the evaluation writer is used (a download that may not play in the page).
Every file is written atomically.
"""
from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np

from mavos.data.io import atomic_save
from mavos.evaluation.overlay import blend, write_overlay_video


def _even(image: np.ndarray) -> np.ndarray:
    """Pad to even height and width (4:2:0 video needs them) by repeating the last row / column."""
    h, w = image.shape[:2]
    return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") if h % 2 or w % 2 else image


def h264_available() -> bool:
    try:
        import av

        av.Codec("libx264", "w")
        return True
    except Exception:
        return False


def write_playable_overlay(pairs: Iterable[tuple[np.ndarray, np.ndarray]], path: str | Path, fps: float) -> None:
    """(frame, mask) pairs -> an H.264 mp4 of the blended frames (evaluation's writer without libx264)."""
    if not h264_available():
        write_overlay_video(pairs, path, fps=fps)
        return
    import av

    def save(tmp: str) -> None:
        with av.open(tmp, mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = None
            for frame, mask in pairs:
                image = _even(blend(frame, mask))
                if stream is None:
                    stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001),
                                                  options={"crf": "20", "preset": "veryfast"})
                    stream.height, stream.width = image.shape[:2]
                    stream.pix_fmt = "yuv420p"
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            if stream is not None:
                container.mux(stream.encode())

    atomic_save(save, path)


def write_zip(files: dict[str, Path | bytes], path: str | Path) -> None:
    """A zip of {name in the archive: file or bytes}, atomically."""
    def save(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            for name, content in files.items():
                if isinstance(content, bytes):
                    archive.writestr(name, content)
                else:
                    archive.write(content, name)

    atomic_save(save, path)


def csv_bytes(rows: list[dict]) -> bytes:
    text = io.StringIO()
    if rows:
        writer = csv.DictWriter(text, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return text.getvalue().encode()
