"""Long-term memory policies behind one small interface.

A policy decides how a frame's per-layer ``LayerMemory`` enters the long-term memory; the propagation
only ever reads ``state.readout``. Policies:
- ``MCAMemory`` (MAVOS): a permanent reference slot plus one recurrent slot into which modulated
  cross-attention fuses every new memory frame: two slots, constant cost, however long the video.
- ``BankMemory`` (DeAOT): append every memory frame; grows without bound.
- ``FIFOMemory``: reference + the last ``capacity`` frames; an example of adding a policy without
  touching the propagation code.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mavos.model.mca import ModulatedCrossAttention, ValueLayout
from mavos.model.propagation import LayerMemory


def _concat(slots: list[LayerMemory]) -> LayerMemory:
    if len(slots) == 1:
        return slots[0]
    return LayerMemory(*(torch.cat(parts, dim=1) for parts in zip(*slots)))


@dataclass
class MemoryState:
    """Per layer, the list of memory slots (each ``LayerMemory`` of HW tokens) and their concatenation."""

    slots: list[list[LayerMemory]]
    readout: list[LayerMemory] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.readout:
            self.readout = [_concat(s) for s in self.slots]

    @property
    def num_slots(self) -> int:
        return len(self.slots[0])

    @property
    def num_tokens(self) -> int:
        return self.readout[0].key.shape[1]


class MemoryPolicy(nn.Module):
    """Interface: ``init`` from a reference frame, ``write`` a new memory frame or a new reference.

    train_gap / test_gap: a propagated frame is written every so many frames (the long-term gap).
    """

    def __init__(self, train_gap: int = 2, test_gap: int = 10):
        super().__init__()
        if train_gap < 1 or test_gap < 1:
            raise ValueError("memory gaps must be >= 1")
        self.train_gap, self.test_gap = int(train_gap), int(test_gap)

    def init(self, reference: list[LayerMemory]) -> MemoryState:
        return MemoryState([[m] for m in reference])

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
        return MemoryState([slots + [m] for slots, m in zip(state.slots, frame)])


class FIFOMemory(MemoryPolicy):
    """Reference + the most recent ``capacity`` memory frames."""

    def __init__(self, capacity: int = 4, train_gap: int = 2, test_gap: int = 10):
        super().__init__(train_gap, test_gap)
        if capacity < 1:
            raise ValueError("FIFOMemory capacity must be >= 1")
        self.capacity = capacity

    def write(self, state: MemoryState, frame: list[LayerMemory], size: tuple[int, int]) -> MemoryState:
        return MemoryState([[slots[0]] + (slots[1:] + [m])[-self.capacity:] for slots, m in zip(state.slots, frame)])


class MCAMemory(MemoryPolicy):
    """MAVOS: [reference, recurrent]; the recurrent slot is MCA(new, recurrent) after its first write.

    One MCA block per layer for each of key, value and identity value (dims d_att, 2d, 2d).
    """

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
        slots = []
        for layer_slots, new, fuse in zip(state.slots, frame, self.fusers):
            reference = layer_slots[0]
            if len(layer_slots) == 1:
                recurrent = new
            else:
                old = layer_slots[1]
                recurrent = LayerMemory(*(fuse[name](n, o, size) for name, n, o in zip(LayerMemory._fields, new, old)))
            # Recurrent slot first, as in the released code (attention itself is order-invariant).
            slots.append([reference, recurrent])
        return MemoryState(slots, [_concat([s[1], s[0]]) for s in slots])
