"""Modulated cross-attention (MCA): how MAVOS folds a new frame into a fixed-size memory slot.

Queries come from the new frame's memory tokens, keys from the old slot; the attention *values* are a
focal modulator computed from the old slot (depthwise convs at growing kernel sizes, gated, plus a
global context), so the fused slot keeps a multi-scale summary of the past at constant size.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mavos.model.layers import DropPath

ValueLayout = Literal["released", "corrected"]


class ModulatedCrossAttention(nn.Module):
    """One MCA block: y = x + DropPath(Proj(softmax(q k^T) m)); y = y + DropPath(MLP(LN(y))).

    value_layout:
      "released"  - the authors' released code reshapes the (B, C, H, W) modulator straight into
                    (B, N, heads, C/heads), mixing channels and positions; needed to run their checkpoints.
      "corrected" - tokens-major layout (position n, channels of head h), for new training.
    """

    def __init__(self, dim: int, heads: int = 4, mlp_ratio: float = 4.0, drop_path: float = 0.1,
                 focal_levels: int = 2, focal_window: int = 3, focal_factor: int = 2,
                 value_layout: ValueLayout = "released"):
        super().__init__()
        if value_layout not in ("released", "corrected"):
            raise ValueError(f"value_layout must be 'released' or 'corrected', got {value_layout!r}")
        self.dim, self.heads, self.focal_levels = dim, heads, focal_levels
        self.value_layout = value_layout
        self.scale = (dim // heads) ** -0.5
        self.norm_new = nn.LayerNorm(dim)
        self.norm_old = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.context = nn.Linear(dim, dim + focal_levels + 1)
        self.focal = nn.ModuleList(
            nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim, bias=False)
            for k in (focal_factor * level + focal_window for level in range(focal_levels)))
        self.modulator = nn.Conv2d(dim, dim, kernel_size=1)
        self.proj = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def modulator_map(self, old: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Focal modulator (B, C, H, W) from normalised old-slot tokens (B, HW, C)."""
        b, n, c = old.shape
        h, w = size
        ctx = self.context(old).reshape(b, h, w, c + self.focal_levels + 1).permute(0, 3, 1, 2)
        z, gates = ctx.split([c, self.focal_levels + 1], dim=1)
        acc = 0
        for level, conv in enumerate(self.focal):
            z = F.gelu(conv(z))
            acc = acc + z * gates[:, level:level + 1]
        glob = F.gelu(z.mean(dim=(2, 3), keepdim=True))
        acc = acc + glob * gates[:, self.focal_levels:]
        return self.modulator(acc)

    def forward(self, new: torch.Tensor, old: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Fuse ``new`` tokens (B, N, C) with the old slot ``old`` (B, N, C); returns the new slot."""
        b, n, c = new.shape
        hd = c // self.heads
        x_new, x_old = self.norm_new(new), self.norm_old(old)
        q = self.q(x_new).reshape(b, n, self.heads, hd).transpose(1, 2)
        k = self.k(x_old).reshape(b, n, self.heads, hd).transpose(1, 2)
        m = self.modulator_map(x_old, size)
        if self.value_layout == "released":
            v = m.reshape(b, n, self.heads, hd).transpose(1, 2)
        else:
            v = m.flatten(2).transpose(1, 2).reshape(b, n, self.heads, hd).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        y = self.proj(y.transpose(1, 2).reshape(b, n, c))
        out = new + self.drop_path(y)
        return out + self.drop_path(self.mlp(self.norm_mlp(out)))
