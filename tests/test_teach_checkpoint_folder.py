"""Where a taught checkpoint goes (issue 34, point 2): beside the image only when that folder is
the user's and writable, never inside the installed package (the bundled sample lives there),
otherwise in the user's data folder; and a checkpoint beside images is no "unsupported file"."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from napari.layers import Image

from napari_simseg.annotator.teach import PACKAGE_DIR, is_user_folder, taught_checkpoint_path, user_checkpoint_dir
from napari_simseg.core.io.resources import SAMPLE_DIR


def _layer_from(path, name="case"):
    """An image layer as the reader makes it: its file in ``metadata["simseg_io"]``."""
    return Image(np.zeros((3, 16, 16), np.float32), name=name, metadata={"simseg_io": {"path": str(path)}})


@pytest.fixture
def data_home(tmp_path, monkeypatch):
    home = tmp_path / "xdg-data"
    monkeypatch.setenv("XDG_DATA_HOME", str(home))
    return home


@pytest.mark.skipif(os.name != "posix" or os.uname().sysname != "Linux", reason="XDG_DATA_HOME is Linux's")
def test_the_bundled_sample_teaches_into_the_users_data_folder(data_home):
    sample = next((SAMPLE_DIR / "images").glob("*.nii.gz"))
    assert PACKAGE_DIR in sample.resolve().parents and not is_user_folder(sample.parent)
    path = taught_checkpoint_path(_layer_from(sample))
    assert path.parent == data_home / "napari-simseg" / "checkpoints" == user_checkpoint_dir()
    assert path.parent.is_dir() and PACKAGE_DIR not in path.resolve().parents
    assert path.name.startswith(sample.name.removesuffix(".nii.gz") + ".taught-") and path.suffix == ".safetensors"


def test_a_users_folder_keeps_the_checkpoint_beside_the_image(tmp_path, data_home):
    image = tmp_path / "scans" / "ct.nii.gz"
    image.parent.mkdir()
    image.write_bytes(b"")
    assert is_user_folder(image.parent)
    assert taught_checkpoint_path(_layer_from(image)).parent == image.parent
    # an image with no file of its own: the user's data folder, named after the layer
    path = taught_checkpoint_path(Image(np.zeros((8, 8)), name="my scan"))
    assert path.parent == user_checkpoint_dir() and path.name.startswith("my_scan.taught-")


def test_a_read_only_folder_sends_it_to_the_users_data_folder(tmp_path, data_home, monkeypatch):
    import napari_simseg.annotator.teach as teach

    image = tmp_path / "cd" / "ct.nii.gz"
    image.parent.mkdir()
    image.write_bytes(b"")
    # as on a read-only medium (root may write anywhere, so permissions cannot show it here)
    real_access = os.access
    monkeypatch.setattr(teach.os, "access", lambda p, mode: Path(p) != image.parent and real_access(p, mode))
    assert not is_user_folder(image.parent)
    assert taught_checkpoint_path(_layer_from(image)).parent == user_checkpoint_dir()


def test_an_output_inside_the_installation_is_refused(tmp_path):
    layer = _layer_from(tmp_path / "ct.nii.gz")
    for output in (SAMPLE_DIR / "images", SAMPLE_DIR / "images" / "x.safetensors"):
        with pytest.raises(ValueError, match="inside the napari-simseg installation; choose a folder of your own"):
            taught_checkpoint_path(layer, output)
    assert taught_checkpoint_path(layer, tmp_path / "mine.safetensors") == tmp_path / "mine.safetensors"
    assert taught_checkpoint_path(layer, tmp_path).parent == tmp_path


def test_a_checkpoint_beside_the_images_is_not_reported_as_an_unsupported_file(tmp_path, caplog):
    from layout_builders import make_folder_dataset
    from napari_simseg.core.data.datasets import discover_dataset

    root = make_folder_dataset(tmp_path / "data")
    (root / "images" / "img0.taught-20260101-120000.safetensors").write_bytes(b"weights")
    with caplog.at_level(logging.WARNING):
        spec = discover_dataset(root)
    assert not [n for n in spec.notes if "unsupported" in n], spec.notes
    assert "unsupported" not in caplog.text
    assert all(not c.image_path.name.endswith(".safetensors") for c in spec.cases)
