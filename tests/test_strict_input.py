"""Strict input (issue 18, point 4): indices must be integers, coordinates finite numbers,
every checkpoint header field has a type and a range, a folder is not a checkpoint, and
float64 values beyond float32 get their own message. Every refusal is one line naming the
value, field or file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_simseg.core.imaging.preprocessing import ImageError, normalize_volume
from napari_simseg.core.interaction.clicks import ClickError, as_clicks, as_index, encode_clicks
from napari_simseg.core.network.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_meta
from napari_simseg.core.network.predictor import Predictor
from napari_simseg.core.session.interactive import InteractiveSession


def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text, text
    return text


# ---------------------------------------------------------------- indices and clicks
@pytest.mark.parametrize("value", [3, np.int64(3), np.uint8(3), 3.0, np.float32(3.0), np.array(3)])
def test_integers_and_integral_numbers_are_indices(value):
    assert as_index(value) == 3 and type(as_index(value)) is int


@pytest.mark.parametrize("value, shown", [(1.5, "1.5"), (True, "True"), (np.bool_(False), "False"),
                                          ("a", "'a'"), ("1", "'1'"), (float("nan"), "nan"),
                                          (np.float64(2.7), "2.7"), (None, "None"), ([1], "[1]")])
def test_anything_else_is_refused_naming_the_value(value, shown):
    with pytest.raises(ValueError) as err:
        as_index(value, "class index")
    assert f"class index must be an integer, got {shown}" in _one_line(err)


@pytest.mark.parametrize("label, match", [(1.5, "got 1.5"), (True, r"got True \(a boolean\)"),
                                          ("a", "got 'a'"), (np.bool_(True), "got True")])
def test_click_classes_are_never_rounded(label, match):
    with pytest.raises(ClickError, match=match):
        as_clicks([(label, 3, 4)])
    with pytest.raises(ClickError, match=match):
        encode_clicks([(label, 3, 4)], 3, (10, 10))


def test_click_coordinates_must_be_numbers():
    with pytest.raises(ClickError, match="coordinates must be numbers, got 'a'"):
        as_clicks([(1, "a", 4)])
    with pytest.raises(ClickError, match="coordinates must be numbers, got True"):
        as_clicks([(1, True, 4)])
    # numpy scalars and integral floats are fine
    assert as_clicks([(np.int64(2), np.float32(3.5), 4)])[0].as_tuple() == (2, 3.5, 4.0)


@pytest.fixture
def session(tiny_checkpoint, small_volume):
    return InteractiveSession(small_volume, Predictor(tiny_checkpoint, device="cpu"))


@pytest.mark.parametrize("z, shown", [(2.7, "2.7"), (True, "True"), ("2", "'2'"), (np.float64(1.5), "1.5")])
def test_slice_indices_are_never_rounded(session, z, shown):
    with pytest.raises(IndexError) as err:
        session.add_clicks(z, [(1, 10, 10)])
    assert f"slice index must be an integer, got {shown}" in _one_line(err)
    assert session.log == []  # nothing happened


def test_numpy_indices_work_and_non_finite_clicks_are_refused(session):
    result = session.add_clicks(np.int64(1), [(np.int64(2), 10.0, 12.0)])
    assert result.slice_index == 1 and result.labels[10, 12] == 2
    for y in (float("nan"), float("inf")):
        with pytest.raises(ClickError, match="not a finite number"):
            session.add_clicks(1, [(1, y, 3)])
    assert session.n_rounds(1) == 1
    with pytest.raises(ClickError, match="class index must be an integer, got 1.5"):
        session.add_clicks(1, [(1.5, 3, 3)])
    json.dumps(session.log)  # the logged classes are plain ints


# ---------------------------------------------------------------- checkpoint headers
def _with_header(tmp_path, checkpoint, name="crafted", **changes):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(checkpoint), "pt") as f:
        header = json.loads(f.metadata()["simseg"])
    for key, value in changes.items():
        target = header
        *parents, last = key.split(".")
        for parent in parents:
            target = target[parent]
        if value is KeyError:
            target.pop(last)
        else:
            target[last] = value
    path = tmp_path / f"{name}.safetensors"
    save_file(load_file(str(checkpoint)), str(path), metadata={"simseg": json.dumps(header)})
    return path


@pytest.mark.parametrize("changes, field", [
    ({"class_names": None}, "class_names"),
    ({"class_names": ["background"]}, "class_names"),
    ({"class_names": ["background", "a", "a"]}, "class_names"),
    ({"class_names": ["background", 3, "b"]}, "class_names"),
    ({"click_radius": 100000}, "click_radius"),
    ({"click_radius": -1}, "click_radius"),
    ({"click_radius": 2.5}, "click_radius"),
    ({"depth": "3"}, "depth"),
    ({"depth": True}, "depth"),
    ({"depth": 10 ** 6}, "depth"),
    ({"memory": ["sim"]}, "memory"),
    ({"context_slices": 10 ** 6}, "context_slices"),
    ({"working_size": 8}, "working_size"),
    ({"channel_names": []}, "channel_names"),
    ({"flips": ["diagonal"]}, "flips"),
    ({"training": "yes"}, "training"),
    ({"format_version": "4"}, "format_version"),
    ({"model": None}, "model"),
    ({"model.in_channels": 10 ** 9}, "model.in_channels"),
    ({"model.encoder_depth": 9}, "model.encoder_depth"),
    ({"model.decoder": "lstm"}, "model.decoder"),
    ({"model.decoder_channels": [32, -16, 8]}, "model.decoder_channels"),
    ({"model.decoder_channels": [32, 16]}, "model.decoder_channels"),
    ({"model.lstm_kernel_size": 4}, "model.lstm_kernel_size"),
    ({"model.lstm_separable": "no"}, "model.lstm_separable"),
    ({"model.encoder_stem_stride": 4}, "model.encoder_stem_stride"),
    ({"normalization": {"low": 99, "high": 1}}, "normalization.low"),
    ({"normalization": {"low": float("nan")}}, "normalization.low"),
    ({"normalization": {"n4": "yes"}}, "normalization.n4"),
    # sizes that would make the first round allocate without limit (issue 34, point 9)
    ({"model.canvas": [100000, 100000]}, "model.canvas"),
    ({"model.canvas": [256, 4097]}, "model.canvas"),
    ({"working_size": 100000}, "working_size"),
    ({"normalization": {"method": "minmax"}}, "normalization.method"),
    ({"normalization": {"method": "percentile_zscore", "window": [0, 80]}}, "normalization"),
    ({"channel_names": [f"c{k}" for k in range(5000)]}, "channel_names"),
    ({"class_names": [f"c{k}" for k in range(5000)]}, "class_names"),
    ({"flips": ["vertical"] * 1000}, "flips"),
])
def test_every_header_field_is_checked_and_named(tmp_path, tiny_checkpoint, changes, field):
    crafted = _with_header(tmp_path, tiny_checkpoint, **changes)
    for read in (read_checkpoint_meta, load_checkpoint):
        with pytest.raises(CheckpointError) as err:
            read(crafted)
        text = _one_line(err)
        assert str(crafted) in text and f"'{field}'" in text, text


def test_header_bounds_name_the_allowed_values(tmp_path, tiny_checkpoint):
    with pytest.raises(CheckpointError, match=r"'model.canvas' must be two sizes \[H, W\] of 1..4096 pixels"):
        load_checkpoint(_with_header(tmp_path, tiny_checkpoint, **{"model.canvas": [100000, 100000]}))
    with pytest.raises(CheckpointError, match=r"'normalization.method' must be one of \['percentile_zscore'\], "
                                              r"got 'minmax'"):
        load_checkpoint(_with_header(tmp_path, tiny_checkpoint, **{"normalization.method": "minmax"}))
    # the largest allowed canvas still loads
    assert load_checkpoint(_with_header(tmp_path, tiny_checkpoint, **{"model.canvas": [4096, 64]})).model


def test_unknown_and_missing_header_fields_are_named(tmp_path, tiny_checkpoint):
    with pytest.raises(CheckpointError, match=r"unknown header field\(s\) \['surprise'\]"):
        read_checkpoint_meta(_with_header(tmp_path, tiny_checkpoint, surprise=1))
    with pytest.raises(CheckpointError, match=r"header field\(s\) \['click_radius'\] missing"):
        read_checkpoint_meta(_with_header(tmp_path, tiny_checkpoint, click_radius=KeyError))
    with pytest.raises(CheckpointError, match=r"'model' has unknown field\(s\) \['layers'\]"):
        read_checkpoint_meta(_with_header(tmp_path, tiny_checkpoint, **{"model.layers": 3}))


def test_a_folder_as_checkpoint_says_so(tmp_path, tiny_checkpoint):
    from napari_simseg.core.io.resources import resolve_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    (run / "best.safetensors").write_bytes(tiny_checkpoint.read_bytes())
    with pytest.raises(FileNotFoundError) as err:
        resolve_checkpoint(run)
    assert "is a folder, not a file" in _one_line(err) and "best.safetensors" in str(err.value)
    with pytest.raises(CheckpointError, match="is a folder, not a file"):
        load_checkpoint(run)
    with pytest.raises(FileNotFoundError, match="is a folder"):
        Predictor(run, device="cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="is a folder, not a file; pass a .safetensors"):
        resolve_checkpoint(empty)


# ---------------------------------------------------------------- images
def test_float64_beyond_float32_has_its_own_message(tiny_checkpoint, small_volume):
    huge = small_volume.astype(np.float64) * 1e298
    with pytest.raises(ImageError) as err:
        InteractiveSession(huge, Predictor(tiny_checkpoint, device="cpu"))
    text = _one_line(err)
    assert "beyond the float32 range" in text and "NaN" not in text and "rescale" in text
    with pytest.raises(ImageError, match="image 'case_7' values reach .*beyond the float32 range"):
        normalize_volume(huge, name="case_7")
    # large but representable values are fine
    InteractiveSession(small_volume.astype(np.float64) * 1e30, Predictor(tiny_checkpoint, device="cpu"))
