"""The released recipe's exponential moving average of the weights, as a Lightning ``WeightAveraging`` callback.

Decay ``1 - 1 / (0.1 * total_steps)`` (0.9999 for 100k steps), warmed up as ``min(decay, (1 + n) / (10 + n))``
at the n-th update, the average starting from the weights training starts with. Lightning's callback keeps the
averaged weights in each checkpoint's ``state_dict`` (what evaluate.py loads and validation scores) and the
training weights plus the update count beside them, so a resumed run continues the same average.
"""
from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.callbacks import WeightAveraging


def recipe_ema_decay(total_steps: int, ratio: float = 0.1) -> float:
    """``1 - 1 / (ratio * total_steps)``."""
    return 1.0 - 1.0 / (ratio * total_steps)


def warmed_up_decay(decay: float, updates: int) -> float:
    """The decay of the ``updates``-th update (1-based): ``min(decay, (1 + n) / (10 + n))``."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


class RecipeEMAAverage:
    """Picklable ``avg_fn`` for ``torch.optim.swa_utils.AveragedModel``: n counts earlier updates."""

    def __init__(self, decay: float):
        self.decay = float(decay)

    def __call__(self, averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        d = warmed_up_decay(self.decay, int(num_averaged))
        return averaged + (current - averaged) * (1.0 - d)


class RecipeEMA(WeightAveraging):
    """EMA of all parameters and buffers, one update per optimizer step.

    total_steps: the run's length (default: the trainer's ``max_steps``); ratio: 0.1 in the recipe.
    """

    def __init__(self, total_steps: int | None = None, ratio: float = 0.1, device: str | None = None):
        self.total_steps, self.ratio = total_steps, ratio
        super().__init__(device=device, use_buffers=True)

    def setup(self, trainer, pl_module, stage: str) -> None:
        total = self.total_steps or trainer.max_steps
        if not total or total <= 0:
            total = int(trainer.estimated_stepping_batches)
        self.decay = recipe_ema_decay(int(total), self.ratio)
        self._kwargs["avg_fn"] = RecipeEMAAverage(self.decay)
        super().setup(trainer, pl_module, stage)
        if self._average_model is not None:
            # the average starts from the initial weights (AveragedModel copied them): the first update is
            # update n=1 with decay min(decay, 2/11), as in the released code
            self._average_model.n_averaged.fill_(1)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "decay": getattr(self, "decay", None)}
