"""What flushing denormal floats is worth on the CPU (mavos/inference/denormals.py), measured both ways.

    python experiments/denormal_attention.py --size 481x849 --sharpen 30 --threads 2

1. The long-term attention's weights x values matmul (1674 x 3348 by 3348 x 1024) with softmax weights of scores
   spread like ``randn * --spread``, timed with denormals computed and flushed.
2. A session of a random-weight network whose long- and short-term attention queries and keys are scaled by
   ``--sharpen`` (scores by its square: random weights alone give scores too close together to produce a denormal
   weight, a trained network's can spread wider), over random frames: the median regular frame (no memory write),
   in alternating blocks with denormals computed and flushed on the stepping thread and its OpenMP team, and the
   share of denormal weights in each long-term and self-attention on one frame.
3. The same weights x values product as an ONNX graph (softmax(scores) @ values) in onnxruntime, each way in a
   fresh interpreter: with its defaults and with ``session.set_denormal_as_zero`` (what the README's example of
   running an exported model sets).
Random weights and frames: speeds, not scores.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mavos.inference.denormals import flush_denormals, set_flush_on_team
from mavos.inference.host_memory import keep_freed_memory
from mavos.inference.session import InferenceSession
from mavos.registry import build_network

def denormal_share(weights: torch.Tensor) -> float:
    """The share of float32 values that are denormal, read from their bits (exponent 0, mantissa not 0): a float
    comparison on a flushing thread would take every denormal for 0."""
    magnitude = weights.float().view(torch.int32) & 0x7FFFFFFF
    return float(((magnitude > 0) & (magnitude < (1 << 23))).float().mean())


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def matmul_part(spread: float, repeats: int) -> None:
    gen = torch.Generator().manual_seed(0)
    set_flush_on_team(False)
    weights = torch.softmax(torch.randn(1, 1674, 3348, generator=gen) * spread, -1)
    values = torch.randn(1, 3348, 1024, generator=gen)
    share = denormal_share(weights)
    computed = median_ms(lambda: torch.bmm(weights, values), repeats)
    set_flush_on_team(True)
    flushed = median_ms(lambda: torch.bmm(weights, values), repeats)
    print(f"weights x values [1,1674,3348] x [1,3348,1024], softmax of randn*{spread:g} ({100 * share:.1f}% of the "
          f"weights denormal): {computed:.1f} ms computed, {flushed:.1f} ms flushed ({computed / flushed:.1f}x)")


ONNXRUNTIME_TIMING = r"""
import sys, time
import numpy as np, onnxruntime as ort
path, flag, repeats, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
options = ort.SessionOptions()
options.intra_op_num_threads = threads
options.add_session_config_entry("session.set_denormal_as_zero", flag)
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
feeds = {"scores": np.load(path + ".scores.npy"), "values": np.load(path + ".values.npy")}
session.run(None, feeds)
times = []
for _ in range(repeats):
    start = time.perf_counter()
    session.run(None, feeds)
    times.append((time.perf_counter() - start) * 1e3)
print(sorted(times)[len(times) // 2])
"""


class WeightsTimesValues(torch.nn.Module):
    def forward(self, scores: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return torch.softmax(scores, -1) @ values


def onnxruntime_part(spread: float, repeats: int, threads: int) -> None:
    try:
        import onnxruntime
    except ImportError:
        print("onnxruntime part: onnxruntime is not installed")
        return
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(1, 1674, 3348, generator=gen) * spread
    values = torch.randn(1, 3348, 1024, generator=gen)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "weights_times_values.onnx")
        torch.onnx.export(WeightsTimesValues(), (scores, values), path, input_names=["scores", "values"],
                          output_names=["out"], dynamo=True, external_data=False, verbose=False)
        np.save(path + ".scores.npy", scores.numpy())
        np.save(path + ".values.npy", values.numpy())
        ms = {}
        for flag in ("0", "1"):  # a fresh interpreter each: the setting stays with the threads that ran
            proc = subprocess.run([sys.executable, "-c", ONNXRUNTIME_TIMING, path, flag, str(repeats), str(threads)],
                                  capture_output=True, text=True, check=True)
            ms[flag] = float(proc.stdout.split()[-1])
    print(f"onnxruntime {onnxruntime.__version__}, the same product as an ONNX graph: {ms['0']:.1f} ms with its "
          f"defaults, {ms['1']:.1f} ms with session.set_denormal_as_zero ({ms['0'] / ms['1']:.1f}x)")


def session_part(model: str, size: tuple[int, int], sharpen: float, frames: int, blocks: int, gap: int) -> None:
    torch.manual_seed(0)
    net = build_network(model).eval()
    with torch.no_grad():
        for layer in net.propagator.layers:  # the query / key rows of the shared projection
            layer.linear_qv.weight[:layer.d_att] *= sharpen
            layer.linear_qv.bias[:layer.d_att] *= sharpen
    h, w = size
    rng = np.random.default_rng(0)
    video = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(4)]
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4: h // 2, w // 4: w // 2] = 1
    session = InferenceSession(net, long_term_gap=gap)
    session.add_objects(video[0], mask)
    t = 1
    for _ in range(2 * gap + 1):  # the memory full (two slots) before anything is timed
        session.step(video[t % 4])
        t += 1

    import mavos.model.attention as attention_module
    from mavos.model import layers

    shares = []

    def observed(q, k, v, scale, bias=None, dropout=0.0):
        scores = torch.matmul(q * scale, k.transpose(-1, -2))
        shares.append(denormal_share(torch.softmax(scores if bias is None else scores + bias, -1)))
        return layers.attention(q, k, v, scale, bias, dropout)

    attention_module.attention = observed
    set_flush_on_team(False)  # a flushing thread would make (and read) every denormal weight 0
    try:
        session.step(video[t % 4])
        t += 1
    finally:
        attention_module.attention = layers.attention
    times: dict[bool, list[float]] = {True: [], False: []}
    for block in range(2 * blocks):
        flushed = block % 2 == 0
        set_flush_on_team(flushed)
        for _ in range(frames):
            if t % gap == 0:
                session.step(video[t % 4])  # a memory write: not a regular frame
                t += 1
            start = time.perf_counter()
            session.step(video[t % 4])
            times[flushed].append((time.perf_counter() - start) * 1e3)
            t += 1
    set_flush_on_team(True)
    computed, flushed = statistics.median(times[False]), statistics.median(times[True])
    print(f"{model} {h}x{w}, attention queries and keys x{sharpen:g}: denormal weights per attention on one frame "
          f"{', '.join(f'{100 * s:.2f}%' for s in shares)}")
    print(f"median regular frame: {computed:.1f} ms computed, {flushed:.1f} ms flushed ({computed / flushed:.2f}x; "
          f"{len(times[False])} frames each, alternating blocks of {frames})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mavos_mbv2")
    parser.add_argument("--size", default="481x849", help="frame size HxW")
    parser.add_argument("--sharpen", type=float, default=30.0, help="scale of the attention queries and keys")
    parser.add_argument("--spread", type=float, default=30.0, help="the matmul part's scores: randn * spread")
    parser.add_argument("--frames", type=int, default=5, help="regular frames per block")
    parser.add_argument("--blocks", type=int, default=2, help="blocks of each kind")
    parser.add_argument("--gap", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="the matmul part's timings of each kind")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    flush_denormals()  # what a session does on its thread; each part then sets the state it measures
    h, w = (int(x) for x in args.size.lower().split("x"))
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    matmul_part(args.spread, repeats=args.repeats)
    session_part(args.model, (h, w), args.sharpen, args.frames, args.blocks, args.gap)
    onnxruntime_part(args.spread, args.repeats, args.threads)


if __name__ == "__main__":
    main()
