"""The one per-video function and the one scoring path: streaming scores equal scores of the written PNGs,
LVOS from reader metadata equals the toolkit mirror, bounded subsets, resume records, empty ranks."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mavos.data.davis import DavisReader
from mavos.data.io import write_frame, write_mask
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
                        lambda self, size: calls.append(("warm_up", self.compile, size)) or time.sleep(0.5))
    add, step = InferenceSession.add_objects, InferenceSession.step
    monkeypatch.setattr(InferenceSession, "add_objects", lambda self, *a: calls.append("add") or add(self, *a))
    monkeypatch.setattr(InferenceSession, "step", lambda self, *a: calls.append("step") or step(self, *a))
    record = DavisReader(davis, split="val").videos()[0]
    result = segment_video(net, record, protocol="davis", progress=False, session_kwargs={"compile": True})
    assert calls[:3] == [("warm_up", True, (H, W)), "add", "step"] and calls.count("step") == len(record) - 1
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


def test_a_mask_of_another_size_mid_video_names_file_and_frame(davis, net, tmp_path):
    import shutil

    root = tmp_path / "davis"
    shutil.copytree(davis, root)
    write_mask(root / "Annotations/480p/two/00003.png", np.full((H // 2, W // 2), 2, np.uint8))
    record = DavisReader(root, split="val").videos()[1]
    with pytest.raises(DatasetError) as err:
        segment_video(net, record, protocol="davis", progress=False)
    assert "two/00003.png" in str(err.value) and "frame 3" in str(err.value)


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
              "from mavos.evaluation.finishing import writer_pool\n"
              "assert 'torch' not in sys.modules, 'finishing imported torch'\n"
              "print(writer_pool().submit(os.getpid).result(), flush=True)\n"
              "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        worker = int(proc.stdout.readline())
        assert worker != proc.pid and running(worker)
        proc.send_signal(signal.SIGKILL)  # not reaped yet: a zombie still answers os.kill(pid, 0)
        deadline = time.monotonic() + 15
        while running(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not running(worker), f"writer process {worker} outlived its killed parent"
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
