"""Multi-channel images in napari: a network reading two channels (T1, T2), fed from two
image layers or from one layer with the channels along its first axis (issue 16, point 2)."""

from __future__ import annotations

import numpy as np
import pytest

# Load torch's native stack before the first canvas (see napari_simseg._llvm_guard).
import segmentation_models_pytorch  # noqa: F401, E402

pytestmark = pytest.mark.gui

CHANNELS = ("T1", "T2")


@pytest.fixture
def two_channel_checkpoint(tmp_path):
    import torch

    from conftest import TINY_MODEL
    from napari_simseg.core.interaction.memory import input_channels
    from napari_simseg.core.network.checkpoint import CheckpointMeta, save_checkpoint
    from napari_simseg.core.network.model import ModelConfig, build_model

    torch.manual_seed(1)
    cfg = ModelConfig(in_channels=input_channels("sim", 3, 3, 0, 2), n_classes=3, **TINY_MODEL)
    meta = CheckpointMeta(class_names=["background", "a", "b"], memory="sim", depth=3, click_radius=2,
                          model=cfg.to_dict(), channel_names=list(CHANNELS))
    return save_checkpoint(tmp_path / "t1t2.safetensors", build_model(cfg).eval(), meta)


@pytest.fixture
def channels():
    rng = np.random.default_rng(0)
    t1 = rng.normal(100, 20, size=(4, 40, 48)).astype(np.float32)
    t2 = rng.normal(5000, 900, size=(4, 40, 48)).astype(np.float32)
    return t1, t2


def test_console_session_finds_the_channel_layers_by_name(make_napari_viewer, two_channel_checkpoint, channels):
    from napari_simseg import ViewerSession
    from napari_simseg.core.session.interactive import ImageError

    viewer = make_napari_viewer()
    viewer.add_image(channels[1], name="case7 T2")
    viewer.add_image(channels[0], name="case7 t1")
    s = ViewerSession(viewer, checkpoint=two_channel_checkpoint, device="cpu")
    assert s.image_layer.name == "case7 t1"  # the first channel's layer gives the geometry
    vol = s.session.volume
    assert vol.shape == (2, 4, 40, 48)
    # each channel normalised on its own, T1 first: T2's scale of thousands is gone
    np.testing.assert_allclose([vol[0].mean(), vol[1].mean()], 0, atol=1e-3)
    assert np.corrcoef(vol[0].ravel(), channels[0].ravel())[0, 1] > 0.99
    result = s.add_clicks(2, [(1, 20, 20)])
    assert result.labels.shape == (40, 48) and s.labels.shape == (4, 40, 48)
    s.close()
    # the wrong number of layers is refused with what to give
    with pytest.raises(ImageError, match=r"reads 2 channel\(s\) \(T1, T2\); 1 image layer"):
        ViewerSession(viewer, image_layer=["case7 t1"], checkpoint=two_channel_checkpoint, device="cpu")


def test_console_session_takes_one_layer_with_a_channel_axis(make_napari_viewer, two_channel_checkpoint, channels):
    from napari_simseg import ViewerSession
    from napari_simseg.core.session.interactive import ImageError

    viewer = make_napari_viewer()
    both = viewer.add_image(np.stack(channels), name="stack")
    s = ViewerSession(viewer, image_layer=both, checkpoint=two_channel_checkpoint, device="cpu")
    np.testing.assert_allclose(s.session.volume[1].std(), 1.0, atol=0.05)
    s.close()
    moved = viewer.add_image(np.stack(channels, axis=-1), name="channels last")
    s = ViewerSession(viewer, image_layer=moved, channel_axis=-1, checkpoint=two_channel_checkpoint, device="cpu")
    assert s.session.volume.shape == (2, 4, 40, 48)
    s.close()
    with pytest.raises(ImageError, match="give one image layer per channel"):
        ViewerSession(viewer, image_layer=viewer.add_image(channels[0], name="alone"),
                      checkpoint=two_channel_checkpoint, device="cpu")


def test_widget_asks_one_layer_per_channel_and_segments_a_two_channel_image(make_napari_viewer, qtbot,
                                                                           two_channel_checkpoint, channels):
    viewer = make_napari_viewer()
    viewer.add_image(channels[0], name="T1")
    viewer.add_image(channels[1], name="T2")
    viewer.add_image(np.zeros((4, 40, 48), np.float32) + 3, name="other")
    _, widget = viewer.window.add_plugin_dock_widget("napari-simseg", "SimSeg")
    try:
        widget.set_checkpoint(two_channel_checkpoint)
        widget.device_combo.setCurrentText("cpu")
        combos = widget.image_picker.channel_combos
        assert [c.currentText() for c in combos] == ["T1", "T2"]  # preselected by name
        combos[1].setCurrentText("other")  # the user picks another layer for T2 ...
        combos[1].setCurrentText("T2")  # ... and back
        assert widget.start(wait=True), widget.status_label.text()
        session = widget.session
        assert session.session.volume.shape == (2, 4, 40, 48)
        viewer.dims.set_current_step(0, 1)
        with qtbot.waitSignal(widget.round_finished, timeout=60_000):
            session.click_layers[1].add([[1, 20, 24]])
        assert session.labels[1, 20, 24] == 1  # the clicked pixel shows its class
        # back to a one-channel checkpoint: the channel boxes go
        widget.set_checkpoint("demo")
        assert widget.image_picker.channel_combos == []
    finally:
        widget.shutdown()


def test_a_saved_multichannel_session_loads_with_every_channel(make_napari_viewer, two_channel_checkpoint, channels,
                                                               tmp_path):
    from napari_simseg import ViewerSession

    viewer = make_napari_viewer()
    viewer.add_image(channels[0], name="T1")
    viewer.add_image(channels[1], name="T2")
    s = ViewerSession(viewer, checkpoint=two_channel_checkpoint, device="cpu")
    s.add_clicks(1, [(1, 20, 20)])
    shown = s.labels
    labels_path, _ = s.save(tmp_path / "case.nii.gz")
    s.reset(1)
    assert "replayed 1 logged actions" in s.load(labels_path)  # the replay runs the network on both channels
    assert s.session.volume.shape == (2, 4, 40, 48) and s.session.n_rounds(1) == 1
    np.testing.assert_array_equal(s.labels, shown)
    s.close()
