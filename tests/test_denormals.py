"""A CPU session flushes denormal floats to zero on the thread that steps it and on that thread's OpenMP team
(``mavos/inference/denormals.py``), where ``torch.set_flush_denormal`` alone reaches the calling thread only."""
from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import ROOT, run_python

# Runs in its own interpreter: the setting is a per-thread register, and this test needs threads that never had it.
SCRIPT = r"""
import json, sys, threading
import numpy as np
import torch

torch.set_num_threads(2)
from mavos.inference import denormals
from mavos.inference.session import InferenceSession
from mavos.registry import build_network


def survivors():
    # 2^20 copies of 2^-129 (a denormal) times 1.5, spread over the thread pool: a thread that flushes gives 0.
    # Made and read as bits: converting 1e-39 or comparing on a flushing thread would take it for 0 there
    x = torch.full((1 << 20,), 1 << 20, dtype=torch.int32).view(torch.float32)
    return int(((x * 1.5).view(torch.int32) != 0).sum())


def step_a_session():
    torch.manual_seed(0)
    net = build_network("mavos_mbv2").eval()
    frame = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    mask = np.zeros((40, 56), np.uint8)
    mask[10:30, 10:30] = 1
    session = InferenceSession(net)
    session.add_objects(frame, mask)
    return session.step(frame)


report = {"threads": torch.get_num_threads(), "before": survivors()}
late = {}
go, done = threading.Event(), threading.Event()


def other_thread():  # started before any flushing: its own OpenMP team never had the setting
    late["before"] = survivors()
    go.wait()
    late["before_its_step"] = survivors()
    late["probabilities_finite"] = bool(torch.isfinite(step_a_session()).all())
    late["after_its_step"] = survivors()
    late["outcome"] = denormals.outcome()
    done.set()


thread = threading.Thread(target=other_thread)
thread.start()
torch.set_flush_denormal(True)  # torch's own switch: the calling thread only
report["main_thread_switch_only"] = survivors()
torch.set_flush_denormal(False)
report["outcome_before"] = denormals.outcome()
step_a_session()
report["after_a_step"] = survivors()
report["outcome"] = denormals.outcome()
go.set()
done.wait(600)
report["other_thread"] = late
print(json.dumps(report))
"""


def test_a_cpu_session_flushes_denormals_on_its_thread_and_its_openmp_team(tmp_path: Path):
    script = tmp_path / "flush.py"
    script.write_text(SCRIPT)
    proc = run_python([str(script)], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    everything = 1 << 20
    assert report["threads"] == 2
    assert report["before"] == everything                      # denormals computed as such, by every thread
    assert 0 < report["main_thread_switch_only"] < everything  # torch's switch leaves the pool's thread unflushed
    assert report["outcome_before"] is None
    assert report["after_a_step"] == 0 and report["outcome"] == "flushed"
    late = report["other_thread"]
    assert late["before"] == late["before_its_step"] == everything  # another thread's team: not touched by ours
    assert late["probabilities_finite"]
    assert late["after_its_step"] == 0 and late["outcome"] == "flushed"
