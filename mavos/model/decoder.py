"""FPN segmentation head: propagated features at stride 16 + encoder skips at 16, 8, 4 -> ID logits."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mavos.model.layers import ConvGroupNorm, in_place


class FPNDecoder(nn.Module):
    def __init__(self, in_dim: int, skip_dims: tuple[int, int, int], out_dim: int, hidden: int = 256,
                 align_corners: bool = True):
        """skip_dims: channels of the encoder maps at strides 4, 8, 16."""
        super().__init__()
        self.align_corners = align_corners
        self.conv_in = ConvGroupNorm(in_dim, hidden, 1)
        self.conv_16x = ConvGroupNorm(hidden, hidden, 3)
        self.conv_8x = ConvGroupNorm(hidden, hidden // 2, 3)
        self.conv_4x = ConvGroupNorm(hidden // 2, hidden // 2, 3)
        self.adapter_16x = nn.Conv2d(skip_dims[2], hidden, 1)
        self.adapter_8x = nn.Conv2d(skip_dims[1], hidden, 1)
        self.adapter_4x = nn.Conv2d(skip_dims[0], hidden // 2, 1)
        self.conv_out = nn.Conv2d(hidden // 2, out_dim, 1)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def _up(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=self.align_corners)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """x: (B, in_dim, h16, w16); skips: maps at strides 4, 8, 16. Returns logits at stride 4."""
        s4, s8, s16 = skips[:3]
        inplace = in_place()  # every activation's input is a new tensor
        x = F.relu(self.conv_in(x), inplace=inplace)
        x = F.relu(self.conv_16x(self.adapter_16x(s16) + x), inplace=inplace)
        x = self._up(x, s8)
        x = F.relu(self.conv_8x(self.adapter_8x(s8) + x), inplace=inplace)
        x = self._up(x, s4)
        x = F.relu(self.conv_4x(self.adapter_4x(s4) + x), inplace=inplace)
        return self.conv_out(x)
