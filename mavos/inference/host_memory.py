"""Keep freed host memory for reuse: a CPU session's large temporaries would otherwise be page-faulted in anew
every frame.

glibc's malloc serves an allocation above its mmap threshold (adjusted at run time, at most 32 MB) with fresh
pages from the kernel and gives them back when it is freed, and it trims the heap's free top the same way. A
frame's step allocates the same large tensors every frame (at 481x849, MobileNetV2's 96-channel map at 241x425 is
39 MB), so each frame pays the kernel to map and zero them again: 9,603 page faults a frame at 481x849, 116,696 at
577x1041; filling a fresh 39 MB tensor took 10.8 ms on a 2-core Xeon where refilling one took 0.9.
Raising both thresholds keeps that memory in the heap, where the next frame's tensors of the same sizes reuse it:
the process holds on to its peak instead of returning memory between frames. This is what jemalloc or tcmalloc
(``LD_PRELOAD``), PyTorch's advice for CPU inference, would do; it is written here because an already started
Python process cannot swap its allocator, while glibc's own ``mallopt`` can be called at any time.

Only glibc on Linux, once per process, and never over the user's own choice: a ``MALLOC_*_`` variable,
``GLIBC_TUNABLES`` with a malloc setting or a preloaded allocator leaves the allocator alone (README, Speed).
"""
from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
THRESHOLD_BYTES = 1 << 30  # allocations up to 1 GiB come from the heap; its free top is kept up to 1 GiB
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")

_outcome: str | None = None  # what the first call did; later calls repeat it


def users_own_allocator(environ=None) -> str | None:
    """Why the allocator is the user's to tune (a sentence naming the variable), or None."""
    environ = os.environ if environ is None else environ
    for name in USER_SETTINGS:
        if name in environ:
            return f"{name} is set"
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES sets glibc.malloc"
    preload = environ.get("LD_PRELOAD", "")
    for name in OTHER_ALLOCATORS:
        if name in preload:
            return f"LD_PRELOAD loads {name}"
    return None


def outcome() -> str | None:
    """What ``keep_freed_memory`` did in this process ("kept", or why not), or None before its first call."""
    return _outcome


def keep_freed_memory() -> str:
    """Raise glibc's mmap and trim thresholds for this process (see the module docstring), once.

    Returns what happened: ``"kept"``, or why not (not glibc, the user's own allocator settings, ``mallopt``
    refused), so that callers and benchmarks can report it."""
    global _outcome
    if _outcome is not None:
        return _outcome
    reason = users_own_allocator()
    if reason is None and not sys.platform.startswith("linux"):
        reason = f"not glibc ({sys.platform})"
    libc = None
    if reason is None:
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.gnu_get_libc_version  # only glibc has it (musl's mallopt does nothing)
            libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        except (OSError, AttributeError):
            reason = "not glibc"
    if reason is None:
        done = [libc.mallopt(param, THRESHOLD_BYTES) for param in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD)]
        reason = None if all(done) else "glibc's mallopt refused the thresholds"
    _outcome = "kept" if reason is None else reason
    log.info("host memory: %s", "freed memory kept for reuse (glibc mallopt)" if reason is None
             else f"allocator left alone: {reason}")
    return _outcome
