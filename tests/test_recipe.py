"""The default recipe: choices from the data, the plan sized to the time budget."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from napari_simseg.core.recipe import default_recipe, describe_recipe, estimate_step_seconds
from napari_simseg.core.train_config import TrainConfig


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory):
    from napari_simseg.core.phantom import make_phantom_dataset

    root = tmp_path_factory.mktemp("phantom_recipe")
    make_phantom_dataset(root, n_volumes=4, seed=3, shape=(4, 40, 44), n_tumours=2)
    return root


def test_radiographs_get_the_working_size_crops_and_no_flips():
    r = default_recipe([(1024, 1024)] * 5, ["background", "left lung", "right lung"])
    assert r["working_size"] == 256 and r["crop_size"] == 160 and r["encoder_stem_stride"] == 2
    assert r["aug_flips"] == [] and r["context_slices"] == 0 and r["plan_steps"] and r["max_minutes"] == 20
    assert r["batch_size"] == 5  # ~8 x 128 x 128 pixels per batch of 160-pixel crops (padded to 160)
    TrainConfig(data="d", out="o", **r).validate()
    assert "working size 256" in describe_recipe(r) and "ddg_sim.yaml" in describe_recipe(r)


def test_small_volumes_keep_their_resolution_with_a_full_resolution_stem():
    r = default_recipe([(35, 51, 42), (44, 59, 40)], ["background", "a", "b"], max_minutes=5)
    assert r["working_size"] is None and r["crop_size"] is None
    assert r["encoder_stem_stride"] == 1 and r["context_slices"] == 1 and r["batch_size"] == 8
    assert r["max_minutes"] == 5
    assert r["aug_flips"] == ["vertical", "horizontal"]  # no left/right class: flips, and flip averaging


def test_lateral_class_names_are_recognised():
    from napari_simseg.core.recipe import lateral_classes

    names = ["background", "kidney_R", "rectum", "Lt. clavicle", "liver", "left lung", "Right-Atrium", "sinus"]
    assert lateral_classes(names) == ["kidney_R", "Lt. clavicle", "left lung", "Right-Atrium"]


def test_estimate_step_seconds_times_a_real_step():
    r = default_recipe([(40, 40)], ["background", "a"])
    r.update(encoder_depth=3, decoder_channels=[16, 8, 8], batch_size=2)
    seconds = estimate_step_seconds(r, n_classes=2, n_channels=1, item_shape=(32, 32), repeats=1)
    assert 0 < seconds < 60


def test_cli_train_without_config_uses_the_recipe_and_plans_the_budget(phantom_data, tmp_path, capsys):
    from napari_simseg.cli import main
    from napari_simseg.core.checkpoint import read_checkpoint_meta

    out = tmp_path / "run"
    rc = main(["train", "--data", str(phantom_data), "--out", str(out), "--max-minutes", "0.3",
               "--encoder-depth", "3", "--decoder-channels", "16,8,8", "--epochs", "2", "--device", "cpu",
               "--no-progress", "--val-clicks", "1"])
    assert rc == 0
    text = capsys.readouterr().out
    assert text.startswith("recipe cpu-fast-v1 (no --config)") and "plan:" in text
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    # the plan is written down, so a resumed run follows it
    assert cfg["plan_steps"] is False and cfg["steps_per_epoch"] >= 1 and cfg["lr_schedule"] == "onecycle"
    assert cfg["encoder"] == "resnet18" and cfg["encoder_depth"] == 3
    meta = read_checkpoint_meta(out / "best.safetensors")
    assert meta.flips is None and len(meta.channel_names) == 1  # both flips; the phantom's channel is "MRI"
    history = json.loads((out / "log.json").read_text())
    assert 1 <= len(history) <= 2 and np.isfinite(history[0]["train_loss"])


def test_a_typed_schedule_is_not_replanned(phantom_data, tmp_path):
    from napari_simseg.cli import main

    out = tmp_path / "run"
    assert main(["train", "--data", str(phantom_data), "--out", str(out), "--encoder-depth", "3",
                 "--decoder-channels", "16,8,8", "--epochs", "1", "--steps-per-epoch", "2", "--device", "cpu",
                 "--no-progress", "--val-clicks", "1"]) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["steps_per_epoch"] == 2 and cfg["plan_steps"] is False


def test_plan_steps_needs_a_budget():
    with pytest.raises(ValueError, match="max-minutes"):
        TrainConfig(data="d", out="o", plan_steps=True).validate()
