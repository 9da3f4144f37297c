"""The demo's logic without a browser: inputs and their messages, masks, networks, runs, cancellation.

Masks a run writes are checked against ``InferenceSession`` driven directly on the same frames.
"""
from __future__ import annotations

import gc
import os
import threading
import weakref
import zipfile
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from mavos.checkpoints.loading import NETWORK_KEY, network_record
from mavos.data.io import davis_palette, write_mask
from mavos.data.video_file import read_video_frames
from mavos.demo import jobs as demo_jobs
from mavos.demo.jobs import JobBoard, JobCancelled, RunRequest, propagate, run_job
from mavos.demo.masks import (apply_strokes, brush_colours, check_first_mask, grabcut, read_uploaded_mask)
from mavos.demo.networks import RANDOM, NetworkCache, checkpoint_choices, default_checkpoint, policy_of
from mavos.demo.settings import DemoSettings, parse_args
from mavos.demo.videos import BenchmarkVideos, InputError, open_uploaded_video
from mavos.inference import InferenceSession
from mavos.registry import build_network, network_config

H, W = 48, 64
PALETTE = davis_palette()


# ----------------------------------------------------------------------------- shared helpers (browser test too)
def make_video(path: Path, frames: int = 4, seed: int = 0, height: int = H, width: int = W) -> Path:
    """An H.264 mp4 of two coloured boxes moving over noise (libx264 through PyAV, as users' phones write)."""
    rng = np.random.default_rng(seed)
    background = rng.integers(50, 130, (height, width, 3)).astype(np.uint8)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(12), options={"crf": "18"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            frame = background.copy()
            frame[6 + i:20 + i, 6 + 2 * i:24 + 2 * i] = (220, 40, 40)
            frame[28:44, 40 - 2 * i:58 - 2 * i] = (40, 200, 60)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def first_mask(objects: int = 2) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[6:20, 6:24] = 1
    if objects > 1:
        mask[28:44, 40:58] = 2
    return mask


def reference_masks(net, video: Path, mask: np.ndarray, **session_kwargs) -> list[np.ndarray]:
    """What a script gets: InferenceSession over read_video_frames, argmax per frame."""
    session = InferenceSession(net, **session_kwargs)
    out = []
    for i, frame in enumerate(read_video_frames(video)):
        probs = session.add_objects(frame, mask) if i == 0 else session.step(frame)
        out.append(probs.argmax(0).to(torch.uint8).numpy())
    return out


def zip_masks(path: Path, memory: str) -> list[np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        names = sorted(n for n in archive.namelist() if n.startswith(f"{memory}/"))
        return [np.asarray(Image.open(archive.open(n))) for n in names]


def write_checkpoint(path: Path, net=None) -> Path:
    """A checkpoint as training writes it (net. keys + the network record) of ``net`` (default: a random MAVOS)."""
    if net is None:
        torch.manual_seed(1)
        net = build_network("mavos_mbv2")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                NETWORK_KEY: network_record(network_config("mavos_mbv2"), "mavos_mbv2")}, path)
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny frames run faster on one thread, much faster on a shared busy CPU; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    return NetworkCache(tmp_path_factory.mktemp("root"), torch.device("cpu"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    return open_uploaded_video(make_video(folder / "clip.mp4", frames=4), max_mb=10, max_frames=100)


# ----------------------------------------------------------------------------- settings, checkpoints
def test_settings_from_the_command_line():
    s = parse_args(["ckpt_path=w.ckpt", "port=8001", "max_upload_mb=5.5", "max_frames=30"])
    assert (s.ckpt_path, s.port, s.max_upload_mb, s.max_frames, s.host) == ("w.ckpt", 8001, 5.5, 30, "127.0.0.1")
    with pytest.raises(ValueError, match="unknown setting"):
        parse_args(["ckpt=w.ckpt"])
    with pytest.raises(ValueError, match="expected a number"):
        parse_args(["port=eighty"])
    with pytest.raises(ValueError, match="resolution"):
        DemoSettings(resolution="4k")


def test_default_checkpoint_is_the_latest_quick_start_run(tmp_path):
    assert default_checkpoint(tmp_path) == RANDOM
    old = tmp_path / "logs/train/runs/2026-01-01_10-00-00/checkpoints"
    new = tmp_path / "logs/train/runs/2026-01-02_10-00-00/checkpoints"
    for folder in (old, new):
        folder.mkdir(parents=True)
        (folder / "step=200.ckpt").write_bytes(b"x")
        (folder / "last.ckpt").write_bytes(b"x")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights/mavos_mbv2.ckpt").write_bytes(b"x")
    os.utime(old / "last.ckpt", (1, 1))
    assert default_checkpoint(tmp_path) == "logs/train/runs/2026-01-02_10-00-00/checkpoints/last.ckpt"
    assert default_checkpoint(tmp_path, "mine.ckpt") == "mine.ckpt"
    assert checkpoint_choices(tmp_path) == [
        "weights/mavos_mbv2.ckpt",
        "logs/train/runs/2026-01-02_10-00-00/checkpoints/last.ckpt",
        "logs/train/runs/2026-01-02_10-00-00/checkpoints/step=200.ckpt",
        "logs/train/runs/2026-01-01_10-00-00/checkpoints/last.ckpt",
        "logs/train/runs/2026-01-01_10-00-00/checkpoints/step=200.ckpt"]


def test_checkpoint_with_the_other_memory_keeps_every_weight_outside_it(networks, tmp_path):
    ckpt = write_checkpoint(tmp_path / "weights/a.ckpt", networks.get(RANDOM)[0])
    cache = NetworkCache(tmp_path, torch.device("cpu"))
    own, note = cache.get("weights/a.ckpt")
    bank, bank_note = cache.get("weights/a.ckpt", "bank")
    assert policy_of(own) == "mca" and policy_of(bank) == "bank" and "as trained" in note
    assert "MCA blocks unused" in bank_note
    own_state, bank_state = own.state_dict(), bank.state_dict()
    outside = [k for k in own_state if not k.startswith("memory.")]
    assert set(bank_state) == set(outside)  # the bank has no weights of its own
    assert all(torch.equal(own_state[k], bank_state[k]) for k in outside)
    assert cache.get("weights/a.ckpt")[0] is own  # cached
    ckpt.write_bytes(b"not a checkpoint")
    from mavos.checkpoints.loading import CheckpointError
    with pytest.raises(CheckpointError, match="a.ckpt"):
        cache.get("weights/a.ckpt")


def test_the_page_cannot_make_the_server_unpickle_a_file_outside_the_checkpoint_folders(networks, tmp_path):
    """The checkpoint's name comes from the browser (the dropdown takes typed values): an uploaded file or any
    path elsewhere is refused before it is read; the folders the page lists and the operator's own file load."""
    from mavos.registry import ConfigError

    net = networks.get(RANDOM)[0]
    root, elsewhere = tmp_path / "root", tmp_path / "uploads"
    for path in (root / "weights/a.ckpt", root / "logs/train/runs/r/checkpoints/last.ckpt", elsewhere / "x.ckpt"):
        write_checkpoint(path, net)
    cache = NetworkCache(root, torch.device("cpu"), started_with=str(elsewhere / "x.ckpt"))
    assert cache.get("weights/a.ckpt")[0] is not None
    assert cache.get("logs/train/runs/r/checkpoints/last.ckpt")[0] is not None
    assert cache.get(str(elsewhere / "x.ckpt"))[0] is not None   # the demo was started with it
    evil = elsewhere / "upload.mp4"
    evil.write_bytes((elsewhere / "x.ckpt").read_bytes())
    for name in (str(evil), "weights/../../uploads/upload.mp4", "/etc/passwd"):
        with pytest.raises(ConfigError, match="loads checkpoints from weights/ and logs/"):
            cache.get(name)
    (root / "weights/linked.ckpt").symlink_to(elsewhere / "x.ckpt")   # models kept on another disk, linked in
    assert "weights/linked.ckpt" in checkpoint_choices(root) and cache.get("weights/linked.ckpt")[0] is not None


def test_compare_rebuilds_a_checkpoint_trained_from_imagenet_weights_without_that_file(networks, tmp_path):
    from mavos.checkpoints.loading import NETWORK_KEY, network_record
    from mavos.registry import network_config

    net = networks.get(RANDOM)[0]
    config = network_config("mavos_mbv2", ["model.net.encoder.weights=weights/mobilenet_v2-b0353104.pth"])
    path = tmp_path / "weights/trained.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                NETWORK_KEY: network_record(config, "mavos_mbv2")}, path)
    cache = NetworkCache(tmp_path, torch.device("cpu"))
    own, bank = cache.get("weights/trained.ckpt")[0], cache.get("weights/trained.ckpt", "bank")[0]
    assert policy_of(own) == "mca" and policy_of(bank) == "bank"


# ----------------------------------------------------------------------------- videos
def test_uploaded_video_is_checked_and_described(tmp_path):
    video = open_uploaded_video(make_video(tmp_path / "walk.mp4", frames=4), max_mb=10, max_frames=10)
    assert (video.name, video.num_frames, video.height, video.width, video.fps) == ("walk", 4, H, W, 12.0)
    assert np.array_equal(video.first_frame, next(read_video_frames(tmp_path / "walk.mp4")))
    with pytest.raises(InputError, match="walk.mp4 has more than 3 frames.*max_frames"):
        open_uploaded_video(tmp_path / "walk.mp4", max_mb=10, max_frames=3)
    with pytest.raises(InputError, match="walk.mp4 is .* MB; this demo accepts videos up to 0.001 MB"):
        open_uploaded_video(tmp_path / "walk.mp4", max_mb=0.001, max_frames=10)


def test_not_a_video_and_a_video_without_frames_are_messages(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all")
    with pytest.raises(InputError, match=r"notes.mp4 is not a video this demo can read") as error:
        open_uploaded_video(text, max_mb=10, max_frames=10)
    assert str(tmp_path) not in str(error.value)  # the user's file name, not the server's temp path
    empty = tmp_path / "empty.mp4"
    writer = cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"mp4v"), 12, (64, 64))
    writer.release()  # a container with no frames
    with pytest.raises(InputError, match="empty.mp4 has no video frames"):
        open_uploaded_video(empty, max_mb=10, max_frames=10)
    image = tmp_path / "photo.jpg"   # FFmpeg reads an image as a one-frame video
    cv2.imwrite(str(image), np.full((48, 64, 3), 120, np.uint8))
    with pytest.raises(InputError, match="photo.jpg has one frame .*at least two"):
        open_uploaded_video(image, max_mb=10, max_frames=10)


def test_benchmark_val_videos_are_generated_on_first_use(tmp_path):
    videos = BenchmarkVideos(tmp_path / "synthetic", num_train=0, num_val=2, val_lengths=[3, 4], height=64, width=96)
    assert not videos.ready() and videos.names() == []
    first = videos.load(None)
    assert videos.ready() and len(videos.names()) == 2
    assert first.num_frames == 3 and first.first_frame.shape == (64, 96, 3) and first.first_mask.max() >= 1
    assert [f.shape for f in first.frames()] == [(64, 96, 3)] * 3
    with pytest.raises(InputError, match="not a val video"):
        videos.load("nope")


# ----------------------------------------------------------------------------- masks
def rgba(mask_ids: np.ndarray) -> np.ndarray:
    """A painted layer: palette colour of each id where painted (-1 = untouched)."""
    layer = np.zeros((*mask_ids.shape, 4), np.uint8)
    painted = mask_ids >= 0
    layer[painted, :3] = PALETTE[mask_ids[painted]]
    layer[painted, 3] = 255
    return layer


def test_strokes_paint_ids_over_the_base_and_black_erases():
    base = np.zeros((6, 8), np.uint8)
    base[0:3, 0:3] = 1
    strokes = np.full((6, 8), -1)
    strokes[4:6, 4:8] = 2            # a new object
    strokes[0:1, 0:3] = 0            # black: erase part of object 1
    later = np.full((6, 8), -1)
    later[5, 7] = 12                 # a later layer wins
    mask = apply_strokes(base, [rgba(strokes), rgba(later)], (6, 8))
    expected = base.copy()
    expected[4:6, 4:8] = 2
    expected[0, 0:3] = 0
    expected[5, 7] = 12
    assert np.array_equal(mask, expected)
    faint = rgba(strokes)
    faint[..., 3] = np.where(faint[..., 3] > 0, 100, 0)  # mostly transparent anti-aliasing: not painted
    assert np.array_equal(apply_strokes(base, [faint], (6, 8)), base)
    assert brush_colours(2) == ["rgb(0, 0, 0)", "rgb(128, 0, 0)", "rgb(0, 128, 0)"]


def test_strokes_with_an_unknown_colour_or_size_are_messages():
    layer = np.zeros((6, 8, 4), np.uint8)
    layer[2, 2] = (10, 200, 250, 255)
    with pytest.raises(InputError, match=r"rgb\(10, 200, 250\) is not an object colour"):
        apply_strokes(None, [layer], (6, 8))
    with pytest.raises(InputError, match="layer is 8x6 but the video is 9x6"):
        apply_strokes(None, [np.zeros((6, 8, 4), np.uint8)], (6, 9))


def test_uploaded_masks_palette_binary_wrong_size_and_not_an_image(tmp_path):
    ids = first_mask()
    write_mask(tmp_path / "palette.png", ids)
    assert np.array_equal(read_uploaded_mask(tmp_path / "palette.png", (H, W)), ids)
    Image.fromarray((ids > 0).astype(np.uint8) * 255).save(tmp_path / "binary.png")
    assert np.array_equal(read_uploaded_mask(tmp_path / "binary.png", (H, W)), (ids > 0).astype(np.uint8))
    with pytest.raises(InputError, match=f"palette.png is {W}x{H} but the video is 50x40"):
        read_uploaded_mask(tmp_path / "palette.png", (40, 50))
    (tmp_path / "junk.png").write_text("no image here")
    with pytest.raises(InputError, match="junk.png is not a mask this demo can read"):
        read_uploaded_mask(tmp_path / "junk.png", (H, W))


def test_first_mask_without_objects_or_with_more_than_the_id_bank():
    with pytest.raises(InputError, match="holds no object"):
        check_first_mask(np.zeros((4, 4), np.uint8), 10)
    with pytest.raises(InputError, match="holds no object"):
        check_first_mask(None, 10)
    many = np.arange(13, dtype=np.uint8).reshape(1, 13)
    note = check_first_mask(many, 10)
    assert "12 objects" in note and "2 groups of up to 10" in note
    assert "groups" not in check_first_mask(many.clip(0, 3), 10)


def test_grabcut_finds_the_object_in_a_box():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 80, (80, 120, 3)).astype(np.uint8)
    truth = np.zeros((80, 120), bool)
    cv2.circle(truth.view(np.uint8), (60, 40), 18, 1, -1)
    frame[truth] = (230, 200, 30)
    region = grabcut(frame, (82, 62, 36, 18))  # corners in any order
    iou = (region & truth).sum() / (region | truth).sum()
    assert iou > 0.9
    with pytest.raises(InputError, match="too small"):
        grabcut(frame, (10, 10, 12, 30))
    with pytest.raises(InputError, match="whole frame"):
        grabcut(frame, (0, 0, 119, 79))


# ----------------------------------------------------------------------------- runs
def test_run_writes_the_masks_the_python_api_gives(networks, clip, tmp_path):
    board = JobBoard(tmp_path / "jobs")
    job = board.new_job("tab")
    result = run_job(RunRequest(clip, first_mask(), RANDOM, max_short_edge=None), job, networks)
    net = networks.get(RANDOM)[0]
    expected = reference_masks(net, clip.path, first_mask(), max_long_edge=None)
    got = zip_masks(result.zip_path, "mca")
    assert len(got) == clip.num_frames == len(expected)
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))
    assert np.array_equal(got[0], first_mask())
    with av.open(str(result.video_path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"  # plays in a browser
        assert sum(1 for _ in container.decode(stream)) == clip.num_frames
    with zipfile.ZipFile(result.zip_path) as archive:
        assert archive.read("per_frame.csv").decode().splitlines()[0] == "memory,frame,ms,memory_mb,slots"


def test_compare_runs_both_memories_and_only_the_bank_grows(networks, clip, tmp_path):
    result = run_job(RunRequest(clip, first_mask(), RANDOM, memory="mca", compare=True, long_term_gap=1),
                     JobBoard(tmp_path).new_job("tab"), networks)
    assert result.memories == ["mca", "bank"] and result.gaps == {"mca": 1, "bank": 1}
    mca = [s for s in result.stats if s.memory == "mca"]
    bank = [s for s in result.stats if s.memory == "bank"]
    assert [s.slots for s in mca] == [1] + [2] * (clip.num_frames - 1)
    assert [s.slots for s in bank] == list(range(1, clip.num_frames + 1))
    assert len({s.memory_mb for s in mca[1:]}) == 1                      # flat
    assert all(b.memory_mb > a.memory_mb for a, b in zip(bank, bank[1:]))  # grows every frame
    assert len(zip_masks(result.zip_path, "bank")) == clip.num_frames
    assert "bank" in result.summary("bank") and "slots at the end" in result.summary("bank")


def test_more_objects_than_the_id_bank_run_in_groups(networks, tmp_path):
    video = open_uploaded_video(make_video(tmp_path / "many.mp4", frames=2), max_mb=10, max_frames=10)
    mask = np.zeros((H, W), np.uint8)
    for k in range(12):
        mask[(k // 6) * 24:(k // 6) * 24 + 20, (k % 6) * 10:(k % 6) * 10 + 8] = k + 1
    result = run_job(RunRequest(video, mask, RANDOM, max_short_edge=None), JobBoard(tmp_path).new_job("t"), networks)
    expected = reference_masks(networks.get(RANDOM)[0], video.path, mask, max_long_edge=None)
    got = zip_masks(result.zip_path, "mca")
    assert np.array_equal(got[0], mask) and all(np.array_equal(a, b) for a, b in zip(got, expected))


class TrackedSession(InferenceSession):
    alive: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        TrackedSession.alive.append(weakref.ref(self))


def test_cancelled_run_stops_removes_its_files_and_frees_its_session(networks, clip, tmp_path, monkeypatch):
    monkeypatch.setattr(demo_jobs, "InferenceSession", TrackedSession)
    TrackedSession.alive = []
    board = JobBoard(tmp_path / "jobs")
    job = board.new_job("tab")
    seen = []

    def progress(fraction, text):
        seen.append(text)
        if "2/" in text:
            assert board.cancel("tab")  # the Cancel button, mid-run
    with pytest.raises(JobCancelled):
        run_job(RunRequest(clip, first_mask(), RANDOM), job, networks, progress)
    assert not job.folder.exists() and not any(board.root.iterdir())
    assert not any("3/" in t for t in seen)  # stopped before the next frame
    gc.collect()
    assert TrackedSession.alive and all(ref() is None for ref in TrackedSession.alive)
    assert not board.cancel("tab")  # nothing runs any more


def test_closing_a_tab_or_running_again_discards_the_previous_job(tmp_path):
    board = JobBoard(tmp_path / "jobs")
    first = board.new_job("tab-a")
    with first:
        (first.folder / "masks.zip").write_bytes(b"a finished run's files")
    other = board.new_job("tab-b")
    second = board.new_job("tab-a")  # the same tab runs again: its old files go
    assert not first.folder.exists() and second.folder.exists() and other.folder.exists()
    board.close("tab-b")  # the tab closed
    assert not other.folder.exists() and second.folder.exists()
    board.close_all()
    assert not any(board.root.iterdir())


def test_two_sessions_running_at_once_each_get_their_own_masks(networks, tmp_path):
    videos = [open_uploaded_video(make_video(tmp_path / f"v{i}.mp4", frames=4, seed=i), 10, 10) for i in range(2)]
    masks = [first_mask(2), first_mask(1)]
    board = JobBoard(tmp_path / "jobs")
    both_running = threading.Barrier(2, timeout=120)
    results, errors = {}, []

    def session(i):
        def progress(fraction, text):
            if text.startswith("mca: 2/"):
                both_running.wait()  # neither goes on until both are mid-run
        try:
            results[i] = run_job(RunRequest(videos[i], masks[i], RANDOM), board.new_job(f"tab-{i}"), networks,
                                 progress)
        except Exception as e:  # surfaced below
            errors.append(e)
    threads = [threading.Thread(target=session, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    net = networks.get(RANDOM)[0]
    for i in range(2):
        expected = reference_masks(net, videos[i].path, masks[i], max_long_edge=None)
        got = zip_masks(results[i].zip_path, "mca")
        assert all(np.array_equal(a, b) for a, b in zip(got, expected)) and len(got) == 4
    assert results[0].zip_path.parent != results[1].zip_path.parent


def test_propagate_checks_the_mask_size(networks, clip, tmp_path):
    with pytest.raises(ValueError, match="mask is"):
        propagate(networks.get(RANDOM)[0], clip, np.ones((10, 10), np.uint8), tmp_path, label="mca")


def test_events_that_may_leave_the_editor_unchanged_show_progress_on_their_status_line(tmp_path):
    """A refused mask, a failed GrabCut or benchmark load return only their status line; as the editor's progress
    target such an event left Gradio's "processing" over the canvas for good in about 1 of 5 browser runs."""
    from mavos.demo.app import build_app

    app, board = build_app(DemoSettings(work_dir=str(tmp_path / "jobs"), root=str(tmp_path)))
    try:
        by_name = {fn.name: fn for fn in app.fns.values()}
        editor = next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == "mask-editor")
        status_of = {"load_mask": "mask-status", "apply_grabcut": "mask-status", "load_benchmark": "video-status"}
        for name, status_id in status_of.items():
            fn = by_name[name]
            assert editor in fn.outputs, name  # it does give the editor a new value when it succeeds
            assert [b.elem_id for b in fn.show_progress_on or []] == [status_id], name
        # the events that always give the editor a new value keep their progress over it
        assert by_name["clear_mask"].show_progress_on is None and by_name["load_upload"].show_progress_on is None
    finally:
        board.close_all()
