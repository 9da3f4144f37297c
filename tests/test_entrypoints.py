"""train.py and evaluate.py end to end on a tiny embedded benchmark, as a user runs them."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from mavos.data.io import read_mask
from tests.conftest import TINY_SYNTHETIC, run_script

pytestmark = pytest.mark.slow

SMALL_CLIPS = ["data.module.clip.crop_size=[65,65]", "data.module.clip.short_edge=80", "data.module.clip.clip_len=4",
               "data.module.batch_size=2", "data.module.num_workers=0"]


def _ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-6000:]}"
    return proc


@pytest.fixture(scope="module")
def trained(tiny_root: Path) -> Path:
    """Two real training steps with the default W&B logger (offline); returns the last checkpoint."""
    _ok(run_script("train.py", *TINY_SYNTHETIC, *SMALL_CLIPS, "trainer.max_steps=2",
                   "callbacks.model_checkpoint.every_n_train_steps=1", "hydra.run.dir=logs/train/tiny", cwd=tiny_root))
    ckpt = tiny_root / "logs/train/tiny/checkpoints/last.ckpt"
    assert ckpt.is_file()
    return ckpt


def test_training_writes_checkpoint_and_offline_wandb_run(trained: Path, tiny_root: Path):
    run_dir = tiny_root / "logs/train/tiny"
    assert list((run_dir / "wandb").glob("offline-run-*")), "W&B should log offline without an account"
    assert (tiny_root / "data/synthetic_davis/ImageSets/2017/val.txt").is_file()
    import torch

    state = torch.load(trained, map_location="cpu", weights_only=False)
    assert state["global_step"] == 2
    assert any(k.startswith("net.memory.fusers.") for k in state["state_dict"])


def test_fast_dev_run_csv_logger(tiny_root: Path):
    proc = _ok(run_script("train.py", *TINY_SYNTHETIC, *SMALL_CLIPS, "trainer.fast_dev_run=true", "logger=csv",
                          "hydra.run.dir=logs/train/fdr", cwd=tiny_root))
    assert "Trainer.fit" in proc.stdout + proc.stderr


def test_multirun_sweeps_memory_policies(tiny_root: Path):
    proc = _ok(run_script("train.py", "-m", "model=mavos_mbv2", "memory=mca,bank", "trainer.fast_dev_run=true",
                          "logger=none", *TINY_SYNTHETIC, *SMALL_CLIPS, "hydra.sweep.dir=logs/train/sweep", cwd=tiny_root))
    out = proc.stdout + proc.stderr
    assert "MCAMemory" in out and "BankMemory" in out
    assert (tiny_root / "logs/train/sweep/0").is_dir() and (tiny_root / "logs/train/sweep/1").is_dir()


def test_evaluate_writes_davis_results_and_beats_nothing_silently(trained: Path, tiny_root: Path):
    results = tiny_root / "results"
    proc = _ok(run_script("evaluate.py", f"ckpt_path={trained}", f"results_dir={results}", *TINY_SYNTHETIC,
                          "hydra.run.dir=logs/eval/tiny", cwd=tiny_root))
    out = proc.stdout
    assert "copy first-frame mask" in out and "mca model" in out and "FPS" in out
    root = tiny_root / "data/synthetic_davis"
    for video in (root / "ImageSets/2017/val.txt").read_text().split():
        frames = sorted(p.stem for p in (root / "JPEGImages/480p" / video).glob("*.jpg"))
        written = sorted(p.stem for p in (results / video).glob("*.png"))
        assert written == frames
        gt = read_mask(root / "Annotations/480p" / video / f"{frames[1]}.png")
        assert read_mask(results / video / f"{frames[1]}.png").shape == gt.shape
    with open(results / "global_results-val.csv") as f:
        header = next(csv.reader(f))
    assert header == ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
    with open(results / "speed-val.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(float(r["FPS"]) > 0 for r in rows)


def test_score_only_on_ground_truth_gives_perfect_scores(tiny_root: Path, trained: Path):
    root = tiny_root / "data/synthetic_davis"
    results = tiny_root / "gt_as_results"
    shutil.copytree(root / "Annotations/480p", results)
    _ok(run_script("evaluate.py", "score_only=true", f"results_dir={results}", "data=davis2017", f"data.root={root}",
                   "data.split=val", "baseline=false", "hydra.run.dir=logs/eval/score", cwd=tiny_root))
    with open(results / "global_results-val.csv") as f:
        row = next(csv.DictReader(f))
    assert float(row["J&F-Mean"]) == pytest.approx(1.0)
    assert float(row["J-Mean"]) == pytest.approx(1.0) and float(row["F-Mean"]) == pytest.approx(1.0)


def test_checkpoint_of_another_model_is_refused_with_the_file_named(trained: Path, tiny_root: Path):
    proc = run_script("evaluate.py", f"ckpt_path={trained}", "model=deaot_mbv2", *TINY_SYNTHETIC,
                      "hydra.run.dir=logs/eval/bad", cwd=tiny_root)
    assert proc.returncode != 0
    assert str(trained) in proc.stderr and "does not fit the model" in proc.stderr


def test_missing_dataset_names_the_folder(tiny_root: Path, trained: Path):
    missing = tiny_root / "no_davis_here"
    proc = run_script("evaluate.py", f"ckpt_path={trained}", "data=davis2017", f"data.root={missing}",
                      "hydra.run.dir=logs/eval/missing", cwd=tiny_root)
    assert proc.returncode != 0
    assert str(missing) in proc.stderr


def test_result_of_wrong_size_is_refused_with_the_file_named(tiny_root: Path, trained: Path):
    root = tiny_root / "data/synthetic_davis"
    results = tiny_root / "bad_results"
    shutil.copytree(root / "Annotations/480p", results)
    first_val = (root / "ImageSets/2017/val.txt").read_text().split()[0]
    victim = sorted((results / first_val).glob("*.png"))[2]  # a scored frame (not the first or last)
    from mavos.data.io import write_mask

    write_mask(victim, np.zeros((10, 10), dtype=np.uint8))
    proc = run_script("evaluate.py", "score_only=true", f"results_dir={results}", "data=davis2017", f"data.root={root}",
                      "data.split=val", "hydra.run.dir=logs/eval/badsize", cwd=tiny_root)
    assert proc.returncode != 0 and victim.name in proc.stderr


def test_converted_official_checkpoint_evaluates_and_fine_tunes(tiny_root: Path, trained: Path):
    """An official-format checkpoint -> `python -m mavos.checkpoints convert` -> evaluate.py and train.py init_from."""
    import subprocess
    import sys

    import torch

    from tests.test_checkpoints import fake_official_state

    official = tiny_root / "official_mavos.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in fake_official_state("mavos_mbv2").items()}}, official)
    converted = tiny_root / "converted.ckpt"
    proc = subprocess.run([sys.executable, "-m", "mavos.checkpoints", "convert", str(official), str(converted),
                           "model=mavos_mbv2"], capture_output=True, text=True, cwd=tiny_root,
                          env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == 0, proc.stderr
    _ok(run_script("evaluate.py", f"ckpt_path={converted}", *TINY_SYNTHETIC, "max_videos=1", "baseline=false",
                   f"results_dir={tiny_root / 'converted_results'}", "hydra.run.dir=logs/eval/converted", cwd=tiny_root))
    assert (tiny_root / "converted_results/global_results-val.csv").is_file()
    _ok(run_script("train.py", *TINY_SYNTHETIC, *SMALL_CLIPS, f"init_from={converted}", "trainer.max_steps=1",
                   "logger=csv", "hydra.run.dir=logs/train/finetune", cwd=tiny_root))
    assert (tiny_root / "logs/train/finetune/checkpoints/last.ckpt").is_file()


def test_evaluation_shards_videos_over_two_processes(tiny_root: Path, trained: Path):
    """torchrun with 2 CPU processes (gloo): each video is run and scored exactly once, results match 1 process."""
    import socket
    import subprocess
    import sys

    single, double = tiny_root / "single_proc", tiny_root / "two_procs"
    _ok(run_script("evaluate.py", f"ckpt_path={trained}", f"results_dir={single}", *TINY_SYNTHETIC, "baseline=false",
                   "hydra.run.dir=logs/eval/single", cwd=tiny_root))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**__import__("os").environ, "PROJECT_ROOT": str(tiny_root), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                           f"--master_port={port}", str(root / "evaluate.py"), f"ckpt_path={trained}",
                           f"results_dir={double}", *TINY_SYNTHETIC, "baseline=false", "hydra.run.dir=logs/eval/ddp"],
                          cwd=tiny_root, env=env, capture_output=True, text=True, timeout=600)
    _ok(proc)

    def rows(d):
        with open(d / "per-sequence_results-val.csv") as f:
            return {r["Sequence"]: (float(r["J-Mean"]), float(r["F-Mean"])) for r in csv.DictReader(f)}

    one, two = rows(single), rows(double)
    assert sorted(one) == sorted(two) and len(two) == len(set(two))
    for key in one:
        assert one[key] == pytest.approx(two[key], abs=1e-3)
    with open(double / "speed-val.csv") as f:
        assert len(list(csv.DictReader(f))) == 2


def test_user_video_writes_masks_and_an_overlay(tiny_root: Path, trained: Path):
    import cv2

    from mavos.data.io import write_mask
    from mavos.data.video_file import read_video_frames

    video = tiny_root / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    for t in range(8):
        frame = np.full((48, 64, 3), 40, dtype=np.uint8)
        cv2.rectangle(frame, (5 + 3 * t, 10), (20 + 3 * t, 30), (0, 200, 255), -1)
        writer.write(frame)
    writer.release()
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[10:31, 5:21] = 1
    write_mask(tiny_root / "clip_mask.png", mask)
    results = tiny_root / "video_results"
    _ok(run_script("evaluate.py", f"ckpt_path={trained}", "data=video", f"data.video={video}",
                   f"data.mask={tiny_root / 'clip_mask.png'}", f"results_dir={results}",
                   "hydra.run.dir=logs/eval/video", cwd=tiny_root))
    pngs = sorted(results.glob("*/*.png"))
    assert len(pngs) == 8 and read_mask(pngs[0]).shape == (48, 64)
    overlays = list(results.glob("*_overlay.mp4"))
    assert len(overlays) == 1
    assert len(list(read_video_frames(overlays[0]))) == 8


def test_ddp_training_with_two_cpu_processes(tiny_root: Path):
    """trainer=ddp_sim: Lightning DDP (gloo, 2 processes) through the same configs a multi-GPU run uses."""
    _ok(run_script("train.py", "trainer=ddp_sim", "trainer.max_steps=2", "logger=csv", *TINY_SYNTHETIC, *SMALL_CLIPS,
                   "hydra.run.dir=logs/train/ddp", cwd=tiny_root))
    import torch

    state = torch.load(tiny_root / "logs/train/ddp/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 2


def test_frame_folder_with_a_later_object(tiny_root: Path, trained: Path):
    from mavos.data.io import write_frame, write_mask

    frames_dir, masks_dir = tiny_root / "myvid/frames", tiny_root / "myvid/masks"
    for t in range(6):
        frame = np.full((48, 64, 3), 60, dtype=np.uint8)
        frame[10:25, 5 + 2 * t:20 + 2 * t] = (250, 200, 0)
        write_frame(frames_dir / f"f{t:03d}.jpg", frame)
    first = np.zeros((48, 64), dtype=np.uint8)
    first[10:25, 5:20] = 1
    write_mask(masks_dir / "f000.png", first)
    later = np.zeros_like(first)
    later[30:45, 40:60] = 2
    write_mask(masks_dir / "f003.png", later)
    results = tiny_root / "frames_results"
    _ok(run_script("evaluate.py", f"ckpt_path={trained}", "data=frames", f"data.frames={frames_dir}",
                   f"data.masks={masks_dir}", f"results_dir={results}", "hydra.run.dir=logs/eval/frames", cwd=tiny_root))
    written = sorted(results.glob("*/*.png"))
    assert [p.stem for p in written] == [f"f{t:03d}" for t in range(6)]
    assert np.all(read_mask(written[3])[later == 2] == 2)
    assert list(results.glob("*_overlay.mp4"))
