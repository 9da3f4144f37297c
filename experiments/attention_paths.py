"""Which way of computing the propagation's attentions is fastest on this device, at the shapes of a 480p frame.

The propagation attends with 128-wide queries / keys and 1024-wide values (visual | identity), one head:
long-term over 2 memory slots (1674 x 3348 tokens at 481x849), self-attention (1674 x 1674), and the short-term
15x15 window with a relative-position term. The fused attention kernels are made for equal, small head widths,
so which formulation wins depends on the device and the dtype; this script times the candidates side by side
(median of ``--reps`` after warm-up; CUDA events on a GPU) and gives each one's largest difference from the
float32 written-out form:

- global attention: written out (``mavos.model.layers.attention``, what the model runs on every device),
  ``scaled_dot_product_attention`` as dispatched, SDPA restricted to each backend (math, memory-efficient, flash,
  cuDNN; "n/a" where a backend refuses the shapes), and SDPA over the values cut into 128-wide pieces (the
  width the flash kernels take, recomputing the scores once per piece), and written out over blocks of 256 or
  558 query rows (each block's scores small enough to stay in a CPU's last-level cache through the softmax);
- short-term window: ``LocalGatedAttention.attend``'s banded form (what the model runs) against the dense form
  (SDPA over the whole map with an additive mask holding the relative-position term, -inf outside the window).

    python experiments/attention_paths.py                       # CPU, float32
    python experiments/attention_paths.py --device cuda --dtype bf16
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mavos.model.attention import LocalGatedAttention  # noqa: E402
from mavos.model.layers import attention as written_out  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def timed(fn, device: torch.device, reps: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn()``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def sdpa_backend(backend):
    """SDPA restricted to one backend (a ``torch.nn.attention.SDPBackend``)."""
    from torch.nn.attention import sdpa_kernel

    def run(q, k, v, scale):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return run


def sdpa_value_pieces(q, k, v, scale, width: int = 128):
    return torch.cat([F.scaled_dot_product_attention(q, k, piece, scale=scale) for piece in v.split(width, dim=-1)],
                     dim=-1)


def written_out_query_blocks(q, k, v, scale, rows: int):
    """The model's written-out attention over blocks of ``rows`` queries, the blocks' outputs concatenated."""
    return torch.cat([written_out(block, k, v, scale) for block in q.split(rows, dim=-2)], dim=-2)


def dense_window_index(size: tuple[int, int], r: int, device=None) -> torch.Tensor:
    """(N, N) index into a query's relative-position terms for every key of an H x W map: the key's place in the
    query's (2r+1)^2 window, or (2r+1)^2 (a -inf column) outside it. It depends on the map size only, so a dense
    implementation would make it once per size, as the banded one makes its bands."""
    h, w = size
    pos = torch.arange(h * w, device=device)
    dy = (pos // w)[None, :] - (pos // w)[:, None]
    dx = (pos % w)[None, :] - (pos % w)[:, None]
    inside = (dy.abs() <= r) & (dx.abs() <= r)
    return torch.where(inside, (dy + r) * (2 * r + 1) + (dx + r), (2 * r + 1) ** 2)


def dense_window_bias(rel: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(N, N) additive mask of the short-term window (the per-frame part): the query's relative-position term
    for keys inside its window, -inf elsewhere."""
    padded = F.pad(rel, (0, 1), value=float("-inf"))
    return torch.gather(padded, 1, index)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--tokens", type=int, nargs=2, default=(31, 54), metavar=("H", "W"),
                    help="token map (31 x 54 = a 481x849 frame at stride 16)")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    h, w = args.tokens
    n, d, dv, r = h * w, 128, 1024, 7
    scale = 1.0 / math.sqrt(d)
    gen = torch.Generator().manual_seed(0)
    rows = []

    def report(case: str, path: str, fn, reference: torch.Tensor) -> None:
        try:
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # SDPA says why each kernel declined; "n/a" says it
                out = fn()
                ms = timed(fn, device, args.reps)
        except RuntimeError as e:  # a backend that refuses these shapes / dtype
            print(f"{case:<26}{path:<34}{'n/a':>9}   {str(e).splitlines()[0][:70]}")
            rows.append({"case": case, "path": path, "ms": None})
            return
        diff = (out.float() - reference).abs().max().item()
        print(f"{case:<26}{path:<34}{ms:9.2f} ms   max |diff| vs fp32 written out {diff:.1e}")
        rows.append({"case": case, "path": path, "ms": ms, "max_diff": diff})

    print(f"{device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), {args.dtype}, "
          f"{h}x{w} tokens, torch {torch.__version__}")
    from torch.nn.attention import SDPBackend

    for case, keys in (("long-term (2 slots)", 2 * n), ("self-attention", n)):
        q = torch.randn(1, 1, n, d, generator=gen).to(device)
        k = torch.randn(1, 1, keys, d, generator=gen).to(device)
        v = torch.randn(1, 1, keys, dv, generator=gen).to(device)
        with torch.inference_mode():
            reference = written_out(q, k, v, scale).float()
        q, k, v = (t.to(dtype) for t in (q, k, v))
        report(case, "written out", lambda: written_out(q, k, v, scale), reference)
        report(case, "sdpa (as dispatched)", lambda: F.scaled_dot_product_attention(q, k, v, scale=scale), reference)
        for backend in (SDPBackend.MATH, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION,
                        SDPBackend.CUDNN_ATTENTION):
            run = sdpa_backend(backend)
            report(case, f"sdpa {backend.name.lower()}", lambda run=run: run(q, k, v, scale), reference)
        report(case, "sdpa, values in 128-wide pieces", lambda: sdpa_value_pieces(q, k, v, scale), reference)
        for block in (256, 558):
            report(case, f"written out, {block}-query blocks",
                   lambda block=block: written_out_query_blocks(q, k, v, scale, block), reference)

    # the short-term window: banded (the model's) against dense masked
    layer = LocalGatedAttention(d_qk=256, d_vu=512, d_att=d, heads=1, expand=2.0, max_distance=r)
    q = torch.randn(1, n, d, generator=gen).to(device)
    k = torch.randn(1, n, d, generator=gen).to(device)
    v = torch.randn(1, n, dv, generator=gen).to(device)
    rel = torch.randn(n, (2 * r + 1) ** 2, generator=gen).to(device)
    index = dense_window_index((h, w), r, device)  # once per map size, outside the timing (as the bands)
    with torch.inference_mode():
        reference = written_out(q[:, None], k[:, None], v[:, None], scale, dense_window_bias(rel, index))[:, 0]
    q, k, v, rel = (t.to(dtype) for t in (q, k, v, rel))
    case = "short-term window 15x15"
    bands = layer.bands((h, w), device)  # made once per map size in the model too
    report(case, "banded (LocalGatedAttention)", lambda: layer._banded(q[0], k[0], v[0], rel, (h, w), bands)[None],
           reference.float())
    report(case, "dense: sdpa + mask",
           lambda: F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=scale,
                                                  attn_mask=dense_window_bias(rel, index).to(dtype))[:, 0],
           reference.float())
    return rows


if __name__ == "__main__":
    main()
