"""CUDA graphs of one session's compiled step, with its memory updated in place.

torch.compile's own CUDA graphs (``mode="reduce-overhead"``) treat every call as unrelated to the last: before a
replay they copy each input into the graph's buffers, and the caller has to clone every output out of them, since
the next replay overwrites them. A MAVOS frame's inputs are mostly the memory its previous frame produced, so a
frame paid ~47 copies for data that was already on the GPU (0.19 ms of the H100's 3.16 ms of kernels at 480p,
plus their launches: docs/speed_log.md). Here a session records its own graphs of the compiled functions:

- the memory a graph computes (the next short-term memory, the new long-term readout) is copied, inside the graph,
  into the buffers its next replay reads, and those buffers are what the session's trackers keep as their state:
  the next frame hands them back and nothing is copied;
- an input that is not such a buffer (the frame; the memory made eagerly at a reference frame or by MCA's first
  write; the trackers' masks) is copied into the graph's buffer, and not again while the caller passes that same,
  unchanged tensor (its version counter, where it has one);
- only the outputs that are not memory (probabilities and label) are cloned for the caller.

The buffers are the session's memory, so the graphs belong to one session while it lives (the compiled functions
are shared by all) and pass to the next session when it is gone (``hand_over``); the graphs share one memory
pool. A graph is recorded at its first call (after one plain run on its own buffers, which compiles and tunes)
and replayed from then on. A H100 ran MobileNetV2's bf16 step at 0.86x the time of torch.compile's graphs.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

# capture(body, pool, written) records body() and returns (its outputs, a function that replays it into those
# same outputs); ``written``: the buffers body updates (a CUDA capture runs nothing; a stand-in that does restores them)
Capture = Callable[[Callable[[], Any], Any, list], tuple[Any, Callable[[], None]]]


def capture_cuda(body: Callable[[], Any], pool, written: list) -> tuple[Any, Callable[[], None]]:
    graph = torch.cuda.CUDAGraph()
    # thread_local: only this thread must not touch CUDA while recording (evaluation decodes frames in another)
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        out = body()
    return out, graph.replay


STALE_AFTER = 8  # owners (sessions, or memories replaced mid-video) after which a graph none used is dropped


def _signature(leaf) -> Any:
    if isinstance(leaf, torch.Tensor):
        return (tuple(leaf.shape), leaf.stride(), leaf.dtype, leaf.device)
    try:
        hash(leaf)
        return leaf
    except TypeError:
        return ("id", id(leaf))


def _version(tensor: torch.Tensor) -> int | None:
    """The in-place modification counter, or None for inference-mode tensors (which have none)."""
    return None if tensor.is_inference() else tensor._version


class _Recorded:
    """One recorded graph: its static inputs (the tensors at each leaf of the arguments, others as given), the
    memory it updates (some of those), its static outputs, which of them are returned as memory buffers, and the
    replay."""

    def __init__(self, static: list, memory: list, outputs: list, spec, kept: dict[int, torch.Tensor],
                 replay: Callable):
        self.static, self.memory, self.outputs, self.spec, self.kept = static, memory, outputs, spec, kept
        self.replay = replay
        self.generation = 0  # the owner (SessionGraphs.generation) that last used it

    def results(self):
        return tree_unflatten([self.kept[i] if i in self.kept else (o.clone() if isinstance(o, torch.Tensor) else o)
                               for i, o in enumerate(self.outputs)], self.spec)


class SessionGraphs:
    """The CUDA graphs of one session's step functions. ``run(name, fn, args, targets, updates)``: ``fn(*args)``
    replayed from a graph; ``targets(args)`` names the arguments that are memory to be replaced (applied to the
    arguments, or to their leaf positions: it must only select from its argument), ``updates(outputs)`` their new
    values in the same order. ``capture``: how a graph is recorded (``capture_cuda``; tests pass a stand-in).

    When their session is gone the graphs go to the next session (``hand_over``): a graph whose memory nobody
    holds any more takes a new video's memory (copied in) instead of a new graph being recorded, so that a
    video after ``InferenceSession.warm_up`` (whose rehearsal recorded them) records nothing."""

    def __init__(self, capture: Capture = capture_cuda):
        self.capture = capture
        self.generation = 0  # one per session that has owned these graphs
        self.pool = None
        self.recorded: dict[tuple, _Recorded] = {}
        self.buffers: dict[int, torch.Tensor] = {}  # id -> a static input buffer of one of the graphs
        self.sources: dict[int, tuple] = {}  # buffer id -> (weak reference, version, id) of the tensor it copies
        self.holders: dict[int, int] = {}  # id of a tensor -> the buffer holding a copy of it
        self.positions: dict[tuple, list[int]] = {}  # the memory's leaf positions in a shape's arguments

    def run(self, name: str, fn: Callable, args: tuple, targets: Callable, updates: Callable):
        leaves, spec = tree_flatten(args)
        # inference mode too: buffers made under it cannot be written outside it (InferenceSession always runs
        # in it; a step called directly may not)
        shape = (name, torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"),
                 torch.is_inference_mode_enabled(), tuple(_signature(x) for x in leaves))
        if shape not in self.positions:
            self.positions[shape] = list(targets(tree_unflatten(list(range(len(leaves))), spec)))
        # a graph per memory it updates: the same function serves several object groups (a write per group), and
        # a graph's buffers are one group's memory; memory no buffer holds yet (None) gets a graph of its own
        owners = tuple(id(b) if (b := self._existing_buffer(leaves[i])) is not None else None
                       for i in self.positions[shape])
        graph = self.recorded.get((shape, owners))
        if graph is None and all(o is None for o in owners):
            graph = self._unowned(shape)  # a graph of an earlier session, its buffers free for this memory
        if graph is None:
            graph = self._record(fn, leaves, spec, self.positions[shape], updates)
            self.recorded[(shape, tuple(id(b) for b in graph.memory))] = graph
        else:
            self._fill(graph.static, leaves)
        graph.generation = self.generation
        graph.replay()
        for buffer in graph.memory:
            self._forget_source(buffer)  # it holds the graph's result now, a copy of nothing
        return graph.results()

    def release_memory(self) -> None:
        """The memory the buffers hold is nobody's any more: their graphs serve the next memory (copied in)
        instead of new graphs being recorded. A session calls it when objects added mid-video made every group's
        memory anew (a new reference), and ``hand_over`` when the session is gone."""
        self.generation += 1
        self.sources.clear()
        self.holders.clear()

    def hand_over(self) -> None:
        """The session that owned these graphs is gone: their memory buffers are free for the next one. Graphs
        no session used in the last ``STALE_AFTER`` are dropped (another frame size, or a folded encoder that
        training's weight updates replaced: kept, they would only hold GPU memory)."""
        self.release_memory()
        self.recorded = {k: g for k, g in self.recorded.items() if g.generation >= self.generation - STALE_AFTER}
        live = {id(t) for g in self.recorded.values() for t in g.static if isinstance(t, torch.Tensor)}
        self.buffers = {k: b for k, b in self.buffers.items() if k in live}
        shapes = {shape for shape, _ in self.recorded}
        self.positions = {shape: p for shape, p in self.positions.items() if shape in shapes}

    def _unowned(self, shape: tuple) -> _Recorded | None:
        """A graph of ``shape`` that the current session has not used, none of whose memory buffers its other
        graphs read or write."""
        in_use = {id(t) for g in self.recorded.values() if g.generation == self.generation
                  for t in g.static if isinstance(t, torch.Tensor)}
        return next((g for (s, _), g in self.recorded.items() if s == shape and g.generation < self.generation
                     and not any(id(b) in in_use for b in g.memory)), None)

    # ------------------------------------------------------------------ buffers
    def _holds(self, buffer: torch.Tensor, x: torch.Tensor) -> bool:
        """Whether ``buffer`` already holds ``x`` (a copy of this unchanged tensor)."""
        source = self.sources.get(id(buffer))
        return source is not None and source[0]() is x and source[1] == _version(x)

    def _forget_source(self, buffer: torch.Tensor) -> None:
        source = self.sources.pop(id(buffer), None)
        if source is not None and self.holders.get(source[2]) == id(buffer):
            del self.holders[source[2]]

    def _copy(self, buffer: torch.Tensor, x: torch.Tensor) -> None:
        buffer.copy_(x)
        self._forget_source(buffer)
        if id(x) not in self.buffers:  # another buffer may change in a replay: it is copied every time
            self.sources[id(buffer)] = (weakref.ref(x), _version(x), id(x))
            self.holders[id(x)] = id(buffer)

    def _new_buffer(self, x: torch.Tensor) -> torch.Tensor:
        buffer = torch.empty_strided(x.size(), x.stride(), dtype=x.dtype, device=x.device)
        self.buffers[id(buffer)] = buffer
        self._copy(buffer, x)
        return buffer

    def _existing_buffer(self, x) -> torch.Tensor | None:
        """``x`` itself when it is a buffer, or the buffer holding a copy of it."""
        if self.buffers.get(id(x)) is x:
            return x
        buffer = self.buffers.get(self.holders.get(id(x)))
        return buffer if buffer is not None and self._holds(buffer, x) else None

    def _fill(self, static: list, leaves: list) -> None:
        for x, buffer in zip(leaves, static):
            if isinstance(x, torch.Tensor) and x is not buffer and not self._holds(buffer, x):
                self._copy(buffer, x)

    # ------------------------------------------------------------------ recording
    def _record(self, fn, leaves: list, spec, target_positions: list[int], updates: Callable) -> _Recorded:
        static: list = list(leaves)
        used: dict[int, int] = {}  # buffer id -> the position using it
        # memory positions first: each gets a buffer of its own (a graph writes it, so no other input may share it)
        targets = set(target_positions)
        for i in target_positions + [i for i in range(len(leaves)) if i not in targets]:
            x = leaves[i]
            if not isinstance(x, torch.Tensor):
                continue
            buffer = self._existing_buffer(x)
            shared = buffer is not None and id(buffer) in used
            if buffer is None or (shared and (i in targets or used[id(buffer)] in targets)):
                buffer = self._new_buffer(x)
            used[id(buffer)] = i
            static[i] = buffer
        static_args = tree_unflatten(static, spec)
        memory = [static[i] for i in target_positions]
        # run once plainly on the graph's own inputs: it compiles (for these inputs: torch.compile specialises on
        # which inputs are the same tensor, as the reference's memory is both memories on the first frame) and
        # tunes the kernels, neither of which may happen while a graph records
        fn(*static_args)

        def body():
            out = fn(*static_args)
            for buffer, new in zip(memory, updates(out), strict=True):
                buffer.copy_(new)
            return out

        if self.pool is None and self.capture is capture_cuda:
            self.pool = torch.cuda.graph_pool_handle()
        out, replay = self.capture(body, self.pool, memory)
        outputs, out_spec = tree_flatten(out)
        new_values = {id(t): k for k, t in enumerate(updates(out))}
        kept = {i: memory[new_values[id(o)]] for i, o in enumerate(outputs) if id(o) in new_values}
        return _Recorded(static, memory, outputs, out_spec, kept, replay)
