"""Padding of images: training items and the network's own padding agree (``pad_mode``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_simseg.core.engine.train_config import TrainConfig
from napari_simseg.core.imaging.preprocessing import pad_to_multiple
from napari_simseg.core.network.model import ModelConfig, ModelConfigError, build_model

TINY = dict(encoder="resnet18", encoder_depth=3, decoder_channels=(16, 8, 8))


def test_edge_padding_repeats_the_border_and_constant_fills():
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    edge, box = pad_to_multiple(image, target=(7, 6), mode="edge")
    np.testing.assert_array_equal(box.crop(edge), image)
    np.testing.assert_array_equal(edge[0, 1:5], image[0])  # the first row repeated above
    np.testing.assert_array_equal(edge[-1, 1:5], image[-1])
    np.testing.assert_array_equal(edge[2:5, 0], image[:, 0])
    constant, _ = pad_to_multiple(image, target=(7, 6), value=-1.0)
    assert constant[0, 0] == -1.0 and np.count_nonzero(constant == -1.0) == 7 * 6 - 12
    with pytest.raises(ValueError, match="pad mode"):
        pad_to_multiple(image, target=(7, 6), mode="reflect")


def test_train_config_marks_the_image_channels_context_included():
    cfg = TrainConfig(data="d", out="o", memory="sim", depth=2, context_slices=1).validate()
    mc = cfg.model_config(n_classes=3, n_channels=2)
    # 2 image channels first, 2 x 2 x 3 memory channels, 2 x 1 x 2 context channels last
    assert mc.in_channels == 2 + 12 + 4
    assert list(mc.edge_padded_channels) == [0, 1, 14, 15, 16, 17]
    assert TrainConfig(data="d", out="o", pad_mode="constant").validate().model_config(3).edge_padded_channels is None
    with pytest.raises(ValueError, match="pad_mode"):
        TrainConfig(data="d", out="o", pad_mode="mirror").validate()


def test_the_network_pads_image_channels_by_their_edge_and_the_rest_with_zeros():
    torch.manual_seed(0)
    config = ModelConfig(in_channels=4, n_classes=2, edge_padded_channels=(0, 3), **TINY)
    net = build_model(config).eval()
    x = torch.randn(1, 4, 13, 10)  # stride 8 (depth 3): padded to 16 x 16, centred
    pad = (3, 3, 1, 2)
    explicit = torch.nn.functional.pad(x, pad)
    explicit[:, [0, 3]] = torch.nn.functional.pad(x[:, [0, 3]], pad, mode="replicate")
    with torch.no_grad():
        out, _ = net(x)
        ref, _ = net(explicit)
        zeros, _ = net(torch.nn.functional.pad(x, pad))
    torch.testing.assert_close(out, ref[..., 1:14, 3:13])
    assert not torch.allclose(out, zeros[..., 1:14, 3:13])  # the mode changes what the network sees
    # a network of the checkpoints made before the option pads every channel with zeros
    old = build_model(ModelConfig(in_channels=4, n_classes=2, **TINY)).eval()
    old.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(old(x)[0], zeros[..., 1:14, 3:13])


def test_the_header_keeps_the_padding_and_older_headers_load():
    config = ModelConfig(in_channels=4, n_classes=2, edge_padded_channels=(0, 3), **TINY)
    d = config.to_dict()
    assert d["edge_padded_channels"] == [0, 3]
    assert ModelConfig.from_dict(d).edge_padded_channels == (0, 3)
    older = ModelConfig(in_channels=4, n_classes=2, **TINY).to_dict()
    assert "edge_padded_channels" not in older  # headers as before the option
    assert ModelConfig.from_dict(older).edge_padded_channels is None
    with pytest.raises(ModelConfigError, match="edge_padded_channels"):
        ModelConfig(in_channels=4, n_classes=2, edge_padded_channels=(0, 4), **TINY).validate()


def test_training_items_are_padded_as_the_config_says():
    from napari_simseg.core.data.slices import SliceDataset, SliceOptions

    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 2, 20, 27)).astype(np.float32)
    image[..., :, :3] = -2.0  # "air" at the left border
    labels = np.zeros((2, 20, 27), np.uint8)
    labels[:, 5:10, 8:15] = 1
    for mode in ("edge", "constant"):
        ds = SliceDataset.from_arrays({"c": image}, {"c": labels}, ["background", "a"], SliceOptions(pad_mode=mode))
        item = ds[0]
        x = item["image"].numpy()[0]
        y0, y1, x0, x1 = item["crop"].tolist()
        assert x.shape == (32, 32) and (y1 - y0, x1 - x0) == (20, 27)
        np.testing.assert_array_equal(x[y0:y1, x0:x1], image[0, item["slice_index"]])
        left = x[y0:y1, :x0]
        assert np.all(left == -2.0) if mode == "edge" else np.all(left == 0.0)


def test_a_fine_tune_keeps_its_base_padding_and_a_transfer_takes_the_default(make_checkpoint):
    from napari_simseg.core.io.resources import DEMO_CHECKPOINT
    from napari_simseg.core.jobs.teach_worker import teaching_options
    from napari_simseg.core.network.checkpoint import read_checkpoint_meta

    classes = ("background", "a", "b")
    base = read_checkpoint_meta(make_checkpoint(class_names=classes))  # made as before: no edge channels
    assert teaching_options(classes, ["image"], [(8, 40, 48)], 3.0, "finetune", base)["pad_mode"] == "constant"
    demo = read_checkpoint_meta(DEMO_CHECKPOINT)
    moved = teaching_options(("background", "liver"), ["image"], [(244, 202)], 3.0, "transfer", demo)
    assert moved.get("pad_mode", TrainConfig.pad_mode) == "edge"


def test_a_checkpoint_keeps_its_edge_padded_channels(tmp_path):
    from napari_simseg.core.network.checkpoint import (
        CheckpointMeta,
        load_checkpoint,
        read_checkpoint_meta,
        save_checkpoint,
    )

    cfg = TrainConfig(data="d", out="o", memory="sim", depth=1, context_slices=1, encoder="resnet18",
                      encoder_depth=3, decoder_channels=[16, 8, 8]).validate()
    net = build_model(cfg.model_config(n_classes=2)).eval()
    meta = CheckpointMeta(class_names=["background", "a"], memory="sim", depth=1, click_radius=1,
                          model=net.config.to_dict(), context_slices=1)
    path = save_checkpoint(tmp_path / "edge.safetensors", net, meta)
    assert read_checkpoint_meta(path).model["edge_padded_channels"] == [0, 5, 6]
    loaded = load_checkpoint(path).model
    assert loaded.config.edge_padded_channels == (0, 5, 6)
    x = torch.randn(1, 7, 13, 10)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], net(x)[0])


def test_a_smaller_input_is_padded_to_the_training_canvas():
    torch.manual_seed(0)
    net = build_model(ModelConfig(in_channels=2, n_classes=2, canvas=(32, 40), **TINY)).eval()
    plain = build_model(ModelConfig(in_channels=2, n_classes=2, **TINY)).eval()
    plain.load_state_dict(net.state_dict())
    x = torch.randn(1, 2, 13, 50)
    with torch.no_grad():
        out, _ = net(x)
        # centred in 32 rows (the canvas) and 56 columns (50 is wider than the canvas: the stride, 8)
        ref, _ = plain(torch.nn.functional.pad(x, (3, 3, 9, 10)))
        stride_only, _ = plain(x)
    assert out.shape[-2:] == (13, 50)
    torch.testing.assert_close(out, ref[..., 9:22, 3:53])
    assert not torch.allclose(out, stride_only)
    assert ModelConfig.from_dict(net.config.to_dict()).canvas == (32, 40)
    assert "canvas" not in plain.config.to_dict()
    with pytest.raises(ModelConfigError, match="canvas"):
        ModelConfig(in_channels=2, n_classes=2, canvas=(32,), **TINY).validate()


def test_the_bundled_model_runs_in_the_canvas_it_was_trained_in():
    from napari_simseg.core.io.resources import DEMO_CHECKPOINT
    from napari_simseg.core.network.checkpoint import read_checkpoint_meta

    meta = read_checkpoint_meta(DEMO_CHECKPOINT)
    assert meta.model["canvas"] == [64, 64] and "edge_padded_channels" not in meta.model
