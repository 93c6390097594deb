import os
import pickle

import numpy as np
import pytest
import torch

from napari_simseg.core.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
)

from conftest import tiny_meta_and_model


def test_round_trip_is_self_describing(tmp_path):
    meta, model = tiny_meta_and_model(memory="sim", depth=2, class_names=("background", "x", "y", "z"), radius=4)
    path = save_checkpoint(tmp_path / "m.safetensors", model, meta)
    got = read_checkpoint_meta(path)
    assert got.class_names == ["background", "x", "y", "z"]
    assert (got.memory, got.depth, got.click_radius) == ("sim", 2, 4)
    assert got.model["encoder"] == "resnet18" and got.model["decoder"] == "convlstm"
    assert got.normalization["method"] == "percentile_zscore"
    assert got.format_version == 1
    ck = load_checkpoint(path)
    x = torch.randn(1, 1 + 2 * 2 * 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ck.model(x)[0], model(x)[0])
    assert not list(tmp_path.glob(".tmp-*"))  # atomic write left no temp file


def test_half_storage_is_smaller_and_loads_as_float32(tmp_path):
    meta, model = tiny_meta_and_model()
    full = save_checkpoint(tmp_path / "f.safetensors", model, meta)
    half = save_checkpoint(tmp_path / "h.safetensors", model, meta, half=True)
    assert os.path.getsize(half) < 0.6 * os.path.getsize(full)
    ck = load_checkpoint(half)
    assert next(ck.model.parameters()).dtype == torch.float32


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['SIMSEG_PWNED']}",))


def test_pickle_payload_is_refused_without_running(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("SIMSEG_PWNED", str(marker))
    evil = tmp_path / "evil.safetensors"
    with open(evil, "wb") as f:
        pickle.dump({"state": _Evil()}, f)
    torch_evil = tmp_path / "evil.pt"
    torch.save({"x": _Evil()}, torch_evil)
    for p in (evil, torch_evil):
        with pytest.raises(CheckpointError, match="pickled PyTorch files are refused"):
            load_checkpoint(p)
    assert not marker.exists()


def test_wrong_classes_is_one_actionable_line(tiny_checkpoint):
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tiny_checkpoint, expected_classes=["background", "liver"])
    msg = str(err.value)
    assert "trained for classes" in msg and "retrain" in msg and "\n" not in msg


def test_wrong_channels(tiny_checkpoint):
    with pytest.raises(CheckpointError, match="19 input channels, caller provides 4"):
        load_checkpoint(tiny_checkpoint, expected_channels=4)


def test_newer_version_and_corrupt_files(tmp_path, tiny_checkpoint):
    import json

    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(tiny_checkpoint), "pt") as f:
        header = json.loads(f.metadata()["simseg"])
    header["format_version"] = 99
    newer = tmp_path / "newer.safetensors"
    save_file(load_file(str(tiny_checkpoint)), str(newer), metadata={"simseg": json.dumps(header)})
    with pytest.raises(CheckpointError, match="newer than this napari-simseg supports"):
        load_checkpoint(newer)

    data = tiny_checkpoint.read_bytes()
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(truncated)
    assert "\n" not in str(err.value)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError):
        load_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_tensor_shapes_not_matching_header(tmp_path, tiny_checkpoint):
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(tiny_checkpoint), "pt") as f:
        header = json.loads(f.metadata()["simseg"])
    header["class_names"] = header["class_names"] + ["extra"]
    header["model"]["n_classes"] = 4
    header["model"]["in_channels"] = 1 + 2 * 3 * 4
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(tiny_checkpoint)), str(bad), metadata={"simseg": json.dumps(header)})
    with pytest.raises(CheckpointError, match="do not match the architecture"):
        load_checkpoint(bad)
