"""train.py and evaluate.py end to end on a tiny embedded benchmark, as a user runs them."""
from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mavos.data.io import read_mask
from tests.conftest import SMALL_CLIPS, TINY_SYNTHETIC, run_python, run_script

pytestmark = pytest.mark.slow

# 4 steps, validation (the 2 tiny val videos, 6 and 9 frames) after steps 2 and 4
TRAIN_TINY = [*TINY_SYNTHETIC, *SMALL_CLIPS, "trainer.max_steps=5", "trainer.val_check_interval=2"]


def _ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-6000:]}"
    return proc


def _fails_with_message_only(proc, *needles):
    """An expected error: exit code 1, our message on stderr, no Python traceback."""
    assert proc.returncode == 1, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:
        assert needle in proc.stderr, f"{needle!r} not in:\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def run_dir(tiny_root: Path) -> Path:
    """4 real training steps, validating twice, logging to W&B (offline), TensorBoard and CSV."""
    proc = _ok(run_script("train.py", *TRAIN_TINY, "logger=many", "run_name=tiny", cwd=tiny_root))
    (tiny_root / "train_stdout.txt").write_text(proc.stdout + proc.stderr)
    return tiny_root / "logs/train/runs/tiny"


@pytest.fixture(scope="module")
def trained(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.ckpt"


def test_training_validates_and_keeps_the_best_checkpoints_by_score(run_dir: Path, tiny_root: Path):
    out = (tiny_root / "train_stdout.txt").read_text()
    assert len(re.findall(r"step \d+: val/J&F \d\.\d{4}", out)) >= 2
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in ckpts
    scored = [c for c in ckpts if c != "last.ckpt"]
    assert [c[:11] for c in scored] == ["step_000002", "step_000004"]
    assert all(re.fullmatch(r"step_\d{6}-jf_\d\.\d{4}\.ckpt", c) for c in scored)
    last = torch.load(run_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 5   # step 5 is no validation step: last.ckpt is written when training stops
    history = last["mavos_val_history"]
    assert [s for s, _ in history] == [2, 4]
    for (step, score), name in zip(history, scored):
        assert name == f"step_{step:06d}-jf_{score:.4f}.ckpt"
    # the checkpoint knows its network
    assert last["mavos_network"]["model"] == "mavos_mbv2"
    assert last["mavos_network"]["config"]["memory"]["_target_"].endswith("MCAMemory")
    assert (run_dir / "checkpoints/val_curve.png").stat().st_size > 1000
    assert not list((run_dir / "checkpoints").glob(".*"))  # no temporary files left behind


def test_dashboards_hold_panels_tables_and_scalars(run_dir: Path):
    wandb_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 1, "W&B should log offline without an account"
    media = wandb_runs[0] / "files" / "media"
    assert len(list(media.glob("images/val/panels_*.png"))) >= 2   # 2 panel videos, logged at each validation
    tables = sorted(media.glob("table/val/videos_*.table.json"))
    assert tables
    table = json.loads(tables[-1].read_text())
    assert table["columns"] == ["video", "objects", "J&F", "J", "F"] and len(table["data"]) == 2
    # TensorBoard: the same scalars and images
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"val/J&F", "val/J", "val/F", "val/fps"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("val/J&F")] == [2, 4]
    assert any(t.startswith("val/panel/") for t in tags["images"])
    # CSV: scalars
    rows = list(csv.DictReader(open(next((run_dir / "csv").rglob("metrics.csv")))))
    assert [float(r["val/J&F"]) for r in rows if r.get("val/J&F")] == pytest.approx(
        [s for _, s in torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)["mavos_val_history"]])


def test_logged_val_jf_equals_evaluate_py(tiny_root: Path):
    """The number in the dashboard is the number evaluate.py gives for the same checkpoint and videos.

    Starts from a freshly initialised network with a tiny learning rate, so its predictions are not all
    background (a 4-step model predicts none and would make J&F = 0 on both sides, a comparison that cannot fail).
    """
    from mavos.registry import build_network

    torch.manual_seed(3)
    init = tiny_root / "fresh_init.pth"
    torch.save(build_network("mavos_mbv2").state_dict(), init)
    _ok(run_script("train.py", *TINY_SYNTHETIC, *SMALL_CLIPS, "trainer.max_steps=2", "trainer.val_check_interval=2",
                   f"init_from={init}", "model.lr=1e-8", "model.min_lr=1e-8", "logger=csv", "run_name=val_eval",
                   cwd=tiny_root))
    ckpt = next((tiny_root / "logs/train/runs/val_eval/checkpoints").glob("step_000002-*.ckpt"))
    step, logged = torch.load(ckpt, map_location="cpu", weights_only=False)["mavos_val_history"][-1]
    assert step == 2
    results = tiny_root / "val_equals_eval"
    _ok(run_script("evaluate.py", f"ckpt_path={ckpt}", *TINY_SYNTHETIC, "videos=2", "max_frames=40",
                   f"results_dir={results}", "baseline=false", cwd=tiny_root))
    summary = json.loads((results / "summary-val.json").read_text())
    evaluated = summary["scores"]["mca model"]["J&F-Mean"]
    assert 0.0 < evaluated, "a J&F of 0 would make this comparison trivial"
    assert abs(evaluated - logged) <= 1e-6


def test_evaluate_writes_davis_results_and_resumes(trained: Path, tiny_root: Path):
    results = tiny_root / "results"
    proc = _ok(run_script("evaluate.py", f"ckpt_path={trained}", f"results_dir={results}", *TINY_SYNTHETIC,
                          cwd=tiny_root))
    out = proc.stdout
    assert "copy first-frame mask" in out and "mca model" in out and "end-to-end" in out
    root = tiny_root / "data/synthetic_davis"
    for video in (root / "ImageSets/2017/val.txt").read_text().split():
        frames = sorted(p.stem for p in (root / "JPEGImages/480p" / video).glob("*.jpg"))
        assert sorted(p.stem for p in (results / video).glob("*.png")) == frames
        gt = read_mask(root / "Annotations/480p" / video / f"{frames[1]}.png")
        assert read_mask(results / video / f"{frames[1]}.png").shape == gt.shape
    with open(results / "global_results-val.csv") as f:
        assert next(csv.reader(f)) == ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
    with open(results / "speed-val.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(float(r["FPS"]) > 0 and float(r["WallFPS"]) > 0 for r in rows)
    first = (results / "global_results-val.csv").read_text()
    # a re-run into the same folder skips the finished videos and reports the same scores
    again = _ok(run_script("evaluate.py", f"ckpt_path={trained}", f"results_dir={results}", *TINY_SYNTHETIC,
                           cwd=tiny_root))
    assert (again.stdout + again.stderr).count("done by an earlier run, skipped") == 2
    assert (results / "global_results-val.csv").read_text() == first
    assert json.loads((results / "summary-val.json").read_text())["checkpoint"] == str(trained)
    assert (results / "summary-val.txt").read_text().startswith(f"checkpoint: {trained}\n")
    video = (root / "ImageSets/2017/val.txt").read_text().split()[0]
    shutil.copy(sorted((results / video).glob("*.png"))[1], results / video / "99999.png")  # an earlier run's
    redo = _ok(run_script("evaluate.py", f"ckpt_path={trained}", f"results_dir={results}", "resume=false",
                          *TINY_SYNTHETIC, cwd=tiny_root))
    assert "skipped" not in redo.stdout + redo.stderr
    assert (results / "global_results-val.csv").read_text() == first
    assert not (results / video / "99999.png").exists()   # a video segmented again starts from an empty folder


def test_a_bad_frame_stops_with_the_file_named_and_the_rerun_goes_on(trained: Path, tiny_root: Path):
    root = tiny_root / "data_bad"
    shutil.copytree(tiny_root / "data/synthetic_davis", root)
    second = (root / "ImageSets/2017/val.txt").read_text().split()[1]
    victim = sorted((root / "JPEGImages/480p" / second).glob("*.jpg"))[3]
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 3])  # a truncated JPEG
    results = tiny_root / "bad_frame_results"
    args = [f"ckpt_path={trained}", "data=davis2017", f"data.root={root}", "data.resolution=480p",
            f"results_dir={results}", "baseline=false"]
    _fails_with_message_only(run_script("evaluate.py", *args, cwd=tiny_root), str(victim))
    victim.write_bytes(good)
    proc = _ok(run_script("evaluate.py", *args, cwd=tiny_root))
    assert (proc.stdout + proc.stderr).count("done by an earlier run, skipped") == 1  # the first video
    assert (results / "global_results-val.csv").is_file()


def test_score_only_on_ground_truth_gives_perfect_scores(tiny_root: Path, trained: Path):
    root = tiny_root / "data/synthetic_davis"
    results = tiny_root / "gt_as_results"
    shutil.copytree(root / "Annotations/480p", results)
    _ok(run_script("evaluate.py", "score_only=true", f"results_dir={results}", "data=davis2017", f"data.root={root}",
                   "data.split=val", "baseline=false", cwd=tiny_root))
    with open(results / "global_results-val.csv") as f:
        row = next(csv.DictReader(f))
    assert float(row["J&F-Mean"]) == pytest.approx(1.0)
    assert float(row["J-Mean"]) == pytest.approx(1.0) and float(row["F-Mean"]) == pytest.approx(1.0)


def test_checkpoint_names_its_network_and_refuses_another(tiny_root: Path):
    """A converted DeAOT checkpoint evaluates with no model=; model=mavos_mbv2 is refused naming both; a test gap
    is applied; an older checkpoint without its config loads when model= is given."""
    from mavos.inference.predictor import VideoPredictor
    from tests.test_checkpoints import fake_official_state

    official = tiny_root / "deaot_official.pth"
    torch.save({"state_dict": fake_official_state("deaot_mbv2")}, official)
    converted = tiny_root / "deaot.ckpt"
    proc = run_python(["-m", "mavos.checkpoints", "convert", str(official), str(converted), "model=deaot_mbv2"],
                      cwd=tiny_root)
    assert proc.returncode == 0, proc.stderr
    common = [f"ckpt_path={converted}", *TINY_SYNTHETIC, "videos=1", "max_frames=4", "baseline=false"]
    out = _ok(run_script("evaluate.py", *common, f"results_dir={tiny_root / 'deaot_results'}", cwd=tiny_root))
    assert "bank model" in out.stdout and "deaot_mbv2" in out.stdout + out.stderr
    _fails_with_message_only(run_script("evaluate.py", *common, "model=mavos_mbv2", cwd=tiny_root),
                             str(converted), "deaot_mbv2", "mavos_mbv2", "BankMemory", "MCAMemory")
    gap = _ok(run_script("evaluate.py", *common, "model.net.memory.test_gap=3",
                         f"results_dir={tiny_root / 'deaot_gap'}", cwd=tiny_root))
    assert "test_gap=3" in gap.stdout + gap.stderr
    assert isinstance(VideoPredictor.from_checkpoint(str(converted), device="cpu").net.memory,
                      __import__("mavos.model.memory", fromlist=["BankMemory"]).BankMemory)
    # an older checkpoint (no stored config): model= tells
    old = torch.load(converted, map_location="cpu", weights_only=False)
    del old["mavos_network"]
    older = tiny_root / "deaot_old.ckpt"
    torch.save(old, older)
    _ok(run_script("evaluate.py", f"ckpt_path={older}", "model=deaot_mbv2", *TINY_SYNTHETIC, "videos=1",
                   "max_frames=4", "baseline=false", f"results_dir={tiny_root / 'old_results'}", cwd=tiny_root))
    # a stored config naming an unknown backbone: the file and the key
    bad = torch.load(converted, map_location="cpu", weights_only=False)
    bad["mavos_network"]["config"]["encoder"]["_target_"] = "mavos.model.backbone.NoSuchEncoder"
    broken = tiny_root / "deaot_broken.ckpt"
    torch.save(bad, broken)
    _fails_with_message_only(run_script("evaluate.py", f"ckpt_path={broken}", *TINY_SYNTHETIC, cwd=tiny_root),
                             str(broken), "NoSuchEncoder")


def test_missing_dataset_names_the_folder(tiny_root: Path, trained: Path):
    missing = tiny_root / "no_davis_here"
    proc = run_script("evaluate.py", f"ckpt_path={trained}", "data=davis2017", f"data.root={missing}", cwd=tiny_root)
    _fails_with_message_only(proc, str(missing))


def test_result_of_wrong_size_is_refused_with_the_file_named(tiny_root: Path, trained: Path):
    root = tiny_root / "data/synthetic_davis"
    results = tiny_root / "bad_results"
    shutil.copytree(root / "Annotations/480p", results)
    first_val = (root / "ImageSets/2017/val.txt").read_text().split()[0]
    victim = sorted((results / first_val).glob("*.png"))[2]  # a scored frame (not the first or last)
    from mavos.data.io import write_mask

    write_mask(victim, np.zeros((10, 10), dtype=np.uint8))
    proc = run_script("evaluate.py", "score_only=true", f"results_dir={results}", "data=davis2017", f"data.root={root}",
                      "data.split=val", cwd=tiny_root)
    _fails_with_message_only(proc, victim.name)


def test_converted_official_checkpoint_evaluates_and_fine_tunes(tiny_root: Path):
    """An official-format checkpoint -> `python -m mavos.checkpoints convert` -> evaluate.py and train.py init_from."""
    from tests.test_checkpoints import fake_official_state

    official = tiny_root / "official_mavos.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in fake_official_state("mavos_mbv2").items()}}, official)
    converted = tiny_root / "converted.ckpt"
    proc = run_python(["-m", "mavos.checkpoints", "convert", str(official), str(converted), "model=mavos_mbv2"],
                      cwd=tiny_root)
    assert proc.returncode == 0, proc.stderr
    _ok(run_script("evaluate.py", f"ckpt_path={converted}", *TINY_SYNTHETIC, "videos=1", "baseline=false",
                   f"results_dir={tiny_root / 'converted_results'}", cwd=tiny_root))
    assert (tiny_root / "converted_results/global_results-val.csv").is_file()
    _ok(run_script("train.py", *TINY_SYNTHETIC, *SMALL_CLIPS, f"init_from={converted}", "trainer.max_steps=1",
                   "data.val_videos=0", "logger=csv", "run_name=finetune",
                   cwd=tiny_root))
    assert (tiny_root / "logs/train/runs/finetune/checkpoints/last.ckpt").is_file()


def test_evaluation_shards_two_videos_over_three_processes(tiny_root: Path, trained: Path):
    """torchrun with 3 CPU processes (gloo) over 2 videos: one rank gets none and still joins the gathers; each
    video is run and scored exactly once and the tables equal one process's."""
    import os
    import socket
    import subprocess
    import sys

    single, triple = tiny_root / "single_proc", tiny_root / "three_procs"
    _ok(run_script("evaluate.py", f"ckpt_path={trained}", f"results_dir={single}", *TINY_SYNTHETIC, "baseline=false",
                   cwd=tiny_root))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PROJECT_ROOT": str(tiny_root), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=3", "--master_addr=127.0.0.1",
                           f"--master_port={port}", str(root / "evaluate.py"), f"ckpt_path={trained}",
                           f"results_dir={triple}", *TINY_SYNTHETIC, "baseline=false"],
                          cwd=tiny_root, env=env, capture_output=True, text=True, timeout=600)
    _ok(proc)

    def rows(d):
        with open(d / "per-sequence_results-val.csv") as f:
            return {r["Sequence"]: (float(r["J-Mean"]), float(r["F-Mean"])) for r in csv.DictReader(f)}

    one, three = rows(single), rows(triple)
    assert sorted(one) == sorted(three) and len(three) == len(set(three))
    for key in one:
        assert one[key] == pytest.approx(three[key], abs=1e-3)
    assert (single / "global_results-val.csv").read_text() == (triple / "global_results-val.csv").read_text()
    with open(triple / "speed-val.csv") as f:
        assert len(list(csv.DictReader(f))) == 2


def test_user_video_with_a_binary_mask_writes_masks_and_an_overlay(tiny_root: Path, trained: Path):
    import cv2
    from PIL import Image

    from mavos.data.video_file import read_video_frames

    video = tiny_root / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    for t in range(8):
        frame = np.full((48, 64, 3), 40, dtype=np.uint8)
        cv2.rectangle(frame, (5 + 3 * t, 10), (20 + 3 * t, 30), (0, 200, 255), -1)
        writer.write(frame)
    writer.release()
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[10:31, 5:21] = 255                                # a 0/255 greyscale mask, as editors save them
    Image.fromarray(mask, mode="L").save(tiny_root / "clip_mask.png")
    results = tiny_root / "video_results"
    proc = _ok(run_script("evaluate.py", f"ckpt_path={trained}", "data=video", f"data.video={video}",
                          f"data.mask={tiny_root / 'clip_mask.png'}", f"results_dir={results}", cwd=tiny_root))
    assert "binary 0/255 mask, read as one object" in proc.stdout + proc.stderr
    assert "mca model: not scored (data.protocol=none" in proc.stdout and "nan" not in proc.stdout
    pngs = sorted(results.glob("*/*.png"))
    assert len(pngs) == 8 and read_mask(pngs[0]).shape == (48, 64)
    assert set(np.unique(read_mask(pngs[0])).tolist()) == {0, 1}  # the first frame: the mask as object 1
    overlays = list(results.glob("*_overlay.mp4"))
    assert len(overlays) == 1
    assert len(list(read_video_frames(overlays[0]))) == 8


def test_ddp_training_with_two_cpu_processes(tiny_root: Path):
    """trainer=ddp_sim: Lightning DDP (gloo, 2 processes) through the same configs a multi-GPU run uses. One
    validation video for two ranks: the rank without one still takes a validation step (DDP's buffer broadcast
    at the first forward after training needs every rank) and joins the J&F gather. Training stops at step 3,
    between validations: last.ckpt is written there by both ranks together."""
    proc = _ok(run_script("train.py", "trainer=ddp_sim", "trainer.max_steps=3", "trainer.val_check_interval=2",
                          "data.val_videos=1", "logger=csv", *TINY_SYNTHETIC, *SMALL_CLIPS, "run_name=ddp",
                          cwd=tiny_root))
    state = torch.load(tiny_root / "logs/train/runs/ddp/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 3 and [s for s, _ in state["mavos_val_history"]] == [2]
    assert re.search(r"step 2: val/J&F \d\.\d{4} .* over 1 video", proc.stdout + proc.stderr)


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
                   f"data.masks={masks_dir}", f"results_dir={results}", cwd=tiny_root))
    written = sorted(results.glob("*/*.png"))
    assert [p.stem for p in written] == [f"f{t:03d}" for t in range(6)]
    assert np.all(read_mask(written[3])[later == 2] == 2)
    assert list(results.glob("*_overlay.mp4"))


def test_help_pages_are_short_and_say_what_to_do(tiny_root: Path):
    train = _ok(run_script("train.py", "--help", cwd=tiny_root)).stdout
    assert "Common commands" in train and "run_name=exp1 ckpt_path=last" in train and "model: " in train
    assert "_target_" not in train and len(train.splitlines()) < 80
    evaluate = _ok(run_script("evaluate.py", "--help", cwd=tiny_root)).stdout
    assert "ckpt_path=<checkpoint>" in evaluate and "Required" in evaluate and "_target_" not in evaluate
    # the groups evaluate.py composes (its defaults list), each with every option in conf/; no train.py group
    conf = Path(__file__).resolve().parents[1] / "conf"
    defaults = OmegaConf.to_container(OmegaConf.load(conf / "eval.yaml"))["defaults"]
    groups = [next(iter(d)) for d in defaults if isinstance(d, dict) and next(iter(d)) != "hydra"]
    listed = {line.split(":")[0]: line.split(":", 1)[1].strip() for line in evaluate.splitlines()
              if line.split(":")[0] in {d.name for d in conf.iterdir() if d.is_dir()}}
    assert listed == {g: ", ".join(sorted(f.stem for f in (conf / g).glob("*.yaml"))) for g in groups}
    conv = run_python(["-m", "mavos.checkpoints", "--help"], cwd=tiny_root)
    assert conv.returncode == 0 and "convert" in conv.stdout and "model=" in conv.stdout


def test_expected_errors_end_with_the_message_alone(tiny_root: Path):
    # ckpt_path=last with no earlier run: the folder searched is named
    empty = tiny_root / "empty_project"
    empty.mkdir()
    proc = run_script("train.py", *TRAIN_TINY, "ckpt_path=last", "logger=csv", cwd=empty)
    _fails_with_message_only(proc, "ckpt_path=last", str(empty / "logs/train/runs"))
    # random bytes as the checkpoint to resume from
    junk = tiny_root / "junk.ckpt"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    proc = run_script("train.py", *TRAIN_TINY, f"ckpt_path={junk}", "logger=csv", cwd=tiny_root)
    _fails_with_message_only(proc, str(junk), "not a readable PyTorch checkpoint")
    # a malformed YouTube-VOS meta.json
    ytvos = tiny_root / "YTB"
    (ytvos / "valid/JPEGImages/v1").mkdir(parents=True)
    (ytvos / "valid/meta.json").write_text("{ not json")
    proc = run_script("evaluate.py", f"ckpt_path={junk}", "data=ytvos", f"data.root={ytvos}", cwd=tiny_root)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    # a monitor that is never logged
    proc = run_script("train.py", *TRAIN_TINY, "callbacks.model_checkpoint.monitor=val/loss", "logger=csv",
                      cwd=tiny_root)
    _fails_with_message_only(proc, "val/loss", "never logged")
    # ImageNet weights that are not there (found by a constructor Hydra calls: its wrapper is not shown)
    proc = run_script("train.py", *TRAIN_TINY, "model.net.encoder.weights=weights/mobilenet_v2-b0353104.pth",
                      "logger=csv", cwd=tiny_root)
    _fails_with_message_only(proc, "weights/mobilenet_v2-b0353104.pth: ImageNet weights", "download.pytorch.org")
    assert "Error in call to target" not in proc.stderr
    # a key still to give, a word for a switch, a step count of 0: refused before anything loads
    proc = run_script("evaluate.py", f"ckpt_path={junk}", "data=video", "data.video=clip.mp4", cwd=tiny_root)
    _fails_with_message_only(proc, "data=video needs data.mask=...")
    proc = run_script("evaluate.py", f"ckpt_path={junk}", "session.flip=no", cwd=tiny_root)
    _fails_with_message_only(proc, "session.flip='no': expected true or false")
    proc = run_script("train.py", *TRAIN_TINY, "trainer.val_check_interval=0", "logger=csv", cwd=tiny_root)
    _fails_with_message_only(proc, "trainer.val_check_interval=0: expected a step count >= 1")
    # a val_videos entry that does not exist
    proc = run_script("train.py", *TRAIN_TINY, "data.val_videos=[nope]", "logger=csv", cwd=tiny_root)
    _fails_with_message_only(proc, "'nope'", "data.val_videos")


def test_resuming_from_another_model_or_a_weights_only_file_is_refused(trained: Path, tiny_root: Path):
    proc = run_script("train.py", *TRAIN_TINY, "model=deaot_mbv2", f"ckpt_path={trained}", "logger=csv", cwd=tiny_root)
    _fails_with_message_only(proc, str(trained), "mavos_mbv2", "deaot_mbv2")
    proc = run_script("train.py", *TRAIN_TINY, "+data.val_protocol=none", "logger=csv", cwd=tiny_root)
    _fails_with_message_only(proc, "none", "ground truth", "data.val_videos=0")
