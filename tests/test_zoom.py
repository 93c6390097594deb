"""Zoom-in (``core.network.zoom``): a click refined in a focus view finer than the working grid,
one implementation for the session and the evaluation's rounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_meta_and_model
from napari_simseg.core.engine.rounds import RoundSettings, run_rounds
from napari_simseg.core.imaging.transforms import FocusCrop, WorkingSize
from napari_simseg.core.interaction.clicks import Click, encode_clicks
from napari_simseg.core.interaction.refinement import Refinement
from napari_simseg.core.network import zoom as zoom_module
from napari_simseg.core.network.zoom import MIN_GAIN, FocusView, focus_crop, focus_input, round_views, zoom_in


def _maps(size=512):
    previous = np.zeros((size, size), int)
    previous[100:300, 100:300] = 1
    proposed = previous.copy()
    proposed[290:310, 150:170] = 1  # the coarse pass grows the structure where the user clicked
    return previous, proposed


def test_a_focus_box_magnifies_the_clicked_change_and_stays_inside_the_image():
    previous, proposed = _maps()
    click = Click(1, 305, 160)
    crop = focus_crop(click, previous, proposed, scale=0.125, target=(64, 64), zoom=4)
    y0, y1, x0, x1 = crop.box
    assert crop.target == (64, 64) and y1 - y0 == x1 - x0 == 128  # 64 / (0.125 * 4) image pixels
    assert crop.contains(click.y, click.x) and y0 <= 290 and y1 >= 310 and x0 <= 150 and x1 >= 170
    assert min(crop.zoom) == pytest.approx(0.125 * 4)  # four times the working grid's pixels
    # never finer than the image's own pixels
    capped = focus_crop(click, previous, proposed, scale=0.5, target=(64, 64), zoom=8)
    assert capped.zoom == (1.0, 1.0)
    # a click at the image's corner: the box is moved inside, not cut
    corner = focus_crop(Click(0, 2, 509), previous, previous, scale=0.125, target=(64, 64), zoom=4)
    assert corner.box == (0, 128, 384, 512)


def test_no_focus_view_where_it_would_not_see_finer():
    previous, proposed = _maps()
    click = Click(1, 305, 160)
    assert focus_crop(click, previous, proposed, scale=1 / MIN_GAIN + 0.01, target=(64, 64), zoom=4) is None
    huge = previous.copy()
    huge[:, :] = 1  # the coarse pass changed the whole image: a box of it gains nothing
    assert focus_crop(Click(1, 5, 5), previous, huge, scale=0.125, target=(64, 64), zoom=4) is None
    assert round_views([click], previous, proposed, 0.125, (64, 64), zoom=1.0) == []
    assert len(round_views([click], previous, proposed, 0.125, (64, 64), zoom=4.0)) == 1


def _settings(memory="sim", n=3):
    meta, _ = tiny_meta_and_model(memory=memory, depth=2, class_names=("background", "a", "b")[:n])
    return RoundSettings.for_checkpoint(meta)


@pytest.mark.parametrize("memory", ["sim", "cim"])
def test_a_focus_input_reads_the_image_at_its_own_resolution_and_the_memory_on_the_focus_grid(memory):
    settings = _settings(memory)
    n, size = settings.n_classes, 256
    rng = np.random.default_rng(0)
    fine = rng.normal(size=(1, size, size)).astype(np.float32)  # detail the working grid cannot hold
    grid = WorkingSize((size, size), 32)
    c_total = 1 + (2 * settings.depth * n if memory == "sim" else n)
    x = torch.zeros(c_total, 32, 32)
    x[0] = torch.from_numpy(grid.transform(fine)[0])
    ramp = torch.arange(32, dtype=torch.float32)[:, None].expand(32, 32)  # working row index
    prob_channel = 1 + n if memory == "sim" else None
    if prob_channel is not None:
        x[prob_channel] = ramp
    x[1 + 1, 10:13, 10:13] = 1.0  # an earlier click of class 1 (sim: oldest slot; cim: merged)
    crop = FocusCrop((96, 160, 64, 128), (32, 32))  # 64 image px seen on 32: 4x the working grid
    view = FocusView(crop, Click(2, 120, 100))
    out = focus_input(x, (0, size, 0, size), view, fine, settings)
    assert out.shape == (c_total, 32, 32)
    np.testing.assert_allclose(out[0].numpy(), crop.transform(fine)[0], atol=1e-6)  # the image, not the working one
    if prob_channel is not None:  # the memory's maps, resampled with pixel centres aligned
        for j in (0, 13, 31):
            iy, _ = crop.inverse_point(j, 0)
            wy, _ = grid.transform_point(iy, 0)
            assert out[prob_channel, j, 5].item() == pytest.approx(min(max(wy, 0), 31), abs=1e-4)
    slots = [1 + 2 * n * k for k in range(settings.depth)] if memory == "sim" else [1]
    for s in slots:  # click channels stay binary
        assert set(np.unique(out[s:s + n].numpy())) <= {0.0, 1.0}
    fy, fx = crop.transform_point(120, 100)
    want = encode_clicks([Click(2, fy, fx)], n, (32, 32), settings.click_radius)
    got = out[slots[-1]:slots[-1] + n].numpy()
    if memory == "sim":
        np.testing.assert_array_equal(got, want)  # the round's click, at the network's radius on the focus grid
    else:
        assert (got >= want).all() and got[2].sum() == want[2].sum()  # merged with the earlier clicks


def test_zoom_in_pastes_each_view_in_its_box_and_leaves_the_rest():
    settings = _settings()
    n, size = settings.n_classes, 128
    shown = torch.full((n, size, size), 1.0 / n)
    x = torch.zeros(1 + 2 * settings.depth * n, 32, 32)
    fine = np.zeros((1, size, size), np.float32)
    views = [FocusView(FocusCrop((10, 42, 20, 52), (32, 32)), Click(1, 20, 30)),
             FocusView(FocusCrop((64, 96, 64, 96), (32, 32)), Click(2, 70, 70))]
    seen = []

    def run_network(batch):
        seen.append(tuple(batch.shape))
        out = torch.zeros(batch.shape[0], n, *batch.shape[-2:])
        for i, v in enumerate(views):
            out[i, v.click.label] = 1.0
        return out

    out = zoom_in(shown, x, (0, size, 0, size), fine, views, run_network, settings)
    assert seen == [(2, x.shape[0], 32, 32)]  # one batch for the round's views
    assert (out[1, 10:42, 20:52] == 1).all() and (out[2, 64:96, 64:96] == 1).all()
    rest = torch.ones(size, size, dtype=torch.bool)
    rest[10:42, 20:52] = False
    rest[64:96, 64:96] = False
    assert torch.equal(out[:, rest], shown[:, rest]) and torch.equal(shown, torch.full((n, size, size), 1.0 / n))


def test_rounds_with_zoom_change_labels_only_inside_the_focus_boxes(monkeypatch):
    meta, model = tiny_meta_and_model()
    size = 128
    rng = np.random.default_rng(1)
    fine = rng.normal(size=(2, 1, size, size)).astype(np.float32)
    gts = np.zeros((2, size, size), int)
    gts[:, 30:90, 40:100] = 1
    work = torch.from_numpy(WorkingSize((size, size), 32).transform(fine))

    def clicker(g, previous):
        return [[(1, 50, 60), (2, 100, 20)] for _ in range(g.shape[0])]

    boxes = []
    real = zoom_module.zoom_in

    def recording(shown, x, x_box, fine_image, views, run_network, settings):
        boxes.append([v.crop.box for v in views])
        return real(shown, x, x_box, fine_image, views, run_network, settings)

    monkeypatch.setattr(zoom_module, "zoom_in", recording)
    plain = Refinement(locality="none", follow_clicks=False, min_lead=0.0)
    results = {}
    for zoom in (1.0, 4.0):
        settings = RoundSettings.for_checkpoint(meta, refinement=Refinement(**{**plain.to_dict(), "zoom": zoom}))
        results[zoom] = run_rounds(model, work, gts, 1, clicker, settings, fine_images=fine)
    assert len(boxes) == 2 and all(boxes)  # both slices of round 1 zoomed in
    for i, image_boxes in enumerate(boxes):
        outside = np.ones((size, size), bool)
        for y0, y1, x0, x1 in image_boxes:
            outside[y0:y1, x0:x1] = False
        assert outside.any()
        np.testing.assert_array_equal(results[4.0][1][i][outside], results[1.0][1][i][outside])
    np.testing.assert_array_equal(results[4.0][0], results[1.0][0])  # the automatic result is not a round
    with pytest.raises(ValueError, match="fine_images"):
        run_rounds(model, work, gts, 1, clicker, settings)


def test_the_session_zooms_in_as_the_evaluation_does_and_says_so(tmp_path):
    """The same click on the same network: the session's round and the evaluation's round show
    the same labels, and the session's status line names the focus view."""
    from napari_simseg.core.network.predictor import Predictor
    from napari_simseg.core.session.interactive import InteractiveSession
    from test_working_resolution import _checkpoint

    predictor = Predictor(_checkpoint(tmp_path, working_size=32), device="cpu", tta=False)
    rng = np.random.default_rng(2)
    image = rng.normal(size=(128, 128)).astype(np.float32)
    refinement = Refinement(zoom=4.0)
    session = InteractiveSession(image, predictor, refinement=refinement)
    session.predict_auto()
    click = Click(1, 64, 64)
    result = session.add_clicks(None, [click])
    assert "finer than the working grid" in result.zoomed and result.zoomed in result.note
    settings = RoundSettings.for_checkpoint(predictor.meta, honour=True, refinement=refinement)
    fine = session.volume[:, 0][None]  # the session's normalised slice, (1, C, H, W)
    work = torch.from_numpy(WorkingSize((128, 128), 32).transform(fine))
    gts = np.zeros((1, 128, 128), int)
    rounds = run_rounds(predictor.model, work, gts, 1, lambda g, p: [[click]], settings, fine_images=fine)
    agree = (rounds[1][0] == result.labels).mean()
    assert agree > 0.995, agree
    plain = InteractiveSession(image, predictor, refinement=Refinement())
    plain.predict_auto()
    assert plain.add_clicks(None, [click]).zoomed == ""


def test_the_default_zoom_is_the_magnification_the_checkpoint_was_trained_to_read():
    from types import SimpleNamespace

    from napari_simseg.core.session.interaction_log import log_refinement

    def meta(scale):
        return SimpleNamespace(training={"config": {"aug_scale": scale}} if scale is not None else {})

    assert Refinement().zoom is None
    assert Refinement().for_checkpoint(meta([0.9, 2.5])).zoom == 2.5
    assert Refinement().for_checkpoint(meta([0.9, 1.1])).zoom == 1.0  # trained at one scale: no focus views
    assert Refinement().for_checkpoint(meta(None)).zoom == 1.0
    assert Refinement().for_checkpoint(SimpleNamespace(training=None)).zoom == 1.0
    assert Refinement(zoom=3.0).for_checkpoint(meta([0.9, 1.1])).zoom == 3.0  # asked for: kept
    assert not Refinement.off().active and Refinement(locality="none", follow_clicks=False, min_lead=0.0,
                                                      zoom=2.0).active
    with pytest.raises(ValueError, match="zoom"):
        Refinement(zoom=0.5)
    # a log recorded before focus views existed replays without them; a newer one with its own
    old = Refinement().to_dict()
    old.pop("zoom")
    assert log_refinement({"refinement": old}).zoom == 1.0
    assert log_refinement({"refinement": Refinement(zoom=2.5).to_dict()}).zoom == 2.5
