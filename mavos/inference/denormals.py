"""Flush denormal floats to zero on the CPU threads that run a session: attention stays fast however sharp it is.

A softmax weight below 2^-126 (1.2e-38: a key scoring more than 87 below the best one) is a denormal float, and
x86 cores compute on denormals in microcode. Measured on a 2-core Xeon (``experiments/denormal_attention.py``):
the long-term attention's weights x values matmul (1674 x 3348 by 3348 x 1024) took 1242 ms with a fifth of its
weights denormal against 27.7 ms flushed; a 481x849 MobileNetV2 frame took 914 ms against 452 flushed (2.0x) when
the attention's queries and keys were scaled 30x and under 1% of two layers' weights were denormal. Random
weights never get there (437.5 against 434.3 ms unscaled); a trained network's scores can spread that wide.
Setting FTZ / DAZ (flush-to-zero, denormals-are-zero) changes values only below 1.2e-38, which no output of the
network can tell (TensorFlow sets them on its CPU threads by default).

The setting is a register of each thread: ``torch.set_flush_denormal`` sets it on the calling thread only, and
the OpenMP threads that run torch's (and MKL's, oneDNN's, inductor's) parallel work keep their own. So the team
of the calling thread runs one parallel region of our own (``GOMP_parallel``, which GNU and LLVM / Intel OpenMP
runtimes all export) in which each thread sets it; threads the team adds later inherit it from the calling
thread. Once per calling thread (each Python thread has its own team): a session does it on the thread that steps
it. Where the CPU cannot (``torch.set_flush_denormal`` says so) or no OpenMP runtime is loaded, nothing happens
beyond the calling thread.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import sys
import threading

import torch

log = logging.getLogger(__name__)

OPENMP_RUNTIMES = ("libgomp", "libiomp5", "libomp")
_done = threading.local()  # .outcome: what flush_denormals did on this thread


@functools.cache
def openmp_runtime():
    """The OpenMP runtime this process loaded (torch's), or None (not Linux, or none loaded); looked up once."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/" in line}
    except OSError:
        return None
    torch_dir = torch.__file__.rsplit("/", 1)[0] + "/"
    for name in OPENMP_RUNTIMES:  # torch's own copy first (a wheel bundles one: libgomp-<hash>.so.1)
        for path in sorted(paths, key=lambda p: (not p.startswith(torch_dir), p)):
            if path.rsplit("/", 1)[-1].startswith((name + ".", name + "-")):
                try:
                    lib = ctypes.CDLL(path)
                    lib.GOMP_parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
                    lib.GOMP_parallel.restype = None
                    return lib
                except (OSError, AttributeError):
                    continue
    return None


_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_ON_EACH_THREAD = {flag: _CALLBACK(lambda _, flag=flag: torch.set_flush_denormal(flag)) for flag in (True, False)}


def set_flush_on_team(enabled: bool) -> str:
    """Flush denormals (``enabled``) or compute with them, on the calling thread and its OpenMP team of
    ``torch.get_num_threads()`` threads. Returns ``"team"``, ``"this thread only"`` (no OpenMP runtime found) or
    ``"unsupported"`` (the CPU cannot flush). ``flush_denormals`` is the one to call; this also undoes it, for
    measuring what flushing is worth (``experiments/denormal_attention.py``)."""
    if not torch.set_flush_denormal(enabled) and enabled:
        return "unsupported"
    runtime = openmp_runtime()
    if runtime is None:
        return "this thread only"
    # ctypes releases the GIL for the call; each team thread takes it to run the callback
    runtime.GOMP_parallel(ctypes.cast(_ON_EACH_THREAD[enabled], ctypes.c_void_p), None,
                          max(1, torch.get_num_threads()), 0)
    return "team"


def flush_denormals() -> str:
    """Flush denormals to zero on the calling thread and its OpenMP team, once per thread (module docstring).

    Returns what happened on this thread: ``"flushed"`` (the calling thread and its team),
    ``"flushed on this thread only (no OpenMP runtime found)"`` or ``"kept (this CPU cannot flush denormals)"``."""
    outcome = getattr(_done, "outcome", None)
    if outcome is not None:
        return outcome
    outcome = {"team": "flushed", "this thread only": "flushed on this thread only (no OpenMP runtime found)",
               "unsupported": "kept (this CPU cannot flush denormals)"}[set_flush_on_team(True)]
    _done.outcome = outcome
    log.info("denormal floats on this thread's CPU work: %s", outcome)
    return outcome


def outcome() -> str | None:
    """What ``flush_denormals`` did on the calling thread, or None before its first call there."""
    return getattr(_done, "outcome", None)
