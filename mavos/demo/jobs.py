"""A run of the model over one video for one browser session: propagation, timing, outputs, cancellation.

The propagation is the scripts' API, ``InferenceSession.add_objects`` then ``step`` per frame; the demo adds
only what it shows: each step's time and memory, a mask PNG per frame, progress, and a check between frames
for cancellation. Each run writes into its own folder, which the ``JobBoard`` removes when the run is
cancelled, when its browser tab closes, or when the same tab starts another run.
"""
from __future__ import annotations

import gc
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from mavos.data.io import read_mask, write_mask
from mavos.demo.measure import memory_mb, reset_peak_memory
from mavos.demo.networks import NetworkCache, policy_of
from mavos.demo.outputs import csv_bytes, write_playable_overlay, write_zip
from mavos.demo.videos import VideoSource
from mavos.inference import InferenceSession

Progress = Callable[[float, str], None]


class JobCancelled(Exception):
    """The run was cancelled (button, closed tab, or a newer run in the same tab)."""


class Job:
    """One run's output folder and cancel flag. The folder goes away when the job is discarded: at once when
    the run has ended, or by the run itself when it notices the cancel flag between two frames."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._running = False
        self._discarded = False

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def running(self) -> bool:
        return self._running

    def check(self) -> None:
        if self._cancel.is_set():
            raise JobCancelled()

    def cancel(self) -> None:
        """Ask the run to stop; it removes its folder when it does."""
        self._cancel.set()

    def discard(self) -> None:
        """Stop the run if it is running, and remove the folder (now, or when the run stops)."""
        with self._lock:
            self._cancel.set()
            self._discarded = True
            if not self._running:
                shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "Job":
        with self._lock:
            if self._discarded:
                raise JobCancelled()
            self._running = True
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._running = False
            if self._cancel.is_set():
                self._discarded = True
                shutil.rmtree(self.folder, ignore_errors=True)
        gc.collect()  # the session's memory tensors may sit in reference cycles of a traceback
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class JobBoard:
    """Each browser session's latest job (``session`` is Gradio's session hash)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def new_job(self, session: str) -> Job:
        """A fresh job for ``session``; its previous one is discarded (cancelled if running)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock:
            old = self._jobs.pop(session, None)
            job = Job(Path(tempfile.mkdtemp(prefix="job-", dir=self.root)))
            self._jobs[session] = job
        if old is not None:
            old.discard()
        return job

    def cancel(self, session: str) -> bool:
        """Cancel the session's running job (its folder is removed as it stops); False when none runs."""
        job = self._jobs.get(session)
        if job is None or not job.running:
            return False
        job.cancel()
        return True

    def close(self, session: str) -> None:
        """The session ended (tab closed): stop its job and remove its files."""
        with self._lock:
            job = self._jobs.pop(session, None)
        if job is not None:
            job.discard()

    def close_all(self) -> None:
        for session in list(self._jobs):
            self.close(session)


@dataclass
class FrameStat:
    memory: str        # the memory policy of the run
    frame: int
    ms: float          # add_objects (frame 0) or step, including the argmax and the copy to the CPU
    memory_mb: float   # see mavos.demo.measure.memory_mb
    slots: int         # long-term memory slots of the first object group after this frame


def propagate(net, video: VideoSource, mask: np.ndarray, out_dir: Path, *, label: str, job: Job | None = None,
              max_short_edge: int | None = None, long_term_gap: int | None = None,
              device: torch.device | None = None, on_frame: Callable[[int, float], None] | None = None
              ) -> list[FrameStat]:
    """Segment every frame from the first-frame mask; write ``out_dir/<frame name>.png``; time each step.

    on_frame(frames done, seconds so far) is called after each frame; ``job.check()`` before each frame.
    """
    session = InferenceSession(net, long_term_gap=long_term_gap, max_long_edge=None, max_short_edge=max_short_edge,
                               device=device)
    names = video.frame_names()
    stats, seconds = [], 0.0
    for index, frame in enumerate(video.frames()):
        if job is not None:
            job.check()
        reset_peak_memory(session.device)
        start = time.perf_counter()
        if index == 0:
            session.add_objects(frame, mask)
        else:
            session.step(frame)
        ids = session.last_mask.to(torch.uint8).cpu().numpy()  # the argmax the session made
        elapsed = time.perf_counter() - start
        seconds += elapsed
        stats.append(FrameStat(label, index, round(elapsed * 1000, 2), round(memory_mb(session), 3),
                               session.memory_slots))
        write_mask(out_dir / f"{names[index]}.png", ids)
        if on_frame is not None:
            on_frame(index + 1, seconds)
    return stats


@dataclass
class RunRequest:
    """What the page asks for. memory None: the checkpoint's own; compare: also run the other policy."""

    video: VideoSource
    mask: np.ndarray
    checkpoint: str
    memory: str | None = None
    compare: bool = False
    max_short_edge: int | None = None
    long_term_gap: int | None = None


@dataclass
class RunResult:
    zip_path: Path
    video_path: Path
    stats: list[FrameStat]
    notes: dict[str, str] = field(default_factory=dict)     # memory policy -> what that run is
    gaps: dict[str, int] = field(default_factory=dict)      # memory policy -> long-term gap used

    @property
    def memories(self) -> list[str]:
        return list(dict.fromkeys(s.memory for s in self.stats))

    def summary(self, memory: str) -> str:
        rows = [s for s in self.stats if s.memory == memory]
        later = rows[1:] or rows
        tenth = max(1, len(later) // 10)
        fps = len(later) / max(sum(s.ms for s in later) / 1000, 1e-9)
        first = np.mean([s.memory_mb for s in later[:tenth]])
        last = np.mean([s.memory_mb for s in later[-tenth:]])
        return (f"`{memory}` (gap {self.gaps.get(memory)}): {fps:.1f} FPS over frames 1-{rows[-1].frame}, memory "
                f"{first:.1f} -> {last:.1f} MB (first -> last tenth), {rows[-1].slots} long-term memory slot{'s' if rows[-1].slots != 1 else ''} at the end")


def other_policy(memory: str) -> str:
    return "bank" if memory == "mca" else "mca"


def run_job(request: RunRequest, job: Job, networks: NetworkCache, progress: Progress | None = None) -> RunResult:
    """Run the request inside ``job`` (its folder): masks of every run, the first run's overlay, a zip."""
    progress = progress or (lambda fraction, text: None)
    video = request.video
    with job:
        first, note = networks.get(request.checkpoint, request.memory)
        memories = [policy_of(first)] + ([other_policy(policy_of(first))] if request.compare else [])
        notes, stats, gaps = {memories[0]: note}, [], {}
        for k, memory in enumerate(memories):
            net = first if k == 0 else None
            if net is None:
                net, notes[memory] = networks.get(request.checkpoint, memory)
            gaps[memory] = request.long_term_gap or net.memory.test_gap
            progress(k / len(memories), f"{memory}: starting")

            def on_frame(done: int, seconds: float, k=k, memory=memory) -> None:
                progress((k + done / video.num_frames) / len(memories),
                         f"{memory}: {done}/{video.num_frames} frames, {done / max(seconds, 1e-9):.1f} FPS")

            stats += propagate(net, video, request.mask, job.folder / "masks" / memory, label=memory, job=job,
                               max_short_edge=request.max_short_edge, long_term_gap=gaps[memory],
                               device=networks.device, on_frame=on_frame)
        job.check()
        progress(0.99, "writing the overlay video and the zip")
        masks_dir = job.folder / "masks" / memories[0]
        names = video.frame_names()
        video_path = job.folder / f"{video.name}_overlay.mp4"
        write_playable_overlay(((frame, read_mask(masks_dir / f"{name}.png"))
                                for frame, name in zip(video.frames(), names)), video_path, video.fps)
        files: dict[str, Path | bytes] = {f"{memory}/{name}.png": job.folder / "masks" / memory / f"{name}.png"
                                          for memory in memories for name in names}
        files["per_frame.csv"] = csv_bytes([asdict(s) for s in stats])
        zip_path = job.folder / f"{video.name}_masks.zip"
        write_zip(files, zip_path)
        return RunResult(zip_path, video_path, stats, notes, gaps)

