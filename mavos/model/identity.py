"""The ID bank: one learnable embedding per object slot, assigned to patches by the one-hot mask."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mavos.model.layers import map_to_tokens


class IDBank(nn.Module):
    """Conv over a (B, 1 + max_objects, H, W) one-hot (or soft) mask -> (B, HW, d) identity tokens.

    Kernel 17 / stride 16 / padding 8 for inputs of size 16k+1 (align_corners models), kernel 16 /
    stride 16 otherwise (Swin-B). Orthogonal initialisation keeps identities distinguishable.
    """

    def __init__(self, max_objects: int = 10, dim: int = 256, align_corners: bool = True, dropout: float = 0.0):
        super().__init__()
        self.max_objects = max_objects
        k, p = (17, 8) if align_corners else (16, 0)
        self.conv = nn.Conv2d(max_objects + 1, dim, kernel_size=k, stride=16, padding=p)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        nn.init.orthogonal_(self.conv.weight.view(dim, -1), gain=k ** -2)

    def forward(self, one_hot: torch.Tensor) -> torch.Tensor:
        """one_hot: (B, C, H, W) with C <= 1 + max_objects: a mask whose objects use only the first ids may
        leave out the all-zero channels of the others, and the convolution then skips them (they add 0)."""
        channels = one_hot.shape[1]
        weight = self.conv.weight if channels == self.conv.in_channels else self.conv.weight[:, :channels]
        emb = F.conv2d(one_hot, weight, self.conv.bias, self.conv.stride, self.conv.padding)
        return self.dropout(self.norm(map_to_tokens(emb)))
