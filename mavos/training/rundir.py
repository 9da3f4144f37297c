"""Where a training run lives, so that resuming it continues in the same folder, log and W&B run.

``hydra.run.dir`` of train.py is ``${mavos_run_dir:<runs>,${run_name},${ckpt_path},<time stamp>}``:
- ``run_name=<name>``: ``<runs>/<name>``, new (if it holds no checkpoint: ``run.check_run_folder``) or resumed
  (clusters and scripts name their runs);
- ``ckpt_path=last`` without a name: the run folder of the newest resumable checkpoint under ``<runs>``;
- ``ckpt_path=<runs>/<run>/checkpoints/<file>`` or ``<runs>/<run>/hpc_ckpt_<n>.ckpt``: that run's folder;
- otherwise a new folder named by the time stamp.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

RESOLVER = "mavos_run_dir"


def resumable_checkpoints(run: Path) -> list[Path]:
    """A run folder's checkpoints to resume from: ``checkpoints/last.ckpt`` (written at every validation) and the
    ``hpc_ckpt_<n>.ckpt`` that Lightning writes into the run folder when SLURM preempts the job or its wall time
    ends (newer than last.ckpt by up to a validation interval, and the only one if that came before the first
    validation)."""
    found = [run / "checkpoints" / "last.ckpt", *run.glob("hpc_ckpt_*.ckpt")]
    return [p for p in found if p.is_file()]


def earlier_checkpoints(run: Path) -> list[Path]:
    """Every checkpoint a run folder already holds (``checkpoints/*.ckpt`` and ``hpc_ckpt_<n>.ckpt``; not the
    hidden temporaries a killed write leaves), by name."""
    found = [*(run / "checkpoints").glob("*.ckpt"), *run.glob("hpc_ckpt_*.ckpt")]
    return sorted(p for p in found if p.is_file() and not p.name.startswith("."))


def newest_checkpoint(paths) -> Path | None:
    """The most recently written of ``paths`` (None if there are none)."""
    paths = list(paths)
    return max(paths, key=lambda p: p.stat().st_mtime) if paths else None


def find_last_checkpoint(runs_dir: str | Path) -> Path | None:
    """The newest resumable checkpoint of any run under ``runs_dir`` (by modification time), or None."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return None
    return newest_checkpoint(p for run in runs_dir.iterdir() if run.is_dir() for p in resumable_checkpoints(run))


def run_of(checkpoint: Path) -> Path | None:
    """The run folder a checkpoint file belongs to, or None for a file outside any run."""
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.resolve().parents[1]
    if checkpoint.name.startswith("hpc_ckpt_") and checkpoint.suffix == ".ckpt":
        return checkpoint.resolve().parent
    return None


def run_dir(runs_dir: str, run_name, ckpt_path, stamp: str) -> str:
    runs = Path(str(runs_dir))
    if run_name not in (None, "", "null"):
        return str(runs / str(run_name))
    if ckpt_path == "last":
        last = find_last_checkpoint(runs)
        if last is not None:
            return str(run_of(last))
    elif ckpt_path not in (None, "", "null"):
        path = Path(str(ckpt_path))
        run = run_of(path) if path.is_file() else None
        if run is not None:
            return str(run)
    return str(runs / stamp)


def register_resolvers() -> None:
    """Register ``mavos_run_dir`` (before ``@hydra.main`` composes the config)."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, run_dir)
