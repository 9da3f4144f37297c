"""The VOS network: encode a frame, propagate it against memory, decode object logits.

Stateless: memory lives in ``MemoryState`` objects owned by the caller (``mavos.inference``), so one
network serves many videos, object groups and training clips at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mavos.model.backbone import Backbone
from mavos.model.decoder import FPNDecoder
from mavos.model.folding import InferenceCopy, has_batchnorm
from mavos.model.identity import IDBank
from mavos.model.layers import map_to_tokens, tokens_to_map
from mavos.model.memory import MemoryPolicy
from mavos.model.propagation import LayerMemory, PendingMemory, Propagator

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class EncodedFrame:
    """Encoder output for a batch of frames: skips at strides 4, 8, 16 and projected stride-16 tokens."""

    skips: list[torch.Tensor]
    tokens: torch.Tensor
    size: tuple[int, int]

    def select(self, index: torch.Tensor | slice) -> "EncodedFrame":
        return EncodedFrame([s[index] for s in self.skips], self.tokens[index], self.size)


class VOSNetwork(nn.Module):
    """DeAOT-style hierarchical propagation with a pluggable long-term memory policy (MAVOS: ``MCAMemory``)."""

    def __init__(self, encoder: Backbone, memory: MemoryPolicy, max_objects: int = 10, d_model: int = 256,
                 d_att: int = 128, num_layers: int = 3, heads: int = 1, self_heads: int = 1,
                 droppath: float = 0.1, lst_dropout: float = 0.0, id_dropout: float = 0.0,
                 max_local_distance: int = 7, align_corners: bool = True):
        super().__init__()
        self.max_objects = max_objects
        self.align_corners = align_corners
        self.encoder = encoder
        # Eval-mode encoder with BatchNorm folded into its convolutions (rebuilt when the weights change).
        self._folded_encoder = InferenceCopy() if has_batchnorm(encoder) else None
        self.encoder_projector = nn.Conv2d(encoder.channels[-1], d_model, kernel_size=1)
        nn.init.xavier_uniform_(self.encoder_projector.weight)
        self.id_bank = IDBank(max_objects, d_model, align_corners, id_dropout)
        self.propagator = Propagator(num_layers, d_model, d_att, heads, self_heads, droppath, lst_dropout,
                                     max_local_distance)
        for p in self.propagator.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.decoder = FPNDecoder(2 * d_model, tuple(encoder.channels[:3]), max_objects + 1, d_model, align_corners)
        self.memory = memory
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def size_multiple(self) -> tuple[int, int]:
        """Input sizes must be ``a * k + b``: 16k+1 with align_corners, 16k otherwise."""
        return (16, 1) if self.align_corners else (16, 0)

    def inference_encoder(self) -> nn.Module:
        """The encoder to run: in eval mode a copy with BatchNorm folded into the convolutions and channels-last
        weights (same outputs, 2-3x faster on the CPU); while training, the encoder itself."""
        if self.training or self._folded_encoder is None:
            return self.encoder
        return self._folded_encoder.get(self.encoder)

    def encode(self, frames: torch.Tensor, encoder: nn.Module | None = None) -> EncodedFrame:
        """frames: (B, 3, H, W) float RGB in [0, 1]. ``encoder``: the module from ``inference_encoder()``,
        when the caller already holds it (the compiled step)."""
        x = (frames - self.pixel_mean.to(frames.dtype)) / self.pixel_std.to(frames.dtype)
        encoder = self.inference_encoder() if encoder is None else encoder
        if encoder is not self.encoder:
            x = x.contiguous(memory_format=torch.channels_last)
        feats = encoder(x)
        top = self.encoder_projector(feats[-1])
        return EncodedFrame(list(feats[:3]), map_to_tokens(top), (top.shape[-2], top.shape[-1]))

    def identity(self, one_hot: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, 1 + max_objects, H, W) one-hot / probabilities -> (B, HW, d) identity tokens. Fewer channels
        (1 + n, n < max_objects) mean identities n+1.. are absent: the ID bank then skips their zeros."""
        if not 1 <= one_hot.shape[1] <= self.max_objects + 1:
            raise ValueError(f"identity mask has {one_hot.shape[1]} channels; the ID bank holds "
                             f"{self.max_objects} objects + background")
        emb = self.id_bank(one_hot)
        if emb.shape[1] != size[0] * size[1]:
            raise ValueError(f"mask of size {tuple(one_hot.shape[-2:])} gives {emb.shape[1]} ID tokens but the "
                             f"frame features are {size[0]}x{size[1]}; frame and mask sizes must match "
                             f"and be 16k+{self.size_multiple[1]}")
        return emb

    def propagate(self, frame: EncodedFrame, long_term: list[LayerMemory] | None,
                  short_term: list[LayerMemory] | None, id_emb: torch.Tensor | None = None):
        """Returns (features (B, HW, 2d), per-layer memory of this frame: ``LayerMemory`` for a reference
        frame, ``PendingMemory`` otherwise)."""
        return self.propagator(frame.tokens, long_term, short_term, frame.size, id_emb)

    def fuse_identity(self, frame_memory: list[PendingMemory], id_emb: torch.Tensor) -> list[LayerMemory]:
        return self.propagator.fuse_identity(frame_memory, id_emb)

    def decode(self, features: torch.Tensor, frame: EncodedFrame) -> torch.Tensor:
        """Logits (B, 1 + max_objects, H/4, W/4) from propagated features."""
        return self.decoder(tokens_to_map(features, frame.size), frame.skips)
