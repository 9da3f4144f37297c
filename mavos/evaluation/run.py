"""evaluate.py's body: build the model and benchmark from the config, run, score, report."""
from __future__ import annotations

import csv
import io
import os
import warnings
import zipfile
import logging
from pathlib import Path

import hydra
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from mavos.checkpoints.loading import load_network_weights
from mavos.data.io import atomic_save
from mavos.evaluation.evaluator import VideoSpeed, run_video, score_copy_baseline, score_results_dir
from mavos.metrics.jf import JFMetric
from mavos.metrics.protocols import score_lvos, write_davis_csvs, write_lvos_csvs

log = logging.getLogger(__name__)

PROTOCOLS = ("davis", "ltv", "lvos", "none")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(name)


def init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size). Under torchrun (WORLD_SIZE > 1) join the process group: nccl on GPU, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_lists(items: list, world: int) -> list:
    if world == 1:
        return items
    out = [None] * world
    dist.all_gather_object(out, items)
    return [x for part in out for x in part]


def write_speed_csv(path: Path, speeds: list[VideoSpeed]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["Sequence", "Frames", "FPS", "Seconds", "PeakMemoryMB"])
    for s in speeds:
        w.writerow([s.video, s.frames, f"{s.fps:.3f}", f"{s.seconds:.3f}", f"{s.peak_memory_mb:.1f}"])
    atomic_save(lambda tmp: Path(tmp).write_text(buf.getvalue()), path)


def format_summary(rows: dict[str, dict[str, float]], speeds: list[VideoSpeed] | None, device: torch.device) -> str:
    lines = [f"{'method':<28}{'J&F-Mean':>10}{'J-Mean':>10}{'F-Mean':>10}"]
    for name, r in rows.items():
        vals = [r.get(k, float("nan")) for k in ("J&F-Mean", "J-Mean", "F-Mean")]
        lines.append(f"{name:<28}" + "".join(f"{v:>10.4f}" for v in vals))
    if speeds:
        total_frames = sum(s.frames - 1 for s in speeds)
        total_time = sum(s.seconds for s in speeds)
        fps = total_frames / total_time if total_time > 0 else float("nan")
        ms = 1000 * total_time / total_frames if total_frames else float("nan")
        peak = max(s.peak_memory_mb for s in speeds)
        kind = "CUDA max_memory_allocated" if device.type == "cuda" else "peak RSS"
        lines.append(f"speed: {fps:.2f} FPS ({ms:.1f} ms/frame) over {total_frames} frames (frame 0 excluded) on {device}; "
                     f"peak memory {peak:.0f} MB ({kind})")
    return "\n".join(lines)


def write_submission_zip(results_dir: Path, records, path: Path) -> None:
    """YouTube-VOS / LVOS server format: a zip of Annotations/<video>/<frame>.png."""
    def save(tmp):
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for record in records:
                for png in sorted((results_dir / record.name).glob("*.png")):
                    zf.write(png, f"Annotations/{record.name}/{png.name}")
    atomic_save(save, path)
    log.info("submission: %s", path)


def score_lvos_results(cfg: DictConfig, results_dir: Path, split: str) -> dict[str, float]:
    """LVOS v1 toolkit rules on the written PNGs (needs the toolkit's unseen_videos.txt)."""
    unseen = Path(cfg.data.unseen_videos)
    if not unseen.is_file():
        raise FileNotFoundError(f"{unseen}: LVOS scoring needs lvos-evaluation's unseen_videos.txt "
                                f"(set data.unseen_videos=...)")
    split_root = Path(cfg.data.root) / cfg.data.get("split_dir", split)
    global_row, rows = score_lvos(split_root, results_dir, unseen)
    write_lvos_csvs(results_dir, split, global_row, rows)
    return global_row


def write_overlay_for(record, results_dir: Path) -> None:
    """overlay.mp4 of a user's video: the written masks coloured over its frames."""
    from mavos.data.io import read_frame, read_mask
    from mavos.evaluation.overlay import write_overlay_video

    pairs = ((read_frame(f), read_mask(results_dir / record.name / f"{n}.png"))
             for f, n in zip(record.frames, record.frame_names) if (results_dir / record.name / f"{n}.png").is_file())
    path = results_dir / f"{record.name}_overlay.mp4"
    write_overlay_video(pairs, path, fps=float(record.meta.get("fps", 24.0)))
    log.info("overlay video: %s", path)


def build_network(cfg: DictConfig, device: torch.device):
    model = hydra.utils.instantiate(cfg.model)
    net = model.net
    if not cfg.get("ckpt_path"):
        raise ValueError("ckpt_path is required: a checkpoint from train.py or `python -m mavos.checkpoints convert`"
                         " (or score_only=true to score existing results)")
    load_network_weights(net, cfg.ckpt_path)
    return net.to(device).eval()


def evaluate(cfg: DictConfig) -> dict[str, dict[str, float]]:
    warnings.filterwarnings("ignore", message=".*compute.*called before.*update", category=UserWarning)
    device = pick_device(cfg.device)
    rank, world = init_distributed(device)
    datamodule = hydra.utils.instantiate(cfg.data.module)
    if rank == 0:
        datamodule.prepare_data()
    if world > 1:
        dist.barrier()
    records = datamodule.val_videos()
    if cfg.get("max_videos"):
        records = records[: int(cfg.max_videos)]
    all_records = records
    # Shard videos across ranks without padding: every video is run and scored exactly once; the J&F
    # metric gathers its per-object states across ranks (torchmetrics, dist_reduce_fx="cat").
    records = records[rank::world]
    results_dir = Path(cfg.results_dir)
    protocol = cfg.data.get("protocol", "davis")
    if protocol not in PROTOCOLS:
        raise ValueError(f"data.protocol must be one of {PROTOCOLS}, got {protocol!r}")
    exclude_last = protocol == "davis"          # DAVIS drops the first and last frame; LTV only the first
    streamed = protocol in ("davis", "ltv")     # scored while streaming; LVOS is scored from the written PNGs
    split = cfg.get("split") or cfg.data.get("split", "val")
    metric = JFMetric()
    summary: dict[str, dict[str, float]] = {}
    speeds: list[VideoSpeed] | None = None
    if cfg.score_only and protocol == "lvos":
        pass
    elif cfg.score_only:
        if not streamed:
            raise ValueError(f"score_only: {cfg.data.name} ({protocol}) has no local ground truth to score against")
        score_results_dir(records, results_dir, metric, exclude_last)
        summary["results"] = None
    else:
        net = build_network(cfg, device)
        session_kwargs = OmegaConf.to_container(cfg.session, resolve=True)
        speeds = []
        log.info("evaluating %d videos of %s/%s on %s", len(records), cfg.data.name, split, device)
        for record in records:
            speeds.append(run_video(net, record, results_dir, metric if streamed else None, session_kwargs,
                                    exclude_last))
            log.info("%s: %d frames, %.2f FPS, peak %.0f MB", record.name, speeds[-1].frames, speeds[-1].fps,
                     speeds[-1].peak_memory_mb)
        if streamed:
            summary[type(net.memory).__name__.replace("Memory", "").lower() + " model"] = None
        speeds = gather_lists(speeds, world)
        if world > 1:
            dist.barrier()  # every rank's PNGs are written
        if rank == 0:
            write_speed_csv(results_dir / f"speed-{split}.csv", speeds)
            if cfg.data.name in ("ytvos", "lvos"):
                write_submission_zip(results_dir, all_records, results_dir / "submission.zip")
        if cfg.data.name in ("video", "frames"):
            for record in records:
                write_overlay_for(record, results_dir)
    if streamed:
        global_row, rows = metric.compute(), metric.per_object_rows()  # one gather across ranks
        summary = {k: (global_row if v is None else v) for k, v in summary.items()}
        if rank == 0:
            write_davis_csvs(results_dir, split, global_row, rows)
    elif protocol == "lvos" and rank == 0:
        summary["lvos"] = score_lvos_results(cfg, results_dir, split)
    if cfg.get("baseline", False) and streamed:
        base = JFMetric()
        for record in records:
            score_copy_baseline(record, base, exclude_last)
        summary["copy first-frame mask"] = base.compute()
    if rank == 0:
        text = format_summary(summary, speeds, device)
        print(text)
        atomic_save(lambda tmp: Path(tmp).write_text(text + "\n"), results_dir / f"summary-{split}.txt")
    if world > 1:
        dist.barrier()
    return summary


def evaluate_from_training(train_cfg: DictConfig, ckpt_path: str) -> dict:
    """Evaluate right after training with the same model/data configs (train.py evaluate_after=true)."""
    session = {"long_term_gap": None, "max_long_edge": 1040, "max_short_edge": None, "flip": False, "amp": None}
    base = OmegaConf.create(OmegaConf.to_container(train_cfg, resolve=True))  # drop struct mode
    cfg = OmegaConf.merge({"session": session}, base,
                          {"ckpt_path": ckpt_path, "results_dir": str(Path(train_cfg.paths.output_dir) / "results"),
                           "score_only": False, "device": "auto", "max_videos": None, "baseline": True,
                           "split": train_cfg.data.get("split", "val")})
    return evaluate(cfg)
