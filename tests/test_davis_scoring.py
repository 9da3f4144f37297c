"""Benchmark protocols end to end on tiny generated trees: DAVIS 2017, Long-Time Video and LVOS v1."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from mavos.data.io import write_mask
from mavos.data.records import DatasetError
from mavos.metrics.protocols import (
    davis_frame_selection,
    ltv_frame_selection,
    lvos_frame_numbers,
    lvos_variation,
    score_davis_results,
    score_ltv,
    score_lvos,
    write_davis_csvs,
    write_lvos_csvs,
)

H, W = 24, 32


def two_objects(t: int) -> np.ndarray:
    """Frame t of a 2-object video: two squares drifting right, a void band on the bottom row."""
    m = np.zeros((H, W), np.uint8)
    m[2:10, 2 + t: 10 + t] = 1
    m[12:20, 14 + t: 22 + t] = 2
    m[H - 1, :] = 255
    return m


def one_object(t: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[5:15, 5 + t: 15 + t] = 1
    return m


def make_davis(root: Path, results: Path | None, num_frames: int = 5) -> dict[str, list[np.ndarray]]:
    """DAVIS tree with sequences 'duo' (2 objects) and 'solo' (1 object); results = GT when given."""
    videos = {"duo": [two_objects(t) for t in range(num_frames)], "solo": [one_object(t) for t in range(num_frames)]}
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("duo\nsolo\n")
    for name, frames in videos.items():
        for t, m in enumerate(frames):
            write_mask(root / "Annotations" / "480p" / name / f"{t:05d}.png", m)
            if results is not None:
                write_mask(results / name / f"{t:05d}.png", np.where(m == 255, 0, m))
    return videos


def test_davis_frame_selection_drops_first_and_last():
    np.testing.assert_array_equal(davis_frame_selection(5), [False, True, True, True, False])
    np.testing.assert_array_equal(ltv_frame_selection(3), [False, True, True])


def test_results_identical_to_gt_score_one(tmp_path):
    make_davis(tmp_path / "DAVIS", tmp_path / "res")
    global_row, rows = score_davis_results(tmp_path / "DAVIS", "val", tmp_path / "res")
    assert global_row == {"J&F-Mean": 1.0, "J-Mean": 1.0, "J-Recall": 1.0, "J-Decay": 0.0,
                          "F-Mean": 1.0, "F-Recall": 1.0, "F-Decay": 0.0}
    assert [r["Sequence"] for r in rows] == ["duo_1", "duo_2", "solo_1"]


def test_removed_object_scores_zero_and_first_last_frames_do_not_count(tmp_path):
    videos = make_davis(tmp_path / "DAVIS", tmp_path / "res")
    for t, m in enumerate(videos["duo"]):  # object 2 never predicted
        write_mask(tmp_path / "res" / "duo" / f"{t:05d}.png", np.where(m == 1, 1, 0))
    # Garbage on the excluded first and last frames of 'solo' must not change anything.
    write_mask(tmp_path / "res" / "solo" / "00000.png", np.zeros((H, W), np.uint8))
    write_mask(tmp_path / "res" / "solo" / "00004.png", np.zeros((H, W), np.uint8))
    global_row, rows = score_davis_results(tmp_path / "DAVIS", "val", tmp_path / "res")
    by_name = {r["Sequence"]: r for r in rows}
    assert by_name["duo_2"]["J-Mean"] == 0.0 and by_name["duo_2"]["F-Mean"] == 0.0
    assert by_name["duo_1"]["J-Mean"] == 1.0 and by_name["solo_1"]["F-Mean"] == 1.0
    assert global_row["J-Mean"] == pytest.approx(2 / 3)
    assert global_row["J&F-Mean"] == pytest.approx(2 / 3)


def test_missing_result_names_the_file(tmp_path):
    make_davis(tmp_path / "DAVIS", tmp_path / "res")
    (tmp_path / "res" / "solo" / "00002.png").unlink()
    with pytest.raises(DatasetError, match=r"solo/00002\.png"):
        score_davis_results(tmp_path / "DAVIS", "val", tmp_path / "res")


def test_result_of_other_size_names_both_files(tmp_path):
    make_davis(tmp_path / "DAVIS", tmp_path / "res")
    write_mask(tmp_path / "res" / "duo" / "00001.png", np.zeros((H + 2, W), np.uint8))
    with pytest.raises(DatasetError, match=r"res/duo/00001\.png.*Annotations/480p/duo/00001\.png"):
        score_davis_results(tmp_path / "DAVIS", "val", tmp_path / "res")


def test_result_with_unknown_object_is_an_error(tmp_path):
    make_davis(tmp_path / "DAVIS", tmp_path / "res")
    m = one_object(2)
    m[0, 0] = 3
    write_mask(tmp_path / "res" / "solo" / "00002.png", m)
    with pytest.raises(DatasetError, match="object id 3"):
        score_davis_results(tmp_path / "DAVIS", "val", tmp_path / "res")


def test_missing_sequence_list_is_a_dataset_error(tmp_path):
    make_davis(tmp_path / "DAVIS", tmp_path / "res")
    with pytest.raises(DatasetError, match="test-dev"):
        score_davis_results(tmp_path / "DAVIS", "test-dev", tmp_path / "res")


def test_csvs_have_the_toolkit_columns_names_and_format(tmp_path):
    global_row = {"J&F-Mean": 0.5, "J-Mean": 2 / 3, "J-Recall": 1.0, "J-Decay": -0.00001,
                  "F-Mean": 1 / 3, "F-Recall": 0.0, "F-Decay": float("nan")}
    rows = [{"Sequence": "duo_1", "J-Mean": 1.0, "F-Mean": 0.12345, "J-Recall": 1.0},
            {"Sequence": "duo_2", "J-Mean": 0.0, "F-Mean": 0.0}]
    g, s = write_davis_csvs(tmp_path, "val", global_row, rows)
    assert g == tmp_path / "global_results-val.csv" and s == tmp_path / "per-sequence_results-val.csv"
    assert g.read_text() == ("J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay\n"
                             "0.500,0.667,1.000,-0.000,0.333,0.000,\n")
    assert s.read_text() == "Sequence,J-Mean,F-Mean\nduo_1,1.000,0.123\nduo_2,0.000,0.000\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_scored_csv_round_trip(tmp_path):
    make_davis(tmp_path / "DAVIS", tmp_path / "res")
    global_row, rows = score_davis_results(tmp_path / "DAVIS", "val", tmp_path / "res")
    write_davis_csvs(tmp_path / "res", "val", global_row, rows)
    with open(tmp_path / "res" / "per-sequence_results-val.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["Sequence"] for r in table] == ["duo_1", "duo_2", "solo_1"]
    assert all(r["J-Mean"] == "1.000" for r in table)


# ---------------------------------------------------------------- Long-Time Video

def test_ltv_scores_annotated_frames_after_the_first(tmp_path):
    root, res = tmp_path / "LTV", tmp_path / "res"
    root.mkdir()
    (root / "val.txt").write_text("rat\n")
    annotated = [0, 10, 20, 30]
    for t in annotated:
        write_mask(root / "Annotations" / "rat" / f"{t:05d}.png", one_object(t // 10))
    for t in range(31):  # a 0/255 binary result, correct on annotated frames except the first
        m = one_object(t // 10) if t in annotated[1:] else np.zeros((H, W), np.uint8)
        write_mask(res / "rat" / f"{t:05d}.png", m * 255)
    global_row, rows = score_ltv(root, res)
    assert [r["Sequence"] for r in rows] == ["rat_1"]
    assert global_row["J-Mean"] == 1.0 and global_row["F-Mean"] == 1.0


# ---------------------------------------------------------------- LVOS v1

def test_lvos_frame_numbers_every_fifth_end_excluded():
    assert lvos_frame_numbers(1, 16) == [1, 6, 11]
    assert lvos_frame_numbers(3, 18) == [3, 8, 13]


def test_lvos_variation_of_known_values():
    # (J+F)/2 = [1, 0] -> mean 0.5, variance 0.25 -> V = 0.5
    assert lvos_variation(np.array([1.0, 0.0]), np.array([1.0, 0.0])) == pytest.approx(0.5)
    assert lvos_variation(np.ones(4), np.ones(4)) == 0.0


def make_lvos(tmp_path: Path) -> tuple[Path, Path]:
    root, res = tmp_path / "LVOS" / "valid", tmp_path / "res"
    meta = {"videos": {
        "seenvid": {"objects": {"1": {"frame_range": {"start": 1, "end": 16, "frame_nums": 3}}}},
        "newvid": {"objects": {"2": {"frame_range": {"start": 2, "end": 12, "frame_nums": 3}}}},
    }}
    root.mkdir(parents=True)
    (root / "valid_meta.json").write_text(json.dumps(meta))
    for t in range(1, 17):
        write_mask(root / "Annotations" / "seenvid" / f"{t:08d}.png", one_object(t % 5))
        write_mask(res / "seenvid" / f"{t:08d}.png", one_object(t % 5))
        gt = one_object(t % 5) * 2
        write_mask(root / "Annotations" / "newvid" / f"{t:08d}.png", gt)
        write_mask(res / "newvid" / f"{t:08d}.png", gt)
    return root, res


def test_lvos_perfect_results(tmp_path):
    root, res = make_lvos(tmp_path)
    # Frames outside the scored ranges (e.g. 00000004) may be anything.
    write_mask(res / "seenvid" / "00000004.png", np.zeros((H, W), np.uint8))
    global_row, rows = score_lvos(root, res, unseen_videos=["newvid"])
    assert [r["Sequence"] for r in rows] == ["newvid_1", "seenvid_1"]  # videos sorted by name
    # newvid: range(2, 12, 5) = [2, 7] fills 2 of frame_nums=3 slots; the empty slot counts 0 (toolkit v1).
    new = rows[0]
    assert new["J-Mean"] == pytest.approx(2 / 3) and new["F-Mean"] == pytest.approx(2 / 3)
    assert rows[1]["J-Mean"] == 1.0 and rows[1]["V-Mean"] == 0.0
    assert global_row["J-seen-Mean"] == 1.0 and global_row["J-unseen-Mean"] == pytest.approx(2 / 3)
    assert global_row["J&F-Mean"] == pytest.approx((1 + 1 + 2 / 3 + 2 / 3) / 4)
    assert global_row["J-Mean"] == pytest.approx((1 + 2 / 3) / 2)
    # V of [1, 1, 0]: mean 2/3, variance (1/9 + 1/9 + 4/9) / 3 = 2/9 -> round to 4 places -> sqrt
    assert new["V-Mean"] == pytest.approx(np.sqrt(0.2222))


def test_lvos_missing_result_and_csvs(tmp_path):
    root, res = make_lvos(tmp_path)
    unseen = tmp_path / "unseen_videos.txt"
    unseen.write_text("newvid\n")
    global_row, rows = score_lvos(root, res, unseen_videos=unseen)
    g, s = write_lvos_csvs(tmp_path / "out", "valid", global_row, rows)
    assert g.read_text().splitlines()[0] == ("J&F-Mean,J-Mean,J-seen-Mean,J-unseen-Mean,F-Mean,F-seen-Mean,"
                                             "F-unseen-Mean,V-Mean,V-seen-Mean,V-unseen-Mean")
    assert s.read_text().splitlines()[:2] == ["Sequence,J-Mean,F-Mean,V-Mean", "newvid_1,0.667,0.667,0.471"]
    (res / "seenvid" / "00000011.png").unlink()
    with pytest.raises(DatasetError, match=r"seenvid/00000011\.png"):
        score_lvos(root, res, unseen_videos=unseen)
