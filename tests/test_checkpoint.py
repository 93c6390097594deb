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


# ---------------------------------------------------------------- weight averaging
def _two_runs(tmp_path, **kwargs):
    """Two checkpoints of one network with different weights (as two fine-tuning runs)."""
    meta_a, model_a = tiny_meta_and_model(seed=0, **kwargs)
    meta_b, model_b = tiny_meta_and_model(seed=1, **kwargs)
    meta_a.training = {"epoch": 2, "score": 0.8, "config": {"axis": 0}}
    meta_b.training = {"epoch": 5, "score": 0.7, "config": {"axis": 0}}
    meta_a.decision_offsets = [0.0, -0.2, -0.1]
    with torch.no_grad():  # distinct batch-norm statistics and step counters too
        for i, m in enumerate((model_a, model_b)):
            for name, buf in m.named_buffers():
                if "running_mean" in name:
                    buf.normal_(generator=torch.Generator().manual_seed(i))
                elif "num_batches_tracked" in name:
                    buf.fill_(10 * (i + 1))
    a = save_checkpoint(tmp_path / "a.safetensors", model_a, meta_a)
    b = save_checkpoint(tmp_path / "b.safetensors", model_b, meta_b)
    return a, b, model_a, model_b


def test_average_is_the_weighted_mean_of_every_tensor(tmp_path):
    from napari_simseg.core.checkpoint import average_checkpoints

    a, b, model_a, model_b = _two_runs(tmp_path)
    out = average_checkpoints([a, b], tmp_path / "soup.safetensors", weights=[3, 1])
    sa, sb = model_a.state_dict(), model_b.state_dict()
    got = load_checkpoint(out)
    soup = got.model.state_dict()
    differing = 0
    for key, value in soup.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.75 * sa[key] + 0.25 * sb[key], msg=key)
            differing += not torch.equal(sa[key], sb[key])
        else:
            assert int(value) == max(int(sa[key]), int(sb[key])) == 20, key
    assert differing > 10  # the inputs really differ: the mean is not a copy
    # the average is a working network, and it is neither input
    x = torch.randn(1, got.model.config.in_channels, 32, 32)
    with torch.no_grad():
        y, ya = got.model(x)[0], model_a(x)[0]
    assert torch.isfinite(y).all() and not torch.allclose(y, ya)
    meta = got.meta
    assert meta.decision_offsets is None  # offsets of one network do not fit another
    assert [r["weight"] for r in meta.training["averaged_from"]] == [0.75, 0.25]
    assert [r["epoch"] for r in meta.training["averaged_from"]] == [2, 5]
    assert meta.training["config"] == {"axis": 0}
    assert meta.class_names == ["background", "a", "b"] and meta.memory == "sim"


def test_average_keeps_float16_storage_unless_told(tmp_path):
    from napari_simseg.core.checkpoint import average_checkpoints

    meta, model = tiny_meta_and_model(seed=0)
    h1 = save_checkpoint(tmp_path / "h1.safetensors", model, meta, half=True)
    meta2, model2 = tiny_meta_and_model(seed=3)
    h2 = save_checkpoint(tmp_path / "h2.safetensors", model2, meta2, half=True)
    half = average_checkpoints([h1, h2], tmp_path / "half.safetensors")
    full = average_checkpoints([h1, h2], tmp_path / "full.safetensors", half=False)
    assert os.path.getsize(half) < 0.6 * os.path.getsize(full)
    # equal weights by default; the mean of two float16 tensors is computed in float32
    same = average_checkpoints([h1, h1], tmp_path / "same.safetensors")
    torch.testing.assert_close(load_checkpoint(same).model.state_dict(),
                               load_checkpoint(h1).model.state_dict())


@pytest.mark.parametrize(
    "other, field",
    [
        (dict(class_names=("background", "a", "c")), "class_names"),
        (dict(radius=3), "click_radius"),
        (dict(decoder="plain"), "model"),
        (dict(memory="cim", depth=1), "memory"),
    ],
)
def test_average_refuses_different_networks(tmp_path, other, field):
    from napari_simseg.core.checkpoint import average_checkpoints

    meta, model = tiny_meta_and_model(seed=0)
    a = save_checkpoint(tmp_path / "a.safetensors", model, meta)
    meta2, model2 = tiny_meta_and_model(seed=1, **other)
    b = save_checkpoint(tmp_path / "b.safetensors", model2, meta2)
    out = tmp_path / "soup.safetensors"
    with pytest.raises(CheckpointError, match=f"cannot average .*their {field} differ"):
        average_checkpoints([a, b], out)
    assert not out.exists()


def test_average_refuses_other_axes_one_input_and_bad_weights(tmp_path):
    from napari_simseg.core.checkpoint import average_checkpoints

    a, b, *_ = _two_runs(tmp_path)
    meta = read_checkpoint_meta(b)
    meta.training["config"] = {"axis": 2}
    model = load_checkpoint(b).model
    c = save_checkpoint(tmp_path / "c.safetensors", model, meta)
    with pytest.raises(CheckpointError, match="along axis 0 and 2"):
        average_checkpoints([a, c], tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="at least 2 checkpoints"):
        average_checkpoints([a], tmp_path / "x.safetensors")
    for weights in ([1.0], [1.0, -1.0], [1.0, float("nan")]):
        with pytest.raises(CheckpointError, match="2 positive numbers"):
            average_checkpoints([a, b], tmp_path / "x.safetensors", weights=weights)
    with pytest.raises(CheckpointError, match="does not exist"):
        average_checkpoints([a, tmp_path / "missing.safetensors"], tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_simseg_average_command(tmp_path, capsys):
    from napari_simseg.cli import main

    a, b, *_ = _two_runs(tmp_path)
    out = tmp_path / "soup.safetensors"
    assert main(["average", str(a), str(b), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "average of 2 checkpoints" in printed and "simseg calibrate" in printed
    assert [r["weight"] for r in read_checkpoint_meta(out).training["averaged_from"]] == [0.5, 0.5]
    assert main(["average", str(a), "--output", str(tmp_path / "y.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("simseg average: averaging needs at least 2") and len(err.strip().splitlines()) == 1
    assert main(["average", str(a), str(b), "--weights", "1,x", "--output", str(tmp_path / "y.safetensors")]) == 2
    assert "--weights must be comma-separated numbers" in capsys.readouterr().err
    assert not (tmp_path / "y.safetensors").exists()
