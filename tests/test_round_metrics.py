"""What one corrective round did to its slice, on hand-made cases (``core.imaging.metrics``)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_simseg.core.imaging.metrics import RoundChange, round_change, summarise_round_changes
from napari_simseg.core.interaction.clicks import Click


def _slice():
    gt = np.zeros((6, 8), int)
    gt[1:4, 1:4] = 1  # a 3 x 3 square of class 1
    gt[1:3, 5:7] = 2  # a 2 x 2 square of class 2
    return gt


def test_a_click_points_at_its_whole_mislabelled_region():
    gt = _slice()
    before = np.zeros_like(gt)  # both squares missed: 9 + 4 errors
    after = before.copy()
    after[1:4, 1:4] = 1  # the round fixed the clicked square, nothing else
    change = round_change(before, after, gt, [Click(1, 2.0, 2.0)])
    assert (change.errors_before, change.errors_after) == (13, 4)
    assert (change.clicked_errors, change.clicked_fixed) == (9, 9)
    assert change.removed == pytest.approx(9 / 13) and change.clicked_removed == 1.0
    assert not change.worse


def test_clicks_on_right_pixels_point_at_nothing_and_one_region_counts_once():
    gt = _slice()
    before = np.zeros_like(gt)
    before[1:4, 1:4] = 1  # square 1 right, square 2 missed
    after = before.copy()
    after[1, 5] = 2  # one of square 2's four pixels fixed
    clicks = [Click(1, 2, 2), Click(2, 1.2, 5.4), Click(2, 2, 6)]  # a right pixel; two clicks in one region
    change = round_change(before, after, gt, clicks)
    assert (change.clicked_errors, change.clicked_fixed) == (4, 1)
    assert change.clicked_removed == 0.25


def test_a_round_that_breaks_a_distant_region_is_worse():
    gt = _slice()
    before = gt.copy()
    before[1:3, 5:7] = 0  # square 2 missed
    after = gt.copy()  # square 2 fixed ...
    after[1:4, 1:4] = 0  # ... and square 1 lost
    change = round_change(before, after, gt, [Click(2, 1, 5)])
    assert change.worse and change.errors_after == 9 and change.errors_before == 4
    assert change.removed == pytest.approx(-5 / 4)
    assert change.clicked_removed == 1.0


def test_connectivity_decides_what_a_region_is():
    gt = np.zeros((3, 3), int)
    gt[0, 0] = gt[1, 1] = 1  # diagonal neighbours
    before = np.zeros_like(gt)
    four = round_change(before, before, gt, [Click(1, 0, 0)], connectivity=1)
    eight = round_change(before, before, gt, [Click(1, 0, 0)], connectivity=2)
    assert (four.clicked_errors, eight.clicked_errors) == (1, 2)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        round_change(np.zeros((2, 2), int), np.zeros((2, 3), int), np.zeros((2, 2), int), [])


def test_summary_means_and_pooled_shares():
    changes = [RoundChange(10, 5, 8, 4), RoundChange(2, 4, 2, 0), RoundChange(100, 10, 50, 50)]
    s = summarise_round_changes(changes)
    assert s["n"] == 3 and s["worse"] == pytest.approx(1 / 3, abs=1e-5)
    assert s["removed"] == pytest.approx((0.5 - 1.0 + 0.9) / 3, abs=1e-5)
    assert s["removed_pooled"] == pytest.approx((112 - 19) / 112, abs=1e-5)
    assert s["clicked_removed"] == pytest.approx((0.5 + 0.0 + 1.0) / 3, abs=1e-5)
    assert s["clicked_removed_pooled"] == pytest.approx(54 / 60, abs=1e-5)
    assert summarise_round_changes([])["n"] == 0
