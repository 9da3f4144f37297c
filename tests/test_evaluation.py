"""The one per-video function and the one scoring path: streaming scores equal scores of the written PNGs,
LVOS from reader metadata equals the toolkit mirror, bounded subsets, resume records, empty ranks."""
from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mavos.data.davis import DavisReader
from mavos.data.io import read_frame, read_mask, write_frame, write_mask
from mavos.data.lvos import LVOSReader
from mavos.data.records import DatasetError, select_videos, truncate_record
from mavos.evaluation.evaluator import copy_first_frame_scores, segment_video
from mavos.evaluation.run import load_progress, save_progress, speed_summary
from mavos.metrics.jf import JFMetric
from mavos.metrics.protocols import VideoScorer, plan_for_record, score_lvos, score_saved_video
from mavos.registry import build_network

H, W = 40, 56


def moving_square(t: int, obj: int = 1, size: int = 12, y: int = 8) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[y:y + size, 4 + 3 * t: 4 + 3 * t + size] = obj
    return m


def frame_of(mask: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    f = rng.integers(40, 90, (H, W, 3), dtype=np.uint8)
    f[mask == 1] = (230, 60, 40)
    f[mask == 2] = (40, 200, 230)
    return f


@pytest.fixture(scope="module")
def davis(tmp_path_factory) -> Path:
    """Two DAVIS-layout val videos: 'one' (1 object, 7 frames), 'two' (8 frames; an object 2 from frame 3)."""
    root = tmp_path_factory.mktemp("davis")
    for name, n in (("one", 7), ("two", 8)):
        for t in range(n):
            m = moving_square(t)
            if name == "two" and t >= 3:
                m[26:36, 40:50] = 2
            m[H - 1, :] = 255  # a void row
            write_frame(root / "JPEGImages/480p" / name / f"{t:05d}.jpg", frame_of(m, t))
            write_mask(root / "Annotations/480p" / name / f"{t:05d}.png", m)
    (root / "ImageSets/2017").mkdir(parents=True)
    (root / "ImageSets/2017/val.txt").write_text("one\ntwo\n")
    return root


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_network("mavos_mbv2").eval()


def test_streaming_scores_equal_the_scores_of_the_written_pngs(davis, net, tmp_path):
    records = DavisReader(davis, split="val").videos()
    for record in records:
        result = segment_video(net, record, protocol="davis", results_dir=tmp_path, progress=False)
        saved = score_saved_video(record, plan_for_record(record, "davis"), tmp_path)
        for a, b in zip(result.scorer.rows()[0] + result.scorer.rows()[1], saved.rows()[0] + saved.rows()[1]):
            np.testing.assert_array_equal(a, b)
        assert result.frames == len(record) and result.model_seconds > 0
        assert result.warmup_seconds == 0.0  # eager: no compiling to report apart
        assert "compiling" not in speed_summary([result], torch.device("cpu"))
        assert sorted(p.stem for p in (tmp_path / record.name).glob("*.png")) == record.frame_names
    # DAVIS scores the objects of the first annotation: object 2 of 'two' (from frame 3) is neither given nor scored
    assert plan_for_record(records[1], "davis").objects == [1]


def test_compiled_sessions_warm_up_before_the_first_timed_frame(davis, net, monkeypatch):
    """With session.compile, compiling happens in ``warm_up`` at the video's frame size, before the reference
    frame, so that the model time (the timed ``step`` calls) holds no compilation."""
    from mavos.inference.session import InferenceSession
    from mavos.inference.step import CompiledFrameStep

    monkeypatch.setattr(CompiledFrameStep, "_run", lambda self, name, fn, *args: fn(*args))  # no real compiler
    calls = []
    monkeypatch.setattr(InferenceSession, "warm_up",
                        lambda self, size, objects: calls.append(("warm_up", self.compile, size, objects))
                        or time.sleep(0.5))
    add, step = InferenceSession.add_objects, InferenceSession.step
    monkeypatch.setattr(InferenceSession, "add_objects", lambda self, *a: calls.append("add") or add(self, *a))
    monkeypatch.setattr(InferenceSession, "step", lambda self, *a: calls.append("step") or step(self, *a))
    record = DavisReader(davis, split="val").videos()[0]
    result = segment_video(net, record, protocol="davis", progress=False, session_kwargs={"compile": True})
    assert calls[:3] == [("warm_up", True, (H, W), (1, 1)), "add", "step"] and calls.count("step") == len(record) - 1
    calls.clear()   # object 2 of 'two' entering at frame 3 (first-appearance masks): counts before and after
    two = dataclasses.replace(DavisReader(davis, split="val").videos()[1], object_first_frame={1: 0, 2: 3})
    segment_video(net, two, protocol="davis", progress=False, session_kwargs={"compile": True})
    assert calls[0] == ("warm_up", True, (H, W), (1, 2))
    # the warm-up's wall time is reported apart: the summary gives end-to-end FPS with and without it
    assert 0.5 <= result.warmup_seconds < result.wall_seconds
    summary = speed_summary([result], torch.device("cpu"))
    assert f"of which {result.warmup_seconds:.1f} s compiling the step" in summary
    assert f"without it {len(record) / (result.wall_seconds - result.warmup_seconds):.2f} FPS" in summary


def test_davis_plan_skips_first_and_last_frames(davis):
    record = DavisReader(davis, split="val").videos()[0]
    plan = plan_for_record(record, "davis")
    assert plan.frame_indices == [1, 2, 3, 4, 5] and plan.slots == {1: 5}
    ltv_like = plan_for_record(record, "ltv")
    assert ltv_like.frame_indices == [1, 2, 3, 4, 5, 6] and ltv_like.binarize


def test_copy_first_frame_baseline_through_the_same_scorer(davis):
    record = DavisReader(davis, split="val").videos()[0]
    scorer = copy_first_frame_scores(record, plan_for_record(record, "davis"))
    j = scorer.rows()[0][0]
    # square of 12 px shifted by 3t px: IoU = (12 - 3t) / (12 + 3t) while they overlap (t < 4), then 0
    expected = [max(0, 12 - 3 * t) / (12 + min(12, 3 * t)) for t in range(1, 6)]
    np.testing.assert_allclose(j, expected, rtol=1e-9)


def test_select_videos_by_count_names_and_frames(davis):
    records = DavisReader(davis, split="val").videos()
    assert [r.name for r in select_videos(records, 1)] == ["one"]
    assert [r.name for r in select_videos(records, ["two"])] == ["two"]
    assert [r.name for r in select_videos(records, "two")] == ["two"]   # videos=two on the command line
    cut = select_videos(records, None, max_frames=4)
    assert [len(r) for r in cut] == [4, 4] and max(cut[1].annotations) == 3
    with pytest.raises(DatasetError, match="'three'"):
        select_videos(records, ["three"], source="data.val_videos")
    assert truncate_record(records[0], 100) is records[0]


def test_progress_record_round_trip(davis, net, tmp_path):
    record = DavisReader(davis, split="val").videos()[0]
    plan = plan_for_record(record, "davis")
    result = segment_video(net, record, plan=plan, progress=False)
    result.warmup_seconds = 1.25
    save_progress(tmp_path, result, "abc")
    back = load_progress(tmp_path, record, plan, "abc")
    assert back is not None and back.frames == result.frames and back.warmup_seconds == 1.25
    for a, b in zip(back.scorer.rows()[0], result.scorer.rows()[0]):
        np.testing.assert_array_equal(a, b)
    assert load_progress(tmp_path, record, plan, "another checkpoint") is None
    assert not list(tmp_path.rglob(".*.tmp*"))


def test_resume_keys_change_with_the_videos_source_and_first_masks(davis, tmp_path):
    import shutil

    from omegaconf import OmegaConf

    from mavos.evaluation.run import run_fingerprint, video_fingerprint

    davis = Path(shutil.copytree(davis, tmp_path / "davis"))   # its first mask is redrawn below
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"weights")

    def key(**data):
        reader = {"_target_": "mavos.data.davis.DavisReader", "root": str(davis), "split": "val",
                  "resolution": "480p", **data}
        cfg = OmegaConf.create({"ckpt_path": str(ckpt), "max_frames": None, "session": {"flip": False},
                                "data": {"name": "davis2017", "protocol": "davis",
                                         "module": {"val_reader": reader}}})
        return run_fingerprint(cfg, {"backbone": "mobilenetv2"})

    assert key() == key()
    assert key(resolution="Full-Resolution") != key()   # other frames: the earlier results do not apply
    assert key(split="test-dev") != key()

    record = DavisReader(davis, split="val").videos()[1]
    before = video_fingerprint(key(), record)
    assert video_fingerprint(key(), record) == before
    assert video_fingerprint(key(), truncate_record(record, 5)) != before
    first = Path(record.annotations[0])
    write_mask(first, (read_mask(first) == 1).astype(np.uint8) * 2)   # the first mask redrawn in place
    assert video_fingerprint(key(), record) != before
    # an object whose first frame has no mask file of its own (the evaluator takes it as no new object)
    odd = dataclasses.replace(record, annotations={0: record.annotations[0]}, object_first_frame={1: 0, 2: 3})
    assert video_fingerprint(key(), odd) != video_fingerprint(key(), record)


def test_the_submission_zip_holds_exactly_the_listed_frames(tmp_path):
    import zipfile

    from mavos.data.records import VideoRecord
    from mavos.evaluation.run import write_submission_zip

    names = [f"{5 * t:05d}" for t in range(6)]
    record = VideoRecord("vid", [tmp_path / f"{n}.jpg" for n in names], names, {0: tmp_path / "00000.png"},
                         {1: 0}, scored_frames=[0, 2, 5])   # meta.json lists 00000, 00010, 00025
    results = tmp_path / "results"
    for n in names:   # a run with all_frames wrote every frame; a killed write left a temporary file
        write_mask(results / "vid" / f"{n}.png", moving_square(0))
    (results / "vid" / ".00015.png.123-abcd.tmp.png").write_bytes(b"half a png")
    write_submission_zip(results, [record], tmp_path / "submission.zip")
    with zipfile.ZipFile(tmp_path / "submission.zip") as zf:
        assert sorted(zf.namelist()) == ["Annotations/vid/00000.png", "Annotations/vid/00010.png",
                                         "Annotations/vid/00025.png"]
    (results / "vid" / "00010.png").unlink()
    with pytest.raises(DatasetError, match=r"1 listed frame.*00010\.png"):
        write_submission_zip(results, [record], tmp_path / "again.zip")
    assert not (tmp_path / "again.zip").exists()


def test_a_split_without_ground_truth_under_a_scored_protocol_is_refused_before_it_runs(davis, tmp_path):
    from omegaconf import OmegaConf

    from mavos.evaluation.run import json_safe, scoring_plans
    from mavos.registry import ConfigError

    # DAVIS test-dev's layout: the first frame's mask only
    for t in range(4):
        write_frame(tmp_path / "JPEGImages/480p/dance" / f"{t:05d}.jpg", frame_of(moving_square(t), t))
    write_mask(tmp_path / "Annotations/480p/dance/00000.png", moving_square(0))
    (tmp_path / "ImageSets/2017").mkdir(parents=True)
    (tmp_path / "ImageSets/2017/test-dev.txt").write_text("dance\n")
    test_dev = DavisReader(tmp_path, split="test-dev").videos()
    cfg = OmegaConf.create({"data": {"name": "davis2017", "split": "test-dev"}, "max_frames": None})
    with pytest.raises(ConfigError, match="'dance'.*data.protocol=none"):
        scoring_plans(test_dev, "davis", cfg)
    assert scoring_plans(test_dev, "none", cfg) == {"dance": None}
    val = DavisReader(davis, split="val").videos()
    assert scoring_plans(val, "davis", cfg)["one"].frame_indices == [1, 2, 3, 4, 5]   # frames 1-5 of 0-6
    with pytest.raises(ConfigError, match="max_frames=2"):
        scoring_plans(select_videos(val, None, max_frames=2), "davis", OmegaConf.merge(cfg, {"max_frames": 2}))
    assert json.loads(json.dumps(json_safe({"J&F-Mean": float("nan"), "rows": [1.5, float("inf")]}))) == \
        {"J&F-Mean": None, "rows": [1.5, None]}


def test_a_mask_of_another_size_mid_video_names_file_and_frame(davis, net, tmp_path):
    import shutil

    root = tmp_path / "davis"
    shutil.copytree(davis, root)
    write_mask(root / "Annotations/480p/two/00003.png", np.full((H // 2, W // 2), 2, np.uint8))
    record = DavisReader(root, split="val").videos()[1]
    with pytest.raises(DatasetError) as err:
        segment_video(net, record, protocol="davis", progress=False)
    assert "two/00003.png" in str(err.value) and "frame 3" in str(err.value)


def test_a_frame_of_another_size_mid_video_names_both_files(davis, net, tmp_path):
    import shutil

    root = tmp_path / "davis"
    shutil.copytree(davis, root)
    write_frame(root / "JPEGImages/480p/one/00004.jpg", np.zeros((H // 2, W, 3), np.uint8))
    record = DavisReader(root, split="val").videos()[0]
    with pytest.raises(DatasetError) as err:
        segment_video(net, record, protocol="davis", progress=False)
    message = str(err.value)
    assert message.startswith(str(root / "JPEGImages/480p/one/00004.jpg")), message
    assert f"is {W}x{H // 2} (WxH)" in message and f"one/00000.jpg) is {W}x{H}" in message


def test_speeds_count_every_decoded_frame_and_leave_out_other_devices():
    """End-to-end FPS is the video's frames over its wall time (frames before the first annotated one are
    decoded and written too); a video a resumed run took from a run on another device is not this run's speed."""
    from mavos.evaluation.evaluator import VideoResult
    from mavos.evaluation.run import speed_value

    cpu = torch.device("cpu")
    late = VideoResult("late", frames=5, model_seconds=2.0, wall_seconds=5.0, peak_memory_mb=1.0, video_frames=10,
                       device="cpu")
    assert late.fps == 2.0 and late.wall_fps == 2.0  # 4 timed frames in 2 s; 10 decoded frames in 5 s
    legacy = VideoResult("legacy", frames=6, model_seconds=1.0, wall_seconds=2.0, peak_memory_mb=1.0)
    assert legacy.wall_fps == 3.0  # saved before video_frames existed: its model frames
    gpu = VideoResult("gpu", frames=101, model_seconds=0.5, wall_seconds=1.0, peak_memory_mb=1.0, video_frames=101,
                      device="cuda (NVIDIA H100 80GB HBM3)")
    results = [late, legacy, gpu]
    assert speed_value(results, "model", cpu) == pytest.approx(9 / 3.0)   # (4 + 5) frames in (2 + 1) s
    assert speed_value(results, "wall", cpu) == pytest.approx(16 / 7.0)   # (10 + 6) frames in (5 + 2) s
    summary = speed_summary(results, cpu)
    assert "model 3.00 FPS" in summary and "end-to-end 2.29 FPS" in summary
    assert summary.endswith("; 1 video(s) timed by an earlier run on cuda (NVIDIA H100 80GB HBM3) left out")
    assert speed_value([gpu], "model", cpu) is None


def test_frames_finished_by_several_writers_give_the_same_files_and_scores(davis, net, tmp_path, monkeypatch):
    """Where the machine has cores to spare, several writer processes finish frames side by side (two jobs of
    1 s each take ~1 s); the PNGs and the scores are those of one writer."""
    import mavos.evaluation.evaluator as evaluator
    import mavos.evaluation.finishing as finishing

    record = DavisReader(davis, split="val").videos()[1]
    plan = plan_for_record(record, "ltv")  # every frame scored
    one = segment_video(net, record, plan=plan, results_dir=tmp_path / "one", progress=False)
    finishing.reset_writer_pool()
    monkeypatch.setattr(finishing, "WRITERS", 2)
    monkeypatch.setattr(evaluator, "WRITERS", 2)
    try:
        started = time.perf_counter()
        jobs = [finishing.writer_pool().submit(time.sleep, 1.0) for _ in range(2)]
        [job.result() for job in jobs]
        assert time.perf_counter() - started < 1.9
        two = segment_video(net, record, plan=plan, results_dir=tmp_path / "two", progress=False)
    finally:
        finishing.reset_writer_pool()
    for a, b in zip(one.scorer.rows()[0] + one.scorer.rows()[1], two.scorer.rows()[0] + two.scorer.rows()[1]):
        np.testing.assert_array_equal(a, b)
    assert two.scorer.filled == len(plan.frames)
    for name in record.frame_names:
        np.testing.assert_array_equal(read_mask(tmp_path / "two" / record.name / f"{name}.png"),
                                      read_mask(tmp_path / "one" / record.name / f"{name}.png"))


def test_frames_decoded_by_several_threads_come_in_order_and_a_bad_one_names_its_file(davis, net, tmp_path,
                                                                                      monkeypatch):
    """With several decoding threads the model still sees frame 0, 1, 2, ... (the masks written equal those of
    one thread), and an unreadable frame stops the video when the model reaches it, naming the file."""
    import shutil

    import mavos.evaluation.evaluator as evaluator

    record = DavisReader(davis, split="val").videos()[1]
    plan = plan_for_record(record, "ltv")
    one = segment_video(net, record, plan=plan, results_dir=tmp_path / "one", progress=False)
    monkeypatch.setattr(evaluator, "DECODERS", 3)
    seen = []
    step = evaluator.InferenceSession.step
    monkeypatch.setattr(evaluator.InferenceSession, "step", lambda self, frame, *a: seen.append(frame.copy()) or
                        step(self, frame, *a))
    three = segment_video(net, record, plan=plan, results_dir=tmp_path / "three", progress=False)
    assert all(np.array_equal(f, read_frame(record.frames[t])) for t, f in enumerate(seen, start=1))
    for name in record.frame_names:
        np.testing.assert_array_equal(read_mask(tmp_path / "three" / record.name / f"{name}.png"),
                                      read_mask(tmp_path / "one" / record.name / f"{name}.png"))
    np.testing.assert_array_equal(one.scorer.rows()[0][0], three.scorer.rows()[0][0])
    root = tmp_path / "davis"
    shutil.copytree(davis, root)
    (root / "JPEGImages/480p/two/00005.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    seen.clear()
    with pytest.raises(DatasetError, match=r"two/00005\.jpg: cannot read image"):
        segment_video(net, DavisReader(root, split="val").videos()[1], protocol="davis", progress=False)
    assert len(seen) == 4  # frames 1-4 segmented, in order, before the bad frame 5
    assert all(np.array_equal(f, read_frame(record.frames[t])) for t, f in enumerate(seen, start=1))


def _mp4(path: Path, masks: list[np.ndarray], seed: int = 0) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 12.0, (W, H))
    for t, m in enumerate(masks):
        writer.write(cv2.cvtColor(frame_of(m, seed + t), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def test_a_video_file_is_segmented_from_its_decoded_frames_as_they_are(net, tmp_path, monkeypatch):
    """``data=video``: the model sees the decoder's own pixels, frame 1, 2, ... in order (the first goes in with
    its mask), as VideoPredictor and the demo do; not a re-encoded copy. The overlay keeps the file's frame rate."""
    import mavos.evaluation.evaluator as evaluator
    from mavos.data.video_file import VideoFileReader, read_video_frames
    from mavos.evaluation.run import write_overlay_for

    masks = [moving_square(t) for t in range(6)]
    video = _mp4(tmp_path / "clip.mp4", masks)
    write_mask(tmp_path / "first.png", masks[0])
    (record,) = VideoFileReader(video, tmp_path / "first.png").videos()
    decoded = list(read_video_frames(video))
    seen = []
    step = evaluator.InferenceSession.step
    monkeypatch.setattr(evaluator.InferenceSession, "step", lambda self, frame, *a: seen.append(frame.copy()) or
                        step(self, frame, *a))
    result = segment_video(net, record, protocol="none", results_dir=tmp_path / "out", progress=False)
    assert result.frames == 6 and len(seen) == 5
    assert all(np.array_equal(f, decoded[t]) for t, f in enumerate(seen, start=1))
    write_frame(tmp_path / "copy.jpg", decoded[1])   # what a JPEG frame cache would have fed it
    assert not np.array_equal(read_frame(tmp_path / "copy.jpg"), seen[0])
    assert sorted(p.stem for p in (tmp_path / "out" / "clip").glob("*.png")) == record.frame_names
    write_overlay_for(record, tmp_path / "out")
    overlay = read_video_frames(tmp_path / "out" / "clip_overlay.mp4")
    assert overlay.count() == 6 and overlay.fps == pytest.approx(12.0)


def test_an_edited_video_file_is_segmented_again(net, tmp_path):
    """A resumed evaluation keys a video file by its size and modification time: the same name, frame count and
    first mask, but other pixels, are not taken for the video already done."""
    from mavos.data.video_file import VideoFileReader
    from mavos.evaluation.run import video_fingerprint

    masks = [moving_square(t) for t in range(5)]
    write_mask(tmp_path / "first.png", masks[0])
    (before,) = VideoFileReader(_mp4(tmp_path / "clip.mp4", masks), tmp_path / "first.png").videos()
    assert video_fingerprint("run", before) == video_fingerprint(
        "run", VideoFileReader(tmp_path / "clip.mp4", tmp_path / "first.png").videos()[0])
    time.sleep(0.01)
    (after,) = VideoFileReader(_mp4(tmp_path / "clip.mp4", masks, seed=50), tmp_path / "first.png").videos()
    assert (after.frames, after.frame_names, after.annotations) == (before.frames, before.frame_names,
                                                                     before.annotations)
    assert video_fingerprint("run", after) != video_fingerprint("run", before)


# ---------------------------------------------------------------- the writer process

def test_a_frame_scored_in_the_writer_process_names_its_ground_truth_when_sizes_differ(tmp_path):
    """Errors raised in the writer process reach the caller as themselves, naming the file; the PNG is written."""
    from mavos.data.io import read_mask
    from mavos.evaluation.finishing import FrameJob, finish_frame, writer_pool

    truth = tmp_path / "gt" / "00004.png"
    write_mask(truth, moving_square(0))
    job = FrameJob(4, moving_square(1), png=str(tmp_path / "out" / "00004.png"), truth=str(truth),
                   entries=((1, 0),), video="vid")
    j, f = writer_pool().submit(finish_frame, job).result()[0][2:]
    assert j == pytest.approx(9 / 15) and 0 < f < 1  # 12-px squares 3 px apart: 108 / 180 pixels
    np.testing.assert_array_equal(read_mask(tmp_path / "out" / "00004.png"), moving_square(1))
    small = FrameJob(4, moving_square(1)[: H // 2], truth=str(truth), entries=((1, 0),), video="vid")
    with pytest.raises(DatasetError, match=r"gt/00004.png: prediction of frame 4 of 'vid' is 20x56 but its "
                                           r"ground truth is 40x56"):
        writer_pool().submit(finish_frame, small).result()


def test_the_writer_process_imports_no_torch_and_leaves_with_a_killed_parent(tmp_path):
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT

    script = ("import os, sys, time\n"
              "import mavos.evaluation.finishing as finishing\n"
              "assert 'torch' not in sys.modules, 'finishing imported torch'\n"
              "finishing.WRITERS = 2\n"  # every worker leaves, not just the first
              "pids = [finishing.writer_pool().submit(time.sleep, 0.5) for _ in range(2)]\n"
              "[f.result() for f in pids]\n"
              "print(' '.join(str(p) for p in finishing.writer_pool()._processes), flush=True)\n"
              "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(pid) for pid in proc.stdout.readline().split()]
        assert len(workers) == 2 and proc.pid not in workers and all(running(w) for w in workers)
        proc.send_signal(signal.SIGKILL)  # not reaped yet: a zombie still answers os.kill(pid, 0)
        deadline = time.monotonic() + 15
        while any(running(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(running(w) for w in workers), f"writer processes {workers} outlived their killed parent"
        assert proc.stdout.read() == ""  # EOF: nothing the parent started holds its stdout any more
    finally:
        proc.kill()
        proc.wait()


def test_a_multiprocessing_child_that_used_the_writer_exits(tmp_path):
    """A process started by multiprocessing (a DDP rank) waits for its children before its atexit handlers run:
    its writer must be shut down before that wait, or the process never ends."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    script = tmp_path / "child_uses_the_writer.py"
    script.write_text(
        "import multiprocessing, os\n"
        "from mavos.evaluation.finishing import writer_pool\n"
        "def use():\n"
        "    writer_pool().submit(os.getpid).result()\n"
        "if __name__ == '__main__':\n"
        "    child = multiprocessing.get_context('spawn').Process(target=use)\n"
        "    child.start()\n"
        "    child.join(60)\n"
        "    print('exitcode', child.exitcode, flush=True)\n"
        "    if child.exitcode is None:\n"
        "        child.kill()\n")
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert "exitcode 0" in proc.stdout, proc.stdout + proc.stderr


def test_a_dead_writer_fails_its_video_and_the_next_video_gets_a_new_one(davis, net, tmp_path):
    import os
    import signal
    from concurrent.futures.process import BrokenProcessPool

    from mavos.evaluation.finishing import writer_pool

    record = DavisReader(davis, split="val").videos()[0]
    os.kill(writer_pool().submit(os.getpid).result(), signal.SIGKILL)  # as the OOM killer would
    with pytest.raises(BrokenProcessPool):
        segment_video(net, record, protocol="davis", results_dir=tmp_path, progress=False)
    result = segment_video(net, record, protocol="davis", results_dir=tmp_path, progress=False)
    assert result.scorer.filled == len(result.scorer.plan.frames)
    assert sorted(p.stem for p in (tmp_path / record.name).glob("*.png")) == record.frame_names


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_daemonic_process_finishes_frames_in_a_thread(monkeypatch):
    """A daemonic process may not start children: its writer is a thread."""
    from concurrent.futures import ThreadPoolExecutor

    import mavos.evaluation.finishing as finishing

    monkeypatch.setattr(finishing, "_pool", None)
    monkeypatch.setattr(finishing.multiprocessing, "current_process", lambda: type("P", (), {"daemon": True})())
    pool = finishing.writer_pool()
    try:
        assert isinstance(pool, ThreadPoolExecutor) and finishing.writer_pool() is pool
    finally:
        pool.shutdown()


# ---------------------------------------------------------------- LVOS: reader metadata vs the toolkit mirror

def test_lvos_streaming_plan_equals_the_toolkit_rules(tmp_path):
    split = tmp_path / "LVOS" / "val"
    meta = {"videos": {
        "seenvid": {"objects": {"1": {"frame_range": {"start": 1, "end": 16, "frame_nums": 3}}}},
        "newvid": {"objects": {"2": {"frame_range": {"start": 2, "end": 12, "frame_nums": 3}}}},
    }}
    split.mkdir(parents=True)
    (split / "valid_meta.json").write_text(json.dumps(meta))
    results = tmp_path / "res"
    for t in range(1, 17):
        for video, obj in (("seenvid", 1), ("newvid", 2)):
            gt = moving_square(t % 5, obj)
            if (video == "seenvid" and t >= 1) or (video == "newvid" and t >= 2):
                write_mask(split / "Annotations" / video / f"{t:08d}.png", gt)
            write_frame(split / "JPEGImages" / video / f"{t:08d}.jpg", frame_of(gt, t))
            pred = moving_square((t + (t % 3)) % 5, obj)  # right on some frames, off on others
            write_mask(results / video / f"{t:08d}.png", pred)
        write_mask(split / "Annotations_convert" / "seenvid" / "00000001.png", moving_square(1, 1))
    write_mask(split / "Annotations_convert" / "newvid" / "00000002.png", moving_square(2, 2))
    unseen = tmp_path / "unseen_videos.txt"
    unseen.write_text("newvid\n")
    toolkit_row, toolkit_rows = score_lvos(split, results, unseen_videos=unseen)

    records = LVOSReader(tmp_path / "LVOS", split="val", unseen_videos=unseen).videos()
    metric = JFMetric("lvos")
    for record in sorted(records, key=lambda r: r.name):
        metric.update(score_saved_video(record, plan_for_record(record, "lvos"), results))
    assert metric.compute() == pytest.approx(toolkit_row)
    ours = metric.per_object_rows()
    assert [r["Sequence"] for r in ours] == [r["Sequence"] for r in toolkit_rows]
    for a, b in zip(ours, toolkit_rows):
        assert (a["J-Mean"], a["F-Mean"], a["V-Mean"]) == pytest.approx((b["J-Mean"], b["F-Mean"], b["V-Mean"]))
    assert 0 < toolkit_row["J&F-Mean"] < 1


def test_an_lvos_video_cut_by_max_frames_is_scored_on_the_frames_left(tmp_path):
    # object 1 on range(1, 30, 5) = 1, 6, ..., 26 (frame_nums 6); object 2 starts at frame 20, after the cut
    split = tmp_path / "LVOS" / "val"
    split.mkdir(parents=True)
    (split / "valid_meta.json").write_text(json.dumps({"videos": {"v": {"objects": {
        "1": {"frame_range": {"start": 1, "end": 30, "frame_nums": 6}},
        "2": {"frame_range": {"start": 20, "end": 30, "frame_nums": 2}}}}}}))
    for t in range(1, 31):
        m = moving_square(t % 5)
        if t >= 20:
            m[26:36, 40:50] = 2
        write_frame(split / "JPEGImages" / "v" / f"{t:08d}.jpg", frame_of(m, t))
        write_mask(split / "Annotations" / "v" / f"{t:08d}.png", m)
    write_mask(split / "Annotations_convert" / "v" / "00000001.png", moving_square(1))
    (record,) = select_videos(LVOSReader(tmp_path / "LVOS", split="val").videos(), None, max_frames=12)
    assert record.frame_names[-1] == "00000012"
    plan = plan_for_record(record, "lvos")
    # frames 00000001, 00000006, 00000011 are left (indices 0, 5, 10): three slots, none counted as a zero
    assert plan.objects == [1] and plan.slots == {1: 3}
    assert plan.frames == {0: [(1, 0)], 5: [(1, 1)], 10: [(1, 2)]}
    full = plan_for_record(LVOSReader(tmp_path / "LVOS", split="val").videos()[0], "lvos")
    assert full.slots == {1: 6, 2: 2}   # the whole video keeps the toolkit's rows


def test_metric_states_are_shaped_so_that_an_empty_rank_can_gather():
    metric = JFMetric()
    for _ in range(2):
        for name in ("stats", "object_ids", "video_names", "variation", "unseen", "positions"):
            state = getattr(metric, name)
            assert isinstance(state, list) and len(state) == 1 and state[0].shape[0] == 0
        assert metric.video_names[0].shape == (0, 256) and metric.stats[0].shape == (0, 6)
        assert np.isnan(metric.compute()["J&F-Mean"])
        metric.reset()


def test_unfilled_lvos_slots_count_zero():
    from mavos.metrics.protocols import ScorePlan

    plan = ScorePlan("v", [1], {1: 3}, {0: [(1, 0)], 5: [(1, 1)]})
    scorer = VideoScorer(plan)
    square = moving_square(0)
    scorer.add(0, square, square)
    scorer.add(5, square, square)
    assert scorer.rows()[0][0].tolist() == [1.0, 1.0, 0.0]


@pytest.mark.parametrize("count,world", [(2, 2), (5, 2), (2, 3), (10, 4), (30, 8), (1, 1)])
def test_validation_shards_cover_every_video_once_with_panels_on_rank_0(count, world):
    from mavos.data.datamodule import panel_count, shard_videos

    shards = [shard_videos(count, r, world, panels=2) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(count))
    assert set(range(panel_count(count, world, 2))) <= set(shards[0])
    assert max(map(len, shards)) - min(map(len, shards)) <= 1   # balanced


def test_evaluation_settings_that_cannot_work_are_refused_before_anything_loads(tmp_path):
    """Each names its key: a data key still to give, a session switch given as a word, a gap of 0, a selection of
    no video or a video twice, a cut shorter than two frames, a results folder under a file, a device there is
    not."""
    from omegaconf import OmegaConf

    from mavos.evaluation.run import check_evaluation_config, pick_device
    from mavos.registry import ConfigError

    session = {"long_term_gap": None, "max_long_edge": 1040, "max_short_edge": None, "flip": False, "amp": None,
               "tf32": None, "compile": False}

    def cfg(**top):
        base = {"data": {"name": "davis2017", "root": "x"}, "session": dict(session), "videos": None,
                "max_frames": None, "results_dir": str(tmp_path / "results")}
        return OmegaConf.merge(base, top)

    check_evaluation_config(cfg())
    check_evaluation_config(cfg(videos=["a", "b"], max_frames=2))
    (tmp_path / "a_file").write_text("mine")
    for bad, said in ((cfg(data={"name": "video", "video": "clip.mp4", "mask": "???"}),
                       "data=video needs data.mask=..."),
                      (cfg(session={"flip": "no"}), "session.flip='no': expected true or false"),
                      (cfg(session={"long_term_gap": 0}), "session.long_term_gap=0"),
                      (cfg(videos=0), "videos=0: expected"), (cfg(videos=-1), "videos=-1"),
                      (cfg(videos=["a", "b", "a"]), "videos: a listed more than once"),
                      (cfg(max_frames=1), "max_frames=1: expected a whole number >= 2"),
                      (cfg(max_frames="abc"), "max_frames='abc'"),
                      (cfg(results_dir=str(tmp_path / "a_file")), "a_file is a file"),
                      (cfg(results_dir=str(tmp_path / "a_file" / "sub")), "a_file is a file")):
        with pytest.raises(ConfigError, match=re.escape(said)):
            check_evaluation_config(bad)
    assert (tmp_path / "a_file").read_text() == "mine"
    with pytest.raises(ConfigError, match=r"device='banana': expected auto, cpu, cuda"):
        pick_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"device=cuda: no CUDA GPU is usable here"):
            pick_device("cuda")


def test_hydra_wrapped_user_errors_are_reported_as_themselves():
    """Hydra wraps what a constructor raises (``Error in call to target``); the user's mistake inside is what is
    printed, a Lightning trainer setting it refuses too, and a bug keeps its traceback."""
    from hydra.errors import InstantiationException
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from mavos.errors import _expected
    from mavos.model.backbone import WeightsError

    def wrapped(cause):
        try:
            raise InstantiationException("Error in call to target 'x'") from cause
        except InstantiationException as e:
            return e

    missing = WeightsError("w.pth: ImageNet weights ... not found")
    assert _expected(wrapped(missing)) is missing and _expected(missing) is missing
    refused = MisconfigurationException("`max_steps` must be ...")
    assert _expected(wrapped(refused)) is refused
    assert _expected(wrapped(KeyError("a bug"))) is None and _expected(RuntimeError("x")) is None
    try:
        raise RuntimeError("our wrapper") from missing   # not Hydra's: left as it is
    except RuntimeError as e:
        assert _expected(e) is None
