"""Speed benchmark: per-frame time of ``InferenceSession.step`` over a long video, FLOPs and how close they come
to the machine's matmul peak. Random weights and frames (speed does not depend on them).

    python experiments/speed_benchmark.py --model mavos_mbv2 --size 481x849 --frames 150 --threads 2
    python experiments/speed_benchmark.py --model mavos_mbv2 --memory bank --size 481x481 --frames 150
    python experiments/speed_benchmark.py --model mavos_r50 --size 480x854 --frames 1000 --device cuda \\
        --precision bf16 --compile
    python experiments/speed_benchmark.py --size 481x849 --frames 40 --compare-with /path/to/old/checkout

Reports, for the timed frames (after ``--warmup`` frames, which also absorb compilation): median and p90
ms/frame of regular frames, median ms of the frames that write long-term memory (every ``--gap`` frames), FPS
(all timed frames), the first and last tenth of the video (flatness), peak memory (CUDA
``max_memory_allocated``, or the process's peak RSS on the CPU), FLOPs per regular and per memory-write frame
(``torch.utils.flop_counter``: matmuls, convolutions, attention), achieved FLOP/s and its fraction of the
machine's matmul peak measured in the same run (best of a few large matmuls in the run's dtype, before and
after). Writes ``<out>/<tag>.csv`` (one row per frame: index, ms, memory write, MB) and ``<out>/<tag>.png``.

``--compare-with DIR`` runs the same benchmark with the ``mavos`` package of another checkout (e.g. the code
before a change) in subprocesses, alternating old and new ``--repeats`` times, and prints both side by side:
timings on a shared machine are only comparable when measured together.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The checkout whose ``mavos`` is measured: this one, or the other one of --compare-with (set for the child).
sys.path.insert(0, os.environ.get("MAVOS_TREE", str(ROOT)))


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW (e.g. 481x849), got {text!r}") from None
    return h, w


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mavos_mbv2", help="a model config name (conf/model)")
    ap.add_argument("--memory", choices=["mca", "bank", "fifo"], default=None, help="override the model's memory")
    ap.add_argument("--size", type=parse_size, default=(481, 849), help="frame size HxW")
    ap.add_argument("--resize", action="store_true",
                    help="feed frames of exactly --size (the session resizes them); default: frames at the "
                         "inference size that --size maps to, so no resizing is timed")
    ap.add_argument("--frames", type=int, default=150, help="timed frames (up to 10,000 or more)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed frames first (default 3*gap + 5)")
    ap.add_argument("--gap", type=int, default=None, help="long-term gap (default: the memory's test gap)")
    ap.add_argument("--objects", type=int, default=1)
    ap.add_argument("--device", default=None, help="cpu | cuda | cuda:1 (default: cuda when available)")
    ap.add_argument("--precision", choices=["fp32", "tf32", "bf16", "fp16"], default="fp32")
    ap.add_argument("--compile", action="store_true", help="session.compile=true (the compiled fixed-shape step)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--no-flops", action="store_true", help="skip FLOP counting")
    ap.add_argument("--out", type=Path, default=ROOT / "logs" / "experiments" / "speed")
    ap.add_argument("--tag", default=None, help="file name stem (default from the settings)")
    ap.add_argument("--json", action="store_true", help="print one JSON line (used by --compare-with)")
    ap.add_argument("--compare-with", type=Path, default=None, metavar="DIR",
                    help="another checkout whose mavos package to benchmark alongside this one")
    ap.add_argument("--repeats", type=int, default=2, help="alternations with --compare-with")
    return ap


# ---------------------------------------------------------------------------------------------------- measuring
def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device, dtype, seconds: float = 1.0) -> float:
    """Best FLOP/s of square matmuls in ``dtype`` on ``device`` (the machine's practical peak)."""
    import torch

    n = 4096 if device.type == "cuda" else 1536
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    start = time.perf_counter()
    torch.mm(a, b)
    while time.perf_counter() - start < seconds:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(4 if device.type == "cuda" else 1):
            torch.mm(a, b)
        sync(device)
        dt = (time.perf_counter() - t0) / (4 if device.type == "cuda" else 1)
        best = max(best, 2 * n ** 3 / dt)
    return best


def peak_memory_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def current_memory_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2 ** 20
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:
        return float("nan")


def make_session(net, args, device, gap):
    import inspect

    from mavos.inference.session import InferenceSession

    kwargs = {"long_term_gap": gap, "device": device}
    if args.precision in ("bf16", "fp16"):
        kwargs["amp"] = args.precision
    params = inspect.signature(InferenceSession.__init__).parameters
    if args.compile:
        if "compile" not in params:
            raise SystemExit("this checkout's InferenceSession has no compile option")
        kwargs["compile"] = True
    return InferenceSession(net, **kwargs), "tensor_frames" in dir(InferenceSession)


def frame_source(args, device, accepts_tensors: bool, count: int = 8):
    """A few distinct random frames, cycled (content does not change the speed)."""
    import numpy as np
    import torch

    from mavos.inference.session import inference_size

    h, w = args.size
    if not args.resize:
        multiple = (16, 0) if "swin" in args.model else (16, 1)
        h, w = inference_size(h, w, max_long_edge=None, multiple=multiple)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(count)]
    if accepts_tensors:
        frames = [torch.from_numpy(f).to(device) for f in frames]
    mask = np.zeros((h, w), dtype=np.int64)
    for k in range(args.objects):
        y0 = (k * h) // (args.objects + 1)
        mask[y0 + h // 8: y0 + h // 8 + h // (args.objects + 2), w // 4: 3 * w // 4] = k + 1
    return frames, mask, (h, w)


def count_flops(net, args, device, gap, frames, mask) -> tuple[float, float]:
    """FLOPs of one regular frame and one memory-write frame (a short separate session)."""
    from torch.utils.flop_counter import FlopCounterMode

    session, _ = make_session(net, argparse.Namespace(**{**vars(args), "compile": False}), device, gap)
    session.add_objects(frames[0], mask)
    regular = write = None
    for t in range(1, 2 * gap + 2):
        is_write = t % gap == 0
        want = (is_write and t >= 2 * gap and write is None) or (not is_write and t > gap and regular is None)
        if want:
            with FlopCounterMode(display=False) as counter:
                session.step(frames[t % len(frames)])
            if is_write:
                write = counter.get_total_flops()
            else:
                regular = counter.get_total_flops()
        else:
            session.step(frames[t % len(frames)])
    return float(regular or 0), float(write if write is not None else regular or 0)


def run_benchmark(args) -> dict:
    import torch

    from mavos.registry import build_network

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.precision == "tf32"
        torch.backends.cudnn.allow_tf32 = args.precision == "tf32"
    torch.manual_seed(0)
    overrides = [f"memory={args.memory}"] if args.memory else []
    net = build_network(args.model, overrides).to(device).eval()
    gap = args.gap or net.memory.test_gap
    warmup = args.warmup if args.warmup is not None else 3 * gap + 5
    _, accepts_tensors = make_session(net, argparse.Namespace(**{**vars(args), "compile": False}), device, gap)
    frames, mask, size = frame_source(args, device, accepts_tensors)
    peak_dtype = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    peak_dtype = peak_dtype[args.precision] if device.type == "cuda" else torch.float32
    peak_before = matmul_peak(device, peak_dtype)

    with torch.inference_mode():
        flops = (0.0, 0.0) if args.no_flops else count_flops(net, args, device, gap, frames, mask)
        session, _ = make_session(net, args, device, gap)
        session.add_objects(frames[0], mask)
        rows = []
        total = warmup + args.frames
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(total)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(total)]
        for t in range(1, total + 1):
            frame = frames[t % len(frames)]
            if device.type == "cuda":
                starts[t - 1].record()
                session.step(frame)
                ends[t - 1].record()
                ends[t - 1].synchronize()
                ms = starts[t - 1].elapsed_time(ends[t - 1])
            else:
                t0 = time.perf_counter()
                session.step(frame)
                ms = (time.perf_counter() - t0) * 1000
            rows.append({"frame": t, "ms": round(ms, 3), "memory_write": int(t % gap == 0),
                         "timed": int(t > warmup), "mb": round(current_memory_mb(device), 1)})
    peak_after = matmul_peak(device, peak_dtype)
    timed = [r for r in rows if r["timed"]]
    regular = [r["ms"] for r in timed if not r["memory_write"]]
    writes = [r["ms"] for r in timed if r["memory_write"]]
    all_ms = [r["ms"] for r in timed]
    tenth = max(1, len(timed) // 10)
    peak = max(peak_before, peak_after)
    mean_ms = statistics.fmean(all_ms)
    mean_flops = (flops[0] * len(regular) + flops[1] * len(writes)) / max(1, len(timed))
    achieved = mean_flops / (mean_ms / 1000) if mean_ms else 0.0
    return {
        "model": args.model, "memory": args.memory or type(net.memory).__name__, "size": f"{size[0]}x{size[1]}",
        "device": str(device), "device_name": device_name(device), "threads": torch.get_num_threads(),
        "precision": args.precision, "compile": bool(args.compile), "gap": gap, "objects": args.objects,
        "frames": len(timed), "warmup": warmup,
        "median_ms": statistics.median(regular) if regular else float("nan"),
        "p90_ms": quantile(regular, 0.9), "write_median_ms": statistics.median(writes) if writes else float("nan"),
        "fps": 1000.0 / mean_ms, "first_tenth_ms": statistics.fmean(all_ms[:tenth]),
        "last_tenth_ms": statistics.fmean(all_ms[-tenth:]),
        "first_tenth_mb": statistics.fmean(r["mb"] for r in timed[:tenth]),
        "last_tenth_mb": statistics.fmean(r["mb"] for r in timed[-tenth:]),
        "peak_mb": peak_memory_mb(device), "gflop_regular": flops[0] / 1e9, "gflop_write": flops[1] / 1e9,
        "achieved_gflops": achieved / 1e9, "peak_gflops": peak / 1e9, "fraction_of_peak": achieved / peak,
        "torch": torch.__version__, "rows": rows,
    }


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def device_name(device) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} CPUs"


# ---------------------------------------------------------------------------------------------------- reporting
def tag_of(args) -> str:
    h, w = args.size
    return args.tag or (f"{args.model}_{args.memory or 'default'}_{h}x{w}_{args.precision}"
                        f"{'_compiled' if args.compile else ''}_{args.device or 'auto'}")


def save(result: dict, out: Path, tag: str) -> tuple[Path, Path | None]:
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"{tag}.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(result["rows"][0]))
        writer.writeheader()
        writer.writerows(result["rows"])
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return csv_path, None
    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot([r["frame"] for r in rows], [r["ms"] for r in rows], lw=0.7, label="ms / frame")
    ax.set_xlabel("frame")
    ax.set_ylabel("ms")
    ax2 = ax.twinx()
    ax2.plot([r["frame"] for r in rows], [r["mb"] for r in rows], lw=0.7, color="tab:red", label="MB")
    ax2.set_ylabel("memory MB (allocated / RSS)")
    ax.set_title(f"{result['model']} {result['memory']} {result['size']} {result['precision']}"
                 f"{' compiled' if result['compile'] else ''} on {result['device_name']}")
    fig.tight_layout()
    png = out / f"{tag}.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return csv_path, png


def summary_line(r: dict) -> str:
    return (f"median {r['median_ms']:.1f} ms  p90 {r['p90_ms']:.1f}  write {r['write_median_ms']:.1f}  "
            f"{r['fps']:.2f} FPS  first/last 10% {r['first_tenth_ms']:.1f}/{r['last_tenth_ms']:.1f} ms  "
            f"peak {r['peak_mb']:.0f} MB  {r['gflop_regular']:.1f}/{r['gflop_write']:.1f} GFLOP  "
            f"{r['achieved_gflops']:.0f} GFLOP/s = {100 * r['fraction_of_peak']:.0f}% of {r['peak_gflops']:.0f}")


def compare(args, argv: list[str]) -> None:
    """Alternate this checkout and ``--compare-with`` in subprocesses; print both."""
    strip = {"--compare-with", "--repeats"}
    child, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in strip:
            skip = True
            continue
        if a.split("=")[0] in strip:
            continue
        child.append(a)
    trees = {"old": args.compare_with.resolve(), "new": ROOT}
    results: dict[str, list[dict]] = {"old": [], "new": []}
    for rep in range(args.repeats):
        order = ["old", "new"] if rep % 2 == 0 else ["new", "old"]
        for name in order:
            env = dict(os.environ, MAVOS_TREE=str(trees[name]))
            cmd = [sys.executable, str(Path(__file__).resolve()), *child, "--json", "--tag", f"{tag_of(args)}_{name}"]
            proc = subprocess.run(cmd, cwd=trees[name], env=env, capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{name} ({trees[name]}) failed:\n{proc.stderr[-3000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results[name].append(r)
            print(f"[{rep}] {name}: {summary_line(r)}", flush=True)
    best = {k: min(v, key=lambda r: r["median_ms"]) for k, v in results.items()}
    med = {k: statistics.median(r["median_ms"] for r in v) for k, v in results.items()}
    print(f"\n{args.model} {best['new']['size']} {best['new']['memory']} {best['new']['precision']} on "
          f"{best['new']['device_name']}, {best['new']['threads']} threads")
    for k in ("old", "new"):
        print(f"{k}: median of medians {med[k]:.1f} ms/frame; best run: {summary_line(best[k])}")
    print(f"new / old: {med['new'] / med['old']:.3f} (median of per-run medians)")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.compare_with is not None:
        compare(args, argv)
        return
    result = run_benchmark(args)
    tag = tag_of(args)
    csv_path, png = save(result, args.out, tag)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
        return
    print(f"{result['model']} ({result['memory']}) {result['size']} {result['precision']}"
          f"{' compiled' if result['compile'] else ''} on {result['device_name']}, {result['threads']} threads, "
          f"gap {result['gap']}, {result['frames']} timed frames after {result['warmup']}")
    print(summary_line(result))
    print(f"csv: {csv_path}" + (f"  plot: {png}" if png else ""))


if __name__ == "__main__":
    main()
