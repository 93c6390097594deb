"""2D picture formats (PNG 8/16-bit, JPEG, BMP, TIFF 8/16-bit), grey RGB(A) converted,
true colour read as red, green and blue channels (refused as one grey image), and 4D
multi-channel files and TIFF channel axes read as channels."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image

from layout_builders import make_folder_dataset, write_picture
from napari_simseg.core.data.datasets import discover_dataset, read_and_check
from napari_simseg.core.io.images import ImageReadError, read_channels, read_image, read_image_info

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
    """A set of grey pictures stays one channel; a stray colour picture there is its case's problem."""
    root = make_folder_dataset(tmp_path / "f", n=3)
    grey = read_image(root / "images" / "img0.png").array
    Image.fromarray(np.stack([grey] * 3, -1), "RGB").save(root / "images" / "img0.png")
    Image.fromarray(np.stack([grey, grey, grey // 2], -1), "RGB").save(root / "images" / "img1.png")
    spec = discover_dataset(root)
    assert spec.channel_names == ["image"]
    first, second, _ = (read_and_check(c, spec=spec) for c in spec.cases)
    assert first.issues == [] and first.notes == ["RGB picture of grey content read as one grey channel"]
    assert len(second.issues) == 1 and second.issues[0].path == root / "images" / "img1.png"
    assert "3 image channel(s)" in second.issues[0].reason and "has 1 (image)" in second.issues[0].reason


def test_true_colour_pictures_read_as_red_green_blue(tmp_path):
    colour = np.stack([GREY, 255 - GREY, GREY // 2], -1)
    Image.fromarray(colour, "RGB").save(tmp_path / "c.png")
    channels = read_channels(tmp_path / "c.png")
    assert [c.metadata["channel_name"] for c in channels] == ["red", "green", "blue"]
    for k, c in enumerate(channels):
        np.testing.assert_array_equal(c.array, colour[..., k])
        assert c.metadata["channel"] == k and "three channels" in c.metadata["notes"][0]
    Image.fromarray(np.dstack([colour, np.full_like(GREY, 255)]), "RGBA").save(tmp_path / "a.png")
    assert len(read_channels(tmp_path / "a.png")) == 3  # a constant alpha is dropped
    tifffile.imwrite(tmp_path / "c.tif", colour, photometric="rgb")
    np.testing.assert_array_equal(read_channels(tmp_path / "c.tif")[2].array, GREY // 2)
    with pytest.raises(ImageReadError, match=r"c\.tif.*true-colour RGB picture.*simseg train"):
        read_image(tmp_path / "c.tif")


def test_tiff_channel_axis_read_as_channels(tmp_path):
    stack = np.stack([GREY, 255 - GREY]).astype(np.uint8)
    tifffile.imwrite(tmp_path / "cyx.tif", stack, imagej=True, metadata={"axes": "CYX"})
    channels = read_channels(tmp_path / "cyx.tif")
    assert [c.shape for c in channels] == [(30, 40)] * 2
    assert [c.metadata["channel_name"] for c in channels] == ["channel_0", "channel_1"]
    np.testing.assert_array_equal(channels[1].array, 255 - GREY)
    with pytest.raises(ImageReadError, match=r"2 channels \(axes CYX\).*Split Channels"):
        read_image(tmp_path / "cyx.tif")


def test_colour_picture_set_is_three_channels_and_a_grey_one_is_repeated(tmp_path):
    root = make_folder_dataset(tmp_path / "f", n=3)
    for i in range(3):
        grey = read_image(root / "images" / f"img{i}.png").array
        planes = [grey] * 3 if i == 2 else [grey, 255 - grey, grey // 2]
        Image.fromarray(np.stack(planes, -1), "RGB").save(root / "images" / f"img{i}.png")
    spec = discover_dataset(root)
    assert spec.channel_names == ["red", "green", "blue"] and spec.channels_in_last_axis
    assert any("3 channels each (red, green, blue)" in n for n in spec.notes)
    colour, _, grey_case = (read_and_check(c, spec=spec) for c in spec.cases)
    assert colour.issues == [] and colour.image.shape == (3, 32, 36)
    assert not np.array_equal(colour.image[0], colour.image[1])
    assert grey_case.issues == [] and grey_case.image.shape == (3, 32, 36)
    assert any("grey picture in a set of colour pictures" in n for n in grey_case.notes)
    np.testing.assert_array_equal(grey_case.image[0], grey_case.image[2])


def test_nnunet_rgb_png_one_file_holds_the_declared_channels(tmp_path):
    import json

    root = tmp_path / "Dataset001_Skin"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(2):
        colour = np.stack([GREY, np.roll(GREY, i + 1), 255 - GREY], -1)
        Image.fromarray(colour, "RGB").save(root / "imagesTr" / f"skin{i}_0000.png")
        Image.fromarray((GREY > 120).astype(np.uint8)).save(root / "labelsTr" / f"skin{i}.png")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "lesion": 1},
        "numTraining": 2, "file_ending": ".png"}))
    spec = discover_dataset(root)
    assert spec.channel_names == ["R", "G", "B"] and spec.channels_in_last_axis
    read = read_and_check(spec.cases[0], spec=spec)
    assert read.issues == [] and read.image.shape == (3, 30, 40)


def test_palette_png_labels_read_as_their_indices(tmp_path):
    """Label maps saved as indexed-colour PNGs: SimpleITK alone expands them to colours."""
    root = make_folder_dataset(tmp_path / "f", n=2)
    for i in range(2):
        labels = read_image(root / "labels" / f"img{i}.png").array
        picture = Image.fromarray(labels, "P")
        picture.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # 0 black, 1 red
        picture.save(root / "labels" / f"img{i}.png")
    vol = read_image(root / "labels" / "img0.png", labels=True)
    assert sorted(np.unique(vol.array).tolist()) == [0, 1] and "palette PNG" in vol.metadata["notes"][0]
    assert "simseg_note" not in vol.metadata["header"]
    # a picture in a palette PNG (a quantised grey ramp) is read as its grey values, not its indices
    ramp = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (8, 1))
    Image.fromarray(ramp).convert("RGB").quantize(64).save(tmp_path / "ramp.png")
    np.testing.assert_allclose(read_image(tmp_path / "ramp.png").array.astype(float), ramp, atol=4)
    read = read_and_check(discover_dataset(root).cases[1], spec=discover_dataset(root))
    assert read.issues == [] and int(read.labels.sum()) > 0


def test_jpeg_masks_taken_above_half_their_maximum(tmp_path):
    """Kvasir-style JPEG masks: compression leaves values near 0 around the structure."""
    root = tmp_path / "polyps"
    (root / "masks" / "polyp").mkdir(parents=True)
    mask = np.zeros((48, 64), np.uint8)
    mask[12:36, 10:50] = 255
    rng = np.random.default_rng(0)
    for i in range(2):
        write_picture(root / "images" / f"p{i}.png", rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
        Image.fromarray(np.stack([mask] * 3, -1)).save(root / "masks" / "polyp" / f"p{i}.jpg", quality=75)
    assert np.count_nonzero(read_image(root / "masks" / "polyp" / "p0.jpg").array) > np.count_nonzero(mask)
    spec = discover_dataset(root)
    read = read_and_check(spec.cases[0], spec=spec)
    assert read.issues == [] and read.image.shape == (3, 48, 64)
    np.testing.assert_array_equal(read.labels == 1, mask > 0)
    assert any("JPEG mask" in n for n in read.notes)


def test_jpeg_masks_of_zero_and_one_keep_their_inside(tmp_path):
    """A 0/1 JPEG mask rings to 0/1/2: half its maximum would keep only the ringing (Dice
    0.08); half its foreground value keeps what compression left of it (ringing of one
    level is as large as the mask itself, so no threshold gets it all back)."""
    root = tmp_path / "polyps"
    (root / "masks" / "polyp").mkdir(parents=True)
    mask = np.zeros((48, 64), np.uint8)
    mask[12:36, 10:50] = 1
    write_picture(root / "images" / "p0.png", np.random.default_rng(1).integers(0, 255, (48, 64), dtype=np.uint8))
    Image.fromarray(mask).save(root / "masks" / "polyp" / "p0.jpg", quality=75)
    spec = discover_dataset(root)
    labels = read_and_check(spec.cases[0], spec=spec).labels
    inter = np.count_nonzero((labels == 1) & (mask == 1))
    assert 2 * inter / (np.count_nonzero(labels == 1) + np.count_nonzero(mask)) > 0.85


def test_folder_of_two_channel_tiffs_is_a_two_channel_set(tmp_path):
    root = make_folder_dataset(tmp_path / "f", n=2)
    for i in range(2):
        grey = read_image(root / "images" / f"img{i}.png").array
        (root / "images" / f"img{i}.png").unlink()
        tifffile.imwrite(root / "images" / f"img{i}.tif", np.stack([grey, 255 - grey]), imagej=True,
                         metadata={"axes": "CYX"})
    spec = discover_dataset(root)
    assert spec.channel_names == ["channel_0", "channel_1"]
    read = read_and_check(spec.cases[0], spec=spec)
    assert read.issues == [] and read.image.shape == (2, 32, 36)
