"""last.ckpt at the step training stops, when no validation fell on it.

Checkpoints are written after each validation (every ``trainer.val_check_interval`` steps). A run whose
``max_steps`` is not a multiple of that would end with its last steps in no file, and resuming it would train
them again. Lightning's ``ModelCheckpoint`` saves at the end of training only when the run does not validate.
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback


class FinalCheckpoint(Callback):
    """When training stops at ``max_steps`` and no checkpoint callback saved that step, write ``last.ckpt``
    there through the trainer (the atomic checkpoint IO, every callback's state: the EMA's included)."""

    def __init__(self, dirpath: str | Path, filename: str = "last"):
        self.path = Path(dirpath) / f"{filename}.ckpt"

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.limit_val_batches == 0:  # not validating: ModelCheckpoint does it
            return
        if not (trainer.max_steps and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps):
            return
        if any(getattr(cb, "_last_global_step_saved", None) == trainer.global_step
               for cb in trainer.checkpoint_callbacks):
            return  # the last step was a validation step: last.ckpt holds it already
        trainer.save_checkpoint(self.path)
