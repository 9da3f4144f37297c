"""DavisReader on handwritten miniature DAVIS trees."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mavos.data.davis import DavisReader
from mavos.data.io import write_frame, write_mask
from mavos.data.records import DatasetError

H, W = 8, 10


def _frame(value: int, h: int = H, w: int = W) -> np.ndarray:
    return np.full((h, w, 3), value, np.uint8)


def _mask(ids_by_row: dict[int, int], h: int = H, w: int = W) -> np.ndarray:
    """A mask whose row r holds id ids_by_row[r] (others 0): easy to tell objects apart."""
    m = np.zeros((h, w), np.uint8)
    for r, obj in ids_by_row.items():
        m[r] = obj
    return m


def _write_seq(root: Path, name: str, num_frames: int, masks: dict[int, np.ndarray],
               resolution: str = "480p", order: list[int] | None = None) -> None:
    for t in order if order is not None else range(num_frames):
        write_frame(root / "JPEGImages" / resolution / name / f"{t:05d}.jpg", _frame(10 * t))
    for t, m in masks.items():
        write_mask(root / "Annotations" / resolution / name / f"{t:05d}.png", m)


def _write_split(root: Path, split: str, names: list[str], year: str = "2017") -> None:
    path = root / "ImageSets" / year / f"{split}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(names) + "\n")


@pytest.fixture
def davis(tmp_path: Path) -> Path:
    root = tmp_path / "DAVIS"
    # "cat": 12 frames written out of order; objects 1 and 3 in frame 0, object 2 only from frame 4,
    # a void (255) row in frame 0.
    dense = {t: _mask({0: 1, 5: 3} if t < 4 else {0: 1, 3: 2, 5: 3}) for t in range(12)}
    dense[0][7] = 255
    order = [5, 0, 11, 3, 7, 1, 9, 2, 10, 4, 8, 6]
    _write_seq(root, "cat", 12, dense, order=order)
    _write_seq(root, "dog", 3, {t: _mask({2: 2}) for t in range(3)})
    _write_split(root, "val", ["cat", "dog"])
    # test-dev: "owl" annotated at frame 0 (object 1) and frame 3 where object 2 first appears
    _write_seq(root, "owl", 6, {0: _mask({1: 1}), 3: _mask({1: 1, 4: 2})})
    _write_split(root, "test-dev", ["owl"])
    return root


def test_dense_split_lists_frames_in_order_and_first_frame_objects(davis: Path) -> None:
    reader = DavisReader(davis, split="val")
    videos = reader.videos()
    assert [v.name for v in videos] == ["cat", "dog"]
    cat = videos[0]
    expected_stems = [f"{t:05d}" for t in range(12)]
    assert cat.frame_names == expected_stems
    assert [p.name for p in cat.frames] == [s + ".jpg" for s in expected_stems]
    assert sorted(cat.annotations) == list(range(12))
    assert all(cat.annotations[t].stem == expected_stems[t] for t in range(12))
    # DAVIS protocol: objects are those of the first frame; void 255 is not an object
    assert cat.object_first_frame == {1: 0, 3: 0}
    assert cat.object_ids == [1, 3]
    assert cat.scored_frames is None
    assert len(cat) == 12
    assert videos[1].object_first_frame == {2: 0}
    assert reader.name == "davis2017-val"


def test_sparse_split_finds_objects_appearing_later(davis: Path) -> None:
    (owl,) = DavisReader(davis, split="test-dev").videos()
    assert len(owl) == 6
    assert sorted(owl.annotations) == [0, 3]
    assert owl.object_first_frame == {1: 0, 2: 3}


def test_full_resolution_folder(tmp_path: Path) -> None:
    _write_seq(tmp_path, "ant", 2, {0: _mask({0: 1}), 1: _mask({0: 1})}, resolution="Full-Resolution")
    _write_split(tmp_path, "train", ["ant"])
    (ant,) = DavisReader(tmp_path, split="train", resolution="Full-Resolution").videos()
    assert "Full-Resolution" in str(ant.frames[0])
    with pytest.raises(ValueError, match="resolution"):
        DavisReader(tmp_path, resolution="720p")


def test_constructor_does_not_touch_disk(tmp_path: Path) -> None:
    reader = DavisReader(tmp_path / "not-yet-there")  # built before prepare_data may create the data
    with pytest.raises(DatasetError) as err:
        reader.videos()
    msg = str(err.value)
    assert "not-yet-there" in msg and "JPEGImages/<resolution>" in msg and "ImageSets" in msg


def test_missing_image_set_file(davis: Path) -> None:
    with pytest.raises(DatasetError, match=r"ImageSets/2017/train\.txt"):
        DavisReader(davis, split="train").videos()


def test_listed_sequence_without_frames(davis: Path) -> None:
    _write_split(davis, "val", ["cat", "ghost"])
    with pytest.raises(DatasetError, match=r"JPEGImages/480p/ghost"):
        DavisReader(davis).videos()


def test_annotation_without_frame(davis: Path) -> None:
    write_mask(davis / "Annotations" / "480p" / "dog" / "00007.png", _mask({0: 1}))
    with pytest.raises(DatasetError, match=r"dog/00007\.png"):
        DavisReader(davis).videos()


def test_dense_split_frame_count_mismatch(davis: Path) -> None:
    (davis / "Annotations" / "480p" / "dog" / "00002.png").unlink()
    with pytest.raises(DatasetError, match=r"Annotations/480p/dog.*2 annotations for 3 frames"):
        DavisReader(davis).videos()


def test_first_annotation_size_mismatch_names_both_files(davis: Path) -> None:
    write_mask(davis / "Annotations" / "480p" / "dog" / "00000.png", np.zeros((H + 1, W), np.uint8))
    with pytest.raises(DatasetError) as err:
        DavisReader(davis).videos()
    msg = str(err.value)
    assert "Annotations/480p/dog/00000.png" in msg and "JPEGImages/480p/dog/00000.jpg" in msg
