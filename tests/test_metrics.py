"""J, F, Mean/Recall/Decay and the JFMetric states, against answers worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mavos.metrics.jf import JFMetric, decode_video_name, encode_video_name
from mavos.metrics.region_boundary import (
    boundary_map,
    boundary_measure,
    boundary_tolerance,
    disk_kernel,
    region_similarity,
)
from mavos.metrics.statistics import decay_bin_edges, mean_recall_decay


def square(h: int, w: int, top: int, left: int, side: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[top: top + side, left: left + side] = True
    return m


# ---------------------------------------------------------------- J and F of single masks

def test_identical_masks_score_one():
    m = square(60, 80, 10, 20, 25)
    assert region_similarity(m, m) == 1.0
    assert boundary_measure(m, m) == 1.0


def test_disjoint_far_apart_masks_score_zero():
    a, b = square(100, 200, 10, 10, 20), square(100, 200, 60, 150, 20)  # tolerance is 2 px here
    assert region_similarity(a, b) == 0.0
    assert boundary_measure(a, b) == 0.0


@pytest.mark.parametrize("d", [1, 3, 7])
def test_shifted_square_region_similarity_is_overlap_over_union(d):
    side = 20
    gt, pred = square(50, 60, 10, 10, side), square(50, 60, 10, 10 + d, side)
    expected = side * (side - d) / (side * (side + d))
    assert region_similarity(pred, gt) == pytest.approx(expected, abs=1e-12)


def test_empty_masks():
    empty, full = np.zeros((30, 40), bool), square(30, 40, 5, 5, 10)
    assert region_similarity(empty, empty) == 1.0
    assert boundary_measure(empty, empty) == 1.0
    assert region_similarity(empty, full) == 0.0
    assert boundary_measure(empty, full) == 0.0
    assert region_similarity(full, empty) == 0.0
    assert boundary_measure(full, empty) == 0.0


def test_shift_within_tolerance_gives_f_one_and_beyond_gives_less():
    h, w = 200, 300  # diagonal 360.6 -> tolerance ceil(2.88) = 3 px
    assert boundary_tolerance(h, w) == 3
    gt = square(h, w, 50, 50, 60)
    assert boundary_measure(square(h, w, 52, 52, 60), gt) == 1.0  # every boundary pixel within 2*sqrt(2) < 3
    assert boundary_measure(square(h, w, 50, 60, 60), gt) < 0.7


def test_davis_tolerance_at_480p_is_8_pixels():
    assert boundary_tolerance(480, 854) == 8
    assert boundary_tolerance(480, 854, bound_th=5) == 5


def test_disk_kernel_radius_2():
    expected = np.array([[0, 0, 1, 0, 0],
                         [0, 1, 1, 1, 0],
                         [1, 1, 1, 1, 1],
                         [0, 1, 1, 1, 0],
                         [0, 0, 1, 0, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(disk_kernel(2), expected)


def test_boundary_map_of_one_pixel_and_of_full_image():
    m = np.zeros((5, 5), bool)
    m[2, 2] = True
    # The pixel itself (east differs), its west (east differs), north (south differs), north-west (SE differs).
    expected = np.zeros((5, 5), bool)
    expected[[1, 1, 2, 2], [1, 2, 1, 2]] = True
    np.testing.assert_array_equal(boundary_map(m), expected)
    assert not boundary_map(np.ones((6, 7), bool)).any()  # edges of the image are no boundary


def test_boundary_map_last_row_and_column_rules():
    m = np.zeros((4, 4), bool)
    m[3, 1] = True  # on the last row: only east comparisons count there
    b = boundary_map(m)
    assert b[3, 0] and b[3, 1] and b[2, 0] and b[2, 1]
    assert b.sum() == 4
    m = np.zeros((4, 4), bool)
    m[3, 3] = True  # the bottom-right pixel is never boundary; its north/west/north-west neighbours are
    b = boundary_map(m)
    assert not b[3, 3] and b[2, 3] and b[3, 2] and b[2, 2] and b.sum() == 3


def test_void_pixels_are_ignored_by_j():
    gt = square(20, 20, 0, 0, 10)
    pred = gt.copy()
    pred[15:, 15:] = True  # 25 false-positive pixels, all inside the void area
    void = np.zeros_like(gt)
    void[15:, 15:] = True
    assert region_similarity(pred, gt) == pytest.approx(100 / 125)
    assert region_similarity(pred, gt, void) == 1.0


def test_stacks_and_torch_inputs_match_single_frames():
    rng = np.random.default_rng(0)
    pred, gt = rng.random((4, 30, 40)) < 0.3, rng.random((4, 30, 40)) < 0.3
    j, f = region_similarity(pred, gt), boundary_measure(pred, gt)
    assert j.shape == f.shape == (4,)
    for t in range(4):
        assert j[t] == region_similarity(pred[t], gt[t])
        assert f[t] == boundary_measure(pred[t], gt[t])
    np.testing.assert_array_equal(region_similarity(torch.from_numpy(pred), torch.from_numpy(gt)), j)
    np.testing.assert_array_equal(boundary_measure(torch.from_numpy(pred), torch.from_numpy(gt)), f)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differs"):
        region_similarity(np.zeros((3, 4)), np.zeros((4, 3)))


# ---------------------------------------------------------------- Mean / Recall / Decay

def test_statistics_on_a_hand_built_sequence():
    # N = 8: linspace(1, 8, 5) = 1, 2.75, 4.5, 6.25, 8 -> rounded (halves up) 1, 3, 5, 6, 8 -> indices 0, 2, 4, 5, 7.
    np.testing.assert_array_equal(decay_bin_edges(8), [0, 2, 4, 5, 7])
    values = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    mean, recall, decay = mean_recall_decay(values)
    assert mean == pytest.approx(0.55)
    assert recall == pytest.approx(4 / 8)  # 0.5 itself is not above 0.5
    assert decay == pytest.approx((0.9 + 0.8 + 0.7) / 3 - (0.4 + 0.3 + 0.2) / 3)


def test_decay_of_300_frames_uses_wide_indices():
    # Quarter edges of 300 frames: 1 + i * 299 / 4 = 1, 75.75, 150.5, 225.25, 300 -> 1, 76, 151, 225, 300.
    np.testing.assert_array_equal(decay_bin_edges(300), [0, 75, 150, 224, 299])
    values = np.full(300, 0.6)
    values[:76] = 1.0
    values[224:] = 0.25
    mean, recall, decay = mean_recall_decay(values)
    assert decay == pytest.approx(0.75)
    assert recall == pytest.approx(224 / 300)
    assert mean == pytest.approx((76 * 1.0 + 148 * 0.6 + 76 * 0.25) / 300)


def test_statistics_ignore_nan_in_mean_and_count_it_as_a_miss_in_recall():
    mean, recall, _ = mean_recall_decay([1.0, np.nan, 0.0, 1.0])
    assert mean == pytest.approx(2 / 3)
    assert recall == pytest.approx(2 / 4)


# ---------------------------------------------------------------- JFMetric

def video_with_drop(num_frames: int, good_frames: int, size: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """gt: one 4x4 square every frame; pred: the same square for the first ``good_frames``, then nothing."""
    gt = np.zeros((num_frames, size, size), np.uint8)
    gt[:, 3:7, 3:7] = 1
    pred = gt.copy()
    pred[good_frames:] = 0
    return pred, gt


def test_metric_on_a_hand_built_video():
    pred, gt = video_with_drop(8, 4)  # J = F = [1, 1, 1, 1, 0, 0, 0, 0]
    metric = JFMetric()
    metric.update(torch.from_numpy(pred), torch.from_numpy(gt), video="clip")
    out = metric.compute()
    for m in "JF":
        assert out[f"{m}-Mean"] == pytest.approx(0.5)
        assert out[f"{m}-Recall"] == pytest.approx(0.5)
        assert out[f"{m}-Decay"] == pytest.approx(1.0)  # first quarter (frames 0-2) all 1, last (5-7) all 0
    assert out["J&F-Mean"] == pytest.approx(0.5)
    assert list(out) == ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]


def test_metric_300_frame_decay():
    pred, gt = video_with_drop(300, 76, size=8)  # J = 1 on frames 0-75 (first quarter), 0 on 224-299
    metric = JFMetric()
    metric.update(pred, gt, video="long")
    out = metric.compute()
    assert out["J-Decay"] == pytest.approx(1.0)
    assert out["F-Decay"] == pytest.approx(1.0)
    assert out["J-Mean"] == pytest.approx(76 / 300)


def test_frame_mask_selects_scored_frames():
    pred, gt = video_with_drop(6, 5)  # only the last frame is wrong
    keep = np.array([False, True, True, True, True, False])
    metric = JFMetric()
    metric.update(pred, gt, frame_mask=keep)
    assert metric.compute()["J-Mean"] == 1.0


def test_missing_object_is_zero_padded_and_void_is_background():
    gt = np.zeros((3, 12, 12), np.uint8)
    gt[:, 1:4, 1:4] = 1
    gt[:, 7:10, 7:10] = 2
    gt[:, 11, :] = 255  # void row: background for scoring
    pred = np.where(gt == 1, 1, 0).astype(np.uint8)  # object 2 never predicted, void row empty
    metric = JFMetric()
    metric.update(pred, gt, num_objects=2, video="v")
    rows = metric.per_object_rows()
    assert [r["Sequence"] for r in rows] == ["v_1", "v_2"]
    assert rows[0]["J-Mean"] == 1.0 and rows[0]["F-Mean"] == 1.0
    assert rows[1]["J-Mean"] == 0.0 and rows[1]["F-Mean"] == 0.0
    metric.reset()
    metric.update(pred, gt, video="v")  # num_objects=None -> largest non-void id = 2
    assert len(metric.per_object_rows()) == 2


def test_video_name_round_trip():
    assert decode_video_name(encode_video_name("bmx-trees_é")) == "bmx-trees_é"
    with pytest.raises(ValueError):
        encode_video_name("x" * 300)


def two_videos():
    a_pred, a_gt = video_with_drop(8, 4)
    b_pred, b_gt = video_with_drop(5, 5)
    return (a_pred, a_gt, "a"), (b_pred, b_gt, "b")


def test_merged_states_equal_one_metric_seeing_everything():
    (ap, ag, an), (bp, bg, bn) = two_videos()
    single = JFMetric()
    single.update(ap, ag, video=an)
    single.update(bp, bg, video=bn)
    rank0, rank1 = JFMetric(), JFMetric()
    rank0.update(ap, ag, video=an)
    rank1.update(bp, bg, video=bn)
    rank0.merge_state(rank1)
    assert rank0.compute() == pytest.approx(single.compute())
    assert {r["Sequence"]: r["J-Mean"] for r in rank0.per_object_rows()} == {"a_1": 0.5, "b_1": 1.0}
    # All states are tensors concatenated across ranks.
    assert all(fx is not None and fx.__name__ == "dim_zero_cat" for fx in rank0._reductions.values())


def _ddp_worker(rank: int, world: int, init_file: str, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    metric = JFMetric()
    (ap, ag, an), (bp, bg, bn) = two_videos()
    if rank == 0:
        metric.update(ap, ag, video=an)
    elif rank == 1:
        metric.update(bp, bg, video=bn)
    # rank 2 scored no video and still joins both gathers
    queue.put((rank, metric.compute(), [(r["Sequence"], r["J-Mean"]) for r in metric.per_object_rows()]))
    dist.destroy_process_group()


def test_ddp_gather_across_three_processes_one_without_a_video(tmp_path):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 3, str(tmp_path / "init"), queue)) for r in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    (ap, ag, an), (bp, bg, bn) = two_videos()
    single = JFMetric()
    single.update(ap, ag, video=an)
    single.update(bp, bg, video=bn)
    for _, out, rows in results:
        assert out == pytest.approx(single.compute())
        assert sorted(rows) == [("a_1", 0.5), ("b_1", 1.0)]
