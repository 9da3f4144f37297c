"""The GPU speed table: ``speed_benchmark.py`` over backbones x memories x precisions x eager/compiled, one
process per run, within a time budget, most important runs first; writes a Markdown table and the raw results.

    python experiments/gpu_suite.py --frames 1000 --size 480x854 --out logs/experiments/gpu
    python experiments/gpu_suite.py --budget 300 --only mavos_mbv2     # what fits in 5 minutes, MobileNetV2 only

Order: MobileNetV2 (fp32, bf16) eager and compiled side by side (the compiled step's outputs are compared with
eager's), ResNet-50 and Swin-B eager, the growing ``bank`` memory (DeAOT's) for each backbone, then ResNet-50 and
Swin-B compiled. A run that does not fit the remaining budget is listed as not run, never cut silently.
``gpu_table.md`` (the README's table), ``gpu_results.jsonl`` (every summary) and the per-frame CSV / PNG of
each run land in ``--out``; files are rewritten atomically after every run, so a killed suite keeps what ran.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BACKBONES = ["mavos_mbv2", "mavos_r50", "mavos_swinb"]
MEMORIES = {"MCAMemory": "mca", "BankMemory": "bank", "FIFOMemory": "fifo"}  # class -> conf/memory name
STARTUP = 30  # seconds a run spends outside its timed loop: imports, CUDA start, matmul peak, FLOP count


def plan(models: list[str]) -> list[dict]:
    """The runs in the order they are worth doing: the first model eager + compiled in both precisions and
    against the growing memory, the others eager, the growing memory for the rest, the others compiled."""
    def run(model, memory, precision, compare_compile=False):
        return dict(model=model, memory=memory, precision=precision, compare_compile=compare_compile)

    first, rest = models[:1], models[1:]
    runs = [run(m, "mca", p, True) for m in first for p in ("fp32", "bf16")]
    runs += [run(m, "bank", "fp32") for m in first]
    runs += [run(m, "mca", p) for p in ("fp32", "bf16") for m in rest]
    runs += [run(m, "bank", "bf16") for m in first]
    runs += [run(m, "bank", p) for p in ("fp32", "bf16") for m in rest]
    runs += [run(m, "mca", p, True) for p in ("bf16", "fp32") for m in rest]
    return runs


def parse_runs(text: str) -> list[dict]:
    runs = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] != "compiled"):
            raise SystemExit(f"--runs: {item!r} is not MODEL:MEMORY:PRECISION[:compiled]")
        model, memory, precision = parts[:3]
        if memory not in MEMORIES.values() or precision not in ("fp32", "tf32", "bf16", "fp16"):
            raise SystemExit(f"--runs: {item!r}: memory must be one of {sorted(MEMORIES.values())}, precision one "
                             f"of fp32, tf32, bf16, fp16")
        runs.append(dict(model=model, memory=memory, precision=precision, compare_compile=len(parts) == 4))
    return runs


def command(run: dict, args, seconds: float) -> list[str]:
    h, w = args.size
    cmd = [sys.executable, str(ROOT / "experiments" / "speed_benchmark.py"), "--model", run["model"],
           "--memory", run["memory"], "--size", f"{h}x{w}", "--frames", str(args.frames), "--device", args.device,
           "--precision", run["precision"], "--warmup", str(args.warmup), "--max-seconds", f"{seconds:.0f}",
           "--out", str(args.out / "runs"), "--json"]
    return cmd + (["--compare-compile"] if run["compare_compile"] else [])


def row(result: dict) -> str:
    mode = "compiled" if result["compile"] else "eager"
    diff = result.get("max_prob_diff")
    flat_ms = result["last_tenth_ms"] / result["first_tenth_ms"]
    flat_mb = result["last_tenth_mb"] / max(result["first_tenth_mb"], 1e-9)
    r = result
    return (f"| {r['model']} | `{MEMORIES.get(r['memory'], r['memory'])}` | {r['precision']} | {mode} "
            f"| {r['frames']} | {r['median_ms']:.2f} ({r['p90_ms']:.2f}) | {r['write_median_ms']:.2f} "
            f"| {r['fps']:.0f} | {r['first_tenth_ms']:.2f} -> {r['last_tenth_ms']:.2f} ({flat_ms:.2f}x) "
            f"| {r['first_tenth_mb']:.0f} -> {r['last_tenth_mb']:.0f} ({flat_mb:.2f}x) | {r['peak_mb']:.0f} "
            f"| {r['gflop_regular']:.0f}{gflop_end(r)} | {r['achieved_gflops'] / 1000:.1f} "
            f"({100 * r['fraction_of_peak']:.0f}%) | {'' if diff is None else f'{diff:.1e}'} |")


def gflop_end(result: dict) -> str:
    end = result.get("gflop_end", result["gflop_regular"])
    return "" if abs(end - result["gflop_regular"]) < 0.05 else f" -> {end:.0f}"


HEADER = ("| model | memory | precision | step | timed frames | median ms (p90) | memory-write ms | FPS "
          "| ms, first -> last tenth | allocated MB, first -> last tenth | peak MB | GFLOP/frame | TFLOP/s (share of matmul peak) "
          "| max prob. diff vs eager |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def write(out: Path, results: list[dict], skipped: list[str], header: str) -> None:
    from mavos.data.io import atomic_save

    table = "\n".join([header, "", HEADER, *(row(r) for r in results), "",
                       *(f"- not run: {s}" for s in skipped)]) + "\n"
    atomic_save(lambda tmp: Path(tmp).write_text(table), out / "gpu_table.md")
    lines = "".join(json.dumps(r) + "\n" for r in results)
    atomic_save(lambda tmp: Path(tmp).write_text(lines), out / "gpu_results.jsonl")


def main(argv: list[str] | None = None) -> None:
    from speed_benchmark import parse_size  # noqa: E402 - same folder

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=parse_size, default=(480, 854))
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget", type=float, default=3600, help="seconds for the whole suite")
    ap.add_argument("--run-limit", type=float, default=240, help="seconds at most for one run")
    ap.add_argument("--warmup", type=int, default=60,
                    help="untimed frames (compiling and CUDA-graph recording happen in them)")
    ap.add_argument("--only", default=",".join(BACKBONES), help="comma-separated model configs")
    ap.add_argument("--runs", default=None, metavar="MODEL:MEMORY:PRECISION[:compiled],...",
                    help="exactly these runs, in this order, instead of the plan (e.g. the rows a table lacks: "
                         "mavos_r50:mca:bf16:compiled,mavos_mbv2:mca:tf32); ':compiled' runs eager and compiled")
    ap.add_argument("--out", type=Path, default=ROOT / "logs" / "experiments" / "gpu")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget
    results, skipped, header = [], [], ""
    for run in parse_runs(args.runs) if args.runs else plan(args.only.split(",")):
        name = f"{run['model']} {run['memory']} {run['precision']}{' eager+compiled' if run['compare_compile'] else ''}"
        allowed = min(deadline - time.monotonic(), args.run_limit)
        if allowed < STARTUP + 20:
            skipped.append(f"{name} (budget spent)")
            continue
        t0 = time.monotonic()
        try:  # the benchmark stops its own loop in time (--max-seconds); the timeout is the backstop
            proc = subprocess.run(command(run, args, allowed - STARTUP), capture_output=True, text=True,
                                  timeout=allowed, cwd=ROOT)
        except subprocess.TimeoutExpired:
            proc = None
        summaries = [line for line in proc.stdout.splitlines() if line.startswith("[{")] if proc else []
        if proc is None:
            skipped.append(f"{name} (killed after {allowed:.0f} s)")
            print(f"[suite] {name}: stopped after {time.monotonic() - t0:.0f} s", flush=True)
        elif proc.returncode != 0 or not summaries:
            skipped.append(f"{name} (failed: {proc.stderr.strip().splitlines()[-1:] or proc.returncode})")
            print(f"[suite] {name}: FAILED\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}", flush=True)
        else:
            got = json.loads(summaries[-1])
            results += got
            header = header or (f"{got[0]['device_name']}, torch {got[0]['torch']}, {got[0]['size']} inference "
                                f"size, up to {args.frames} timed frames (each row: its own), one object, "
                                f"random weights")
            text = "\n".join(line for line in proc.stdout.splitlines() if not line.startswith("[{"))
            print(f"[suite] {name}: {time.monotonic() - t0:.0f} s\n{text}", flush=True)
        write(args.out, results, skipped, header)
    write(args.out, results, skipped, header)  # with the runs the budget left out
    print((args.out / "gpu_table.md").read_text())


if __name__ == "__main__":
    main()
