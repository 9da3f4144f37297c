"""The DeAOT/MAVOS segmentation loss: 0.5 bootstrapped cross-entropy + 0.5 soft Jaccard."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def bootstrapped_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, top_k_fraction: float) -> torch.Tensor:
    """Per-sample mean CE over the ``top_k_fraction`` hardest pixels. logits (B, C, H, W), labels (B, H, W)."""
    pixel = F.cross_entropy(logits, labels, reduction="none").flatten(1)
    k = max(1, int(top_k_fraction * pixel.shape[1]))
    if k >= pixel.shape[1]:
        return pixel.mean(dim=1)
    return pixel.topk(k, dim=1).values.mean(dim=1)


def soft_jaccard(logits: torch.Tensor, labels: torch.Tensor, num_objects: list[int]) -> torch.Tensor:
    """Per-sample mean over the classes present in the label of 1 - soft IoU (Tversky with alpha=beta=1)."""
    prob = torch.softmax(logits, dim=1)
    losses = []
    for b, n in enumerate(num_objects):
        one_hot = F.one_hot(labels[b], prob.shape[1]).permute(2, 0, 1).float()[: n + 1]
        p = prob[b, : n + 1]
        present = one_hot.flatten(1).sum(1) > 0
        inter = (p * one_hot).flatten(1).sum(1)
        union = p.flatten(1).sum(1) + one_hot.flatten(1).sum(1) - inter
        loss = 1 - inter / (union + 1e-6)
        losses.append(loss[present].mean() if present.any() else loss.sum() * 0)
    return torch.stack(losses)


class VOSLoss(nn.Module):
    """Hard-pixel mining anneals from all pixels to ``top_k_fraction`` over ``mining_steps`` steps."""

    def __init__(self, top_k_fraction: float = 0.15, mining_steps: int = 50000, ce_weight: float = 0.5,
                 jaccard_weight: float = 0.5):
        super().__init__()
        self.top_k_fraction, self.mining_steps = top_k_fraction, mining_steps
        self.ce_weight, self.jaccard_weight = ce_weight, jaccard_weight

    def hard_fraction(self, step: int) -> float:
        if self.mining_steps <= 0:
            return self.top_k_fraction
        ratio = min(1.0, step / self.mining_steps)
        return ratio * self.top_k_fraction + (1.0 - ratio)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, num_objects: list[int], step: int) -> torch.Tensor:
        """logits at label resolution (B, C, H, W); returns the batch-mean loss."""
        logits = logits.float()
        ce = bootstrapped_cross_entropy(logits, labels, self.hard_fraction(step))
        jac = soft_jaccard(logits, labels, num_objects)
        return (self.ce_weight * ce + self.jaccard_weight * jac).mean()
