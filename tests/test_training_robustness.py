"""Training runs that are killed, resumed, given other options or bad data (issue 18,
points 3, 4, 5 and 7): leftovers removed at the next start, ``--resume`` with other
network or data options refused with the list, self-contained checkpoints, each epoch
once in ``log.json``, and reports that count the cases actually used."""

from __future__ import annotations

import json
import os
import shutil
import struct
import time

import pytest
import torch

from napari_simseg.core.io import atomic
from napari_simseg.core.io.atomic import TMP_PREFIX
from napari_simseg.core.jobs.training import train
from training_helpers import make_phantom_training_data, tiny_config


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory):
    return make_phantom_training_data(tmp_path_factory.mktemp("phantom"))


_cfg = tiny_config


def _encoder_weights(path):
    """An ImageNet-shaped (3-channel) ResNet18 encoder state dict, as a user would bring one."""
    from segmentation_models_pytorch.encoders import get_encoder

    torch.manual_seed(5)
    torch.save(get_encoder("resnet18", in_channels=3, depth=5, weights=None).state_dict(), path)
    return path


def test_killed_run_resumes_with_each_epoch_once_self_contained_and_clean(phantom_data, tmp_path):
    from napari_simseg.core.network.checkpoint import load_checkpoint, read_checkpoint_meta

    out = tmp_path / "run"
    weights = _encoder_weights(tmp_path / "imagenet_resnet18.pth")
    # stopped by --max-minutes after the first step of epoch 1: that epoch is redone on resume
    train(_cfg(phantom_data, out, epochs=2, steps_per_epoch=2, encoder_weights=str(weights), max_minutes=1e-6),
          log=lambda m: None)
    assert [row["epoch"] for row in json.loads((out / "log.json").read_text())] == [1]
    assert torch.load(out / "train_state.pt", weights_only=True)["epoch"] == 0

    # a kill during a save left temporary files; the weights file moved away meanwhile
    dead = _dead_pid()
    leftovers = [out / f"{TMP_PREFIX}{dead}.{atomic._host_tag()}-abcd1234-last.safetensors",
                 out / "train_state.pt.tmp", out / "cache" / f"case_0123.{dead}.tmp.npz"]
    for path in leftovers:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"partial")
    # safetensors' own temporary file of a killed checkpoint write (older versions left it in the run folder)
    tensor_tmp = out / ".tmpAb3xYz"
    tensor_tmp.write_bytes(struct.pack("<Q", 120) + b'{"__metadata__"' + bytes(1000))
    leftovers.append(tensor_tmp)
    not_ours = [out / ".tmpUsers1", out / ".tmpLater1"]  # a user's file; one made after the run started
    not_ours[0].write_bytes(b"my notes")
    not_ours[1].write_bytes(b"")
    os.utime(not_ours[1], (time.time() + 3600, time.time() + 3600))
    moved = weights.rename(tmp_path / "elsewhere.pth")
    lines = []
    train(_cfg(phantom_data, out, epochs=2, steps_per_epoch=2, encoder_weights=str(weights), resume=True),
          log=lines.append)
    assert any("removed 4 temporary file(s)" in line for line in lines), lines
    assert not any(path.exists() for path in leftovers)
    assert all(path.exists() for path in not_ours)
    assert not [p for p in out.iterdir() if p.name.startswith(TMP_PREFIX)]
    assert [row["epoch"] for row in json.loads((out / "log.json").read_text())] == [1, 2]
    assert (out / "log.csv").read_text().count("\n") == 3  # header + one row per epoch

    # the checkpoint never needs the weights file; where they came from is recorded
    meta = read_checkpoint_meta(out / "best.safetensors")
    assert meta.model["encoder_weights"] is None
    assert meta.training["initial_encoder_weights"] == str(weights)
    assert load_checkpoint(out / "best.safetensors").model.config.encoder_weights is None
    assert moved.is_file() and not weights.exists()

    # --resume with options that change the network or the data: refused, listed, nothing touched
    state_before = (out / "train_state.pt").read_bytes()
    with pytest.raises(ValueError) as err:
        train(_cfg(phantom_data, out, epochs=3, steps_per_epoch=2, resume=True, encoder="resnet34",
                   decoder_channels=[32, 16, 8], context_slices=1), log=lambda m: None)
    text = str(err.value)
    assert "\n" not in text and "config.yaml" in text
    for option in ("encoder (run: 'resnet18', now: 'resnet34')", "decoder_channels", "context_slices"):
        assert option in text, text
    assert "epochs" not in text  # a longer schedule is a legitimate resume
    assert (out / "train_state.pt").read_bytes() == state_before

    # without config.yaml the training state itself is compared: one line, not a state_dict dump
    (out / "config.yaml").unlink()
    with pytest.raises(ValueError) as err:
        train(_cfg(phantom_data, out, epochs=3, steps_per_epoch=2, resume=True, decoder_channels=[32, 16, 8]),
              log=lambda m: None)
    assert "\n" not in str(err.value) and "holds another network" in str(err.value)


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_old_checkpoints_with_an_encoder_weights_path_load_anywhere(tmp_path, tiny_checkpoint):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from napari_simseg.core.network.checkpoint import load_checkpoint

    with safe_open(str(tiny_checkpoint), "pt") as f:
        header = json.loads(f.metadata()["simseg"])
    header["model"]["encoder_weights"] = "/home/someone/weights/resnet18.pth"  # not on this machine
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(tiny_checkpoint)), str(old), metadata={"simseg": json.dumps(header)})
    ck = load_checkpoint(old)
    assert ck.model.config.encoder_weights is None
    reference = load_checkpoint(tiny_checkpoint).model.state_dict()
    for k, v in ck.model.state_dict().items():
        torch.testing.assert_close(v, reference[k], rtol=0, atol=0)


def test_reports_count_the_cases_actually_used_after_skip(phantom_data, tmp_path):
    from napari_simseg.core.network.checkpoint import read_checkpoint_meta

    bad = tmp_path / "bad"
    shutil.copytree(phantom_data, bad)
    victim = sorted((bad / "labelsTr").glob("*.nii.gz"))[0]
    victim.write_bytes(b"not an image")
    lines = []
    best = train(_cfg(bad, tmp_path / "o", epochs=1, steps_per_epoch=1, on_error="skip", val_fraction=0.4),
                 log=lines.append)
    split = json.loads((tmp_path / "o" / "split.json").read_text())
    assert len(split["train"]) + len(split["val"]) == 5
    meta = read_checkpoint_meta(best).training
    used = len(meta["train_volumes"]) + len(meta["val_volumes"])
    assert used == 4
    summary = next(line for line in lines if line.startswith("data: "))
    case = victim.name.split(".")[0]
    assert (f"data: {len(meta['train_volumes'])} train / {len(meta['val_volumes'])} val volumes "
            f"(1 skipped: {case})") in summary, summary


def test_cli_resume_with_other_options_is_one_line(phantom_data, tmp_path, capsys):
    from napari_simseg.cli import main

    out = tmp_path / "run"
    args = ["train", "--data", str(phantom_data), "--out", str(out), "--encoder", "resnet18", "--encoder-depth", "3",
            "--decoder-channels", "16,8,8", "--batch-size", "4", "--device", "cpu", "--no-progress",
            "--val-clicks", "1", "--epochs", "1", "--steps-per-epoch", "1", "--config", os.devnull]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args[:5], "--resume", "--encoder", "resnet34", *args[7:]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "encoder (run: 'resnet18', now: 'resnet34')" in err, err


def _corrupt_copy(phantom_data, dest, pick):
    """A copy of the phantom data set whose labels of the cases ``pick(split)`` returns are corrupt."""
    from napari_simseg.core.data.splits import split_cases

    shutil.copytree(phantom_data, dest)
    labels = {p.name.split(".")[0]: p for p in (dest / "labelsTr").glob("*.nii.gz")}
    cfg = _cfg(dest, dest / "unused", val_fraction=0.2)
    split = split_cases(sorted(labels), cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    victims = pick(split)
    for case in victims:
        labels[case].write_bytes(b"not an image")
    return victims


def test_skip_splits_again_when_the_only_validation_case_is_unusable(phantom_data, tmp_path):
    [victim] = _corrupt_copy(phantom_data, tmp_path / "bad", lambda split: split["val"][:1])
    lines = []
    train(_cfg(tmp_path / "bad", tmp_path / "o", epochs=1, steps_per_epoch=1, on_error="skip", val_fraction=0.2),
          log=lines.append)
    split = json.loads((tmp_path / "o" / "split.json").read_text())
    assert split["val"] and victim not in split["train"] + split["val"]  # the split actually used
    assert len(split["train"]) + len(split["val"]) == 4
    summary = next(line for line in lines if line.startswith("data: "))
    assert f"(1 skipped: {victim})" in summary, summary


def test_stop_lists_the_unusable_cases_of_training_and_validation_at_once(phantom_data, tmp_path):
    from napari_simseg.core.data.layouts import DatasetError

    victims = _corrupt_copy(phantom_data, tmp_path / "bad", lambda split: [split["train"][0], split["val"][0]])
    with pytest.raises(DatasetError, match="--on-error skip") as err:
        train(_cfg(tmp_path / "bad", tmp_path / "o", epochs=1, steps_per_epoch=1, val_fraction=0.2))
    assert "2 of 5 case(s) cannot be used" in str(err.value)
    assert all(v in str(err.value) for v in victims)


def test_sizes_a_checkpoint_cannot_hold_are_refused_before_training(phantom_data, tmp_path):
    """A checkpoint's canvas and working size are bounded (a crafted header must not allocate
    without limit): a run whose items exceed them is refused at the start, not at its first save."""
    from napari_simseg.core.network.checkpoint import MAX_SIDE

    with pytest.raises(ValueError, match=rf"working_size must be an integer 16..{MAX_SIDE}"):
        _cfg(phantom_data, tmp_path / "a", working_size=MAX_SIDE + 1).validate()
    with pytest.raises(ValueError, match=r"exceed the largest canvas a checkpoint holds .*--working-size"):
        train(_cfg(phantom_data, tmp_path / "b", epochs=1, steps_per_epoch=1, pad_to=[MAX_SIDE + 32, 64]),
              log=lambda m: None)
    assert not (tmp_path / "b" / "last.safetensors").exists()
