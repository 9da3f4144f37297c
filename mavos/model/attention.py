"""Gated attention: the propagation primitive of DeAOT/MAVOS (global and windowed-local variants).

out = Proj(DWConv5x5(Attention(Q, K, V) * U)), with V and U already SiLU-gated by the caller or by the
optional input projections. Tokens are batch-first (B, L, C) in row-major order over the H x W map.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mavos.model.layers import map_to_tokens, silu, tokens_to_map


class DepthwiseConv(nn.Module):
    """5x5 depthwise conv over the token map (no bias) + channel dropout while training."""

    def __init__(self, channels: int, kernel_size: int = 5, dropout: float = 0.1):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = self.dropout(self.conv(tokens_to_map(tokens, size)))
        return map_to_tokens(x)


class GatedAttention(nn.Module):
    """Global gated attention (long-term propagation and self-propagation).

    With ``project_inputs`` the queries/keys and the two halves of V and U get their own linear maps
    (self-propagation over the concatenated visual|identity features); without, the caller passes
    projected Q/K and gated V/U (long-term propagation reuses the layer's shared projections).
    """

    def __init__(self, d_qk: int, d_vu: int, d_att: int, heads: int = 1, expand: float = 2.0,
                 project_inputs: bool = False, attn_dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.d_att = d_att
        self.d_vu = d_vu
        self.hidden = int(d_vu * expand)
        self.project_inputs = project_inputs
        self.attn_dropout = attn_dropout
        if project_inputs:
            half = self.hidden // 2
            self.linear_qk = nn.Linear(d_qk, d_att * heads)
            self.linear_v1 = nn.Linear(d_vu // 2, half)
            self.linear_v2 = nn.Linear(d_vu // 2, half)
            self.linear_u1 = nn.Linear(d_vu // 2, half)
            self.linear_u2 = nn.Linear(d_vu // 2, half)
        self.dw_conv = DepthwiseConv(self.hidden)
        self.projection = nn.Linear(self.hidden, d_vu)

    def _pair(self, x: torch.Tensor, first: nn.Linear, second: nn.Linear) -> torch.Tensor:
        a, b = x.split(self.d_vu // 2, dim=-1)
        a, b = first(a), second(b)
        if self.heads > 1:  # interleave so each head sees half visual, half identity channels
            shp = a.shape[:-1]
            a = a.reshape(*shp, self.heads, -1)
            b = b.reshape(*shp, self.heads, -1)
            return silu(torch.cat([a, b], dim=-1).reshape(*shp, -1))
        return silu(torch.cat([a, b], dim=-1))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, u: torch.Tensor,
                size: tuple[int, int], attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.project_inputs:
            q = k = self.linear_qk(q)
            v = self._pair(v, self.linear_v1, self.linear_v2)
            u = self._pair(u, self.linear_u1, self.linear_u2)
        b, lq, _ = q.shape
        lk = k.shape[1]
        qh = q.reshape(b, lq, self.heads, self.d_att).transpose(1, 2)
        kh = k.reshape(b, lk, self.heads, self.d_att).transpose(1, 2)
        vh = v.reshape(b, lk, self.heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            qh, kh, vh, attn_mask=attn_bias, dropout_p=self.attn_dropout if self.training else 0.0,
            scale=1.0 / math.sqrt(self.d_att))
        out = out.transpose(1, 2).reshape(b, lq, -1) * u
        return self.projection(self.dw_conv(out, size))


class LocalGatedAttention(GatedAttention):
    """Short-term propagation: each position attends to a (2r+1)^2 window of the previous frame,
    with a relative-position term predicted from the query (DeAOT's ``relative_emb_k``).

    Computed densely with an additive window mask (exactly the windowed softmax), which needs no
    custom CUDA kernel; memory is O((HW)^2) per head like the reference's local-to-global scatter.
    """

    def __init__(self, d_qk: int, d_vu: int, d_att: int, heads: int = 1, expand: float = 2.0,
                 max_distance: int = 7):
        super().__init__(d_qk, d_vu, d_att, heads, expand, project_inputs=False)
        self.max_distance = max_distance
        self.window = 2 * max_distance + 1
        self.relative_emb = nn.Conv2d(d_att * heads, heads * self.window ** 2, kernel_size=1, groups=heads)
        self._index_cache: dict[tuple, torch.Tensor] = {}

    def _window_index(self, size: tuple[int, int], device: torch.device) -> torch.Tensor:
        """(HW, HW) index of key p' in query p's window (row-major offsets), window**2 where outside."""
        key = (size, device)
        idx = self._index_cache.get(key)
        if idx is None:
            h, w = size
            ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
            ys, xs = ys.reshape(-1), xs.reshape(-1)
            dy = ys[None, :] - ys[:, None]
            dx = xs[None, :] - xs[:, None]
            r = self.max_distance
            inside = (dy.abs() <= r) & (dx.abs() <= r)
            idx = torch.where(inside, (dy + r) * self.window + (dx + r), torch.full_like(dy, self.window ** 2))
            self._index_cache = {key: idx}
        return idx

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, u: torch.Tensor,
                size: tuple[int, int], attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = q.shape
        rel = self.relative_emb(tokens_to_map(q, size)).reshape(b, self.heads, self.window ** 2, n)
        outside = torch.full((b, self.heads, 1, n), float("-inf"), dtype=rel.dtype, device=rel.device)
        rel = torch.cat([rel, outside], dim=2).transpose(2, 3)  # (B, heads, query, window**2 + 1)
        idx = self._window_index(size, q.device).expand(b, self.heads, n, n)
        bias = torch.gather(rel, 3, idx).to(q.dtype)
        return super().forward(q, k, v, u, size, attn_bias=bias)
