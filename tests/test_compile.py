"""session.compile: the compiled fixed-shape step equals the eager one; where compiling cannot work it warns
once and runs eagerly, never failing mid-video."""
import copy
import warnings

import numpy as np
import pytest
import torch

from mavos.inference.graphs import SessionGraphs
from mavos.inference.session import InferenceSession
from mavos.inference.step import CompiledFrameStep
from mavos.registry import build_network
from tests.golden_scenario import seeded_weights

SIZE, FRAMES, GAP = 65, 30, 3  # memory writes at frames 3, 6, ..., 27: the recurrent slot is fused 8 times


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return seeded_weights(build_network("mavos_mbv2"))


@pytest.fixture(scope="module")
def video():
    rng = np.random.default_rng(0)
    vid = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(FRAMES)]
    mask = np.zeros((SIZE, SIZE), dtype=np.int64)
    mask[10:30, 10:40], mask[40:60, 20:50] = 1, 2
    return vid, mask


def rerun_capture(body, pool, written):
    """The CPU's stand-in for recording a CUDA graph: recording runs nothing (``body`` runs, and the buffers it
    writes are put back); a replay runs ``body`` again and leaves its results in the recorded outputs."""
    saved = [t.clone() for t in written]
    out = body()
    for t, s in zip(written, saved):
        t.copy_(s)
    first = torch.utils._pytree.tree_flatten(out)[0]

    def replay():
        for dst, src in zip(first, torch.utils._pytree.tree_flatten(body())[0]):
            if isinstance(dst, torch.Tensor):
                dst.copy_(src)
    return out, replay


def graphed_step(net) -> CompiledFrameStep:
    """A compiled step on the GPU's path (its own graphs, recorded by the stand-in), with dynamo's eager backend
    (the tracing, without inductor's compile time)."""
    return CompiledFrameStep(net, torch.device("cpu"), backend="eager", capture=rerun_capture)


def run(session: InferenceSession, video, frames: int = FRAMES) -> torch.Tensor:
    vid, mask = video
    session.add_objects(vid[0], mask)
    return torch.stack([session.step(f).clone() for f in vid[1:frames]])


@pytest.fixture(scope="module")
def eager(net, video):
    return run(InferenceSession(net, long_term_gap=GAP), video)


def test_compiled_step_equals_eager_over_30_frames(net, video, eager):
    """torch.compile (inductor) of the whole frame and of the memory writes: 30 frames, 9 memory writes."""
    session = InferenceSession(net, long_term_gap=GAP, compile=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback warning: it really compiled
        warnings.filterwarnings("ignore", message=".*(TensorFloat32|cudagraph|CUDA).*")
        compiled = run(session, video)
    step = session.step_functions
    assert isinstance(step, CompiledFrameStep) and step.disabled is None
    assert set(step.compiled.functions) == {"segment", "write"}
    assert (compiled - eager).abs().max() < 1e-4


def test_frozen_weights_compile_anew_when_the_network_changes_in_place(net, video, eager):
    """On the CPU inductor freezes the weights into the compiled code (constants, prepacked). A network changed in
    place after compiling (an optimizer step, ``load_state_dict``) keeps its parameter objects; its next session's
    compiled frames must use the new weights, as an eager session does, not the frozen ones (0.047 apart without
    the weights stamp)."""
    changed = copy.deepcopy(net)
    frames = 2 * GAP + 2  # the full memory's frame and the memory write both compiled (writes at 3 and 6)
    before = InferenceSession(changed, long_term_gap=GAP, compile=True)
    assert before.step_functions.compiled.freezing
    assert (run(before, video, frames) - eager[:frames - 1]).abs().max() < 1e-4
    with torch.no_grad():  # all but the encoder's (a new folded copy of it, an argument, would compile anew anyway)
        for name, p in changed.named_parameters():
            if not name.startswith("encoder."):
                p.mul_(0.9)
    expected = run(InferenceSession(changed, long_term_gap=GAP), video, frames)
    assert (expected - eager[:frames - 1]).abs().max() > 1e-2  # the change shows in the output
    after = InferenceSession(changed, long_term_gap=GAP, compile=True)
    assert after.step_functions.weights_stamp != before.step_functions.weights_stamp
    assert (run(after, video, frames) - expected).abs().max() < 1e-4


def test_frozen_step_warmed_up_compiles_nothing_during_the_video(net, video, eager):
    """The CPU's path (inductor, weights frozen): ``warm_up``'s rehearsal session and the video's session run with
    one weights stamp (the weights did not change between them), so what the rehearsal compiled serves the video."""
    from torch._dynamo.utils import counters

    session = InferenceSession(net, long_term_gap=GAP, compile=True)
    assert session.step_functions.compiled.freezing
    session.warm_up((SIZE, SIZE))
    graphs = counters["stats"]["unique_graphs"]
    out = run(session, video)
    assert counters["stats"]["unique_graphs"] == graphs  # nothing compiled while the video ran
    assert (out - eager).abs().max() < 1e-4


def test_freezing_is_on_inside_frozen_calls_and_the_users_setting_comes_back():
    """Dynamo reads inductor's ``freezing`` while it traces, so a CPU session's compiled calls turn it on around
    themselves. Two calls in two threads that overlap without nesting (A starts, B starts, A ends, B ends): B
    still traces with it on after A ended (one global switch, counted or not, would have been turned off, or
    never seen by B: inductor's settings are per thread), and the user's setting (off) is back after both."""
    import threading

    import torch._inductor.config as inductor_config

    from mavos.inference.step import frozen

    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        a_in.set()
        b_in.wait(5)
        seen["a"] = inductor_config.freezing

    def b():
        b_in.set()
        a_out.wait(5)
        seen["b after a ended"] = inductor_config.freezing

    def run_a():
        frozen(a)()
        a_out.set()

    with inductor_config.patch(freezing=False):  # the user's setting (monkeypatch would break the config module)
        first = threading.Thread(target=run_a)
        first.start()
        a_in.wait(5)
        second = threading.Thread(target=frozen(b))
        second.start()
        first.join(5)
        second.join(5)
        assert seen == {"a": True, "b after a ended": True}
        assert inductor_config.freezing is False


@pytest.mark.parametrize("caller_mode", ["plain", "inference_mode"])
def test_warm_up_compiles_every_step_before_the_video(net, video, eager, monkeypatch, caller_mode):
    """``warm_up`` (evaluation calls it before the first frame) leaves nothing to compile or record during the
    video itself, for a video of another long-term gap too, and changes no output. The GPU's path: the session's
    own graphs (the frames before the first write compiled too), recorded by the CPU's stand-in; the rehearsal's
    graphs, given back when it ends, are the ones the video replays (its memory copied into them). A caller
    that steps its video under ``torch.inference_mode`` after a warm-up outside it records nothing either (on an
    H100 such a video recorded every graph again while the session ran in the caller's mode)."""
    import contextlib

    from torch._dynamo.utils import counters

    recorded = []
    record = SessionGraphs._record
    monkeypatch.setattr(SessionGraphs, "_record", lambda self, *a: recorded.append(a[0]) or record(self, *a))
    session = InferenceSession(net, long_term_gap=GAP, compile=True)
    step = session.step_functions = graphed_step(net)
    session.warm_up((SIZE, SIZE))
    assert set(step.compiled.functions) == {"segment", "write"}
    assert len(recorded) == 3  # the frame before the first write, with the full memory, and the write
    graphs = counters["stats"]["unique_graphs"]
    with torch.inference_mode() if caller_mode == "inference_mode" else contextlib.nullcontext():
        out = run(session, video)
    assert counters["stats"]["unique_graphs"] == graphs  # no new graph: nothing was compiled while timed
    assert len(recorded) == 3  # nor recorded
    assert step.disabled is None and (out - eager).abs().max() < 1e-4
    session.warm_up((SIZE, SIZE))  # once per size: the second call does no work
    assert counters["stats"]["unique_graphs"] == graphs and len(step.warmed) == 1


def test_warm_up_on_tensors_serves_a_video_of_arrays_at_a_resized_size(net):
    """Evaluation on the CPU: ``warm_up`` rehearses on tensor frames (resized by torch), the video's frames are
    numpy arrays (resized by OpenCV). Both reach the compiled step as the same (1, 3, h, w) channels-last layout,
    batch stride included, so the video compiles nothing (it compiled ``segment`` again in its first frames when
    the arrays' batch stride was 3 and the rehearsal's 3hw)."""
    from torch._dynamo.utils import counters

    rng = np.random.default_rng(1)
    vid = [rng.integers(0, 256, (80, 96, 3), dtype=np.uint8) for _ in range(2 * GAP + 2)]
    mask = np.zeros((80, 96), dtype=np.int64)
    mask[20:60, 20:70] = 1
    session = InferenceSession(net, long_term_gap=GAP, max_short_edge=65, compile=True)
    step = session.step_functions = graphed_step(net)
    session.warm_up((80, 96))
    graphs = counters["stats"]["unique_graphs"]
    session.add_objects(vid[0], mask)
    for frame in vid[1:]:
        session.step(frame)
    assert session.input_size == (65, 81)  # resized: 80x96 -> short edge 65, long edge 16k + 1
    assert counters["stats"]["unique_graphs"] == graphs  # nothing compiled while the video ran
    assert step.disabled is None


def test_warm_up_rehearses_the_object_groups_a_video_will_have(net, video):
    """A video of 12 objects (two groups of the 10-object ID bank) warmed up with its object counts compiles
    nothing while it runs, and the recompilation limit leaves room for many frame sizes (dynamo's default of 8
    would run the 9th shape eagerly without a word)."""
    from torch._dynamo.utils import counters

    vid, _ = video
    mask = np.zeros((SIZE, SIZE), dtype=np.int64)
    for k in range(12):
        mask[10:50, 2 + 5 * k: 6 + 5 * k] = k + 1
    session = InferenceSession(net, long_term_gap=GAP, compile=True)
    step = session.step_functions = graphed_step(net)
    assert torch._dynamo.config.recompile_limit >= 64
    session.warm_up((SIZE, SIZE), (12,))
    graphs = counters["stats"]["unique_graphs"]
    session.add_objects(vid[0], mask)
    for frame in vid[1:8]:
        session.step(frame)
    assert len(session.views[0]) == 2 and counters["stats"]["unique_graphs"] == graphs
    # 15 objects are two groups too, but of 10 + 5 (each group's objects are fixed in its compiled function)
    session.warm_up((SIZE, SIZE), (15,))
    assert len(step.warmed) == 2 and counters["stats"]["unique_graphs"] > graphs


@pytest.mark.parametrize("cudagraphs", [True, False])
def test_a_regular_frame_is_one_compiled_call_and_a_memory_write_frame_two(net, video, eager, cudagraphs):
    """Each frame with a full memory runs ``segment`` compiled once (encoder, propagation, decoder, the label,
    the frame's identity), and every GAP-th one also ``write``; nothing else of the step. The frames before the
    first write (the reference alone in memory) are compiled too where CUDA graphs are (the path a GPU takes,
    its graphs recorded by the stand-in), eager otherwise."""
    session = InferenceSession(net, long_term_gap=GAP, compile=True)
    step = session.step_functions = (graphed_step(net) if cudagraphs
                                     else CompiledFrameStep(net, torch.device("cpu"), backend="eager"))
    session.warm_up((SIZE, SIZE))
    calls = []
    run_compiled = step._run
    step._run = lambda name, *args: calls.append((session.frame_index, name)) or run_compiled(name, *args)
    out = run(session, video, frames=13)
    # one call a frame: frames 1-3 with the reference alone in memory (the write at frame 3 only stores the frame,
    # eagerly), frames 4-12 with the full memory; a second call at the writes of frames 6, 9 and 12
    expected = [(f, "segment") for f in range(1 if cudagraphs else 4, 13)]
    expected += [(f, "write") for f in (6, 9, 12)]
    assert sorted(calls) == sorted(expected)
    assert (out - eager[:12]).abs().max() < 1e-4


def test_graphs_keep_the_memory_in_place_and_copy_only_the_frame(net, video, eager):
    """Once a session's graphs are recorded, a frame copies one tensor into them (the frame) and a memory write
    none: the trackers' short-term memory and long-term readout are the graphs' own buffers, updated in place by
    the replays, and the probabilities handed out are the caller's to keep (later frames do not change them)."""
    session = InferenceSession(net, long_term_gap=GAP, compile=True)
    step = session.step_functions = graphed_step(net)
    graphs = step.graphs
    copies = []
    copy = graphs._copy
    graphs._copy = lambda buffer, x: copies.append(session.frame_index) or copy(buffer, x)
    vid, mask = video
    session.add_objects(vid[0], mask)
    outs = [session.step(f) for f in vid[1:FRAMES]]  # not cloned: each must stay as it was returned
    assert (torch.stack(outs) - eager).abs().max() < 1e-4
    tracker = session.views[0][0]
    memory = [t for layer in tracker.short_term + tracker.memory.readout for t in layer]
    assert all(graphs.buffers.get(id(t)) is t for t in memory)
    # frames 1-3: the reference alone in memory (graph recorded at frame 1); the eager first write at frame 3
    # makes a new readout, copied in once when the full memory's graph is recorded at frame 4; the write's graph,
    # recorded at frame 6, takes the buffers the frame's graphs hold that memory in. From frame 5 on: the frame.
    assert [f for f in copies if f >= 5] == list(range(5, FRAMES)), copies
    assert len(graphs.recorded) == 3


def test_graphs_give_each_memory_its_own_graph_and_copy_a_changed_input_again():
    """One function serving two memories in turns (MCA's write, once per object group) keeps each in its own
    buffers; an input changed in place since it was copied in is copied again; outputs handed out stay as
    they were."""
    graphs = SessionGraphs(rerun_capture)

    def step(x, state):
        return x.sum() + state, state + x

    def advance(x, state):
        return graphs.run("step", step, (x, state), lambda args: [args[1]], lambda out: [out[1]])

    x, a, b = torch.ones(3), torch.zeros(3), torch.full((3,), 10.0)
    totals = []
    for _ in range(4):  # recorded, then replayed
        total_a, a = advance(x, a)
        total_b, b = advance(x, b)
        totals.append((total_a, total_b))
    assert torch.equal(a, torch.full((3,), 4.0)) and torch.equal(b, torch.full((3,), 14.0))
    assert [(float(ta[0]), float(tb[0])) for ta, tb in totals] == [(3, 13), (4, 14), (5, 15), (6, 16)]
    assert len(graphs.recorded) == 2 and a is not b
    x.mul_(2)  # the graphs hold a copy of the old x
    total_a, a = advance(x, a)
    assert torch.equal(total_a, torch.full((3,), 10.0)) and torch.equal(a, torch.full((3,), 6.0))


def test_graphs_handed_over_serve_the_next_memory_and_unused_ones_are_dropped():
    """Graphs handed to the next session take its memory instead of recording again; a graph that no session
    has used for STALE_AFTER sessions (a frame size gone, an encoder replaced) is dropped with its buffers."""
    from mavos.inference.graphs import STALE_AFTER

    graphs = SessionGraphs(rerun_capture)

    def advance(x, state):
        return graphs.run("step", lambda x, s: (x.sum() + s, s + x), (x, state), lambda a: [a[1]],
                          lambda out: [out[1]])

    small, large = advance(torch.ones(2), torch.zeros(2))[1], advance(torch.ones(3), torch.zeros(3))[1]
    assert len(graphs.recorded) == 2 and torch.equal(small, torch.ones(2)) and torch.equal(large, torch.ones(3))
    for session in range(STALE_AFTER + 1):  # later sessions use the 2-wide graph only
        graphs.hand_over()
        state = torch.full((2,), 10.0 * session)
        for _ in range(2):
            _, state = advance(torch.ones(2), state)
        assert torch.equal(state, torch.full((2,), 10.0 * session + 2))  # its own memory, not the last session's
    assert len(graphs.recorded) == 1  # the 3-wide graph dropped, the 2-wide one never recorded again
    assert [tuple(b.shape) for b in graphs.buffers.values()] == [(2,), (2,)]  # its input and its memory


def test_graphs_of_a_session_under_inference_mode_do_not_serve_one_outside_it():
    """Buffers made under ``torch.inference_mode`` cannot be written outside it: the next session, under
    ``no_grad`` only, records graphs of its own instead of failing (which would turn compiling off for good)."""
    graphs = SessionGraphs(rerun_capture)

    def advance(x, state):
        return graphs.run("step", lambda x, s: (x.sum() + s, s + x), (x, state), lambda a: [a[1]],
                          lambda out: [out[1]])

    with torch.inference_mode():
        state = torch.zeros(2)
        for _ in range(2):
            state = advance(torch.ones(2), state)[1]
    graphs.hand_over()
    with torch.no_grad():
        state = torch.full((2,), 5.0)
        for _ in range(2):
            state = advance(torch.ones(2), state)[1]
    assert torch.equal(state, torch.full((2,), 7.0)) and len(graphs.recorded) == 2


def test_objects_entering_mid_video_record_no_graph_after_warm_up(net, monkeypatch):
    """A frame that adds objects makes every group's memory anew (a reference): the graphs that held the old
    memory take the new one (copied in) instead of new graphs being recorded inside the timed video."""
    size = 33
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(14)]
    first, later = np.zeros((size, size), np.int64), np.zeros((size, size), np.int64)
    first[5:15, 5:15], later[20:30, 20:30] = 1, 2

    def run(session):
        session.add_objects(frames[0], first)
        return [session.step(f, later if t == 7 else None).clone() for t, f in enumerate(frames[1:], start=1)]

    eager = run(InferenceSession(net, long_term_gap=GAP))
    recorded = []
    record = SessionGraphs._record
    monkeypatch.setattr(SessionGraphs, "_record", lambda self, *a: recorded.append(a[0]) or record(self, *a))
    session = InferenceSession(net, long_term_gap=GAP, compile=True)
    step = session.step_functions = graphed_step(net)
    session.warm_up((size, size), (1, 2))
    rehearsed = len(recorded)
    out = run(session)
    assert rehearsed == 3 and len(recorded) == rehearsed  # nothing recorded during the video
    assert step.disabled is None and [p.shape[0] for p in out] == [2] * 6 + [3] * 7
    assert max((a - b).abs().max() for a, b in zip(out, eager)) < 1e-4


def test_sessions_interleaved_keep_their_own_memory(net, video, eager):
    """Two videos stepped in turns, each session with its own graphs over the same compiled functions: each
    equals its video segmented alone (the graphs' buffers are one session's memory, never another's)."""
    vid, mask = video
    other_vid = [f[:, ::-1].copy() for f in vid]
    alone = run(InferenceSession(net, long_term_gap=GAP), (other_vid, mask[:, ::-1]))
    a = InferenceSession(net, long_term_gap=GAP, compile=True)
    a.step_functions = graphed_step(net)
    b = InferenceSession(net, long_term_gap=GAP, compile=True)
    b.step_functions = a.step_functions.for_another_session()
    assert b.step_functions.compiled is a.step_functions.compiled
    assert b.step_functions.graphs is not a.step_functions.graphs
    a.add_objects(vid[0], mask)
    b.add_objects(other_vid[0], mask[:, ::-1].copy())
    outs_a, outs_b = [], []
    for fa, fb in zip(vid[1:FRAMES], other_vid[1:FRAMES]):
        outs_a.append(a.step(fa))
        outs_b.append(b.step(fb))
    assert (torch.stack(outs_a) - eager).abs().max() < 1e-4
    assert (torch.stack(outs_b) - alone).abs().max() < 1e-4


@pytest.mark.parametrize("cudagraphs", [False, True])
def test_compiled_frames_with_flip_two_object_groups_and_a_new_object_equal_eager(net, cudagraphs):
    """The compiled frame with everything a session merges inside it: the mirrored view, 12 objects in two
    groups (more than the ID bank's 10), and a 13th object given at frame 5 (that frame runs eagerly as a
    reference; the groups change size, so the frame compiles again), without and with the session's graphs
    (4 groups' memory in their buffers; a reference frame's new memory copied in). Dynamo's eager backend: the
    tracing, without inductor's compile time."""
    h, w, gap = 33, 49, 2
    rng = np.random.default_rng(5)
    vid = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(9)]
    mask = np.zeros((h, w), dtype=np.int64)
    for k in range(12):
        mask[(k // 6) * 16:(k // 6) * 16 + 14, (k % 6) * 8:(k % 6) * 8 + 7] = k + 1
    new = np.zeros_like(mask)
    new[30:33, 40:49] = 13

    def run_video(session):
        session.add_objects(vid[0], mask)
        return [session.step(vid[t], new if t == 5 else None).clone() for t in range(1, 9)]

    expected = run_video(InferenceSession(net, long_term_gap=gap, flip=True))
    session = InferenceSession(net, long_term_gap=gap, flip=True, compile=True)
    step = session.step_functions = (graphed_step(net) if cudagraphs
                                     else CompiledFrameStep(net, torch.device("cpu"), backend="eager"))
    calls = []
    run_compiled = step._run
    step._run = lambda name, *args: calls.append((session.frame_index, name)) or run_compiled(name, *args)
    out = run_video(session)
    assert step.disabled is None
    # memory full from the first write (frame 2) on (with graphs, frames 1-2 before it too); frame 5 is a
    # reference (eager, its memory writes too)
    assert [f for f, name in calls if name == "segment"] == [1, 2, 3, 4, 6, 7, 8][0 if cudagraphs else 2:]
    assert [f for f, name in calls if name == "write"] == [4] * 4 + [7] * 4  # 2 views x 2 groups
    assert [p.shape[0] for p in out] == [13] * 4 + [14] * 4
    for got, want in zip(out, expected):
        assert (got - want).abs().max() < 1e-4


def test_sessions_share_the_compiled_functions(net):
    """One set of compiled functions per network and device: a video per session never recompiles."""
    a, b = InferenceSession(net, compile=True), InferenceSession(net, compile=True)
    assert a.step_functions.compiled is b.step_functions.compiled
    assert InferenceSession(copy.deepcopy(net), compile=True).step_functions.compiled is not a.step_functions.compiled


def test_failing_compiler_warns_once_and_runs_eagerly(net, video, eager, monkeypatch):
    def broken(fn, **kwargs):
        def call(*args):
            raise RuntimeError("unsupported op: aten::imaginary")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    session = InferenceSession(copy.deepcopy(net), long_term_gap=GAP, compile=True)
    with pytest.warns(UserWarning, match="compiling failed, running eagerly") as caught:
        out = run(session, video, frames=8)
    assert len([w for w in caught if "session.compile" in str(w.message)]) == 1
    assert "unsupported op" in session.step_functions.disabled
    assert (out - eager[:7]).abs().max() < 1e-5


def test_growing_memory_is_not_compiled():
    torch.manual_seed(0)
    bank = build_network("deaot_mbv2").eval()
    with pytest.warns(UserWarning, match="needs a fixed-size memory"):
        session = InferenceSession(bank, compile=True)
    vid = [np.full((33, 33, 3), 100 + 10 * i, dtype=np.uint8) for i in range(4)]
    mask = np.zeros((33, 33), dtype=np.int64)
    mask[5:20, 5:20] = 1
    session.add_objects(vid[0], mask)
    for f in vid[1:]:
        assert session.step(f).shape == (2, 33, 33)
    assert session.step_functions.compiled.functions == {}


def test_the_predictor_compiles_the_object_groups_of_its_masks_before_the_video(net, video, monkeypatch):
    """VideoPredictor with compile: objects that enter later and make a second group of the 10-object ID bank
    (5 first, 12 in all) were compiled in the middle of the video: the predictor knows every mask up front and
    warms up before the first frame, and the warm-up rehearses the entering too (until the new group's first
    memory write its memory is younger than the first group's: a shape the all-at-once rehearsals never make)."""
    from torch._dynamo.utils import counters

    from mavos.inference.predictor import VideoPredictor, object_counts

    vid, _ = video
    first = np.zeros((SIZE, SIZE), dtype=np.int64)
    later = np.zeros((SIZE, SIZE), dtype=np.int64)
    for k in range(12):
        (first if k < 5 else later)[10:50, 2 + 5 * k: 6 + 5 * k] = k + 1
    assert object_counts({0: first, 3: later}) == (5, 12)
    assert object_counts({2: torch.from_numpy(later), 0: np.where(first == 1, 255, first)}) == (4, 11)
    step = graphed_step(net)
    monkeypatch.setattr(CompiledFrameStep, "shared", staticmethod(lambda *args, **kwargs: step))
    predictor = VideoPredictor(net, device="cpu", long_term_gap=GAP, compile=True)
    graphs = None
    for index, mask in predictor.propagate(vid[:8], {0: first, 3: later}):
        if index == 0:
            graphs = counters["stats"]["unique_graphs"]
    assert set(np.unique(mask)) <= set(range(13)) and counters["stats"]["unique_graphs"] == graphs
    assert len(step.warmed) == 3  # one group, two groups, and the second entering after the first
