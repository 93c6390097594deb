"""The working resolution and several image channels, end to end: the network works on
shrunk slices, labels come back on the image's own grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TINY_MODEL
from napari_simseg.core.imaging.preprocessing import (
    context_stack,
    resize_image,
    resize_labels,
    resize_probabilities,
    to_working_coordinates,
    working_scale,
    working_shape,
)


def _checkpoint(tmp_path, working_size=None, channel_names=("image",), flips=None, context_slices=0,
                name="w.safetensors"):
    from napari_simseg.core.interaction.memory import input_channels
    from napari_simseg.core.network.checkpoint import CheckpointMeta, save_checkpoint
    from napari_simseg.core.network.model import ModelConfig, build_model

    torch.manual_seed(0)
    names = ["background", "a", "b"]
    cfg = ModelConfig(in_channels=input_channels("sim", 3, 3, context_slices, len(channel_names)), n_classes=3,
                      **TINY_MODEL)
    meta = CheckpointMeta(class_names=names, memory="sim", depth=3, click_radius=2, model=cfg.to_dict(),
                          channel_names=list(channel_names), working_size=working_size, flips=flips,
                          context_slices=context_slices)
    return save_checkpoint(tmp_path / name, build_model(cfg).eval(), meta)


def test_working_scale_only_shrinks_and_keeps_pixel_centres():
    assert working_scale((2048, 1024), 256) == 0.125
    assert working_scale((40, 60), 256) == 1.0 and working_scale((4000, 4000), None) == 1.0
    assert working_shape((2048, 1500), 0.125) == (256, 188)
    # pixel centres line up: the image's centre is the working grid's centre
    assert to_working_coordinates(1023.5, 749.5, 0.125) == (127.5, 93.25)
    assert to_working_coordinates(0.0, 0.0, 0.5) == (-0.25, -0.25)


def test_resizing_keeps_types_values_and_probabilities():
    labels = np.zeros((64, 64), np.uint8)
    labels[16:48, 20:40] = 2
    small = resize_labels(labels, (16, 16))
    assert small.dtype == np.uint8 and set(np.unique(small)) == {0, 2}  # never interpolated
    img = np.random.default_rng(0).normal(size=(2, 64, 64)).astype(np.float32)
    assert resize_image(img, (16, 16)).shape == (2, 16, 16)
    np.testing.assert_allclose(resize_image(np.ones((64, 64)), (16, 16)), 1.0)  # area average
    p = np.random.default_rng(1).random((3, 8, 8)).astype(np.float32)
    p /= p.sum(0)
    big = resize_probabilities(p, (32, 32))
    assert big.shape == (3, 32, 32)
    np.testing.assert_allclose(big.sum(0), 1.0, atol=1e-5)


def test_context_stack_of_channels_is_neighbour_major():
    vol = np.arange(2 * 4 * 3 * 3, dtype=np.float32).reshape(2, 4, 3, 3)  # (C, S, H, W)
    stack = context_stack(vol, 1, 1)
    assert stack.shape == (6, 3, 3)
    expected = [vol[0, 1], vol[1, 1], vol[0, 0], vol[1, 0], vol[0, 2], vol[1, 2]]
    for got, want in zip(stack, expected):
        np.testing.assert_array_equal(got, want)
    # one channel: the same as the (S, H, W) stack, the layout of older checkpoints
    np.testing.assert_array_equal(context_stack(vol[:1], [0, 3], 2), context_stack(vol[0], [0, 3], 2))


def test_session_works_on_the_working_grid_and_answers_on_the_image_grid(tmp_path):
    from napari_simseg.core.network.predictor import Predictor
    from napari_simseg.core.session.interactive import InteractiveSession

    pred = Predictor(_checkpoint(tmp_path, working_size=32), device="cpu", tta=False)
    image = np.random.default_rng(0).normal(size=(3, 128, 96)).astype(np.float32)
    seen = []
    real = pred.predict
    pred.predict = lambda x, state=None: (seen.append(x.shape), real(x, state))[1]
    session = InteractiveSession(image, pred)
    assert session.scale == 0.25 and session.work_shape == (32, 24)
    res = session.add_clicks(1, [(1, 100, 80), (2, 10.4, 3.6)])
    assert seen[-1][-2:] == (32, 24)  # the network ran on the shrunk slice
    assert res.labels.shape == (128, 96) and res.probabilities.shape == (3, 32, 24)
    assert res.labels[100, 80] == 1 and res.labels[10, 4] == 2  # clicks honoured on the image grid
    assert session.memory(1).shape == (32, 24)
    # the click was drawn on the working grid where it belongs
    clicks = session.memory(1).last.clicks
    assert clicks[1, 25, 20] == 1 and clicks[2, 2, 1] == 1
    assert session.predict_auto(2).shape == (128, 96)


def test_session_feeds_every_channel_and_refuses_a_missing_one(tmp_path):
    from napari_simseg.core.network.predictor import Predictor
    from napari_simseg.core.session.interactive import ImageError, InteractiveSession

    pred = Predictor(_checkpoint(tmp_path, channel_names=("T1", "T2"), context_slices=1), device="cpu")
    rng = np.random.default_rng(0)
    t1, t2 = rng.normal(size=(2, 4, 32, 40)).astype(np.float32) * [[[[1.0]]], [[[50.0]]]]
    seen = []
    real = pred.predict
    pred.predict = lambda x, state=None: (seen.append(np.array(x)), real(x, state))[1]
    session = InteractiveSession([t1, t2], pred)
    session.add_clicks(2, [(1, 10, 10)])
    x = seen[-1]
    assert x.shape[0] == pred.in_channels == 2 + 2 * 3 * 3 + 2 * 2
    # channels normalised each on its own, T2's 50x scale is gone
    np.testing.assert_allclose(x[0], session.volume[0, 2])
    np.testing.assert_allclose(x[1], session.volume[1, 2])
    assert abs(float(session.volume[1].std()) - 1.0) < 0.05
    np.testing.assert_allclose(x[-4], session.volume[0, 1])  # z-1 of channel T1, after the memory
    # a channel axis works the same
    stacked = InteractiveSession(np.stack([t1, t2], axis=-1), pred, channel_axis=-1)
    np.testing.assert_array_equal(stacked.volume, session.volume)
    with pytest.raises(ImageError, match=r"2 image channel\(s\) \['T1', 'T2'\], got 1"):
        InteractiveSession(t1, pred)
    with pytest.raises(ImageError, match="one shape"):
        InteractiveSession([t1, t2[:, :16]], pred)


def test_flip_averaging_uses_only_the_flips_the_network_was_trained_with(tmp_path):
    from napari_simseg.core.network.predictor import Predictor

    none = Predictor(_checkpoint(tmp_path, flips=[], name="a.safetensors"), device="cpu")
    assert not none.tta and none.model is none.network
    vertical = Predictor(_checkpoint(tmp_path, flips=["vertical"], name="b.safetensors"), device="cpu")
    assert vertical.tta and [f.axes for f in vertical.model.flips] == [(), (-2,)]
    both = Predictor(_checkpoint(tmp_path, name="c.safetensors"), device="cpu")
    assert [f.axes for f in both.model.flips] == [(), (-1,), (-2,), (-2, -1)]


def test_checkpoint_format_4_only_when_its_fields_are_used(tmp_path):
    import json

    from safetensors import safe_open

    def header(path):
        with safe_open(str(path), framework="pt") as f:
            return json.loads(f.metadata()["simseg"])

    old = header(_checkpoint(tmp_path, name="old.safetensors"))
    assert old["format_version"] == 1 and "working_size" not in old and "channel_names" not in old
    new = header(_checkpoint(tmp_path, working_size=64, channel_names=("T1", "T2"), flips=[], name="new.safetensors"))
    assert new["format_version"] == 4
    assert new["working_size"] == 64 and new["channel_names"] == ["T1", "T2"] and new["flips"] == []


def test_evaluation_scores_on_the_image_grid(tmp_path):
    from napari_simseg.core.io.images import write_image
    from napari_simseg.core.jobs.evaluation import evaluate

    rng = np.random.default_rng(0)
    (tmp_path / "d" / "images").mkdir(parents=True)
    (tmp_path / "d" / "labels").mkdir()
    for i in range(2):
        labels = np.zeros((2, 96, 80), np.uint8)
        labels[:, 20:60, 10:40] = 1
        labels[:, 70:90, 50:75] = 2
        image = rng.normal(size=labels.shape).astype(np.float32) + 3 * labels
        write_image(tmp_path / "d" / "images" / f"c{i}.nii.gz", image)
        write_image(tmp_path / "d" / "labels" / f"c{i}.nii.gz", labels)
    (tmp_path / "d" / "classes.json").write_text('["background", "a", "b"]')
    ck = _checkpoint(tmp_path, working_size=24)
    res = evaluate(ck, tmp_path / "d", split="all", clicks=(0, 2), device="cpu", progress=False)
    assert res["n_volumes"] == 2 and [r["clicks"] for r in res["results"]] == [0, 2]
    # honoured clicks on the image grid make 2 clicks better than none even for a random network
    assert res["results"][1]["dice"]["a"] > res["results"][0]["dice"]["a"] - 1e-9
