"""Tests of napari_simseg.core.io.images: round trips, DICOM series, errors."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile

from napari_simseg.core.io.images import (
    SUPPORTED_EXTENSIONS,
    ImageReadError,
    ImageWriteError,
    Volume,
    is_supported,
    read_channels,
    read_image,
    read_image_info,
    split_extension,
    write_image,
)

SPACING = (2.5, 0.7, 0.8)
ORIGIN = (10.0, -20.5, 3.25)


def rotation(a=0.35, b=-0.2, c=0.6):
    """A proper rotation (det +1) about three axes."""
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    return rz @ ry @ rx


DIRECTION = rotation()
FORMATS = [".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".tif", ".tiff"]


def assert_geometry(vol, spacing, origin, direction):
    # NIfTI stores geometry in float32
    np.testing.assert_allclose(vol.spacing, spacing, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(vol.origin, origin, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(vol.direction, direction, atol=1e-5)


@pytest.mark.parametrize("ext", FORMATS)
@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint8])
def test_round_trip_3d(tmp_path, ext, dtype):
    rng = np.random.default_rng(0)
    array = (rng.random((5, 7, 9)) * 200).astype(dtype)
    path = tmp_path / f"vol{ext}"
    write_image(path, Volume(array, SPACING, ORIGIN, DIRECTION))
    vol = read_image(path)
    assert vol.array.dtype == array.dtype
    np.testing.assert_array_equal(vol.array, array)
    assert_geometry(vol, SPACING, ORIGIN, DIRECTION)
    info = read_image_info(path)
    assert info.shape == array.shape and info.dtype == array.dtype
    np.testing.assert_allclose(info.spacing, SPACING, rtol=1e-6)


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha", ".tif"])
def test_round_trip_2d(tmp_path, ext):
    array = np.arange(6 * 8, dtype=np.float32).reshape(6, 8)
    d = np.array([[0.0, 1.0], [-1.0, 0.0]])
    write_image(tmp_path / f"a{ext}", Volume(array, (0.7, 0.8), (1.5, -2.0), d))
    vol = read_image(tmp_path / f"a{ext}")
    assert vol.ndim == 2
    np.testing.assert_array_equal(vol.array, array)
    assert_geometry(vol, (0.7, 0.8), (1.5, -2.0), d)


def test_numpy_axis_order_matches_simpleitk(tmp_path):
    """spacing/origin/direction are SimpleITK's reversed; physical points agree."""
    array = np.zeros((4, 5, 6), np.float32)
    write_image(tmp_path / "g.nrrd", Volume(array, SPACING, ORIGIN, DIRECTION))
    img = sitk.ReadImage(str(tmp_path / "g.nrrd"))
    assert img.GetSize() == (6, 5, 4)
    np.testing.assert_allclose(img.GetSpacing(), SPACING[::-1])
    vol = read_image(tmp_path / "g.nrrd")
    index = np.array([3, 1, 2])  # numpy (k, j, i)
    p_numpy = np.asarray(vol.origin) + vol.direction @ (np.asarray(vol.spacing) * index)
    p_sitk = img.TransformIndexToPhysicalPoint([int(i) for i in index[::-1]])
    np.testing.assert_allclose(p_numpy[::-1], p_sitk, atol=1e-9)


def test_bare_array_and_bool(tmp_path):
    write_image(tmp_path / "m.nii.gz", np.eye(4, dtype=bool)[None].repeat(3, 0))
    vol = read_image(tmp_path / "m.nii.gz")
    assert vol.array.dtype == np.uint8 and vol.array.sum() == 12
    assert vol.spacing == (1.0, 1.0, 1.0) and vol.origin == (0.0, 0.0, 0.0)
    np.testing.assert_array_equal(vol.direction, np.eye(3))


def test_tiff_imagej_convention(tmp_path):
    """Z spacing in the ImageJ 'spacing' entry, Y/X in the resolution tags."""
    path = tmp_path / "ij.tif"
    write_image(path, Volume(np.zeros((3, 4, 5), np.uint16), SPACING))
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej
        assert tif.imagej_metadata["spacing"] == pytest.approx(2.5)
        xres = tif.pages[0].tags["XResolution"].value
        yres = tif.pages[0].tags["YResolution"].value
    assert xres[1] / xres[0] == pytest.approx(0.8)
    assert yres[1] / yres[0] == pytest.approx(0.7)


def test_tiff_from_imagej_and_plain_files(tmp_path):
    a = np.zeros((3, 4, 5), np.float32)
    tifffile.imwrite(tmp_path / "fiji.tif", a, imagej=True, resolution=(2.0, 4.0),
                     metadata={"spacing": 3.0, "unit": "micron", "axes": "ZYX"})
    vol = read_image(tmp_path / "fiji.tif")
    np.testing.assert_allclose(vol.spacing, (3.0, 0.25, 0.5))
    assert vol.metadata["unit"] == "micron"
    tifffile.imwrite(tmp_path / "plain.tif", a[0])
    vol = read_image(tmp_path / "plain.tif")
    assert vol.shape == (4, 5) and vol.spacing == (1.0, 1.0)


def test_rgb_tiff_of_grey_content_read_as_grey_true_colour_refused(tmp_path):
    grey = np.arange(20, dtype=np.uint8).reshape(4, 5)
    tifffile.imwrite(tmp_path / "grey_rgb.tif", np.stack([grey] * 3, -1), photometric="rgb")
    vol = read_image(tmp_path / "grey_rgb.tif")
    np.testing.assert_array_equal(vol.array, grey)
    assert vol.metadata["notes"] == ["RGB picture of grey content read as one grey channel"]
    colour = np.stack([grey, grey, grey + 1], -1)
    tifffile.imwrite(tmp_path / "rgb.tif", colour, photometric="rgb")
    with pytest.raises(ImageReadError, match=r"rgb\.tif.*true-colour RGB") as err:
        read_image(tmp_path / "rgb.tif")
    assert "\n" not in str(err.value)
    tifffile.imwrite(tmp_path / "many.tif", np.zeros((4, 5, 6), np.uint8), planarconfig="contig",
                     photometric="minisblack", extrasamples=[0] * 5)
    with pytest.raises(ImageReadError, match="many.tif.*samples per pixel"):
        read_image(tmp_path / "many.tif")


def test_truncated_imagej_stack_refused(tmp_path):
    """tifffile falls back to the first page of a truncated hyperstack with only a log line."""
    path = tmp_path / "stack.tif"
    array = np.random.default_rng(4).integers(0, 60000, size=(6, 64, 48)).astype(np.uint16)
    tifffile.imwrite(path, array, imagej=True, metadata={"axes": "ZYX", "spacing": 2.5})
    np.testing.assert_array_equal(read_image(path).array, array)
    data = path.read_bytes()
    for fraction in (0.9, 0.5, 0.3):
        path.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(ImageReadError, match=r"stack\.tif.*ImageJ.*6 images.*1 .*truncated") as err:
            read_image(path)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("axes, shape", [("CYX", (2, 16, 12)), ("ZCYX", (3, 2, 16, 12))])
def test_imagej_channels_refused_as_one_image_read_as_channels(tmp_path, axes, shape):
    """A 2-channel 2D ImageJ TIFF was read as a 2-slice volume."""
    path = tmp_path / "two_channels.tif"
    array = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)
    tifffile.imwrite(path, array, imagej=True, metadata={"axes": axes})
    with pytest.raises(ImageReadError, match=rf"two_channels\.tif.*2 channels \(axes {axes}\).*one file "
                                             "per channel"):
        read_image(path)
    channels = read_channels(path)
    for k, volume in enumerate(channels):
        np.testing.assert_array_equal(volume.array, np.take(array, k, axis=axes.index("C")))
    assert len(channels) == 2
    one = tuple(1 if a == "C" else n for a, n in zip(axes, shape))
    tifffile.imwrite(path, np.zeros(one, np.uint8), imagej=True, metadata={"axes": axes})
    assert read_image(path).shape == tuple(n for n in one if n > 1)  # one channel is fine


def write_dicom_series(folder, array, spacing, origin, direction, uid, shifts=None):
    """Write a 3D int16 array as a DICOM series with SimpleITK (test helper).

    ``shifts`` (mm, one per slice) moves each slice's ImagePositionPatient along the
    slice normal, to write a non-uniformly spaced series."""
    os.makedirs(folder, exist_ok=True)
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing[::-1])
    img.SetOrigin(origin[::-1])
    img.SetDirection(np.asarray(direction)[::-1, ::-1].ravel())
    d = img.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(img.GetDepth()):
        s = img[:, :, k]
        s.SetMetaData("0020|000e", uid)
        s.SetMetaData("0020|000d", "1.2.826.0.1.3680043.2.1125.1")
        s.SetMetaData("0008|0060", "MR")
        s.SetMetaData("0020|0037", "\\".join(map(str, (d[0], d[3], d[6], d[1], d[4], d[7]))))
        position = np.array(img.TransformIndexToPhysicalPoint((0, 0, k)))
        if shifts is not None:
            position = position + shifts[k] * np.array((d[2], d[5], d[8]))
            s.SetOrigin(position.tolist())
        s.SetMetaData("0020|0032", "\\".join(map(str, position)))
        s.SetMetaData("0020|0013", str(k + 1))
        s.SetMetaData("0008|0018", f"{uid}.{k + 1}")
        writer.SetFileName(os.path.join(folder, f"{uid[-3:]}_{k:03d}.dcm"))
        writer.Execute(s)


def test_dicom_series_folder_picks_largest(tmp_path, caplog):
    rng = np.random.default_rng(1)
    big = rng.integers(-500, 1500, size=(6, 8, 10)).astype(np.int16)
    write_dicom_series(tmp_path / "dcm", big, SPACING, ORIGIN, DIRECTION, "1.2.826.0.1.3680043.2.1125.2.100")
    write_dicom_series(tmp_path / "dcm", big[:3], SPACING, ORIGIN, DIRECTION, "1.2.826.0.1.3680043.2.1125.2.200")
    assert is_supported(tmp_path / "dcm")
    with caplog.at_level(logging.WARNING):
        vol = read_image(tmp_path / "dcm")
    assert "2 DICOM series" in caplog.text
    np.testing.assert_array_equal(vol.array, big)
    assert_geometry(vol, SPACING, ORIGIN, DIRECTION)
    assert vol.metadata["series_id"].endswith(".100")
    assert vol.metadata["n_files"] == 6 and vol.metadata["modality"] == "MR"
    assert sorted(vol.metadata["all_series"].values()) == [3, 6]


DICOM_UID = "1.2.826.0.1.3680043.2.1125.2.100"


@pytest.mark.parametrize("direction", [np.eye(3), DIRECTION], ids=["axial", "oblique"])
def test_dicom_series_with_missing_slice_refused(tmp_path, direction):
    """A deleted middle file left a (4, 64, 48) volume with spacing 3.33 and no error."""
    array = np.random.default_rng(2).integers(0, 1000, size=(5, 64, 48)).astype(np.int16)
    write_dicom_series(tmp_path / "dcm", array, SPACING, (0.0, 0.0, 0.0), direction, DICOM_UID)
    vol = read_image(tmp_path / "dcm")  # complete: read as before
    np.testing.assert_array_equal(vol.array, array)
    assert_geometry(vol, SPACING, (0.0, 0.0, 0.0), direction)
    (tmp_path / "dcm" / "100_002.dcm").unlink()
    with pytest.raises(ImageReadError, match=r"dcm'.*4 DICOM file.*jump from 2\.5 to 7\.5 mm between "
                                             r"files 100_001\.dcm and 100_003\.dcm.*a slice is missing") as err:
        read_image(tmp_path / "dcm")
    assert "\n" not in str(err.value)
    with pytest.raises(ImageReadError, match="a slice is missing"):
        read_image_info(tmp_path / "dcm")


@pytest.mark.parametrize("damage", ["garbage", "half", "header", "tail"])
def test_dicom_series_with_corrupt_slice_refused(tmp_path, damage):
    """GDCM leaves an unparsable file out of the series; it was skipped silently."""
    array = np.random.default_rng(3).integers(0, 1000, size=(5, 64, 48)).astype(np.int16)
    write_dicom_series(tmp_path / "dcm", array, SPACING, ORIGIN, DIRECTION, DICOM_UID)
    bad = tmp_path / "dcm" / "100_002.dcm"
    data = bad.read_bytes()
    bad.write_bytes({"garbage": b"\0" * 128 + b"DICM" + np.random.default_rng(0).bytes(500),
                     "half": data[: len(data) // 2], "header": data[:600], "tail": data[:-100]}[damage])
    (tmp_path / "dcm" / "notes.txt").write_text("not DICOM, not counted")
    with pytest.raises(ImageReadError, match=r"dcm'.*5 files look like DICOM.*4 .*read.*"
                                             r"100_002\.dcm.*corrupt or truncated") as err:
        read_image(tmp_path / "dcm")
    assert "\n" not in str(err.value)


def test_dicom_series_non_uniform_spacing_refused(tmp_path):
    array = np.zeros((5, 8, 10), np.int16)
    write_dicom_series(tmp_path / "dcm", array, SPACING, ORIGIN, np.eye(3), DICOM_UID,
                       shifts=[0.0, 0.0, 0.8, 0.8, 0.8])
    with pytest.raises(ImageReadError, match=r"not uniformly spaced.*jump from 12\.5 to 15\.8 mm .*100_001\.dcm "
                                             r"and 100_002\.dcm"):
        read_image(tmp_path / "dcm")


def test_dicom_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError, match="no DICOM series"):
        read_image(tmp_path / "empty")
    with pytest.raises(ImageWriteError, match="writing DICOM is not supported"):
        write_image(tmp_path / "out.dcm", np.zeros((2, 3, 4), np.int16))


def test_corrupt_file_gives_one_line_error(tmp_path):
    path = tmp_path / "x.nii.gz"
    path.write_bytes(np.random.default_rng(0).bytes(600))
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    assert "corrupt" in msg and ".cxx" not in msg and "sitk::" not in msg
    assert err.value.path == str(path)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_truncated_file(tmp_path, ext):
    """ITK zero-fills truncated NIfTI silently; read_image must not."""
    path = tmp_path / f"t{ext}"
    write_image(path, np.random.default_rng(0).random((10, 30, 30)).astype(np.float32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"t\.(nii|nrrd|mha)"):
        read_image(path)


def test_missing_unsupported_empty(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "nope.nii.gz")
    (tmp_path / "a.webp").write_bytes(b"RIFF")
    with pytest.raises(ImageReadError, match=r"a\.webp.*unsupported file type '\.webp'"):
        read_image(tmp_path / "a.webp")
    (tmp_path / "a.gif").write_bytes(b"GIF89a")
    with pytest.raises(ImageReadError, match=r"a\.gif.*not a readable GIF"):
        read_image(tmp_path / "a.gif")
    (tmp_path / "a.png").write_bytes(b"\x89PNG")
    with pytest.raises(ImageReadError, match=r"a\.png.*not a valid PNG file"):
        read_image(tmp_path / "a.png")
    (tmp_path / "e.nrrd").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        read_image(tmp_path / "e.nrrd")
    with pytest.raises(ImageWriteError, match="unsupported file type"):
        write_image(tmp_path / "a.png", np.zeros((3, 3)))


def test_names_and_support():
    assert split_extension("/d/case_01.nii.gz") == ("case_01", ".nii.gz")
    assert split_extension("scan.TIF") == ("scan", ".tif")
    assert split_extension("noext") == ("noext", "")
    assert ".nii.gz" in SUPPORTED_EXTENSIONS
    assert is_supported("a.NII.GZ") and is_supported("b.nhdr") and is_supported("c.mhd")
    assert is_supported("a.png") and is_supported("b.JPEG") and is_supported("c.bmp")
    assert is_supported("a.GIF")
    assert not is_supported("a.webp") and not is_supported("a.gz")


def test_volume_validation():
    with pytest.raises(ValueError, match="2D .* or 3D"):
        Volume(np.zeros((2, 2, 2, 2)))
    with pytest.raises(ValueError, match="spacing needs 3 values"):
        Volume(np.zeros((2, 2, 2)), spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        Volume(np.zeros((2, 2)), spacing=(1.0, 0.0))
    with pytest.raises(ValueError, match="direction"):
        Volume(np.zeros((2, 2)), direction=np.eye(3))


def test_monochrome1_dicom_reads_with_dense_tissue_bright(tmp_path):
    """Radiographs stored as MONOCHROME1 (low values bright): the reader gives them in
    MONOCHROME2 order (GDCM inverts), so a set mixing both shows every image alike."""
    stored = (np.arange(20 * 30).reshape(20, 30) % 500).astype(np.int16)
    path = tmp_path / "cxr.dcm"
    writer = sitk.ImageFileWriter()
    writer.SetFileName(str(path))
    writer.Execute(sitk.GetImageFromArray(stored))
    data = path.read_bytes()
    assert b"MONOCHROME2" in data
    path.write_bytes(data.replace(b"MONOCHROME2", b"MONOCHROME1"))
    read = read_image(path).array.reshape(stored.shape).astype(int)
    assert np.corrcoef(read.ravel(), stored.ravel())[0, 1] < -0.99  # inverted
