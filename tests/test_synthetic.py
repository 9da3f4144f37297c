"""The procedural DAVIS-layout benchmark: determinism, layout, and that it poses a real tracking task."""
from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest

import mavos.data.synthetic as synthetic
from mavos.data.davis import DavisReader
from mavos.data.io import read_frame, read_mask
from mavos.data.records import DatasetError
from mavos.data.synthetic import SyntheticPrepare, ensure_synthetic_davis, generate_synthetic_davis

SMALL = dict(num_train=2, num_val=2, train_length=6, val_lengths=[8, 12], height=64, width=96, max_objects=3)


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _all_masks(video) -> np.ndarray:
    return np.stack([read_mask(video.annotations[t]) for t in range(len(video))])


@pytest.fixture(scope="module")
def default_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dataset with the default (quick-start) parameters, generated once for this module."""
    return ensure_synthetic_davis(tmp_path_factory.mktemp("synthetic") / "davis")


def test_same_seed_same_bytes_different_seed_different(tmp_path: Path) -> None:
    a = _hashes(generate_synthetic_davis(tmp_path / "a", seed=3, **SMALL))
    b = _hashes(generate_synthetic_davis(tmp_path / "b", seed=3, **SMALL))
    c = _hashes(generate_synthetic_davis(tmp_path / "c", seed=4, **SMALL))
    assert a == b
    assert set(a) == set(c)
    frames = [k for k in a if k.endswith(".jpg")]
    assert len(frames) == 2 * 6 + 8 + 12
    assert all(a[k] != c[k] for k in frames if k.endswith("00000.jpg"))


def test_layout_is_davis_2017(tmp_path: Path) -> None:
    root = generate_synthetic_davis(tmp_path / "syn", **SMALL)
    assert (root / "ImageSets" / "2017" / "train.txt").read_text().split() == ["synth-train-000", "synth-train-001"]
    train = DavisReader(root, "train").videos()
    val = DavisReader(root, "val").videos()
    assert [len(v) for v in train] == [6, 6]
    assert [len(v) for v in val] == [8, 12]
    assert not {v.name for v in train} & {v.name for v in val}
    for v in train + val:
        assert v.frame_names == [f"{t:05d}" for t in range(len(v))]
        assert sorted(v.annotations) == list(range(len(v)))  # dense
        assert read_frame(v.frames[0]).shape == (64, 96, 3)
        assert 1 <= len(v.object_ids) <= 3
    # train and val videos are different content, not renamed copies
    assert not np.array_equal(read_frame(train[0].frames[0]), read_frame(val[0].frames[0]))
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp folders left behind


def test_every_object_visible_in_first_frame_and_masks_dense(default_root: Path) -> None:
    for split in ("train", "val"):
        for v in DavisReader(default_root, split).videos():
            masks = _all_masks(v)
            counts = np.bincount(masks[0].ravel(), minlength=256)
            ids_anywhere = set(np.unique(masks).tolist()) - {0}
            assert ids_anywhere == set(v.object_ids), v.name  # no object first appears later
            assert all(counts[o] >= 40 for o in v.object_ids), v.name
            assert 1 <= len(v.object_ids) <= 5


def test_default_sizes_and_long_val_video(default_root: Path) -> None:
    train = DavisReader(default_root, "train").videos()
    val = DavisReader(default_root, "val").videos()
    assert len(train) == 12 and all(len(v) == 40 for v in train)
    assert [len(v) for v in val] == [60, 60, 120, 300]
    assert read_frame(val[0].frames[0]).shape == (240, 432, 3)
    assert len({len(v.object_ids) for v in train}) > 1  # the number of objects varies


def test_an_object_leaves_the_frame_and_comes_back(default_root: Path) -> None:
    (long_video,) = [v for v in DavisReader(default_root, "val").videos() if len(v) == 300]
    present = _all_masks(long_video)[:, None] == np.array(long_video.object_ids)[None, :, None, None]
    visible = present.any(axis=(2, 3))  # (T, objects)
    found = False
    for k in range(visible.shape[1]):
        gone = np.nonzero(~visible[:, k])[0]
        if len(gone) and visible[gone[0]:, k].any():
            found = True
    assert found


def test_copying_the_first_mask_scores_poorly(default_root: Path) -> None:
    """Objects travel several times their size, so the trivial baseline must fail (mean IoU < 0.5)."""
    ious = []
    for v in DavisReader(default_root, "val").videos():
        masks = _all_masks(v)
        for o in v.object_ids:
            first = masks[0] == o
            for t in range(1, len(v)):
                gt = masks[t] == o
                union = np.logical_or(first, gt).sum()
                ious.append(np.logical_and(first, gt).sum() / union if union else 1.0)
    assert np.mean(ious) < 0.5


def test_motion_is_smooth(default_root: Path) -> None:
    """Centroids of unoccluded, uncut objects move at most a fraction of the object's size per frame."""
    steps = []
    for v in DavisReader(default_root, "train").videos():
        masks = _all_masks(v)
        h, w = masks.shape[1:]
        for o in v.object_ids:
            prev = None
            for t in range(len(v)):
                ys, xs = np.nonzero(masks[t] == o)
                if len(xs) == 0 or xs.min() == 0 or ys.min() == 0 or xs.max() == w - 1 or ys.max() == h - 1:
                    prev = None
                    continue
                cur = (np.array([xs.mean(), ys.mean()]), len(xs))
                if prev is not None and 0.85 < cur[1] / prev[1] < 1.15:
                    steps.append(np.linalg.norm(cur[0] - prev[0]) / np.sqrt(cur[1]))
                prev = cur
    steps = np.array(steps)
    assert np.percentile(steps, 95) < 0.3
    assert np.median(steps) > 0.03  # they do move


def test_ensure_generates_only_when_missing_or_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "syn"
    ensure_synthetic_davis(root, **SMALL)
    first = _hashes(root)

    def boom(*args, **kwargs):
        raise AssertionError("regenerated although nothing changed")

    with monkeypatch.context() as m:
        m.setattr(synthetic, "generate_synthetic_davis", boom)
        ensure_synthetic_davis(root, **SMALL)
    changed = ensure_synthetic_davis(root, **{**SMALL, "seed": 1})
    assert _hashes(changed) != first
    assert "seed\": 1" in (root / "meta.json").read_text()


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = synthetic._write_video

    def fail_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_write_video", fail_on_second)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_davis(tmp_path / "syn", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_folders_left_by_killed_runs_are_removed_once_stale(tmp_path: Path) -> None:
    """A SIGKILL mid-generation leaves its build (or swap) folder beside the dataset; the next generation deletes
    those untouched for over an hour and keeps a fresh one (a generation running beside it), and nothing else."""
    import os
    import time

    stale_build, stale_swap = tmp_path / ".syn.tmp-0badc0de", tmp_path / ".syn.old-0badc0de"
    running, other = tmp_path / ".syn.tmp-12345678", tmp_path / ".other.tmp-0badc0de"
    for folder in (stale_build, stale_swap, running, other):
        (folder / "JPEGImages").mkdir(parents=True)
    two_hours_ago = time.time() - 7200
    for folder in (stale_build, stale_swap, other):
        os.utime(folder, (two_hours_ago, two_hours_ago))
    generate_synthetic_davis(tmp_path / "syn", **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-0badc0de", ".syn.tmp-12345678", "syn"]


def test_refuses_to_overwrite_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(DatasetError, match="not a synthetic dataset"):
        ensure_synthetic_davis(tmp_path / "mine", **SMALL)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_prepare_hook_is_picklable_and_generates(tmp_path: Path) -> None:
    prepare = pickle.loads(pickle.dumps(SyntheticPrepare(tmp_path / "syn", **SMALL)))
    assert prepare() == tmp_path / "syn"
    assert len(DavisReader(tmp_path / "syn", "val").videos()) == 2
    with pytest.raises(TypeError, match="num_trian"):
        SyntheticPrepare(tmp_path / "x", num_trian=3)
