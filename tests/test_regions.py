"""Bounded rounds on large slices (regions and tiles) and the memory guard."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_meta_and_model
from napari_simseg.core.imaging.regions import (
    MIN_SIDE,
    TILE,
    box_around,
    foreground_box,
    grow_box,
    scale_box,
    tiles,
    touched_boxes,
)


def test_box_around_points_and_boxes_with_margin_and_minimum():
    assert box_around((1000, 800), [(500, 400)], margin=10, min_side=0) == (490, 511, 390, 411)
    b = box_around((1000, 800), [(500, 400)])
    assert b[1] - b[0] == MIN_SIDE and b[3] - b[2] == MIN_SIDE and b[0] <= 500 < b[1]
    # kept inside the grid, shifted rather than cut
    assert box_around((1000, 800), [(2, 799)], margin=4, min_side=64) == (0, 64, 736, 800)
    assert box_around((1000, 800), [], [(100, 200, 300, 350)], margin=0, min_side=0) == (100, 200, 300, 350)
    assert box_around((50, 60), []) == (0, 50, 0, 60)  # nothing: the whole grid


def test_grow_box_only_when_a_point_falls_outside():
    box = (100, 228, 100, 228)
    assert grow_box(box, (1000, 1000), [(150, 150)]) is box
    grown = grow_box(box, (1000, 1000), [(400, 120)], margin=8)
    assert grown == (100, 409, 100, 228)


def test_tiles_cover_with_overlap_and_foreground_box():
    boxes = tiles((700, 300))
    covered = np.zeros((700, 300), int)
    for y0, y1, x0, x1 in boxes:
        assert y1 - y0 <= TILE and x1 - x0 <= TILE
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1 and covered.max() >= 2
    assert tiles((100, 120)) == [(0, 100, 0, 120)]
    labels = np.zeros((20, 30), np.uint8)
    assert foreground_box(labels) is None
    labels[3:5, 7:12] = 2
    assert foreground_box(labels) == (3, 5, 7, 12)
    assert scale_box((3, 5, 7, 12), 2.0, (40, 60)) == (6, 10, 14, 24)
    labels[15:18, 25:28] = 1
    assert touched_boxes(labels, [(4, 14)], margin=3) == [(3, 5, 7, 12)]  # near the first only
    assert touched_boxes(labels, [(10, 20)], margin=2) == []


@pytest.fixture
def big_predictor(tmp_path):
    from napari_simseg.core.network.checkpoint import save_checkpoint
    from napari_simseg.core.network.predictor import Predictor

    meta, model = tiny_meta_and_model()
    return Predictor(save_checkpoint(tmp_path / "t.safetensors", model, meta), device="cpu", tta=False)


def _recording(pred):
    seen = []
    real = pred.predict
    pred.predict = lambda x, state=None: (seen.append(np.shape(x)), real(x, state))[1]
    return seen


def test_a_round_on_a_large_slice_runs_on_a_region_and_keeps_the_rest(big_predictor):
    from napari_simseg.core.session.interactive import InteractiveSession

    image = np.random.default_rng(0).normal(size=(2, 600, 500)).astype(np.float32)
    session = InteractiveSession(image, big_predictor)
    seen = _recording(big_predictor)
    base = np.zeros((600, 500), np.uint8)
    base[10:20, 10:20] = 2  # far from the clicks: must stay as it is
    session.set_labels(0, base)
    res = session.add_clicks(0, [(1, 300, 250)])
    assert seen[-1][-2:] == (MIN_SIDE, MIN_SIDE)  # not the 600x500 slice
    y0, y1, x0, x1 = res.box
    assert (y1 - y0, x1 - x0) == (MIN_SIDE, MIN_SIDE) and y0 <= 300 < y1 and x0 <= 250 < x1
    assert res.labels.shape == (600, 500) and res.labels[300, 250] == 1
    np.testing.assert_array_equal(res.labels[10:20, 10:20], 2)
    outside = np.ones((600, 500), bool)
    outside[y0:y1, x0:x1] = False
    np.testing.assert_array_equal(res.labels[outside], base[outside])
    # a second round inside keeps the region and the LSTM state
    res2 = session.add_clicks(0, [(2, 310, 260)])
    assert res2.box == res.box and session.memory(0).rounds[0].payload is not None
    # a click outside grows the region: the memory is padded, the LSTM restarts
    res3 = session.add_clicks(0, [(0, 500, 450)])
    assert res3.box[1] > 500 and res3.box[3] > 450 and res3.box[0] <= y0
    mem = session.memory(0)
    assert mem.shape == (res3.box[1] - res3.box[0], res3.box[3] - res3.box[2])
    assert all(st.probabilities.shape[-2:] == mem.shape for st in mem.rounds)
    assert mem.rounds[0].payload is None and mem.rounds[0].clicks.sum() > 0
    # undo goes back through the grown memory
    session.undo(0)
    assert session.labels[0, 310, 260] == 2


def test_automatic_mode_on_a_large_slice_uses_tiles(big_predictor):
    from napari_simseg.core.session.interactive import InteractiveSession

    image = np.random.default_rng(1).normal(size=(700, 300)).astype(np.float32)
    session = InteractiveSession(image, big_predictor)
    seen = _recording(big_predictor)
    labels = session.predict_auto()
    assert labels.shape == (700, 300)
    assert max(s[-2] for s in seen) <= TILE and sum(s[0] for s in seen) == len(tiles((700, 300))) >= 2


def test_small_slices_are_still_processed_whole(big_predictor):
    from napari_simseg.core.session.interactive import InteractiveSession

    session = InteractiveSession(np.random.default_rng(2).normal(size=(3, 120, 90)).astype(np.float32),
                                 big_predictor)
    seen = _recording(big_predictor)
    res = session.add_clicks(1, [(1, 5, 5)])
    assert seen[-1][-2:] == (120, 90) and res.box == (0, 120, 0, 90)


def test_the_memory_guard_refuses_before_anything_changes(big_predictor, monkeypatch):
    import napari_simseg.core.network.devices as devices
    from napari_simseg.core.session.interactive import InteractiveSession

    session = InteractiveSession(np.random.default_rng(3).normal(size=(2, 64, 64)).astype(np.float32),
                                 big_predictor)
    session.add_clicks(0, [(1, 30, 30)])
    before = session.get_labels()
    monkeypatch.setattr(devices, "available_memory", lambda device: 1024)
    with pytest.raises(MemoryError, match=r"needs about .* but only 0 MB are free on cpu: use a checkpoint with a "
                                          r"working size"):
        session.add_clicks(0, [(2, 10, 10)])
    assert session.n_rounds(0) == 1  # the refused round left no trace
    np.testing.assert_array_equal(session.get_labels(), before)
    with pytest.raises(MemoryError):
        session.predict_auto(1)


def test_required_bytes_grow_with_the_pixels_and_the_views(big_predictor):
    one = big_predictor.required_bytes(1, 100, 100)
    assert big_predictor.required_bytes(2, 200, 100) == pytest.approx(4 * one, rel=0.01)
    assert big_predictor.views == 1


def test_a_refused_round_that_would_grow_the_region_leaves_region_and_memory_as_they_were(big_predictor, monkeypatch):
    import napari_simseg.core.network.devices as devices
    from napari_simseg.core.session.interactive import InteractiveSession

    session = InteractiveSession(np.random.default_rng(4).normal(size=(600, 500)).astype(np.float32), big_predictor)
    first = session.add_clicks(0, [(1, 300, 250)])
    mem = session.memory(0)
    payload = mem.rounds[0].payload
    before = session.get_labels()
    free = devices.available_memory
    # enough for the 96 x 96 region, not for one around both corners
    limit = 4 * big_predictor.required_bytes(1, MIN_SIDE, MIN_SIDE)
    monkeypatch.setattr(devices, "available_memory", lambda device: limit)
    with pytest.raises(MemoryError):
        session.add_clicks(0, [(1, 0, 0), (2, 599, 499)])
    assert session.memory(0) is mem and mem.shape == (MIN_SIDE, MIN_SIDE) and mem.n_rounds == 1
    assert mem.rounds[0].payload is payload  # the LSTM state was not dropped
    np.testing.assert_array_equal(session.get_labels(), before)
    # the next round nearby still runs, on the old region, with the old state
    res = session.add_clicks(0, [(2, 310, 260)])
    assert res.box == first.box and session.n_rounds(0) == 2
    monkeypatch.setattr(devices, "available_memory", free)
    grown = session.add_clicks(0, [(1, 0, 0)])
    assert grown.box[0] == 0 and grown.box[2] == 0


def test_a_refused_first_round_leaves_the_slice_without_a_region(big_predictor, monkeypatch):
    import napari_simseg.core.network.devices as devices
    from napari_simseg.core.session.interactive import InteractiveSession

    session = InteractiveSession(np.random.default_rng(5).normal(size=(600, 500)).astype(np.float32), big_predictor)
    monkeypatch.setattr(devices, "available_memory", lambda device: 1024)
    with pytest.raises(MemoryError):
        session.add_clicks(0, [(1, 0, 0), (2, 599, 499)])
    monkeypatch.undo()
    res = session.add_clicks(0, [(1, 300, 250)])  # a fresh region around the new click alone
    assert (res.box[1] - res.box[0], res.box[3] - res.box[2]) == (MIN_SIDE, MIN_SIDE)
