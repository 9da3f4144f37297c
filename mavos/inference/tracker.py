"""ObjectTracker: the memory state of one group of <= max_objects objects over a batch of videos.

Training (batched clips) and inference (one video, possibly several object groups) share it: reference, then
per frame either ``propagate`` -> ``memorize`` (training) or ``state`` -> the session's ``segment`` of the whole
frame -> ``store`` (``InferenceSession``); both end in ``store``. It owns the long-term memory state, the
short-term memory (previous frame) and the long-term gap bookkeeping; the network stays stateless.
"""
from __future__ import annotations

import torch

from mavos.inference.step import FrameStep, GroupState, ids_to_one_hot, logit_fill
from mavos.model.memory import MemoryState
from mavos.model.propagation import LayerMemory, PendingMemory
from mavos.model.vos import EncodedFrame, VOSNetwork


def one_hot_mask(mask: torch.Tensor, max_objects: int) -> torch.Tensor:
    """(B, H, W) int ids -> (B, 1 + max_objects, H, W) float one-hot; ids above ``max_objects`` are refused."""
    if mask.numel() and int(mask.max()) > max_objects:
        raise ValueError(f"mask holds object id {int(mask.max())} but the ID bank holds {max_objects} objects")
    return ids_to_one_hot(mask, max_objects)


class ObjectTracker:
    """Memory state for a batch of B videos with one object group each.

    long_term_gap: a propagated frame is written to long-term memory every ``long_term_gap`` frames
        (default: the memory policy's train_gap / test_gap: 2 / 10 for MAVOS, 2 / 5 for DeAOT-L).
    id_permutation: optional (B, 1+N, 1+N) permutation matrices (training's random ID assignment):
        identities are permuted before embedding and logits are permuted back.
    step: the per-frame functions (``FrameStep``, or a ``CompiledFrameStep`` shared by a session's trackers).
    """

    def __init__(self, net: VOSNetwork, num_objects: torch.Tensor | list[int], long_term_gap: int | None = None,
                 id_permutation: torch.Tensor | None = None, step: FrameStep | None = None):
        self.net = net
        self.num_objects = [int(n) for n in num_objects]
        if long_term_gap is None:
            long_term_gap = net.memory.train_gap if net.training else net.memory.test_gap
        self.long_term_gap = int(long_term_gap)
        self.id_permutation = id_permutation
        self.step = step if step is not None else FrameStep(net)
        self.memory: MemoryState | None = None
        self.short_term: list[LayerMemory] | None = None
        self.pending: list[PendingMemory] | None = None  # memory of the last propagated frame, awaiting its mask
        self.frame_index = -1
        self.last_memory_frame = -1
        self.size: tuple[int, int] | None = None  # token map size, fixed by the first reference frame
        self._keep: tuple[tuple, torch.Tensor] | None = None

    @property
    def num_memory_slots(self) -> int:
        return 0 if self.memory is None else self.memory.num_slots

    def keep_mask(self, device: torch.device) -> torch.Tensor:
        """(B, 1 + max_objects) bool: the identities that hold objects (made once per object count)."""
        key = (tuple(self.num_objects), device)
        if self._keep is None or self._keep[0] != key:
            ids = torch.arange(self.net.max_objects + 1)[None, :]
            self._keep = (key, (ids <= torch.tensor(self.num_objects)[:, None]).to(device))
        return self._keep[1]

    def _identity(self, one_hot: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.net.identity(self._permute_ids(one_hot), size)

    def _permute_ids(self, one_hot: torch.Tensor) -> torch.Tensor:
        if self.id_permutation is not None:
            one_hot = torch.einsum("bohw,bot->bthw", one_hot, self.id_permutation.to(one_hot.dtype))
        return one_hot

    def _finish_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Permute identities back (training) and mask the identities that hold no object."""
        if self.id_permutation is not None:
            logits = torch.einsum("bohw,bto->bthw", logits, self.id_permutation.to(logits.dtype))
        keep = self.keep_mask(logits.device)
        return logits.masked_fill(~keep[:, :, None, None], logit_fill(logits.dtype))

    def reference(self, frame: EncodedFrame, one_hot: torch.Tensor, frame_index: int | None = None) -> torch.Tensor:
        """Add a reference frame with its mask (the first frame, or a frame where new objects appear).

        one_hot: (B, 1 + max_objects, H, W) at the network's input resolution (or only the first 1 + n channels
        when the objects use ids 1..n). Returns stride-4 logits.
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
        return self._finish_logits(self.net.decode(features, frame))

    def propagate(self, frame: EncodedFrame) -> torch.Tensor:
        """Segment the next frame from memory. Returns stride-4 logits (unused identities masked)."""
        if self.memory is None:
            raise RuntimeError("ObjectTracker.propagate called before any reference frame")
        self.frame_index += 1
        if self.id_permutation is None:  # masking happens inside the step
            logits, self.pending = self.step.propagate(frame, self.memory.readout, self.short_term,
                                                       self.keep_mask(frame.tokens.device))
            return logits
        logits, self.pending = self.step.propagate(frame, self.memory.readout, self.short_term, None)
        return self._finish_logits(logits)

    def memorize(self, one_hot: torch.Tensor, write_long_term: bool = True) -> None:
        """Give the last propagated frame its mask (predicted or ground truth, one-hot or probabilities):
        it becomes the short-term memory, and enters long-term memory every ``long_term_gap`` frames."""
        if self.pending is None:
            raise RuntimeError("ObjectTracker.memorize needs a propagated frame")
        self.store(self.step.memorize(self.pending, self._permute_ids(one_hot), self.size), write_long_term)

    def state(self, device: torch.device) -> GroupState:
        """The memory the next frame attends to (what ``FrameStep.segment`` reads for this group)."""
        if self.memory is None:
            raise RuntimeError("ObjectTracker.state called before any reference frame")
        return GroupState(self.memory.readout, self.short_term, self.keep_mask(device))

    def store(self, short_term: list[LayerMemory], write_long_term: bool = True,
              frame_index: int | None = None) -> None:
        """Keep the memory of a segmented frame (identity fused): it becomes the short-term memory, and
        enters long-term memory every ``long_term_gap`` frames. ``frame_index``: the frame's index, when the
        caller segmented it without ``propagate`` (``InferenceSession``, whose ``segment`` does both)."""
        if frame_index is not None:
            self.frame_index = frame_index
        due = self.frame_index - self.last_memory_frame >= self.long_term_gap
        if due and write_long_term:
            self.memory = self.step.write(self.memory, short_term, self.size)
        self.short_term = short_term
        self.pending = None
        if due:
            self.last_memory_frame = self.frame_index
