"""Long-term memory policies behind one small interface.

A policy decides how a frame's per-layer ``LayerMemory`` enters the long-term memory; the propagation
only ever reads ``state.readout``, which is also the only copy of the memory (slots are views of it). Policies:
- ``MCAMemory`` (MAVOS): a permanent reference slot plus one recurrent slot into which modulated
  cross-attention fuses every new memory frame: two slots, constant cost, however long the video.
- ``BankMemory`` (DeAOT): append every memory frame; grows without bound.
- ``FIFOMemory``: reference + the last ``capacity`` frames; an example of adding a policy without
  touching the propagation code.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mavos.model.mca import ModulatedCrossAttention, ValueLayout
from mavos.model.propagation import LayerMemory


def _concat(parts: list[LayerMemory]) -> LayerMemory:
    return LayerMemory(*(torch.cat(tensors, dim=1) for tensors in zip(*parts)))


@dataclass
class MemoryState:
    """Per layer, the long-term memory as one ``LayerMemory`` of (B, slots * HW, C) tokens: exactly the
    tensors the propagation reads, held once. Slot i is tokens [i*HW, (i+1)*HW) (``slot`` gives views).

    slot_tokens: tokens per slot (HW of the token map).
    """

    readout: list[LayerMemory]
    slot_tokens: int

    @property
    def num_slots(self) -> int:
        return self.num_tokens // self.slot_tokens

    @property
    def num_tokens(self) -> int:
        return self.readout[0].key.shape[1]

    def slot(self, index: int) -> list[LayerMemory]:
        """Per layer, views of slot ``index`` (negative counts from the end)."""
        index = index % self.num_slots
        window = slice(index * self.slot_tokens, (index + 1) * self.slot_tokens)
        return [LayerMemory(m.key[:, window], m.values[:, window]) for m in self.readout]

    @property
    def slots(self) -> list[list[LayerMemory]]:
        """Per layer, the list of slot views in memory order."""
        per_slot = [self.slot(i) for i in range(self.num_slots)]
        return [[s[layer] for s in per_slot] for layer in range(len(self.readout))]


class MemoryPolicy(nn.Module):
    """Interface: ``init`` from a reference frame, ``write`` a new memory frame or a new reference.

    train_gap / test_gap: a propagated frame is written every so many frames (the long-term gap).
    fixed_slots: for a memory that stops growing, its slots once full (every later write keeps all shapes,
    so the per-frame step can be compiled and exported); None for a memory that grows without bound.
    """

    fixed_slots: int | None = None

    def __init__(self, train_gap: int = 2, test_gap: int = 10):
        super().__init__()
        if train_gap < 1 or test_gap < 1:
            raise ValueError("memory gaps must be >= 1")
        self.train_gap, self.test_gap = int(train_gap), int(test_gap)

    def init(self, reference: list[LayerMemory]) -> MemoryState:
        return MemoryState(list(reference), reference[0].key.shape[1])

    def write(self, state: MemoryState, frame: list[LayerMemory], size: tuple[int, int]) -> MemoryState:
        raise NotImplementedError

    def add_reference(self, state: MemoryState, reference: list[LayerMemory], size: tuple[int, int]) -> MemoryState:
        """A reference added mid-video (new objects). DeAOT and MAVOS both treat it as a memory write."""
        return self.write(state, reference, size)


class BankMemory(MemoryPolicy):
    """DeAOT: every memory frame is appended to the reference; memory grows linearly with the video."""

    def __init__(self, train_gap: int = 2, test_gap: int = 5):
        super().__init__(train_gap, test_gap)

    def write(self, state: MemoryState, frame: list[LayerMemory], size: tuple[int, int]) -> MemoryState:
        return MemoryState([_concat([m, f]) for m, f in zip(state.readout, frame)], state.slot_tokens)


class FIFOMemory(MemoryPolicy):
    """Reference + the most recent ``capacity`` memory frames."""

    def __init__(self, capacity: int = 4, train_gap: int = 2, test_gap: int = 10):
        super().__init__(train_gap, test_gap)
        if capacity < 1:
            raise ValueError("FIFOMemory capacity must be >= 1")
        self.capacity = capacity
        self.fixed_slots = 1 + capacity

    def write(self, state: MemoryState, frame: list[LayerMemory], size: tuple[int, int]) -> MemoryState:
        n = state.slot_tokens
        recent = max(n, state.num_tokens - (self.capacity - 1) * n)  # first token of the newest capacity-1 frames
        readout = [_concat([LayerMemory(m.key[:, :n], m.values[:, :n]), LayerMemory(m.key[:, recent:], m.values[:, recent:]), f])
                   for m, f in zip(state.readout, frame)]
        return MemoryState(readout, n)


class MCAMemory(MemoryPolicy):
    """MAVOS: memory [recurrent, reference]; the recurrent slot is MCA(new, recurrent) after its first write.

    One MCA block per layer for each of key, value and identity value (dims d_att, 2d, 2d).
    """

    fixed_slots = 2

    def __init__(self, num_layers: int = 3, key_dim: int = 128, value_dim: int = 512, heads: int = 4,
                 drop_path: float = 0.1, value_layout: ValueLayout = "released", train_gap: int = 2,
                 test_gap: int = 10):
        super().__init__(train_gap, test_gap)
        self.fusers = nn.ModuleList(
            nn.ModuleDict({
                "key": ModulatedCrossAttention(key_dim, heads, drop_path=drop_path, value_layout=value_layout),
                "value": ModulatedCrossAttention(value_dim, heads, drop_path=drop_path, value_layout=value_layout),
                "id_value": ModulatedCrossAttention(value_dim, heads, drop_path=drop_path, value_layout=value_layout),
            }) for _ in range(num_layers))

    def write(self, state: MemoryState, frame: list[LayerMemory], size: tuple[int, int]) -> MemoryState:
        """[recurrent, reference]: the first write stores the frame itself, later ones fuse it into the slot.
        The recurrent slot comes first, as in the released code (attention itself is order-invariant)."""
        if state.num_slots == 1:
            return MemoryState([_concat([new, ref]) for new, ref in zip(frame, state.readout)], state.slot_tokens)
        recurrent, reference = state.slot(0), state.slot(1)
        readout = []
        for new, old, ref, fuse in zip(frame, recurrent, reference, self.fusers):
            fused = LayerMemory(fuse["key"](new.key, old.key, size),
                                torch.cat([fuse["value"](new.value, old.value, size),
                                           fuse["id_value"](new.id_value, old.id_value, size)], dim=-1))
            readout.append(_concat([fused, ref]))
        return MemoryState(readout, state.slot_tokens)
