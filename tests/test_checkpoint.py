import os
import pickle

import pytest
import torch

from conftest import tiny_meta_and_model
from napari_simseg.core.network.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
)


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

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

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
    split = {"train_volumes": ["t1", "t2"], "val_volumes": ["v1"]}
    meta_a.training = {"epoch": 2, "score": 0.8, "data": "D", "config": {"axis": 0, "lr": 1e-4}, **split}
    meta_b.training = {"epoch": 5, "score": 0.7, "data": "D", "config": {"axis": 0, "lr": 3e-4}, **split}
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
    from napari_simseg.core.jobs.averaging import average_checkpoints

    a, b, model_a, model_b = _two_runs(tmp_path)
    out = average_checkpoints([a, b], tmp_path / "soup.safetensors", weights=[3, 1])
    assert not list(tmp_path.glob(".tmp-*"))  # atomic write left no temp file
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
    sources = meta.training["averaged_from"]
    assert [r["weight"] for r in sources] == [0.75, 0.25]
    assert [r["epoch"] for r in sources] == [2, 5]
    assert [r["config"]["lr"] for r in sources] == [1e-4, 3e-4]  # every input's own config
    # the top-level config is no input's: only what using the network needs
    assert meta.training["config"] == {"axis": 0}
    assert meta.training["data"] == "D"
    assert meta.training["train_volumes"] == ["t1", "t2"] and meta.training["val_volumes"] == ["v1"]
    assert meta.class_names == ["background", "a", "b"] and meta.memory == "sim"


def test_average_accumulates_in_float32_and_keeps_float16_storage_unless_told(tmp_path):
    from safetensors.torch import load_file

    from napari_simseg.core.jobs.averaging import average_checkpoints

    meta, model = tiny_meta_and_model(seed=0)
    h1 = save_checkpoint(tmp_path / "h1.safetensors", model, meta, half=True)
    f1 = save_checkpoint(tmp_path / "f1.safetensors", model, meta)
    meta2, model2 = tiny_meta_and_model(seed=3)
    h2 = save_checkpoint(tmp_path / "h2.safetensors", model2, meta2, half=True)
    half = average_checkpoints([h1, h2], tmp_path / "half.safetensors", weights=[1, 2])
    full = average_checkpoints([h1, h2], tmp_path / "full.safetensors", weights=[1, 2], half=False)
    mixed = average_checkpoints([f1, h2], tmp_path / "mixed.safetensors")
    forced = average_checkpoints([f1, h2], tmp_path / "forced.safetensors", half=True)
    t1, t2 = load_file(str(h1)), load_file(str(h2))
    got_full, got_half = load_file(str(full)), load_file(str(half))
    floats = [k for k in t1 if t1[k].is_floating_point()]
    for k in floats:
        expected = (t1[k].float() + 2 * t2[k].float()) / 3
        torch.testing.assert_close(got_full[k], expected, msg=k)  # float32 sums, not float16
        assert got_full[k].dtype == torch.float32 and got_half[k].dtype == torch.float16
        torch.testing.assert_close(got_half[k], expected.half(), msg=k)
    # float16 only when every input is float16, or when asked
    assert all(v.dtype == torch.float32 for k, v in load_file(str(mixed)).items() if k in floats)
    assert all(v.dtype == torch.float16 for k, v in load_file(str(forced)).items() if k in floats)


@pytest.mark.parametrize(
    "other, field",
    [
        (dict(class_names=("background", "a", "c")), "class_names"),
        (dict(radius=3), "click_radius"),
        (dict(decoder="plain"), "model"),
        (dict(memory="cim", depth=1), "memory"),
        (dict(depth=2), "depth"),
        (dict(context_slices=1), "context_slices"),
    ],
)
def test_average_refuses_different_networks(tmp_path, other, field):
    from napari_simseg.core.jobs.averaging import average_checkpoints

    meta, model = tiny_meta_and_model(seed=0)
    a = save_checkpoint(tmp_path / "a.safetensors", model, meta)
    meta2, model2 = tiny_meta_and_model(seed=1, **other)
    b = save_checkpoint(tmp_path / "b.safetensors", model2, meta2)
    out = tmp_path / "soup.safetensors"
    with pytest.raises(CheckpointError, match=f"cannot average .*their {field} fields do not match"):
        average_checkpoints([a, b], out)
    assert not out.exists()


def test_average_refuses_other_normalisation_axes_tensors_and_repeats(tmp_path):
    from safetensors.torch import load_file, save_file

    from napari_simseg.core.jobs.averaging import average_checkpoints

    a, b, *_ = _two_runs(tmp_path)
    out = tmp_path / "x.safetensors"
    model = load_checkpoint(b).model
    meta = read_checkpoint_meta(b)
    meta.normalization = {"method": "percentile_zscore", "low": 1.0, "high": 99.0}
    c = save_checkpoint(tmp_path / "c.safetensors", model, meta)
    with pytest.raises(CheckpointError, match="their normalization fields do not match"):
        average_checkpoints([a, c], out)
    meta = read_checkpoint_meta(b)
    meta.training["config"] = {"axis": 2}
    c = save_checkpoint(tmp_path / "c.safetensors", model, meta)
    with pytest.raises(CheckpointError, match="along axis 0 and 2"):
        average_checkpoints([a, c], out)
    # a tensor of another shape, or one missing, under the same header
    header = {"simseg": __import__("json").dumps(__import__("dataclasses").asdict(read_checkpoint_meta(b)))}
    tensors = load_file(str(b))
    key = next(k for k, v in tensors.items() if v.ndim == 4)
    save_file({**tensors, key: tensors[key][:1].contiguous()}, str(tmp_path / "shape.safetensors"), metadata=header)
    with pytest.raises(CheckpointError, match=f"tensor {key} is"):
        average_checkpoints([a, tmp_path / "shape.safetensors"], out)
    save_file({k: v for k, v in tensors.items() if k != key}, str(tmp_path / "less.safetensors"), metadata=header)
    with pytest.raises(CheckpointError, match="different tensors"):
        average_checkpoints([a, tmp_path / "less.safetensors"], out)
    with pytest.raises(CheckpointError, match="given more than once"):
        average_checkpoints([a, b, tmp_path / "." / "a.safetensors"], out)
    assert not out.exists()


def test_average_refuses_one_input_bad_weights_and_missing_files(tmp_path):
    from napari_simseg.core.jobs.averaging import average_checkpoints

    a, b, *_ = _two_runs(tmp_path)
    out = tmp_path / "x.safetensors"
    with pytest.raises(CheckpointError, match="at least 2 checkpoints"):
        average_checkpoints([a], out)
    for weights in ([1.0], [1.0, -1.0], [1.0, float("nan")]):
        with pytest.raises(CheckpointError, match="2 positive numbers"):
            average_checkpoints([a, b], out, weights=weights)
    with pytest.raises(CheckpointError, match="must be numbers"):
        average_checkpoints([a, b], out, weights=[1.0, "x"])
    with pytest.raises(CheckpointError, match="does not exist"):
        average_checkpoints([a, tmp_path / "missing.safetensors"], out)
    assert not out.exists()


def test_average_of_runs_on_different_splits_records_no_split_and_warns(tmp_path):
    from napari_simseg.core.jobs.averaging import average_checkpoints

    a, b, *_ = _two_runs(tmp_path)
    model = load_checkpoint(b).model
    meta = read_checkpoint_meta(b)
    meta.training["val_volumes"] = ["t1"]  # validated on what the other trained on
    meta.training["data"] = "E"
    meta.simulation = "sdg"
    c = save_checkpoint(tmp_path / "c.safetensors", model, meta)
    with pytest.warns(UserWarning, match="different val_volumes"):
        out = average_checkpoints([a, c], tmp_path / "soup.safetensors")
    training = read_checkpoint_meta(out).training
    assert "val_volumes" not in training and training["train_volumes"] == ["t1", "t2"]
    assert "data" not in training and [r["data"] for r in training["averaged_from"]] == ["D", "E"]
    assert read_checkpoint_meta(out).simulation == "ddg+sdg"


def test_simseg_average_command(tmp_path, capsys):
    from safetensors.torch import load_file

    from napari_simseg.cli import main

    a, b, *_ = _two_runs(tmp_path)
    out = tmp_path / "soup.safetensors"
    assert main(["average", str(a), str(b), "--output", str(out), "--half"]) == 0
    printed = capsys.readouterr().out
    assert "average of 2 checkpoints" in printed and "simseg calibrate" in printed
    assert [r["weight"] for r in read_checkpoint_meta(out).training["averaged_from"]] == [0.5, 0.5]
    assert all(v.dtype == torch.float16 for v in load_file(str(out)).values() if v.is_floating_point())
    assert main(["average", str(a), "--output", str(tmp_path / "y.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("simseg average: averaging needs at least 2") and len(err.strip().splitlines()) == 1
    assert main(["average", str(a), str(b), "--weights", "1,x", "--output", str(tmp_path / "y.safetensors")]) == 2
    assert "--weights must be comma-separated numbers" in capsys.readouterr().err
    assert not (tmp_path / "y.safetensors").exists()
