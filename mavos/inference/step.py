"""The per-frame step as functions of tensors, run eagerly or compiled.

``ObjectTracker`` keeps the bookkeeping (frame counter, long-term gap, object counts, ID permutations) and
calls three pure functions of tensors for the work:

- ``encode(frames) -> EncodedFrame``;
- ``propagate(frame, long_term, short_term, keep) -> (logits, pending)``: attend to memory, decode logits;
- ``memorize(pending, one_hot, long_term, write) -> (short_term, long_term)``: give the frame its mask, and
  write it to long-term memory when ``write``.

With a fixed-size memory (MCA) every input has the same shape from the first long-term write on, so
``CompiledFrameStep`` runs them through ``torch.compile`` (CUDA graphs on a GPU, ``mode="reduce-overhead"``)
and falls back to eager execution, with one warning, wherever compiling is not possible.
"""
from __future__ import annotations

import shutil
import warnings
import weakref
from collections.abc import Callable

import torch

from mavos.model.layers import tokens_to_map
from mavos.model.memory import MemoryState
from mavos.model.propagation import LayerMemory, PendingMemory
from mavos.model.vos import EncodedFrame, VOSNetwork


def logit_fill(dtype: torch.dtype) -> float:
    """The logit given to identities that hold no object (representable in half precision)."""
    return -1e4 if dtype in (torch.float16, torch.bfloat16) else -1e10


class FrameStep:
    """The eager step. Stateless: all state goes in and comes out as tensors."""

    def __init__(self, net: VOSNetwork):
        self._net = net

    @property
    def net(self) -> VOSNetwork:
        return self._net

    def encode(self, frames: torch.Tensor) -> EncodedFrame:
        return self.net.encode(frames)

    def propagate(self, frame: EncodedFrame, long_term: list[LayerMemory], short_term: list[LayerMemory],
                  keep: torch.Tensor | None) -> tuple[torch.Tensor, list[PendingMemory]]:
        """Stride-4 logits (identities outside ``keep`` (B, 1+N) bool set to a large negative value) and the
        frame's pending memory."""
        return propagate(self.net, frame.tokens, frame.skips, frame.size, long_term, short_term, keep)

    def memorize(self, pending: list[PendingMemory], one_hot: torch.Tensor, size: tuple[int, int],
                 long_term: MemoryState | None, write: bool) -> tuple[list[LayerMemory], MemoryState | None]:
        short_term = memorize(self.net, pending, one_hot, size)
        if write:
            long_term = self.net.memory.write(long_term, short_term, size)
        return short_term, long_term


def propagate(net: VOSNetwork, tokens: torch.Tensor, skips: list[torch.Tensor], size: tuple[int, int],
              long_term: list[LayerMemory], short_term: list[LayerMemory],
              keep: torch.Tensor | None) -> tuple[torch.Tensor, list[PendingMemory]]:
    features, pending = net.propagator(tokens, long_term, short_term, size)
    logits = net.decoder(tokens_to_map(features, size), skips)
    if keep is not None:
        logits = logits.masked_fill(~keep[:, :, None, None], logit_fill(logits.dtype))
    return logits, pending


def memorize(net: VOSNetwork, pending: list[PendingMemory], one_hot: torch.Tensor,
             size: tuple[int, int]) -> list[LayerMemory]:
    return net.fuse_identity(pending, net.identity(one_hot, size))


def compiler_problem(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot work here, or None."""
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    if device.type == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++", "cl")):
        return "no C++ compiler found for the CPU backend"
    if device.type == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:  # pragma: no cover - very old torch
            return "triton is not available"
        if not has_triton():
            return "triton is not available"
    return None


class CompiledFrameStep(FrameStep):
    """``FrameStep`` with compiled functions wherever the shapes are fixed.

    The encoder always runs compiled; propagation, and memorizing with a long-term write, once the memory
    has reached its fixed size (both slots of MCA written), so that no shape ever changes under a compiled
    function. On CUDA, ``mode="reduce-overhead"`` captures CUDA graphs; their outputs live in buffers that
    the next replay overwrites, so outputs are cloned. Any failure to compile (no compiler, an op the
    compiler does not support) gives one warning and eager execution from then on, never an error.
    """

    @classmethod
    def shared(cls, net: VOSNetwork, device: torch.device) -> "CompiledFrameStep":
        """The one compiled step of ``net`` on ``device``: every session (one per video) reuses its compiled
        functions instead of compiling again (and dynamo's recompilation limit is never reached)."""
        per_net = _SHARED.setdefault(net, {})
        key = str(device)
        if key not in per_net:
            per_net[key] = cls(net, device)
        return per_net[key]

    def __init__(self, net: VOSNetwork, device: torch.device, mode: str | None = None, backend: str = "inductor"):
        super().__init__(net)
        self._net = weakref.ref(net)  # held weakly: the network owns its shared step, not the other way round
        self.device = device
        self.backend = backend
        self.mode = mode if mode is not None else ("reduce-overhead" if device.type == "cuda" else "default")
        self.cudagraphs = device.type == "cuda" and self.mode == "reduce-overhead" and backend == "inductor"
        self.disabled: str | None = None
        if net.memory.fixed_slots is None:
            self.disabled = (f"session.compile needs a fixed-size memory (MCA); {type(net.memory).__name__} grows "
                             f"with the video, so every memory write would change the shapes")
        else:
            self.disabled = compiler_problem(device)
        if self.disabled:
            warnings.warn(f"session.compile: running eagerly ({self.disabled})", stacklevel=3)
        self._compiled: dict[str, Callable] = {}
        self.warmed: set = set()  # (inference size, autocast dtype) pairs InferenceSession.warm_up has run

    @property
    def net(self) -> VOSNetwork:
        return self._net()

    # ------------------------------------------------------------------ pure functions that get compiled
    def _encode_fn(self, frames, encoder):
        enc = self.net.encode(frames, encoder)
        return enc.tokens, enc.skips, enc.size

    def _propagate_fn(self, tokens, skips, size, long_term, short_term, keep):
        return propagate(self.net, tokens, skips, size, long_term, short_term, keep)

    def _memorize_fn(self, pending, one_hot, size):
        return memorize(self.net, pending, one_hot, size)

    def _memorize_write_fn(self, pending, one_hot, size, readout, slot_tokens):
        short_term = memorize(self.net, pending, one_hot, size)
        return short_term, self.net.memory.write(MemoryState(readout, slot_tokens), short_term, size).readout

    # ------------------------------------------------------------------ dispatch
    def _full(self, size: tuple[int, int]) -> int:
        """Tokens in a full fixed-size memory (from then on, shapes never change)."""
        return self.net.memory.fixed_slots * size[0] * size[1]

    def _run(self, name: str, fn: Callable, *args):
        if self.disabled:
            return fn(*args)
        compiled = self._compiled.get(name)
        if compiled is None:
            options = {"mode": self.mode} if self.backend == "inductor" else {}
            compiled = self._compiled[name] = torch.compile(fn, backend=self.backend, dynamic=False, **options)
        try:
            if self.cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()
                return _clone(compiled(*args))
            return compiled(*args)
        except Exception as e:  # noqa: BLE001 - any compiler failure means: run eagerly
            self.disabled = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            warnings.warn(f"session.compile: compiling failed, running eagerly from here on ({self.disabled})",
                          stacklevel=3)
            return fn(*args)

    def _eager(self) -> bool:
        return self.disabled is not None or self.net.training

    def encode(self, frames: torch.Tensor) -> EncodedFrame:
        if self._eager():
            return super().encode(frames)
        # the folded encoder is looked up outside the compiled region (it is rebuilt if the weights change)
        tokens, skips, size = self._run("encode", self._encode_fn, frames, self.net.inference_encoder())
        return EncodedFrame(list(skips), tokens, tuple(size))

    def propagate(self, frame, long_term, short_term, keep):
        if self._eager() or long_term[0].key.shape[1] != self._full(frame.size):
            return super().propagate(frame, long_term, short_term, keep)
        return self._run("propagate", self._propagate_fn, frame.tokens, frame.skips, frame.size, long_term,
                         short_term, keep)

    def memorize(self, pending, one_hot, size, long_term, write):
        if self._eager():
            return super().memorize(pending, one_hot, size, long_term, write)
        if not write:
            return self._run("memorize", self._memorize_fn, pending, one_hot, size), long_term
        if long_term.num_tokens != self._full(size):
            return super().memorize(pending, one_hot, size, long_term, write)
        short_term, readout = self._run("memorize_write", self._memorize_write_fn, pending, one_hot, size,
                                        long_term.readout, long_term.slot_tokens)
        return short_term, MemoryState(readout, long_term.slot_tokens)


_SHARED: "weakref.WeakKeyDictionary[VOSNetwork, dict[str, CompiledFrameStep]]" = weakref.WeakKeyDictionary()


def _clone(tree):
    """Copy every tensor of a nested output out of the CUDA graph's buffers."""
    if isinstance(tree, torch.Tensor):
        return tree.clone()
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(_clone(t) for t in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(_clone(t) for t in tree)
    return tree
