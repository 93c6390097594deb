"""Geometry transforms (``core.imaging.transforms``): each maps arrays and points to the
network's grid and back; the maps round-trip exactly wherever nothing is resampled."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_simseg.core.imaging.transforms import Canvas, Flip, FocusCrop, WorkingSize

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("shape", [(37, 51), (3, 37, 51), (2, 5, 37, 51)])  # a slice, a stack, channels x slices
def test_focus_crop_pastes_back_exactly_with_any_leading_axes(shape):
    image = RNG.normal(size=shape).astype(np.float32)
    crop = FocusCrop((5, 22, 9, 40), target=(17, 31))  # odd sizes, no resampling
    out = crop.transform(image)
    assert out.shape == (*shape[:-2], 17, 31)
    np.testing.assert_array_equal(crop.inverse(out, into=np.zeros_like(image))[..., 5:22, 9:40], image[..., 5:22, 9:40])
    back = crop.inverse(out, into=image)
    np.testing.assert_array_equal(back, image)


@pytest.mark.parametrize("zoom", [2, 3])
def test_a_zoomed_focus_crop_returns_labels_exactly(zoom):
    labels = RNG.integers(0, 4, size=(2, 41, 29)).astype(np.uint8)  # two slices, odd sizes
    crop = FocusCrop((3, 26, 4, 23), target=(23 * zoom, 19 * zoom))
    up = crop.transform(labels, kind="labels")
    assert up.shape == (2, 23 * zoom, 19 * zoom)
    pasted = crop.inverse(up, kind="labels", into=np.full_like(labels, 9))
    np.testing.assert_array_equal(pasted[:, 3:26, 4:23], labels[:, 3:26, 4:23])
    assert (pasted[:, :3] == 9).all() and (pasted[:, :, 23:] == 9).all()  # nothing outside the box changes


def test_focus_crop_points_round_trip_and_land_on_the_same_content():
    crop = FocusCrop((10, 30, 5, 45), target=(60, 120))  # zoom 3 both ways
    for y, x in [(10, 5), (29, 44), (17.25, 20.5)]:
        ty, tx = crop.transform_point(y, x)
        assert crop.inverse_point(ty, tx) == pytest.approx((y, x))
    # the centre of slice pixel (12, 7) is the centre of the 3 x 3 block it becomes
    assert crop.transform_point(12, 7) == pytest.approx((7.0, 7.0))
    image = np.zeros((50, 50), np.float32)
    image[12, 7] = 1
    up = crop.transform(image, kind="labels")
    assert up[7, 7] == 1 and up[6:9, 6:9].all()


def test_focus_crop_around_is_square_in_millimetres_and_stays_inside():
    crop = FocusCrop.around(center=(20, 20), half_extent=(8, 8), shape=(64, 64), target=(32, 32),
                            spacing=(2.0, 0.5))  # rows 2 mm, columns 0.5 mm
    y0, y1, x0, x1 = crop.box
    assert (y1 - y0) * 2.0 == pytest.approx((x1 - x0) * 0.5)  # the same 16 mm both ways
    edge = FocusCrop.around(center=(1, 62), half_extent=(10, 10), shape=(64, 64), target=(32, 32))
    assert edge.box == (0, 20, 44, 64)  # moved inside, not shrunk
    too_big = FocusCrop.around(center=(5, 5), half_extent=(100, 100), shape=(30, 40), target=(32, 32))
    assert too_big.box == (0, 30, 0, 40)
    with pytest.raises(ValueError, match="y0 < y1"):
        FocusCrop((5, 5, 0, 3), (4, 4))


def test_working_size_points_round_trip_and_match_the_session_rule():
    ws = WorkingSize((1000, 500), 256)
    assert ws.target == (256, 128) and ws.scale == pytest.approx(0.256)
    for y, x in [(0, 0), (999, 499), (123.4, 56.7)]:
        assert ws.inverse_point(*ws.transform_point(y, x)) == pytest.approx((y, x))
    small = WorkingSize((40, 30), 256)
    image = RNG.normal(size=(3, 40, 30)).astype(np.float32)
    assert small.identity and small.transform(image) is not None
    np.testing.assert_array_equal(small.inverse(small.transform(image)), image)


def test_working_size_labels_round_trip_on_an_integer_factor():
    labels = np.kron(RNG.integers(0, 3, size=(16, 8)), np.ones((4, 4), int)).astype(np.uint8)  # 64 x 32
    ws = WorkingSize((64, 32), 16)
    small = ws.transform(labels, kind="labels")
    assert small.shape == (16, 8)
    np.testing.assert_array_equal(ws.inverse(small, kind="labels"), labels)


@pytest.mark.parametrize("array", [RNG.normal(size=(2, 3, 37, 50)).astype(np.float32),
                                   torch.from_numpy(RNG.normal(size=(2, 3, 37, 50)).astype(np.float32))])
@pytest.mark.parametrize("mode", ["constant", "edge"])
def test_canvas_pads_centred_and_cuts_back_exactly(array, mode):
    canvas = Canvas((37, 50), canvas=(64, 48), multiple=32)
    assert canvas.target == (64, 64) and canvas.pads == (13, 14, 7, 7)
    padded = canvas.transform(array, mode=mode)
    assert tuple(padded.shape[-2:]) == (64, 64)
    back = canvas.inverse(padded)
    assert (np.asarray(back) == np.asarray(array)).all()
    if mode == "edge":
        assert float(padded[0, 0, 0, 7]) == float(array[0, 0, 0, 0])
    assert canvas.inverse_point(*canvas.transform_point(3.5, 4)) == (3.5, 4.0)
    with pytest.raises(ValueError, match="pads"):
        canvas.transform(np.zeros((10, 10)))


def test_flip_is_its_own_inverse_for_arrays_and_points():
    image = RNG.normal(size=(2, 7, 9))
    for flip in (Flip(True, False, (7, 9)), Flip(False, True, (7, 9)), Flip(True, True, (7, 9))):
        np.testing.assert_array_equal(flip.inverse(flip.transform(image)), image)
        y, x = flip.transform_point(1, 2)
        assert image[0, 1, 2] == flip.transform(image)[0, int(y), int(x)]
        assert flip.inverse_point(y, x) == (1.0, 2.0)
    t = torch.arange(12.0).reshape(1, 3, 4)
    assert torch.equal(Flip(True, True).transform(t), t.flip((-2, -1)))


def test_torch_and_numpy_resampling_agree():
    probs = RNG.random(size=(3, 20, 30)).astype(np.float32)
    ws = WorkingSize((80, 120), 30)
    assert ws.target == (20, 30)
    up_np = ws.inverse(probs, kind="probabilities")
    up_t = ws.inverse(torch.from_numpy(probs), kind="probabilities").numpy()
    np.testing.assert_allclose(up_t, up_np, atol=1e-5)
    labels = RNG.integers(0, 3, size=(20, 30)).astype(np.uint8)
    np.testing.assert_array_equal(ws.inverse(torch.from_numpy(labels), kind="labels").numpy(),
                                  ws.inverse(labels, kind="labels"))
