"""Benchmark scoring protocols: which frames score which objects, and the one way frames are scored.

A ``ScorePlan`` says, for one video, which frame scores which object in which slot of its per-frame row,
as the benchmark's official toolkit does (davis2017-evaluation ac7c43f, lvos-evaluation v1 9ff733c,
AFB-URR ``score_longvideo.py``):
- ``davis``: objects 1..max id of the first annotation, every ground-truth frame but the first and the last;
- ``ltv``: one object (labels binarised), every annotated frame but the first;
- ``lvos``: each object on frame numbers ``range(start, end, 5)`` of its meta frame range, in a row of
  ``frame_nums`` slots (slots no frame fills stay 0 and count, as in the toolkit); seen / unseen videos.

A ``VideoScorer`` fills a plan frame by frame (J and F of ``region_boundary``) from whatever gives the
predicted masks: the model while it streams (evaluation, validation during training) or PNGs on disk
(``score_only``, and the toolkit mirrors ``score_davis_results`` / ``score_ltv`` / ``score_lvos`` below).
A finished scorer goes into ``JFMetric``, which reduces per object and averages as the toolkit does.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from mavos.data.io import atomic_save, read_any_mask, read_mask
from mavos.data.listing import read_json, read_lines
from mavos.data.records import DatasetError, VideoRecord
from mavos.metrics.frame_scores import VOID_ID, FrameScore, score_frame
from mavos.metrics.jf import GLOBAL_COLUMNS, LVOS_GLOBAL_COLUMNS, JFMetric, lvos_variation
from mavos.metrics.region_boundary import DEFAULT_BOUND_TH

PROTOCOLS = ("davis", "ltv", "lvos", "none")
SEQUENCE_COLUMNS: tuple[str, ...] = ("Sequence", "J-Mean", "F-Mean")
LVOS_SEQUENCE_COLUMNS: tuple[str, ...] = ("Sequence", "J-Mean", "F-Mean", "V-Mean")
LVOS_FRAME_STEP = 5  # lvos-evaluation v1 scores every 5th frame number of an object's range

__all__ = ["ScorePlan", "VideoScorer", "plan_for_record", "ground_truth_path", "read_ground_truth",
           "score_saved_video", "score_davis_results", "score_ltv", "score_lvos", "write_davis_csvs",
           "write_lvos_csvs", "lvos_variation", "GLOBAL_COLUMNS", "LVOS_GLOBAL_COLUMNS"]


# ---------------------------------------------------------------- frame selection rules

def davis_frame_selection(num_frames: int) -> np.ndarray:
    """(num_frames,) bool: DAVIS semi-supervised scores every frame but the first and the last."""
    keep = np.ones(num_frames, dtype=bool)
    keep[:1] = False
    keep[-1:] = False
    return keep


def ltv_frame_selection(num_annotated: int) -> np.ndarray:
    """(num_annotated,) bool over the annotated frames: Long-Time Video scores all but the first."""
    keep = np.ones(num_annotated, dtype=bool)
    keep[:1] = False
    return keep


def lvos_frame_numbers(start: int, end: int) -> list[int]:
    """Frame numbers lvos-evaluation v1 scores for one object: ``range(start, end, 5)`` (end excluded)."""
    return list(range(int(start), int(end), LVOS_FRAME_STEP))


# ---------------------------------------------------------------- plans and the scorer

@dataclass
class ScorePlan:
    """Which frames score which objects of one video.

    objects: object ids in table order. slots: object -> length of its per-frame score row.
    frames: frame index -> [(object id, slot)]. binarize: single-object benchmark (any id > 0 is object 1,
    in predictions and ground truth). unseen: LVOS's unseen-category group.
    """

    video: str
    objects: list[int]
    slots: dict[int, int]
    frames: dict[int, list[tuple[int, int]]]
    binarize: bool = False
    unseen: bool = False

    @classmethod
    def dense(cls, video: str, objects: list[int], frames: Sequence[int], **kw) -> "ScorePlan":
        """Every object scored on every frame of ``frames`` (DAVIS, LTV)."""
        return cls(video, list(objects), {o: len(frames) for o in objects},
                   {int(f): [(o, k) for o in objects] for k, f in enumerate(frames)}, **kw)

    @property
    def frame_indices(self) -> list[int]:
        return sorted(self.frames)


@dataclass
class VideoScorer:
    """Per-object rows of per-frame J and F for one video, filled frame by frame following a plan."""

    plan: ScorePlan
    bound_th: float = DEFAULT_BOUND_TH
    j: dict[int, np.ndarray] = field(init=False)
    f: dict[int, np.ndarray] = field(init=False)
    filled: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.j = {o: np.zeros(self.plan.slots[o]) for o in self.plan.objects}
        self.f = {o: np.zeros(self.plan.slots[o]) for o in self.plan.objects}

    def wants(self, index: int) -> bool:
        return index in self.plan.frames

    def add(self, index: int, pred: np.ndarray, gt: np.ndarray, source: str | Path = "") -> None:
        """Score frame ``index``: ``pred`` / ``gt`` (H, W) ids; 255 in ``gt`` (void) is background."""
        if index in self.plan.frames:
            self.record(index, score_frame(pred, gt, self.plan.frames[index], binarize=self.plan.binarize,
                                           bound_th=self.bound_th, index=index, video=self.plan.video,
                                           source=source))

    def record(self, index: int, scores: Iterable[FrameScore]) -> None:
        """Keep frame ``index``'s scores (``score_frame``'s, computed here or in evaluation's writer process)."""
        for obj, slot, j, f in scores:
            self.j[obj][slot] = j
            self.f[obj][slot] = f
        self.filled += 1

    def rows(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        return [self.j[o] for o in self.plan.objects], [self.f[o] for o in self.plan.objects]


def scored_gt_frames(record: VideoRecord, exclude_last: bool = True) -> list[int]:
    """Frames with ground truth that count (DAVIS / LTV): all but the first annotated (and the video's last)."""
    gt = record.gt_annotations or record.annotations
    frames = sorted(gt)
    if record.scored_frames is not None:
        allowed = set(record.scored_frames)
        frames = [i for i in frames if i in allowed]
    first = min(record.annotations) if record.annotations else 0
    frames = [i for i in frames if i != first]
    if exclude_last and frames and frames[-1] == len(record) - 1:
        frames = frames[:-1]
    return frames


def plan_for_record(record: VideoRecord, protocol: str, unseen: bool = False) -> ScorePlan | None:
    """The scoring plan of a benchmark video under ``protocol`` (None for ``none``: server-scored sets)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"data.protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == "none":
        return None
    if protocol == "lvos":
        ranges = record.meta.get("frame_ranges") or {}
        if not ranges:
            raise DatasetError(f"video '{record.name}': the LVOS protocol needs per-object frame ranges "
                               f"(valid_meta.json in the split folder)")
        if "truncated_from" in record.meta:
            ranges = truncated_lvos_ranges(ranges, int(record.frame_names[-1]))
        return lvos_plan(record.name, record.frame_names, ranges, unseen or bool(record.meta.get("unseen")))
    objects = list(range(1, max(record.object_ids) + 1)) if record.object_ids else []
    if protocol == "ltv" or record.meta.get("binarize"):
        return ScorePlan.dense(record.name, [1] if objects else [], scored_gt_frames(record, exclude_last=False),
                               binarize=True)
    return ScorePlan.dense(record.name, objects, scored_gt_frames(record, exclude_last=True))


def truncated_lvos_ranges(ranges: dict, last_number: int) -> dict:
    """LVOS frame ranges of a video cut after frame number ``last_number`` (``max_frames``: bounded validation,
    not the benchmark's score): each object keeps the scored frames that are left, as many slots as those
    (the cut frames are not scored, rather than counted 0), and an object with none left is dropped."""
    kept = {}
    for key, rng in ranges.items():
        numbers = [n for n in lvos_frame_numbers(rng["start"], rng["end"]) if n <= last_number]
        if numbers:
            kept[key] = {**rng, "end": numbers[-1] + 1, "frame_nums": len(numbers)}
    return kept


def lvos_plan(video: str, frame_names: Sequence[str], ranges: dict, unseen: bool = False,
              source: str | Path = "meta file") -> ScorePlan:
    """LVOS v1: object k on ``range(start, end, 5)`` in a row of ``frame_nums`` slots (meta order)."""
    by_number = {}
    for i, name in enumerate(frame_names):
        try:
            by_number[int(name)] = i
        except ValueError as e:
            raise DatasetError(f"video '{video}': LVOS frame names must be numbers, got {name!r}") from e
    objects, slots, frames = [], {}, {}
    for key, rng in ranges.items():
        try:
            obj, start, end, count = int(key), int(rng["start"]), int(rng["end"]), int(rng["frame_nums"])
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{source}: video '{video}' object {key!r} has a malformed frame_range ({e})") from e
        numbers = lvos_frame_numbers(start, end)
        if len(numbers) > count:
            raise DatasetError(f"{source}: video '{video}' object {key}: range(start, end, 5) holds "
                               f"{len(numbers)} frames, more than frame_nums={count}")
        objects.append(obj)
        slots[obj] = count
        for slot, number in enumerate(numbers):
            if number not in by_number:
                raise DatasetError(f"{source}: video '{video}' object {key} is scored on frame {number:08d}, "
                                   f"which the video does not have")
            frames.setdefault(by_number[number], []).append((obj, slot))
    return ScorePlan(video, objects, slots, frames, unseen=unseen)


# ---------------------------------------------------------------- reading masks

def ground_truth_path(record: VideoRecord, index: int) -> Path:
    """The ground-truth file of frame ``index`` (dense annotations where the record has them)."""
    path = (record.gt_annotations or record.annotations).get(index)
    if path is None:
        raise DatasetError(f"video '{record.name}': frame {index} ({record.frame_names[index]}) has no ground truth")
    return Path(path)


def read_ground_truth(record: VideoRecord, index: int) -> np.ndarray:
    """The ground truth of frame ``index`` (dense annotations where the record has them)."""
    path = ground_truth_path(record, index)
    return read_any_mask(path, bool(record.meta.get("user_masks")))


def read_result(results_dir: Path, video: str, stem: str, gt_path: str | Path, gt_shape: tuple[int, ...]) -> np.ndarray:
    """A result PNG; missing or of another size than its ground truth: a DatasetError naming both files."""
    path = Path(results_dir) / video / f"{stem}.png"
    if not path.is_file():
        raise DatasetError(f"{path}: result mask is missing (expected one PNG per scored frame, named like "
                           f"{Path(gt_path).name})")
    mask = read_mask(path)
    if mask.shape != gt_shape:
        raise DatasetError(f"{path}: result is {mask.shape[1]}x{mask.shape[0]} (WxH) but its ground truth {gt_path} "
                           f"is {gt_shape[1]}x{gt_shape[0]}")
    return mask


def score_saved_video(record: VideoRecord, plan: ScorePlan, results_dir: str | Path) -> VideoScorer:
    """Score the PNGs a run wrote for one video (``score_only``)."""
    scorer = VideoScorer(plan)
    gt = record.gt_annotations or record.annotations
    for index in plan.frame_indices:
        truth = read_ground_truth(record, index)
        pred = read_result(Path(results_dir), record.name, record.frame_names[index], gt[index], truth.shape)
        scorer.add(index, pred, truth)
    return scorer


# ---------------------------------------------------------------- toolkit mirrors over GT folders

def _annotation_files(folder: Path, what: str) -> list[Path]:
    """The PNGs of one video's annotation folder, sorted by name like the toolkits' sorted glob."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: {what} folder does not exist")
    files = sorted((p for p in folder.iterdir() if p.suffix == ".png" and not p.name.startswith(".")),
                   key=lambda p: p.name)
    if not files:
        raise DatasetError(f"{folder}: {what} folder holds no PNG annotation")
    return files


def _score_folder(metric: JFMetric, video: str, gt_files: list[Path], keep: np.ndarray, results_dir: Path,
                  binarize: bool = False, bound_th: float = DEFAULT_BOUND_TH) -> None:
    """Score one densely listed video: objects = max id of the first GT; results hold no other ids."""
    first = read_mask(gt_files[0])
    objects = [1] if binarize else list(range(1, int(np.where(first == VOID_ID, 0, first).max()) + 1))
    scored = [i for i, k in enumerate(keep) if k]
    scorer = VideoScorer(ScorePlan.dense(video, objects, scored, binarize=binarize), bound_th)
    for i in scored:
        truth = read_mask(gt_files[i])
        if truth.shape != first.shape:
            raise DatasetError(f"{gt_files[i]}: ground truth is {truth.shape[1]}x{truth.shape[0]} (WxH) but "
                               f"{gt_files[0]} is {first.shape[1]}x{first.shape[0]}")
        pred = read_result(results_dir, video, gt_files[i].stem, gt_files[i], first.shape)
        if not binarize and pred.size and pred.max() > len(objects):
            raise DatasetError(f"{results_dir / video}: results hold object id {int(pred.max())} but the first "
                               f"ground-truth frame {gt_files[0]} has only {len(objects)} object(s)")
        scorer.add(i, pred, truth)
    metric.update(scorer)


def davis_sequences(davis_root: str | Path, split: str) -> list[str]:
    """Sequence names of ``ImageSets/2017/<split>.txt``."""
    return read_lines(Path(davis_root) / "ImageSets" / "2017" / f"{split}.txt", f"DAVIS 2017 '{split}' sequence list")


def score_davis_results(davis_root: str | Path, split: str, results_dir: str | Path, resolution: str = "480p",
                        sequences: Sequence[str] | None = None, bound_th: float = DEFAULT_BOUND_TH,
                        ) -> tuple[dict[str, float], list[dict]]:
    """DAVIS 2017 semi-supervised scores of ``<results_dir>/<seq>/<frame>.png`` (the toolkit's rules).

    Returns the global row (``GLOBAL_COLUMNS``) and one row per object (``Sequence`` = ``<seq>_<id>``).
    """
    davis_root, results_dir = Path(davis_root), Path(results_dir)
    names = list(sequences) if sequences is not None else davis_sequences(davis_root, split)
    metric = JFMetric("davis")
    for video in names:
        gt_files = _annotation_files(davis_root / "Annotations" / resolution / video, f"DAVIS annotation ('{video}')")
        _score_folder(metric, video, gt_files, davis_frame_selection(len(gt_files)), results_dir,
                      bound_th=bound_th)
    return metric.compute(), metric.per_object_rows()


def score_ltv(ltv_root: str | Path, results_dir: str | Path, sequence_list: str = "val.txt",
              bound_th: float = DEFAULT_BOUND_TH) -> tuple[dict[str, float], list[dict]]:
    """Long-Time Video scores: every annotated frame of ``Annotations/<seq>`` but the first.

    ``sequence_list`` is relative to the root (AFB-URR: ``val.txt``; MAVOS: ``ImageSets/val.txt``, tried when
    the first is absent). A 0/255 binary result is object 1, as in AFB-URR.
    """
    ltv_root, results_dir = Path(ltv_root), Path(results_dir)
    list_path = ltv_root / sequence_list
    if not list_path.is_file() and (ltv_root / "ImageSets" / sequence_list).is_file():
        list_path = ltv_root / "ImageSets" / sequence_list
    metric = JFMetric("ltv")
    for video in read_lines(list_path, "Long-Time Video sequence list"):
        gt_files = _annotation_files(ltv_root / "Annotations" / video, f"Long-Time Video annotation ('{video}')")
        _score_folder(metric, video, gt_files, ltv_frame_selection(len(gt_files)), results_dir, binarize=True,
                      bound_th=bound_th)
    return metric.compute(), metric.per_object_rows()


def read_unseen_videos(unseen_videos: str | Path | Iterable[str]) -> set[str]:
    """LVOS's unseen-category videos: the toolkit's ``unseen_videos.txt`` (a path) or the names themselves."""
    if isinstance(unseen_videos, (str, Path)):
        return set(read_lines(Path(unseen_videos), "LVOS unseen-video list"))
    return {str(v).strip() for v in unseen_videos}


def score_lvos(lvos_root: str | Path, results_dir: str | Path, unseen_videos: str | Path | Iterable[str],
               meta_file: str = "valid_meta.json", annotations: str = "Annotations",
               bound_th: float = DEFAULT_BOUND_TH) -> tuple[dict[str, float], list[dict]]:
    """LVOS v1 (lvos-evaluation 9ff733c) scores of ``<results_dir>/<video>/<8-digit>.png``.

    lvos_root: the split folder holding ``meta_file`` and ``annotations/<video>/`` (dense GT). J-Mean = mean of
    the seen and unseen groups' J, likewise F and V; J&F-Mean = mean of J-seen, J-unseen, F-seen, F-unseen
    (one group alone where a subset has no video of the other). Rows: ``Sequence`` = ``<video>_<k>``.
    """
    lvos_root, results_dir = Path(lvos_root), Path(results_dir)
    meta_path = lvos_root / meta_file
    videos = read_json(meta_path, "LVOS meta file").get("videos")
    if not isinstance(videos, dict):
        raise DatasetError(f"{meta_path}: expected a top-level 'videos' object")
    unseen = read_unseen_videos(unseen_videos)
    metric = JFMetric("lvos")
    for video in sorted(videos):
        objects = (videos[video] or {}).get("objects") or {}
        ranges = {}
        for key, obj in objects.items():
            if not isinstance(obj, dict) or "frame_range" not in obj:
                raise DatasetError(f"{meta_path}: video '{video}' object {key!r} has a malformed frame_range "
                                   f"('frame_range' missing)")
            ranges[key] = obj["frame_range"]
        numbers = sorted({n for r in ranges.values() if isinstance(r, dict) and {"start", "end"} <= set(r)
                          for n in lvos_frame_numbers(r["start"], r["end"])})
        plan = lvos_plan(video, [f"{n:08d}" for n in numbers], ranges, video in unseen, meta_path)
        scorer = VideoScorer(plan, bound_th)
        for index, number in enumerate(numbers):
            gt_path = lvos_root / annotations / video / f"{number:08d}.png"
            if not gt_path.is_file():
                raise DatasetError(f"{gt_path}: LVOS ground truth for a scored frame is missing")
            truth = read_mask(gt_path)
            scorer.add(index, read_result(results_dir, video, f"{number:08d}", gt_path, truth.shape), truth)
        metric.update(scorer)
    return metric.compute(), metric.per_object_rows()


# ---------------------------------------------------------------- CSV tables

def _format_cell(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else "%.3f" % value
    return str(value)


def write_table_csv(path: str | Path, columns: Sequence[str], rows: Sequence[dict]) -> Path:
    """Write ``rows`` (dicts holding at least ``columns``) as a CSV like pandas' ``to_csv(float_format="%.3f")``."""
    path = Path(path)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_format_cell(row[c]) for c in columns])
    text = buffer.getvalue()
    atomic_save(lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), path)
    return path


def write_davis_csvs(results_dir: str | Path, split: str, global_row: dict, per_sequence_rows: Sequence[dict]
                     ) -> tuple[Path, Path]:
    """``global_results-<split>.csv`` and ``per-sequence_results-<split>.csv`` in ``results_dir``, as the toolkit."""
    results_dir = Path(results_dir)
    g = write_table_csv(results_dir / f"global_results-{split}.csv", GLOBAL_COLUMNS, [global_row])
    s = write_table_csv(results_dir / f"per-sequence_results-{split}.csv", SEQUENCE_COLUMNS, per_sequence_rows)
    return g, s


def write_lvos_csvs(results_dir: str | Path, split: str, global_row: dict, per_sequence_rows: Sequence[dict]
                    ) -> tuple[Path, Path]:
    """The LVOS v1 tables (with seen/unseen and V columns), named as :func:`write_davis_csvs`."""
    results_dir = Path(results_dir)
    g = write_table_csv(results_dir / f"global_results-{split}.csv", LVOS_GLOBAL_COLUMNS, [global_row])
    s = write_table_csv(results_dir / f"per-sequence_results-{split}.csv", LVOS_SEQUENCE_COLUMNS, per_sequence_rows)
    return g, s


def write_protocol_csvs(results_dir: str | Path, split: str, protocol: str, global_row: dict, rows: list[dict]
                        ) -> None:
    """The toolkit's CSV pair for ``protocol`` (the global row and per-object rows of a gathered ``JFMetric``)."""
    write = write_lvos_csvs if protocol == "lvos" else write_davis_csvs
    write(results_dir, split, global_row, rows)
