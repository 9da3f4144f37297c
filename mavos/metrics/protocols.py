"""Benchmark scoring protocols: which frames and objects count, read from result PNGs on disk.

Each ``score_*`` reads ground truth and ``<results>/<video>/<frame>.png`` and follows its official
toolkit's rules (sources in docs: davis2017-evaluation ac7c43f, lvos-evaluation v1 9ff733c, AFB-URR
``score_longvideo.py``); a missing or misshapen result is a DatasetError naming the file. The
``write_*_csvs`` functions write the toolkits' CSV tables (floats as ``%.3f``, NaN as an empty cell).
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from mavos.data.io import atomic_save, read_mask
from mavos.data.listing import read_json, read_lines
from mavos.data.records import DatasetError
from mavos.metrics.jf import GLOBAL_COLUMNS, VOID_ID, JFMetric
from mavos.metrics.region_boundary import DEFAULT_BOUND_TH, boundary_measure, region_similarity

SEQUENCE_COLUMNS: tuple[str, ...] = ("Sequence", "J-Mean", "F-Mean")
LVOS_GLOBAL_COLUMNS: tuple[str, ...] = (
    "J&F-Mean", "J-Mean", "J-seen-Mean", "J-unseen-Mean", "F-Mean", "F-seen-Mean", "F-unseen-Mean",
    "V-Mean", "V-seen-Mean", "V-unseen-Mean",
)
LVOS_SEQUENCE_COLUMNS: tuple[str, ...] = ("Sequence", "J-Mean", "F-Mean", "V-Mean")
LVOS_FRAME_STEP = 5  # lvos-evaluation v1 scores every 5th frame number of an object's range


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


# ---------------------------------------------------------------- reading masks

def _annotation_files(folder: Path, what: str) -> list[Path]:
    """The PNGs of one video's annotation folder, sorted by name like the toolkits' sorted glob."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: {what} folder does not exist")
    files = sorted((p for p in folder.iterdir() if p.suffix == ".png" and not p.name.startswith(".")),
                   key=lambda p: p.name)
    if not files:
        raise DatasetError(f"{folder}: {what} folder holds no PNG annotation")
    return files


def _read_gt(path: Path) -> np.ndarray:
    """A ground-truth mask with void (255) turned into background."""
    mask = read_mask(path)
    return np.where(mask == VOID_ID, 0, mask).astype(np.uint8)


def _read_result(results_dir: Path, video: str, stem: str, gt_path: Path, gt_shape: tuple[int, int]) -> np.ndarray:
    path = results_dir / video / f"{stem}.png"
    if not path.is_file():
        raise DatasetError(f"{path}: result mask is missing (expected one PNG per scored frame, named like {gt_path.name})")
    mask = read_mask(path)
    if mask.shape != gt_shape:
        raise DatasetError(
            f"{path}: result is {mask.shape[1]}x{mask.shape[0]} (WxH) but its ground truth {gt_path} is "
            f"{gt_shape[1]}x{gt_shape[0]}"
        )
    return mask


def _score_video(
    metric: JFMetric,
    video: str,
    gt_files: list[Path],
    keep: np.ndarray,
    results_dir: Path,
    result_255_is_object: bool = False,
) -> None:
    """Score one densely listed video: objects = max id of the first GT, results zero-padded."""
    first = _read_gt(gt_files[0])
    num_objects = int(first.max())
    scored = [p for p, k in zip(gt_files, keep) if k]
    gt_masks = [_read_gt(p) for p in scored]
    for p, g in zip(scored, gt_masks):
        if g.shape != first.shape:
            raise DatasetError(f"{p}: ground truth is {g.shape[1]}x{g.shape[0]} (WxH) but {gt_files[0]} is "
                               f"{first.shape[1]}x{first.shape[0]}")
    gts = np.stack(gt_masks) if scored else np.zeros((0, *first.shape), np.uint8)
    results = np.stack([_read_result(results_dir, video, p.stem, p, first.shape) for p in scored]) if scored \
        else np.zeros_like(gts)
    if result_255_is_object and results.size and results.max() == VOID_ID:
        results[results == VOID_ID] = 1  # AFB-URR: a binary result saved as 0/255 is object 1
    if results.size and results.max() > num_objects:
        raise DatasetError(
            f"{results_dir / video}: results hold object id {int(results.max())} but the first ground-truth frame "
            f"{gt_files[0]} has only {num_objects} object(s)"
        )
    metric.update(results, gts, num_objects=num_objects, video=video)


# ---------------------------------------------------------------- DAVIS 2017

def davis_sequences(davis_root: str | Path, split: str) -> list[str]:
    """Sequence names of ``ImageSets/2017/<split>.txt``."""
    return read_lines(Path(davis_root) / "ImageSets" / "2017" / f"{split}.txt", f"DAVIS 2017 '{split}' sequence list")


def score_davis_results(
    davis_root: str | Path,
    split: str,
    results_dir: str | Path,
    resolution: str = "480p",
    sequences: Sequence[str] | None = None,
    bound_th: float = DEFAULT_BOUND_TH,
) -> tuple[dict[str, float], list[dict]]:
    """DAVIS 2017 semi-supervised scores of ``<results_dir>/<seq>/<frame>.png``.

    Returns the global row (``GLOBAL_COLUMNS``) and one row per object (``Sequence`` = ``<seq>_<id>``,
    J-Mean, F-Mean and the other statistics), in sequence-list order. ``sequences`` restricts the
    split's list (default: all of it).
    """
    davis_root, results_dir = Path(davis_root), Path(results_dir)
    names = list(sequences) if sequences is not None else davis_sequences(davis_root, split)
    metric = JFMetric(bound_th=bound_th)
    for video in names:
        gt_files = _annotation_files(davis_root / "Annotations" / resolution / video, f"DAVIS annotation ('{video}')")
        _score_video(metric, video, gt_files, davis_frame_selection(len(gt_files)), results_dir)
    return metric.compute(), metric.per_object_rows()


# ---------------------------------------------------------------- Long-Time Video (AFB-URR)

def score_ltv(
    ltv_root: str | Path,
    results_dir: str | Path,
    sequence_list: str = "val.txt",
    bound_th: float = DEFAULT_BOUND_TH,
) -> tuple[dict[str, float], list[dict]]:
    """Long-Time Video scores: every annotated frame of ``Annotations/<seq>`` but the first.

    ``sequence_list`` is relative to the root (AFB-URR: ``val.txt``; MAVOS: ``ImageSets/val.txt``,
    tried when the first is absent). As in AFB-URR, a result whose largest value is 255 is read as
    a 0/255 binary mask of object 1. Rows and columns as :func:`score_davis_results`.
    """
    ltv_root, results_dir = Path(ltv_root), Path(results_dir)
    list_path = ltv_root / sequence_list
    if not list_path.is_file() and (ltv_root / "ImageSets" / sequence_list).is_file():
        list_path = ltv_root / "ImageSets" / sequence_list
    metric = JFMetric(bound_th=bound_th)
    for video in read_lines(list_path, "Long-Time Video sequence list"):
        gt_files = _annotation_files(ltv_root / "Annotations" / video, f"Long-Time Video annotation ('{video}')")
        _score_video(metric, video, gt_files, ltv_frame_selection(len(gt_files)), results_dir,
                     result_255_is_object=True)
    return metric.compute(), metric.per_object_rows()


# ---------------------------------------------------------------- LVOS v1

def lvos_variation(j_values: np.ndarray, f_values: np.ndarray) -> float:
    """LVOS's V of one object: RMS deviation of per-frame (J+F)/2 from its mean (variance rounded to 4 places)."""
    jf = (np.asarray(j_values, np.float64) + np.asarray(f_values, np.float64)) / 2
    if jf.size == 0:
        return float("nan")
    variance = np.nansum((np.nanmean(jf) - jf) ** 2) / jf.size
    return math.sqrt(round(float(variance), 4))


def _read_unseen(unseen_videos: str | Path | Iterable[str]) -> set[str]:
    if isinstance(unseen_videos, (str, Path)):
        return set(read_lines(Path(unseen_videos), "LVOS unseen-video list"))
    return {str(v).strip() for v in unseen_videos}


def _lvos_video_scores(
    lvos_root: Path, annotations: str, results_dir: Path, video: str, objects: dict, meta_path: Path, bound_th: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per object (meta order): per-frame J and F arrays of length ``frame_nums``.

    As in the v1 toolkit, slots beyond the frames of ``range(start, end, 5)`` stay 0 and count.
    """
    plans = []  # (object id, frame numbers, j, f)
    for key, obj in objects.items():
        try:
            rng = obj["frame_range"]
            numbers = lvos_frame_numbers(int(rng["start"]), int(rng["end"]))
            slots = int(rng["frame_nums"])
            obj_id = int(key)
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{meta_path}: video '{video}' object {key!r} has a malformed frame_range ({e})") from e
        if len(numbers) > slots:
            raise DatasetError(f"{meta_path}: video '{video}' object {key}: range(start, end, 5) holds "
                               f"{len(numbers)} frames, more than frame_nums={slots}")
        plans.append((obj_id, numbers, np.zeros(slots), np.zeros(slots)))
    wanted: dict[int, list[tuple[int, int]]] = {}  # frame number -> [(plan index, slot)]
    for p, (_, numbers, _, _) in enumerate(plans):
        for slot, number in enumerate(numbers):
            wanted.setdefault(number, []).append((p, slot))
    for number in sorted(wanted):
        stem = f"{number:08d}"
        gt_path = lvos_root / annotations / video / f"{stem}.png"
        if not gt_path.is_file():
            raise DatasetError(f"{gt_path}: LVOS ground truth for a scored frame is missing")
        gt = read_mask(gt_path)
        result = _read_result(results_dir, video, stem, gt_path, gt.shape)
        for p, slot in wanted[number]:
            obj_id, _, j, f = plans[p]
            j[slot] = region_similarity(result == obj_id, gt == obj_id)
            f[slot] = boundary_measure(result == obj_id, gt == obj_id, bound_th=bound_th)
    return [(j, f) for _, _, j, f in plans]


def score_lvos(
    lvos_root: str | Path,
    results_dir: str | Path,
    unseen_videos: str | Path | Iterable[str],
    meta_file: str = "valid_meta.json",
    annotations: str = "Annotations",
    bound_th: float = DEFAULT_BOUND_TH,
) -> tuple[dict[str, float], list[dict]]:
    """LVOS v1 (lvos-evaluation 9ff733c) scores of ``<results_dir>/<video>/<8-digit>.png``.

    lvos_root: the split folder holding ``meta_file`` and ``annotations/<video>/`` (dense GT).
    unseen_videos: the toolkit's ``unseen_videos.txt`` (path) or the names themselves.
    Each object is scored on ``range(start, end, 5)`` of its meta frame range. Group means are over
    objects of seen / unseen videos; J-Mean = mean of the two groups' J, likewise F and V, and
    J&F-Mean = mean of J-seen, J-unseen, F-seen, F-unseen. Where one group has no object (a subset
    of the split) the toolkit would print NaN; here the other group alone gives the number.
    Rows: ``Sequence`` = ``<video>_<k>`` with k the object's 1-based position in the meta file,
    ``object_id``, ``J-Mean``, ``F-Mean``, ``V-Mean``, ``unseen``.
    """
    lvos_root, results_dir = Path(lvos_root), Path(results_dir)
    meta_path = lvos_root / meta_file
    videos = read_json(meta_path, "LVOS meta file").get("videos")
    if not isinstance(videos, dict):
        raise DatasetError(f"{meta_path}: expected a top-level 'videos' object")
    unseen = _read_unseen(unseen_videos)
    rows = []
    for video in sorted(videos):
        objects = (videos[video] or {}).get("objects") or {}
        scores = _lvos_video_scores(lvos_root, annotations, results_dir, video, objects, meta_path, bound_th)
        for k, ((j, f), key) in enumerate(zip(scores, objects)):
            rows.append({
                "Sequence": f"{video}_{k + 1}", "video": video, "object_id": int(key),
                "J-Mean": float(np.nanmean(j)) if j.size else float("nan"),
                "F-Mean": float(np.nanmean(f)) if f.size else float("nan"),
                "V-Mean": lvos_variation(j, f), "unseen": video in unseen,
            })
    return _lvos_global_row(rows), rows


def _lvos_global_row(rows: list[dict]) -> dict[str, float]:
    def group_mean(column: str, unseen: bool) -> float:
        values = [r[column] for r in rows if r["unseen"] == unseen]
        return float(np.mean(values)) if values else float("nan")

    def over_groups(*values: float) -> float:
        present = [v for v in values if not math.isnan(v)]
        return float(np.mean(present)) if present else float("nan")

    out = {}
    for m in ("J", "F", "V"):
        seen, unseen = group_mean(f"{m}-Mean", False), group_mean(f"{m}-Mean", True)
        out[f"{m}-seen-Mean"], out[f"{m}-unseen-Mean"] = seen, unseen
        out[f"{m}-Mean"] = over_groups(seen, unseen)
    out["J&F-Mean"] = over_groups(out["J-seen-Mean"], out["F-seen-Mean"], out["J-unseen-Mean"], out["F-unseen-Mean"])
    return {c: out[c] for c in LVOS_GLOBAL_COLUMNS}


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


def write_davis_csvs(
    results_dir: str | Path, split: str, global_row: dict, per_sequence_rows: Sequence[dict]
) -> tuple[Path, Path]:
    """``global_results-<split>.csv`` and ``per-sequence_results-<split>.csv`` in ``results_dir``, as the toolkit."""
    results_dir = Path(results_dir)
    g = write_table_csv(results_dir / f"global_results-{split}.csv", GLOBAL_COLUMNS, [global_row])
    s = write_table_csv(results_dir / f"per-sequence_results-{split}.csv", SEQUENCE_COLUMNS, per_sequence_rows)
    return g, s


def write_lvos_csvs(
    results_dir: str | Path, split: str, global_row: dict, per_sequence_rows: Sequence[dict]
) -> tuple[Path, Path]:
    """The LVOS v1 tables (with seen/unseen and V columns), named as :func:`write_davis_csvs`."""
    results_dir = Path(results_dir)
    g = write_table_csv(results_dir / f"global_results-{split}.csv", LVOS_GLOBAL_COLUMNS, [global_row])
    s = write_table_csv(results_dir / f"per-sequence_results-{split}.csv", LVOS_SEQUENCE_COLUMNS, per_sequence_rows)
    return g, s
