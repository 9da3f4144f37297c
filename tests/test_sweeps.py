"""The README's sweep commands run as written (only small sizes added), from a fresh copy of the entry point
with no PROJECT_ROOT set, and a sweep optimises and reports the validation J&F."""
from __future__ import annotations

import csv
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, SMALL_CLIPS, TINY_SYNTHETIC, run_env, run_python, run_script

pytestmark = pytest.mark.slow

SMALL = [*TINY_SYNTHETIC, *SMALL_CLIPS, "trainer.max_steps=2", "trainer.val_check_interval=2", "data.val_videos=1",
         "data.val_max_frames=4"]


def readme_sweeps() -> list[list[str]]:
    """The ``python train.py -m ...`` commands of the README (SLURM ones need a cluster and are left out)."""
    commands = []
    for line in (ROOT / "README.md").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("python train.py -m ") and "hydra/launcher=slurm" not in line:
            commands.append(shlex.split(line)[2:])
    return commands


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory) -> Iterator[Path]:
    """train.py and conf/ copied to a new folder: paths resolve from the entry point itself, as for a user."""
    root = tmp_path_factory.mktemp("fresh")
    shutil.copy(ROOT / "train.py", root / "train.py")
    shutil.copytree(ROOT / "conf", root / "conf")
    yield root
    shutil.rmtree(root / "logs", ignore_errors=True)  # every trial's checkpoints: gigabytes, no longer read


def run_sweep(root: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = run_env()
    env.pop("PROJECT_ROOT", None)
    proc = run_python([str(root / "train.py"), *args], cwd=root, env=env, timeout=900)
    assert proc.returncode == 0, f"{args}\nexit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def newest_sweep(root: Path) -> Path:
    sweeps = sorted((root / "logs/train/multiruns").iterdir(), key=lambda p: p.stat().st_mtime)
    return sweeps[-1]


def test_readme_lists_the_sweeps_we_run():
    commands = readme_sweeps()
    assert any("hparams_search=optuna" in c for c in commands)
    assert any(any(a.startswith("memory=") and "," in a for a in c) for c in commands)


@pytest.mark.parametrize("command", [c for c in readme_sweeps() if "hparams_search=optuna" not in c],
                         ids=lambda c: " ".join(c))
def test_readme_multirun_commands_run_as_written(fresh_copy: Path, command: list[str]):
    run_sweep(fresh_copy, [*command, *SMALL])
    sweep = newest_sweep(fresh_copy)
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    expected = 1
    for arg in command[1:]:
        if "=" in arg and "," in arg.split("=", 1)[1]:
            expected *= len(arg.split("=", 1)[1].split(","))
    assert len(jobs) == expected
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == expected
    for row in rows:
        assert 0.0 <= float(row["val/J&F"]) <= 1.0 and Path(row["checkpoint"]).is_file()
        assert float(row["val/fps"]) > 0


def test_optuna_sweep_maximises_the_validation_jf(fresh_copy: Path):
    command = next(c for c in readme_sweeps() if "hparams_search=optuna" in c)
    run_sweep(fresh_copy, [*command, "hydra.sweeper.n_trials=2", *SMALL])
    sweep = newest_sweep(fresh_copy)
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    scores = [float(r["val/J&F"]) for r in rows]
    assert results["best_value"] == pytest.approx(max(scores), abs=1e-4)  # the best trial's validation J&F
    assert re.search(r"model\.lr=", rows[0]["overrides"])


def test_an_optuna_metric_no_trial_can_return_is_refused_before_training(tmp_path: Path):
    """Optuna maximises what each trial returns: a metric the run never logs, or val/J&F without validation,
    would fail every trial after it trained; the first trial refuses it, naming optimized_metric."""
    from mavos.registry import ConfigError
    from mavos.training.run import check_optimized_metric

    check_optimized_metric("val/J&F", "optuna", validates=True)
    check_optimized_metric("train/loss", "optuna", validates=False)
    check_optimized_metric("val/JF", "basic", validates=False)  # a grid sweep returns nothing to anyone
    with pytest.raises(ConfigError, match=r"optimized_metric='val/JF': .* never logged; choose one of val/J&F"):
        check_optimized_metric("val/JF", "optuna", validates=True)
    with pytest.raises(ConfigError, match=r"optimized_metric='val/J&F': .* does not validate"):
        check_optimized_metric("val/J&F", "optuna", validates=False)

    # end to end: the first trial stops the study before it trains
    proc = run_script("train.py", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", "data.val_videos=0",
                      "logger=csv", f"paths.root_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode != 0 and "train.py: error: optimized_metric='val/J&F'" in proc.stderr + proc.stdout
    assert not list(tmp_path.rglob("*.ckpt"))
