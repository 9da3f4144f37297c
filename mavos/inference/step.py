"""The per-frame step as functions of tensors, run eagerly or compiled.

The callers keep the bookkeeping (frame counter, long-term gap, object groups, ID permutations: ``ObjectTracker``
and ``InferenceSession``) and call pure functions of tensors for the work:

- ``segment(inputs, states, layout) -> (probs, label, short_terms)``: one whole frame of a session: encode it,
  attend every object group's memory, decode, merge the groups (and flipped views) into probabilities at the
  frame's resolution, take the label, and give each group's frame its predicted mask (its new short-term
  memory); ``predict`` is the same up to the label (for frames where a mask adds objects);
- ``write(long_term, short_term) -> long_term``: fuse a frame into long-term memory (every gap frames);
- ``encode``, ``propagate``, ``memorize``: the parts, for reference frames and for training's batched clips.

With a fixed-size memory (MCA) the inputs of ``segment`` have one shape until the first long-term write and
another from then on, so ``CompiledFrameStep`` runs it (and ``write``) through ``torch.compile``, on a GPU
replayed from the session's own CUDA graphs (``mavos.inference.graphs``: the memory stays in the graphs' buffers):
one graph per frame, and one more on a memory-write frame. Wherever compiling is not possible it falls back to
eager execution, with one warning.
"""
from __future__ import annotations

import itertools
import shutil
import warnings
import weakref
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from mavos.inference.graphs import Capture, SessionGraphs, capture_cuda
from mavos.model.folding import WeightVersions
from mavos.model.layers import tokens_to_map
from mavos.model.memory import MemoryState
from mavos.model.propagation import LayerMemory, PendingMemory
from mavos.model.vos import EncodedFrame, VOSNetwork


def logit_fill(dtype: torch.dtype) -> float:
    """The logit given to identities that hold no object (representable in half precision)."""
    return -1e4 if dtype in (torch.float16, torch.bfloat16) else -1e10


class FrameLayout(NamedTuple):
    """What a session fixes for a video, read by ``segment`` as constants (a compiled step specialises on it).

    input_size / frame_size: the inference resolution and the video's own; group_sizes: objects in each group
    of at most ``max_objects``; one_hot_width: identities in each group's mask (None: 1 + the group's objects,
    so that the ID bank skips absent ones; compiled, 1 + max_objects, so that the object count never changes
    a shape); align_corners: the network's resizing convention.
    """

    input_size: tuple[int, int]
    frame_size: tuple[int, int]
    group_sizes: tuple[int, ...]
    one_hot_width: int | None
    align_corners: bool


class GroupState(NamedTuple):
    """One object group's memory as ``segment`` reads it: long-term readout, short-term memory (the previous
    frame) and the (B, 1 + max_objects) bool mask of the identities that hold objects."""

    long_term: list[LayerMemory]
    short_term: list[LayerMemory]
    keep: torch.Tensor


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


def soft_aggregate(group_logits: list[torch.Tensor], group_sizes: list[int] | tuple[int, ...]) -> torch.Tensor:
    """Merge per-group logits (1, 1+N, H, W) into (1, 1+K, H, W) logits: background = product of the
    groups' background probabilities, each object keeps its group's probability."""
    if len(group_logits) == 1:
        return group_logits[0][:, : group_sizes[0] + 1]
    bg, fg = [], []
    for logits, n in zip(group_logits, group_sizes):
        prob = torch.softmax(logits, dim=1)
        bg.append(prob[:, :1])
        fg.append(prob[:, 1:1 + n])
    merged = torch.cat([torch.cat(bg, 1).prod(dim=1, keepdim=True)] + fg, dim=1).clamp(1e-5, 1 - 1e-5)
    return torch.logit(merged)


def frame_logits(logits: torch.Tensor, n: int, layout: FrameLayout) -> torch.Tensor:
    """A group's stride-4 logits -> its 1 + n used channels at frame resolution (1, 1 + n, H, W), channels
    first: with a few channels, bilinear resizing and the softmax over them run 4-10x faster in this layout
    than channels-last on the CPU (measured at 481x849, 2 channels: 1.2 vs 5.3 ms and 1.6 vs 20 ms)."""
    logits = logits[:, : n + 1].float().contiguous()
    return F.interpolate(logits, size=layout.frame_size, mode="bilinear", align_corners=layout.align_corners)


def ids_to_one_hot(mask: torch.Tensor, max_objects: int) -> torch.Tensor:
    """(B, H, W) int ids in 0..max_objects -> (B, 1 + max_objects, H, W) float one-hot (unchecked: no host
    synchronisation). The result is channels-last, the layout the ID bank's convolution runs fastest in."""
    classes = torch.arange(max_objects + 1, device=mask.device)
    return (mask.long()[..., None] == classes).permute(0, 3, 1, 2).float()


def group_one_hots(label: torch.Tensor, layout: FrameLayout, flipped: bool = False) -> list[torch.Tensor]:
    """A (H, W) label at frame resolution -> each group's one-hot at the inference size (of the flipped view)."""
    small = label[None]
    if layout.input_size != layout.frame_size:
        small = F.interpolate(label[None, None].float(), size=layout.input_size, mode="nearest")[:, 0].long()
    if flipped:
        small = small.flip(-1)
    sizes = layout.group_sizes
    if len(sizes) == 1:
        return [ids_to_one_hot(small, layout.one_hot_width or sizes[0])]
    out = []
    for g, n in enumerate(sizes):
        lo = g * sizes[0]
        local = torch.where((small > lo) & (small <= lo + n), small - lo, torch.zeros_like(small))
        out.append(ids_to_one_hot(local, layout.one_hot_width or n))
    return out


def predict(net: VOSNetwork, inputs: torch.Tensor, states: list[list[GroupState]], layout: FrameLayout,
            encoder: torch.nn.Module | None = None):
    """Segment a frame from memory: ``inputs`` (V, 3, h, w), V views (the frame, and its mirror image with
    flip), ``states[v][g]`` group g's memory in view v. Returns the probabilities (H, W, 1 + K) channels-last
    at frame resolution (averaged over the views), the label (H, W) (their argmax), each view's
    ``EncodedFrame`` and each view's groups' pending memories."""
    probs = 0
    encoded, pending = [], []
    for v, groups in enumerate(states):
        enc = net.encode(inputs[v:v + 1], encoder)
        logits = []
        pending.append([])
        for state, n in zip(groups, layout.group_sizes):
            out, frame_memory = propagate(net, enc.tokens, enc.skips, enc.size, state.long_term,
                                          state.short_term, state.keep)
            logits.append(frame_logits(out, n, layout))
            pending[v].append(frame_memory)
        merged = soft_aggregate(logits, layout.group_sizes)
        if v == 1:
            merged = merged.flip(-1)
        probs = probs + torch.softmax(merged[0], dim=0) / len(states)
        encoded.append(enc)
    # the argmax over the innermost dimension of a channels-last copy: argmax(0) over a channels-first
    # (1 + K, H, W) tensor is ~20x slower on the CPU (73 vs 3.9 ms at 481x849)
    probs = probs.permute(1, 2, 0).contiguous()
    return probs, probs.argmax(dim=-1), encoded, pending


def segment(net: VOSNetwork, inputs: torch.Tensor, states: list[list[GroupState]], layout: FrameLayout,
            encoder: torch.nn.Module | None = None):
    """``predict``, then every group's frame memorised with the predicted label: returns the probabilities,
    the label and ``short_terms[v][g]``, the new short-term memory of group g in view v."""
    probs, label, encoded, pending = predict(net, inputs, states, layout, encoder)
    short_terms = [[memorize(net, frame_memory, one_hot, enc.size)
                    for frame_memory, one_hot in zip(view_pending, group_one_hots(label, layout, v == 1))]
                   for v, (enc, view_pending) in enumerate(zip(encoded, pending))]
    return probs, label, short_terms


def memory_slots(states: list[list[GroupState]]) -> set[int]:
    """The numbers of long-term slots (frames' worth of tokens) that the groups' memories hold."""
    return {s.long_term[0].key.shape[1] // s.short_term[0].key.shape[1] for groups in states for s in groups}


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

    def memorize(self, pending: list[PendingMemory], one_hot: torch.Tensor,
                 size: tuple[int, int]) -> list[LayerMemory]:
        """The frame's memory once its mask is known: the next frame's short-term memory."""
        return memorize(self.net, pending, one_hot, size)

    def write(self, long_term: MemoryState, short_term: list[LayerMemory], size: tuple[int, int]) -> MemoryState:
        """Long-term memory with the frame written into it (the memory policy's ``write``)."""
        return self.net.memory.write(long_term, short_term, size)

    def predict(self, inputs: torch.Tensor, states: list[list[GroupState]], layout: FrameLayout):
        return predict(self.net, inputs, states, layout)

    def segment(self, inputs: torch.Tensor, states: list[list[GroupState]], layout: FrameLayout):
        return segment(self.net, inputs, states, layout)

    def memory_replaced(self) -> None:
        """The session made every group's memory anew (objects added mid-video); nothing to do eagerly."""


RECOMPILE_LIMIT = 64  # shapes of one compiled step function (frame sizes x slot counts x groups)
_STAMPS = itertools.count()  # weights stamps (CompiledFunctions.weights_stamp), never reused in a process
MAX_RELEASED_GRAPHS = 2  # sets of CUDA graphs kept from sessions that are gone (one per live session is typical)


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


class CompiledFunctions:
    """The compiled ``segment`` and ``write`` of one network on one device, shared by every session (a video per
    session never compiles again, and dynamo's recompilation limit is never reached), with what they share: why
    compiling is off (``disabled``: None while it works) and the shapes ``InferenceSession.warm_up`` rehearsed.

    On the CPU inductor *freezes* the weights (``freezing``): they become constants of the compiled code, folded
    and prepacked for oneDNN's convolutions and matmuls (a frame at 481x849 in 0.94x the eager time on a 2-core
    AVX-512 Xeon, 1.12x unfrozen; README, Speed). Frozen weights do not follow a later in-place change of the
    network's (an optimizer step, ``load_state_dict``), so every compiled call takes ``weights_stamp()``, a number
    that changes when the weights have: dynamo guards its value, and new weights compile anew.
    """

    def __init__(self, net: VOSNetwork, device: torch.device, backend: str = "inductor"):
        self._net = weakref.ref(net)  # held weakly: the network owns its shared functions, not the other way round
        self.backend = backend
        self.disabled: str | None = None
        if net.memory.fixed_slots is None:
            self.disabled = (f"session.compile needs a fixed-size memory (MCA); {type(net.memory).__name__} grows "
                             f"with the video, so every memory write would change the shapes")
        else:
            self.disabled = compiler_problem(device)
        if self.disabled:
            warnings.warn(f"session.compile: running eagerly ({self.disabled})", stacklevel=4)
        else:
            # dynamo compiles a function for at most 8 shapes, then runs it eagerly without telling the caller;
            # every frame size of a benchmark is a shape here (x2 with CUDA graphs, x the object groups), and
            # YouTube-VOS has more than 4 sizes: a silent fall-back would make the reported speed the eager one
            config = torch._dynamo.config
            name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.7
            setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
        self.functions: dict[str, Callable] = {}
        self.warmed: set = set()  # (inference size, autocast dtype, flip, groups) InferenceSession.warm_up ran
        self.released: list[SessionGraphs] = []  # CUDA graphs of sessions that are gone, for the next ones
        self.freezing = device.type == "cpu" and backend == "inductor"
        self._versions = WeightVersions(net) if self.freezing else None
        self._weights = self._versions.key() if self._versions is not None else None
        self._stamp = next(_STAMPS)

    def weights_stamp(self) -> int:
        """The stamp of the network's weights as they are now: a new one when they changed since the last call
        (with ``freezing``; otherwise the weights are read at every call and the stamp never changes). Read once
        per session: a video's weights do not change while it runs."""
        if self._versions is not None:
            weights = self._versions.key()
            if weights != self._weights:
                self._weights, self._stamp = weights, next(_STAMPS)
                self.warmed.clear()  # what warm_up rehearsed was compiled for the old weights
        return self._stamp

    def take_graphs(self, capture) -> SessionGraphs:
        """CUDA graphs for a session: those of a session that is gone (recorded for the same shapes, typically by
        ``InferenceSession.warm_up``'s rehearsal), or new ones."""
        while True:
            try:
                graphs = self.released.pop()  # atomic: two sessions starting in two threads never share graphs
            except IndexError:
                return SessionGraphs(capture)
            if graphs.capture is capture:  # (another kind, a test's stand-in, is dropped)
                graphs.hand_over()
                return graphs

    def release(self, graphs: SessionGraphs) -> None:
        if len(self.released) < MAX_RELEASED_GRAPHS:  # more would only hold GPU memory
            self.released.append(graphs)

    # the pure functions that get compiled (methods of this shared object: no session's step is kept alive)
    def segment(self, inputs, states, layout, encoder, weights_stamp: int):
        guard_value(weights_stamp)
        return segment(self._net(), inputs, states, layout, encoder)

    def write(self, readout, slot_tokens, short_term, size, weights_stamp: int):
        guard_value(weights_stamp)
        return self._net().memory.write(MemoryState(readout, slot_tokens), short_term, size).readout

    def get(self, name: str, fn: Callable) -> Callable:
        """``fn`` compiled (once), without torch.compile's own CUDA graphs: a session records its own."""
        if name not in self.functions:
            compiled = torch.compile(fn, backend=self.backend, dynamic=False)
            self.functions[name] = frozen(compiled) if self.freezing else compiled
        return self.functions[name]


def frozen(compiled: Callable) -> Callable:
    """``compiled`` called with inductor's ``freezing`` on: dynamo reads the setting while it traces (at a call), so
    it is set around each call rather than passed as a compile option (which it would not see); the override is
    the calling thread's own (inductor's settings are per thread), so it never leaks into other code's compiling,
    nor ends under another thread's call."""
    import torch._inductor.config as inductor_config

    def call(*args):
        with inductor_config.patch(freezing=True):
            return compiled(*args)
    return call


def guard_value(value: int) -> None:
    """Reads ``value`` while dynamo traces a compiled function, which makes it part of the function's guards: an
    argument that the traced code never reads is not guarded, and a call with another value would run code
    compiled for the first (here: weights frozen before they changed)."""
    if value < 0:
        raise ValueError(f"expected a stamp >= 0, got {value}")


class CompiledFrameStep(FrameStep):
    """``FrameStep`` with ``segment`` and ``write`` compiled for a fixed-size memory: a regular frame is one
    compiled function, a memory-write frame two. ``segment`` compiles for the full memory (both slots of MCA)
    and, with CUDA graphs, once more for the frames before the first long-term write (the reference alone in
    memory), so that short videos do not spend their first ``gap`` frames eager where launches set the pace (on
    the CPU, where a compiled frame saves 6-8% of an eager one, less than compiling once more costs over a
    ``gap`` of frames, they stay eager); ``write`` once the memory is full (the first write only stores the
    frame). Reference frames and frames where a mask adds objects run eagerly.

    One per session: the compiled functions are shared (``CompiledFunctions``), and on CUDA the session's own
    CUDA graphs of them (``SessionGraphs``: the memory stays in the graphs' buffers, updated in place, and only
    the frame is copied in and the probabilities and label out). Any failure to compile or to record a graph
    (no compiler, an op the compiler does not support) gives one warning and eager execution from then on, for
    every session of the network, never an error.
    """

    @classmethod
    def shared(cls, net: VOSNetwork, device: torch.device) -> "CompiledFrameStep":
        """A session's compiled step, with the compiled functions of ``net`` on ``device`` that every session
        shares."""
        per_net = _SHARED.setdefault(net, {})
        key = str(device)
        if key not in per_net:
            per_net[key] = CompiledFunctions(net, device)
        return cls(net, device, functions=per_net[key])

    def __init__(self, net: VOSNetwork, device: torch.device, backend: str = "inductor",
                 functions: CompiledFunctions | None = None, capture: Capture | None = None):
        super().__init__(net)
        self._net = weakref.ref(net)  # held weakly: the network owns its shared functions, not the other way round
        self.device = device
        self.compiled = functions if functions is not None else CompiledFunctions(net, device, backend)
        if capture is None and device.type == "cuda" and self.compiled.backend == "inductor":
            capture = capture_cuda
        self.capture = capture  # how CUDA graphs are recorded (None: none are; tests pass a CPU stand-in)
        self._graphs: SessionGraphs | None = None
        self._encoder: torch.nn.Module | None = None  # the encoder this session's frames run (looked up once)
        self.weights_stamp = self.compiled.weights_stamp()  # the weights this session's frames run with

    @property
    def net(self) -> VOSNetwork:
        return self._net()

    @property
    def graphs(self) -> SessionGraphs | None:
        """This session's CUDA graphs, taken at the first compiled call (after ``warm_up``'s rehearsal has given
        its graphs back) and given back when the step (its session) is gone."""
        if self._graphs is None and self.capture is not None:
            self._graphs = self.compiled.take_graphs(self.capture)
            weakref.finalize(self, self.compiled.release, self._graphs)
        return self._graphs

    def for_another_session(self) -> "CompiledFrameStep":
        """A step for another session (``InferenceSession.warm_up``'s rehearsal): the same compiled functions,
        graphs of its own recorded the same way."""
        return CompiledFrameStep(self.net, self.device, functions=self.compiled, capture=self.capture)

    @property
    def disabled(self) -> str | None:
        return self.compiled.disabled

    @property
    def warmed(self) -> set:
        return self.compiled.warmed

    @property
    def cudagraphs(self) -> bool:
        return self.capture is not None

    # the memory each function replaces (in its arguments) and its new value (in its outputs), in the same order:
    # what the session's CUDA graphs update in place
    @staticmethod
    def _segment_memory(args) -> list:
        return [t for groups in args[1] for state in groups for layer in state.short_term for t in layer]

    @staticmethod
    def _segment_updates(out) -> list:
        return [t for groups in out[2] for short_term in groups for layer in short_term for t in layer]

    @staticmethod
    def _write_memory(args) -> list:
        return [t for layer in args[0] for t in layer]

    @staticmethod
    def _write_updates(out) -> list:
        return [t for layer in out for t in layer]

    _MEMORY = {"segment": (_segment_memory, _segment_updates), "write": (_write_memory, _write_updates)}

    # ------------------------------------------------------------------ dispatch
    def _run(self, name: str, fn: Callable, *args):
        if self.disabled:
            return fn(*args)
        try:
            compiled = self.compiled.get(name, fn)
            if self.graphs is not None:
                return self.graphs.run(name, compiled, args, *self._MEMORY[name])
            return compiled(*args)
        except torch.OutOfMemoryError:  # the GPU is full, not the compiler at fault: said as it is
            raise
        except Exception as e:  # noqa: BLE001 - any compiler failure means: run eagerly
            self.compiled.disabled = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            warnings.warn(f"session.compile: compiling failed, running eagerly from here on ({self.disabled})",
                          stacklevel=3)
            return fn(*args)

    def _eager(self) -> bool:
        return self.disabled is not None or self.net.training

    def segment(self, inputs, states, layout):
        fixed = self.net.memory.fixed_slots
        slots = memory_slots(states)
        if self._eager() or not (slots == {fixed} or (self.cudagraphs and slots <= {1, fixed})):
            return super().segment(inputs, states, layout)
        # the folded encoder is looked up outside the compiled region, once per session (a video's weights do not
        # change; checking its 260 tensors' versions took 0.17 ms a frame on this CPU's host)
        if self._encoder is None:
            self._encoder = self.net.inference_encoder()
        return self._run("segment", self.compiled.segment, inputs, states, layout, self._encoder, self.weights_stamp)

    def memory_replaced(self) -> None:
        if self._graphs is not None:
            self._graphs.release_memory()

    def write(self, long_term, short_term, size):
        if self._eager() or long_term.num_slots != self.net.memory.fixed_slots:
            return super().write(long_term, short_term, size)
        readout = self._run("write", self.compiled.write, long_term.readout, long_term.slot_tokens, short_term,
                            size, self.weights_stamp)
        return MemoryState(readout, long_term.slot_tokens)


_SHARED: "weakref.WeakKeyDictionary[VOSNetwork, dict[str, CompiledFunctions]]" = weakref.WeakKeyDictionary()

