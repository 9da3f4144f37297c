"""Learning-rate schedule of the DeAOT/MAVOS recipe: linear warm-up from ``min_lr``, then poly decay to ``min_lr``.

The encoder runs at ``min_lr + (lr - min_lr) * encoder_ratio``. Expressed as LambdaLR factors of ``base_lr``.
"""
from __future__ import annotations


def recipe_lr(step: int, total_steps: int, base_lr: float, min_lr: float, warmup_ratio: float = 0.05,
              power: float = 0.9) -> float:
    warmup = int(total_steps * warmup_ratio)
    if step < warmup:
        return min_lr + (base_lr - min_lr) * step / warmup
    step, total = step - warmup, total_steps - warmup
    return min_lr + (base_lr - min_lr) * max(0.0, 1 - step / (total + 1)) ** power


class RecipeLRLambda:
    """Picklable LambdaLR factor (checkpoints store the scheduler). ``zero_from``: the factor is 0 from that step
    on (the ID bank once sequential training starts)."""

    def __init__(self, total_steps: int, base_lr: float, min_lr: float, warmup_ratio: float = 0.05,
                 power: float = 0.9, ratio: float = 1.0, zero_from: int | None = None):
        if base_lr < min_lr:
            from mavos.registry import ConfigError

            raise ConfigError(f"model.lr={base_lr:g} is below model.min_lr={min_lr:g}: the recipe warms up from "
                              f"min_lr to lr and decays back to min_lr, so this would run backwards; raise "
                              f"model.lr or lower model.min_lr")
        self.total_steps, self.base_lr, self.min_lr = total_steps, base_lr, min_lr
        self.warmup_ratio, self.power, self.ratio = warmup_ratio, power, ratio
        self.zero_from = zero_from

    def __call__(self, step: int) -> float:
        if self.zero_from is not None and step >= self.zero_from:
            return 0.0
        lr = recipe_lr(step, self.total_steps, self.base_lr, self.min_lr, self.warmup_ratio, self.power)
        return (self.min_lr + (lr - self.min_lr) * self.ratio) / self.base_lr


def aux_weight(step: int, total_steps: int, weight: float = 1.0, ratio: float = 1.0) -> float:
    """The reference frame's (auxiliary) loss weight: ``weight`` falling linearly to 0 at ``ratio`` of the run
    (1.0 in the main stage; 0.1 in static pre-training, the released PRE configs' TRAIN_AUX_LOSS_RATIO)."""
    end = ratio * total_steps
    return weight * max(0.0, end - step) / end if end > 0 else 0.0
