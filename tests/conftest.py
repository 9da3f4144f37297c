"""Shared fixtures: a tiny embedded benchmark and the Hydra overrides that point runs at it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# small training clips for end-to-end runs
SMALL_CLIPS = ["data.module.clip.crop_size=[65,65]", "data.module.clip.short_edge=80", "data.module.clip.clip_len=4",
               "data.module.batch_size=2", "data.module.num_workers=0"]
TINY_SYNTHETIC = ["+data.module.prepare.num_train=2", "+data.module.prepare.num_val=2",
                  "+data.module.prepare.train_length=8", "+data.module.prepare.val_lengths=[6,9]",
                  "+data.module.prepare.height=96", "+data.module.prepare.width=128"]


def run_script(script: str, *overrides: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run train.py / evaluate.py as a user would, with logs under ``cwd``; fail with its output."""
    env = dict(os.environ, PROJECT_ROOT=str(cwd), WANDB_MODE="offline", WANDB_SILENT="true",
               PYTHONWARNINGS="ignore", PYTHONPATH=str(ROOT))
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, str(ROOT / script), *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A project root (logs/, data/) for end-to-end runs."""
    return tmp_path_factory.mktemp("project")
