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
``max_memory_allocated``, or the process's peak RSS on the CPU), minor page faults per regular CPU frame, FLOPs
per regular and per memory-write frame (``torch.utils.flop_counter``: matmuls, convolutions, attention),
achieved FLOP/s and its fraction of the machine's matmul peak measured in the same run (best of a few large
matmuls in the run's dtype, before and after). Writes ``<out>/<tag>.csv`` (one row per frame: index, ms, memory
write, MB, page faults) and ``<out>/<tag>.png``.

``--compare-with DIR`` also loads the ``mavos`` package of another checkout (e.g. the code before a change;
imported under another name) and runs both in one process, alternating frame by frame (who goes first
alternates too): on a shared machine only timings taken side by side are comparable. The summary gives both
and the ratio of their medians.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


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
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed frames first (default 3*gap + 5, compiled 5*gap + 5: compiling and CUDA-graph "
                         "recording of the memory-write step happen at its first writes after the memory is full)")
    ap.add_argument("--gap", type=int, default=None, help="long-term gap (default: the memory's test gap)")
    ap.add_argument("--objects", type=int, default=1)
    ap.add_argument("--device", default=None, help="cpu | cuda | cuda:1 (default: cuda when available)")
    ap.add_argument("--precision", choices=["fp32", "tf32", "bf16", "fp16"], default="fp32")
    ap.add_argument("--compile", action="store_true", help="session.compile=true (the compiled fixed-shape step)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="stop the frame loop after this many seconds, counted from its first frame: warm-up "
                         "included, where compiling happens (the summary covers the frames timed by then)")
    ap.add_argument("--no-flops", action="store_true", help="skip FLOP counting")
    ap.add_argument("--out", type=Path, default=ROOT / "logs" / "experiments" / "speed")
    ap.add_argument("--tag", default=None, help="file name stem (default from the settings)")
    ap.add_argument("--json", action="store_true", help="also print the summary as one JSON line")
    ap.add_argument("--compare-with", type=Path, default=None, metavar="DIR",
                    help="another checkout whose mavos package runs alongside this one, frame by frame")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="afterwards, N more frames of this checkout under torch.profiler: where the time goes "
                         "(encoder, propagation, decoder, identity, memory write, the rest of the session; eagerly) "
                         "and the top ops")
    ap.add_argument("--cudnn-benchmark", action="store_true",
                    help="torch.backends.cudnn.benchmark = True: cuDNN times its convolution algorithms once per "
                         "shape and keeps the fastest")
    ap.add_argument("--compare-compile", action="store_true",
                    help="run this checkout eager and compiled alongside each other, frame by frame")
    ap.add_argument("--fused-depthwise", type=parse_kernel_sizes, default=None, metavar="SIZES",
                    help="kernel sizes of the depthwise convolutions that run as fused shifted sums when compiled "
                         "on CUDA (DepthwiseConv2d.fused_kernel_sizes of this checkout's contender; with "
                         "--compare-with the other keeps its own): '3,5' (the default), '3' (the propagation's "
                         "5x5s on PyTorch's kernel), 'none'")
    ap.add_argument("--inductor", action="append", default=[], type=parse_setting, metavar="KEY=VALUE",
                    help="torch._inductor.config.KEY (an int, float, true / false or a string) while this "
                         "checkout's contender compiles, e.g. realize_reads_threshold=1 (with --compare-with "
                         "the other compiles with the defaults: --compare-with . times a setting against them "
                         "in one process); repeatable")
    return ap


def parse_kernel_sizes(text: str) -> frozenset[int]:
    if text.strip().lower() == "none":
        return frozenset()
    try:
        return frozenset(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"kernel sizes must be like '3,5' or 'none', got {text!r}") from None


def parse_setting(text: str) -> tuple[str, object]:
    """'KEY=VALUE' -> (KEY, VALUE as an int, a float, a bool or the string)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if raw.lower() in ("true", "false"):
        return key, raw.lower() == "true"
    for kind in (int, float):
        try:
            return key, kind(raw)
        except ValueError:
            pass
    return key, raw


def apply_compiler_settings(args, contenders: list["Contender"]) -> list["Contender"]:
    """``--inductor`` and ``--fused-depthwise`` for the contenders they concern: the last one (this checkout),
    so that ``--compare-with`` a checkout of the same code times the settings against the defaults in one
    process; without it, the one contender. The depthwise form is set on that contender's own package; the
    inductor settings are patched in around its session's calls (``Contender.compiler_settings``), never
    process-wide.
    Returns the contenders the settings went to."""
    if not (args.inductor or args.fused_depthwise is not None):
        return []
    if args.inductor:
        import torch._inductor.config as inductor_config

        for key, value in args.inductor:
            if not hasattr(inductor_config, key):
                raise SystemExit(f"--inductor {key}={value}: torch._inductor.config has no setting {key!r}")
    targets = contenders[-1:]
    for c in targets:
        c.inductor = dict(args.inductor)
        if args.fused_depthwise is not None:
            layers = importlib.import_module(f"{c.package}.model.layers")
            if hasattr(getattr(layers, "DepthwiseConv2d", None), "fused_kernel_sizes"):
                layers.DepthwiseConv2d.fused_kernel_sizes = args.fused_depthwise
    return targets


# ---------------------------------------------------------------------------------------------------- packages
class Contender:
    """One ``mavos`` package under test: this checkout's, or another checkout's loaded as ``mavos_<label>``."""

    def __init__(self, label: str, package: str, compile: bool | None = None):
        self.label, self.package, self.compile = label, package, compile
        self.inductor: dict = {}  # inductor config while its session runs (--inductor, apply_compiler_settings)
        self.registry = importlib.import_module(f"{package}.registry")
        self.session_module = importlib.import_module(f"{package}.inference.session")

    def compiler_settings(self):
        """A context with inductor's config patched by this contender's settings: entered around each of its
        session's calls (where its step compiles, lazily) and outside the timing, so that the patch costs the
        timed frame nothing while another contender compiles with the defaults."""
        if not self.inductor:
            return contextlib.nullcontext()
        import torch._inductor.config as inductor_config

        return inductor_config.patch(self.inductor)

    @classmethod
    def from_checkout(cls, checkout: Path, label: str = "old") -> "Contender":
        """Copy ``checkout``'s mavos/ and conf/ into a temporary folder as package ``mavos_<label>``, with every
        reference to ``mavos`` (imports, config ``_target_``s) renamed, so both packages load in one process."""
        if not (checkout / "mavos" / "__init__.py").is_file() or not (checkout / "conf").is_dir():
            raise SystemExit(f"--compare-with {checkout}: not a mavos checkout (needs mavos/ and conf/)")
        name = f"mavos_{label}"
        base = Path(tempfile.mkdtemp(prefix="mavos_compare_"))
        shutil.copytree(checkout / "mavos", base / name, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(checkout / "conf", base / "conf")
        pattern = re.compile(r"\bmavos(?=\.[a-z_]|\s+import\b|$)", re.M)
        for path in [*(base / name).rglob("*.py"), *(base / "conf").rglob("*.yaml")]:
            text = path.read_text()
            path.write_text(pattern.sub(name, text))
        sys.path.insert(0, str(base))
        return cls(label, name)

    def build_network(self, model: str, overrides: list[str]):
        return self.registry.build_network(model, overrides)

    def session(self, net, args, device, gap, compile: bool):
        cls = self.session_module.InferenceSession
        kwargs = {"long_term_gap": gap, "device": device}
        if args.precision in ("bf16", "fp16"):
            kwargs["amp"] = args.precision
        if compile and not hasattr(cls, "tensor_frames"):
            # a checkout from before session.compile (ed3143d, the README's "before"): it runs eagerly, beside
            # the compiled step of this one
            print(f"{self.label}: this checkout's InferenceSession has no compile option; it runs eagerly",
                  flush=True)
            self.compile = False
        elif compile:
            kwargs["compile"] = True
        return cls(net, **kwargs)

    @property
    def accepts_tensors(self) -> bool:
        return getattr(self.session_module.InferenceSession, "tensor_frames", False)


# ---------------------------------------------------------------------------------------------------- measuring
def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_matmul_dtype(device, dtype):
    """The dtype the run's matmuls compute in, for the peak they are measured against: the run's own on a GPU,
    and on a CPU with native bf16 / fp16 arithmetic (AMX, AVX512-BF16 / -FP16: autocast's matmuls run there);
    float32 on a CPU without it (autocast's half-precision matmuls are emulated there, at no meaningful peak)."""
    import torch

    from mavos.inference.session import cpu_computes_natively

    if device.type == "cuda" or dtype == torch.float32:
        return dtype
    return dtype if cpu_computes_natively(dtype) else torch.float32


def matmul_peak(device, dtype, seconds: float = 1.0) -> float:
    """Best FLOP/s of square matmuls in ``dtype`` on ``device`` (the machine's practical peak)."""
    import torch

    n = 4096 if device.type == "cuda" else 1536
    reps = 4 if device.type == "cuda" else 1
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    torch.mm(a, b)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        sync(device)
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t0))
    return best


def page_faults() -> int | None:
    """This process's minor page faults so far (the kernel mapping in and zeroing a page on first touch), where
    the OS counts them: per CPU frame, the cost of memory the allocator handed back to the kernel and takes again
    (mavos/inference/host_memory.py)."""
    try:
        import resource
    except ImportError:  # not Unix
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def current_memory_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2 ** 20
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:
        return float("nan")


def video(args, device, contender: Contender, count: int = 8):
    """A few distinct random frames (cycled: content does not change the speed) and a first mask."""
    import numpy as np
    import torch

    h, w = args.size
    if not args.resize:
        multiple = (16, 0) if "swin" in args.model else (16, 1)
        h, w = contender.session_module.inference_size(h, w, max_long_edge=None, multiple=multiple)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(count)]
    if contender.accepts_tensors:
        frames = [torch.from_numpy(f).to(device) for f in frames]
    mask = np.zeros((h, w), dtype=np.int64)
    for k in range(args.objects):
        y0 = (k * h) // (args.objects + 1)
        mask[y0 + h // 8: y0 + h // 8 + h // (args.objects + 2), w // 4: 3 * w // 4] = k + 1
    return frames, mask, (h, w)


def count_flops(contender, net, args, device, gap, frames, mask) -> tuple[float, float]:
    """FLOPs of one regular frame and one memory-write frame after the memory is full (separate session)."""
    from torch.utils.flop_counter import FlopCounterMode

    session = contender.session(net, args, device, gap, compile=False)
    session.add_objects(frames[0], mask)
    regular = write = None
    for t in range(1, 2 * gap + 2):
        is_write = t % gap == 0
        if (is_write and t >= 2 * gap and write is None) or (not is_write and t > gap and regular is None):
            with FlopCounterMode(display=False) as counter:
                session.step(frames[t % len(frames)])
            if is_write:
                write = counter.get_total_flops()
            else:
                regular = counter.get_total_flops()
        else:
            session.step(frames[t % len(frames)])
    return float(regular or 0), float(write if write is not None else regular or 0)


def count_final_flops(run: dict, gap: int) -> tuple[int, float]:
    """A growing memory's FLOPs grow with the video: the index and FLOPs of one more regular frame of the run's
    own session, after its timed frames."""
    from torch.utils.flop_counter import FlopCounterMode

    session, frames = run["session"], run["frames"]
    t = session.frame_index + 1
    if t % gap == 0:
        session.step(frames[t % len(frames)])
        t += 1
    with FlopCounterMode(display=False) as counter:
        session.step(frames[t % len(frames)])
    return t, float(counter.get_total_flops())


def run_benchmark(args, contenders: list[Contender]) -> tuple[list[dict], dict, float]:
    """All contenders over the same frames, one frame each in turn: a summary dict per contender, and the last
    contender's run (its session, frames and gap) with the matmul peak, for a profile afterwards."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        from mavos.inference.session import set_tf32  # process-wide: applies to every contender

        set_tf32(args.precision == "tf32")
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
    tuned = apply_compiler_settings(args, contenders)
    if tuned:
        fused = ("default" if args.fused_depthwise is None
                 else ",".join(map(str, sorted(args.fused_depthwise))) or "none")
        print(f"compiler settings of {', '.join(c.label for c in tuned)}: fused depthwise kernel sizes {fused}; "
              f"inductor {', '.join(f'{k}={v}' for k, v in args.inductor) or 'defaults'}", flush=True)
    overrides = [f"memory={args.memory}"] if args.memory else []
    runs = []
    for c in contenders:
        torch.manual_seed(0)
        net = c.build_network(args.model, overrides).to(device).eval()
        gap = args.gap or net.memory.test_gap
        frames, mask, size = video(args, device, c)
        runs.append({"contender": c, "net": net, "gap": gap, "frames": frames, "mask": mask, "size": size,
                     "rows": []})
    gap = runs[0]["gap"]
    compiled = args.compile or args.compare_compile
    warmup = args.warmup if args.warmup is not None else (5 if compiled else 3) * gap + 5
    dtype = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    peak_dtype = peak_matmul_dtype(device, dtype[args.precision])
    peak_before = matmul_peak(device, peak_dtype)
    total = warmup + args.frames
    with torch.inference_mode():
        for r in runs:
            r["flops"] = (0.0, 0.0) if args.no_flops else count_flops(r["contender"], r["net"], args, device, gap,
                                                                      r["frames"], r["mask"])
            compile = args.compile if r["contender"].compile is None else r["contender"].compile
            r["session"] = r["contender"].session(r["net"], args, device, gap, compile)
            with r["contender"].compiler_settings():
                r["session"].add_objects(r["frames"][0], r["mask"])
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        loop_start = time.perf_counter()
        for t in range(1, total + 1):
            if args.max_seconds is not None and time.perf_counter() - loop_start > args.max_seconds:
                print(f"--max-seconds {args.max_seconds:g}: stopped after frame {t - 1} of {total}", flush=True)
                break
            order = runs if t % 2 else runs[::-1]
            outputs = {}
            for r in order:
                frame = r["frames"][t % len(r["frames"])]
                faults = None  # counted on the CPU
                with r["contender"].compiler_settings():
                    if device.type == "cuda":
                        start.record()
                        outputs[id(r)] = r["session"].step(frame)
                        end.record()
                        end.synchronize()
                        ms = start.elapsed_time(end)
                    else:
                        faults = page_faults()
                        t0 = time.perf_counter()
                        outputs[id(r)] = r["session"].step(frame)
                        ms = (time.perf_counter() - t0) * 1000
                        faults = page_faults() - faults if faults is not None else None
                r["rows"].append({"frame": t, "ms": round(ms, 3), "memory_write": int(t % gap == 0),
                                  "timed": int(t > warmup), "mb": round(current_memory_mb(device), 1),
                                  "page_faults": faults})
            for r in runs[1:]:  # outside the timed region: do the contenders compute the same thing?
                r["rows"][-1].update(agreement(outputs[id(runs[0])], outputs[id(r)]))
        # a growing memory's FLOPs are counted again at the end; whether it grows is this checkout's answer (the
        # last contender: an older checkout's memory may not say), for the same --memory in every contender
        if not args.no_flops and runs[-1]["net"].memory.fixed_slots is None:
            for r in runs:
                r["flops_end"] = count_final_flops(r, gap)
    peak = max(peak_before, matmul_peak(device, peak_dtype))
    return [summarise(r, args, device, gap, warmup, peak) for r in runs], runs[-1], peak


def agreement(reference, other) -> dict:
    """How far ``other``'s per-frame probabilities are from ``reference``'s: the largest difference and the
    fraction of pixels whose label (argmax) differs. Either may be a tensor or an array (an old checkout)."""
    import torch

    a = torch.as_tensor(reference).float()
    b = torch.as_tensor(other).float().to(a.device)
    if a.shape != b.shape:
        raise SystemExit(f"contenders disagree on the output shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return {"max_prob_diff": float((a - b).abs().max()),
            "label_diff": float((a.argmax(0) != b.argmax(0)).float().mean())}


# each part of a frame: the network's methods or modules timed under its name (the memory write: the step's)
PARTS = {"encoder": [("net", "encode")], "propagation": [("module", "propagator")],
         "decoder": [("module", "decoder")], "identity": [("net", "identity"), ("net", "fuse_identity")],
         "memory write": [("step", "write")]}


# the ops whose FLOPs torch.profiler counts (with_flops) and that hold a step's arithmetic: their rate says how
# close each matmul / convolution comes to the machine's peak
RATED_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::conv2d")


def profile(run: dict, frames: int, gap: int, peak: float) -> tuple[str, list[dict]]:
    """Profile ``frames`` more frames of a run's session (at least one memory write among them): milliseconds
    per frame in each part of the step, the rest of the session (resizing, aggregation, argmax), the top ops,
    and the heaviest matmuls and convolutions by input shapes with their achieved FLOP/s against ``peak``.
    Returns the text and those matmul / convolution rows."""
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile, record_function

    session, net = run["session"], run["net"]
    step = session.step_functions
    hooks, wrapped_methods = [], []

    def label(name):
        def pre(*_):
            context = record_function(name)
            context.__enter__()
            stack.append(context)

        def post(*_):
            stack.pop().__exit__(None, None, None)
        return pre, post

    stack: list = []
    # compiled, the parts run inside one compiled function: only the frame and the kernels are timed
    compiled = getattr(step, "disabled", "eager") is None  # a CompiledFrameStep that has not fallen back
    for part, places in ({} if compiled else PARTS).items():
        pre, post = label(part)
        for owner, attr in places:
            if owner == "module":
                module = getattr(net, attr)
                hooks += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
                continue
            target = net if owner == "net" else step
            original = getattr(target, attr)

            def wrapped(*a, _f=original, _pre=pre, _post=post, **k):
                _pre()
                try:
                    return _f(*a, **k)
                finally:
                    _post()
            setattr(target, attr, wrapped)
            wrapped_methods.append((target, attr))
    start = session.frame_index + 1
    try:
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        with torch.inference_mode(), run["contender"].compiler_settings(), \
                torch_profile(activities=activities, record_shapes=True, with_flops=True) as prof:
            wall = time.perf_counter()
            for t in range(start, start + frames):
                with record_function("frame"):
                    session.step(run["frames"][t % len(run["frames"])])
            sync(session.device)
            wall = time.perf_counter() - wall
    finally:
        for h in hooks:
            h.remove()
        for target, attr in wrapped_methods:
            delattr(target, attr)  # the instance attribute goes; the class's method shows through again
    events = {e.key: e for e in prof.key_averages()}
    # on a GPU the kernels' time (the host only launches them); on a CPU the host's time
    on_gpu = session.device.type == "cuda" and getattr(events["frame"], "device_time_total", 0) > 0
    total_time = lambda e: getattr(e, "device_time_total", 0) if on_gpu else e.cpu_time_total  # noqa: E731
    self_time = lambda e: getattr(e, "self_device_time_total", 0) if on_gpu else e.self_cpu_time_total  # noqa: E731
    per_frame = lambda e: total_time(e) / 1000 / frames  # noqa: E731
    total = per_frame(events["frame"])
    writes = sum(1 for t in range(start, start + frames) if t % gap == 0)
    lines = [f"profile: {frames} frames ({writes} memory writes), {1000 * wall / frames:.1f} ms/frame under the "
             f"profiler" + (f", of which {total:.2f} ms in kernels (the rest: the GPU waits for the host)"
                            if on_gpu else "")]
    if compiled:
        regions, outside = host_work(prof)
        lines.append(f"  compiled calls per frame: {regions / frames:.1f}; torch ops outside them per frame: "
                     f"{outside / frames:.1f} (views included; on a GPU each one that computes is a launch of its "
                     f"own; the parts of the step run inside the compiled calls and are not timed apart)")
    else:
        accounted = 0.0
        for part in PARTS:
            ms = per_frame(events[part]) if part in events else 0.0
            accounted += ms
            lines.append(f"  {part:<16}{ms:8.1f} ms  {100 * ms / total:5.1f}%")
        rest = total - accounted
        lines.append(f"  {'rest of session':<16}{rest:8.1f} ms  {100 * rest / total:5.1f}%")
    lines.append("  top ops by self time:")
    ops = sorted((e for e in prof.key_averages() if e.key not in PARTS and e.key != "frame"),
                 key=lambda e: -self_time(e))[:24 if on_gpu else 12]
    digits = 3 if on_gpu else 1  # a GPU kernel takes microseconds
    for e in ops:
        ms = self_time(e) / 1000 / frames
        name = e.key if len(e.key) <= 100 else e.key[:97] + "..."  # C++ template kernels' names run to pages
        lines.append(f"    {name:<40}{ms:8.{digits}f} ms  {100 * ms / total:5.1f}%  "
                     f"({e.count / frames:.1f} calls/frame)")
    rated = []
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key in RATED_OPS and e.flops and total_time(e) > 0:
            rated.append({"op": e.key[6:], "shapes": [list(s) for s in e.input_shapes[:3] if s],
                          "ms_per_frame": total_time(e) / 1000 / frames, "calls_per_frame": e.count / frames,
                          "gflop_per_call": e.flops / e.count / 1e9, "gflops": e.flops / (total_time(e) / 1e6) / 1e9})
    rated.sort(key=lambda r: -r["ms_per_frame"])
    for r in rated:
        r["fraction_of_peak"] = r["gflops"] * 1e9 / peak
    lines.append(f"  heaviest matmuls / convolutions by input shapes (achieved rate, share of the {peak / 1e9:.0f} "
                 f"GFLOP/s matmul peak):")
    for r in rated[:12]:
        shapes = " x ".join("[" + ",".join(map(str, s)) + "]" for s in r["shapes"])
        lines.append(f"    {r['ms_per_frame']:7.1f} ms {r['calls_per_frame']:4.0f}x  {r['op']:<8}{shapes:<44}"
                     f"{r['gflops']:7.0f} GFLOP/s {100 * r['fraction_of_peak']:4.0f}%")
    matmul_ms = sum(r["ms_per_frame"] for r in rated)
    if not rated:  # compiled on a GPU: inductor's graphs call the GEMM kernels directly, with no aten op to rate
        lines.append("    none seen as torch ops (inside compiled graphs: their kernels are among the top ops "
                     "above)")
        return "\n".join(lines), rated
    lines.append(f"  matmuls / convolutions: {matmul_ms:.1f} ms ({100 * matmul_ms / total:.0f}% of the frame) at "
                 f"{sum(r['gflops'] * r['ms_per_frame'] for r in rated) / max(matmul_ms, 1e-9):.0f} GFLOP/s; the "
                 f"rest: {total - matmul_ms:.1f} ms")
    return "\n".join(lines), rated


def host_work(prof) -> tuple[int, int]:
    """Compiled calls, and outermost torch ops run outside them (not counting the ops a torch op calls), in a
    profile of a compiled session."""
    def compiled_region(event) -> bool:
        return event.name.startswith("Torch-Compiled Region")

    regions = outside = 0
    for event in prof.events():
        if compiled_region(event):
            regions += 1
            continue
        if not event.name.startswith("aten::"):
            continue
        parent, nested = event.cpu_parent, False
        while parent is not None and not nested:
            nested = compiled_region(parent) or parent.name.startswith("aten::")
            parent = parent.cpu_parent
        outside += not nested
    return regions, outside


def summarise(run: dict, args, device, gap: int, warmup: int, peak: float) -> dict:
    import torch

    from mavos.evaluation import evaluator
    from mavos.inference import denormals, host_memory

    rows = run["rows"]
    timed = [r for r in rows if r["timed"]]
    if not timed:
        raise SystemExit(f"no timed frames: all {len(rows)} frames run were warm-up (--max-seconds too short?)")
    regular = [r["ms"] for r in timed if not r["memory_write"]]
    faults = [r["page_faults"] for r in timed if not r["memory_write"] and r["page_faults"] is not None]
    writes = [r["ms"] for r in timed if r["memory_write"]]
    all_ms = [r["ms"] for r in timed]
    tenth = max(1, len(timed) // 10)
    mean_ms = statistics.fmean(all_ms)
    flops = run["flops"]
    mean_flops = (flops[0] * len(regular) + flops[1] * len(writes)) / max(1, len(timed))
    end_frame, end_flops = run.get("flops_end", (None, flops[0]))
    if end_frame is not None:  # a growing memory: FLOPs grow linearly from frame gap + 1 (counted) to the end
        slope = (end_flops - flops[0]) / (end_frame - (gap + 1))
        mean_flops += slope * (statistics.fmean(r["frame"] for r in timed) - (gap + 1))
    achieved = mean_flops / (mean_ms / 1000)
    size = run["size"]
    return {
        "label": run["contender"].label, "model": args.model, "memory": type(run["net"].memory).__name__,
        "size": f"{size[0]}x{size[1]}", "device": str(device), "device_name": device_name(device),
        "threads": torch.get_num_threads(), "precision": args.precision, "gap": gap,
        "compile": bool(args.compile if run["contender"].compile is None else run["contender"].compile),
        "objects": args.objects, "frames": len(timed), "warmup": warmup,
        "median_ms": statistics.median(regular) if regular else float("nan"), "p90_ms": quantile(regular, 0.9),
        "write_median_ms": statistics.median(writes) if writes else float("nan"), "fps": 1000.0 / mean_ms,
        "first_tenth_ms": statistics.fmean(all_ms[:tenth]), "last_tenth_ms": statistics.fmean(all_ms[-tenth:]),
        "first_tenth_mb": statistics.fmean(r["mb"] for r in timed[:tenth]),
        "last_tenth_mb": statistics.fmean(r["mb"] for r in timed[-tenth:]),
        "peak_mb": evaluator.peak_memory_mb(device), "gflop_regular": flops[0] / 1e9, "gflop_write": flops[1] / 1e9,
        "flops_counted": not args.no_flops, "gflop_end": end_flops / 1e9,  # a regular frame after the timed ones (grows with a growing memory)
        "achieved_gflops": achieved / 1e9, "peak_gflops": peak / 1e9, "fraction_of_peak": achieved / peak,
        "torch": torch.__version__, "rows": rows,
        # glibc keeping freed memory for reuse (a CPU session sets it process-wide: mavos/inference/host_memory.py)
        "host_memory": host_memory.outcome(),
        # denormal floats flushed on the thread that ran the frames and its OpenMP team (a CPU session does it:
        # mavos/inference/denormals.py; a contender from an older checkout runs on the same, flushed, thread)
        "denormals": denormals.outcome() if device.type == "cpu" else None,
        "page_faults_regular": statistics.median(faults) if faults else None,
        # why a compiled run ran eagerly after all (a compiler failure falls back with a warning, not an error)
        "fell_back": (getattr(run["session"].step_functions, "disabled", None)
                      if getattr(run["session"], "compile", False) else None),  # older checkouts: no compile
        # against the first contender (--compare-with / --compare-compile), over every frame after the first
        "max_prob_diff": max((r["max_prob_diff"] for r in rows if "max_prob_diff" in r), default=None),
        "label_diff": (statistics.fmean(r["label_diff"] for r in rows if "label_diff" in r)
                       if any("label_diff" in r for r in rows) else None),
    }


def host_memory_note(outcome: str | None) -> str:
    if outcome is None:
        return ""
    return ", freed host memory " + ("kept for reuse" if outcome == "kept" else f"returned ({outcome})")


def denormals_note(outcome: str | None) -> str:
    if outcome is None:
        return ""
    return ", denormals flushed to zero" if outcome == "flushed" else f", denormals {outcome}"


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
    """The output files' stem: every setting that changes what is timed, so that runs that differ in one (the
    compiler settings too) do not overwrite each other's curves; letters, digits, '.', '_' and '-' only."""
    if args.tag:
        return args.tag
    h, w = args.size
    settings = []
    if args.fused_depthwise is not None:
        settings.append("dw-" + ("-".join(map(str, sorted(args.fused_depthwise))) or "none"))
    settings += [f"{key}-{value}" for key, value in args.inductor]
    stem = (f"{args.model}_{args.memory or 'default'}_{h}x{w}_{args.precision}"
            f"{'_compiled' if args.compile else ''}_{args.device or 'auto'}"
            f"{'_compared' if args.compare_with else ''}{'_eager_vs_compiled' if args.compare_compile else ''}"
            + "".join(f"_{s}" for s in settings))
    return re.sub(r"[^A-Za-z0-9._-]", "-", stem)


def save(results: list[dict], out: Path, tag: str) -> tuple[Path, Path | None]:
    out.mkdir(parents=True, exist_ok=True)
    from mavos.data.io import atomic_save

    csv_path = out / f"{tag}.csv"

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["contender", "frame", "ms", "memory_write", "timed", "mb", "max_prob_diff",
                             "page_faults"])
            for r in results:
                for row in r["rows"]:
                    faults = row.get("page_faults")
                    writer.writerow([r["label"], row["frame"], row["ms"], row["memory_write"], row["timed"],
                                     row["mb"], row.get("max_prob_diff", ""), "" if faults is None else faults])
    atomic_save(write_csv, csv_path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return csv_path, None
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for r in results:
        frames = [row["frame"] for row in r["rows"]]
        ax.plot(frames, [row["ms"] for row in r["rows"]], lw=0.7, label=r["label"])
        ax2.plot(frames, [row["mb"] for row in r["rows"]], lw=0.7, label=r["label"])
    ax.set_ylabel("ms / frame")
    ax2.set_ylabel("MB (CUDA allocated / RSS)")
    ax2.set_xlabel("frame")
    ax.legend()
    r = results[-1]
    ax.set_title(f"{r['model']} {r['memory']} {r['size']} {r['precision']}{' compiled' if r['compile'] else ''} "
                 f"on {r['device_name']}")
    fig.tight_layout()
    png = out / f"{tag}.png"
    atomic_save(lambda tmp: fig.savefig(tmp, dpi=100), png)
    plt.close(fig)
    return csv_path, png


def summary_line(r: dict) -> str:
    """One run's numbers (ms to two decimals: a GPU frame takes a few)."""
    flops = (f"{r['gflop_regular']:.1f}/{r['gflop_write']:.1f} GFLOP"
             f"{'' if r['gflop_end'] == r['gflop_regular'] else ' (%.1f at the end)' % r['gflop_end']}  "
             f"{r['achieved_gflops']:.0f} GFLOP/s = {100 * r['fraction_of_peak']:.0f}% of {r['peak_gflops']:.0f}"
             if r["flops_counted"] else "FLOPs not counted (--no-flops)")
    return (f"median {r['median_ms']:.2f} ms  p90 {r['p90_ms']:.2f}  write {r['write_median_ms']:.2f}  "
            f"{r['fps']:.2f} FPS  first/last 10% {r['first_tenth_ms']:.2f}/{r['last_tenth_ms']:.2f} ms  "
            f"peak {r['peak_mb']:.0f} MB  {flops}"
            + (f"  {r['page_faults_regular']:.0f} page faults a regular frame"
               if r.get("page_faults_regular") is not None else "")
            + (f"  NOT COMPILED: fell back to eager ({r['fell_back']})" if r.get("fell_back") else ""))


def main(argv: list[str] | None = None) -> list[dict]:
    """Run, save and print; returns the summaries (with the per-frame rows and any profile's rated ops)."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.compare_compile:
        contenders = [Contender("eager", "mavos", compile=False), Contender("compiled", "mavos", compile=True)]
    else:
        contenders = [Contender("new" if args.compare_with else "mavos", "mavos")]
    if args.compare_with is not None:
        contenders.insert(0, Contender.from_checkout(args.compare_with.resolve(), "old"))
    results, last_run, peak = run_benchmark(args, contenders)
    csv_path, png = save(results, args.out, tag_of(args))
    r = results[-1]
    print(f"{r['model']} ({r['memory']}) {r['size']} {r['precision']}{' compiled' if r['compile'] else ''} on "
          f"{r['device_name']}, {r['threads']} threads, gap {r['gap']}, {r['frames']} timed frames after "
          f"{r['warmup']}, torch {r['torch']}" + host_memory_note(r["host_memory"]) + denormals_note(r["denormals"]))
    for res in results:
        print(f"{res['label']:>5}: {summary_line(res)}")
    for other in results[1:]:
        first = results[0]
        print(f"{other['label']} / {first['label']}: {other['median_ms'] / first['median_ms']:.3f} (median regular "
              f"frame), {other['write_median_ms'] / first['write_median_ms']:.3f} (median memory-write frame); "
              f"outputs: max probability difference {other['max_prob_diff']:.2e}, labels differ on "
              f"{100 * other['label_diff']:.4f}% of pixels")
    print(f"csv: {csv_path}" + (f"  plot: {png}" if png else ""))
    if args.json:
        print(json.dumps([{k: v for k, v in res.items() if k != "rows"} for res in results]))
    sys.stdout.flush()  # the timings are out before the profile starts: a run killed during it keeps them
    if args.profile:
        text, results[-1]["profile_ops"] = profile(last_run, args.profile, last_run["gap"], peak)
        print(f"{results[-1]['label']} {text}")
    return results


if __name__ == "__main__":
    main()
