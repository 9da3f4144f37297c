"""Training clips (sampling, merging, ids, clip-consistent augmentation) and the VOSDataModule."""
from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import torch

from mavos.data.clips import ClipConfig, VideoTrainSet, sample_clip_positions
from mavos.data.datamodule import EpochSampler, VOSDataModule
from mavos.data.davis import DavisReader
from mavos.data.io import write_frame, write_mask
from mavos.data.synthetic import SyntheticPrepare

H, W = 48, 64
# no appearance or geometric change: what comes out is what went in
PLAIN = dict(short_edge=None, scale=(1.0, 1.0), crop_size=(H, W), flip_prob=0.0, color_jitter=False,
             gray_prob=0.0, blur_prob=0.0, merge_prob=0.0, shuffle_ids=False, reverse_prob=0.0, min_object_pixels=1)


def _write_davis(root: Path, videos: dict[str, tuple[list[np.ndarray], list[np.ndarray]]]) -> DavisReader:
    """Write videos (frames, masks) as a DAVIS train split and return its reader."""
    for name, (frames, masks) in videos.items():
        for t, (f, m) in enumerate(zip(frames, masks)):
            write_frame(root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg", f)
            write_mask(root / "Annotations" / "480p" / name / f"{t:05d}.png", m)
    (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "2017" / "train.txt").write_text("\n".join(videos) + "\n")
    return DavisReader(root, split="train")


def _index_frames(n: int, h: int = H, w: int = W) -> list[np.ndarray]:
    """Frame t is uniformly grey with value 10 * t: the sampled index can be read back from pixels."""
    return [np.full((h, w, 3), 10 * t, np.uint8) for t in range(n)]


def _decode_indices(frames: torch.Tensor) -> list[int]:
    return [int(round(float(f.mean()) * 255 / 10)) for f in frames]


def _box_mask(boxes: dict[int, tuple[int, int, int, int]], h: int = H, w: int = W) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    for obj, (y0, y1, x0, x1) in boxes.items():
        m[y0:y1, x0:x1] = obj
    return m


# ---------------------------------------------------------------------------------------- sampling
def test_sample_clip_positions_gaps_and_clipping() -> None:
    rng = np.random.default_rng(0)
    seen_gaps, starts = set(), set()
    for _ in range(300):
        p = sample_clip_positions(30, 5, 3, 0.0, rng)
        gaps = np.diff(p)
        assert len(p) == 5 and gaps.min() >= 1 and gaps.max() <= 3 and p[0] >= 0 and p[-1] < 30
        seen_gaps |= set(gaps.tolist())
        starts.add(p[0])
    assert seen_gaps == {1, 2, 3}
    assert 0 in starts and max(starts) >= 15
    # a 6-frame video cannot hold 5 frames with gaps of 3: the gap is clipped to 1
    assert all(sample_clip_positions(6, 5, 3, 0.0, rng) in ([0, 1, 2, 3, 4], [1, 2, 3, 4, 5]) for _ in range(20))
    # shorter than the clip: every frame used, in order, some repeated
    p = sample_clip_positions(3, 5, 3, 0.0, rng)
    assert sorted(p) == p and set(p) == {0, 1, 2}
    p = sample_clip_positions(30, 5, 3, 1.0, rng)
    assert np.all(np.diff(p) <= -1)


def test_clip_frames_respect_order_and_max_gap(tmp_path: Path) -> None:
    masks = [_box_mask({1: (10, 30, 10, 30)})] * 25
    reader = _write_davis(tmp_path, {"count": (_index_frames(25), masks)})
    torch.manual_seed(0)
    forward = VideoTrainSet(reader, max_gap=3).dataset(ClipConfig(clip_len=5, **PLAIN))
    gaps = set()
    for i in range(40):
        idx = _decode_indices(forward[i]["frames"])
        d = np.diff(idx)
        assert d.min() >= 1 and d.max() <= 3, idx
        gaps |= set(d.tolist())
    assert gaps == {1, 2, 3}
    backward = VideoTrainSet(reader, max_gap=3).dataset(ClipConfig(clip_len=5, **{**PLAIN, "reverse_prob": 1.0}))
    for i in range(10):
        d = np.diff(_decode_indices(backward[i]["frames"]))
        assert d.max() <= -1 and d.min() >= -3


# ------------------------------------------------------------------------------ outputs and ids
def test_clip_shapes_dtypes_and_contiguous_ids(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(6)]
    masks = [_box_mask({2: (5, 20, 5, 20), 7: (25, 40, 30, 50), 9: (5, 15, 40, 60)})] * 6
    reader = _write_davis(tmp_path, {"v": (frames, masks)})
    cfg = ClipConfig(clip_len=3, crop_size=(32, 40), short_edge=40, max_objects=10)
    ds = VideoTrainSet(reader).dataset(cfg)
    torch.manual_seed(0)
    for i in range(10):
        s = ds[i]
        assert s["frames"].shape == (3, 3, 32, 40) and s["frames"].dtype == torch.float32
        assert 0.0 <= float(s["frames"].min()) and float(s["frames"].max()) <= 1.0
        assert s["masks"].shape == (3, 32, 40) and s["masks"].dtype == torch.int64
        k = s["num_objects"]
        assert k.dtype == torch.int64 and k.ndim == 0 and 1 <= int(k) <= 3
        assert set(s["masks"].unique().tolist()) <= set(range(int(k) + 1))
        assert set(s["masks"][0].unique().tolist()) - {0} == set(range(1, int(k) + 1))
        assert s["name"] == "v"


def test_objects_absent_from_first_frame_are_dropped(tmp_path: Path) -> None:
    masks = [_box_mask({1: (5, 20, 5, 20)} if t < 5 else {1: (5, 20, 5, 20), 2: (25, 40, 30, 50)}) for t in range(12)]
    reader = _write_davis(tmp_path, {"late": (_index_frames(12), masks)})
    ds = VideoTrainSet(reader, max_gap=2).dataset(ClipConfig(clip_len=3, **PLAIN))
    torch.manual_seed(0)
    cases = set()
    for i in range(30):
        s = ds[i]
        first = _decode_indices(s["frames"])[0]
        expect = 1 if first < 5 else 2
        assert int(s["num_objects"]) == expect and int(s["masks"].max()) == expect
        cases.add(expect)
    assert cases == {1, 2}


def test_clip_starts_on_a_frame_with_objects(tmp_path: Path) -> None:
    masks = [_box_mask({1: (5, 20, 5, 20)} if t >= 12 else {}) for t in range(20)]
    reader = _write_davis(tmp_path, {"empty-start": (_index_frames(20), masks)})
    ds = VideoTrainSet(reader, max_gap=1).dataset(ClipConfig(clip_len=3, **{**PLAIN, "reverse_prob": 0.5}))
    torch.manual_seed(0)
    for i in range(30):
        s = ds[i]
        assert _decode_indices(s["frames"])[0] >= 12
        assert int(s["num_objects"]) == 1 and bool((s["masks"][0] == 1).any())


def test_max_objects_and_id_shuffling(tmp_path: Path) -> None:
    quadrants = {1: (0, 24, 0, 32), 2: (0, 24, 32, 64), 3: (24, 48, 0, 32), 4: (24, 48, 32, 64)}
    reader = _write_davis(tmp_path, {"four": (_index_frames(6), [_box_mask(quadrants)] * 6)})
    torch.manual_seed(0)
    ds = VideoTrainSet(reader).dataset(ClipConfig(clip_len=2, **{**PLAIN, "max_objects": 2, "shuffle_ids": True}))
    subsets, labels_of_q1 = set(), set()
    for i in range(40):
        s = ds[i]
        assert int(s["num_objects"]) == 2
        m = s["masks"][0]
        label = {q: int(m[(y0 + y1) // 2, (x0 + x1) // 2]) for q, (y0, y1, x0, x1) in quadrants.items()}
        kept = frozenset(q for q, v in label.items() if v)
        assert len(kept) == 2 and sorted(label[q] for q in kept) == [1, 2]
        subsets.add(kept)
        if 1 in kept:
            labels_of_q1.add(label[1])
    assert len(subsets) > 2  # a random choice of objects, not always the same two
    assert labels_of_q1 == {1, 2}  # ids are shuffled
    ordered = VideoTrainSet(reader).dataset(ClipConfig(clip_len=2, **PLAIN))
    assert torch.equal(ordered[0]["masks"][0], torch.from_numpy(_box_mask(quadrants)).long())


def test_merge_pastes_second_video_objects(tmp_path: Path) -> None:
    a_box = (10, 30, 5, 26)
    frames_a = [np.full((H, W, 3), (200, 30, 30), np.uint8)] * 4
    masks_a = [_box_mask({1: a_box})] * 4
    # video B is half the size: it is resized to A's size before pasting; its object 1 overlaps A's
    frames_b = [np.full((H // 2, W // 2, 3), (30, 30, 200), np.uint8)] * 4
    masks_b = [_box_mask({1: (5, 15, 10, 20), 2: (17, 22, 22, 30)}, H // 2, W // 2)] * 4
    reader = _write_davis(tmp_path, {"a": (frames_a, masks_a), "b": (frames_b, masks_b)})
    ds = VideoTrainSet(reader).dataset(ClipConfig(clip_len=2, **{**PLAIN, "merge_prob": 1.0}))
    torch.manual_seed(0)
    expected = _box_mask({1: a_box, 2: (10, 30, 20, 40), 3: (34, 44, 44, 60)})  # B's boxes at 2x
    s = ds[0]  # item 0 comes from video "a"
    assert int(s["num_objects"]) == 3
    for t in range(2):
        assert torch.equal(s["masks"][t], torch.from_numpy(expected).long())
        frame = s["frames"][t]
        blue_region = torch.from_numpy(expected >= 2)
        red_region = torch.from_numpy(expected == 1)
        assert float(frame[2][blue_region].mean()) > 0.6 > float(frame[0][blue_region].mean())
        assert float(frame[0][red_region].mean()) > 0.6 > float(frame[2][red_region].mean())
    assert int(ds[1]["num_objects"]) == 3  # item 1 comes from "b", with "a" pasted on top
    no_merge = VideoTrainSet(reader).dataset(ClipConfig(clip_len=2, **PLAIN))
    assert int(no_merge[0]["num_objects"]) == 1


# ------------------------------------------------------------------------------------- augmentation
def test_identical_frames_get_identical_augmentation(tmp_path: Path) -> None:
    """One set of random parameters per clip: identical input frames must stay identical."""
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    mask = _box_mask({1: (8, 30, 8, 30), 2: (20, 44, 36, 60)})
    reader = _write_davis(tmp_path, {"same": ([frame] * 5, [mask] * 5)})
    cfg = ClipConfig(clip_len=5, crop_size=(32, 40), short_edge=40, scale=(0.7, 1.3), flip_prob=0.5,
                     color_jitter=True, gray_prob=0.5, blur_prob=0.5, merge_prob=0.0)
    ds = VideoTrainSet(reader).dataset(cfg)
    torch.manual_seed(0)
    firsts = []
    for i in range(12):
        s = ds[i]
        for t in range(1, 5):
            assert torch.equal(s["frames"][t], s["frames"][0])
            assert torch.equal(s["masks"][t], s["masks"][0])
        firsts.append(s["frames"][0])
    assert sum(not torch.equal(f, firsts[0]) for f in firsts[1:]) >= 10  # but clips differ from each other
    torch.manual_seed(5)
    a = ds[0]
    torch.manual_seed(5)
    b = ds[0]
    assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["masks"], b["masks"])  # reproducible


def test_moving_marker_moves_by_one_transform(tmp_path: Path) -> None:
    """A marker moving 4 px per frame must, after augmentation, still move on a straight line at a constant
    step of 4 * scale (sign flipped by a horizontal flip): per-frame parameters would break that."""
    n = 6
    frames, masks = [], []
    for t in range(n):
        f = np.full((H, W, 3), 60, np.uint8)
        x = 16 + 4 * t
        f[20:28, x:x + 8] = 255
        frames.append(f)
        masks.append(_box_mask({1: (20, 28, x, x + 8)}))
    reader = _write_davis(tmp_path, {"marker": (frames, masks)})
    # a crop larger than any scaled frame: the marker is never cut, so its centroid is exact
    cfg = ClipConfig(clip_len=n, crop_size=(64, 84), short_edge=None, scale=(0.7, 1.3), flip_prob=0.5,
                     color_jitter=False, gray_prob=0.0, blur_prob=0.0, merge_prob=0.0, reverse_prob=0.0)
    ds = VideoTrainSet(reader, max_gap=1).dataset(cfg)
    torch.manual_seed(0)
    signs, steps = set(), []
    for i in range(12):
        m = ds[i]["masks"]
        centres = []
        for t in range(n):
            ys, xs = torch.nonzero(m[t] == 1, as_tuple=True)
            centres.append((float(xs.float().mean()), float(ys.float().mean())))
        c = np.array(centres)
        d = np.diff(c, axis=0)
        assert np.abs(np.diff(d, axis=0)).max() <= 1.0, c  # constant velocity
        assert np.abs(d[:, 1]).max() <= 0.5  # horizontal motion stays horizontal
        step = float(np.mean(d[:, 0]))
        assert 4 * 0.7 - 0.5 <= abs(step) <= 4 * 1.3 + 0.5
        signs.add(np.sign(step))
        steps.append(abs(step))
    assert signs == {-1.0, 1.0}
    assert max(steps) - min(steps) > 0.5  # the scale is random


def test_masks_stay_aligned_with_pixels(tmp_path: Path) -> None:
    """After resizing, scaling, cropping and flipping, a bright box and its mask coincide to within a pixel."""
    frame = np.full((H, W, 3), 40, np.uint8)
    frame[10:34, 12:40] = 255  # a luminance edge: JPEG keeps it sharp (colour edges are subsampled)
    mask = _box_mask({1: (10, 34, 12, 40)})
    reader = _write_davis(tmp_path, {"box": ([frame] * 3, [mask] * 3)})
    cfg = ClipConfig(clip_len=3, crop_size=(32, 40), short_edge=56, scale=(0.7, 1.3), flip_prob=0.5,
                     color_jitter=False, gray_prob=0.0, blur_prob=0.0, merge_prob=0.0)
    ds = VideoTrainSet(reader).dataset(cfg)
    kernel = np.ones((3, 3), np.uint8)
    torch.manual_seed(0)
    for i in range(12):
        s = ds[i]
        for t in range(3):
            bright = (s["frames"][t].min(0).values > 0.6).numpy().astype(np.uint8)
            obj = (s["masks"][t] == 1).numpy().astype(np.uint8)
            assert not np.any(bright & (1 - cv2.dilate(obj, kernel))), f"bright pixels outside the mask, item {i}"
            assert not np.any(cv2.erode(obj, kernel) & (1 - bright)), f"mask interior not bright, item {i}"


def test_clip_dataset_pickles(tmp_path: Path) -> None:
    reader = _write_davis(tmp_path, {"v": (_index_frames(4), [_box_mask({1: (5, 20, 5, 20)})] * 4)})
    ds = VideoTrainSet(reader).dataset(ClipConfig(clip_len=2, crop_size=(32, 32), short_edge=None))
    ds[0]  # builds the transform, which must not travel with the pickle
    clone = pickle.loads(pickle.dumps(ds))
    assert clone[0]["frames"].shape == (2, 3, 32, 32)


# --------------------------------------------------------------------------------------- datamodule
SMALL = dict(num_train=2, num_val=2, train_length=6, val_lengths=[8, 12], height=64, width=96, max_objects=3)


def test_datamodule_generates_data_and_batches(tmp_path: Path) -> None:
    root = tmp_path / "synthetic"
    dm = VOSDataModule(
        train_sets=[VideoTrainSet(DavisReader(root, "train"))],
        val_reader=DavisReader(root, "val"),
        clip=dict(clip_len=3, crop_size=[32, 48], short_edge=None),
        batch_size=2, num_workers=0, samples_per_epoch=5,
        prepare=SyntheticPrepare(root, **SMALL),
    )
    assert not root.exists()  # nothing touched the disk before prepare_data
    dm.prepare_data()
    batches = list(dm.train_dataloader())
    assert [b["frames"].shape[0] for b in batches] == [2, 2, 1]
    b = batches[0]
    assert b["frames"].shape == (2, 3, 3, 32, 48) and b["frames"].dtype == torch.float32
    assert b["masks"].shape == (2, 3, 32, 48) and b["masks"].dtype == torch.int64
    assert b["num_objects"].shape == (2,) and bool((b["num_objects"] >= 1).all())
    assert all(name.startswith("synth-train-") for name in b["name"])
    assert [len(v) for v in dm.val_videos()] == [8, 12]


def test_datamodule_concatenates_train_sets(tmp_path: Path) -> None:
    root = tmp_path / "synthetic"
    SyntheticPrepare(root, **SMALL)()
    dm = VOSDataModule(
        train_sets=[VideoTrainSet(DavisReader(root, "train"), repeat=2), VideoTrainSet(DavisReader(root, "val"))],
        clip=ClipConfig(clip_len=2, crop_size=(32, 32), short_edge=None), batch_size=4, num_workers=0,
    )
    assert len(dm.train_dataset()) == 2 * 2 + 2
    assert len(dm.train_dataloader()) == 2
    assert dm.val_videos() == []


def test_epoch_sampler_is_deterministic_per_epoch() -> None:
    s = EpochSampler(num_items=7, num_samples=50, seed=3)
    first = list(s)
    assert len(first) == len(s) == 50 and set(first) <= set(range(7))
    assert list(EpochSampler(7, 50, seed=3)) == first  # every DDP rank draws the same list
    s.set_epoch(1)
    assert list(s) != first
