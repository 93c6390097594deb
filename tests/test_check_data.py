"""``simseg check-data``: the printed summary, the JSON fields and the exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import HIPPOCAMPUS, NO_SHARED_DATA
from layout_builders import CLASSES, make_masks_dataset, make_msd4d_dataset, make_nnunet_dataset, write_picture
from napari_simseg.cli import main

REQUIRED_FIELDS = {"n_cases", "classes", "channels", "problems", "layout", "shapes", "spacings", "class_voxels",
                   "overlaps", "notes", "working_size", "seconds_per_step"}


def run_check_data(root, tmp_path, capsys):
    out = tmp_path / "check.json"
    code = main(["check-data", str(root), "--json", str(out)])
    return code, capsys.readouterr().out, json.loads(out.read_text())


def assert_training_estimate(summary, working_size=None):
    """The default recipe's working resolution and a measured (positive) step time."""
    assert summary["working_size"] == working_size  # None: slices at their own resolution
    assert len(summary["working_shape"]) == 2 and len(summary["item_shape"]) == 2
    assert all(v % 32 == 0 for v in summary["item_shape"]) and summary["batch_size"] >= 1
    assert isinstance(summary["seconds_per_step"], float) and summary["seconds_per_step"] > 0


def test_masks_data_set_with_overlaps_resampling_and_problems(tmp_path, capsys):
    root = make_masks_dataset(tmp_path / "cxr", n=4, size=32, image_factor=2)
    write_picture(root / "masks" / "rib" / "c3.png", np.zeros((32, 32), np.uint8))  # not in classes.json
    code, text, summary = run_check_data(root, tmp_path, capsys)
    assert code == 0  # 3 usable cases
    assert REQUIRED_FIELDS <= set(summary)
    assert summary["layout"] == "masks" and summary["n_cases"] == 4 and summary["n_usable"] == 3
    assert summary["classes"] == CLASSES and summary["channels"] == ["image"]
    assert summary["shapes"]["labels"] == {"min": [32, 32], "max": [32, 32]}
    assert summary["shapes"]["images"] == {"min": [64, 64], "max": [64, 64]}
    assert summary["spacings"] == {"min": [1, 1], "max": [1, 1]}
    assert summary["class_voxels"]["background"] > 0 and all(summary["class_cases"][c] == 3 for c in CLASSES)
    assert sum(summary["class_voxels"].values()) == 3 * 32 * 32
    pairs = {tuple(o["classes"]): (o["pixels"], o["cases"]) for o in summary["overlaps"]["total"]}
    assert set(pairs) == {("lung", "heart"), ("heart", "clavicle")} and pairs[("lung", "heart")][1] == 3
    assert set(summary["overlaps"]["per_case"]) == {"c0", "c1", "c2"}
    assert [p["case"] for p in summary["problems"]] == ["c3"]
    assert summary["problems"][0]["file"] == str(root / "masks" / "rib" / "c3.png")
    assert "class folder 'rib' is not in the class list" in summary["problems"][0]["reason"]
    assert any("resampled to the 32x32 label grid (block mean" in n and "4 case(s)" in n for n in summary["notes"])
    assert_training_estimate(summary)
    assert summary["working_shape"] == [32, 32]
    for expected in (
        "layout: masks",
        "Cases: 4 found (c0, c1, c2, c3), 3 usable; not usable: c3 (see Problems)",
        "Classes: 4 (background, lung, heart, clavicle)",
        "label grid 32x32; images 64x64",
        "lung / heart:",
        "masks/rib/c3.png: class folder 'rib'",
        "s per training step",
        "Verdict: usable",
    ):
        assert expected in text, expected


def test_large_pictures_get_the_recipes_working_size(tmp_path, capsys):
    root = make_masks_dataset(tmp_path / "big", n=2, size=300)
    code, text, summary = run_check_data(root, tmp_path, capsys)
    assert code == 0
    assert_training_estimate(summary, working_size=256)
    assert summary["working_shape"] == [256, 256] and summary["item_shape"] == [160, 160]  # recipe crops
    assert "working size 256, largest slice 256x256" in text


def test_nnunet_and_msd_4d_channels(tmp_path, capsys):
    code, text, summary = run_check_data(make_nnunet_dataset(tmp_path / "nn", n=2), tmp_path, capsys)
    assert code == 0 and summary["layout"] == "nnunet" and summary["channels"] == ["T1", "T2"]
    assert summary["classes"] == ["background", "edema", "core"] and "Channels: 2 (T1, T2)" in text
    code, text, summary = run_check_data(make_msd4d_dataset(tmp_path / "brats", n=2), tmp_path, capsys)
    assert code == 0 and summary["channels"] == ["FLAIR", "T1w", "T2w"] and summary["channels_in_last_axis"]
    assert summary["shapes"]["labels"]["max"] == [6, 24, 28]
    assert "in each image file's last axis" in text


def test_too_few_usable_cases_exit_2_with_the_problems(tmp_path, capsys):
    root = make_nnunet_dataset(tmp_path / "nn", n=2)
    (root / "imagesTr" / "case001_0001.png").unlink()
    code, text, summary = run_check_data(root, tmp_path, capsys)
    assert code == 2 and summary["n_usable"] == 1 and not summary["usable"]
    assert summary["problems"] == [
        {
            "case": "case001",
            "file": str(root / "imagesTr" / "case001_0001.png"),
            "reason": "channel 1 ('T2') of case 'case001' is missing",
        }
    ]
    assert "NOT usable" in text and "case001_0001.png: channel 1 ('T2')" in text


def test_a_mask_class_list_without_background_is_said_once(tmp_path, capsys):
    """classes.json naming only the mask classes (issue 34, point 5): one problem naming the
    file, what index 0 is and the list to write; not one "not in the class list" per case."""
    root = make_masks_dataset(tmp_path / "cxr", n=6, classes=CLASSES[1:])  # lung, heart, clavicle
    code, text, summary = run_check_data(root, tmp_path, capsys)
    assert code == 2 and len(summary["problems"]) == 1
    problem = summary["problems"][0]
    assert problem["file"] == str(root / "classes.json")
    assert "index 0 of the class list is the background" in problem["reason"]
    assert "'lung', which has a mask folder (masks/lung/)" in problem["reason"]
    assert '["background", "lung", "heart", "clavicle"]' in problem["reason"]
    assert text.count("index 0") == 1 and "not in the class list" not in text
    # "background" named, but not first: said once too
    (root / "classes.json").write_text(json.dumps(["lung", "background", "heart", "clavicle"]))
    code, text, summary = run_check_data(root, tmp_path, capsys)
    assert code == 2 and len(summary["problems"]) == 1
    assert "'background' is at index 1 of the class list; index 0 is the background" in text
    # fixed as told: usable
    (root / "classes.json").write_text(json.dumps(["background", "lung", "heart", "clavicle"]))
    assert run_check_data(root, tmp_path, capsys)[0] == 0


def test_a_label_class_list_without_background_is_said_once(tmp_path, capsys):
    """Label maps whose class list lacks the background: the cause once, before the cases'
    label problems, which share one line."""
    root = tmp_path / "folder"
    for i in range(5):
        labels = np.zeros((32, 32), np.uint8)
        labels[8:24, 8:24], labels[12:20, 12:20], labels[:3, :3] = 1, 2, 3
        write_picture(root / "images" / f"c{i}.png", (np.random.default_rng(i).random((32, 32)) * 200).astype(np.uint8))
        write_picture(root / "labels" / f"c{i}.png", labels)
    (root / "classes.json").write_text(json.dumps(["lung", "heart", "clavicle"]))
    code, text, summary = run_check_data(root, tmp_path, capsys)
    assert code == 2 and len(summary["problems"]) == 6  # the cause, then each case's file (JSON keeps them all)
    first = summary["problems"][0]
    assert first["file"] == str(root / "classes.json") and first["case"] == ""
    assert "the labels hold values up to 3: index 0 is the background" in first["reason"]
    assert text.count("index 0 is the background") == 1
    assert text.count("outside the 3 declared classes") == 1 and "5 files: label value(s) 3 outside" in text
    assert "Problems (6, 5 case(s))" in text


def test_not_a_data_set_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, text, summary = run_check_data(tmp_path / "empty", tmp_path, capsys)
    assert code == 2 and summary["layout"] is None and summary["n_cases"] == 0
    assert "is not a data set folder" in summary["problems"][0]["reason"]
    assert summary["working_size"] is None and summary["seconds_per_step"] is None
    assert main(["check-data", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().out


@pytest.mark.shared_data
@pytest.mark.skipif(not HIPPOCAMPUS.is_dir(), reason=NO_SHARED_DATA)
def test_check_data_on_the_hippocampus(tmp_path, capsys):
    code, text, summary = run_check_data(HIPPOCAMPUS, tmp_path, capsys)
    assert code == 0 and summary["layout"] == "msd" and summary["problems"] == []
    assert summary["classes"] == ["background", "Anterior", "Posterior"] and summary["channels"] == ["MRI"]
    assert summary["n_usable"] == summary["n_cases"] >= 2
    assert summary["shapes"]["ndim"] == 3 and all(v > 0 for v in summary["class_voxels"].values())
    assert_training_estimate(summary)
    assert "slices at their own resolution" in text
