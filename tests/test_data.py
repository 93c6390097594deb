"""Tests of the data modules: discovery and checks (datasets), splits, preprocessing, augmentation, slice datasets."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import HIPPOCAMPUS, NO_SHARED_DATA
from napari_simseg.core.data.augmentation import Augmenter
from napari_simseg.core.data.datasets import (
    Case,
    DatasetError,
    check_case,
    check_dataset,
    discover_dataset,
    largest_slice_shape,
    load_case,
)
from napari_simseg.core.data.phantom import CLASS_NAMES, make_phantom, make_phantom_dataset
from napari_simseg.core.data.slices import SliceDataset, SliceOptions
from napari_simseg.core.data.splits import load_split, save_split, split_cases
from napari_simseg.core.imaging.preprocessing import (
    CropBox,
    ImageError,
    n4_correct,
    normalize_volume,
    pad_to_multiple,
    slice_volume,
    unpad,
)
from napari_simseg.core.io.images import read_image, write_image

SHAPE = (8, 40, 56)  # small phantoms keep the tests fast


@pytest.fixture(scope="module")
def msd_root(tmp_path_factory):
    return make_phantom_dataset(tmp_path_factory.mktemp("msd") / "Phantom", 4, seed=0, shape=SHAPE, n_tumours=3)


@pytest.fixture()
def msd_copy(msd_root, tmp_path):
    return Path(shutil.copytree(msd_root, tmp_path / "copy"))


# --------------------------------------------------------------------------- discovery


def test_discover_msd(msd_root):
    spec = discover_dataset(msd_root)
    assert spec.layout == "msd" and spec.name == "SimSegPhantom"
    assert spec.class_names == list(CLASS_NAMES) and spec.n_classes == 5
    assert spec.case_ids == ["phantom_000", "phantom_001", "phantom_002", "phantom_003"]
    assert spec.channel_names == ["MRI"] and not spec.channels_in_last_axis
    c = spec.cases[0]
    assert c.image_paths == (msd_root / "imagesTr" / "phantom_000.nii.gz",)
    assert c.image_path == msd_root / "imagesTr" / "phantom_000.nii.gz"
    assert c.label_path == msd_root / "labelsTr" / "phantom_000.nii.gz"
    assert c.image_path.exists() and c.label_path.exists()
    with pytest.raises(DatasetError, match="'nope'"):
        spec.get_cases(["phantom_000", "nope"])


def test_discover_msd_without_training_list(msd_copy, caplog):
    meta = json.loads((msd_copy / "dataset.json").read_text())
    del meta["training"]
    (msd_copy / "dataset.json").write_text(json.dumps(meta))
    (msd_copy / "imagesTr" / "._phantom_000.nii.gz").write_bytes(b"junk")
    (msd_copy / "labelsTr" / ".DS_Store").write_bytes(b"junk")
    (msd_copy / "labelsTr" / "notes.txt").write_text("not an image")
    shutil.copy(msd_copy / "imagesTr" / "phantom_000.nii.gz", msd_copy / "imagesTr" / "orphan.nii.gz")
    with caplog.at_level(logging.WARNING):
        spec = discover_dataset(msd_copy)
    assert spec.case_ids == ["phantom_000", "phantom_001", "phantom_002", "phantom_003"]
    assert [p.name for p in spec.unmatched] == ["orphan.nii.gz"]
    assert "orphan.nii.gz" in caplog.text and "notes.txt" in caplog.text
    assert "._phantom" not in caplog.text


def test_discover_nnunet_style(msd_copy):
    meta = json.loads((msd_copy / "dataset.json").read_text())
    del meta["training"]
    meta["labels"] = {"background": 0, "organ": 1, "cavity": 2, "tumour": 3, "neighbour": 4}
    (msd_copy / "dataset.json").write_text(json.dumps(meta))
    for p in (msd_copy / "imagesTr").iterdir():
        p.rename(p.with_name(p.name.replace(".nii.gz", "_0000.nii.gz")))
    spec = discover_dataset(msd_copy)
    assert spec.layout == "msd" and spec.class_names == list(CLASS_NAMES)
    assert len(spec.cases) == 4 and spec.cases[1].case_id == "phantom_001"
    assert spec.cases[1].image_paths == (msd_copy / "imagesTr" / "phantom_001_0000.nii.gz",)


def make_folder_dataset(root, n=2, classes=None):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        img, lab, _ = make_phantom(SHAPE, seed=i, n_tumours=1)
        write_image(root / "images" / f"c{i}.nrrd", img)
        write_image(root / "labels" / f"c{i}.nii.gz", lab)
    return root


def test_discover_plain_folder_class_sources(tmp_path):
    root = make_folder_dataset(tmp_path / "f")
    spec = discover_dataset(root)  # inferred from label values
    assert spec.layout == "folder"
    assert spec.class_names == ["background", "class_1", "class_2", "class_3", "class_4"]
    assert spec.case_ids == ["c0", "c1"]
    (root / "classes.txt").write_text("bg\norgan\ncavity\n\ntumour\nneighbour\n")
    assert discover_dataset(root).class_names == ["bg", "organ", "cavity", "tumour", "neighbour"]
    (root / "classes.json").write_text(json.dumps({"0": "background", "1": "a", "4": "d"}))
    assert discover_dataset(root).class_names == ["background", "a", "class_2", "class_3", "d"]
    (root / "classes.json").write_text(json.dumps(["x", "y"]))
    assert discover_dataset(root).class_names == ["x", "y"]
    (root / "classes.json").write_text("{not json")
    with pytest.raises(DatasetError, match="classes.json: invalid JSON"):
        discover_dataset(root)


def test_discover_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        discover_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="dataset.json .* images/ and labels/"):
        discover_dataset(tmp_path / "empty")
    root = make_folder_dataset(tmp_path / "dup", n=1)
    write_image(root / "images" / "c0.nii.gz", np.zeros((2, 3, 4), np.float32))
    with pytest.raises(DatasetError, match="c0.*c0"):
        discover_dataset(root)


# --------------------------------------------------------------------------- checks


def break_dataset(root):
    """Corrupt one image, mis-shape one label, put a bad value in another."""
    (root / "imagesTr" / "phantom_000.nii.gz").write_bytes(b"garbage" * 50)
    write_image(root / "labelsTr" / "phantom_001.nii.gz", np.zeros((3, 4, 5), np.uint8))
    lab = read_image(root / "labelsTr" / "phantom_002.nii.gz")
    lab.array[0, 0, 0] = 7
    write_image(root / "labelsTr" / "phantom_002.nii.gz", lab)


def test_check_case_reports_problems_by_file(msd_copy):
    spec = discover_dataset(msd_copy)
    assert check_case(spec.cases[3], spec.n_classes) == []
    break_dataset(msd_copy)
    issues = [check_case(c, spec.n_classes) for c in spec.cases]
    assert len(issues[0]) == 1 and issues[0][0].path.name == "phantom_000.nii.gz"
    assert "corrupt" in issues[0][0].reason
    assert "differs from image shape" in issues[1][0].reason
    assert "label value(s) 7 outside the 5 declared classes" in issues[2][0].reason
    assert issues[3] == []


def test_on_error_stop_lists_every_bad_file(msd_copy):
    break_dataset(msd_copy)
    spec = discover_dataset(msd_copy)
    with pytest.raises(DatasetError) as err:
        check_dataset(spec, on_error="stop")
    msg = str(err.value)
    assert "3 of 4 case(s)" in msg
    for name in ("imagesTr/phantom_000", "labelsTr/phantom_001", "labelsTr/phantom_002"):
        assert name in msg
    assert len(err.value.issues) == 3
    with pytest.raises(DatasetError, match="3 of 4"):
        SliceDataset(spec, on_error="stop")


def test_on_error_skip(msd_copy, caplog):
    break_dataset(msd_copy)
    spec = discover_dataset(msd_copy)
    with caplog.at_level(logging.WARNING):
        report = check_dataset(spec, on_error="skip")
    assert [c.case_id for c in report.skipped] == ["phantom_000", "phantom_001", "phantom_002"]
    assert [c.case_id for c in report.ok] == ["phantom_003"]
    assert "phantom_002" in caplog.text and "skipped" in caplog.text
    ds = SliceDataset(spec, on_error="skip")
    assert ds.case_ids == ["phantom_003"] and len(ds.skipped) == 3
    assert len(ds) == SHAPE[0]
    with pytest.raises(ValueError, match="'stop' or 'skip'"):
        check_dataset(spec, on_error="ignore")


def test_nonconstant_and_finite_checks(tmp_path):
    write_image(tmp_path / "i.nii.gz", np.zeros((3, 4, 5), np.float32))
    write_image(tmp_path / "l.nii.gz", np.zeros((3, 4, 5), np.uint8))
    issues = check_case(Case("i", tmp_path / "i.nii.gz", tmp_path / "l.nii.gz"), 2)
    assert "constant" in issues[0].reason
    nan = np.ones((3, 4, 5), np.float32)
    nan[0, 0, 0] = np.nan
    write_image(tmp_path / "n.mha", nan)  # (ITK turns NaN into 0 in NIfTI files)
    issues = check_case(Case("n", tmp_path / "n.mha", tmp_path / "l.nii.gz"), 2)
    assert "NaN" in issues[0].reason
    write_image(tmp_path / "f.nii.gz", np.full((3, 4, 5), 0.5, np.float32))
    issues = check_case(Case("n", tmp_path / "n.mha", tmp_path / "f.nii.gz"), 2)
    assert any("not all integers" in i.reason for i in issues)


# --------------------------------------------------------------------------- splits


def test_split_cases():
    ids = [f"case_{i:02d}" for i in range(20)]
    s = split_cases(ids, val_fraction=0.2, test_fraction=0.1, seed=3)
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (14, 4, 2)
    assert sorted(s["train"] + s["val"] + s["test"]) == ids
    assert s == split_cases(list(reversed(ids)), 0.2, 0.1, seed=3)
    assert s != split_cases(ids, 0.2, 0.1, seed=4)
    assert split_cases(ids[:3], 0.2)["val"] and len(split_cases(ids[:3], 0.2)["train"]) == 2
    assert split_cases(ids, 0.0)["val"] == []
    with pytest.raises(ValueError, match="duplicate"):
        split_cases(["a", "a", "b"])
    with pytest.raises(ValueError, match="no training case"):
        split_cases(["a", "b"], 0.5, 0.4)
    with pytest.raises(ValueError, match="must be < 1"):
        split_cases(ids, 0.6, 0.5)


def test_save_load_split(tmp_path):
    s = split_cases([f"c{i}" for i in range(10)], 0.2, 0.2, seed=1)
    save_split(tmp_path / "sub" / "split.json", s)
    assert load_split(tmp_path / "sub" / "split.json") == s
    (tmp_path / "bad.json").write_text(json.dumps({"train": ["a"], "val": ["a"]}))
    with pytest.raises(DatasetError, match="'a' is in both"):
        load_split(tmp_path / "bad.json")
    with pytest.raises(DatasetError, match="does not exist"):
        load_split(tmp_path / "none.json")


# --------------------------------------------------------------------------- preprocessing


def test_normalize_volume():
    rng = np.random.default_rng(0)
    a = rng.normal(1000, 50, size=(4, 30, 30))
    a[0, 0, 0] = 1e9  # outlier clipped away
    n = normalize_volume(a)
    assert n.dtype == np.float32
    assert abs(float(n.mean())) < 1e-4 and abs(float(n.std()) - 1) < 1e-3
    assert n.max() < 5
    sparse = np.zeros((10, 10, 10))
    sparse[0, 0, :3] = 5.0  # clipping alone would make it constant
    assert normalize_volume(sparse).std() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ImageError, match="image 'scan.nii.gz' is constant"):
        normalize_volume(np.zeros((3, 3, 3)), name="scan.nii.gz")
    bad = np.ones((3, 3, 3))
    bad[1, 1, 1] = np.inf
    with pytest.raises(ImageError, match="image 'x.nrrd' contains 1 NaN or infinite"):
        normalize_volume(bad, name="x.nrrd")


def test_n4_correct_reduces_bias_and_caches(tmp_path):
    rng = np.random.default_rng(0)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in (8, 48, 48)], indexing="ij")
    tissue = (yy**2 + xx**2 < 0.8) & ((yy - 0.1) ** 2 + (xx - 0.2) ** 2 > 0.1)
    img = np.abs(100.0 * tissue + 50.0 * ((yy - 0.1) ** 2 + (xx - 0.2) ** 2 <= 0.1) + rng.normal(0, 3, xx.shape))
    biased = (img * np.exp(0.5 * xx + 0.3 * yy)).astype(np.float32)

    def halves_ratio(a):  # 0 without bias
        return np.log(a[tissue & (xx > 0.3)].mean() / a[tissue & (xx < -0.3)].mean())

    src = tmp_path / "src.nii.gz"
    write_image(src, biased)
    out = n4_correct(biased, cache_dir=tmp_path / "cache", key=src)
    assert out.dtype == np.float32 and out.shape == biased.shape
    assert abs(halves_ratio(out)) < 0.2 * abs(halves_ratio(biased))
    files = list((tmp_path / "cache").glob("n4_*.npy"))
    assert len(files) == 1
    np.save(files[0], np.full_like(out, 7.0))  # prove the next call reads the cache
    assert (n4_correct(biased, cache_dir=tmp_path / "cache", key=src) == 7.0).all()
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # "edited" file: new key
    again = n4_correct(biased, cache_dir=tmp_path / "cache", key=src)
    assert not (again == 7.0).all() and len(list((tmp_path / "cache").glob("n4_*.npy"))) == 2


def test_slice_volume():
    vol = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    img, lab = slice_volume(vol, vol, axis=1)
    assert img.shape == (3, 2, 4) and lab.shape == (3, 2, 4)
    np.testing.assert_array_equal(img[1], vol[:, 1, :])
    assert slice_volume(vol)[0].shape == (2, 3, 4) and slice_volume(vol)[1] is None
    assert slice_volume(vol[0], axis=2)[0].shape == (1, 3, 4)
    with pytest.raises(ValueError, match="differs"):
        slice_volume(vol, vol[0])


def test_pad_to_multiple():
    a = np.arange(3 * 33 * 40, dtype=np.float32).reshape(3, 33, 40)
    p, box = pad_to_multiple(a)
    assert p.shape == (3, 64, 64)
    assert box == CropBox(15, 48, 12, 52)
    np.testing.assert_array_equal(unpad(p, box), a)
    np.testing.assert_array_equal(p[..., box.slices[0], box.slices[1]], a)
    assert p[0, 0, 0] == 0 and p.sum() == a.sum()
    p2, box2 = pad_to_multiple(a[0], target=(40, 41), value=-1)
    assert p2.shape == (40, 41) and p2[0, 0] == -1
    np.testing.assert_array_equal(box2.crop(p2), a[0])
    t = torch.from_numpy(p)
    assert tuple(unpad(t, box).shape) == (3, 33, 40)
    with pytest.raises(ValueError, match="larger than the padding target"):
        pad_to_multiple(a, target=(32, 64))


def test_largest_slice_shape(msd_root):
    spec = discover_dataset(msd_root)
    assert largest_slice_shape(spec) == (64, 64)  # 40 x 56 -> multiples of 32
    assert largest_slice_shape(spec, axis=1) == (32, 64)  # 8 x 56
    assert largest_slice_shape(spec.cases[:1], multiple=8) == (40, 56)


# --------------------------------------------------------------------------- augmentation


def test_augmenter_deterministic_and_flips_consistent():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(20, 24)).astype(np.float32)
    lab = (rng.random((20, 24)) * 3).astype(np.uint8)
    aug = Augmenter(p=0.9)
    a1 = aug(img, lab, np.random.default_rng(42))
    a2 = aug(img, lab, np.random.default_rng(42))
    np.testing.assert_array_equal(a1[0], a2[0])
    np.testing.assert_array_equal(a1[1], a2[1])
    outs = {aug(img, lab, np.random.default_rng(s))[0].tobytes() for s in range(8)}
    assert len(outs) > 1
    # flips only: the image follows the labels exactly
    flip_only = Augmenter(p=1.0, brightness=0, gamma=None, blur_sigma=None, unsharp_amount=None)
    fi, fl = flip_only(lab.astype(np.float32), lab, np.random.default_rng(1))
    np.testing.assert_array_equal(fl, lab[::-1, ::-1])
    np.testing.assert_array_equal(fi, fl.astype(np.float32))
    # intensity only: labels untouched, gamma keeps the range
    inten = Augmenter(p=1.0, flip_vertical=False, flip_horizontal=False, brightness=0,
                      blur_sigma=None, unsharp_amount=None)
    gi, gl = inten(img, lab, np.random.default_rng(2))
    np.testing.assert_array_equal(gl, lab)
    assert gi.min() == pytest.approx(img.min(), abs=1e-5) and gi.max() == pytest.approx(img.max(), abs=1e-5)
    assert not np.allclose(gi, img)
    # p = 0 is the identity; inputs are never modified
    before = img.copy()
    ni, nl = Augmenter(p=0.0)(img, lab, np.random.default_rng(3))
    np.testing.assert_array_equal(ni, img)
    np.testing.assert_array_equal(img, before)
    with pytest.raises(ValueError, match="p must be"):
        Augmenter(p=2)


def test_augmenter_rotation_and_scaling_keep_image_and_labels_aligned():
    lab = np.zeros((40, 50), np.uint8)
    lab[10:30, 15:35] = 1
    lab[18:24, 20:26] = 2
    img = np.stack([lab, lab * 2]).astype(np.float32)  # a 2.5D stack: every channel moves alike
    spatial = dict(p=1.0, flip_vertical=False, flip_horizontal=False, brightness=0, gamma=None,
                   blur_sigma=None, unsharp_amount=None)
    moved = 0
    for seed in range(6):
        ri, rl = Augmenter(rotate_degrees=20, scale=(0.8, 1.25), **spatial)(img, lab, np.random.default_rng(seed))
        assert ri.shape == img.shape and rl.shape == lab.shape and rl.dtype == lab.dtype
        assert set(np.unique(rl)) <= {0, 1, 2}  # nearest for labels: no new classes
        # linear interpolation of the image agrees with the nearest-neighbour labels
        # everywhere but on the edges of the regions
        assert np.mean(np.round(ri[0]) == rl) > 0.97
        np.testing.assert_allclose(ri[1], 2 * ri[0], atol=1e-5)
        moved += not np.array_equal(rl, lab)
    assert moved == 6
    # zooming in (> 1) enlarges the anatomy, zooming out shrinks it
    big = Augmenter(scale=(1.3, 1.3), **spatial)(img, lab, np.random.default_rng(0))[1]
    small = Augmenter(scale=(0.7, 0.7), **spatial)(img, lab, np.random.default_rng(0))[1]
    assert (big > 0).sum() > 1.4 * (lab > 0).sum() > 1.4 ** 2 * (small > 0).sum()
    # off by default: the random streams, and so earlier runs, are unchanged
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    a = Augmenter(p=0.7)(img, lab, rng_a)
    b = Augmenter(p=0.7, rotate_degrees=0.0, scale=None)(img, lab, rng_b)
    np.testing.assert_array_equal(a[0], b[0])
    assert rng_a.random() == rng_b.random()
    with pytest.raises(ValueError, match="rotate_degrees"):
        Augmenter(rotate_degrees=200)
    with pytest.raises(ValueError, match="scale must be"):
        Augmenter(scale=(1.2, 0.9))


# --------------------------------------------------------------------------- datasets


def test_slice_dataset_items(msd_root):
    spec = discover_dataset(msd_root)
    ids = spec.case_ids[:3]
    ds = SliceDataset(spec, ids, SliceOptions(augmenter=Augmenter(seed=0, p=0.5), seed=7))
    assert len(ds) == 3 * SHAPE[0] and ds.target_shape == (64, 64)
    item = ds[SHAPE[0] + 2]
    assert item["case_id"] == ids[1] and item["slice_index"] == 2
    assert item["image"].dtype == torch.float32 and tuple(item["image"].shape) == (1, 64, 64)
    assert item["labels"].dtype == torch.int64 and tuple(item["labels"].shape) == (64, 64)
    y0, y1, x0, x1 = item["crop"].tolist()
    assert (y1 - y0, x1 - x0) == SHAPE[1:]
    assert int(item["labels"].max()) < 5
    # reproducible per (epoch, index); different epochs differ
    ds.set_epoch(1)
    e1 = [ds[i]["image"] for i in range(len(ds))]
    ds.set_epoch(1)
    assert all(torch.equal(a, ds[i]["image"]) for i, a in enumerate(e1))
    ds.set_epoch(2)
    assert any(not torch.equal(a, ds[i]["image"]) for i, a in enumerate(e1))
    # the stored volume is the normalised one, and loads match load_case
    lc = load_case(spec.cases[0], n_classes=spec.n_classes)
    np.testing.assert_array_equal(lc.image, ds.volume(ids[0]).image)
    assert abs(float(lc.image.mean())) < 1e-4
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    batch = next(iter(loader))
    assert tuple(batch["image"].shape) == (4, 1, 64, 64) and len(batch["case_id"]) == 4


def test_slice_dataset_counts_and_options(msd_root):
    spec = discover_dataset(msd_root)
    ds = SliceDataset(spec, spec.case_ids[:2], SliceOptions(axis=2, target_shape=(96, 96)))
    assert len(ds) == 2 * SHAPE[2]
    assert ds.images[spec.case_ids[0]].shape == (1, SHAPE[2], SHAPE[0], SHAPE[1])  # (C, S, H, W)
    expected = sum(
        np.bincount(read_image(c.label_path).array.ravel(), minlength=5) for c in spec.cases[:2]
    )
    np.testing.assert_array_equal(ds.class_pixel_counts(), expected)  # padding excluded
    assert ds.class_pixel_counts().sum() == 2 * np.prod(SHAPE)
    with pytest.raises(DatasetError, match="larger than target_shape"):
        SliceDataset(spec, spec.case_ids[:1], SliceOptions(target_shape=(32, 32)))
    with pytest.raises(DatasetError, match="not in data set"):
        SliceDataset(spec, ["ghost"])


def test_load_case_axis_and_errors(msd_root, tmp_path):
    spec = discover_dataset(msd_root)
    img, lab = load_case(spec.cases[0], axis=1)
    assert img.shape == (1, SHAPE[1], SHAPE[0], SHAPE[2])  # (C, S, H, W)
    assert lab.shape == (SHAPE[1], SHAPE[0], SHAPE[2])
    assert img.dtype == np.float32 and lab.dtype == np.uint8
    write_image(tmp_path / "l.nii.gz", np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(DatasetError, match="l.nii.gz: label shape .* differs from image shape"):
        load_case(Case("x", spec.cases[0].image_path, tmp_path / "l.nii.gz"))
    rebuilt = Case("y", spec.cases[0].image_path, spec.cases[0].label_path)  # a single path, positional
    np.testing.assert_array_equal(load_case(rebuilt, spec=spec).image, load_case(spec.cases[0]).image)


@pytest.mark.shared_data
@pytest.mark.skipif(not HIPPOCAMPUS.is_dir(), reason=NO_SHARED_DATA)
def test_real_hippocampus_two_cases():
    spec = discover_dataset(HIPPOCAMPUS)
    assert spec.class_names == ["background", "Anterior", "Posterior"]
    assert len(spec.cases) >= 2
    ids = spec.case_ids[:2]
    for case in spec.get_cases(ids):
        assert check_case(case, spec.n_classes) == []
    ds = SliceDataset(spec, ids, SliceOptions(target_shape=(64, 64)))
    for cid in ids:
        image, labels = ds.volume(cid)
        assert abs(float(image.mean())) < 1e-3 and abs(float(image.std()) - 1) < 1e-3
        assert set(np.unique(labels)) <= {0, 1, 2}
    counts = ds.class_pixel_counts()
    assert counts[1] > 0 and counts[2] > 0 and counts[0] > counts[1] + counts[2]
    item = ds[0]
    assert tuple(item["image"].shape) == (1, 64, 64)


def test_cap_split_keeps_exactly_the_budget_in_proportion_and_a_random_subset():
    from napari_simseg.core.data.splits import cap_split, split_cases

    ids = [f"case_{i:03d}" for i in range(40)]
    split = split_cases(ids, val_fraction=0.2, seed=0)  # 32 / 8 / 0
    capped = cap_split(split, 28, seed=0)
    assert [len(capped[k]) for k in ("train", "val", "test")] == [22, 6, 0]  # 22.4 + 5.6 = 28, not 22 + 5
    for k in ("train", "val"):
        assert set(capped[k]) <= set(split[k]) and capped[k] == sorted(capped[k])
    assert capped["train"] != split["train"][:22]  # not the alphabetically first ids (often one site)
    assert cap_split(split, 28, seed=0) == capped and cap_split(split, 28, seed=1) != capped
    tiny = cap_split(split_cases(ids, 0.2, 0.1, seed=0), 3)  # every non-empty part keeps one case
    assert [len(tiny[k]) for k in ("train", "val", "test")] == [1, 1, 1]
    assert cap_split(split, 100) == split  # a budget above the total keeps everything


def test_max_volumes_below_two_is_refused():
    from napari_simseg.core.engine.train_config import TrainConfig

    with pytest.raises(ValueError, match="max_volumes must be an integer >= 2"):
        TrainConfig(data="x", out="y", max_volumes=1).validate()
