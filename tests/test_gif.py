"""GIF pictures (read with Pillow: SimpleITK has none): masks whatever their palette
order, colour palettes as indices for label maps, and a masks data set of GIF masks at
half the image's size, as the SCR chest radiograph masks come."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from layout_builders import noisy_image, write_picture
from napari_simseg.core.data.datasets import discover_dataset, read_and_check
from napari_simseg.core.io.images import ImageReadError, read_channels, read_image, read_image_info


def _mask(shape=(20, 30)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[5:10, 5:20] = True
    return m


def _palette_gif(path, indices: np.ndarray, palette: list[int]):
    picture = Image.new("P", indices.shape[::-1])
    picture.putpalette(palette)
    picture.putdata(list(indices.astype(np.uint8).ravel()))
    picture.save(path)
    return path


@pytest.mark.parametrize("white_first", [False, True])
def test_black_and_white_gif_mask_reads_as_grey_whatever_its_palette_order(tmp_path, white_first):
    m = _mask()
    palette = [255, 255, 255, 0, 0, 0] if white_first else [0, 0, 0, 255, 255, 255]
    path = _palette_gif(tmp_path / "m.gif", (~m if white_first else m), palette)
    assert np.asarray(Image.open(path))[m].max() == (0 if white_first else 1)  # indices differ
    for labels in (False, True):
        volume = read_image(path, labels=labels)
        assert volume.shape == (20, 30) and volume.array.dtype == np.uint8
        np.testing.assert_array_equal(volume.array > 0, m)  # inside = white either way
    info = read_image_info(path)
    assert info.shape == (20, 30) and info.spacing == (1.0, 1.0)


def test_colour_palette_gif_is_indices_as_labels_and_colour_as_an_image(tmp_path):
    indices = (np.arange(600).reshape(20, 30) % 3).astype(np.uint8)
    path = _palette_gif(tmp_path / "c.gif", indices, [0, 0, 0, 255, 0, 0, 0, 255, 0])
    labels = read_image(path, labels=True)
    np.testing.assert_array_equal(labels.array, indices)
    assert any("indices" in n for n in labels.metadata["notes"])
    channels = read_channels(path)
    assert [c.metadata["channel_name"] for c in channels] == ["red", "green", "blue"]
    np.testing.assert_array_equal(channels[0].array > 0, indices == 1)
    with pytest.raises(ImageReadError, match="true-colour"):
        read_image(path)  # one grey image: refused as for any colour picture


def test_animated_and_corrupt_gifs_are_refused_with_the_reason(tmp_path):
    m = _mask().astype(np.uint8) * 255
    frames = [Image.fromarray(m), Image.fromarray(255 - m)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageReadError, match="animated GIF of 2 frames"):
        read_image(tmp_path / "anim.gif")
    (tmp_path / "bad.gif").write_bytes(b"GIF89a not really")
    with pytest.raises(ImageReadError, match="bad.gif.*not a readable GIF"):
        read_image(tmp_path / "bad.gif", labels=True)


def test_masks_data_set_of_gif_masks_at_half_the_image_size(tmp_path):
    root = tmp_path / "scr"
    lung, clavicle = np.zeros((32, 32), bool), np.zeros((32, 32), bool)
    lung[4:28, 4:16] = True
    clavicle[6:9, 2:30] = True  # over the lung: the smaller structure keeps its shape
    big = [np.kron(r, np.ones((2, 2), bool)) for r in (lung, clavicle)]
    write_picture(root / "images" / "JPCLN001.png", noisy_image((64, 64), 0, big, dtype=np.uint16))
    (root / "masks" / "lung").mkdir(parents=True)
    (root / "masks" / "clavicle").mkdir(parents=True)
    _palette_gif(root / "masks" / "lung" / "JPCLN001.gif", ~lung, [255, 255, 255, 0, 0, 0])
    _palette_gif(root / "masks" / "clavicle" / "JPCLN001.gif", clavicle, [0, 0, 0, 255, 255, 255])
    (root / "classes.json").write_text(json.dumps(["background", "lung", "clavicle"]))
    spec = discover_dataset(root)
    assert spec.layout == "masks" and spec.case_ids == ["JPCLN001"]
    read = read_and_check(spec.cases[0], spec=spec)
    assert read.issues == [] and read.image.shape == (1, 32, 32)  # image resampled to the mask grid
    np.testing.assert_array_equal(read.labels == 2, clavicle)
    np.testing.assert_array_equal(read.labels == 1, lung & ~clavicle)
    assert read.overlaps == {("lung", "clavicle"): int((lung & clavicle).sum())}
