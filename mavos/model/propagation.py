"""Gated propagation (DeAOT's dual-branch LSTT): visual and identity features propagated side by side.

Each layer: LayerNorm -> long-term attention to the memory + short-term local attention to the previous
frame (sharing Q, V, U) -> residual -> LayerNorm -> gated self-propagation -> residual.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from mavos.model.attention import GatedAttention, LocalGatedAttention
from mavos.model.layers import DropPath, silu


class LayerMemory(NamedTuple):
    """One layer's memory tokens, batch-first (B, L, C): what the propagation attends to.

    key (d_att) comes from the visual branch; values holds the visual value and the identity value (2d each)
    side by side, the layout the attention reads, so neither reading nor writing memory concatenates them.
    """

    key: torch.Tensor
    values: torch.Tensor

    @property
    def value(self) -> torch.Tensor:
        """The visual value (a view of the first half of ``values``)."""
        return self.values[..., : self.values.shape[-1] // 2]

    @property
    def id_value(self) -> torch.Tensor:
        """The identity value (a view of the second half of ``values``)."""
        return self.values[..., self.values.shape[-1] // 2:]


class PendingMemory(NamedTuple):
    """A propagated frame's memory before its mask is known: key, visual value and the identity-branch
    features (None in layer 0) that ``GatedPropagationLayer.fuse_identity`` turns into the identity value."""

    key: torch.Tensor
    value: torch.Tensor
    id_features: torch.Tensor | None


class GatedPropagationLayer(nn.Module):
    """One dual-branch gated propagation layer (d=256, one head, d_att=128 in DeAOT-L / MAVOS)."""

    def __init__(self, d_model: int = 256, d_att: int = 128, heads: int = 1, self_heads: int = 1,
                 expand: float = 2.0, droppath: float = 0.1, lst_dropout: float = 0.0,
                 max_local_distance: int = 7, first: bool = False):
        super().__init__()
        self.d_model = d_model
        self.d_att = d_att * heads
        self.expand_dim = int(d_model * expand)
        self.first = first
        self.norm1 = nn.LayerNorm(d_model)
        self.linear_qv = nn.Linear(d_model, self.d_att + self.expand_dim)
        self.linear_u = nn.Linear(d_model, self.expand_dim)
        if first:
            self.linear_id_v = nn.Linear(d_model, self.expand_dim)
        else:
            self.id_norm1 = nn.LayerNorm(d_model)
            self.linear_id_v = nn.Linear(2 * d_model, self.expand_dim)
            self.linear_id_u = nn.Linear(d_model, self.expand_dim)
        self.long_term_attn = GatedAttention(d_model, 2 * d_model, d_att, heads, expand)
        self.short_term_attn = LocalGatedAttention(d_model, 2 * d_model, d_att, heads, expand, max_local_distance)
        self.lst_dropout = nn.Dropout(lst_dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.id_norm2 = nn.LayerNorm(d_model)
        self.self_attn = GatedAttention(2 * d_model, 2 * d_model, d_att, self_heads, expand, project_inputs=True)
        self.droppath = DropPath(droppath)

    def fuse_identity(self, id_features: torch.Tensor | None, id_emb: torch.Tensor) -> torch.Tensor:
        """Identity value of a frame from its identity-branch features and its mask's ID embedding."""
        x = id_emb if id_features is None else torch.cat([id_features, id_emb], dim=-1)
        return silu(self.linear_id_v(x))

    def memory(self, pending: PendingMemory, id_emb: torch.Tensor) -> LayerMemory:
        """The frame's writable memory once its mask (``id_emb``) is known. The key is copied out of the
        fused query/value projection so that memory holds only its own tokens."""
        identity = self.fuse_identity(pending.id_features, id_emb)
        return LayerMemory(pending.key.contiguous(), torch.cat([pending.value, identity], dim=-1))

    def forward(self, x: torch.Tensor, x_id: torch.Tensor | None, long_term: LayerMemory | None,
                short_term: LayerMemory | None, size: tuple[int, int], id_emb: torch.Tensor | None = None):
        """Propagate one frame. With ``id_emb`` (a reference frame) the frame attends to itself.

        Returns the new visual and identity features and the frame's own memory: a ``LayerMemory`` for a
        reference frame (fused with ``id_emb``), otherwise a ``PendingMemory`` awaiting the frame's mask.
        """
        t = self.norm1(x)
        q, v = self.linear_qv(t).split([self.d_att, self.expand_dim], dim=-1)
        v = silu(v)
        u = self.linear_u(t)
        if x_id is None:
            id_features = None
            gate = torch.cat([silu(u), torch.ones_like(u)], dim=-1)
        else:
            id_features = self.id_norm1(x_id)
            gate = silu(torch.cat([u, self.linear_id_u(id_features)], dim=-1))

        pending = PendingMemory(q, v, id_features)
        if id_emb is not None:
            own = self.memory(pending, id_emb)
            long_term = short_term = own
        if long_term is None or short_term is None:
            raise ValueError("a frame without a reference needs long- and short-term memory")

        lt = self.long_term_attn(q, long_term.key, long_term.values, gate, size)
        st = self.short_term_attn(q, short_term.key, short_term.values, gate, size)
        lst = self.lst_dropout(lt + st)
        x = x + lst[..., : self.d_model]
        x_id = lst[..., self.d_model:] if x_id is None else x_id + lst[..., self.d_model:]

        s = torch.cat([self.norm2(x), self.id_norm2(x_id)], dim=-1)
        out = self.self_attn(s, s, s, s, size)
        # Two independent DropPath draws, one per branch (as the released code does).
        x = x + self.droppath(out[..., : self.d_model])
        x_id = x_id + self.droppath(out[..., self.d_model:])
        return x, x_id, (own if id_emb is not None else pending)


class Propagator(nn.Module):
    """A stack of gated propagation layers; output is GroupNorm(2) over [visual | identity] (B, HW, 2d)."""

    def __init__(self, num_layers: int = 3, d_model: int = 256, d_att: int = 128, heads: int = 1,
                 self_heads: int = 1, droppath: float = 0.1, lst_dropout: float = 0.0,
                 max_local_distance: int = 7):
        super().__init__()
        self.layers = nn.ModuleList(
            GatedPropagationLayer(d_model, d_att, heads, self_heads, droppath=droppath, lst_dropout=lst_dropout,
                                  max_local_distance=max_local_distance, first=(i == 0))
            for i in range(num_layers))
        self.output_norm = nn.GroupNorm(2, 2 * d_model)

    def forward(self, x: torch.Tensor, long_term: list[LayerMemory] | None, short_term: list[LayerMemory] | None,
                size: tuple[int, int], id_emb: torch.Tensor | None = None):
        x_id = None
        frame_memory = []
        for i, layer in enumerate(self.layers):
            x, x_id, mem = layer(x, x_id, None if long_term is None else long_term[i],
                                 None if short_term is None else short_term[i], size, id_emb)
            frame_memory.append(mem)
        out = torch.cat([x, x_id], dim=-1)
        out = self.output_norm(out.transpose(1, 2)).transpose(1, 2)
        return out, frame_memory

    def fuse_identity(self, frame_memory: list[PendingMemory], id_emb: torch.Tensor) -> list[LayerMemory]:
        """Turn a propagated frame's memory into a writable memory once its mask is known."""
        return [layer.memory(m, id_emb) for m, layer in zip(frame_memory, self.layers)]
