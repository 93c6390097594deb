import numpy as np
import pytest
import torch

from conftest import TINY_MODEL
from napari_simseg.core.network.model import ModelConfig, ModelConfigError, build_model


def tiny(decoder="convlstm", c=7, n=3, **kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(in_channels=c, n_classes=n, decoder=decoder, **{**TINY_MODEL, **kw})).eval()


@pytest.mark.parametrize("decoder", ["convlstm", "plain"])
@pytest.mark.parametrize("hw", [(37, 53), (32, 32), (8, 9)])
def test_any_size_and_channels(decoder, hw):
    m = tiny(decoder, c=13, n=4)
    x = torch.randn(2, 13, *hw)
    with torch.no_grad():
        logits, state = m(x)
    assert logits.shape == (2, 4, *hw)
    assert (state is None) == (decoder == "plain")


def test_default_is_resnet34_convlstm_without_download():
    cfg = ModelConfig(in_channels=19, n_classes=3)
    assert cfg.encoder == "resnet34" and cfg.decoder == "convlstm" and cfg.encoder_weights is None
    m = build_model(cfg)
    assert sum(p.numel() for p in m.encoder.parameters()) > 20e6  # a real ResNet34
    assert all(hasattr(s, "lstm") for s in m.stages)


def test_recurrent_state_changes_output_and_resets():
    m = tiny()
    x = torch.randn(1, 7, 32, 40)
    with torch.no_grad():
        first, s1 = m(x)
        second, s2 = m(x, s1)  # same input, next step: the hidden state must matter
        fresh, _ = m(x)  # reset = no state
    assert not torch.allclose(first, second, atol=1e-5)
    torch.testing.assert_close(first, fresh)
    assert len(s1) == len(m.stages) and s1[-1][0].shape[-2:] == (32, 40)


def test_plain_decoder_is_stateless():
    m = tiny("plain")
    x = torch.randn(1, 7, 32, 32)
    with torch.no_grad():
        a, s = m(x)
        b, _ = m(x, s)
    torch.testing.assert_close(a, b)


def test_wrong_input_channels_is_clear():
    m = tiny()
    with pytest.raises(ValueError, match=r"expected input \(B, 7, H, W\)"):
        m(torch.randn(1, 5, 32, 32))


def test_config_errors_are_actionable(tmp_path):
    with pytest.raises(ModelConfigError, match="unknown decoder 'gru'"):
        build_model(ModelConfig(in_channels=3, n_classes=2, decoder="gru"))
    with pytest.raises(ModelConfigError, match="unknown smp encoder 'resnet35'"):
        build_model(ModelConfig(in_channels=3, n_classes=2, encoder="resnet35"))
    with pytest.raises(ModelConfigError, match="never downloads"):
        build_model(ModelConfig(in_channels=3, n_classes=2, encoder_weights="imagenet"))
    with pytest.raises(ModelConfigError, match="decoder_channels needs 3"):
        build_model(ModelConfig(in_channels=3, n_classes=2, encoder_depth=3))


def test_local_encoder_weights_are_loaded_and_channel_adapted(tmp_path):
    from segmentation_models_pytorch.encoders import get_encoder

    torch.manual_seed(1)
    src = get_encoder("resnet18", in_channels=3, depth=3, weights=None)
    path = tmp_path / "enc.pth"
    torch.save(src.state_dict(), path)
    m = build_model(ModelConfig(in_channels=5, n_classes=2, encoder_weights=str(path), **TINY_MODEL))
    torch.testing.assert_close(m.encoder.layer1[0].conv1.weight, src.layer1[0].conv1.weight)
    w = m.encoder.conv1.weight
    assert w.shape[1] == 5
    torch.testing.assert_close(w[:, 0], src.conv1.weight.mean(1) * 3 / 5)


def test_internal_padding_is_centred_like_the_trainers():
    """A slice must sit where training put it (core.imaging.preprocessing pads slices centred)."""
    from napari_simseg.core.imaging.preprocessing import pad_to_multiple

    m = tiny("plain", c=3)
    x = torch.randn(1, 3, 20, 27)
    padded, box = pad_to_multiple(x[0].numpy(), multiple=m.stride)  # 24 x 32 for stride 8
    with torch.no_grad():
        direct, _ = m(x)
        via_padding, _ = m(torch.from_numpy(np.ascontiguousarray(padded))[None])
    y0, y1, x0, x1 = box
    torch.testing.assert_close(direct, via_padding[..., y0:y1, x0:x1])


@pytest.mark.parametrize("hw", [(37, 53), (35, 50), (8, 9)])
def test_stem_stride_one_keeps_full_resolution_and_parameters(hw):
    coarse, fine = tiny(), tiny(encoder_stem_stride=1)
    # same parameter names and shapes: weights move between the two settings
    a, b = coarse.state_dict(), fine.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    fine.load_state_dict(a)
    x = torch.randn(2, 7, *hw)
    with torch.no_grad():
        feats = fine.encoder(torch.nn.functional.pad(x, (0, (-hw[1]) % fine.stride, 0, (-hw[0]) % fine.stride)))
        logits, state = fine(x)
        coarse_logits, _ = coarse(x)
    assert feats[1].shape[-2:] == feats[0].shape[-2:]  # the stem no longer halves
    assert fine.stride == coarse.stride // 2
    padded = tuple(n + (-n) % fine.stride for n in hw)
    assert logits.shape == (2, 3, *hw) and tuple(state[-1][0].shape[-2:]) == padded
    # same weights, different network: the option must change what is computed
    assert not torch.allclose(logits, coarse_logits, atol=1e-4)


def test_stem_stride_config_errors():
    with pytest.raises(ModelConfigError, match="encoder_stem_stride must be 1 or 2"):
        tiny(encoder_stem_stride=4)
    from napari_simseg.core.network.model import _unstride_stem

    stem = torch.nn.Sequential(torch.nn.Conv2d(7, 8, 3, stride=1))
    with pytest.raises(ModelConfigError, match="first convolution has stride 2"):
        _unstride_stem(stem, ModelConfig(in_channels=7, n_classes=3))


def test_stem_stride_round_trips_through_checkpoints(tmp_path):
    from napari_simseg.core.network.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint

    m = tiny(encoder_stem_stride=1)
    meta = CheckpointMeta(class_names=["background", "a", "b"], memory="sim", depth=1, click_radius=1,
                          model=m.config.to_dict())
    save_checkpoint(tmp_path / "m.safetensors", m, meta)
    back = load_checkpoint(tmp_path / "m.safetensors").model.eval()
    assert back.config.encoder_stem_stride == 1
    x = torch.randn(1, 7, 30, 33)
    with torch.no_grad():
        torch.testing.assert_close(back(x)[0], m(x)[0])
    # checkpoints written before the option existed load as stride 2
    old = {k: v for k, v in m.config.to_dict().items() if k != "encoder_stem_stride"}
    assert ModelConfig.from_dict(old).encoder_stem_stride == 2


def test_the_memory_estimate_runs_on_the_networks_own_device():
    """``activation_floats_per_pixel`` probes the network with an input on its own device
    (a CUDA network probed with a CPU tensor fails): here the meta device stands in."""
    import copy

    from conftest import tiny_meta_and_model

    _, net = tiny_meta_and_model()
    on_cpu = net.activation_floats_per_pixel()
    elsewhere = copy.deepcopy(net)
    elsewhere._floats_per_pixel = None
    elsewhere = elsewhere.to("meta")
    assert elsewhere.activation_floats_per_pixel() == on_cpu > 0
