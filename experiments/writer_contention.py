"""Why evaluation writes and scores frames in a process: the model loop's speed beside a busy writer.

    python experiments/writer_contention.py                      # both parts, CPU
    python experiments/writer_contention.py --part loop --ops 300 --size 480x854

Part ``loop``: the main thread runs "frames" of ``--ops`` tiny torch ops (what launching a GPU step is: each
call gives up and takes back the GIL) alone, then beside a writer that finishes frames of ``--size`` without
pause (``finish_frame``: a palette PNG, J and F of two objects) in a thread of the same process, then in
evaluation's writer process. Part ``evaluation``: ``segment_video`` over the embedded benchmark's first val
video at a small size (``--short-edge``, one torch thread: a host-bound step), its writer a thread or the
process, alternating; model ms per frame. Prints ms per frame for each setting; nothing is asserted.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def sample_job(size: tuple[int, int], folder: str, k: int):
    from mavos.evaluation.finishing import FrameJob
    from mavos.data.io import write_mask

    h, w = size
    pred = np.zeros((h, w), np.uint8)
    pred[h // 4: 3 * h // 4, w // 4: 2 * w // 3] = 1
    pred[h // 3: h // 2, 2 * w // 3: 5 * w // 6] = 2
    truth = Path(folder) / "truth.png"
    if not truth.exists():
        gt = np.roll(pred, (3, 5), axis=(0, 1))
        write_mask(truth, gt)
    return FrameJob(k, pred, png=str(Path(folder) / f"{k % 20}.png"), truth=str(truth), entries=((1, 0), (2, 0)),
                    video="sample")


def loop_part(args) -> None:
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="writer_contention_") as folder:
        loop_measurements(args, folder, torch.zeros(4))


def loop_measurements(args, folder: str, t) -> None:
    from mavos.evaluation.finishing import finish_frame, writer_pool

    def frames_ms(n: int) -> float:
        times = []
        for _ in range(n):
            start = time.perf_counter()
            for _ in range(args.ops):
                t.add_(1)
            times.append(time.perf_counter() - start)
        return 1e3 * statistics.median(times)

    start = time.perf_counter()
    for k in range(20):
        finish_frame(sample_job(args.size, folder, k))
    print(f"finish_frame at {args.size[0]}x{args.size[1]} (PNG + 2 objects scored): "
          f"{1e3 * (time.perf_counter() - start) / 20:.2f} ms a frame in the calling thread")
    print(f"a loop frame of {args.ops} tiny torch ops, alone: {frames_ms(args.frames):.2f} ms (median)")
    for name, pool in (("a writer thread", ThreadPoolExecutor(max_workers=1)), ("the writer process", writer_pool())):
        stop, busy = threading.Event(), threading.Event()
        pool.submit(finish_frame, sample_job(args.size, folder, 0)).result()  # a process pool starts its worker

        def feed() -> None:
            k = 1
            while not stop.is_set():
                pool.submit(finish_frame, sample_job(args.size, folder, k)).result()
                busy.set()
                k += 1
        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        busy.wait()  # the writer has finished a frame beside us: it is running, not starting
        ms = frames_ms(args.frames)
        stop.set()
        feeder.join()
        print(f"  beside {name} finishing frames without pause: {ms:.2f} ms")


def evaluation_part(args) -> None:
    import torch

    import mavos.evaluation.evaluator as evaluator
    from mavos.data.davis import DavisReader
    from mavos.data.synthetic import ensure_synthetic_davis
    from mavos.registry import build_network

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = build_network(args.model).eval()
    root = ensure_synthetic_davis(ROOT / "data" / "synthetic_davis")
    record = DavisReader(root, split="val").videos()[0]
    process_pool = evaluator.writer_pool
    process_pool().submit(int, 0).result()  # its worker starts here, not inside the first "process" run
    thread_pool = ThreadPoolExecutor(max_workers=1)
    results: dict[str, list[float]] = {"thread": [], "process": []}
    for rep in range(args.repeats):
        for name in (("thread", "process") if rep % 2 == 0 else ("process", "thread")):
            evaluator.writer_pool = (lambda: thread_pool) if name == "thread" else process_pool
            with tempfile.TemporaryDirectory() as out:
                r = evaluator.segment_video(net, record, protocol="davis", results_dir=out, progress=False,
                                            session_kwargs={"max_short_edge": args.short_edge})
            results[name].append(1e3 * r.model_seconds / (r.frames - 1))
    evaluator.writer_pool = process_pool
    print(f"segment_video '{record.name}' ({len(record)} frames) at short edge {args.short_edge}, 1 torch thread, "
          f"{args.repeats} runs each, model ms a frame:")
    for name, values in results.items():
        print(f"  writer {name:>7}: median {statistics.median(values):.1f}  (runs: "
              f"{', '.join(f'{v:.1f}' for v in values)})")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["loop", "evaluation", "both"], default="both")
    ap.add_argument("--ops", type=int, default=300, help="tiny torch ops per loop frame")
    ap.add_argument("--frames", type=int, default=200, help="loop frames per setting")
    ap.add_argument("--size", type=lambda s: tuple(int(v) for v in s.lower().split("x")), default=(240, 432),
                    help="HxW of the frames the writer finishes")
    ap.add_argument("--model", default="mavos_mbv2")
    ap.add_argument("--short-edge", type=int, default=65, help="evaluation's session.max_short_edge")
    ap.add_argument("--repeats", type=int, default=4)
    args = ap.parse_args(argv)
    if args.part in ("loop", "both"):
        loop_part(args)
    if args.part in ("evaluation", "both"):
        evaluation_part(args)


if __name__ == "__main__":
    main()
