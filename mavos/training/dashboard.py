"""What a validation shows a person: a printed line, mask panels and a per-video table in the loggers, and a
plot of val J&F against step next to the checkpoints.

Panels: for each of the first ``panel_videos`` val videos, a few frames with the ground truth (top row) and the
prediction (bottom row) overlaid in the palette's object colours. W&B gets images and a ``wandb.Table``,
TensorBoard images and a Markdown table, CSV only the scalars (logged by the module).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mavos.data.io import atomic_save
from mavos.evaluation.overlay import blend
from mavos.metrics.protocols import read_ground_truth

log = logging.getLogger(__name__)

TABLE_COLUMNS = ["video", "objects", "J&F", "J", "F"]


def panel_image(record, frames: list[tuple[int, np.ndarray, np.ndarray]]) -> np.ndarray:
    """(2H, N*W, 3) uint8: ground truth over each frame on top, the prediction below."""
    tops, bottoms = [], []
    for index, frame, label in frames:
        gt = read_ground_truth(record, index)
        gt = np.where(gt == 255, 0, gt).astype(np.uint8)
        tops.append(blend(frame, gt))
        bottoms.append(blend(frame, label))
    gap = np.full((frames[0][1].shape[0], 4, 3), 255, np.uint8)

    def row(images):
        out = [images[0]]
        for im in images[1:]:
            out += [gap, im]
        return np.concatenate(out, axis=1)

    top, bottom = row(tops), row(bottoms)
    return np.concatenate([top, np.full((4, top.shape[1], 3), 255, np.uint8), bottom], axis=0)


def save_val_curve(path: Path, history: list[tuple[int, float]]) -> None:
    """val J&F against step as a PNG (atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s for s, _ in history]
    scores = [v for _, v in history]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.plot(steps, scores, marker="o")
    ax.set_xlabel("training step")
    ax.set_ylabel("val J&F")
    ax.grid(alpha=0.3)
    best = int(np.nanargmax(scores)) if any(np.isfinite(scores)) else None
    if best is not None:
        ax.annotate(f"{scores[best]:.3f}", (steps[best], scores[best]), textcoords="offset points", xytext=(0, 6),
                    ha="center")
    fig.tight_layout()
    atomic_save(lambda tmp: fig.savefig(tmp, format="png"), path)
    plt.close(fig)


def checkpoint_dir(trainer) -> Path:
    callback = getattr(trainer, "checkpoint_callback", None)
    if callback is not None and getattr(callback, "dirpath", None):
        return Path(callback.dirpath)
    return Path(trainer.default_root_dir) / "checkpoints"


def log_validation(trainer, step: int, values: dict[str, float], per_video: list[dict], panels: dict,
                   history: list[tuple[int, float]]) -> None:
    """Print the scores, log panels and the per-video table to every logger, update the val curve (rank 0)."""
    line = (f"step {step}: val/J&F {values['val/J&F']:.4f} (J {values['val/J']:.4f}, F {values['val/F']:.4f}) "
            f"over {len(per_video)} videos, {values['val/fps']:.1f} FPS")
    bar = getattr(trainer, "progress_bar_callback", None)
    if bar is not None and hasattr(bar, "print"):
        bar.print(line)
    else:
        print(line, flush=True)
    log.info(line)
    images = {video: panel_image(record, frames) for video, (record, frames) in panels.items()}
    rows = [[r["video"], r["objects"], r["J&F"], r["J"], r["F"]] for r in per_video]
    for logger in trainer.loggers:
        kind = type(logger).__name__
        if kind == "WandbLogger":
            if images:
                logger.log_image(key="val/panels", images=list(images.values()),
                                 caption=[f"{v}: ground truth (top), prediction (bottom)" for v in images], step=step)
            logger.log_table(key="val/videos", columns=TABLE_COLUMNS, data=rows, step=step)
        elif kind == "TensorBoardLogger":
            for video, image in images.items():
                logger.experiment.add_image(f"val/panel/{video}", image, step, dataformats="HWC")
            table = "| " + " | ".join(TABLE_COLUMNS) + " |\n|" + "---|" * len(TABLE_COLUMNS) + "\n" + "\n".join(
                f"| {r[0]} | {r[1]} | {r[2]:.4f} | {r[3]:.4f} | {r[4]:.4f} |" for r in rows)
            logger.experiment.add_text("val/videos", table, step)
    if history:
        save_val_curve(checkpoint_dir(trainer) / "val_curve.png", history)
