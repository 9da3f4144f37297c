"""Segment one video as the benchmarks define it: the one per-video function of evaluation and validation.

``segment_video`` streams a ``VideoRecord`` through an ``InferenceSession`` (first annotated frame, objects
added mid-video, the memory's test gap, 16k+1 sizing, groups of objects) and scores it with the protocol's
``VideoScorer`` as the frames come. evaluate.py calls it for every benchmark video (writing palette PNGs);
the training loop's validation calls it for the val subset (no files), so a J&F in a dashboard and a J&F
from evaluate.py are the same number.

It is a pipeline, so the model is the only thing on the critical path: threads decode frames ahead (a few
frames in flight, taken in order), and writer processes (``finishing``; processes, so that they never hold the
model loop's GIL) write PNGs and score frames behind the model, several frames at once, fed by threads that wait
for each frame's ids. The timed region is the model alone (CUDA events on a GPU, as the paper times it; frame 0
excluded; the frame's upload to the GPU is enqueued before it starts); the wall time of the whole video is kept
beside it, so model FPS and end-to-end FPS can both be reported.
"""
from __future__ import annotations

import resource
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mavos.data.io import read_any_mask
from mavos.data.records import DatasetError, VideoRecord
from mavos.data.video_file import frame_reader
from mavos.evaluation.finishing import WRITERS, FrameJob, finish_frame, reset_writer_pool, usable_cpus, writer_pool
from mavos.inference.session import InferenceSession
from mavos.metrics.protocols import ScorePlan, VideoScorer, ground_truth_path, plan_for_record, read_ground_truth
from mavos.model.vos import VOSNetwork

PREFETCH_FRAMES = 8      # frames decoded ahead of the model
# decoding threads: one 480p JPEG takes 3-7 ms to decode here, about what a compiled GPU step takes, so one
# thread could set the pace; PIL decodes without the GIL. One on a 2-core machine, up to 4 from 16 cores.
DECODERS = max(1, min(4, usable_cpus() // 4))
PENDING_WRITES = 16      # frames waiting to be written / scored before the model waits for them

# (frame index, (H, W, 3) uint8 frame, (H, W) uint8 predicted ids) of a frame the hook asked for
FrameHook = Callable[[int, np.ndarray, np.ndarray], None]


@dataclass
class VideoResult:
    """What one segmented video gives: its scores, its speed, its memory."""

    video: str
    frames: int              # frames the model processed, the first (reference) frame included
    model_seconds: float     # model time of frames 1.. (frame 0 excluded)
    wall_seconds: float      # end-to-end time of the whole video (decoding, writing, scoring included)
    peak_memory_mb: float
    scorer: VideoScorer | None = None
    warmup_seconds: float = 0.0  # of wall_seconds: compiling the step for this size (session.compile; else 0)
    video_frames: int = 0    # frames of the video the pipeline decoded (and wrote), before the first annotated too
    device: str = ""         # where it ran (``device_name``): speeds of a resumed run on another device differ

    @property
    def fps(self) -> float:
        return (self.frames - 1) / self.model_seconds if self.model_seconds > 0 else float("nan")

    @property
    def decoded(self) -> int:
        """The frames inside ``wall_seconds`` (results saved before ``video_frames`` existed: ``frames``)."""
        return self.video_frames or self.frames

    @property
    def wall_fps(self) -> float:
        return self.decoded / self.wall_seconds if self.wall_seconds > 0 else float("nan")


def device_name(device: torch.device) -> str:
    """The device a speed was measured on, as a report names it: the GPU's model on CUDA."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return str(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def read_annotation(record: VideoRecord, path) -> np.ndarray:
    """An annotation as the model gets it: single-object benchmarks (LTV) binarise; user masks may be 0/255."""
    mask = read_any_mask(path, bool(record.meta.get("user_masks")))
    return (mask > 0).astype(np.uint8) if record.meta.get("binarize") else mask


def new_objects_mask(record: VideoRecord, index: int, seen: set[int]) -> np.ndarray | None:
    """The annotation at ``index`` restricted to objects not seen before (None if it adds none)."""
    path = record.annotations.get(index)
    if path is None:
        return None
    new_ids = [o for o, first in record.object_first_frame.items() if first == index and o not in seen]
    if not new_ids:
        return None
    mask = read_annotation(record, path)
    mask = np.where(np.isin(mask, new_ids), mask, 0)
    return mask if mask.any() else None


def result_frames(record: VideoRecord) -> list[int]:
    """The frames whose masks a run writes: the benchmark's listed frames (YouTube-VOS, LVOS), else all."""
    return list(range(len(record))) if record.scored_frames is None else sorted(record.scored_frames)


def start_frame(record: VideoRecord) -> int:
    """The first frame the model sees (the first annotated one; LVOS and YouTube-VOS start later)."""
    start = min(record.annotations) if record.annotations else 0
    return int(record.meta.get("start_frame", start))


class _Prefetcher:
    """Decode frames ahead of the model in ``threads`` threads (one for a video file, which decodes in order),
    ``depth`` frames in flight, handed out in order; a frame's error (naming the file) is raised when that frame
    is taken."""

    def __init__(self, record: VideoRecord, indices: range, depth: int = PREFETCH_FRAMES, threads: int | None = None):
        self.read, self.indices = frame_reader(record), iter(indices)
        threads = 1 if record.video_file is not None else threads or DECODERS
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"decode-{record.name}")
        self.pending: deque[tuple[int, Future]] = deque()
        for _ in range(depth):
            self._submit()

    def _submit(self) -> None:
        i = next(self.indices, None)
        if i is not None:
            self.pending.append((i, self.pool.submit(self.read, i)))

    def get(self) -> tuple[int, np.ndarray]:
        i, future = self.pending.popleft()
        self._submit()
        return i, future.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class _ModelTimer:
    """Model time per frame: CUDA events on a GPU (no host sync per frame), the wall clock on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.events: list[tuple] = []
        self.seconds = 0.0

    def start(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def stop(self, started) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.events.append((started, end))
        else:
            self.seconds += time.perf_counter() - started

    def total(self) -> float:
        if self.cuda and self.events:
            self.events[-1][1].synchronize()
            return self.seconds + sum(a.elapsed_time(b) for a, b in self.events) / 1000.0
        return self.seconds


def label_to_host(label: torch.Tensor) -> Callable[[], np.ndarray]:
    """Hand a frame's (H, W) object ids to the CPU without making the model wait: on a GPU a non-blocking copy
    into pinned memory and an event, and the returned function (called by the writing / scoring worker) waits
    for that event only; so the loop goes on to launch the next frame while the copy is under way, and the GPU is
    not left idle between frames by a ``.cpu()`` per frame. On the CPU the ids are converted at once."""
    ids = label.to(torch.uint8)
    if ids.device.type != "cuda":
        array = ids.numpy()
        return lambda: array
    host = torch.empty(ids.shape, dtype=torch.uint8, pin_memory=True)
    host.copy_(ids, non_blocking=True)
    copied = torch.cuda.Event(blocking=True)  # its waiter sleeps instead of spinning a core the loop needs
    copied.record()

    def wait() -> np.ndarray:
        copied.synchronize()
        return host.numpy()
    return wait


def segment_video(net: VOSNetwork, record: VideoRecord, *, protocol: str = "davis", session_kwargs: dict | None = None,
                  results_dir: str | Path | None = None, plan: ScorePlan | None = None,
                  frame_hook: FrameHook | None = None, hook_frames: set[int] | None = None,
                  progress: bool = True) -> VideoResult:
    """Segment and score one video; write its result PNGs into ``results_dir/<video>/`` when given.

    protocol: how frames are scored (``davis`` / ``ltv`` / ``lvos``; ``none`` scores nothing). ``plan``
    overrides the protocol's plan. ``frame_hook`` receives the frames of ``hook_frames`` with their prediction
    (validation panels).
    """
    device = next(net.parameters()).device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    wall_start = time.perf_counter()
    session = InferenceSession(net, device=device, **(session_kwargs or {}))
    plan = plan if plan is not None else plan_for_record(record, protocol)
    scorer = VideoScorer(plan) if plan is not None else None
    write = None
    if results_dir is not None:
        write = set(result_frames(record))
    start = start_frame(record)
    seen: set[int] = set()
    timer = _ModelTimer(device)
    timed = 0
    warmup_seconds = 0.0
    prefetch = _Prefetcher(record, range(len(record)))
    writer = writer_pool()
    pending: list[Future] = []
    bar = tqdm(total=len(record), desc=record.name, leave=False, disable=not progress, unit="frame")

    def on_device(frame: np.ndarray) -> torch.Tensor | np.ndarray:
        """On a GPU, the decoded uint8 frame goes over as is (pinned, asynchronous) and the session resizes it
        there; on the CPU it stays a numpy array, resized by OpenCV's bicubic filter as the official evaluation
        does (and faster there than torch's)."""
        if device.type == "cuda":
            return torch.from_numpy(frame).pin_memory().to(device, non_blocking=True)
        return frame

    scoring = {} if scorer is None else {"user_masks": bool(record.meta.get("user_masks")),
                                         "binarize": plan.binarize, "bound_th": scorer.bound_th}

    def finish(index: int, host_label: Callable[[], np.ndarray]) -> tuple[int, list | None]:  # on a finish thread
        scored = scorer is not None and scorer.wants(index)
        png = Path(results_dir) / record.name / f"{record.frame_names[index]}.png" \
            if write is not None and index in write else None
        if png is None and not scored:
            return index, None
        truth = dict(truth=str(ground_truth_path(record, index)), entries=tuple(plan.frames[index]),
                     **scoring) if scored else {}
        job = FrameJob(index, host_label(), png=None if png is None else str(png), video=record.name, **truth)
        try:
            scores = writer.submit(finish_frame, job).result()  # in a writer process; waiting releases the GIL
        except BrokenProcessPool:  # its worker died (killed, out of memory): this video fails, the next gets a new one
            reset_writer_pool()
            raise
        return index, scores if scored else None

    def collect(future: Future) -> None:
        """A finished frame's scores, recorded on the loop's thread (the scorer is not shared between threads)."""
        index, scores = future.result()  # raises the frame's write / scoring error here
        if scores is not None:
            scorer.record(index, scores)

    first_frame = None  # (index, (H, W)): every later frame must have its size
    with ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix=f"finish-{record.name}") as pool:
        try:
            for _ in range(len(record)):
                i, frame = prefetch.get()
                if first_frame is None:
                    first_frame = i, frame.shape[:2]
                elif frame.shape[:2] != first_frame[1]:
                    (h, w), (h0, w0) = frame.shape[:2], first_frame[1]
                    raise DatasetError(f"{record.frames[i]}: frame {i} of '{record.name}' is {w}x{h} (WxH) but "
                                       f"frame {first_frame[0]} ({record.frames[first_frame[0]]}) is {w0}x{h0}: "
                                       f"every frame of a video must have one size")
                if i < start or (not seen and i not in record.annotations):
                    label = label_to_host(torch.zeros(frame.shape[:2], dtype=torch.uint8))
                else:
                    new = new_objects_mask(record, i, seen)
                    if new is not None and new.shape != frame.shape[:2]:
                        raise DatasetError(f"{record.annotations[i]}: mask is {new.shape[1]}x{new.shape[0]} (WxH) but "
                                           f"frame {i} of '{record.name}' ({record.frames[i]}) is {frame.shape[1]}x"
                                           f"{frame.shape[0]}")
                    if not seen:
                        if new is None:
                            raise DatasetError(f"{record.annotations.get(i)}: first annotation of '{record.name}' "
                                               f"holds no object")
                        warming = time.perf_counter()
                        counts = (len([o for o, f in record.object_first_frame.items() if f <= i]),
                                  len(record.object_ids))  # objects now, and once all have entered
                        session.warm_up(frame.shape[:2], counts)  # compiling stays out of the model time
                        warmup_seconds = time.perf_counter() - warming if session.compile else 0.0
                        session.add_objects(on_device(frame), new)
                    else:
                        frame_in = on_device(frame)  # pinning and the upload's launch are not model time
                        t0 = timer.start()
                        session.step(frame_in, new)
                        timer.stop(t0)
                        timed += 1
                    if new is not None:
                        seen.update(int(o) for o in np.unique(new) if o)
                    label = label_to_host(session.last_mask)  # the argmax the session made, on its way
                if frame_hook is not None and hook_frames and i in hook_frames:
                    frame_hook(i, frame, label())
                pending.append(pool.submit(finish, i, label))
                while len(pending) > PENDING_WRITES or (pending and pending[0].done()):
                    collect(pending.pop(0))  # surfaces a write / scoring error at once
                bar.update(1)
            while pending:
                collect(pending.pop(0))
        finally:
            prefetch.close()
            bar.close()
            for future in pending:
                future.cancel()
    model_seconds = timer.total()
    return VideoResult(record.name, timed + 1, model_seconds, time.perf_counter() - wall_start,
                       peak_memory_mb(device), scorer, warmup_seconds, len(record), device_name(device))


def copy_first_frame_scores(record: VideoRecord, plan: ScorePlan) -> VideoScorer:
    """The trivial baseline: the first-frame mask copied to every frame, scored by the same plan."""
    first = min(record.annotations)
    ref = read_annotation(record, record.annotations[first])
    scorer = VideoScorer(plan)
    for index in plan.frame_indices:
        scorer.add(index, ref, read_ground_truth(record, index))
    return scorer
