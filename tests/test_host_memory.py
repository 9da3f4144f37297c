"""A CPU session keeps freed memory for reuse: a large tensor freed is not handed back to the kernel (the process's
resident memory, read from /proc, stays), so the next frame's tensor of that size reuses its pages instead of
having them mapped and zeroed again; unless the user tuned the allocator, which is then left alone."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from mavos.inference.host_memory import USER_SETTINGS, users_own_allocator
from tests.conftest import ROOT, run_env

# a fresh interpreter each: the setting is process-wide and sticks, and this test process has sessions of its own
PROBE = textwrap.dedent("""
    import os, sys
    import torch
    from mavos.inference import host_memory
    from mavos.inference.session import InferenceSession
    from mavos.registry import build_network

    if sys.argv[1] == "session":
        InferenceSession(build_network("mavos_mbv2"), device="cpu")

    def resident_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20

    x = torch.empty(16 << 20).fill_(1.0)  # 64 MB, every page touched
    held = resident_mb()
    del x
    print(host_memory.outcome(), held - resident_mb())
""")

linux_glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")


def probe(mode: str, **settings: str) -> tuple[str, float]:
    env = run_env()
    for name in (*USER_SETTINGS, "GLIBC_TUNABLES", "LD_PRELOAD"):  # this machine's own choices, if any, aside
        env.pop(name, None)
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, env={**env, **settings},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    outcome, returned = out.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    return outcome, float(returned)


@linux_glibc
def test_a_cpu_session_keeps_freed_memory_and_the_default_allocator_returns_it():
    outcome, returned_mb = probe("session")
    assert outcome == "kept" and returned_mb < 4  # the 64 MB stayed in the heap for the next frame
    outcome, returned_mb = probe("none")
    assert outcome == "None" and returned_mb > 60  # glibc's default: unmapped on free, page-faulted in next time


@linux_glibc
def test_the_users_own_allocator_setting_is_left_alone():
    outcome, returned_mb = probe("session", MALLOC_TRIM_THRESHOLD_="131072")
    assert outcome == "MALLOC_TRIM_THRESHOLD_ is set" and returned_mb > 60


@pytest.mark.parametrize("environ, reason", [
    ({}, None),
    ({"MALLOC_MMAP_THRESHOLD_": "1048576"}, "MALLOC_MMAP_THRESHOLD_ is set"),
    ({"GLIBC_TUNABLES": "glibc.pthread.rseq=0:glibc.malloc.trim_threshold=0"}, "GLIBC_TUNABLES sets glibc.malloc"),
    ({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}, None),
    ({"LD_PRELOAD": "libjemalloc.so.2"}, "LD_PRELOAD loads jemalloc"),
    ({"LD_PRELOAD": "libfoo.so"}, None),
])
def test_which_settings_make_the_allocator_the_users(environ, reason):
    assert users_own_allocator(environ) == reason
