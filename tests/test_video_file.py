"""Video files (decord and PyAV) and generic frame folders as VideoRecords."""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from mavos.data import video_file
from mavos.data.io import read_frame, write_frame, write_mask
from mavos.data.records import DatasetError
from mavos.data.video_file import FrameFolderReader, VideoFileReader, read_video_frames

H, W, N = 48, 64, 8


def _colour(i: int) -> tuple[int, int, int]:
    """RGB of frame i: red rises, green falls, so order and content are both checkable."""
    return (20 + 25 * i, 230 - 25 * i, 90)


@pytest.fixture()
def mp4(tmp_path) -> Path:
    return _write_mp4(tmp_path / "clip.mp4", N)


def _check_frames(frames: list[np.ndarray]) -> None:
    assert len(frames) == N
    for i, f in enumerate(frames):
        assert f.shape == (H, W, 3) and f.dtype == np.uint8
        mean = f.reshape(-1, 3).mean(0)
        assert np.allclose(mean, _colour(i), atol=8), (i, mean)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_read_video_frames_backends(mp4, backend):
    if backend == "decord":
        pytest.importorskip("decord")
    _check_frames(list(read_video_frames(mp4, backend=backend)))


def test_auto_falls_back_to_pyav_without_decord(mp4, monkeypatch):
    monkeypatch.setitem(sys.modules, "decord", None)  # `import decord` now raises ImportError
    _check_frames(list(read_video_frames(mp4)))


@pytest.mark.parametrize("degrees", [90, 180, -90])
def test_a_rotated_phone_video_reads_upright_as_a_player_shows_it(tmp_path, degrees):
    """A display rotation (portrait phone videos): decord cannot decode 90 / 270 degrees, and PyAV returns the
    frames as stored; the frames come out turned as OpenCV's player-style reader (auto-orientation) shows them."""
    av = pytest.importorskip("av")
    path = tmp_path / f"rot{degrees}.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.height, stream.width, stream.pix_fmt = H, W, "yuv420p"
        if not hasattr(stream, "set_display_rotation"):
            pytest.skip("this PyAV cannot write a display rotation")
        stream.set_display_rotation(degrees)
        for i in range(4):
            rgb = np.zeros((H, W, 3), np.uint8)
            rgb[: H // 3, : W // 4] = _colour(i)   # a block in the stored top-left corner
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    capture = cv2.VideoCapture(str(path))
    shown = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        shown.append(bgr[..., ::-1])
    frames = list(read_video_frames(path))
    upright = (W, H, 3) if degrees % 180 else (H, W, 3)
    assert len(frames) == len(shown) == 4 and frames[0].shape == shown[0].shape == upright
    assert max(int(np.abs(a.astype(int) - b).max()) for a, b in zip(frames, shown)) <= 2


@pytest.mark.parametrize("backend", ["auto", "decord", "pyav"])
def test_unreadable_video_names_it(tmp_path, backend):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video" * 50)
    with pytest.raises(DatasetError, match=r"broken\.mp4"):
        read_video_frames(bad, backend=backend)
    with pytest.raises(DatasetError, match=r"missing\.mp4: video file does not exist"):
        read_video_frames(tmp_path / "missing.mp4")


def _write_mp4(path: Path, frames: int, shift: int = 0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (W, H))
    assert writer.isOpened()
    for i in range(frames):
        rgb = np.empty((H, W, 3), np.uint8)
        rgb[:] = _colour(i + shift)
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


@pytest.mark.parametrize("backend", ["auto", "decord", "pyav"])
def test_video_frames_say_how_many_and_how_fast(mp4, backend):
    if backend == "decord":
        pytest.importorskip("decord")
    frames = read_video_frames(mp4, backend=backend)
    assert frames.count() == N and frames.fps == pytest.approx(10.0)   # written at 10 fps above
    assert len(list(frames)) == N


@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_video_file_reader_lists_the_file_and_writes_nothing(mp4, tmp_path, backend):
    """The record reads the video itself: no frame is decoded to disk, and its frames, read in order, are the
    decoder's own pixels (a JPEG copy, what a frame cache would hold, differs)."""
    mask = np.zeros((H, W), np.uint8)
    mask[5:20, 5:20] = 1
    mask[30:40, 40:60] = 3
    write_mask(tmp_path / "first.png", mask)
    before = sorted(tmp_path.rglob("*"))
    (video,) = VideoFileReader(mp4, tmp_path / "first.png", backend=backend).videos()
    assert sorted(tmp_path.rglob("*")) == before
    assert video.name == "clip" and video.video_file == mp4 and len(video) == N
    assert video.frame_names == [f"{i:05d}" for i in range(N)]
    assert video.annotations == {0: tmp_path / "first.png"}
    assert video.object_first_frame == {1: 0, 3: 0}
    assert video.meta["fps"] == pytest.approx(10.0)
    read = video_file.frame_reader(video)
    frames = [read(i) for i in range(N)]
    _check_frames(frames)
    decoded = list(read_video_frames(mp4, backend=backend))
    assert all(np.array_equal(a, b) for a, b in zip(frames, decoded))
    write_frame(tmp_path / "copy.jpg", decoded[3])
    assert not np.array_equal(read_frame(tmp_path / "copy.jpg"), decoded[3])


def test_a_video_file_is_read_in_order_and_a_shortened_one_is_named(tmp_path):
    _write_mp4(tmp_path / "clip.mp4", N)
    write_mask(tmp_path / "m.png", np.pad(np.ones((4, 4), np.uint8), ((0, H - 4), (0, W - 4))))
    (video,) = VideoFileReader(tmp_path / "clip.mp4", tmp_path / "m.png").videos()
    read = video_file.frame_reader(video)
    assert np.allclose(read(2).reshape(-1, 3).mean(0), _colour(2), atol=8)    # frames 0, 1 passed over
    assert np.allclose(read(5).reshape(-1, 3).mean(0), _colour(5), atol=8)
    with pytest.raises(ValueError, match=r"clip\.mp4: frame 3 asked for after frame 5"):
        read(3)
    _write_mp4(tmp_path / "clip.mp4", 5)   # cut to 5 frames after it was listed with 8
    with pytest.raises(DatasetError, match=r"clip\.mp4: the video ends after 5 frames, but 8 were listed"):
        video_file.frame_reader(video)(7)


def test_a_video_file_is_not_a_training_video(mp4, tmp_path):
    from mavos.data.clips import ClipConfig, ClipDataset

    write_mask(tmp_path / "m.png", np.pad(np.ones((4, 4), np.uint8), ((0, H - 4), (0, W - 4))))
    with pytest.raises(DatasetError, match=r"clip\.mp4: a video file is read in order.*data=frames"):
        ClipDataset(VideoFileReader(mp4, tmp_path / "m.png").videos(), ClipConfig())


def test_video_mask_of_another_size_names_both(mp4, tmp_path):
    write_mask(tmp_path / "small.png", np.ones((H // 2, W), np.uint8))
    with pytest.raises(DatasetError, match=r"small\.png: mask is 64x24 \(WxH\) but the frames of .*clip\.mp4 are 64x48"):
        VideoFileReader(mp4, tmp_path / "small.png").videos()


def test_video_unreadable_names_it(tmp_path):
    (tmp_path / "bad.avi").write_bytes(b"\x00" * 1000)
    write_mask(tmp_path / "m.png", np.ones((H, W), np.uint8))
    with pytest.raises(DatasetError, match=r"bad\.avi"):
        VideoFileReader(tmp_path / "bad.avi", tmp_path / "m.png").videos()


# ------------------------------------------------------------------------------- frame folders
def _folder(tmp_path: Path) -> tuple[Path, Path]:
    frames, masks = tmp_path / "frames", tmp_path / "masks"
    for i in range(12):
        write_frame(frames / f"frame{i}.jpg", np.full((H, W, 3), 10 * i, np.uint8))
    first = np.zeros((H, W), np.uint8)
    first[:10, :10] = 1
    later = first.copy()
    later[20:30, 20:30] = 2
    write_mask(masks / "frame2.png", first)
    write_mask(masks / "frame10.png", later)
    return frames, masks


def test_frame_folder_natural_order_and_objects_added_later(tmp_path):
    frames, masks = _folder(tmp_path)
    (video,) = FrameFolderReader(frames, masks).videos()
    assert video.frame_names == [f"frame{i}" for i in range(12)]  # frame10 after frame9
    assert sorted(video.annotations) == [2, 10]
    assert video.object_first_frame == {1: 2, 2: 10}
    assert video.meta["start_frame"] == 2
    assert video.scored_frames == list(range(2, 12))


def test_frame_folder_errors_name_the_file(tmp_path):
    frames, masks = _folder(tmp_path)
    write_mask(masks / "frame99.png", np.ones((H, W), np.uint8))
    with pytest.raises(DatasetError, match=r"frame99\.png.*no frame image"):
        FrameFolderReader(frames, masks).videos()
    (masks / "frame99.png").unlink()

    write_mask(masks / "frame5.png", np.ones((H, W + 2), np.uint8))
    with pytest.raises(DatasetError, match=r"frame5\.png.*66x48.*frame5\.jpg.*64x48"):
        FrameFolderReader(frames, masks).videos()
    (masks / "frame5.png").unlink()

    (frames / "frame2.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(DatasetError, match=r"frame2\.jpg: cannot read image"):
        FrameFolderReader(frames, masks).videos()


def test_a_black_and_white_mask_with_soft_edges_or_jpeg_noise_is_one_object(tmp_path):
    """An editor's anti-aliased brush or a mask saved as JPEG is still one object (greys thresholded at 128), not
    a dozen objects of edge greys with the object itself taken for void; a greyscale id mask stays ids."""
    from PIL import Image

    from mavos.data.io import is_binary_mask_file, read_user_mask

    square = np.zeros((60, 80), np.uint8)
    square[15:45, 20:60] = 255
    soft = cv2.GaussianBlur(square, (3, 3), 0.8)   # an anti-aliased brush: greys along the edge
    assert len(np.unique(soft)) > 5
    Image.fromarray(soft).save(tmp_path / "soft.png")
    cv2.imwrite(str(tmp_path / "noisy.jpg"), square, [cv2.IMWRITE_JPEG_QUALITY, 75])
    for name in ("soft.png", "noisy.jpg"):
        mask = read_user_mask(tmp_path / name)
        assert set(np.unique(mask).tolist()) == {0, 1} and is_binary_mask_file(tmp_path / name)
        inner, outer = mask[17:43, 22:58], np.concatenate([mask[:12].ravel(), mask[48:].ravel()])
        assert inner.all() and not outer.any()   # the square, whatever its edge pixels became
    ids = np.zeros((60, 80), np.uint8)
    ids[10:20, 10:20], ids[30:40, 30:40], ids[0, :] = 1, 2, 255   # objects 1, 2 and a void row
    Image.fromarray(ids).save(tmp_path / "ids.png")
    assert not is_binary_mask_file(tmp_path / "ids.png")
    assert set(np.unique(read_user_mask(tmp_path / "ids.png")).tolist()) == {0, 1, 2, 255}


def test_a_one_frame_video_is_refused_as_the_demo_does(tmp_path):
    _write_mp4(tmp_path / "still.mp4", 1)
    write_mask(tmp_path / "m.png", np.pad(np.ones((4, 4), np.uint8), ((0, H - 4), (0, W - 4))))
    with pytest.raises(DatasetError, match=r"still\.mp4: one frame \(an image\?\); a video needs at least two"):
        VideoFileReader(tmp_path / "still.mp4", tmp_path / "m.png").videos()
