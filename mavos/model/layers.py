"""Small building blocks shared by the propagation, MCA and decoder modules."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample (batch dim 0) while training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep


class ConvGroupNorm(nn.Module):
    """Conv2d followed by GroupNorm (8 groups), the decoder's unit."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, groups: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)
        self.norm = nn.GroupNorm(groups, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


def tokens_to_map(tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H*W, C) row-major tokens -> (B, C, H, W) map.

    For contiguous tokens this is a view in channels-last layout (no copy), and convolutions on it run
    channels-last and return channels-last maps (tokens again, see ``map_to_tokens``): the fast layout for the
    depthwise and 1x1 convolutions over token maps. (A transpose-then-reshape view would have a batch stride
    that the CPU convolution does not recognise as channels-last, and it would convert layouts twice.)
    """
    b, n, c = tokens.shape
    h, w = size
    if n != h * w:
        raise ValueError(f"{n} tokens do not form a {h}x{w} map")
    return tokens.reshape(b, h, w, c).permute(0, 3, 1, 2)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) map -> (B, H*W, C) row-major tokens (a view; contiguous when the map is channels-last)."""
    return x.flatten(2).transpose(1, 2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, bias: torch.Tensor | None = None,
              dropout: float = 0.0) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v over (..., L, d) tensors.

    On the CPU this is written out (matmul, softmax, matmul): ``scaled_dot_product_attention`` takes a slow
    generic path there when the value width differs from the query width (1024 vs 128 in the propagation).
    Elsewhere (CUDA) it is ``scaled_dot_product_attention``, which picks the fused kernels.
    """
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, scale=scale)
    return written_out_attention(q, k, v, scale, bias, dropout)


def written_out_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                          bias: torch.Tensor | None = None, dropout: float = 0.0) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v as three operations (matmul, softmax, matmul), on any device."""
    scores = torch.matmul(q * scale, k.transpose(-1, -2))
    if bias is not None:
        scores = scores + bias
    weights = torch.softmax(scores, dim=-1)
    if dropout:
        weights = F.dropout(weights, dropout)
    return torch.matmul(weights, v)


def silu(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x)
