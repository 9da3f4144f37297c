"""train.py's multirun hooks (Hydra callbacks): the sweep's summary, and the SLURM allocation checked first.

Each training job writes ``job_summary.json`` into its own folder (``mavos.training.run``); ``SweepSummary``
collects them when the multirun ends (every launcher: local, joblib, SLURM) into ``<sweep dir>/summary.csv``
(one row per job: its overrides, best val/J&F, val FPS, checkpoint), best first, and prints the table.
``SlurmAllocationCheck`` stops a multirun, before anything is submitted, whose SLURM allocation is not the
trainer's.
"""
from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mavos.data.io import atomic_save
from mavos.registry import ConfigError

log = logging.getLogger(__name__)

COLUMNS = ("job", "overrides", "val/J&F", "val/fps", "global_step", "checkpoint")


def job_summary_files(sweep_dir: Path) -> dict[Path, tuple[int, int]]:
    """Every job's ``job_summary.json`` under a sweep folder, with what identifies that version of the file (its
    inode, which each atomic rewrite changes, and modification time)."""
    found = {}
    for path in sorted(Path(sweep_dir).glob("*/job_summary.json")):
        try:
            stat = path.stat()
        except OSError:
            continue
        found[path] = (stat.st_ino, stat.st_mtime_ns)
    return found


def collect_job_summaries(sweep_dir: Path, before: dict[Path, tuple[int, int]] | None = None) -> list[dict]:
    """The rows of a sweep's summary; with ``before`` (``job_summary_files`` when the multirun started), only the
    jobs this multirun wrote: a named sweep folder reused by a smaller sweep keeps the older jobs' files, which
    are not this sweep's results."""
    rows = []
    for path, version in job_summary_files(sweep_dir).items():
        if before is not None and before.get(path) == version:
            continue
        try:
            data = json.loads(path.read_text())
        except ValueError:
            log.warning("%s: unreadable job summary, skipped", path)
            continue
        rows.append({"job": path.parent.name, "overrides": " ".join(data.get("overrides", [])),
                     "val/J&F": data.get("val/J&F"), "val/fps": data.get("val/fps"),
                     "global_step": data.get("global_step"), "checkpoint": data.get("checkpoint")})
    rows.sort(key=lambda r: -(r["val/J&F"] if r["val/J&F"] is not None else float("-inf")))
    return rows


def write_sweep_summary(sweep_dir: str | Path, before: dict[Path, tuple[int, int]] | None = None) -> Path | None:
    sweep_dir = Path(sweep_dir)
    rows = collect_job_summaries(sweep_dir, before)
    if not rows:
        return None
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row[k] is None else (f"{row[k]:.4f}" if isinstance(row[k], float) else row[k]))
                         for k in COLUMNS})
    path = sweep_dir / "summary.csv"
    atomic_save(lambda tmp: Path(tmp).write_text(buf.getvalue()), path)
    return path


class SweepSummary(Callback):
    def __init__(self) -> None:
        self.before: dict[Path, tuple[int, int]] | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # a named sweep's folder may hold an earlier multirun's jobs (run_name=, or hydra.sweep.dir reused)
        self.before = job_summary_files(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        path = write_sweep_summary(config.hydra.sweep.dir, self.before)
        if path is not None:
            print(f"sweep summary ({path}):\n{path.read_text()}", flush=True)


def check_slurm_allocation(config: DictConfig) -> None:
    """One task per GPU: ``hydra.launcher.nodes`` must be ``trainer.num_nodes`` and ``hydra.launcher.gpus_per_node``
    ``trainer.devices`` (a ``ConfigError`` naming both keys otherwise). Launchers without them pass."""
    launcher = config.hydra.launcher
    if launcher is None or "gpus_per_node" not in launcher or "trainer" not in config:
        return  # not a SLURM launcher
    wanted = {"nodes": ("trainer.num_nodes", config.trainer.get("num_nodes", 1)),
              "gpus_per_node": ("trainer.devices", config.trainer.get("devices", 1))}
    wrong = [f"hydra.launcher.{key}={launcher[key]} but {name}={value}" for key, (name, value) in wanted.items()
             if isinstance(value, int) and launcher[key] != value]
    if wrong:
        raise ConfigError(f"{'; '.join(wrong)}: SLURM would start one task per GPU on an allocation the trainer "
                          f"does not use, and Lightning would refuse it inside the job; set them equal")


class SlurmAllocationCheck(Callback):
    """``check_slurm_allocation`` before anything is submitted: Lightning checks the same, but inside the job,
    after it waited in the queue. Hydra turns a callback's exceptions into warnings, so this one exits."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_slurm_allocation(config)
        except ConfigError as e:
            raise SystemExit(f"train.py: error: {e}") from None
