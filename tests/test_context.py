"""2.5D context: neighbouring slices as extra input channels (``context_slices``)."""

import json

import numpy as np
import pytest
import torch

from conftest import tiny_meta_and_model
from napari_simseg.core.data.augmentation import Augmenter
from napari_simseg.core.data.datasets import discover_dataset
from napari_simseg.core.data.slices import SliceDataset, SliceOptions
from napari_simseg.core.engine.rounds import BatchMemory
from napari_simseg.core.imaging.preprocessing import context_stack
from napari_simseg.core.interaction.memory import InteractionMemory, input_channels
from napari_simseg.core.network.checkpoint import CheckpointError, CheckpointMeta, load_checkpoint


def test_channel_count_adds_two_per_context_slice():
    assert input_channels("sim", 3, 3, 0) == 19
    assert input_channels("sim", 3, 3, 2) == 23
    assert input_channels("cim", 4, 1, 1) == 7
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="context_slices"):
            input_channels("sim", 3, 3, bad)


def test_context_stack_orders_neighbours_and_repeats_the_ends():
    vol = np.arange(5)[:, None, None] * np.ones((5, 2, 3))
    got = context_stack(vol, 2, 2)
    assert got.shape == (5, 2, 3)
    assert got[:, 0, 0].tolist() == [2, 1, 3, 0, 4]  # slice, z-1, z+1, z-2, z+2
    assert context_stack(vol, 0, 2)[:, 0, 0].tolist() == [0, 0, 1, 0, 2]
    assert context_stack(vol, 4, 1)[:, 0, 0].tolist() == [4, 3, 4]
    many = context_stack(vol, [0, 3], 1)
    assert many.shape == (2, 3, 2, 3) and many[1, :, 0, 0].tolist() == [3, 2, 4]
    assert context_stack(vol, 1, 0).shape == (1, 2, 3)
    with pytest.raises(IndexError):
        context_stack(vol, 5, 1)
    with pytest.raises(ValueError, match=r"\(S, H, W\)"):
        context_stack(vol[0], 0, 1)


def test_memory_puts_the_slice_first_and_neighbours_last():
    n, h, w = 3, 6, 7
    rng = np.random.default_rng(0)
    stack = rng.normal(size=(5, h, w)).astype(np.float32)
    mem = InteractionMemory("sim", n, (h, w), depth=2, context_slices=2)
    plain = InteractionMemory("sim", n, (h, w), depth=2)
    for _r in range(3):
        clicks = (rng.random((n, h, w)) > 0.8).astype(np.float32)
        mem.push(clicks)
        plain.push(clicks)
        x, x0 = mem.network_input(stack), plain.network_input(stack[0])
        assert x.shape == (1 + 2 * 2 * n + 4, h, w)
        np.testing.assert_array_equal(x[: x0.shape[0]], x0)  # the 2D layout is unchanged
        np.testing.assert_array_equal(x[x0.shape[0]:], stack[1:])
        probs = rng.random((n, h, w)).astype(np.float32)
        mem.set_probabilities(probs)
        plain.set_probabilities(probs)
    with pytest.raises(ValueError, match=r"\(5, 6, 7\)"):
        mem.network_input(stack[0])  # the neighbours are required


@pytest.mark.parametrize("kind,depth", [("none", 1), ("cim", 1), ("sim", 3)])
def test_batch_memory_matches_interaction_memory_with_context(kind, depth):
    rng = np.random.default_rng(1)
    n, h, w, k = 3, 8, 9, 1
    img = rng.normal(size=(2, 1 + 2 * k, h, w)).astype(np.float32)
    bm = BatchMemory(kind, n, depth, torch.from_numpy(img))
    ims = [InteractionMemory(kind, n, (h, w), depth, context_slices=k) for _ in range(2)]
    for r in range(4):
        clicks = (rng.random((2, n, h, w)) > 0.9).astype(np.float32)
        bm.push(torch.from_numpy(clicks))
        for i in range(2):
            ims[i].push(clicks[i])
        got = bm.network_input().numpy()
        for i in range(2):
            np.testing.assert_array_equal(got[i], ims[i].network_input(img[i]), err_msg=f"{kind} round {r}")
        probs = rng.random((2, n, h, w)).astype(np.float32)
        bm.set_probabilities(torch.from_numpy(probs))
        for i in range(2):
            ims[i].set_probabilities(probs[i])
    with pytest.raises(ValueError, match="1 \\+ 2k"):
        BatchMemory(kind, n, depth, torch.zeros(2, 2, h, w))


def test_augmenter_treats_every_channel_like_the_slice():
    rng = np.random.default_rng(2)
    stack = rng.normal(size=(3, 20, 24)).astype(np.float32)
    labels = (rng.random((20, 24)) > 0.5).astype(np.uint8)
    # every augmentation fires; gamma rescales with the whole stack's range (one intensity
    # mapping for all channels), so it is compared separately below
    aug = Augmenter(p=1.0, gamma=None)
    for seed in range(4):
        a, la = aug(stack, labels, np.random.default_rng(seed))
        for c in range(3):
            b, lb = aug(stack[c], labels, np.random.default_rng(seed))
            np.testing.assert_allclose(a[c], b, rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(la, lb)
    gamma_only = Augmenter(p=1.0, brightness=0, blur_sigma=None, unsharp_amount=None, flip_vertical=False,
                           flip_horizontal=False)
    same = np.stack([stack[0], stack[0], stack[0]])
    out, _ = gamma_only(same, None, np.random.default_rng(0))
    assert not np.allclose(out[0], stack[0])
    np.testing.assert_array_equal(out[1], out[0])
    np.testing.assert_array_equal(out[2], out[0])


def test_slice_dataset_stacks_neighbours(tmp_path):
    from napari_simseg.core.data.phantom import make_phantom_dataset

    make_phantom_dataset(tmp_path, n_volumes=2, seed=1, shape=(5, 34, 36))
    spec = discover_dataset(tmp_path)
    aug = Augmenter(gamma=None)  # gamma uses the stack's range (see above)
    flat = SliceDataset(spec, options=SliceOptions(target_shape=(64, 64), augmenter=aug, seed=3))
    ctx = SliceDataset(spec, options=SliceOptions(target_shape=(64, 64), augmenter=aug, seed=3,
                                                 context_slices=1))
    assert len(ctx) == len(flat)
    for i in (0, 3, 4, 7):
        a, b = flat[i], ctx[i]
        assert b["image"].shape == (3, 64, 64)
        # same augmentation draws: channel 0 is the 2D item, the labels are the same
        torch.testing.assert_close(b["image"][0], a["image"][0], rtol=1e-5, atol=1e-5)
        assert torch.equal(a["labels"], b["labels"])
    raw = SliceDataset(spec, options=SliceOptions(target_shape=(64, 64), context_slices=1))
    case_id, k = raw.index[2]
    vol = raw.volume(case_id).image[0]  # (C, S, H, W) with one channel
    y0, y1, x0, x1 = raw[2]["crop"].tolist()
    np.testing.assert_array_equal(raw[2]["image"][:, y0:y1, x0:x1].numpy(), vol[[k, k - 1, k + 1]])
    with pytest.raises(ValueError, match="context_slices"):
        SliceDataset(spec, options=SliceOptions(context_slices=-1))


def test_checkpoint_records_context_and_old_headers_read_as_2d(tmp_path):
    from napari_simseg.core.network.checkpoint import save_checkpoint

    meta, model = tiny_meta_and_model(context_slices=1)
    path = save_checkpoint(tmp_path / "ctx.safetensors", model, meta)
    ck = load_checkpoint(path)
    assert ck.meta.context_slices == 1 and ck.model.config.in_channels == input_channels("sim", 3, 3, 1)
    raw = json.loads(json.dumps(meta.__dict__))
    raw.pop("context_slices")
    raw["model"] = tiny_meta_and_model()[0].model
    assert CheckpointMeta(**raw).validate().context_slices == 0
    # a header claiming context without the matching first layer is refused
    bad = CheckpointMeta(**{**raw, "context_slices": 2})
    with pytest.raises(CheckpointError, match="2 context slices"):
        bad.validate()


def test_session_feeds_the_neighbours_of_the_clicked_slice(small_volume, tmp_path, monkeypatch):
    from napari_simseg.core.network.checkpoint import save_checkpoint
    from napari_simseg.core.network.predictor import Predictor
    from napari_simseg.core.session.interactive import InteractiveSession

    meta, model = tiny_meta_and_model(context_slices=1)
    pred = Predictor(save_checkpoint(tmp_path / "ctx.safetensors", model, meta), device="cpu")
    session = InteractiveSession(small_volume, pred)
    seen = []
    real = pred.predict
    monkeypatch.setattr(pred, "predict", lambda x, state=None: (seen.append(np.array(x)), real(x, state))[1])
    res = session.add_clicks(3, [(1, 15, 20)])
    assert res.labels.shape == small_volume.shape[1:]
    x = seen[-1]
    assert x.shape[0] == pred.in_channels
    volume = session.volume[0]  # the one channel, (Z, H, W)
    np.testing.assert_array_equal(x[0], volume[3])
    np.testing.assert_array_equal(x[-2], volume[2])
    np.testing.assert_array_equal(x[-1], volume[3])  # last slice: z+1 repeats it
    session.predict_auto(0)
    np.testing.assert_array_equal(seen[-1][0, -2:], volume[[0, 1]])


def test_init_from_widens_a_2d_network_into_the_same_function(tmp_path):
    from napari_simseg.core.jobs.training_setup import init_from
    from napari_simseg.core.network.checkpoint import save_checkpoint
    from napari_simseg.core.network.model import build_model

    meta, model = tiny_meta_and_model()
    path = save_checkpoint(tmp_path / "flat.safetensors", model, meta)
    cfg = {**meta.model, "in_channels": input_channels("sim", 3, 3, 2)}
    from napari_simseg.core.network.model import ModelConfig

    net = build_model(ModelConfig.from_dict(cfg)).eval()
    init_from(net, path, meta.class_names, context_slices=2)
    x = torch.randn(2, meta.model["in_channels"], 32, 40)
    with torch.no_grad():
        want, _ = load_checkpoint(path).model.eval()(x)
        got, _ = net(torch.cat([x, torch.randn(2, 4, 32, 40)], 1))
    torch.testing.assert_close(got, want)
    # a 2.5D checkpoint cannot seed a 2D network
    wide = save_checkpoint(tmp_path / "wide.safetensors", net, CheckpointMeta(**{**meta.__dict__, "context_slices": 2}))
    flat = build_model(ModelConfig.from_dict(meta.model))
    with pytest.raises(CheckpointError, match="context_slices 2"):
        init_from(flat, wide, meta.class_names, context_slices=0)


def test_train_and_evaluate_a_context_network_end_to_end(tmp_path):
    from napari_simseg.core.data.phantom import make_phantom_dataset
    from napari_simseg.core.jobs.evaluation import evaluate
    from napari_simseg.core.jobs.training import TrainConfig, train

    data = tmp_path / "data"
    make_phantom_dataset(data, n_volumes=3, seed=2, shape=(6, 40, 44))
    tiny = dict(encoder="resnet18", encoder_depth=3, decoder_channels=[16, 8, 8], batch_size=4, device="cpu",
                progress=False, val_clicks=1, val_batch_size=16, epochs=1, steps_per_epoch=2)
    flat = train(TrainConfig(data=str(data), out=str(tmp_path / "flat"), **tiny), log=lambda m: None)
    best = train(TrainConfig(data=str(data), out=str(tmp_path / "ctx"), context_slices=1, init_from=str(flat),
                             **tiny), log=lambda m: None)
    ck = load_checkpoint(best)
    assert ck.meta.context_slices == 1
    assert ck.model.config.in_channels == load_checkpoint(flat).model.config.in_channels + 2
    res = evaluate(best, data, clicks=[0, 2], noc_clicks=0, device="cpu", progress=False)
    assert [r["clicks"] for r in res["results"]] == [0, 2]
    assert all(0.0 <= v <= 1.0 for r in res["results"] for v in r["dice"].values() if v is not None)
    with pytest.raises(ValueError, match="context_slices"):
        TrainConfig(data="d", out="o", context_slices=-1).validate()


def test_header_keeps_2d_checkpoints_at_version_1_and_marks_context_as_2(tmp_path):
    from safetensors import safe_open

    from napari_simseg.core.network.checkpoint import save_checkpoint

    def header(path):
        with safe_open(str(path), "pt") as f:
            return json.loads(f.metadata()["simseg"])

    flat = save_checkpoint(tmp_path / "flat.safetensors", *reversed(tiny_meta_and_model()))
    wide = save_checkpoint(tmp_path / "wide.safetensors", *reversed(tiny_meta_and_model(context_slices=1)))
    # a version without context_slices reads 2D checkpoints; it refuses 2.5D ones as newer
    assert "context_slices" not in header(flat) and header(flat)["format_version"] == 1
    assert header(wide)["context_slices"] == 1 and header(wide)["format_version"] == 2
    assert load_checkpoint(wide).meta.context_slices == 1 and load_checkpoint(flat).meta.context_slices == 0


def test_context_stack_refuses_float_indices():
    with pytest.raises(IndexError, match="integers"):
        context_stack(np.zeros((3, 4, 4)), 1.5, 1)


def test_init_from_a_checkpoint_of_other_classes_names_init_transfer(tmp_path):
    from napari_simseg.core.jobs.training_setup import init_from
    from napari_simseg.core.network.checkpoint import save_checkpoint
    from napari_simseg.core.network.model import ModelConfig, build_model

    meta, model = tiny_meta_and_model()
    path = save_checkpoint(tmp_path / "other.safetensors", model, meta)
    net = build_model(ModelConfig.from_dict(meta.model))
    others = [*meta.class_names[:-1], "not_" + meta.class_names[-1]]
    with pytest.raises(CheckpointError, match="trained for classes .*--init-transfer"):
        init_from(net, path, others, context_slices=0)
