"""Static images with masks turned into training clips."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mavos.data.clips import ClipConfig
from mavos.data.io import write_frame, write_mask
from mavos.data.records import DatasetError
from mavos.data.static import StaticTrainSet, read_static_mask


def Cfg(**overrides) -> ClipConfig:
    """A small clip config: 4 frames of 40x48, no merge unless asked."""
    return ClipConfig(**{"clip_len": 4, "crop_size": (40, 48), "merge_prob": 0.0, "min_object_pixels": 100,
                         **overrides})


S = 64


def _static(root: Path) -> None:
    """ECSSD: a greyscale 0/255 saliency mask (one object). PASCALVOC2012: a palette mask with objects
    1 and 2 and a void (255) border around object 2. Object pixels are bright, background dark."""
    img = np.full((S, S, 3), 20, np.uint8)
    sal = np.zeros((S, S), np.uint8)
    sal[16:48, 12:44] = 255
    img[sal > 0] = 230
    write_frame(root / "JPEGImages" / "ECSSD" / "a.jpg", img)
    (root / "Annotations" / "ECSSD").mkdir(parents=True)
    Image.fromarray(sal, mode="L").save(root / "Annotations" / "ECSSD" / "a.png")

    ids = np.zeros((S, S), np.uint8)
    ids[4:30, 4:30] = 1
    ids[33:61, 33:61] = 255
    ids[35:59, 35:59] = 2
    img = np.full((S, S, 3), 20, np.uint8)
    img[(ids == 1) | (ids == 2)] = 230
    write_frame(root / "JPEGImages" / "PASCALVOC2012" / "b.jpg", img)
    write_mask(root / "Annotations" / "PASCALVOC2012" / "b.png", ids)


def test_static_mask_rule(tmp_path):
    _static(tmp_path)
    sal = read_static_mask(tmp_path / "Annotations" / "ECSSD" / "a.png")
    assert set(np.unique(sal).tolist()) == {0, 1}
    voc = read_static_mask(tmp_path / "Annotations" / "PASCALVOC2012" / "b.png")
    assert set(np.unique(voc).tolist()) == {0, 1, 2}  # void border -> background


def test_static_pairs_skip_absent_sources(tmp_path):
    _static(tmp_path)
    pairs = StaticTrainSet(tmp_path, repeat=3).pairs()
    assert [p[0].name for p in pairs] == ["a.jpg", "b.jpg"]  # COCO, MSRA10K, PASCAL-S absent
    assert len(StaticTrainSet(tmp_path, repeat=3).dataset(Cfg())) == 6


@pytest.mark.parametrize("index,expected_objects", [(0, 1), (1, 2)])
def test_static_clip_shapes_ids_and_alignment(tmp_path, index, expected_objects):
    _static(tmp_path)
    ds = StaticTrainSet(tmp_path).dataset(Cfg())
    torch.manual_seed(index)
    for _ in range(3):
        clip = ds[index]
        frames, masks = clip["frames"], clip["masks"]
        assert frames.shape == (4, 3, 40, 48) and frames.dtype == torch.float32
        assert 0.0 <= frames.min() and frames.max() <= 1.0
        assert masks.shape == (4, 40, 48) and masks.dtype == torch.int64
        assert clip["num_objects"].dtype == torch.int64 and clip["num_objects"].ndim == 0
        k = int(clip["num_objects"])
        assert k == expected_objects
        assert set(torch.unique(masks).tolist()) <= set(range(k + 1))
        assert set(torch.unique(masks[0]).tolist()) == set(range(k + 1))  # all visible in frame 0
        assert clip["name"] == ("ECSSD/a" if index == 0 else "PASCALVOC2012/b")
        # Geometry is shared by image and mask: object pixels stay brighter than background ones.
        grey = frames.mean(1)
        for t in range(4):
            fg, bg = masks[t] > 0, masks[t] == 0
            if fg.sum() > 20 and bg.sum() > 20:
                assert grey[t][fg].mean() > grey[t][bg].mean() + 0.1


def test_static_merge_and_max_objects(tmp_path):
    _static(tmp_path)
    torch.manual_seed(0)
    ds = StaticTrainSet(tmp_path).dataset(Cfg(merge_prob=1.0, min_object_pixels=1))
    counts = set()
    for _ in range(8):
        clip = ds[0]
        k = int(clip["num_objects"])
        counts.add(k)
        assert set(torch.unique(clip["masks"][0]).tolist()) == set(range(k + 1))
    assert max(counts) >= 2  # the second image's objects were pasted in
    assert counts <= {1, 2, 3}
    capped = StaticTrainSet(tmp_path).dataset(Cfg(merge_prob=1.0, max_objects=1))
    assert all(int(capped[i]["num_objects"]) == 1 for i in (0, 1))


def test_static_reproducible_under_torch_seed(tmp_path):
    _static(tmp_path)
    ds = StaticTrainSet(tmp_path).dataset(Cfg(merge_prob=0.5))
    torch.manual_seed(7)
    a = ds[1]
    torch.manual_seed(7)
    b = ds[1]
    assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["masks"], b["masks"])
    c = ds[1]
    assert not torch.equal(a["frames"], c["frames"])


def test_static_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match=r"(?s)Static.*data\.root.*PASCALVOC2012"):
        StaticTrainSet(tmp_path / "nowhere").pairs()
    _static(tmp_path)
    write_frame(tmp_path / "JPEGImages" / "ECSSD" / "c.jpg", np.zeros((S, S, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"c\.jpg: image has no mask .*c\.png"):
        StaticTrainSet(tmp_path).pairs()
    (tmp_path / "JPEGImages" / "ECSSD" / "c.jpg").unlink()

    ds = StaticTrainSet(tmp_path).dataset(Cfg())
    write_mask(tmp_path / "Annotations" / "ECSSD" / "a.png", np.ones((S, S + 4), np.uint8))
    with pytest.raises(DatasetError, match=r"a\.png.*68x64.*a\.jpg.*64x64"):
        ds[0]
    (tmp_path / "JPEGImages" / "PASCALVOC2012" / "b.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(DatasetError, match=r"b\.jpg: cannot read image"):
        ds[1]


def test_static_accepts_hydra_style_dict_config(tmp_path):
    _static(tmp_path)
    ds = StaticTrainSet(tmp_path).dataset({"clip_len": 2, "crop_size": [32, 24], "merge_prob": 0.0})
    clip = ds[1]
    assert clip["frames"].shape == (2, 3, 32, 24) and clip["masks"].shape == (2, 32, 24)
