"""Checkpoints written atomically: a kill -9, SIGTERM or SIGUSR1 during a write leaves the previous file intact.

Lightning's ``TorchCheckpointIO`` opens the destination and writes into it, so a process killed mid-write
leaves a truncated ``last.ckpt``. This plugin writes beside the destination and renames (``atomic_save``).
"""
from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from mavos.data.io import atomic_save


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        atomic_save(lambda tmp: torch.save(checkpoint, tmp), path)
