"""ObjectTracker: the memory state of one group of <= max_objects objects over a batch of videos.

This is the single code path that training (batched clips) and inference (one video, possibly several
object groups) share: reference -> (propagate -> memorize)*. It owns the long-term memory state, the
short-term memory (previous frame) and the long-term gap bookkeeping; the network stays stateless.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mavos.model.memory import MemoryState
from mavos.model.propagation import LayerMemory
from mavos.model.vos import EncodedFrame, VOSNetwork


def one_hot_mask(mask: torch.Tensor, max_objects: int) -> torch.Tensor:
    """(B, H, W) int ids -> (B, 1 + max_objects, H, W) float one-hot."""
    if mask.numel() and int(mask.max()) > max_objects:
        raise ValueError(f"mask holds object id {int(mask.max())} but the ID bank holds {max_objects} objects")
    return F.one_hot(mask.long(), max_objects + 1).permute(0, 3, 1, 2).float()


class ObjectTracker:
    """Memory state for a batch of B videos with one object group each.

    long_term_gap: a propagated frame is written to long-term memory every ``long_term_gap`` frames
        (default: the memory policy's train_gap / test_gap: 2 / 10 for MAVOS, 2 / 5 for DeAOT-L).
    id_permutation: optional (B, 1+N, 1+N) permutation matrices (training's random ID assignment):
        identities are permuted before embedding and logits are permuted back.
    """

    def __init__(self, net: VOSNetwork, num_objects: torch.Tensor | list[int], long_term_gap: int | None = None,
                 id_permutation: torch.Tensor | None = None):
        self.net = net
        self.num_objects = [int(n) for n in num_objects]
        if long_term_gap is None:
            long_term_gap = net.memory.train_gap if net.training else net.memory.test_gap
        self.long_term_gap = int(long_term_gap)
        self.id_permutation = id_permutation
        self.memory: MemoryState | None = None
        self.short_term: list[LayerMemory] | None = None
        self.pending: list[LayerMemory] | None = None  # memory of the last propagated frame, awaiting its mask
        self.frame_index = -1
        self.last_memory_frame = -1
        self.size: tuple[int, int] | None = None  # token map size, fixed by the first reference frame

    @property
    def num_memory_slots(self) -> int:
        return 0 if self.memory is None else self.memory.num_slots

    def _identity(self, one_hot: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.id_permutation is not None:
            one_hot = torch.einsum("bohw,bot->bthw", one_hot, self.id_permutation.to(one_hot.dtype))
        return self.net.identity(one_hot, size)

    def _finish_logits(self, features: torch.Tensor, frame: EncodedFrame) -> torch.Tensor:
        logits = self.net.decode(features, frame)
        if self.id_permutation is not None:
            logits = torch.einsum("bohw,bto->bthw", logits, self.id_permutation.to(logits.dtype))
        fill = -1e4 if logits.dtype in (torch.float16, torch.bfloat16) else -1e10
        keep = torch.arange(logits.shape[1], device=logits.device)[None, :] <= torch.tensor(
            self.num_objects, device=logits.device)[:, None]
        return logits.masked_fill(~keep[:, :, None, None], fill)

    def reference(self, frame: EncodedFrame, one_hot: torch.Tensor, frame_index: int | None = None) -> torch.Tensor:
        """Add a reference frame with its mask (the first frame, or a frame where new objects appear).

        one_hot: (B, 1 + max_objects, H, W) at the network's input resolution. Returns stride-4 logits.
        """
        self.frame_index = self.frame_index + 1 if frame_index is None else frame_index
        self.size = frame.size
        id_emb = self._identity(one_hot, frame.size)
        features, memory = self.net.propagate(frame, None, None, id_emb)
        if self.memory is None:
            self.memory = self.net.memory.init(memory)
        else:
            self.memory = self.net.memory.add_reference(self.memory, memory, frame.size)
        self.short_term = memory
        self.pending = None
        self.last_memory_frame = self.frame_index
        return self._finish_logits(features, frame)

    def propagate(self, frame: EncodedFrame) -> torch.Tensor:
        """Segment the next frame from memory. Returns stride-4 logits (unused identities masked)."""
        if self.memory is None:
            raise RuntimeError("ObjectTracker.propagate called before any reference frame")
        self.frame_index += 1
        features, self.pending = self.net.propagate(frame, self.memory.readout, self.short_term)
        return self._finish_logits(features, frame)

    def memorize(self, one_hot: torch.Tensor, write_long_term: bool = True) -> None:
        """Give the last propagated frame its mask (predicted or ground truth, one-hot or probabilities):
        it becomes the short-term memory, and enters long-term memory every ``long_term_gap`` frames."""
        if self.pending is None:
            raise RuntimeError("ObjectTracker.memorize needs a propagated frame")
        id_emb = self._identity(one_hot, self.size)
        fused = self.net.fuse_identity(self.pending, id_emb)
        self.short_term = fused
        self.pending = None
        if self.frame_index - self.last_memory_frame >= self.long_term_gap:
            if write_long_term:
                self.memory = self.net.memory.write(self.memory, fused, self.size)
            self.last_memory_frame = self.frame_index
