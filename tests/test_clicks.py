import numpy as np
import pytest

from napari_simseg.core.interaction.clicks import Click, ClickError, encode_clicks


def test_disk_encoding_in_its_class_mask():
    m = encode_clicks([(1, 5, 6), Click(0, 0, 0)], n_classes=3, shape=(12, 12), radius=2)
    assert m.shape == (3, 12, 12) and m.dtype == np.float32
    assert m[1, 5, 6] == 1 and m[1, 5, 8] == 1 and m[1, 7, 6] == 1
    assert m[1, 7, 8] == 0  # outside the disk of radius 2
    assert m[1].sum() == 13  # pixels of a radius-2 digital disk
    assert m[0, 0, 0] == 1 and m[0].sum() == 6  # clipped at the corner
    assert m[2].sum() == 0


def test_radius_zero_is_one_pixel():
    m = encode_clicks([(2, 3.4, 4.6)], 3, (8, 8), radius=0)
    assert m.sum() == 1 and m[2, 3, 5] == 1


def test_click_outside_image_names_the_value():
    with pytest.raises(ClickError, match=r"y=12.*outside the 10x10"):
        encode_clicks([(1, 12, 3)], 3, (10, 10))
    with pytest.raises(ClickError, match="outside"):
        encode_clicks([(1, -1, 3)], 3, (10, 10))


def test_unknown_class_names_the_value():
    with pytest.raises(ClickError, match="unknown class index 5"):
        encode_clicks([(5, 1, 1)], 3, (10, 10))
    with pytest.raises(ClickError, match="unknown class index -1"):
        encode_clicks([(-1, 1, 1)], 3, (10, 10))


def test_malformed_and_nan():
    with pytest.raises(ClickError, match="must be"):
        encode_clicks([(1, 2)], 3, (10, 10))
    with pytest.raises(ClickError, match="finite"):
        encode_clicks([(1, float("nan"), 2)], 3, (10, 10))


def test_honour_clicks_sets_only_the_clicked_pixels_newest_wins():
    from napari_simseg.core.interaction.clicks import honour_clicks

    labels = np.zeros((5, 6), np.uint8)
    out = honour_clicks(labels, [(1, 2.4, 3.6), (2, 0, 0), (1, 0, 0)])
    assert out is labels
    assert labels[2, 4] == 1 and labels[0, 0] == 1  # rounded; the later click on (0, 0) wins
    assert np.count_nonzero(labels) == 2
