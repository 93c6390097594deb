"""2D picture formats (PNG 8/16-bit, JPEG, BMP, TIFF 8/16-bit), grey RGB(A) converted,
true colour refused, and 4D multi-channel files read as channels."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from layout_builders import make_folder_dataset, write_picture
from PIL import Image

from napari_simseg.core.datasets import discover_dataset, read_and_check
from napari_simseg.core.io import ImageReadError, read_channels, read_image, read_image_info

GREY = (np.arange(30 * 40).reshape(30, 40) * 7 % 251).astype(np.uint8)


def write_tiff(path, array):
    tifffile.imwrite(path, array)
    return path


@pytest.mark.parametrize("name, array, writer, exact", [
    ("g8.png", GREY, write_picture, True),
    ("g16.png", GREY.astype(np.uint16) * 257, write_picture, True),
    ("g.jpg", GREY, write_picture, False),  # lossy
    ("g.jpeg", GREY, write_picture, False),
    ("g.bmp", GREY, write_picture, True),
    ("g8.tif", GREY, write_tiff, True),
    ("g16.tiff", GREY.astype(np.uint16) * 257, write_tiff, True),
])
def test_greyscale_pictures(tmp_path, name, array, writer, exact):
    path = writer(tmp_path / name, array)
    vol = read_image(path)
    assert vol.shape == (30, 40) and vol.spacing == (1.0, 1.0)
    assert vol.array.dtype == array.dtype
    if exact:
        np.testing.assert_array_equal(vol.array, array)
    else:
        assert np.abs(vol.array.astype(float) - array).mean() < 8
    assert read_image_info(path).shape == (30, 40)
    assert [c.shape for c in read_channels(path)] == [(30, 40)]


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_rgb_png_of_grey_content_becomes_one_channel_with_a_note(tmp_path, mode):
    planes = [GREY] * 3 + ([np.full_like(GREY, 255)] if mode == "RGBA" else [])
    Image.fromarray(np.stack(planes, -1), mode).save(tmp_path / "grey.png")
    vol = read_image(tmp_path / "grey.png")
    np.testing.assert_array_equal(vol.array, GREY)
    assert vol.metadata["notes"] == [f"{mode} picture of grey content read as one grey channel"]


def test_true_colour_and_varying_alpha_refused_in_one_line(tmp_path):
    colour = np.stack([GREY, GREY, 255 - GREY], -1)
    Image.fromarray(colour, "RGB").save(tmp_path / "colour.png")
    with pytest.raises(ImageReadError) as err:
        read_image(tmp_path / "colour.png")
    msg = str(err.value)
    assert "\n" not in msg and "colour.png" in msg and "true-colour RGB picture" in msg
    alpha = np.stack([GREY] * 3 + [GREY], -1)
    Image.fromarray(alpha, "RGBA").save(tmp_path / "alpha.png")
    with pytest.raises(ImageReadError, match=r"alpha\.png.*alpha channel varies"):
        read_image(tmp_path / "alpha.png")


def test_unreadable_png_is_one_line(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 64)
    with pytest.raises(ImageReadError, match=r"bad\.png.*not a valid PNG file") as err:
        read_image(tmp_path / "bad.png")
    assert "\n" not in str(err.value)


def test_4d_file_read_as_channels(tmp_path):
    vols = []
    for k in range(3):
        v = sitk.GetImageFromArray(np.full((2, 3, 4), k, np.float32))
        v.SetSpacing((0.5, 0.6, 2.0))
        vols.append(v)
    sitk.WriteImage(sitk.JoinSeries(vols), str(tmp_path / "four.nii.gz"))
    channels = read_channels(tmp_path / "four.nii.gz")
    assert [c.shape for c in channels] == [(2, 3, 4)] * 3
    assert [float(c.array.mean()) for c in channels] == [0.0, 1.0, 2.0]
    assert [c.metadata["channel"] for c in channels] == [0, 1, 2]
    np.testing.assert_allclose(channels[0].spacing, (2.0, 0.6, 0.5), rtol=1e-6)
    with pytest.raises(ImageReadError, match="4D image"):
        read_image(tmp_path / "four.nii.gz")
    with pytest.raises(ImageReadError, match="no such file"):
        read_channels(tmp_path / "missing.nii.gz")


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".tif"])
def test_plain_folder_in_each_picture_format(tmp_path, ext):
    root = make_folder_dataset(tmp_path / "f", n=2, ext=ext)
    if ext == ".tif":  # write_picture cannot write TIFF; replace with 16-bit tifffile images
        for p in (root / "images").iterdir():
            arr = np.asarray(Image.open(p)).astype(np.uint16) * 257
            p.unlink()
            tifffile.imwrite(p, arr)
    spec = discover_dataset(root)
    assert spec.case_ids == ["img0", "img1"]
    read = read_and_check(spec.cases[0], spec=spec)
    assert read.issues == [] and read.image.shape == (1, 32, 36) and read.labels.shape == (32, 36)


def test_grey_rgb_image_noted_and_colour_image_listed_by_file(tmp_path):
    root = make_folder_dataset(tmp_path / "f", n=2)
    grey = read_image(root / "images" / "img0.png").array
    Image.fromarray(np.stack([grey] * 3, -1), "RGB").save(root / "images" / "img0.png")
    Image.fromarray(np.stack([grey, grey, grey // 2], -1), "RGB").save(root / "images" / "img1.png")
    spec = discover_dataset(root)
    first, second = (read_and_check(c, spec=spec) for c in spec.cases)
    assert first.issues == [] and first.notes == ["RGB picture of grey content read as one grey channel"]
    assert len(second.issues) == 1 and second.issues[0].path == root / "images" / "img1.png"
    assert "true-colour RGB picture" in second.issues[0].reason
