"""evaluate.py's body: build the checkpoint's network and the benchmark, segment, score, report, resume.

Videos are sharded over ``torchrun`` ranks without padding (each run and scored exactly once; a rank may get
none). J&F states gather across ranks on the process group's own backend (CUDA tensors on NCCL); per-video
speeds gather as Python objects on a gloo group. A re-run into the same ``results_dir`` skips the videos a
previous run finished with the same checkpoint and settings (``resume=true``): their scores are read back
from ``<results_dir>/.progress/<video>.json``, written atomically after each video.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import warnings
import zipfile
from pathlib import Path

import hydra
import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from mavos.checkpoints.loading import (build_checkpoint_network, load_state, network_state, read_checkpoint,
                                       resolve_network_config)
from mavos.data.io import atomic_save, read_mask
from mavos.data.records import DatasetError, VideoRecord, select_videos
from mavos.data.video_file import frame_reader
from mavos.evaluation.evaluator import (VideoResult, copy_first_frame_scores, device_name, result_frames,
                                       segment_video)
from mavos.inference.session import check_session_config
from mavos.metrics.jf import JFMetric
from mavos.metrics.protocols import (PROTOCOLS, ScorePlan, VideoScorer, plan_for_record, score_saved_video,
                                     write_protocol_csvs)
from mavos.registry import ConfigError, describe

log = logging.getLogger(__name__)

PROGRESS_DIR = ".progress"
ARCHITECTURE_GROUPS = ("model", "memory", "backbone")


# ---------------------------------------------------------------- devices and ranks

def pick_device(name: str) -> torch.device:
    """``auto``: this rank's GPU (``LOCAL_RANK`` under torchrun) when CUDA is there, else the CPU. A device that
    is not one, or a GPU this machine does not have, is a ConfigError naming ``device``."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={name!r}: expected auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name}: no CUDA GPU is usable here (torch.cuda.is_available() is false); "
                              f"use device=cpu or device=auto")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise ConfigError(f"device={device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ConfigError(f"device={name!r}: evaluation runs on cpu or cuda")
    return device


def check_evaluation_config(cfg: DictConfig) -> None:
    """What evaluate.py refuses before it loads anything, each naming its key: a data key still to be given
    (``data.mask`` of data=video), session settings that cannot be meant, a bad ``videos`` / ``max_frames``, and a
    ``results_dir`` under or at a file."""
    missing = [k for k in cfg.data if OmegaConf.is_missing(cfg.data, k)]
    if missing:
        raise ConfigError(f"data={cfg.data.get('name')} needs {', '.join(f'data.{k}=...' for k in missing)} "
                          f"(see conf/data/{cfg.data.get('name')}.yaml)")
    check_session_config(OmegaConf.to_container(cfg.session, resolve=True))
    max_frames = cfg.get("max_frames")
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 2):
        raise ConfigError(f"max_frames={max_frames!r}: expected a whole number >= 2 (a first frame and one to "
                          f"segment), or null for whole videos")
    videos = cfg.get("videos")
    if isinstance(videos, bool) or (isinstance(videos, int) and videos < 1):
        raise ConfigError(f"videos={videos!r}: expected null or all (every video), a count >= 1 (the first N) or "
                          f"a list of names")
    if OmegaConf.is_list(videos):
        names = [str(v) for v in videos]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"videos: {', '.join(twice)} listed more than once (it would count twice in the means)")
    results_dir = Path(cfg.results_dir)
    existing = next((p for p in (results_dir, *results_dir.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"results_dir={results_dir}: {existing} is a file; results are written into a folder")


class Ranks:
    """This process's rank, the world size, and a gloo group for Python objects (NCCL gathers tensors only)."""

    def __init__(self, device: torch.device):
        world = int(os.environ.get("WORLD_SIZE", 1))
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                    device_id=device if device.type == "cuda" else None)
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.objects_group = None
        if self.world > 1:
            self.objects_group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD

    def gather(self, items: list) -> list:
        """Every rank's list, concatenated in rank order (on every rank)."""
        if self.world == 1:
            return items
        out = [None] * self.world
        dist.all_gather_object(out, items, group=self.objects_group)
        return [x for part in out for x in part]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier(group=self.objects_group)


# ---------------------------------------------------------------- the network of a checkpoint

TEST_GAP_KEY = "model.net.memory.test_gap"


def explicit_network_request(cfg: DictConfig) -> tuple[dict | None, str | None, int | None]:
    """What the user asked for on the command line: (network config, model name) when they chose a network
    (``model=``, ``memory=``, ``backbone=``, ``model.net.*``), else (None, None); and the test gap when they set
    ``model.net.memory.test_gap`` (a test-time choice, applied to any checkpoint)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
    except ValueError:  # not inside a Hydra run
        return None, None, None
    keys = [o.split("=", 1)[0].lstrip("+~") for o in hydra_cfg.overrides.task]
    gap = int(cfg.model.net.memory.test_gap) if TEST_GAP_KEY in keys else None
    architecture = [k for k in keys if (k in ARCHITECTURE_GROUPS or k.startswith("model.net.")) and k != TEST_GAP_KEY]
    if not architecture:
        return None, None, gap
    return OmegaConf.to_container(cfg.model.net, resolve=True), hydra_cfg.runtime.choices.get("model"), gap


def load_checkpoint_network(cfg: DictConfig, device: torch.device):
    """The network ``ckpt_path`` holds (its stored config), checked against an explicit model request."""
    if not cfg.get("ckpt_path"):
        raise ConfigError("ckpt_path is required: a checkpoint from train.py or `python -m mavos.checkpoints convert`"
                          " (or score_only=true to score existing results)")
    ckpt = read_checkpoint(cfg.ckpt_path)
    requested, name, gap = explicit_network_request(cfg)
    if requested is None and "mavos_network" not in ckpt:
        # an older checkpoint without its config: the composed model (default mavos_mbv2), said aloud
        requested, name = OmegaConf.to_container(cfg.model.net, resolve=True), None
        log.warning("%s stores no network config (an older checkpoint): using the configured model (%s); pass "
                    "model=<name> if it is another", cfg.ckpt_path, describe(requested))
    config, stored_name = resolve_network_config(cfg.ckpt_path, ckpt, requested, name)
    if gap is not None and "memory" in config:
        config["memory"] = {**config["memory"], "test_gap": gap}
    net = build_checkpoint_network(cfg.ckpt_path, config)
    load_state(net, network_state(ckpt, cfg.ckpt_path), cfg.ckpt_path)
    log.info("network: %s (%s)", stored_name or name or "from checkpoint", describe(config))
    return net.to(device).eval(), config


# ---------------------------------------------------------------- resume

def run_fingerprint(cfg: DictConfig, network_config: dict) -> str:
    """What makes results comparable: the checkpoint file, the network, the session settings and the videos'
    source (the data config's reader: root, split, resolution, all_frames, a user's mask ...)."""
    stat = Path(cfg.ckpt_path).stat()
    reader = OmegaConf.select(cfg, "data.module.val_reader")
    key = {"ckpt": str(Path(cfg.ckpt_path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
           "network": network_config, "session": OmegaConf.to_container(cfg.session, resolve=True),
           "max_frames": cfg.get("max_frames"), "protocol": cfg.data.get("protocol"), "data": cfg.data.get("name"),
           "reader": None if reader is None else OmegaConf.to_container(reader, resolve=True)}
    return _digest(key)


def video_fingerprint(run: str, record: VideoRecord) -> str:
    """``run``'s fingerprint narrowed to one video: its frames (a video file's size and modification time), the
    frames written / scored, and the first-frame masks the model starts from (edited in place, they change their
    size or modification time)."""
    masks = {}
    for index in sorted(set(record.object_first_frame.values())):
        path = Path(record.annotations.get(index, ""))
        stat = path.stat() if index in record.annotations and path.is_file() else None
        masks[str(path)] = None if stat is None else (stat.st_size, stat.st_mtime_ns)
    key = {"run": run, "frames": [str(f) for f in record.frames], "names": list(record.frame_names),
           "scored": record.scored_frames, "masks": masks}
    if record.video_file is not None:  # the same file name, edited since: its size and modification time differ
        key["source"] = record.meta.get("source")
    return _digest(key)


def _digest(key: dict) -> str:
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def progress_path(results_dir: Path, video: str) -> Path:
    return results_dir / PROGRESS_DIR / f"{video}.json"


def save_progress(results_dir: Path, result: VideoResult, fingerprint: str) -> None:
    record = {"fingerprint": fingerprint, "video": result.video, "frames": result.frames,
              "model_seconds": result.model_seconds, "wall_seconds": result.wall_seconds,
              "peak_memory_mb": result.peak_memory_mb, "warmup_seconds": result.warmup_seconds,
              "video_frames": result.video_frames, "device": result.device}
    if result.scorer is not None:
        j, f = result.scorer.rows()
        record["scores"] = {"objects": result.scorer.plan.objects, "j": [r.tolist() for r in j],
                            "f": [r.tolist() for r in f]}
    text = json.dumps(record)
    atomic_save(lambda tmp: Path(tmp).write_text(text), progress_path(results_dir, result.video))


def load_progress(results_dir: Path, record: VideoRecord, plan: ScorePlan | None, fingerprint: str
                  ) -> VideoResult | None:
    """A finished video's result from a previous run with the same fingerprint (None: run it)."""
    path = progress_path(results_dir, record.name)
    if not path.is_file():
        return None
    try:
        done = json.loads(path.read_text())
    except ValueError:
        return None
    if done.get("fingerprint") != fingerprint:
        return None
    scorer = None
    if plan is not None:
        scores = done.get("scores") or {}
        if scores.get("objects") != plan.objects:
            return None
        scorer = VideoScorer(plan)
        for obj, j, f in zip(plan.objects, scores["j"], scores["f"]):
            scorer.j[obj], scorer.f[obj] = np.asarray(j, np.float64), np.asarray(f, np.float64)
    return VideoResult(record.name, int(done["frames"]), float(done["model_seconds"]), float(done["wall_seconds"]),
                       float(done["peak_memory_mb"]), scorer, float(done.get("warmup_seconds", 0.0)),
                       int(done.get("video_frames", 0)), str(done.get("device", "")))


# ---------------------------------------------------------------- reports

def clear_results(results_dir: Path, record: VideoRecord) -> None:
    """A video segmented (again) starts from an empty results folder: the PNGs of an earlier run with other
    settings are not its results, and those of frames this run does not write (a longer cut of the video, an
    edited video file, other listed frames) would stay beside the new ones, in a submission and in score_only."""
    stale = sorted((results_dir / record.name).glob("*.png"))
    for png in stale:
        png.unlink()
    if stale:
        log.info("%s: %d result PNGs of an earlier run removed before segmenting it again", record.name, len(stale))


def write_speed_csv(path: Path, results: list[VideoResult]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["Sequence", "Frames", "FPS", "Seconds", "WallFPS", "WallSeconds", "PeakMemoryMB", "Device"])
    for r in results:
        w.writerow([r.video, r.frames, f"{r.fps:.3f}", f"{r.model_seconds:.3f}", f"{r.wall_fps:.3f}",
                    f"{r.wall_seconds:.3f}", f"{r.peak_memory_mb:.1f}", r.device])
    atomic_save(lambda tmp: Path(tmp).write_text(buf.getvalue()), path)


def timed_on(results: list[VideoResult], device: torch.device) -> tuple[list[VideoResult], list[VideoResult]]:
    """The results timed on ``device`` (the GPU's model, whatever its index), and those a resumed run took from
    a run on another device: their speeds are not this run's."""
    here = device_name(device)
    elsewhere = [r for r in results if r.device and r.device != here]
    return [r for r in results if not r.device or r.device == here], elsewhere


def speed_summary(results: list[VideoResult], device: torch.device) -> str:
    results, elsewhere = timed_on(results, device)
    frames = sum(r.frames - 1 for r in results)
    seconds = sum(r.model_seconds for r in results)
    wall_frames, wall = sum(r.decoded for r in results), sum(r.wall_seconds for r in results)
    fps = frames / seconds if seconds > 0 else float("nan")
    wall_fps = wall_frames / wall if wall > 0 else float("nan")
    peak = max((r.peak_memory_mb for r in results), default=float("nan"))
    kind = "CUDA max_memory_allocated" if device.type == "cuda" else "peak RSS"
    warmup = sum(r.warmup_seconds for r in results)
    compiling = ""
    if warmup > 0:  # a one-off cost per frame size that a short run's end-to-end FPS would otherwise hide in
        rest = wall - warmup
        compiling = (f", of which {warmup:.1f} s compiling the step (once per frame size; without it "
                     f"{wall_frames / rest if rest > 0 else float('nan'):.2f} FPS)")
    others = ""
    if elsewhere:
        names = ", ".join(sorted({r.device for r in elsewhere}))
        others = f"; {len(elsewhere)} video(s) timed by an earlier run on {names} left out"
    return (f"speed: model {fps:.2f} FPS ({1000 / fps if fps > 0 else float('nan'):.1f} ms/frame, frame 0 excluded, "
            f"over {frames} frames); end-to-end {wall_fps:.2f} FPS ({wall:.1f} s wall, decoding, writing and "
            f"scoring included{compiling}) on {device_name(device)}; peak memory {peak:.0f} MB ({kind}){others}")


def speed_value(results: list[VideoResult], kind: str, device: torch.device) -> float | None:
    """Model FPS (frame 0 excluded) or end-to-end FPS over the videos timed on ``device``."""
    results = timed_on(results, device)[0]
    if not results:
        return None
    if kind == "model":
        frames, seconds = sum(r.frames - 1 for r in results), sum(r.model_seconds for r in results)
    else:
        frames, seconds = sum(r.decoded for r in results), sum(r.wall_seconds for r in results)
    return frames / seconds if seconds > 0 else None


def format_summary(rows: dict[str, dict[str, float]], speed: str | None) -> str:
    """The scores table (a method without scores, under protocol none, is said to be unscored, not NaN) and the
    speed line."""
    scored = {name: r for name, r in rows.items() if r}
    lines = [f"{'method':<28}{'J&F-Mean':>10}{'J-Mean':>10}{'F-Mean':>10}"] if scored else []
    for name, r in scored.items():
        vals = [r.get(k, float("nan")) for k in ("J&F-Mean", "J-Mean", "F-Mean")]
        lines.append(f"{name:<28}" + "".join(f"{v:>10.4f}" for v in vals))
    lines += [f"{name}: not scored (data.protocol=none: no ground truth to score against)"
              for name, r in rows.items() if not r]
    if speed:
        lines.append(speed)
    return "\n".join(lines)


def write_submission_zip(results_dir: Path, records, path: Path) -> None:
    """YouTube-VOS / LVOS server format: a zip of Annotations/<video>/<frame>.png, exactly the frames each video
    lists (nothing else in the folders: another run's PNGs, a killed write's temporary file); a listed frame
    without its PNG is an error naming it, and no zip is written."""
    files, missing = [], []
    for record in records:
        for index in result_frames(record):
            png = results_dir / record.name / f"{record.frame_names[index]}.png"
            (files if png.is_file() else missing).append((record.name, png))
    if missing:
        shown = ", ".join(str(png) for _, png in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DatasetError(f"submission: {len(missing)} listed frame(s) have no result PNG ({shown}); were they "
                           f"deleted? evaluate.py resume=false into {results_dir} writes them again")

    def save(tmp):
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for video, png in files:
                zf.write(png, f"Annotations/{video}/{png.name}")
    atomic_save(save, path)
    log.info("submission: %s", path)


def write_overlay_for(record: VideoRecord, results_dir: Path) -> None:
    """overlay.mp4 of a user's video: the written masks coloured over its frames."""
    from mavos.evaluation.overlay import write_overlay_video

    read = frame_reader(record)
    pairs = ((read(i), read_mask(results_dir / record.name / f"{n}.png"))
             for i, n in enumerate(record.frame_names) if (results_dir / record.name / f"{n}.png").is_file())
    path = results_dir / f"{record.name}_overlay.mp4"
    write_overlay_video(pairs, path, fps=float(record.meta.get("fps", 24.0)))
    log.info("overlay video: %s", path)


# ---------------------------------------------------------------- the run

def scoring_plans(records: list[VideoRecord], protocol: str, cfg: DictConfig) -> dict[str, ScorePlan | None]:
    """Each video's scoring plan, checked before any video runs: under a scored protocol, a video with objects
    but no frame to score (a server-scored split such as DAVIS test-dev, whose masks are first frames only)
    would report NaN for all the work; that is an error that says what to set instead."""
    plans = {record.name: plan_for_record(record, protocol) for record in records}
    for record in records:
        plan = plans[record.name]
        if plan is not None and plan.objects and not plan.frame_indices:
            cut = f" (or max_frames={cfg.get('max_frames')} leaves none)" if cfg.get("max_frames") else ""
            raise ConfigError(f"data={cfg.data.name} split {cfg.data.get('split')}: video '{record.name}' has no "
                              f"ground truth to score beyond its first annotation under data.protocol={protocol}"
                              f"{cut}; a server-scored split takes data.protocol=none (results written, not scored)")
    return plans


def json_safe(value):
    """NaN and infinities as JSON's null (``json.dumps`` writes bare NaN, which strict parsers refuse)."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def evaluate(cfg: DictConfig) -> dict[str, dict[str, float]]:
    warnings.filterwarnings("ignore", message=".*compute.*called before.*update", category=UserWarning)
    check_evaluation_config(cfg)
    protocol = cfg.data.get("protocol", "davis")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"data.protocol must be one of {PROTOCOLS}, got {protocol!r}")
    device = pick_device(cfg.device)
    ranks = Ranks(device)
    datamodule = hydra.utils.instantiate(cfg.data.module)
    if ranks.rank == 0:
        datamodule.prepare_data()
    ranks.barrier()
    all_records = select_videos(datamodule.val_videos(), cfg.get("videos"), cfg.get("max_frames"),
                                source=f"data={cfg.data.name} split {cfg.data.get('split')}")
    records = all_records[ranks.rank::ranks.world]  # without padding: each video exactly once
    results_dir = Path(cfg.results_dir)
    split = cfg.get("split") or cfg.data.get("split", "val")
    scored = protocol != "none"
    plans = scoring_plans(all_records, protocol, cfg)  # every rank checks every video: all refuse, or none
    metric = JFMetric(protocol if scored else "davis").to(device)
    summary: dict[str, dict[str, float]] = {}
    results: list[VideoResult] = []
    if cfg.score_only:
        if not scored:
            raise ConfigError(f"score_only: data={cfg.data.name} (protocol none) has no local ground truth to score")
        for record in records:
            metric.update(score_saved_video(record, plans[record.name], results_dir))
        summary["results"] = {}
    else:
        net, network_config = load_checkpoint_network(cfg, device)
        session_kwargs = OmegaConf.to_container(cfg.session, resolve=True)
        fingerprint = run_fingerprint(cfg, network_config)
        log.info("evaluating %d videos of %s/%s on %s (rank %d/%d)", len(records), cfg.data.name, split, device,
                 ranks.rank, ranks.world)
        for record in records:
            plan = plans[record.name]
            video_key = video_fingerprint(fingerprint, record)
            result = load_progress(results_dir, record, plan, video_key) if cfg.get("resume", True) else None
            if result is not None:
                log.info("%s: done by an earlier run, skipped (resume=false to redo)", record.name)
            else:
                clear_results(results_dir, record)
                result = segment_video(net, record, plan=plan, protocol=protocol, session_kwargs=session_kwargs,
                                       results_dir=results_dir)
                save_progress(results_dir, result, video_key)
                log.info("%s: %d frames, %.2f FPS (model), %.2f FPS (end-to-end), peak %.0f MB", record.name,
                         result.frames, result.fps, result.wall_fps, result.peak_memory_mb)
            if result.scorer is not None:
                metric.update(result.scorer)
            results.append(result)
        results = ranks.gather(results)
        ranks.barrier()  # every rank's PNGs are written
        if ranks.rank == 0:
            write_speed_csv(results_dir / f"speed-{split}.csv", results)
            if cfg.data.get("submission", False):
                write_submission_zip(results_dir, all_records, results_dir / "submission.zip")
        if cfg.data.get("overlay", False):
            for record in records:
                write_overlay_for(record, results_dir)
        summary[f"{type(net.memory).__name__.replace('Memory', '').lower()} model"] = {}
    if scored:
        global_row, rows = metric.compute(), metric.per_object_rows()  # each gathers across ranks: every rank calls
        summary = {k: global_row for k in summary}
        if ranks.rank == 0:
            write_protocol_csvs(results_dir, split, protocol, global_row, rows)
        if cfg.get("baseline", False):
            base = JFMetric(protocol).to(device)
            for record in records:
                base.update(copy_first_frame_scores(record, plans[record.name]))
            summary["copy first-frame mask"] = base.compute()
    if ranks.rank == 0:
        text = format_summary(summary, speed_summary(results, device) if results else None)
        if cfg.get("ckpt_path") and not cfg.score_only:
            text = f"checkpoint: {cfg.ckpt_path}\n{text}"
        print(text, flush=True)
        atomic_save(lambda tmp: Path(tmp).write_text(text + "\n"), results_dir / f"summary-{split}.txt")
        machine = {"scores": summary, "checkpoint": cfg.get("ckpt_path"), "videos": len(all_records),
                   "device": device_name(device),
                   "model_fps": speed_value(results, "model", device),
                   "end_to_end_fps": speed_value(results, "wall", device)}
        atomic_save(lambda tmp: Path(tmp).write_text(json.dumps(json_safe(machine), indent=2) + "\n"),
                    results_dir / f"summary-{split}.json")
    ranks.barrier()
    return summary


def evaluate_from_training(train_cfg: DictConfig, ckpt_path: str) -> dict:
    """Evaluate right after training with the same data config (train.py evaluate_after=true)."""
    base = OmegaConf.create(OmegaConf.to_container(train_cfg, resolve=True))  # drop struct mode
    cfg = OmegaConf.merge(base,
                          {"ckpt_path": ckpt_path, "results_dir": str(Path(train_cfg.paths.output_dir) / "results"),
                           "score_only": False, "device": "auto", "videos": None, "max_frames": None,
                           "baseline": True, "resume": True, "split": train_cfg.data.get("split", "val")})
    log.info("evaluating %s (the run's best checkpoint by its monitored score; last.ckpt without one)", ckpt_path)
    return evaluate(cfg)
