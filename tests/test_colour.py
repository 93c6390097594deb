"""True-colour pictures (dermoscopy, endoscopy, fundus...) as three channels, red, green and
blue, from the folder to a trained network, ``simseg evaluate`` and a napari session on an
RGB layer; grey radiographs saved as RGB stay one channel."""

from __future__ import annotations

import json

import numpy as np
import pytest

# Load torch's native stack before the first canvas (see napari_simseg._llvm_guard).
import segmentation_models_pytorch  # noqa: F401, E402
import tifffile

from layout_builders import disc, write_picture
from training_helpers import tiny_config

SHAPE = (40, 48)


def colour_picture(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An RGB picture whose lesion differs from the skin in hue, not in brightness, and its mask."""
    rng = np.random.default_rng(seed)
    mask = disc(SHAPE, (20 + seed % 3, 22 + seed % 5), 9)
    skin, lesion = np.array([170.0, 120.0, 100.0]), np.array([100.0, 120.0, 170.0])  # same mean
    rgb = np.where(mask[..., None], lesion, skin) + rng.normal(0, 8, SHAPE + (3,))
    return np.clip(rgb, 0, 255).astype(np.uint8), mask.astype(np.uint8)


@pytest.fixture
def colour_set(tmp_path):
    root = tmp_path / "skin"
    for i in range(4):
        rgb, mask = colour_picture(i)
        write_picture(root / "images" / f"p{i}.png", rgb)
        write_picture(root / "labels" / f"p{i}.png", mask)
    (root / "classes.json").write_text(json.dumps(["background", "lesion"]))
    return root


def test_colour_pictures_train_evaluate_and_click_as_red_green_blue(tmp_path, colour_set):
    from napari_simseg.core.data.datasets import discover_dataset
    from napari_simseg.core.jobs.evaluation import evaluate
    from napari_simseg.core.jobs.training import train
    from napari_simseg.core.network.checkpoint import load_checkpoint
    from napari_simseg.core.session.interactive import InteractiveSession

    assert discover_dataset(colour_set).channel_names == ["red", "green", "blue"]
    cfg = tiny_config(colour_set, tmp_path / "run", epochs=1, steps_per_epoch=2, batch_size=2, val_fraction=0.25,
                      val_clicks=1)
    best = train(cfg.validate(), log=lambda m: None)
    ck = load_checkpoint(best)
    assert tuple(ck.meta.channel_names) == ("red", "green", "blue")
    result = evaluate(best, colour_set, split="val", split_file=str(tmp_path / "run" / "split.json"), clicks=(0, 1),
                      device="cpu", progress=False, log=lambda m: None)
    assert result["n_volumes"] == 1 and 0.0 <= result["results"][1]["dice"]["lesion"] <= 1.0
    rgb, _ = colour_picture(7)
    session = InteractiveSession(np.moveaxis(rgb, -1, 0).astype(np.float32), best, device="cpu", channel_axis=0)
    res = session.add_clicks(0, [(1, 20, 22)])
    assert res.labels.shape == SHAPE and res.labels[20, 22] == 1


@pytest.fixture
def colour_checkpoint(tmp_path):
    from napari_simseg.core.jobs.teach_worker import new_checkpoint

    return new_checkpoint(tmp_path / "rgb.safetensors", ["background", "lesion"], SHAPE,
                          channel_names=("red", "green", "blue"))


@pytest.mark.gui
def test_rgb_layer_feeds_a_colour_network_and_a_grey_rgb_layer_a_grey_one(make_napari_viewer, colour_checkpoint):
    from napari_simseg import ViewerSession
    from napari_simseg.core.session.interactive import ImageError

    viewer = make_napari_viewer()
    rgb, _ = colour_picture(3)
    layer = viewer.add_image(rgb, name="dermoscopy")
    assert layer.rgb
    s = ViewerSession(viewer, image_layer=layer, checkpoint=colour_checkpoint, device="cpu")
    assert s.session.volume.shape[0] == 3 and s.labels.shape == SHAPE
    # each colour channel normalised on its own: red is high on the skin, blue on the lesion
    red, blue = s.session.volume[0].reshape(SHAPE), s.session.volume[2].reshape(SHAPE)
    assert red[2, 2] > 0 > red[20, 22] and blue[20, 22] > 0 > blue[2, 2]
    result = s.add_clicks(0, [(1, 20, 22)])
    assert result.labels.shape == SHAPE and s.labels[20, 22] == 1
    s.close()
    # a grey layer is each of red, green and blue for a colour network, as in training
    s = ViewerSession(viewer, image_layer=viewer.add_image(rgb[..., 1].astype(np.float32), name="grey photo"),
                      checkpoint=colour_checkpoint, device="cpu")
    np.testing.assert_array_equal(s.session.volume[0], s.session.volume[2])
    s.close()
    # the one-channel demo network: true colour refused with what to do, grey content read as grey
    viewer = make_napari_viewer()
    layer = viewer.add_image(rgb, name="dermoscopy")
    with pytest.raises(ImageError, match="true-colour RGB.*network reads one channel"):
        ViewerSession(viewer, image_layer=layer, checkpoint="demo", device="cpu")
    grey = viewer.add_image(np.repeat(rgb[..., :1], 3, axis=-1), name="radiograph saved as RGB")
    s = ViewerSession(viewer, image_layer=grey, checkpoint="demo", device="cpu")
    assert s.labels.shape == SHAPE
    s.close()


def test_reader_gives_one_layer_per_tiff_channel_and_an_rgb_layer_for_colour(tmp_path):
    from napari_simseg._reader import get_reader

    stack = np.stack([np.arange(40 * 48).reshape(SHAPE) % 200, np.full(SHAPE, 7)]).astype(np.uint8)
    tifffile.imwrite(tmp_path / "cells.tif", stack, imagej=True, metadata={"axes": "CYX"})
    layers = get_reader(str(tmp_path / "cells.tif"))(str(tmp_path / "cells.tif"))
    assert [(kw["name"], data.shape) for data, kw, _ in layers] == [("cells channel_0", SHAPE),
                                                                    ("cells channel_1", SHAPE)]
    np.testing.assert_array_equal(layers[1][0], 7)
    rgb, _ = colour_picture(1)
    tifffile.imwrite(tmp_path / "photo.tif", rgb, photometric="rgb")
    (data, kwargs, kind), = get_reader(str(tmp_path / "photo.tif"))(str(tmp_path / "photo.tif"))
    assert kind == "image" and kwargs["rgb"] and data.shape == SHAPE + (3,) and len(kwargs["scale"]) == 2
    np.testing.assert_array_equal(data, rgb)
    import SimpleITK as sitk

    frames = [sitk.GetImageFromArray(np.full((4, 8, 8), k, np.float32)) for k in range(12)]
    sitk.WriteImage(sitk.JoinSeries(frames), str(tmp_path / "fmri.nii.gz"))  # a time series: one layer
    (data, kwargs, kind), = get_reader(str(tmp_path / "fmri.nii.gz"))(str(tmp_path / "fmri.nii.gz"))
    assert data.shape == (12, 4, 8, 8) and len(kwargs["scale"]) == 4 and float(data[5].mean()) == 5.0


@pytest.mark.gui
def test_widget_segments_an_rgb_layer_with_a_colour_network(make_napari_viewer, qtbot, colour_checkpoint):
    viewer = make_napari_viewer()
    rgb, _ = colour_picture(2)
    viewer.add_image(rgb, name="photo")
    _, widget = viewer.window.add_plugin_dock_widget("napari-simseg", "SimSeg")
    try:
        widget.set_checkpoint(colour_checkpoint)
        widget.device_combo.setCurrentText("cpu")
        widget.image_picker.image_combo.setCurrentText("photo")
        assert widget.start(wait=True), widget.status_label.text()
        assert widget.session.session.volume.shape[0] == 3
        with qtbot.waitSignal(widget.round_finished, timeout=60_000):
            widget.session.click_layers[1].add([[20, 22]])
        assert widget.session.labels[20, 22] == 1
    finally:
        widget.shutdown()


@pytest.mark.gui
def test_click_points_on_an_rgb_layer_are_sized_to_the_picture(make_napari_viewer, colour_checkpoint):
    from napari_simseg import ViewerSession

    viewer = make_napari_viewer()
    picture = np.random.default_rng(4).integers(0, 255, (200, 250, 3), dtype=np.uint8)
    s = ViewerSession(viewer, image_layer=viewer.add_image(picture, name="big"), checkpoint=colour_checkpoint,
                      device="cpu")
    assert float(np.ravel(s.click_layers[1].current_size)[0]) == pytest.approx(0.04 * 200)  # not 0.04 * 3
    s.close()


def test_a_constant_channel_beside_varying_ones_is_zeros_in_training_and_in_a_session(tmp_path, colour_set):
    """An empty blue channel (or a missing, zero-filled modality) is no reason to refuse a case."""
    from napari_simseg.core.data.datasets import discover_dataset, load_case, read_and_check
    from napari_simseg.core.session.interactive import InteractiveSession

    rgb, mask = colour_picture(0)
    rgb[..., 2] = 0
    write_picture(colour_set / "images" / "p0.png", rgb)
    spec = discover_dataset(colour_set)
    read = read_and_check(spec.cases[0], spec=spec)
    assert read.issues == [] and any("channel 'blue': constant" in n for n in read.notes)
    image = load_case(spec.cases[0], n_classes=spec.n_classes, spec=spec).image
    assert np.all(image[2] == 0) and abs(float(image[0].std()) - 1.0) < 0.05
    all_flat = np.zeros_like(rgb)
    write_picture(colour_set / "images" / "p1.png", all_flat)  # nothing varies: still refused
    assert read_and_check(discover_dataset(colour_set).cases[1], spec=spec).issues

    from napari_simseg.core.jobs.teach_worker import new_checkpoint

    ckpt = new_checkpoint(tmp_path / "rgb.safetensors", ["background", "lesion"], SHAPE,
                          channel_names=("red", "green", "blue"))
    session = InteractiveSession(np.moveaxis(rgb, -1, 0), ckpt, device="cpu", channel_axis=0)
    assert np.all(session.volume[2] == 0) and session.add_clicks(0, [(1, 20, 22)]).labels[20, 22] == 1
