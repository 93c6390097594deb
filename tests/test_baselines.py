import numpy as np
import pytest

from napari_simseg.core.engine.baselines import (
    ClassicalSegmenter,
    GrabCutSegmenter,
    RandomWalkerSegmenter,
    get_segmenter,
    seed_map,
)
from napari_simseg.core.interaction.clicks import Click, ClickError

METHODS = ["random_walker", "grabcut"]


@pytest.fixture(scope="module")
def scene():
    """Two bright disks (classes 1, 2) on a dark background with Gaussian noise."""
    size = 96
    yy, xx = np.mgrid[:size, :size]
    gt = np.zeros((size, size), np.int64)
    gt[(yy - 28) ** 2 + (xx - 30) ** 2 < 14**2] = 1
    gt[(yy - 64) ** 2 + (xx - 62) ** 2 < 18**2] = 2
    rng = np.random.default_rng(0)
    image = (gt > 0) * 1.0 + rng.normal(0, 0.1, gt.shape)
    return image.astype(np.float32), gt


CLICKS = [Click(1, 28, 30), Click(2, 64, 62), Click(0, 8, 85)]


def _dice(pred, gt, c):
    p, g = pred == c, gt == c
    return 2 * (p & g).sum() / (p.sum() + g.sum())


@pytest.mark.parametrize("method", METHODS)
def test_one_click_per_region_segments_both_disks(scene, method):
    image, gt = scene
    pred = get_segmenter(method).predict(image, CLICKS, 3)
    assert pred.shape == gt.shape and pred.dtype == np.int64
    assert _dice(pred, gt, 1) > 0.8
    assert _dice(pred, gt, 2) > 0.8
    for c in CLICKS:  # every clicked pixel has its class
        assert pred[int(c.y), int(c.x)] == c.label


@pytest.mark.parametrize("method", METHODS)
def test_no_clicks_gives_all_background(scene, method):
    image, _ = scene
    pred = get_segmenter(method).predict(image, [], 3)
    assert pred.shape == image.shape
    assert not pred.any()


@pytest.mark.parametrize("method", METHODS)
def test_unclicked_classes_are_never_predicted(scene, method):
    image, _ = scene
    pred = get_segmenter(method).predict(image, [(0, 8, 85), (2, 64, 62)], 5)
    assert set(np.unique(pred)) <= {0, 2}
    assert (pred == 2).any()


@pytest.mark.parametrize("method", METHODS)
def test_invalid_inputs_raise(scene, method):
    image, _ = scene
    seg = get_segmenter(method)
    with pytest.raises(ValueError, match="2D"):
        seg.predict(np.stack([image, image]), CLICKS, 3)
    with pytest.raises(ClickError):
        seg.predict(image, [Click(1, 500, 3)], 3)
    with pytest.raises(ClickError):
        seg.predict(image, [Click(3, 5, 3)], 3)


def test_get_segmenter_names_and_errors():
    assert isinstance(get_segmenter("random_walker"), RandomWalkerSegmenter)
    assert isinstance(get_segmenter("GrabCut"), GrabCutSegmenter)
    assert isinstance(get_segmenter("random-walker", radius=1), RandomWalkerSegmenter)
    assert get_segmenter("grabcut", iterations=2).iterations == 2
    with pytest.raises(ValueError) as err:
        get_segmenter("watershed")
    msg = str(err.value)
    assert "watershed" in msg and "random_walker" in msg and "grabcut" in msg
    with pytest.raises(TypeError):
        ClassicalSegmenter()  # abstract


def test_seed_map_later_click_wins_but_keeps_earlier_centres():
    seeds = seed_map([Click(1, 10, 10), Click(2, 10, 12)], 3, (20, 20), radius=3)
    assert seeds[10, 11] == 2  # overlap: later disk wins
    assert seeds[10, 10] == 1  # earlier centre survives
    assert seeds[10, 12] == 2
    assert seeds[0, 0] == -1
    full_disk = (seed_map([Click(1, 10, 10)], 3, (20, 20), radius=3) == 1).sum()
    assert 1 < (seeds == 1).sum() < full_disk
    # radius 0: single pixels
    single = seed_map([Click(1, 3, 4)], 2, (8, 8), radius=0)
    assert (single >= 0).sum() == 1 and single[3, 4] == 1


def test_seed_map_border_background_only_without_background_clicks():
    framed = seed_map([Click(1, 10, 10)], 2, (20, 20), radius=1, border_background=True)
    assert (framed[0] == 0).all() and (framed[:, -1] == 0).all()
    assert framed[10, 10] == 1 and framed[5, 5] == -1
    clicked = seed_map(
        [Click(1, 10, 10), Click(0, 2, 2)], 2, (20, 20), radius=1, border_background=True
    )
    assert clicked[0, 10] == -1


def test_random_walker_single_seeded_class_fills_slice(scene):
    image, _ = scene
    pred = RandomWalkerSegmenter().predict(image, [Click(2, 64, 62)], 3)
    assert (pred == 2).all()


def test_random_walker_constant_image_falls_back_to_nearest_seed():
    image = np.zeros((20, 30), np.float32)
    pred = RandomWalkerSegmenter(radius=0).predict(image, [Click(0, 10, 2), Click(1, 10, 27)], 2)
    assert (pred[:, :14] == 0).all() and (pred[:, 16:] == 1).all()


def test_grabcut_needs_a_seed_of_another_class(scene):
    image, gt = scene
    only_fg = [Click(1, 28, 30)]
    assert not GrabCutSegmenter().predict(image, only_fg, 3).any()
    # the image frame stands in for a background seed: the disk is found (the other,
    # equally bright and unclicked disk is taken too, nothing tells them apart)
    framed = GrabCutSegmenter(border_background=True).predict(image, only_fg, 3)
    assert (framed[gt == 1] == 1).mean() > 0.9
    assert (framed[gt == 0] == 1).mean() < 0.05


def test_grabcut_overlap_goes_to_nearest_click(monkeypatch):
    import cv2

    def claim_everything(img, mask, rect, bgd, fgd, iters, mode):
        mask[mask == cv2.GC_PR_BGD] = cv2.GC_PR_FGD
        return mask, bgd, fgd

    monkeypatch.setattr(cv2, "grabCut", claim_everything)
    image = np.random.default_rng(0).random((20, 40)).astype(np.float32)
    clicks = [Click(1, 10, 5), Click(2, 10, 35), Click(0, 0, 20)]
    pred = GrabCutSegmenter(radius=0).predict(image, clicks, 3)
    assert (pred[:, :19] == 1).all() and (pred[:, 21:] == 2).all()
    assert pred[0, 20] == 0  # the background seed keeps its class
