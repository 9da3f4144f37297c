"""The fixed-shape per-frame step as modules whose memory state is explicit inputs and outputs.

With a fixed-size memory (MCA: two slots) every frame's computation has the same shapes, so one video runs
as three graphs over plain tensors, with no Python between frames:

- ``ReferenceStep``: (frame, mask, num_objects) -> (logits, state): the first frame with its mask;
- ``PropagationStep(write=False)``: (frame, num_objects, state) -> (logits, mask, short-term state);
- ``PropagationStep(write=True)``: the same, and also fuses the frame into long-term memory ->
  (logits, mask, short-term state, long-term state, memory_fused). Run it on frames gap, 2*gap, ...

State (per layer l, B = batch, N = tokens of the stride-16 map, E = 2 * d_model):
``long_key_l`` (B, 2N, d_att), ``long_values_l`` (B, 2N, 2E) [recurrent slot | reference slot];
``short_key_l`` (B, N, d_att), ``short_values_l`` (B, N, 2E) (the previous frame); ``memory_fused`` (B,) 1.0
once the recurrent slot holds a fused memory. Before the first write the recurrent slot holds a copy of the
reference: attending to [ref, ref] equals attending to [ref] (each key's weight halves, twice the keys), so
the shapes are fixed from the first frame on; the first write then stores the frame (MCA's first update),
later ones fuse it (``memory_fused`` selects which).

The mask a frame is memorised with is the step's own prediction: the argmax of its logits upsampled to the
input size, over the identities 0..num_objects (as ``InferenceSession`` does for one group without flip).
Frames are (B, 3, H, W) float RGB in [0, 1] at exactly the export size.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from mavos.inference.step import ids_to_one_hot, logit_fill, memorize, propagate
from mavos.model.memory import MemoryState
from mavos.model.propagation import LayerMemory
from mavos.model.vos import VOSNetwork


def state_names(num_layers: int, long_term: bool = True, short_term: bool = True) -> list[str]:
    names = []
    if long_term:
        names += [f"long_{kind}_{layer}" for layer in range(num_layers) for kind in ("key", "values")]
    if short_term:
        names += [f"short_{kind}_{layer}" for layer in range(num_layers) for kind in ("key", "values")]
    return names


def inference_network(net: VOSNetwork) -> VOSNetwork:
    """A copy of ``net`` for export: on the CPU, eval mode, BatchNorm folded into the encoder's convolutions;
    ``net`` itself keeps its device and mode."""
    out = copy.deepcopy(net).cpu().eval()
    out.encoder = out.inference_encoder()  # the copy's own folded encoder (rebuilt for the CPU weights)
    out._folded_encoder = None
    for p in out.parameters():
        p.requires_grad_(False)
    return out


class _Step(nn.Module):
    def __init__(self, net: VOSNetwork, size: tuple[int, int]):
        super().__init__()
        if net.memory.fixed_slots != 2:
            raise ValueError(f"only a two-slot fixed-size memory (MCA) exports; this network's memory is "
                             f"{type(net.memory).__name__}")
        self.net = net
        self.size = tuple(size)
        h, w = self.size
        multiple, offset = net.size_multiple
        self.tokens = ((h - offset) // multiple + offset, (w - offset) // multiple + offset)
        self.num_layers = len(net.propagator.layers)

    def keep(self, num_objects: torch.Tensor) -> torch.Tensor:
        ids = torch.arange(self.net.max_objects + 1, device=num_objects.device)
        return ids[None, :] <= num_objects[:, None]

    def layers(self, flat: tuple[torch.Tensor, ...]) -> list[LayerMemory]:
        return [LayerMemory(flat[2 * i], flat[2 * i + 1]) for i in range(self.num_layers)]

    @staticmethod
    def flatten(memory: list[LayerMemory]) -> list[torch.Tensor]:
        return [t for m in memory for t in (m.key, m.values)]


class ReferenceStep(_Step):
    """(frame (B,3,H,W), mask (B,H,W) int64 ids, num_objects (B,) int64) -> (logits, long..., short...,
    memory_fused)."""

    def forward(self, frame: torch.Tensor, mask: torch.Tensor, num_objects: torch.Tensor):
        net = self.net
        enc = net.encode(frame)
        id_emb = net.identity(ids_to_one_hot(mask, net.max_objects), enc.size)
        features, memory = net.propagate(enc, None, None, id_emb)
        logits = net.decode(features, enc)
        logits = logits.masked_fill(~self.keep(num_objects)[:, :, None, None], logit_fill(logits.dtype))
        long_term = [LayerMemory(torch.cat([m.key, m.key], 1), torch.cat([m.values, m.values], 1)) for m in memory]
        fused = torch.zeros(frame.shape[0], dtype=frame.dtype, device=frame.device)
        return (logits, *self.flatten(long_term), *self.flatten(memory), fused)


class PropagationStep(_Step):
    """(frame, num_objects, long..., short..., memory_fused) -> (logits, mask, short...) or, with ``write``,
    (logits, mask, short..., long..., memory_fused)."""

    def __init__(self, net: VOSNetwork, size: tuple[int, int], write: bool):
        super().__init__(net, size)
        self.write = write

    def forward(self, frame: torch.Tensor, num_objects: torch.Tensor, *state: torch.Tensor):
        net, n = self.net, self.tokens[0] * self.tokens[1]
        layers = self.num_layers
        long_term, short_term = self.layers(state[:2 * layers]), self.layers(state[2 * layers:4 * layers])
        fused_flag = state[4 * layers]
        enc = net.encode(frame)
        logits, pending = propagate(net, enc.tokens, enc.skips, enc.size, long_term, short_term,
                                    self.keep(num_objects))
        full = F.interpolate(logits, size=self.size, mode="bilinear", align_corners=net.align_corners)
        mask = full.argmax(dim=1)
        short_term = memorize(net, pending, ids_to_one_hot(mask, net.max_objects), enc.size)
        if not self.write:
            return (logits, mask, *self.flatten(short_term))
        fused = net.memory.write(MemoryState(long_term, n), short_term, enc.size).readout
        reference = [LayerMemory(m.key[:, n:], m.values[:, n:]) for m in long_term]
        first = net.memory.write(MemoryState(reference, n), short_term, enc.size).readout
        was_fused = (fused_flag > 0)[:, None, None]
        new_long = [LayerMemory(torch.where(was_fused, f.key, s.key), torch.where(was_fused, f.values, s.values))
                    for f, s in zip(fused, first)]
        return (logits, mask, *self.flatten(short_term), *self.flatten(new_long), torch.ones_like(fused_flag))
