"""Writing and scoring segmented frames in a worker process, behind the model.

``segment_video`` hands every frame's predicted ids over as a ``FrameJob``; a worker process writes the
palette PNG and scores the frame (``score_frame``) while the model goes on with the next frames.

A process, not a thread: encoding a PNG and computing J / F are mostly Python and small numpy calls that hold
the GIL, and the model's loop gives the GIL up at every torch call. Beside a busy writer thread in the same
process, each of those calls waited for it: a loop of small torch ops (what launching a GPU step is) ran 2.1x
slower on this 2-core CPU (``experiments/writer_contention.py``), and on an H100 evaluation's compiled model
time per frame was twice the speed benchmark's. The worker imports no torch (so it starts in a fraction of a
second), is started once per process (through a fork server where the platform has one) and reused by every
video, and exits when its parent is gone (a fork server then goes too). A daemonic process, which may not have
children, finishes its frames in a thread instead.

Several workers where the machine has cores to spare (``WRITERS``): one worker writes and scores a 480p frame
of three objects in 35-55 ms on this 2-core CPU (the boundary F-measure and the PNG are most of it), while a
compiled step on a GPU takes ~3 ms; frames are independent, so they are finished side by side.
"""
from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util
import os
import threading
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mavos.data.io import read_any_mask, write_mask
from mavos.metrics.frame_scores import FrameScore, score_frame
from mavos.metrics.region_boundary import DEFAULT_BOUND_TH


@dataclass(frozen=True)
class FrameJob:
    """One frame to finish, as plain data (it is pickled to the worker)."""

    index: int
    label: np.ndarray                          # (H, W) uint8 predicted object ids
    png: str | None = None                     # write the ids here as a palette PNG
    truth: str | None = None                   # score against this ground-truth file
    user_masks: bool = False                   # the ground truth is a user's mask (``read_user_mask``)
    entries: tuple[tuple[int, int], ...] = ()  # (object id, slot) pairs the frame scores
    binarize: bool = False
    bound_th: float = DEFAULT_BOUND_TH
    video: str = ""


def finish_frame(job: FrameJob) -> list[FrameScore]:
    """Write the frame's PNG (atomically) and return its scores (none when it is not scored)."""
    if job.png is not None:
        write_mask(Path(job.png), job.label)
    if job.truth is None:
        return []
    truth = read_any_mask(job.truth, job.user_masks)
    return score_frame(job.label, truth, job.entries, binarize=job.binarize, bound_th=job.bound_th,
                       index=job.index, video=job.video, source=job.truth)


def _exit_with_parent(alive) -> None:
    """In the worker: leave when the process that started the pool is gone. ``alive`` is the read end of a pipe
    whose only write end that process holds; nothing is ever sent, so ``recv`` returns (EOF) exactly when it has
    exited, however (killed, a zombie not yet reaped). Python's worker would otherwise wait on its queues for
    ever, keeping the dead process's stdout open for whoever reads it."""
    def watch() -> None:
        try:
            alive.recv()
        except (EOFError, OSError):
            pass
        os._exit(0)
    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


# Writer processes: the cores left beside the model loop and the decoding thread, at most 8 (a 2-core machine:
# 1). A 480p frame of three objects keeps one busy for ~10x a compiled GPU step (module docstring); under DDP
# every rank has its own writers.
WRITERS = max(1, min(8, usable_cpus() - 2))

_pool: Executor | None = None
_alive = None  # the write end of the worker's pipe (see _exit_with_parent)
_pool_lock = threading.Lock()


def _context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def writer_pool() -> Executor:
    """The process's writer: ``WRITERS`` worker processes, started on first use and reused by every video."""
    global _pool, _alive
    with _pool_lock:
        if _pool is None:
            if multiprocessing.current_process().daemon:
                _pool = ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="finish")
            else:
                context = _context()
                if context.get_start_method() == "forkserver":
                    context.set_forkserver_preload([__name__])
                alive, _alive = context.Pipe(duplex=False)  # the write end lives as long as this process
                _pool = ProcessPoolExecutor(max_workers=WRITERS, mp_context=context, initializer=_exit_with_parent,
                                            initargs=(alive,))
        return _pool


def reset_writer_pool() -> None:
    """Shut the writer down (at exit, or after its worker died); the next ``writer_pool()`` starts a new one."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


# At exit, before anything waits for child processes: a process started by multiprocessing (e.g. a DDP rank)
# joins its children before its atexit handlers run, and would wait for ever for the idle writer. multiprocessing
# runs finalizers with an exit priority first; an ordinary interpreter exit runs atexit.
multiprocessing.util.Finalize(None, reset_writer_pool, exitpriority=100)
atexit.register(reset_writer_pool)
