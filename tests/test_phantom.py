"""Tests of napari_simseg.core.data.phantom."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from scipy import ndimage

from napari_simseg.core.data.phantom import CLASS_NAMES, make_phantom, make_phantom_dataset, phantom_spacing
from napari_simseg.core.io.images import read_image

FULL = np.ones((3, 3, 3), bool)  # 26-connectivity: the strictest count of separate tumours


@pytest.fixture(scope="module")
def phantom5():
    return make_phantom(seed=5, n_tumours=5)


def test_deterministic_and_seed_dependent(phantom5):
    img, lab, names = phantom5
    img2, lab2, _ = make_phantom(seed=5, n_tumours=5)
    np.testing.assert_array_equal(img, img2)
    np.testing.assert_array_equal(lab, lab2)
    img3, lab3, _ = make_phantom(seed=6, n_tumours=5)
    assert not np.array_equal(lab, lab3)
    assert not np.allclose(img, img3)


def test_types_and_ranges(phantom5):
    img, lab, names = phantom5
    assert names == list(CLASS_NAMES) == ["background", "organ", "cavity", "tumour", "neighbour"]
    assert img.shape == lab.shape == (24, 96, 96)
    assert img.dtype == np.float32 and lab.dtype == np.uint8
    assert np.isfinite(img).all() and img.min() >= 0 and img.std() > 0
    assert lab.min() >= 0 and lab.max() < len(names)


def test_every_class_present_and_imbalanced(phantom5):
    _, lab, names = phantom5
    frac = np.bincount(lab.ravel(), minlength=len(names)) / lab.size
    assert (frac > 0).all(), frac
    assert frac[0] > 0.5
    assert frac[3] < 0.05
    assert frac[2] < frac[1]  # the cavity is the smallest structure


@pytest.mark.parametrize("n", [0, 1, 9, 27])
def test_tumour_count(n):
    _, lab, _ = make_phantom(shape=(16, 64, 64), seed=n, n_tumours=n)
    assert ndimage.label(lab == 3, structure=FULL)[1] == n


def test_random_tumour_count_within_range():
    counts = [ndimage.label(make_phantom((8, 48, 48), seed=s)[1] == 3, structure=FULL)[1] for s in range(6)]
    assert all(0 <= c <= 27 for c in counts)
    assert len(set(counts)) > 1


def test_several_components_per_slice():
    """Some slices show a class as several separate pieces (V-shaped organ, tumours)."""
    def max_components(lab, c):
        return max(ndimage.label(lab[z] == c)[1] for z in range(lab.shape[0]))

    organ_split = [max_components(make_phantom(seed=s, n_tumours=0)[1], 1) for s in range(4)]
    assert max(organ_split) >= 2
    assert max_components(make_phantom(seed=0, n_tumours=8)[1], 3) >= 2


def test_intensities_overlap(phantom5):
    """No class is a clean intensity window: background voxels fall inside every
    foreground class's central intensity range."""
    img, lab, _ = phantom5
    bg = img[lab == 0]
    for c in range(1, 5):
        lo, hi = np.percentile(img[lab == c], [10, 90])
        assert np.mean((bg >= lo) & (bg <= hi)) > 0.01, c


def test_fast_and_other_shapes():
    t = time.perf_counter()
    make_phantom(seed=11)
    assert time.perf_counter() - t < 1.0
    img, lab, _ = make_phantom(shape=(12, 64, 80), seed=2, n_tumours=2)
    assert img.shape == (12, 64, 80)
    assert set(np.unique(lab)) == {0, 1, 2, 3, 4}
    assert phantom_spacing((12, 64, 80)) == (6.0, 2.25, 2.25)


def test_bad_arguments():
    with pytest.raises(ValueError, match="too small"):
        make_phantom(shape=(2, 96, 96))
    with pytest.raises(ValueError, match="three integers"):
        make_phantom(shape=(96, 96))
    with pytest.raises(ValueError, match="0..27"):
        make_phantom(n_tumours=28)


def test_dataset_msd_layout(tmp_path):
    out = make_phantom_dataset(tmp_path / "ds", n_volumes=2, seed=3, shape=(8, 48, 48), n_tumours=2)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "organ", "2": "cavity", "3": "tumour", "4": "neighbour"}
    assert meta["numTraining"] == 2
    assert meta["training"][0] == {"image": "./imagesTr/phantom_000.nii.gz", "label": "./labelsTr/phantom_000.nii.gz"}
    img = read_image(out / "imagesTr" / "phantom_001.nii.gz")
    lab = read_image(out / "labelsTr" / "phantom_001.nii.gz")
    assert img.shape == lab.shape == (8, 48, 48)
    assert lab.array.dtype == np.uint8 and img.array.dtype == np.float32
    np.testing.assert_allclose(img.spacing, phantom_spacing((8, 48, 48)), rtol=1e-6)
    # same data-set seed -> same volumes
    out2 = make_phantom_dataset(tmp_path / "ds2", n_volumes=1, seed=3, shape=(8, 48, 48), n_tumours=2)
    np.testing.assert_array_equal(
        read_image(out2 / "labelsTr" / "phantom_000.nii.gz").array,
        read_image(out / "labelsTr" / "phantom_000.nii.gz").array,
    )
