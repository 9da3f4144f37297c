"""The CUDA path of the per-frame step, where a GPU is present (skipped elsewhere): the same numbers as the CPU in
float32, bf16 autocast close to them, and no host synchronisation inside ``step`` (CUDA's own sync detector).
The evaluator on the GPU writes the masks it writes on the CPU. The compiled step (CUDA graphs, with its own
depthwise-convolution form) equals eager; ``experiments/speed_benchmark.py --compare-compile`` compares them over
long videos."""
import numpy as np
import pytest
import torch

from mavos.inference.session import InferenceSession
from mavos.registry import build_network
from tests.golden_scenario import seeded_weights
from tests.test_evaluation import davis  # noqa: F401 (fixture)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

FRAMES, GAP = 12, 3  # memory writes at frames 3, 6, 9: both MCA slots written, the recurrent one fused twice
SIZES = {"mavos_mbv2": (97, 129), "mavos_r50": (97, 129), "mavos_swinb": (96, 128)}  # inference sizes: no resizing


def video(h: int, w: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(FRAMES)]
    mask = np.zeros((h, w), dtype=np.int64)
    mask[h // 8: h // 2, w // 8: w // 2], mask[h // 2: 7 * h // 8, w // 2: 7 * w // 8] = 1, 2
    return frames, mask


def run(net, device: str, frames, mask, amp: str | None = None, compile: bool = False) -> torch.Tensor:
    session = InferenceSession(net.to(device), long_term_gap=GAP, device=device, amp=amp, compile=compile)
    session.add_objects(torch.from_numpy(frames[0]).to(device), mask)
    with torch.inference_mode():
        return torch.stack([session.step(torch.from_numpy(f).to(device)).float().cpu() for f in frames[1:]])


@pytest.fixture(autouse=True)
def exact_float32():
    """TF32 off (cuDNN enables it by default on Ampere and later): float32 here means float32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("model", sorted(SIZES))
def test_cuda_float32_equals_the_cpu(model):
    net = seeded_weights(build_network(model)).eval()
    frames, mask = video(*SIZES[model])
    cpu = run(net, "cpu", frames, mask)
    cuda = run(net, "cuda", frames, mask)
    diff = (cpu - cuda).abs().max().item()
    print(f"{model}: max probability difference CUDA vs CPU over {FRAMES - 1} frames: {diff:.2e}")
    assert cuda.shape == (FRAMES - 1, 3, *SIZES[model])
    assert diff < 1e-3, diff


def test_bf16_autocast_on_cuda_stays_close_to_float32():
    net = seeded_weights(build_network("mavos_mbv2")).eval()
    frames, mask = video(*SIZES["mavos_mbv2"], seed=1)
    exact = run(net, "cuda", frames, mask)
    bf16 = run(net, "cuda", frames, mask, amp="bf16")
    mean, worst = (bf16 - exact).abs().mean().item(), (bf16 - exact).abs().max().item()
    labels = (bf16.argmax(1) == exact.argmax(1)).float().mean().item()
    print(f"bf16 vs fp32 on CUDA: mean |dp| {mean:.2e}, max {worst:.2e}, labels agree on {100 * labels:.3f}%")
    assert torch.isfinite(bf16).all()
    assert mean < 0.02 and worst < 0.5 and labels > 0.98


def test_compiled_step_on_cuda_equals_eager():
    """The compiled step (CUDA graphs; depthwise convolutions as fused shifted sums) against eager, float32, over
    frames that compile and replay the whole frame (before and after the first long-term write) and the memory
    write."""
    from mavos.inference.step import CompiledFrameStep

    net = seeded_weights(build_network("mavos_mbv2")).eval()
    frames, mask = video(*SIZES["mavos_mbv2"], seed=3)
    eager = run(net, "cuda", frames, mask)
    compiled = run(net, "cuda", frames, mask, compile=True)
    assert CompiledFrameStep.shared(net, torch.device("cuda")).disabled is None  # no fallback to eager
    diff = (compiled - eager).abs().max().item()
    print(f"compiled vs eager on CUDA over {FRAMES - 1} frames: max probability difference {diff:.2e}")
    assert diff < 1e-4, diff


def test_cuda_graphs_pass_from_session_to_session(monkeypatch):
    """``warm_up``'s rehearsal records the session's CUDA graphs (one per memory shape, the write's per object
    group); the video after it and a second video in a new session record none, their memory copied into the
    graphs handed over, and both equal eager (float32) frame for frame."""
    import gc

    from mavos.inference.graphs import SessionGraphs

    recorded = []
    record = SessionGraphs._record
    monkeypatch.setattr(SessionGraphs, "_record", lambda self, *a: recorded.append(a[0]) or record(self, *a))
    net = seeded_weights(build_network("mavos_mbv2")).eval().cuda()
    h, w = SIZES["mavos_mbv2"]
    videos = [video(h, w, seed=4), video(h, w, seed=5)]
    eager = [run(net, "cuda", *v) for v in videos]
    assert not recorded  # eager records nothing

    def compiled(frames, mask, warm: bool) -> torch.Tensor:
        session = InferenceSession(net, long_term_gap=GAP, device="cuda", compile=True)
        if warm:
            session.warm_up((h, w), 2)
            assert len(recorded) == 3, recorded  # reference alone, full memory, the write
        session.add_objects(torch.from_numpy(frames[0]).cuda(), mask)
        with torch.inference_mode():
            out = torch.stack([session.step(torch.from_numpy(f).cuda()).float().cpu() for f in frames[1:]])
        assert session.step_functions.disabled is None  # no fallback to eager
        return out

    first = compiled(*videos[0], warm=True)
    gc.collect()  # the first session's graphs go back to the pool when it is collected
    second = compiled(*videos[1], warm=False)
    assert len(recorded) == 3, recorded  # neither video recorded a graph
    for out, ref in zip((first, second), eager):
        diff = (out - ref).abs().max().item()
        print(f"compiled on handed-over CUDA graphs vs eager: max probability difference {diff:.2e}")
        assert diff < 1e-4, diff
    assert not torch.equal(first, second)  # two videos, two results: no memory leaked from one into the other


def test_step_makes_no_host_synchronisation_on_cuda():
    """CUDA's sync detector raises on any device-to-host wait (``.item()``, boolean indexing, ``nonzero``...)
    over regular frames and memory writes."""
    net = seeded_weights(build_network("mavos_mbv2")).eval().cuda()
    frames, mask = video(*SIZES["mavos_mbv2"], seed=2)
    frames = [torch.from_numpy(f).cuda() for f in frames]
    session = InferenceSession(net, long_term_gap=GAP, device="cuda")
    with torch.inference_mode():
        session.add_objects(frames[0], mask)
        session.step(frames[1])  # first regular frame: per-video tables are made here
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            outs = [session.step(f) for f in frames[2:]]
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert session.memory_slots == 2 and all(p.shape == (3, *SIZES["mavos_mbv2"]) for p in outs)


def test_evaluation_on_cuda_writes_the_masks_the_cpu_writes(davis, tmp_path):
    """segment_video on the GPU hands each frame's ids to the writer without a per-frame ``.cpu()`` wait
    (``label_to_host``: pinned memory, a non-blocking copy and an event); what it writes must still be what
    the CPU writes, frame for frame."""
    from mavos.data.davis import DavisReader
    from mavos.data.io import read_mask
    from mavos.evaluation.evaluator import segment_video

    net = seeded_weights(build_network("mavos_mbv2")).eval()
    written = {}
    for device in ("cpu", "cuda"):
        for record in DavisReader(davis, split="val").videos():
            result = segment_video(net.to(device), record, protocol="davis", results_dir=tmp_path / device,
                                   progress=False)
            assert result.frames == len(record)
        written[device] = {p.relative_to(tmp_path / device): read_mask(p) for p in (tmp_path / device).rglob("*.png")}
    assert written["cpu"].keys() == written["cuda"].keys() and len(written["cpu"]) == 15
    same = np.mean([np.mean(written["cpu"][k] == written["cuda"][k]) for k in written["cpu"]])
    print(f"evaluation CUDA vs CPU: {100 * same:.3f}% of written pixels agree")
    assert same > 0.999
