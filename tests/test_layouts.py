"""Every data set layout (MSD, MSD 4D multi-modal, nnU-Net v2, plain folder, per-class
mask folders), grid resampling, and the problems listed by file with ``on_error``."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from layout_builders import (
    CLASSES,
    make_folder_dataset,
    make_masks_dataset,
    make_msd4d_dataset,
    make_nnunet_dataset,
    mask_regions,
    noisy_image,
    write_picture,
)
from napari_simseg.core.data.datasets import (
    Case,
    DatasetError,
    check_dataset,
    discover_dataset,
    largest_slice_shape,
    load_case,
    load_case_with,
    read_and_check,
)
from napari_simseg.core.data.slices import SliceDataset
from napari_simseg.core.io.images import read_image, write_image


def per_channel_stats(image):
    """Mean and std of each channel of a (C, S, H, W) image."""
    flat = image.reshape(image.shape[0], -1)
    return flat.mean(axis=1), flat.std(axis=1)


# --------------------------------------------------------------------------- the Case contract


def test_case_accepts_one_path_or_a_channel_tuple(tmp_path):
    single = Case("a", tmp_path / "a.nii.gz", tmp_path / "l.nii.gz")
    assert single.image_paths == (tmp_path / "a.nii.gz",) and single.image_path == tmp_path / "a.nii.gz"
    assert single.label_grid_path == tmp_path / "l.nii.gz"
    two = Case("b", (str(tmp_path / "b_0000.png"), tmp_path / "b_0001.png"), tmp_path / "b.png")
    assert two.image_paths == (tmp_path / "b_0000.png", tmp_path / "b_0001.png")
    masks = Case("c", tmp_path / "c.png", mask_paths=[("lung", None), ("heart", str(tmp_path / "h.png"))])
    assert masks.mask_paths == (("lung", None), ("heart", tmp_path / "h.png"))
    assert masks.label_path is None and masks.label_grid_path == tmp_path / "h.png"
    with pytest.raises(ValueError, match="label_path or mask_paths"):
        Case("d", tmp_path / "d.png")


# --------------------------------------------------------------------------- masks/<class>/


def test_masks_layout_smaller_structure_wins_and_overlaps_are_counted(tmp_path):
    root = make_masks_dataset(tmp_path / "cxr", n=3)
    spec = discover_dataset(root)
    assert spec.layout == "masks" and spec.class_names == CLASSES and spec.channel_names == ["image"]
    assert spec.case_ids == ["c0", "c1", "c2"] and spec.notes == []
    case = spec.cases[0]
    assert [name for name, _ in case.mask_paths] == CLASSES[1:] and case.label_path is None
    read = read_and_check(case, spec=spec)
    assert read.issues == [] and read.image.shape == (1, 32, 32) and read.labels.dtype == np.uint8
    regions = mask_regions((32, 32))
    sizes = {k: int(v.sum()) for k, v in regions.items()}
    assert sizes["lung"] > sizes["heart"] > sizes["clavicle"]
    expected = np.zeros((32, 32), np.uint8)
    for value, name in enumerate(CLASSES[1:], start=1):
        expected[regions[name]] = value  # listed largest first here: smaller ones overwrite
    np.testing.assert_array_equal(read.labels, expected)
    assert read.overlaps == {
        ("lung", "heart"): int((regions["lung"] & regions["heart"]).sum()),
        ("heart", "clavicle"): int((regions["heart"] & regions["clavicle"]).sum()),
    }
    assert all(n > 0 for n in read.overlaps.values()) and ("lung", "clavicle") not in read.overlaps
    # classes.json gives the label values; the smaller structure still wins, in any order
    (root / "classes.json").write_text(json.dumps(["background", "clavicle", "heart", "lung"]))
    labels = read_and_check(discover_dataset(root).cases[0]).labels
    assert labels[regions["lung"] & regions["heart"]].tolist() == [2] * read.overlaps[("lung", "heart")]
    assert labels[regions["heart"] & regions["clavicle"]].tolist() == [1] * read.overlaps[("heart", "clavicle")]
    np.testing.assert_array_equal(labels == 1, regions["clavicle"])  # the smallest keeps its whole shape
    image, lab = load_case(case, spec=spec)
    assert image.shape == (1, 1, 32, 32) and lab.shape == (1, 32, 32)


def test_masks_layout_equal_sizes_later_class_wins(tmp_path):
    root = tmp_path / "eq"
    a = np.zeros((16, 16), bool)
    a[2:10, 2:10] = True
    b = np.roll(a, 4, axis=1)  # same size, overlapping 4 columns
    write_picture(root / "images" / "c0.png", noisy_image((16, 16), 0, [a, b]))
    write_picture(root / "masks" / "first" / "c0.png", (a * 255).astype(np.uint8))
    write_picture(root / "masks" / "second" / "c0.png", (b * 255).astype(np.uint8))
    (root / "classes.json").write_text(json.dumps(["background", "first", "second"]))
    labels = read_and_check(discover_dataset(root).cases[0]).labels
    assert set(labels[a & b].tolist()) == {2}


def test_masks_layout_without_class_list_and_with_a_missing_mask(tmp_path, caplog):
    root = make_masks_dataset(tmp_path / "cxr", n=3, classes=None)
    (root / "masks" / "heart" / "c1.png").unlink()
    with caplog.at_level(logging.WARNING):
        spec = discover_dataset(root)
    assert spec.class_names == ["background", "clavicle", "heart", "lung"]  # folders sorted
    assert any("no classes.json" in n for n in spec.notes) and "no classes.json" in caplog.text
    assert "class 'heart': no mask for 1 case(s), empty there: c1" in caplog.text
    read = read_and_check(spec.get_cases(["c1"])[0], spec=spec)
    assert read.issues == [] and read.notes == ["no mask for class 'heart': empty there"]
    assert 2 not in np.unique(read.labels)


def test_masks_layout_leaves_out_images_without_any_mask_and_masks_without_image(tmp_path):
    root = make_masks_dataset(tmp_path / "cxr", n=3)
    write_picture(root / "images" / "lonely.png", noisy_image((32, 32), 9))
    write_picture(root / "masks" / "lung" / "ghost.png", np.zeros((32, 32), np.uint8))
    spec = discover_dataset(root)
    assert spec.case_ids == ["c0", "c1", "c2"]
    assert sorted(p.name for p in spec.unmatched) == ["ghost.png", "lonely.png"]


# --------------------------------------------------------------------------- grid resampling


def test_images_at_twice_the_mask_resolution_are_block_averaged(tmp_path):
    root = make_masks_dataset(tmp_path / "cxr", n=2, size=32, image_factor=2)
    spec = discover_dataset(root)
    read = read_and_check(spec.cases[0], spec=spec)
    assert read.issues == [] and read.image.shape == (1, 32, 32) and read.image_shape == (64, 64)
    original = read_image(spec.cases[0].image_path).array.astype(np.float64)
    np.testing.assert_allclose(read.image[0], original.reshape(32, 2, 32, 2).mean(axis=(1, 3)), rtol=1e-6)
    assert read.spacing == (1.0, 1.0)  # the label grid's, as the mask files state it
    assert read.notes == ["image 64x64 resampled to the 32x32 label grid (block mean, scale 1/2 x 1/2)"]
    assert largest_slice_shape(spec, multiple=8) == (32, 32)  # the label grid, not the image's
    image, labels = load_case(spec.cases[0], spec=spec)
    assert image.shape == (1, 1, 32, 32) and labels.shape == (1, 32, 32)


def test_images_at_half_the_label_resolution_are_linearly_upsampled(tmp_path):
    image = np.repeat(np.arange(8, dtype=np.float32)[None], 6, axis=0) * 10  # a ramp along x
    write_image(tmp_path / "i.nii.gz", image)
    write_image(tmp_path / "l.nii.gz", np.zeros((12, 16), np.uint8))
    read = read_and_check(Case("x", tmp_path / "i.nii.gz", tmp_path / "l.nii.gz"), 2)
    assert read.issues == [] and read.image.shape == (1, 12, 16)
    assert "linear interpolation, scale 2 x 2" in read.notes[0]
    row = read.image[0, 0]
    np.testing.assert_allclose(row[1:-1], (np.arange(1, 15) - 0.5) / 2 * 10)  # centres: (j + .5) / 2 - .5
    assert row[0] == 0 and row[-1] == 70  # held at the edges
    assert np.all(read.image[0] == read.image[0, :1])


def test_non_integer_grid_mismatch_is_an_error_naming_the_file_and_both_shapes(tmp_path):
    write_picture(tmp_path / "img.png", noisy_image((64, 64), 0))
    write_picture(tmp_path / "mask.png", np.zeros((21, 21), np.uint8))  # about 3x, not an integer factor
    read = read_and_check(Case("x", tmp_path / "img.png", mask_paths=[("lung", tmp_path / "mask.png")]), 2)
    assert read.image is None and len(read.issues) == 1
    issue = read.issues[0]
    assert issue.path == tmp_path / "mask.png"
    assert "mask shape (21, 21) differs from image shape (64, 64) (img.png)" in issue.reason
    with pytest.raises(DatasetError, match=r"mask\.png: mask shape \(21, 21\)"):
        load_case(Case("x", tmp_path / "img.png", mask_paths=[("lung", tmp_path / "mask.png")]))


# --------------------------------------------------------------------------- nnU-Net v2


@pytest.mark.parametrize("ending, shape", [(".png", (32, 40)), (".nii.gz", (5, 20, 24))])
def test_nnunet_two_channels_every_channel_used_and_normalised_on_its_own(tmp_path, ending, shape, caplog):
    root = make_nnunet_dataset(tmp_path / "nn", n=3, ending=ending, shape=shape)
    (root / "imagesTr" / "readme.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        spec = discover_dataset(root)
    assert "extra image channel ignored" not in caplog.text
    assert spec.layout == "nnunet" and spec.channel_names == ["T1", "T2"] and spec.n_channels == 2
    assert spec.class_names == ["background", "edema", "core"] and spec.case_ids == ["case000", "case001", "case002"]
    assert any("not ending in" in n and "readme.txt" in n for n in spec.notes)
    case = spec.cases[1]
    assert [p.name for p in case.image_paths] == [f"case001_0000{ending}", f"case001_0001{ending}"]
    image, labels = load_case(case, spec=spec)
    n_slices = 1 if len(shape) == 2 else shape[0]
    assert image.shape == (2, n_slices, *shape[-2:]) and labels.shape == (n_slices, *shape[-2:])
    mean, std = per_channel_stats(image)
    np.testing.assert_allclose(mean, 0, atol=1e-4)
    np.testing.assert_allclose(std, 1, atol=1e-3)
    raw = [read_image(p).array.astype(np.float64) for p in case.image_paths]
    assert raw[1].mean() > 10 * raw[0].mean()  # very different scales, each normalised alone
    evaluated = load_case_with(case, {"low": 0.5, "high": 99.5}, axis=0)
    assert evaluated.image.shape == image.shape and evaluated.labels.dtype == np.int64


def test_nnunet_region_based_labels_give_one_class_per_label_value(tmp_path, caplog):
    root = make_nnunet_dataset(tmp_path / "nn", n=2)
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "whole tumour": [1, 2], "core": [2]}  # nnU-Net v2 regions
    meta["regions_class_order"] = [1, 2]
    (root / "dataset.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING):
        spec = discover_dataset(root)
    assert spec.class_names == ["background", "whole tumour", "core"]  # value 2 named by its smaller region
    assert "region-based labels" in caplog.text
    _, labels = load_case(spec.cases[0], spec=spec)
    assert set(np.unique(labels).tolist()) == {0, 1, 2}


# --------------------------------------------------------------------------- MSD


def test_msd_4d_multimodal_images_read_as_channels(tmp_path):
    root = make_msd4d_dataset(tmp_path / "brats", n=3)
    spec = discover_dataset(root)
    assert spec.layout == "msd" and spec.channel_names == ["FLAIR", "T1w", "T2w"] and spec.channels_in_last_axis
    assert spec.class_names == ["background", "tumour"]
    read = read_and_check(spec.cases[0], spec=spec)
    assert read.issues == [] and read.image.shape == (3, 6, 24, 28)
    np.testing.assert_allclose(read.spacing, (3.0, 0.8, 0.9), rtol=1e-6)
    image, labels = load_case(spec.cases[0], axis=1, spec=spec)
    assert image.shape == (3, 24, 6, 28) and labels.shape == (24, 6, 28)
    np.testing.assert_allclose(per_channel_stats(image)[1], 1, atol=1e-3)
    assert largest_slice_shape(spec, multiple=4) == (24, 28)
    # a file with another number of modalities than dataset.json lists
    shutil.copy(root / "labelsTr" / "brats_001.nii.gz", root / "imagesTr" / "brats_001.nii.gz")
    issues = read_and_check(spec.cases[1], spec=spec).issues
    assert len(issues) == 1 and issues[0].path.name == "brats_001.nii.gz"
    assert "1 image channel(s) (along its last axis), the data set has 3 (FLAIR, T1w, T2w)" in issues[0].reason


def test_msd_without_training_list_reads_channel_suffixes(tmp_path):
    root = make_nnunet_dataset(tmp_path / "v1", n=2, ending=".nii.gz", shape=(4, 16, 16))
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({"modality": meta["channel_names"],
                                                   "labels": {"0": "background", "1": "edema", "2": "core"}}))
    spec = discover_dataset(root)
    assert spec.layout == "msd" and spec.channel_names == ["T1", "T2"] and not spec.channels_in_last_axis
    assert [len(c.image_paths) for c in spec.cases] == [2, 2]
    assert read_and_check(spec.cases[0], spec=spec).image.shape == (2, 4, 16, 16)


def test_nnunet_v1_training_list_names_the_case_not_its_channel_files(tmp_path):
    root = make_nnunet_dataset(tmp_path / "v1", n=2, ending=".nii.gz", shape=(4, 16, 16))
    training = [{"image": f"./imagesTr/case{i:03d}.nii.gz", "label": f"./labelsTr/case{i:03d}.nii.gz"}
                for i in range(2)]
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "T1", "1": "T2"}, "training": training,
                                                   "labels": {"0": "background", "1": "edema", "2": "core"}}))
    spec = discover_dataset(root)
    assert spec.case_ids == ["case000", "case001"] and len(spec.cases[0].image_paths) == 2
    assert load_case(spec.cases[0], spec=spec).image.shape == (2, 4, 16, 16)


# --------------------------------------------------------------------------- plain folder


def test_plain_folder_of_pictures(tmp_path):
    root = make_folder_dataset(tmp_path / "f", n=3, ext=".png")
    spec = discover_dataset(root)
    assert spec.layout == "folder" and spec.class_names == ["background", "nodule"]
    image, labels = load_case(spec.cases[0], spec=spec)
    assert image.shape == (1, 1, 32, 36) and labels.shape == (1, 32, 36) and set(np.unique(labels)) == {0, 1}
    (root / "masks").mkdir()
    assert any("masks/ ignored" in n for n in discover_dataset(root).notes)


# --------------------------------------------------------------------------- problems by file


def test_mask_layout_problems_listed_by_file_and_skipped(tmp_path):
    """An unreadable PNG, a mask of another size, a class folder not in classes.json."""
    root = make_masks_dataset(tmp_path / "cxr", n=5)
    (root / "images" / "c1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    write_picture(root / "masks" / "heart" / "c2.png", np.zeros((21, 21), np.uint8))
    write_picture(root / "masks" / "rib" / "c3.png", np.zeros((32, 32), np.uint8))
    spec = discover_dataset(root)
    assert spec.class_names == CLASSES  # the extra folder adds no class
    with pytest.raises(DatasetError) as err:
        check_dataset(spec, on_error="stop")
    msg = str(err.value)
    assert "3 of 5 case(s)" in msg
    assert f"{root / 'images' / 'c1.png'}: the file is corrupt, truncated or not a valid PNG file" in msg
    assert f"{root / 'masks' / 'heart' / 'c2.png'}: mask shape (21, 21) differs from" in msg
    assert f"{root / 'masks' / 'rib' / 'c3.png'}: class folder 'rib' is not in the class list" in msg
    assert {(i.case_id, i.path.parent.name, i.path.name) for i in err.value.issues} == {
        ("c1", "images", "c1.png"), ("c2", "heart", "c2.png"), ("c3", "rib", "c3.png")}
    report = check_dataset(spec, on_error="skip")
    assert [c.case_id for c in report.skipped] == ["c1", "c2", "c3"]
    assert [c.case_id for c in report.ok] == ["c0", "c4"]
    ds = SliceDataset(spec, on_error="skip")
    assert ds.case_ids == ["c0", "c4"] and len(ds.skipped) == 3


def test_missing_channel_listed_by_file_and_skipped(tmp_path):
    root = make_nnunet_dataset(tmp_path / "nn", n=3, ending=".png")
    (root / "imagesTr" / "case001_0001.png").unlink()
    spec = discover_dataset(root)
    assert spec.case_ids == ["case000", "case001", "case002"]
    with pytest.raises(DatasetError) as err:
        check_dataset(spec, on_error="stop")
    assert len(err.value.issues) == 1
    issue = err.value.issues[0]
    assert issue.path == root / "imagesTr" / "case001_0001.png" and issue.case_id == "case001"
    assert issue.reason == "channel 1 ('T2') of case 'case001' is missing"
    report = check_dataset(spec, on_error="skip")
    assert [c.case_id for c in report.skipped] == ["case001"] and len(report.ok) == 2
    ds = SliceDataset(spec, on_error="skip")
    assert ds.case_ids == ["case000", "case002"]
    # a channel beyond channel_names is listed by its file too
    shutil.copy(root / "imagesTr" / "case000_0000.png", root / "imagesTr" / "case000_0002.png")
    issues = check_dataset(discover_dataset(root), on_error="skip").issues
    assert {(i.case_id, i.path.name) for i in issues} == {("case001", "case001_0001.png"),
                                                          ("case000", "case000_0002.png")}


def test_discovery_errors_name_the_layouts(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="images/ and masks/<class>/"):
        discover_dataset(tmp_path / "empty")
    root = make_nnunet_dataset(tmp_path / "nn", n=1)
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "file_ending": ".webp"}))
    with pytest.raises(DatasetError, match="file_ending '.webp' is not a supported image type"):
        discover_dataset(root)
    (root / "dataset.json").write_text(json.dumps({**meta, "channel_names": {"0": "T1", "2": "T2"}}))
    with pytest.raises(DatasetError, match="number the channels 0..1"):
        discover_dataset(root)
