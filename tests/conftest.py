"""Shared fixtures: a tiny embedded benchmark, the Hydra overrides that point runs at it, and how tests start
``python`` (a prewarmed interpreter where it can: tests/prewarmed.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import prewarmed

ROOT = Path(__file__).resolve().parents[1]

# small training clips for end-to-end runs
SMALL_CLIPS = ["data.module.clip.crop_size=[65,65]", "data.module.clip.short_edge=80", "data.module.clip.clip_len=4",
               "data.module.batch_size=2", "data.module.num_workers=0"]
TINY_SYNTHETIC = ["+data.module.prepare.num_train=2", "+data.module.prepare.num_val=2",
                  "+data.module.prepare.train_length=8", "+data.module.prepare.val_lengths=[6,9]",
                  "+data.module.prepare.height=96", "+data.module.prepare.width=128"]


def run_env(**extra: str) -> dict:
    """The environment of the runs the tests start: W&B offline and quiet, warnings off, this checkout's
    ``mavos`` first, no ``HYDRA_FULL_ERROR`` (expected errors end with their message alone)."""
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONWARNINGS="ignore", PYTHONPATH=str(ROOT),
               **extra)
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_script(script: str, *overrides: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run train.py / evaluate.py as a user would, with logs under ``cwd``; fail with its output."""
    return run_python([str(ROOT / script), *overrides], cwd=cwd, env=run_env(PROJECT_ROOT=str(cwd)), timeout=timeout)


def run_python(argv: list[str], cwd: Path, env: dict | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess:
    """``python <argv>`` (a script and its arguments, or ``-m module ...``), its output captured, as
    ``subprocess.run`` gives it."""
    proc = start_python(argv, cwd, env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(proc.args, timeout, out, err) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def start_python(argv: list[str], cwd: Path, env: dict | None = None):
    """``python <argv>`` started, as ``subprocess.Popen(..., stdout=PIPE, stderr=PIPE, text=True)``.

    On Linux the run is a fork of a prewarmed interpreter (``tests/prewarmed.py``: the libraries imported once for
    the whole suite); ``MAVOS_TEST_FRESH_INTERPRETERS=1`` starts a new interpreter for every run instead.
    """
    args = [sys.executable, *argv]
    env = run_env() if env is None else env
    forking = os.environ.get("MAVOS_TEST_FRESH_INTERPRETERS") != "1" and sys.platform == "linux"
    if forking and (not _server or _server[0].proc.poll() is not None):
        _server[:] = [prewarmed.Server(str(ROOT), run_env())]
    # a run whose variables read as the preloaded libraries load differ from the server's needs a new interpreter
    if forking and _server[0].serves(env):
        return _server[0].start(args, str(cwd), env)
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


_server: list[prewarmed.Server] = []


def pytest_unconfigure(config):
    for server in _server:
        server.close()


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A project root (logs/, data/) for end-to-end runs."""
    return tmp_path_factory.mktemp("project")
