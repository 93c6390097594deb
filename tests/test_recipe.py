"""The default recipe: choices from the data, the plan sized to the time budget."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from napari_simseg.core.engine.train_config import TrainConfig
from napari_simseg.core.jobs.recipe import default_recipe, describe_recipe, estimate_step_seconds


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory):
    from napari_simseg.core.data.phantom import make_phantom_dataset

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


def test_a_short_budget_works_at_128_pixels_with_the_same_crops_and_teaching_keeps_256():
    from napari_simseg.core.jobs.teach_worker import teaching_options

    shapes, names = [(404, 488)] * 5, ["background", "liver", "aorta"]
    short = default_recipe(shapes, names, max_minutes=10)
    longer = default_recipe(shapes, names, max_minutes=15)
    assert short["working_size"] == 128 and longer["working_size"] == 256
    assert (short["crop_size"], short["batch_size"]) == (longer["crop_size"], longer["batch_size"]) == (160, 5)
    assert "working size 128, 160-pixel crops" in describe_recipe(short)
    shapes = [(512, 512)] * 5
    assert default_recipe(shapes, names, max_minutes=15)["working_size"] == 256
    assert default_recipe(shapes, names, max_minutes=10, budget_working_size=False)["working_size"] == 256
    assert default_recipe([(120, 100)], names, max_minutes=5)["working_size"] is None  # small: its own size
    assert teaching_options(names, ["image"], shapes, 3.0, "fresh")["working_size"] == 256


def test_small_volumes_keep_their_resolution_with_a_full_resolution_stem():
    r = default_recipe([(35, 51, 42), (44, 59, 40)], ["background", "a", "b"], max_minutes=5)
    assert r["working_size"] is None and r["crop_size"] is None
    assert r["encoder_stem_stride"] == 1 and r["context_slices"] == 1 and r["batch_size"] == 8
    assert r["max_minutes"] == 5
    assert r["aug_flips"] == ["vertical", "horizontal"]  # no left/right class: flips, and flip averaging


def test_lateral_class_names_are_recognised():
    from napari_simseg.core.jobs.recipe import lateral_classes

    names = ["background", "kidney_R", "rectum", "Lt. clavicle", "liver", "left lung", "Right-Atrium", "sinus"]
    assert lateral_classes(names) == ["kidney_R", "Lt. clavicle", "left lung", "Right-Atrium"]


def test_estimate_step_seconds_times_a_real_step():
    r = default_recipe([(40, 40)], ["background", "a"])
    r.update(encoder_depth=3, decoder_channels=[16, 8, 8], batch_size=2)
    seconds = estimate_step_seconds(r, n_classes=2, n_channels=1, item_shape=(32, 32), repeats=1)
    assert 0 < seconds < 60


def test_cli_train_without_config_uses_the_recipe_and_plans_the_budget(phantom_data, tmp_path, capsys):
    from napari_simseg.cli import main
    from napari_simseg.core.network.checkpoint import read_checkpoint_meta

    out = tmp_path / "run"
    rc = main(["train", "--data", str(phantom_data), "--out", str(out), "--max-minutes", "0.3",
               "--encoder-depth", "3", "--decoder-channels", "16,8,8", "--epochs", "2", "--device", "cpu",
               "--no-progress", "--val-clicks", "1"])
    assert rc == 0
    text = capsys.readouterr().out
    assert text.startswith("recipe cpu-fast-v2 (no --config)") and "plan:" in text
    lines = text.strip().splitlines()  # the next step, then the checkpoint's path last
    assert lines[-1] == str(out / "best.safetensors")
    assert lines[-2].startswith(f"next: simseg calibrate --checkpoint {out / 'best.safetensors'} --data {phantom_data}")
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


def test_hundreds_of_multimodal_volumes_are_read_in_part_and_empty_slices_capped():
    from napari_simseg.core.jobs.recipe import ARRAY_BYTES, MAX_EMPTY_FRACTION, case_bytes

    shapes = [(155, 240, 240)] * 64  # brain tumour MRI: 4 channels
    r = default_recipe(shapes, ["background", "edema", "non-enhancing", "enhancing"], ["FLAIR", "T1w", "T1gd", "T2w"],
                       n_cases=484)
    per_case = case_bytes(shapes, 4, r["working_size"])
    assert r["working_size"] is None and per_case == 155 * 240 * 240 * 17
    assert r["max_volumes"] == int(ARRAY_BYTES // per_case) and 10 <= r["max_volumes"] < 484
    assert r["max_empty_fraction"] == MAX_EMPTY_FRACTION
    assert "cases read" in describe_recipe(r) and "--max-volumes" in describe_recipe(r)
    TrainConfig(data="d", out="o", **r).validate()
    # a small set, and 2D images, are read whole; 2D images have no empty-slice cap
    assert default_recipe(shapes[:20], ["background", "a"], n_cases=20)["max_volumes"] is None
    radiographs = default_recipe([(2048, 2048)] * 64, ["background", "lung"], n_cases=5000)
    assert radiographs["max_volumes"] is None and radiographs["max_empty_fraction"] is None


def test_empty_slices_are_kept_to_their_share_of_the_training_items():
    from napari_simseg.core.data.slices import SliceDataset

    labels = np.zeros((30, 16, 16), np.uint8)
    labels[10:16, 4:8, 4:8] = 1  # 6 slices with a structure, 24 without
    images = {"a": np.random.default_rng(0).normal(size=(1, 30, 16, 16)).astype(np.float32)}
    ds = SliceDataset.from_arrays(images, {"a": labels}, ["background", "x"])
    assert len(ds) == 30
    assert ds.limit_empty_slices(1 / 3) == 21  # 6 full slices allow 3 empty ones
    kept_empty = [k for _, k in ds.index if not labels[k].any()]
    assert len(ds) == 9 and len(kept_empty) == 3 and kept_empty[0] < 10 and kept_empty[-1] >= 16  # spread
    assert ds.limit_empty_slices(1 / 3) == 0  # already within the share
    nothing = SliceDataset.from_arrays(images, {"a": np.zeros_like(labels)}, ["background", "x"])
    assert nothing.limit_empty_slices(0.2) == 0 and len(nothing) == 30


def test_max_empty_fraction_is_checked():
    with pytest.raises(ValueError, match="max_empty_fraction"):
        TrainConfig(data="d", out="o", max_empty_fraction=1.0).validate()


@pytest.mark.parametrize("share, kept", [(1e-9, "floor"), (1e9, 40)])
def test_the_plan_cuts_a_validation_that_would_take_more_than_its_share(tmp_path, monkeypatch, share, kept):
    from napari_simseg.core.data.phantom import make_phantom_dataset
    from napari_simseg.core.jobs import training
    from napari_simseg.core.jobs.training import VAL_MIN_ITEMS, train

    # one validation volume of 40 slices whose timed pass takes more than its (here tiny)
    # share of the budget, however fast this machine: the plan keeps the fewest it may
    # (and a share larger than the budget keeps all 40)
    monkeypatch.setattr(training, "VAL_SHARE", share)
    kept = VAL_MIN_ITEMS if kept == "floor" else kept
    data = make_phantom_dataset(tmp_path / "data", n_volumes=5, seed=3, shape=(40, 40, 44))
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), encoder="resnet18", encoder_depth=3,
                      decoder_channels=[16, 8, 8], batch_size=4, device="cpu", progress=False, val_clicks=1,
                      epochs=1, plan_steps=True, max_minutes=0.05, val_fraction=0.2)
    lines = []
    train(cfg.validate(), log=lines.append)
    plan = next(line for line in lines if line.startswith("plan:"))
    assert f"validation on {kept} slices" in plan
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["val_max_slices"] == kept
