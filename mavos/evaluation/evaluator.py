"""Stream each video through an ``InferenceSession``: write palette PNGs, score J&F, time every frame.

Results go to ``<results_dir>/<video>/<frame>.png`` (the DAVIS / YouTube-VOS results layout). Frame 0 is
excluded from timing, as in the paper; peak memory is the CUDA allocator's peak on GPU, the process's
peak RSS on CPU.
"""
from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mavos.data.io import read_frame, read_mask, write_mask
from mavos.data.records import DatasetError, VideoRecord
from mavos.evaluation.scoring import VideoScores, scored_gt_frames
from mavos.inference.session import InferenceSession
from mavos.metrics.jf import JFMetric
from mavos.model.vos import VOSNetwork


@dataclass
class VideoSpeed:
    video: str
    frames: int
    seconds: float          # propagation time of frames 1..T-1
    peak_memory_mb: float

    @property
    def fps(self) -> float:
        return (self.frames - 1) / self.seconds if self.seconds > 0 else float("nan")


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_annotation(record: VideoRecord, path) -> np.ndarray:
    """Read an annotation; single-object benchmarks (LTV) binarise labels (any id > 0 -> 1)."""
    mask = read_mask(path)
    return (mask > 0).astype(np.uint8) if record.meta.get("binarize") else mask


def object_ids_to_score(record: VideoRecord) -> list[int]:
    """DAVIS: objects 1..max id of the first annotation (missing ids score as zero-padded objects)."""
    return list(range(1, max(record.object_ids) + 1)) if record.object_ids else []


def new_objects_mask(record: VideoRecord, index: int, seen: set[int]) -> np.ndarray | None:
    """The annotation at ``index`` restricted to objects not seen before (None if it adds none)."""
    path = record.annotations.get(index)
    if path is None:
        return None
    new_ids = [o for o, first in record.object_first_frame.items() if first == index and o not in seen]
    if not new_ids:
        return None
    mask = load_annotation(record, path)
    mask = np.where(np.isin(mask, new_ids), mask, 0)
    return mask if mask.any() else None


def run_video(net: VOSNetwork, record: VideoRecord, results_dir: Path | None, metric: JFMetric | None,
              session_kwargs: dict, exclude_last: bool = True, progress: bool = True) -> VideoSpeed:
    """Segment one video; write its scored frames; add its scores to ``metric``; return its speed."""
    device = next(net.parameters()).device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    session = InferenceSession(net, device=device, **session_kwargs)
    gt_frames = set(scored_gt_frames(record, exclude_last)) if metric is not None else set()
    gt = record.gt_annotations or record.annotations
    scores = VideoScores(object_ids_to_score(record))
    write = set(range(len(record))) if record.scored_frames is None else set(record.scored_frames)
    start = min(record.annotations) if record.annotations else 0
    start = int(record.meta.get("start_frame", start))
    seen: set[int] = set()
    elapsed, timed = 0.0, 0
    bar = tqdm(range(len(record)), desc=record.name, leave=False, disable=not progress, unit="frame")
    for i in bar:
        frame = read_frame(record.frames[i])
        if i < start or (not seen and i not in record.annotations):
            label = np.zeros(frame.shape[:2], dtype=np.uint8)
        else:
            new = new_objects_mask(record, i, seen)
            if new is not None and new.shape != frame.shape[:2]:
                raise DatasetError(f"{record.annotations[i]}: mask is {new.shape[0]}x{new.shape[1]} but frame "
                                   f"{record.frames[i]} is {frame.shape[0]}x{frame.shape[1]}")
            if not seen:
                if new is None:
                    raise DatasetError(f"{record.annotations.get(i)}: first annotation of '{record.name}' holds no object")
                probs = session.add_objects(frame, new)
            else:
                _sync(device)
                t0 = time.perf_counter()
                probs = session.step(frame, new)
                _sync(device)
                elapsed += time.perf_counter() - t0
                timed += 1
            if new is not None:
                seen.update(int(o) for o in np.unique(new) if o)
            label = probs.argmax(0).to(torch.uint8).cpu().numpy()
        if results_dir is not None and i in write:
            write_mask(results_dir / record.name / f"{record.frame_names[i]}.png", label)
        if i in gt_frames:
            scores.add(label, load_annotation(record, gt[i]))
    if metric is not None and scores.object_ids:
        metric.add_object_scores(*scores.rows(), video=record.name, object_ids=scores.object_ids)
    return VideoSpeed(record.name, timed + 1, elapsed, peak_memory_mb(device))


def score_copy_baseline(record: VideoRecord, metric: JFMetric, exclude_last: bool = True) -> None:
    """The trivial baseline: the first-frame mask copied to every frame."""
    first = min(record.annotations)
    ref = load_annotation(record, record.annotations[first])
    gt = record.gt_annotations or record.annotations
    scores = VideoScores(object_ids_to_score(record))
    for i in scored_gt_frames(record, exclude_last):
        scores.add(ref, load_annotation(record, gt[i]))
    if scores.object_ids:
        metric.add_object_scores(*scores.rows(), video=record.name, object_ids=scores.object_ids)


def score_results_dir(records: list[VideoRecord], results_dir: Path, metric: JFMetric, exclude_last: bool = True) -> None:
    """Score PNGs already in ``results_dir`` (score_only): a missing or mis-sized result names the file."""
    for record in records:
        gt = record.gt_annotations or record.annotations
        scores = VideoScores(object_ids_to_score(record))
        for i in scored_gt_frames(record, exclude_last):
            path = results_dir / record.name / f"{record.frame_names[i]}.png"
            if not path.is_file():
                raise DatasetError(f"{path}: result missing (needed to score frame {i} of '{record.name}')")
            pred, true = read_mask(path), load_annotation(record, gt[i])
            if pred.shape != true.shape:
                raise DatasetError(f"{path}: result is {pred.shape[0]}x{pred.shape[1]} but ground truth {gt[i]} is "
                                   f"{true.shape[0]}x{true.shape[1]}")
            scores.add(pred, true)
        if scores.object_ids:
            metric.add_object_scores(*scores.rows(), video=record.name, object_ids=scores.object_ids)
