"""Gated attention: the propagation primitive of DeAOT/MAVOS (global and windowed-local variants).

out = Proj(DWConv5x5(Attention(Q, K, V) * U)), with V and U already SiLU-gated by the caller or by the
optional input projections. Tokens are batch-first (B, L, C) in row-major order over the H x W map.
The global attention attends to every memory token; the local one only inside a window (see
``LocalGatedAttention``).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mavos.model.layers import DepthwiseConv2d, attention, in_place, map_to_tokens, silu, tokens_to_map


class DepthwiseConv(nn.Module):
    """5x5 depthwise conv over the token map (no bias) + channel dropout while training."""

    def __init__(self, channels: int, kernel_size: int = 5, dropout: float = 0.1):
        super().__init__()
        self.conv = DepthwiseConv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels,
                                    bias=False)
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
                size: tuple[int, int]) -> torch.Tensor:
        if self.project_inputs:
            q = k = self.linear_qk(q)
            v = self._pair(v, self.linear_v1, self.linear_v2)
            u = self._pair(u, self.linear_u1, self.linear_u2)
        out = self.attend(q, k, v, size)  # a new tensor: gated in place without autograd
        out = out.mul_(u) if in_place() else out * u
        return self.projection(self.dw_conv(out, size))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Multi-head attention of (B, Lq, heads*d_att) queries over (B, Lk, .) keys and values."""
        b, lq, _ = q.shape
        lk = k.shape[1]
        qh = q.reshape(b, lq, self.heads, self.d_att).transpose(1, 2)
        kh = k.reshape(b, lk, self.heads, self.d_att).transpose(1, 2)
        vh = v.reshape(b, lk, self.heads, -1).transpose(1, 2)
        out = attention(qh, kh, vh, 1.0 / math.sqrt(self.d_att),
                        dropout=self.attn_dropout if self.training else 0.0)
        return out.transpose(1, 2).reshape(b, lq, -1)


class WindowBands(NamedTuple):
    """How a token map is cut into bands of query rows for the windowed attention (see LocalGatedAttention).

    rows: query rows per band; pad: key rows of zero padding above the map (and at least as many below);
    bands: number of bands; keys: key tokens per band; index: (bands, rows*W, keys) position of each
    (query, key) pair in the query's (2r+1)^2 window, or (2r+1)^2 where the key lies outside it.
    """

    rows: int
    pad: int
    bands: int
    keys: int
    index: torch.Tensor


class LocalGatedAttention(GatedAttention):
    """Short-term propagation: each position attends to a (2r+1)^2 window of the previous frame,
    with a relative-position term predicted from the query (DeAOT's ``relative_emb_k``).

    Computed exactly inside the window, in bands of ``band_rows`` query rows: a band's queries can only see
    the key rows from r above to r below it, a contiguous run of tokens, so each band is one dense
    attention over ``(band_rows + 2r) * W`` keys (the band windows are overlapping views of the key
    and value tokens, not copies), with -inf outside each query's window. Over a 31x54 token map (480p)
    this does 1.9x fewer multiply-adds than attending to the whole map with a mask (the window alone would
    be 7.4x fewer, but needs gathered copies of the 1024-wide values), and needs no custom kernel. Maps of
    at most ``band_rows + 2r`` rows are one band (the whole map).
    """

    band_rows = 2

    def __init__(self, d_qk: int, d_vu: int, d_att: int, heads: int = 1, expand: float = 2.0,
                 max_distance: int = 7):
        super().__init__(d_qk, d_vu, d_att, heads, expand, project_inputs=False)
        self.max_distance = max_distance
        self.window = 2 * max_distance + 1
        self.relative_emb = nn.Conv2d(d_att * heads, heads * self.window ** 2, kernel_size=1, groups=heads)
        self._bands_cache: dict[tuple, WindowBands] = {}

    def bands(self, size: tuple[int, int], device: torch.device) -> WindowBands:
        """The band layout of an H x W token map (computed once per map size and device)."""
        key = (size, device, self.band_rows)
        cached = self._bands_cache.get(key)
        if cached is not None:
            return cached
        h, w = size
        r = self.max_distance
        rows, pad = (self.band_rows, r) if h > self.band_rows + 2 * r else (h, 0)
        bands = -(-h // rows)
        keys = (rows + 2 * pad) * w
        q = torch.arange(rows * w, device=device)
        k = torch.arange(keys, device=device)
        start = torch.arange(bands, device=device)[:, None, None] * rows
        qy, qx = start + (q // w)[None, :, None], (q % w)[None, :, None]
        ky, kx = start - pad + (k // w)[None, None, :], (k % w)[None, None, :]
        dy, dx = ky - qy, kx - qx
        inside = (dy.abs() <= r) & (dx.abs() <= r) & (ky >= 0) & (ky < h)
        index = torch.where(inside, (dy + r) * self.window + (dx + r), self.window ** 2)
        bands_ = WindowBands(rows, pad, bands, keys, index)
        self._bands_cache = {key: bands_}
        return bands_

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, n, _ = q.shape
        rel = map_to_tokens(self.relative_emb(tokens_to_map(q, size)))  # (B, N, heads * window^2)
        layout = self.bands(size, q.device)
        outs = []
        for i in range(b):  # one video at a time: band views of one sample need no copies
            heads = []
            for h in range(self.heads):
                qs = slice(h * self.d_att, (h + 1) * self.d_att)
                vs = v.shape[-1] // self.heads
                heads.append(self._banded(q[i, :, qs], k[i, :, qs], v[i, :, h * vs:(h + 1) * vs],
                                          rel[i, :, h * self.window ** 2:(h + 1) * self.window ** 2],
                                          size, layout))
            outs.append(torch.cat(heads, dim=-1) if self.heads > 1 else heads[0])
        return torch.stack(outs) if b > 1 else outs[0][None]

    def _banded(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel: torch.Tensor,
                size: tuple[int, int], layout: WindowBands) -> torch.Tensor:
        """One sample, one head: q, k (N, d), v (N, dv), rel (N, window^2) -> (N, dv)."""
        h, w = size
        n = h * w
        rows, pad, bands, keys = layout.rows, layout.pad, layout.bands, layout.keys
        padded_queries = bands * rows * w
        below = padded_queries + 2 * pad * w - n - pad * w  # zero key rows below the map
        k = F.pad(k, (0, 0, pad * w, below))
        v = F.pad(v, (0, 0, pad * w, below))
        # Key and value windows of every band: overlapping views (bands, d, keys) of the padded tokens.
        k_bands = k.unfold(0, keys, rows * w)
        v_bands = v.unfold(0, keys, rows * w).transpose(1, 2)
        q = F.pad(q * (1.0 / math.sqrt(self.d_att)), (0, 0, 0, padded_queries - n)).view(bands, rows * w, -1)
        # Relative-position term of every (query, key) pair; -inf (the extra last column) outside the window.
        rel = F.pad(F.pad(rel, (0, 0, 0, padded_queries - n)), (0, 1), value=float("-inf"))
        bias = torch.gather(rel.view(bands, rows * w, -1), 2, layout.index).to(q.dtype)
        weights = torch.softmax(torch.baddbmm(bias, q, k_bands), dim=-1)
        return torch.bmm(weights, v_bands).reshape(padded_queries, -1)[:n]
