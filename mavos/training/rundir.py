"""Where a training run lives, so that resuming it continues in the same folder, log and W&B run.

``hydra.run.dir`` of train.py is ``${mavos_run_dir:<runs>,${run_name},${ckpt_path},<time stamp>}``:
- ``run_name=<name>``: ``<runs>/<name>``, new or resumed (clusters and scripts name their runs);
- ``ckpt_path=last`` without a name: the run folder of the newest ``<runs>/*/checkpoints/last.ckpt``;
- ``ckpt_path=<runs>/<run>/checkpoints/<file>``: that run's folder;
- otherwise a new folder named by the time stamp.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

RESOLVER = "mavos_run_dir"


def find_last_checkpoint(runs_dir: str | Path) -> Path | None:
    """The newest ``<runs_dir>/*/checkpoints/last.ckpt`` (by modification time), or None."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return None
    found = [p for p in runs_dir.glob("*/checkpoints/last.ckpt") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def run_dir(runs_dir: str, run_name, ckpt_path, stamp: str) -> str:
    runs = Path(str(runs_dir))
    if run_name not in (None, "", "null"):
        return str(runs / str(run_name))
    if ckpt_path == "last":
        last = find_last_checkpoint(runs)
        if last is not None:
            return str(last.parents[1])
    elif ckpt_path not in (None, "", "null"):
        path = Path(str(ckpt_path))
        if path.is_file() and path.parent.name == "checkpoints":
            return str(path.resolve().parents[1])
    return str(runs / stamp)


def register_resolvers() -> None:
    """Register ``mavos_run_dir`` (before ``@hydra.main`` composes the config)."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, run_dir)
