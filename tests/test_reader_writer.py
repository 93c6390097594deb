"""napari reader/writer/sample-data contributions and the manifest."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from napari_simseg._reader import get_reader, layer_data_from_volume, read_layers
from napari_simseg._writer import write_image_layer, write_labels_layer
from napari_simseg.core.io.images import Volume

FORMATS = [".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".tif", ".tiff"]

SPACING = (2.5, 0.75, 0.5)
ORIGIN = (-10.0, 4.25, 33.0)
# a proper rotation in (z, y, x) order: 30 degrees about the z axis
_C, _S = np.cos(np.pi / 6), np.sin(np.pi / 6)
DIRECTION = np.array([[1.0, 0.0, 0.0], [0.0, _C, -_S], [0.0, _S, _C]])


def _image():
    rng = np.random.default_rng(0)
    return rng.normal(100, 30, size=(4, 10, 12)).astype(np.float32)


def _meta(data, layer_type="image", direction=DIRECTION):
    """What napari hands a writer: the layer's state."""
    return {
        "name": "x",
        "scale": list(SPACING[-data.ndim :]),
        "translate": list(ORIGIN[-data.ndim :]),
        "metadata": {"direction": direction.tolist()} if direction is not None else {},
        "rgb": False,
        "multiscale": False,
    }


@pytest.mark.parametrize("ext", FORMATS)
def test_image_round_trip_keeps_geometry(tmp_path, ext):
    data = _image()
    path = tmp_path / f"scan{ext}"
    written = write_image_layer(str(path), data, _meta(data))
    assert written == [str(path)]
    assert get_reader(str(path)) is read_layers
    [(out, kwargs, kind)] = read_layers(str(path))
    assert kind == "image"
    assert kwargs["name"] == "scan"
    np.testing.assert_allclose(out, data, rtol=1e-6)
    np.testing.assert_allclose(kwargs["scale"], SPACING, rtol=1e-5)
    np.testing.assert_allclose(kwargs["translate"], ORIGIN, atol=1e-4)
    np.testing.assert_allclose(kwargs["metadata"]["direction"], DIRECTION, atol=1e-5)


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".tif"])
def test_labels_round_trip_compact_dtype(tmp_path, ext):
    labels = np.zeros((4, 10, 12), dtype=np.int64)  # napari's default labels dtype
    labels[1, 2:5, 3:7] = 2
    labels[3, 5:, :4] = 1
    path = tmp_path / f"case_seg{ext}"  # "_seg": read back as a labels layer
    write_labels_layer(str(path), labels, _meta(labels, "labels"))
    [(out, kwargs, kind)] = read_layers(str(path))
    assert kind == "labels"
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, labels)
    np.testing.assert_allclose(kwargs["scale"], SPACING, rtol=1e-5)


def test_2d_round_trip_and_foreign_direction_dropped(tmp_path):
    data = _image()[0]
    path = tmp_path / "slice.nrrd"
    # a 3x3 direction on a 2D layer (e.g. copied metadata) must not break the write
    write_image_layer(str(path), data, _meta(data, direction=DIRECTION))
    [(out, kwargs, _)] = read_layers(str(path))
    assert out.shape == data.shape
    np.testing.assert_allclose(kwargs["scale"], SPACING[1:], rtol=1e-5)
    np.testing.assert_allclose(kwargs["metadata"]["direction"], np.eye(2))


def test_writer_refuses_rgb_and_4d(tmp_path):
    with pytest.raises(ValueError, match="RGB"):
        write_image_layer(str(tmp_path / "a.nii.gz"), np.zeros((5, 5, 3), np.uint8), {"rgb": True})
    with pytest.raises(ValueError, match="2D or 3D"):
        write_image_layer(str(tmp_path / "a.nii.gz"), np.zeros((2, 2, 5, 5)), {})


def test_reader_declines_what_it_cannot_read(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert get_reader(str(tmp_path / "notes.txt")) is None
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.txt").write_text("x")
    assert get_reader(str(plain)) is None  # a folder without DICOM files
    dicom = tmp_path / "series"
    dicom.mkdir()
    (dicom / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    assert get_reader(str(dicom)) is read_layers


def test_reader_error_is_one_line(tmp_path):
    from napari_simseg.core.io.images import ImageReadError

    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"definitely not nifti")
    with pytest.raises(ImageReadError) as info:
        read_layers(str(bad))
    assert "broken.nii.gz" in str(info.value) and "\n" not in str(info.value)


def test_layer_data_from_volume_metadata():
    vol = Volume(np.zeros((3, 4, 5), np.uint8), SPACING, ORIGIN, DIRECTION)
    data, kwargs, kind = layer_data_from_volume(vol, "v", "labels")
    assert kind == "labels" and kwargs["name"] == "v"
    assert kwargs["metadata"]["spacing"] == list(SPACING)
    assert kwargs["metadata"]["origin"] == list(ORIGIN)


def test_phantom_sample_has_classes():
    from napari_simseg._sample_data import phantom_sample
    from napari_simseg.core.data.phantom import CLASS_NAMES

    (image, ikw, ikind), (labels, lkw, lkind) = phantom_sample(shape=(8, 48, 48))
    assert ikind == "image" and lkind == "labels"
    assert image.shape == labels.shape == (8, 48, 48)
    assert lkw["metadata"]["class_names"] == list(CLASS_NAMES)
    assert list(lkw["features"]["class_name"]) == list(CLASS_NAMES)
    np.testing.assert_allclose(ikw["scale"], lkw["scale"])
    assert labels.max() <= len(CLASS_NAMES) - 1


def test_bundled_hippocampus_sample():
    from napari_simseg._sample_data import hippocampus_sample

    (image, ikw, ikind), (labels, lkw, lkind) = hippocampus_sample()
    assert ikind == "image" and lkind == "labels" and image.shape == labels.shape
    assert "CC-BY-SA" in ikw["metadata"]["license"]
    assert lkw["metadata"]["class_names"] == ["background", "Anterior", "Posterior"]
    assert set(np.unique(labels)) == {0, 1, 2}


def test_missing_hippocampus_sample_is_explained(tmp_path, monkeypatch):
    import napari_simseg._sample_data as sd

    monkeypatch.setattr(sd, "SAMPLE_DIR", tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="hippocampus sample is not installed"):
        sd.hippocampus_sample()


def test_hippocampus_sample_from_sample_folder(tmp_path, monkeypatch):
    import json

    import napari_simseg._sample_data as sd
    from napari_simseg.core.io.images import write_image

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    write_image(tmp_path / "images" / "hippocampus_007.nii.gz", Volume(rng.normal(size=(6, 9, 7)), (1.0, 1.0, 1.0)))
    write_image(tmp_path / "labels" / "hippocampus_007.nii.gz", Volume(rng.integers(0, 3, (6, 9, 7)).astype(np.uint8)))
    (tmp_path / "classes.json").write_text(json.dumps(["background", "Anterior", "Posterior"]))
    (tmp_path / "LICENSE.txt").write_text("CC-BY-SA 4.0")
    monkeypatch.setattr(sd, "SAMPLE_DIR", tmp_path)
    assert sd.hippocampus_available()
    (image, ikw, ikind), (labels, lkw, lkind) = sd.hippocampus_sample()
    assert ikind == "image" and lkind == "labels"
    assert ikw["name"] == "hippocampus_007" and image.shape == labels.shape == (6, 9, 7)
    assert lkw["metadata"]["class_names"] == ["background", "Anterior", "Posterior"]


def test_manifest_is_valid():
    proc = subprocess.run(
        [sys.executable, "-c", "from npe2.cli import main; main()", "validate", "napari-simseg"],
        capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in proc.stdout


def test_manifest_contributions():
    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution("napari-simseg")
    assert pm.name == "napari-simseg" and pm.display_name == "SimSeg"
    assert [w.display_name for w in pm.contributions.widgets] == ["SimSeg"]
    assert {s.key for s in pm.contributions.sample_data} == {"hippocampus", "phantom"}
    patterns = set(pm.contributions.readers[0].filename_patterns)
    assert {"*.nii", "*.nii.gz", "*.nrrd", "*.nhdr", "*.mha", "*.mhd", "*.tif", "*.tiff"} <= patterns
    assert pm.contributions.readers[0].accepts_directories
    kinds = {tuple(w.layer_types) for w in pm.contributions.writers}
    assert kinds == {("image",), ("labels",)}


@pytest.mark.gui
def test_open_and_save_through_napari(make_napari_viewer, tmp_path):
    data = _image()
    src = tmp_path / "vol.mha"
    write_image_layer(str(src), data, _meta(data))
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(src), plugin="napari-simseg")
    np.testing.assert_allclose(layer.scale, SPACING, rtol=1e-5)
    np.testing.assert_allclose(layer.translate, ORIGIN, atol=1e-4)
    np.testing.assert_allclose(layer.metadata["direction"], DIRECTION, atol=1e-5)
    out = tmp_path / "copy.nrrd"
    layer.save(str(out), plugin="napari-simseg")
    [(back, kwargs, _)] = read_layers(str(out))
    np.testing.assert_allclose(back, data, rtol=1e-6)
    np.testing.assert_allclose(kwargs["metadata"]["direction"], DIRECTION, atol=1e-5)

    viewer.open_sample("napari-simseg", "phantom")
    assert {"phantom", "phantom labels"} <= {lay.name for lay in viewer.layers}
    assert viewer.layers["phantom labels"].metadata["class_names"][0] == "background"
