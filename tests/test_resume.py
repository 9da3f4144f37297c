"""Runs that survive: kill -9 and resume, SLURM preemption (SIGUSR1 -> checkpoint + requeue), atomic writes."""
from __future__ import annotations

import json
import os
import re
import signal
import stat
import time
from pathlib import Path

import pytest
import torch

from mavos.data.io import atomic_save, remove_stale_temporaries
from tests.conftest import ROOT, SMALL_CLIPS, TINY_SYNTHETIC, run_env, run_python, run_script, start_python
from tests.probes import checkpoint_state

# 8 steps, a checkpoint (after a 1-video, 4-frame validation) every 2 steps, the recipe's EMA
RUN = [*TINY_SYNTHETIC, *SMALL_CLIPS, "trainer.max_steps=8", "trainer.val_check_interval=2", "data.val_videos=1",
       "data.val_max_frames=4", "callbacks=ema", "callbacks.ema.total_steps=100", "trainer.log_every_n_steps=1"]


def _probe(out: Path) -> list[str]:
    return ["+callbacks.probe._target_=tests.probes.ResumeProbe", f"+callbacks.probe.out={out}"]


def _ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}"
    return proc


def _env(root: Path, **extra) -> dict:
    return run_env(PROJECT_ROOT=str(root), **extra)


def _wait_for(condition, proc, timeout: float = 600, what: str = "") -> None:
    start = time.time()
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process ended (exit {proc.returncode}) before {what}\n{out[-2000:]}\n{err[-4000:]}")
        if time.time() - start > timeout:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _steps(probe: Path) -> list[dict]:
    path = probe / "steps.txt"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.mark.slow
def test_kill_9_then_ckpt_path_last_resumes_where_the_run_stopped(tmp_path: Path):
    # the uninterrupted run, for the learning rates
    ref_probe = tmp_path / "probe_ref"
    _ok(run_script("train.py", *RUN, "logger=csv", "run_name=ref", *_probe(ref_probe), cwd=tmp_path))
    reference_lrs = {row["step"]: row["lrs"] for row in _steps(ref_probe)}

    probe = tmp_path / "probe_killed"
    run = tmp_path / "logs/train/runs/killed"
    last = run / "checkpoints/last.ckpt"
    proc = start_python([str(ROOT / "train.py"), *RUN, "logger=many", "run_name=killed", *_probe(probe)],
                        cwd=tmp_path, env=_env(tmp_path))
    _wait_for(last.is_file, proc, what="the first checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    reached = max(row["step"] for row in _steps(probe))
    saved = checkpoint_state(last)
    assert 2 <= saved["global_step"] < 8
    assert reached - saved["global_step"] <= 2  # at most one checkpoint interval lost
    for ckpt in (run / "checkpoints").glob("*.ckpt"):
        torch.load(ckpt, map_location="cpu", weights_only=False)  # no file is partial

    resumed = _ok(run_script("train.py", *RUN, "logger=many", "run_name=killed", "ckpt_path=last", *_probe(probe),
                             cwd=tmp_path))
    start = json.loads((probe / "start-1.json").read_text())
    assert start["global_step"] == saved["global_step"]                      # continues at the saved step
    assert start["scheduler_last_epoch"] == saved["scheduler_last_epoch"]
    assert start["lrs"] == pytest.approx(saved["lrs"])
    assert start["moments"] == saved["moments"] and start["exp_avg_sum"] == pytest.approx(saved["exp_avg_sum"],
                                                                                          rel=1e-9)
    assert start["ema_n_averaged"] == saved["ema_n_averaged"] == saved["global_step"] + 1
    assert start["ema_sum"] == pytest.approx(saved["ema_sum"], rel=1e-9)
    after = [row for row in _steps(probe) if row["step"] > saved["global_step"]]
    for row in after:                                                         # the same schedule as uninterrupted
        assert row["lrs"] == pytest.approx(reference_lrs[row["step"]])
    assert checkpoint_state(last)["global_step"] == 8
    # one folder, one W&B run, no other run folder made by the resume
    assert sorted(p.name for p in (tmp_path / "logs/train/runs").iterdir()) == ["killed", "ref"]
    run_ids = {p.name.rsplit("-", 1)[-1] for p in (run / "wandb").glob("offline-run-*")}
    assert len(list((run / "wandb").glob("offline-run-*"))) == 2 and len(run_ids) == 1
    assert "resuming from" in resumed.stdout + resumed.stderr


@pytest.mark.slow
def test_sigusr1_on_slurm_saves_a_checkpoint_requeues_and_the_requeued_job_resumes(tmp_path: Path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "scontrol_calls.txt"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {record}\n")
    scontrol.chmod(0o755)
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost",
             "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    args = [*TINY_SYNTHETIC, *SMALL_CLIPS, "trainer.max_steps=6", "trainer.val_check_interval=3",
            "data.val_videos=0", "logger=csv", "run_name=slurm"]
    probe = tmp_path / "probe"
    proc = start_python([str(ROOT / "train.py"), *args, *_probe(probe)], cwd=tmp_path, env=_env(tmp_path, **slurm))
    _wait_for(lambda: len(_steps(probe)) >= 2, proc, what="two training steps")
    proc.send_signal(signal.SIGUSR1)
    run = tmp_path / "logs/train/runs/slurm"
    _wait_for(lambda: record.is_file() and list(run.glob("hpc_ckpt_*.ckpt")), proc, what="the hpc checkpoint")
    proc.send_signal(signal.SIGKILL)  # SLURM ends the job
    proc.communicate()
    assert record.read_text().split() == ["requeue", "4242"]
    hpc = sorted(run.glob("hpc_ckpt_*.ckpt"))
    saved = checkpoint_state(hpc[-1])
    assert saved["global_step"] >= 2
    # the requeued job runs the same command: Lightning restores the hpc checkpoint from the run folder
    _ok(run_python([str(ROOT / "train.py"), *args, *_probe(probe)], cwd=tmp_path, env=_env(tmp_path, **slurm),
                   timeout=600))
    assert json.loads((probe / "start-1.json").read_text())["global_step"] == saved["global_step"]
    assert checkpoint_state(run / "checkpoints/last.ckpt")["global_step"] == 6


def test_slurm_launcher_config_composes_and_a_mismatched_allocation_is_refused_before_submitting(tmp_path):
    """One task per GPU: an allocation that is not the trainer's (Lightning refuses it only inside the job, after
    it waited in the queue) stops the multirun before anything is submitted, naming both keys."""
    from hydra import compose, initialize_config_dir

    from mavos.registry import ConfigError
    from mavos.training.rundir import register_resolvers
    from mavos.training.sweep import check_slurm_allocation

    register_resolvers()
    slurm = ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", f"paths.root_dir={tmp_path}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*slurm, "hydra.launcher.nodes=2", "hydra.launcher.gpus_per_node=4",
                                          "trainer=ddp", "trainer.num_nodes=2", "trainer.devices=4"],
                      return_hydra_config=True)
        default = compose("train", overrides=slurm, return_hydra_config=True)
        mismatched = compose("train", overrides=[*slurm, "hydra.launcher.gpus_per_node=4", "trainer=ddp",
                                                 "trainer.devices=2"], return_hydra_config=True)
        local = compose("train", overrides=["trainer=ddp", f"paths.root_dir={tmp_path}"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node, launcher.partition) == (2, 4, 4, "gpu")
    assert launcher.additional_parameters.signal == "USR1@120"  # Lightning's requeue signal
    assert cfg.trainer.num_nodes == 2
    for fine in (cfg, default, local):  # the defaults agree (one GPU); a local launcher has nothing to check
        check_slurm_allocation(fine)
    with pytest.raises(ConfigError, match=r"hydra.launcher.gpus_per_node=4 but trainer.devices=2"):
        check_slurm_allocation(mismatched)

    # end to end: train.py -m refuses before submitting (there is no sbatch here to submit to)
    proc = run_script("train.py", "-m", "hydra/launcher=slurm", "hydra.launcher.nodes=2", "trainer=ddp",
                      "hydra.launcher.gpus_per_node=4",
                      f"paths.root_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode != 0
    assert "hydra.launcher.nodes=2 but trainer.num_nodes=1" in proc.stdout + proc.stderr
    assert not list(tmp_path.rglob("*.submission_file_*")) and not list(tmp_path.rglob("*.sh"))


# ---------------------------------------------------------------- atomic writes

def test_atomic_save_keeps_the_old_file_when_a_write_dies(tmp_path: Path):
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"previous checkpoint")
    seen = []

    def dies(tmp):
        seen.append(Path(tmp))
        Path(tmp).write_bytes(b"half")
        raise KeyboardInterrupt  # SIGINT / SIGTERM handlers that raise land here

    with pytest.raises(KeyboardInterrupt):
        atomic_save(dies, target)
    assert target.read_bytes() == b"previous checkpoint"
    assert seen[0].parent == tmp_path            # the temporary file lives beside its destination ...
    assert not seen[0].exists() and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # ... and is gone


def test_atomic_writes_follow_the_umask_and_stale_temporaries_are_removed(tmp_path: Path):
    old = os.umask(0o022)
    try:
        atomic_save(lambda tmp: Path(tmp).write_text("x"), tmp_path / "a.csv")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.csv").stat().st_mode) == 0o644
    stale = tmp_path / ".last.ckpt.123-abcd1234.tmp.ckpt"   # what a kill -9 mid-write leaves
    stale.write_bytes(b"partial")
    assert remove_stale_temporaries(tmp_path) == [stale] and not stale.exists()
    assert (tmp_path / "a.csv").exists()


def test_ckpt_path_last_takes_the_newer_of_last_ckpt_and_a_preemption_checkpoint(tmp_path):
    """SLURM preemption writes hpc_ckpt_<n>.ckpt into the run folder, up to a validation interval after
    last.ckpt: `ckpt_path=last` resumes from whichever was written last (a preemption before the first
    validation leaves only the hpc file), and a path to an hpc file resumes into its own run folder."""
    from mavos.training.rundir import find_last_checkpoint, run_dir
    from mavos.training.run import resolve_resume

    runs = tmp_path / "runs"
    run = runs / "exp1"
    (run / "checkpoints").mkdir(parents=True)

    def write(path: Path, age_s: float) -> Path:
        path.write_bytes(b"x")
        os.utime(path, (time.time() - age_s, time.time() - age_s))
        return path

    hpc = write(run / "hpc_ckpt_1.ckpt", 100)
    assert resolve_resume("last", run, runs) == str(hpc)  # preempted before any validation
    last = write(run / "checkpoints" / "last.ckpt", 50)
    assert resolve_resume("last", run, runs) == str(last)  # validated since the preemption
    hpc2 = write(run / "hpc_ckpt_2.ckpt", 10)
    assert resolve_resume("last", run, runs) == str(hpc2)  # preempted again, after that validation
    (runs / "older" / "checkpoints").mkdir(parents=True)
    write(runs / "older" / "checkpoints" / "last.ckpt", 1000)
    assert find_last_checkpoint(runs) == hpc2
    assert run_dir(str(runs), None, "last", "STAMP") == str(run.resolve())
    assert run_dir(str(runs), None, str(hpc), "STAMP") == str(run.resolve())
    assert run_dir(str(runs), None, str(last), "STAMP") == str(run.resolve())
    elsewhere = write(tmp_path / "weights.ckpt", 0)
    assert run_dir(str(runs), None, str(elsewhere), "STAMP") == str(runs / "STAMP")


def test_a_new_run_in_a_folder_holding_checkpoints_is_refused_and_resuming_it_is_not(tmp_path, monkeypatch):
    """``run_name=exp1`` run again without ``ckpt_path=last`` would train from scratch into exp1's folder and
    overwrite its last.ckpt: refused, naming the folder and the files. Resuming from the folder's own checkpoint,
    a folder with no checkpoint (a run that died before its first), and a requeued SLURM job (Lightning restores
    its hpc checkpoint itself) go ahead."""
    from mavos.registry import ConfigError
    from mavos.training.run import check_run_folder

    for name in ("SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(name, raising=False)
    run = tmp_path / "runs" / "exp1"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / ".last.ckpt.123-abcd1234.tmp.ckpt").write_bytes(b"partial")  # a killed write's leftover
    check_run_folder(run, None)  # nothing trained here yet
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (run / "checkpoints" / "step_000004-jf_0.5000.ckpt").write_bytes(b"x")
    with pytest.raises(ConfigError) as refused:
        check_run_folder(run, None)
    message = str(refused.value)
    assert message.startswith(f"{run}: this run folder already holds an earlier run's checkpoints "
                              f"(checkpoints/last.ckpt, checkpoints/step_000004-jf_0.5000.ckpt)")
    assert "ckpt_path=last" in message and "run_name" in message and ".tmp.ckpt" not in message
    check_run_folder(run, str(run / "checkpoints" / "last.ckpt"))  # resumed from its own checkpoint
    other = tmp_path / "runs" / "other" / "checkpoints" / "last.ckpt"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"x")
    with pytest.raises(ConfigError, match=f"resuming from {other} here would overwrite them"):
        check_run_folder(run, str(other))  # another run's state continued in this folder
    (run / "hpc_ckpt_3.ckpt").write_bytes(b"x")
    with pytest.raises(ConfigError):
        check_run_folder(run, None)  # not on SLURM: Lightning would not restore the hpc file
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    check_run_folder(run, None)  # the requeued job: Lightning resumes from hpc_ckpt_3.ckpt


def test_only_rank_zero_makes_the_wandb_run_id(tmp_path, monkeypatch):
    """srun starts every task of a job at once: a task other than global rank 0 that finds no id file writes
    none (its id would race rank 0's), and every task reads rank 0's once it exists."""
    from mavos.training.run import wandb_run_id

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert wandb_run_id(tmp_path) is None and not (tmp_path / "wandb_run_id.txt").exists()
    monkeypatch.setenv("SLURM_PROCID", "0")
    made = wandb_run_id(tmp_path)
    assert (tmp_path / "wandb_run_id.txt").read_text().strip() == made and len(made) == 12
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert wandb_run_id(tmp_path) == made
    monkeypatch.setenv("RANK", "2")  # torchrun's rank wins over SLURM's task id
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert wandb_run_id(tmp_path / "other") is None


def test_a_new_preemption_checkpoint_removes_the_ones_it_supersedes(tmp_path):
    """Each SLURM preemption writes hpc_ckpt_<n+1>.ckpt (a full training state); the requeued job restores the
    highest number, so once it is written the older ones are removed (Lightning keeps them all). last.ckpt and
    other runs' files are left alone."""
    from mavos.training.checkpoint_io import AtomicCheckpointIO

    run, other = tmp_path / "run", tmp_path / "other"
    (run / "checkpoints").mkdir(parents=True)
    other.mkdir()
    for path in (run / "hpc_ckpt_1.ckpt", run / "hpc_ckpt_2.ckpt", run / "hpc_ckpt_10.ckpt", other / "hpc_ckpt_1.ckpt"):
        path.write_bytes(b"old state")
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 5}, run / "checkpoints" / "last.ckpt")  # not a preemption: removes nothing
    assert len(list(run.glob("hpc_ckpt_*.ckpt"))) == 3
    io.save_checkpoint({"step": 7}, run / "hpc_ckpt_11.ckpt")
    assert sorted(p.name for p in run.glob("hpc_ckpt_*.ckpt")) == ["hpc_ckpt_11.ckpt"]
    assert torch.load(run / "hpc_ckpt_11.ckpt")["step"] == 7 and (run / "checkpoints" / "last.ckpt").is_file()
    assert (other / "hpc_ckpt_1.ckpt").is_file()


@pytest.mark.slow
def test_a_named_multirun_lives_in_its_own_folder_and_ckpt_path_last_resumes_each_job_there(tmp_path: Path):
    """``run_name=`` names a multirun's folder too (``multiruns/<name>/<job>``): resuming the sweep is the same
    command with ``ckpt_path=last``, each job from its own subfolder, without looking up a time stamp."""
    args = ["-m", *TINY_SYNTHETIC, *SMALL_CLIPS, "trainer.val_check_interval=2", "data.val_videos=0", "logger=csv",
            "run_name=sweep1", "model.lr=1e-4,2e-4"]
    _ok(run_script("train.py", *args, "trainer.max_steps=2", cwd=tmp_path))
    sweep = tmp_path / "logs/train/multiruns/sweep1"
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()) == ["0", "1"]
    for job in ("0", "1"):
        assert checkpoint_state(sweep / job / "checkpoints/last.ckpt")["global_step"] == 2
    _ok(run_script("train.py", *args, "trainer.max_steps=4", "ckpt_path=last", cwd=tmp_path))
    assert sorted(p.name for p in (tmp_path / "logs/train/multiruns").iterdir()) == ["sweep1"]  # no new sweep
    for job in ("0", "1"):
        assert checkpoint_state(sweep / job / "checkpoints/last.ckpt")["global_step"] == 4
    # the name reused for a new sweep: refused before training, the trained jobs' checkpoints kept as they were
    before = (sweep / "0/checkpoints/last.ckpt").read_bytes()
    refused = run_script("train.py", *args[:-1], "model.lr=3e-4", "trainer.max_steps=1", cwd=tmp_path)
    assert refused.returncode != 0
    assert f"{sweep / '0'}: this run folder already holds an earlier run's checkpoints (checkpoints/last.ckpt" in (
        refused.stdout + refused.stderr)
    assert (sweep / "0/checkpoints/last.ckpt").read_bytes() == before
    # one job of it resumed: the summary lists that job, not job 1 of the multirun before
    _ok(run_script("train.py", *args[:-1], "model.lr=2e-4", "trainer.max_steps=5", "ckpt_path=last", cwd=tmp_path))
    summary = (sweep / "summary.csv").read_text().splitlines()
    assert len(summary) == 2 and "model.lr=0.0002" in summary[1]  # header and the one job (Hydra writes the float)
    assert checkpoint_state(sweep / "0/checkpoints/last.ckpt")["global_step"] == 5
    assert not list((sweep / "0/checkpoints").glob("last-v*.ckpt"))
    # without a name: a time-stamped folder, as Hydra's default
    _ok(run_script("train.py", *args[:-2], "model.lr=1e-4", "trainer.max_steps=1", cwd=tmp_path))
    stamped = [p.name for p in (tmp_path / "logs/train/multiruns").iterdir() if p.name != "sweep1"]
    assert len(stamped) == 1 and re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", stamped[0])
