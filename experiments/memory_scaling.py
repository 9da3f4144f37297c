"""Benchmark: per-frame time and memory of MAVOS (fixed two-slot memory) vs DeAOT (growing bank) as a
video gets longer. Random weights and random frames: speed and memory do not depend on the weights.

    python experiments/memory_scaling.py --frames 300 --height 480 --width 854 --device cuda
    python experiments/memory_scaling.py --frames 200 --height 241 --width 433 --gap 5   # CPU-sized

Writes a CSV (model, frame, milliseconds, memory tokens, MB) and prints the time and memory of the first and
last tenth of the video for each model, counted from the first long-term write (before it MAVOS holds one
slot, not its two): the median ms (the memory-write frames among them do not sway it) and the mean MB. Each model first runs ``--warmup`` frames of a throwaway video, so that one-time costs
(library handles, allocator growth, thread pools) land on neither model's first frames. GPU memory is
``torch.cuda.max_memory_allocated`` per frame; on the CPU the long-term memory's tensor bytes are reported (RSS
is too coarse to see per-frame growth).
"""
from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import torch

from mavos.data.io import atomic_save
from mavos.inference.session import InferenceSession
from mavos.registry import build_network


def run(memory: str, frames: int, height: int, width: int, gap: int, device: torch.device,
        warmup: int = 0) -> list[dict]:
    torch.manual_seed(0)
    net = build_network("mavos_mbv2", [f"memory={memory}"]).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    mask = torch.zeros(height, width, dtype=torch.long)
    mask[height // 4: height // 2, width // 4: width // 2] = 1
    mask[height // 2: 3 * height // 4, width // 2: 3 * width // 4] = 2
    if warmup:  # a throwaway video first: the timed one starts warm
        session = InferenceSession(net, long_term_gap=gap, device=device)
        session.add_objects(torch.rand(height, width, 3, generator=gen), mask)
        for _ in range(warmup):
            session.step(torch.rand(height, width, 3, generator=gen))
    session = InferenceSession(net, long_term_gap=gap, device=device)
    session.add_objects(torch.rand(height, width, 3, generator=gen), mask)
    rows = []
    for i in range(1, frames):
        frame = torch.rand(height, width, 3, generator=gen)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        session.step(frame)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        ms = (time.perf_counter() - t0) * 1000
        mb = (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else session.memory_bytes()) / 2 ** 20
        rows.append({"model": memory, "frame": i, "ms": round(ms, 2), "memory_tokens": session.views[0][0].memory.num_tokens,
                     "mb": round(mb, 2)})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--height", type=int, default=241)
    ap.add_argument("--width", type=int, default=433)
    ap.add_argument("--gap", type=int, default=5, help="long-term gap for both models (paper: 10 MAVOS, 5 DeAOT)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="frames of a throwaway video per model, untimed (default 2 * gap + 1: both kinds of "
                         "memory write run once)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=Path("logs/experiments/memory_scaling.csv"))
    args = ap.parse_args(argv)
    if args.gap < 1 or args.frames < args.gap + 2:
        ap.error(f"--frames {args.frames} --gap {args.gap}: needs a gap of at least 1 and frames after the first "
                 f"long-term write (frame {args.gap}), so --frames at least {max(args.gap, 1) + 2}")
    device = torch.device(args.device)
    rows = []
    with torch.no_grad():
        for memory in ("mca", "bank"):
            warmup = 2 * args.gap + 1 if args.warmup is None else args.warmup
            rows += run(memory, args.frames, args.height, args.width, args.gap, device, warmup)
    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    atomic_save(write_csv, args.out)
    kind = "CUDA peak MB" if device.type == "cuda" else "long-term memory MB"
    print(f"{args.frames} frames {args.height}x{args.width}, gap {args.gap}, {device}; first and last tenth of "
          f"frames {args.gap}-{args.frames - 1} (from the first long-term write)")
    print(f"{'model':<6}{'ms first 10%':>14}{'ms last 10%':>13}{'tokens last':>13}{kind:>24} first -> last"
          f"   (ms: medians, which the memory-write frames among them do not sway)")
    for memory in ("mca", "bank"):
        r = [x for x in rows if x["model"] == memory and x["frame"] >= args.gap]
        tenth = max(1, len(r) // 10)
        first, last = r[:tenth], r[-tenth:]
        avg = lambda xs, k: sum(x[k] for x in xs) / len(xs)  # noqa: E731
        med = lambda xs: statistics.median(x["ms"] for x in xs)  # noqa: E731
        print(f"{memory:<6}{med(first):>14.1f}{med(last):>13.1f}{last[-1]['memory_tokens']:>13}"
              f"{avg(first, 'mb'):>16.1f} -> {avg(last, 'mb'):.1f}")
    print(f"csv: {args.out}")
    return rows


if __name__ == "__main__":
    main()
