"""Checkpoints written atomically: a kill -9, SIGTERM or SIGUSR1 during a write leaves the previous file intact.

Lightning's ``TorchCheckpointIO`` opens the destination and writes into it, so a process killed mid-write
leaves a truncated ``last.ckpt``. This plugin writes beside the destination and renames (``atomic_save``).

SLURM preemption checkpoints (``hpc_ckpt_<n>.ckpt``, one per preemption, each the size of a full training state)
are never removed by Lightning; once the next one is written the older ones are superseded (a requeued job
restores the highest number), so they are removed then.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from mavos.data.io import atomic_save


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        atomic_save(lambda tmp: torch.save(checkpoint, tmp), path)
        remove_superseded_preemption_checkpoints(Path(path))


HPC_CHECKPOINT = re.compile(r"hpc_ckpt_(\d+)\.ckpt")


def remove_superseded_preemption_checkpoints(written: Path) -> list[Path]:
    """After ``hpc_ckpt_<n>.ckpt`` is written, remove the same folder's ``hpc_ckpt_<m>.ckpt`` with m < n."""
    match = HPC_CHECKPOINT.fullmatch(written.name)
    if match is None:
        return []
    removed = []
    for older in written.parent.glob("hpc_ckpt_*.ckpt"):
        number = HPC_CHECKPOINT.fullmatch(older.name)
        if number is not None and int(number.group(1)) < int(match.group(1)):
            older.unlink(missing_ok=True)
            removed.append(older)
    if removed:
        logging.getLogger(__name__).info("removed preemption checkpoints superseded by %s: %s", written.name,
                                         ", ".join(p.name for p in sorted(removed)))
    return removed
