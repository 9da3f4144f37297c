"""The DeAOT/MAVOS segmentation loss: 0.5 bootstrapped cross-entropy + 0.5 soft Jaccard.

Void pixels (label 255, "don't care" in DAVIS) are ignored as in the released code: they add nothing to the
cross-entropy (but still count in the number of pixels the hardest fraction is taken of) and are left out of
the soft Jaccard sums.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

VOID_ID = 255


def bootstrapped_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, top_k_fraction: float) -> torch.Tensor:
    """Per-sample mean CE over the ``top_k_fraction`` hardest pixels. logits (B, C, H, W), labels (B, H, W)."""
    pixel = F.cross_entropy(logits, labels, reduction="none", ignore_index=VOID_ID).flatten(1)
    k = max(1, int(top_k_fraction * pixel.shape[1]))
    if k >= pixel.shape[1]:
        return pixel.mean(dim=1)
    return pixel.topk(k, dim=1).values.mean(dim=1)


def soft_jaccard(logits: torch.Tensor, labels: torch.Tensor, num_objects: list[int]) -> torch.Tensor:
    """Per-sample mean over the classes present in the label of 1 - soft IoU (Tversky with alpha=beta=1),
    over the non-void pixels."""
    prob = torch.softmax(logits, dim=1)
    valid = labels != VOID_ID
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    losses = []
    for b, n in enumerate(num_objects):
        keep = valid[b].flatten().float()
        one_hot = F.one_hot(safe[b], prob.shape[1]).permute(2, 0, 1).float()[: n + 1].flatten(1) * keep
        p = prob[b, : n + 1].flatten(1) * keep
        present = one_hot.sum(1) > 0
        inter = (p * one_hot).sum(1)
        union = p.sum(1) + one_hot.sum(1) - inter
        loss = 1 - inter / (union + 1e-6)
        losses.append(loss[present].mean() if present.any() else loss.sum() * 0)
    return torch.stack(losses)


class VOSLoss(nn.Module):
    """Hard-pixel mining anneals from all pixels to ``top_k_fraction`` over the first ``mining_fraction`` of
    the run (the released recipe: 15% of the pixels, reached half-way through training)."""

    def __init__(self, top_k_fraction: float = 0.15, mining_fraction: float = 0.5, ce_weight: float = 0.5,
                 jaccard_weight: float = 0.5):
        super().__init__()
        if not 0 <= mining_fraction <= 1:
            raise ValueError(f"mining_fraction must be in [0, 1], got {mining_fraction}")
        self.top_k_fraction, self.mining_fraction = top_k_fraction, mining_fraction
        self.ce_weight, self.jaccard_weight = ce_weight, jaccard_weight

    def hard_fraction(self, step: int, total_steps: int) -> float:
        mining_steps = self.mining_fraction * total_steps
        if mining_steps <= 0:
            return self.top_k_fraction
        ratio = min(1.0, step / mining_steps)
        return ratio * self.top_k_fraction + (1.0 - ratio)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, num_objects: list[int], step: int,
                total_steps: int) -> torch.Tensor:
        """logits at label resolution (B, C, H, W); labels (B, H, W) with 255 = void; returns the batch mean."""
        logits = logits.float()
        ce = bootstrapped_cross_entropy(logits, labels, self.hard_fraction(step, total_steps))
        jac = soft_jaccard(logits, labels, num_objects)
        return (self.ce_weight * ce + self.jaccard_weight * jac).mean()
