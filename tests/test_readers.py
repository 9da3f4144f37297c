"""Benchmark readers (YouTube-VOS, LVOS, Long-Time Video): miniature layouts built in tmp_path.

Every expectation follows from how the miniature dataset was written (which frame holds which
object), never from the reader's own output.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mavos.data.io import write_frame, write_mask
from mavos.data.ltv import LongTimeVideoReader, binarize
from mavos.data.lvos import LVOSReader
from mavos.data.records import DatasetError
from mavos.data.ytvos import YouTubeVOSReader

H, W = 12, 16


def _frame(path: Path, value: int = 100) -> None:
    write_frame(path, np.full((H, W, 3), value, dtype=np.uint8))


def _mask(path: Path, ids: list[int]) -> None:
    """A mask holding each id in its own column band (so every id is present)."""
    m = np.zeros((H, W), dtype=np.uint8)
    for k, obj in enumerate(ids):
        m[:, k * 3:(k + 1) * 3] = obj
    write_mask(path, m)


# ----------------------------------------------------------------------------------- YouTube-VOS
def _ytvos_valid(root: Path, all_frames: bool = False) -> None:
    """valid: video 'b1' (6 sampled frames, object 1 from 00000, object 2 appearing at 00010);
    video 'a0' whose only object appears at 00005 (frame 00000 holds nothing and is not listed)."""
    valid = root / "valid"
    sampled = [f"{i:05d}" for i in range(0, 30, 5)]
    for vid in ("b1", "a0"):
        for i, n in enumerate(sampled):
            _frame(valid / "JPEGImages" / vid / f"{n}.jpg", 10 * i)
    _mask(valid / "Annotations" / "b1" / "00000.png", [1])
    _mask(valid / "Annotations" / "b1" / "00010.png", [0, 2])
    _mask(valid / "Annotations" / "a0" / "00005.png", [3])
    meta = {"videos": {
        "b1": {"objects": {"1": {"category": "cat", "frames": sampled},
                           "2": {"category": "dog", "frames": ["00015", "00010"]}}},
        "a0": {"objects": {"3": {"category": "ape", "frames": sampled[1:]}}},
    }}
    (valid / "meta.json").write_text(json.dumps(meta))
    if all_frames:
        for vid in ("b1", "a0"):
            for i in range(26):
                _frame(root / "valid_all_frames" / "JPEGImages" / vid / f"{i:05d}.jpg", i)


def test_ytvos_valid_first_appearances_and_scored_frames(tmp_path):
    _ytvos_valid(tmp_path)
    videos = YouTubeVOSReader(tmp_path, split="valid").videos()
    assert [v.name for v in videos] == ["a0", "b1"]
    a0, b1 = videos
    assert b1.frame_names == ["00000", "00005", "00010", "00015", "00020", "00025"]
    assert [f.name for f in b1.frames] == [f"{n}.jpg" for n in b1.frame_names]
    assert b1.object_first_frame == {1: 0, 2: 2}  # object 2 first appears mid-video
    assert sorted(b1.annotations) == [0, 2]
    assert b1.annotations[2].name == "00010.png"
    assert b1.scored_frames == [0, 1, 2, 3, 4, 5]
    assert b1.meta["categories"] == {1: "cat", 2: "dog"}
    assert b1.meta["start_frame"] == 0
    assert a0.object_first_frame == {3: 1}
    assert a0.scored_frames == [1, 2, 3, 4, 5]  # 00000 is not listed in meta.json
    assert a0.meta["start_frame"] == 1


def test_ytvos_all_frames_maps_annotations_by_name(tmp_path):
    _ytvos_valid(tmp_path, all_frames=True)
    b1 = {v.name: v for v in YouTubeVOSReader(tmp_path, split="valid", all_frames=True).videos()}["b1"]
    assert len(b1.frames) == 26
    assert all("valid_all_frames" in str(f) for f in b1.frames)
    assert b1.object_first_frame == {1: 0, 2: 10}
    assert sorted(b1.annotations) == [0, 10]
    assert b1.scored_frames == [0, 5, 10, 15, 20, 25]


def test_ytvos_train_is_dense_and_accepts_parent_folder(tmp_path):
    train = tmp_path / "2019" / "train"
    names = ["00000", "00005", "00010"]
    for n in names:
        _frame(train / "JPEGImages" / "v" / f"{n}.jpg")
        _mask(train / "Annotations" / "v" / f"{n}.png", [1, 2] if n != "00000" else [1])
    meta = {"videos": {"v": {"objects": {"1": {"category": "x", "frames": names},
                                         "2": {"category": "y", "frames": names[1:]}}}}}
    (train / "meta.json").write_text(json.dumps(meta))
    (v,) = YouTubeVOSReader(tmp_path, split="train").videos()  # root = YTB/, year folder appended
    assert sorted(v.annotations) == [0, 1, 2]
    assert v.object_first_frame == {1: 0, 2: 1}
    assert v.scored_frames is None


def test_ytvos_missing_meta_names_it(tmp_path):
    _ytvos_valid(tmp_path)
    (tmp_path / "valid" / "meta.json").unlink()
    with pytest.raises(DatasetError, match=r"valid[/\\]meta\.json"):
        YouTubeVOSReader(tmp_path, split="valid").videos()


def test_ytvos_annotation_without_frame_names_it(tmp_path):
    _ytvos_valid(tmp_path)
    _mask(tmp_path / "valid" / "Annotations" / "b1" / "00030.png", [1])
    with pytest.raises(DatasetError, match=r"00030\.png.*no frame image"):
        YouTubeVOSReader(tmp_path, split="valid").videos()


def test_ytvos_meta_frame_without_image_names_meta(tmp_path):
    _ytvos_valid(tmp_path)
    (tmp_path / "valid" / "JPEGImages" / "b1" / "00015.jpg").unlink()
    with pytest.raises(DatasetError, match=r"meta\.json.*'b1'.*00015"):
        YouTubeVOSReader(tmp_path, split="valid").videos()


def test_ytvos_constructor_does_not_touch_disk_and_missing_root_explains(tmp_path):
    reader = YouTubeVOSReader(tmp_path / "nowhere", split="valid")  # must not raise
    mix_keys = r"data\.ytvos_root and data\.davis_root"  # data=ytvos_davis reads these, not data.root
    with pytest.raises(DatasetError, match=rf"(?s)nowhere.*data\.root.*{mix_keys}.*meta\.json"):
        reader.videos()


# ----------------------------------------------------------------------------------------- LVOS
def _lvos_val(root: Path, split_dir: str = "val") -> Path:
    """Video 'v1': frames 00000001..00000020; dense GT on every 5th number (1, 6, 11, 16).
    Object 1 is visible on 1 and 6, leaves on 11, returns on 16; object 2 appears on 6.
    Video 'v2': frames 1..10, its only object appears on frame 6 (index 5)."""
    base = root / split_dir
    for n in range(1, 21):
        _frame(base / "JPEGImages" / "v1" / f"{n:08d}.jpg")
    dense = {1: [1], 6: [1, 2], 11: [0, 2], 16: [1, 2]}
    for n, ids in dense.items():
        _mask(base / "Annotations" / "v1" / f"{n:08d}.png", ids)
    _mask(base / "Annotations_convert" / "v1" / "00000001.png", [1])
    _mask(base / "Annotations_convert" / "v1" / "00000006.png", [0, 2])
    for n in range(1, 11):
        _frame(base / "JPEGImages" / "v2" / f"{n:08d}.jpg")
    _mask(base / "Annotations" / "v2" / "00000006.png", [4])
    _mask(base / "Annotations_convert" / "v2" / "00000006.png", [4])
    meta = {"videos": {
        "v1": {"objects": {"1": {"frame_range": {"start": "1", "end": "17", "frame_nums": "4"}},
                           "2": {"frame_range": {"start": "6", "end": "17", "frame_nums": "3"}}}},
        "v2": {"objects": {"4": {"frame_range": {"start": "6", "end": "7", "frame_nums": "1"}}}},
    }}
    (base / "valid_meta.json").write_text(json.dumps(meta))
    return base


def test_lvos_convert_first_appearances_gt_and_scored_frames(tmp_path):
    _lvos_val(tmp_path)
    v1, v2 = LVOSReader(tmp_path, split="val").videos()
    assert v1.name == "v1" and len(v1.frames) == 20
    assert v1.frame_names[:3] == ["00000001", "00000002", "00000003"]
    assert v1.object_first_frame == {1: 0, 2: 5}
    assert sorted(v1.annotations) == [0, 5]
    assert sorted(v1.gt_annotations) == [0, 5, 10, 15]
    assert v1.annotations[5].parent.parent.name == "Annotations_convert"
    assert v1.scored_frames == [0, 5, 10, 15]  # numbers 1, 6, 11, 16
    assert v1.meta["frame_ranges"][2] == {"start": 6, "end": 17, "frame_nums": 3}
    assert v1.meta["start_frame"] == 0
    assert v2.object_first_frame == {4: 5}
    assert v2.meta["start_frame"] == 5  # MAVOS starts at the first labelled frame
    assert v2.scored_frames == [5]


def test_lvos_split_dir_and_dense_annotations(tmp_path):
    base = _lvos_val(tmp_path, split_dir="val_480p")
    (base / "valid_meta.json").unlink()
    reader = LVOSReader(tmp_path, split="val", annotations="Annotations", split_dir="val_480p")
    v1 = reader.videos()[0]
    assert sorted(v1.annotations) == [0, 5, 10, 15]
    assert v1.gt_annotations is None
    assert v1.object_first_frame == {1: 0, 2: 5}  # object 1 leaving at 11 does not move its start
    assert v1.scored_frames == list(range(0, 20))  # no meta file: every frame from the start


def test_lvos_meta_frame_without_image_names_meta(tmp_path):
    base = _lvos_val(tmp_path)
    meta = json.loads((base / "valid_meta.json").read_text())
    meta["videos"]["v2"]["objects"]["4"]["frame_range"]["end"] = "13"  # 6, 11: frame 11 does not exist
    (base / "valid_meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"valid_meta\.json.*'v2'.*00000011"):
        LVOSReader(tmp_path, split="val").videos()


def test_lvos_missing_root_and_annotation_folder(tmp_path):
    with pytest.raises(DatasetError, match=r"(?s)LVOS.*data\.root.*Annotations_convert"):
        LVOSReader(tmp_path, split="val").videos()
    base = _lvos_val(tmp_path)
    import shutil

    shutil.rmtree(base / "Annotations_convert" / "v2")
    with pytest.raises(DatasetError, match=r"Annotations_convert[/\\]v2: annotation folder"):
        LVOSReader(tmp_path, split="val").videos()


# ---------------------------------------------------------------------------------------- LTV
def _ltv(root: Path) -> None:
    for name, n_frames, annotated, label in (("rat", 10, [0, 4, 8], 1), ("blueboy", 7, [0, 3, 6], 255)):
        for i in range(n_frames):
            _frame(root / "JPEGImages" / name / f"{i:05d}.jpg")
        for i in annotated:
            _mask(root / "Annotations" / name / f"{i:05d}.png", [label])
    (root / "ImageSets").mkdir(parents=True)
    (root / "ImageSets" / "val.txt").write_text("rat\nblueboy\n\n")


def test_ltv_sparse_annotations_single_object(tmp_path):
    _ltv(tmp_path)
    rat, blueboy = LongTimeVideoReader(tmp_path).videos()  # split-file order
    assert rat.name == "rat" and len(rat.frames) == 10
    assert sorted(rat.annotations) == [0, 4, 8]
    assert rat.object_first_frame == {1: 0}
    assert rat.scored_frames == [4, 8]
    assert blueboy.scored_frames == [3, 6]
    assert blueboy.meta["binarize"] is True
    assert binarize(np.array([[0, 1, 2, 255]])).tolist() == [[0, 1, 1, 1]]


def test_ltv_missing_split_file_and_root(tmp_path):
    with pytest.raises(DatasetError, match=r"(?s)Long-Time Video.*data\.root"):
        LongTimeVideoReader(tmp_path).videos()
    _ltv(tmp_path)
    with pytest.raises(DatasetError, match=r"test\.txt"):
        LongTimeVideoReader(tmp_path, split_file="ImageSets/test.txt").videos()


def test_held_out_validation_videos_are_never_trained_on_and_a_split_too_small_is_refused():
    from mavos.data.holdout import HeldOutReader
    from mavos.data.records import DatasetError, VideoRecord

    class Reader:
        split, root = "train", "YTB/2019"

        def __init__(self, n):
            self.n = n

        def videos(self):
            return [VideoRecord(f"v{i:02d}", [], [], {}) for i in range(self.n)]

    held = [r.name for r in HeldOutReader(Reader(12), 3, "holdout").videos()]
    rest = [r.name for r in HeldOutReader(Reader(12), 3, "rest").videos()]
    assert held == ["v00", "v04", "v08"]   # spread evenly over the sorted names: 0, 12/3, 2*12/3
    assert sorted(held + rest) == [f"v{i:02d}" for i in range(12)] and not set(held) & set(rest)
    with pytest.raises(DatasetError, match=r"all 12 train videos are held out.*data.holdout_videos=30"):
        HeldOutReader(Reader(12), 30, "rest").videos()
    assert len(HeldOutReader(Reader(12), 30, "holdout").videos()) == 12
