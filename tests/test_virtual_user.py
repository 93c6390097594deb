"""Tests of the virtual users (DDG training user, SDG, evaluation user)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from napari_simseg.core.interaction.clicks import Click
from napari_simseg.core.interaction.virtual_user import (
    DDGConfig,
    EvaluationUser,
    TrainingVirtualUser,
    _Components,
    central_click,
    click_probability_map,
    sample_click,
    sdg_clicks,
)

N_CLASSES = 4
NO_RULES_3_4 = dict(drop_class=False, drop_fraction=0.0)


def multi_gt() -> np.ndarray:
    """20x24 label map with every class split into components.

    background: 2 components (split by the class-2 wall), class 1: 2, class 2: 1,
    class 3: 3 (one of them a single pixel) -> 8 components.
    """
    gt = np.zeros((20, 24), dtype=np.int64)
    gt[:, 11:13] = 2
    gt[2:8, 2:8] = 1
    gt[12:15, 3:6] = 1
    gt[3:6, 15:18] = 3
    gt[10:12, 16:22] = 3
    gt[17, 20] = 3
    return gt


def components(gt: np.ndarray, connectivity: int = 1) -> list[tuple[int, np.ndarray]]:
    """Reference (class, mask) list of all connected components."""
    structure = ndimage.generate_binary_structure(2, connectivity)
    out = []
    for c in range(N_CLASSES):
        lab, k = ndimage.label(gt == c, structure=structure)
        out += [(c, lab == j) for j in range(1, k + 1)]
    return out


def blocky_gt(rng: np.random.Generator, shape=(5, 6), scale=4) -> np.ndarray:
    return np.kron(rng.integers(0, N_CLASSES, size=shape), np.ones((scale, scale), dtype=np.int64))


def wrong_prediction(gt: np.ndarray) -> np.ndarray:
    """A prediction wrong on every pixel."""
    return (gt + 1) % N_CLASSES


def pixel(click: Click) -> tuple[int, int]:
    return int(round(click.y)), int(round(click.x))


def assert_on_right_class(clicks, gt):
    for c in clicks:
        y, x = pixel(c)
        assert float(y) == c.y and float(x) == c.x
        assert gt[y, x] == c.label, f"{c} lies on class {gt[y, x]}"


# --------------------------------------------------------------------------- placement map


def test_probability_map_peaks_at_centre_and_vanishes_outside():
    mask = np.zeros((15, 15), dtype=bool)
    mask[3:12, 3:12] = True
    pm = click_probability_map(mask)
    assert pm.sum() == pytest.approx(1.0)
    assert np.all(pm[~mask] == 0)
    assert np.all(pm[mask] > 0)
    assert np.unravel_index(np.argmax(pm), pm.shape) == (7, 7)
    assert np.count_nonzero(pm == pm.max()) == 1
    # decreasing from the centre to the boundary along a row
    row = pm[7, 3:8]
    assert np.all(np.diff(row) > 0)
    # a larger power concentrates the mass at the centre, power 0 is uniform
    assert click_probability_map(mask, power=2.0)[7, 7] > pm[7, 7]
    uni = click_probability_map(mask, power=0.0)
    assert np.allclose(uni[mask], 1.0 / mask.sum())


def test_probability_map_treats_image_border_as_boundary():
    mask = np.zeros((15, 15), dtype=bool)
    mask[:, :5] = True  # touches the top, bottom and left borders
    pm = click_probability_map(mask)
    y, x = np.unravel_index(np.argmax(pm), pm.shape)
    assert x == 2 and 2 <= y <= 12
    assert pm[7, 0] < pm[7, 2]


def test_probability_map_rejects_empty_region():
    with pytest.raises(ValueError, match="empty"):
        click_probability_map(np.zeros((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="empty"):
        sample_click(np.zeros((4, 4), dtype=bool), 0)


def test_sample_click_follows_probability_map():
    # 5x5 square at the image corner: distances 3 (centre), 2 (8 px), 1 (16 px); sum 35
    mask = np.zeros((9, 9), dtype=bool)
    mask[0:5, 0:5] = True
    rng = np.random.default_rng(1)
    n = 2000
    hits = Counter(sample_click(mask, rng) for _ in range(n))
    assert all(mask[p] for p in hits)
    assert hits[(2, 2)] / n == pytest.approx(3 / 35, abs=0.025)
    ring1 = sum(v for (y, x), v in hits.items() if min(y, x, 4 - y, 4 - x) == 0)
    assert ring1 / n == pytest.approx(16 / 35, abs=0.04)


def test_central_click_is_distance_maximum_with_raster_tie_break():
    mask = np.zeros((15, 15), dtype=bool)
    mask[3:12, 3:12] = True
    assert central_click(mask) == (7, 7)
    rect = np.zeros((10, 10), dtype=bool)
    rect[5:7, 3:7] = True  # every pixel at distance 1: first in raster order
    assert central_click(rect) == (5, 3)
    pm = click_probability_map(rect)
    assert central_click(rect) == tuple(int(v) for v in np.unravel_index(np.argmax(pm), pm.shape))


@pytest.mark.parametrize("connectivity", [1, 2])
def test_class_distance_map_equals_per_component_distance_map(connectivity):
    """The one-transform-per-class shortcut equals one transform per component."""
    rng = np.random.default_rng(7)
    for _ in range(5):
        gt = rng.integers(0, N_CLASSES, size=(12, 14))  # many diagonal contacts
        comps = _Components(gt, N_CLASSES, connectivity)
        w = comps.weights(1.0)
        for _, cmask in components(gt, connectivity):
            pm = click_probability_map(cmask)
            np.testing.assert_allclose(w[cmask] / w[cmask].sum(), pm[cmask])


# --------------------------------------------------------------------------- DDG, step a)


@pytest.mark.parametrize("connectivity", [1, 2])
def test_first_round_clicks_every_component_of_every_class(connectivity):
    gt = multi_gt()
    gt[18, 0] = 1
    gt[19, 1] = 1  # diagonal pair: one component with 8-, two with 4-connectivity
    cfg = DDGConfig(connectivity=connectivity, **NO_RULES_3_4)
    user = TrainingVirtualUser(N_CLASSES, cfg, rng=3)
    user.start(gt)
    clicks = user.next_round(None)
    comps = components(gt, connectivity)
    assert len(comps) == (11 if connectivity == 1 else 9)  # 4-conn also isolates bg pixel (19, 0)
    assert len(clicks) == len(comps)
    assert_on_right_class(clicks, gt)
    for c, cmask in comps:
        inside = [k for k in clicks if k.label == c and cmask[pixel(k)]]
        assert len(inside) == 1
    assert np.all(user.episode.click_counts == 1)


def test_first_round_placement_follows_each_component_map():
    # two 5x5 components of class 1: each one's centre has probability 3/35
    gt = np.zeros((7, 13), dtype=np.int64)
    gt[1:6, 1:6] = 1
    gt[1:6, 7:12] = 1
    user = TrainingVirtualUser(2, DDGConfig(**NO_RULES_3_4), rng=5)
    n = 2000
    centres = Counter()
    for _ in range(n):
        user.start(gt)
        for c in user.next_round(None):
            if c.label == 1:
                centres[pixel(c)] += 1
    assert centres[(3, 3)] / n == pytest.approx(3 / 35, abs=0.025)
    assert centres[(3, 9)] / n == pytest.approx(3 / 35, abs=0.025)


def test_clicks_always_lie_on_their_class():
    rng = np.random.default_rng(11)
    for cfg in (DDGConfig(), DDGConfig(decreasing_probability=False, **NO_RULES_3_4)):
        user = TrainingVirtualUser(N_CLASSES, cfg, rng=rng)
        for _ in range(60):
            gt = blocky_gt(rng)
            user.start(gt)
            assert_on_right_class(user.next_round(None), gt)
            for _ in range(3):
                pred = rng.integers(0, N_CLASSES, size=gt.shape)
                clicks = user.next_round(pred)
                assert_on_right_class(clicks, gt)
                for c in clicks:  # corrective clicks are on mislabelled pixels
                    assert pred[pixel(c)] != c.label


# --------------------------------------------------------------------------- rule 1


def test_rule1_caps_clicks_per_component_across_rounds():
    gt = multi_gt()
    cfg = DDGConfig(max_rounds=10, max_clicks_per_component=2, decreasing_probability=False, **NO_RULES_3_4)
    user = TrainingVirtualUser(N_CLASSES, cfg, rng=0)
    ep = user.start(gt)
    pred = wrong_prediction(gt)
    r1 = user.next_round(None)
    r2 = user.next_round(pred)
    assert len(r1) == 8
    assert sorted(c.label for c in r2) == [0, 1, 2, 3]  # one corrective click per class
    # the largest component of every class now has 2 clicks: the cap stops the class
    assert user.next_round(pred) == []
    assert user.next_round(pred) == []
    assert ep.click_counts.max() == 2
    sizes = np.bincount(ep.component_labels.ravel())[1:]
    for c in range(N_CLASSES):
        ids = np.flatnonzero(ep.component_class == c)
        assert ep.click_counts[ids[np.argmax(sizes[ids])]] == 2


def test_rule1_counts_kept_clicks_and_never_exceeds_cap():
    rng = np.random.default_rng(2)
    cfg = DDGConfig(max_rounds=8, max_clicks_per_component=2, drop_fraction=0.5, drop_class=True)
    user = TrainingVirtualUser(N_CLASSES, cfg, rng=rng)
    saw_full = False
    for _ in range(150):
        gt = blocky_gt(rng)
        ep = user.start(gt)
        user.next_round(None)
        for _ in range(7):
            user.next_round(rng.integers(0, N_CLASSES, size=gt.shape))
        per_comp = Counter(int(ep.component_labels[pixel(c)]) for c in ep.clicks)
        assert max(per_comp.values(), default=0) <= 2
        counts = np.zeros_like(ep.click_counts)
        for k, v in per_comp.items():
            counts[k - 1] = v
        np.testing.assert_array_equal(counts, ep.click_counts)  # budget = kept clicks
        saw_full |= max(per_comp.values(), default=0) == 2
    assert saw_full


# --------------------------------------------------------------------------- rule 2


@pytest.mark.parametrize("t, expected", [(3, [1, 2 / 3, 1 / 3, 0, 0]), (4, [1, 0.75, 0.5, 0.25, 0, 0])])
def test_rule2_p_decreases_linearly(t, expected):
    user = TrainingVirtualUser(N_CLASSES, DDGConfig(max_rounds=t), rng=0)
    gt = multi_gt()
    user.start(gt)
    seen = [user.p]
    for _ in range(len(expected) - 1):
        user.next_round(wrong_prediction(gt))
        seen.append(user.p)
    np.testing.assert_allclose(seen, expected, atol=1e-12)
    assert seen[-1] == 0.0


def test_rule2_off_keeps_p_at_one():
    user = TrainingVirtualUser(N_CLASSES, DDGConfig(decreasing_probability=False), rng=0)
    gt = multi_gt()
    user.start(gt)
    for _ in range(5):
        user.next_round(wrong_prediction(gt))
        assert user.p == 1.0


def test_rule2_click_frequency_matches_p():
    gt = multi_gt()
    pred = wrong_prediction(gt)
    cfg = DDGConfig(max_rounds=3, max_clicks_per_component=10, **NO_RULES_3_4)
    user = TrainingVirtualUser(N_CLASSES, cfg, rng=4)
    n = 1500
    per_round = np.zeros(4)
    for _ in range(n):
        user.start(gt)
        assert len(user.next_round(None)) == 8
        for r in range(1, 4):
            clicks = user.next_round(pred)
            assert len({c.label for c in clicks}) == len(clicks)  # at most one per class
            per_round[r] += len(clicks)
    freq = per_round / (n * N_CLASSES)
    assert freq[1] == pytest.approx(2 / 3, abs=0.03)
    assert freq[2] == pytest.approx(1 / 3, abs=0.03)
    assert freq[3] == 0.0


# --------------------------------------------------------------------------- rule 3


def test_rule3_exactly_one_class_without_clicks():
    gt = multi_gt()
    pred = wrong_prediction(gt)
    cfg = DDGConfig(drop_class=True, drop_fraction=0.0, decreasing_probability=False)
    user = TrainingVirtualUser(N_CLASSES, cfg, rng=8)
    for _ in range(50):
        ep = user.start(gt)
        for r in range(3):
            user.next_round(None if r == 0 else pred)
        clicked = {c.label for c in ep.clicks}
        missing = set(range(N_CLASSES)) - clicked
        assert missing == {ep.ignored_class}
        generated = {c.label for rnd in ep.generated_history for c in rnd}
        assert ep.ignored_class in generated  # generated, then removed


def test_rule3_ignored_class_is_uniform():
    user = TrainingVirtualUser(N_CLASSES, DDGConfig(), rng=9)
    gt = multi_gt()
    n = 2000
    counts = np.bincount([user.start(gt).ignored_class for _ in range(n)], minlength=N_CLASSES)
    assert counts.size == N_CLASSES
    expected = n / N_CLASSES
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 16.3  # chi-square, 3 dof, p = 0.001
    assert counts.min() > 0


def test_rule3_off_has_no_ignored_class():
    user = TrainingVirtualUser(N_CLASSES, DDGConfig(drop_class=False, drop_fraction=0.0), rng=0)
    user.start(multi_gt())
    assert user.ignored_class is None
    assert {c.label for c in user.next_round(None)} == set(range(N_CLASSES))


# --------------------------------------------------------------------------- rule 4


def test_rule4_drops_the_configured_fraction():
    gt = multi_gt()
    n = 2000
    for frac in (0.8, 0.5):
        user = TrainingVirtualUser(N_CLASSES, DDGConfig(drop_class=False, drop_fraction=frac), rng=10)
        kept = generated = 0
        for _ in range(n):
            ep = user.start(gt)
            kept += len(user.next_round(None))
            generated += len(ep.generated_history[-1])
        assert generated == 8 * n
        assert kept / generated == pytest.approx(1 - frac, abs=0.02)


def test_rule4_extremes():
    gt = multi_gt()
    user = TrainingVirtualUser(N_CLASSES, DDGConfig(drop_class=False, drop_fraction=1.0), rng=0)
    user.start(gt)
    assert user.next_round(None) == []
    assert np.all(user.episode.click_counts == 0)


# --------------------------------------------------------------------------- corrective clicks


def corrective_scene():
    gt = np.zeros((22, 22), dtype=np.int64)
    gt[1:11, 1:11] = 1  # component A, 100 px
    gt[14:19, 14:19] = 1  # component B, 25 px
    pred = gt.copy()
    pred[1:3, 1:11] = 0  # 20 px of A missed
    pred[14:19, 14:19] = 0  # B missed entirely: the largest mislabelled region
    pred[14:16, 2:10] = 1  # 16 px of background over-segmented
    return gt, pred


def test_corrective_click_lands_in_largest_mislabelled_region():
    gt, pred = corrective_scene()
    region_b = np.zeros_like(gt, dtype=bool)
    region_b[14:19, 14:19] = True
    region_bg = np.zeros_like(gt, dtype=bool)
    region_bg[14:16, 2:10] = True
    cfg = DDGConfig(decreasing_probability=False, **NO_RULES_3_4)
    user = TrainingVirtualUser(2, cfg, rng=12)
    centre_hits = 0
    for _ in range(300):
        ep = user.start(gt)
        user.next_round(None)
        clicks = {c.label: c for c in user.next_round(pred)}
        assert set(clicks) == {0, 1}
        assert region_b[pixel(clicks[1])]
        assert region_bg[pixel(clicks[0])]
        centre_hits += pixel(clicks[1]) == (16, 16)
        comp_b = ep.component_labels[16, 16]
        assert ep.click_counts[comp_b - 1] == 2  # attributed to the gt component B
    assert centre_hits / 300 == pytest.approx(3 / 35, abs=0.05)


def test_corrective_round_without_prediction_uses_largest_component():
    gt, _ = corrective_scene()
    user = TrainingVirtualUser(2, DDGConfig(decreasing_probability=False, **NO_RULES_3_4), rng=1)
    user.start(gt)
    user.next_round(None)
    clicks = {c.label: c for c in user.next_round(None)}
    y, x = pixel(clicks[1])
    assert 1 <= y < 11 and 1 <= x < 11  # component A (the largest of class 1)


def test_perfect_prediction_gives_no_corrective_clicks():
    gt = multi_gt()
    user = TrainingVirtualUser(N_CLASSES, DDGConfig(decreasing_probability=False, **NO_RULES_3_4), rng=0)
    user.start(gt)
    user.next_round(None)
    assert user.next_round(gt.copy()) == []


# --------------------------------------------------------------------------- SDG


def test_sdg_counts_per_component_within_bounds():
    gt = multi_gt()
    gt[0, 23] = 1
    gt[1, 23] = 1  # a 2-pixel component: at most 2 distinct clicks
    comps = components(gt)
    cfg = DDGConfig(max_clicks_per_component=3, **NO_RULES_3_4)
    rng = np.random.default_rng(14)
    big_counts = Counter()
    for _ in range(300):
        clicks = sdg_clicks(gt, N_CLASSES, cfg, rng)
        assert_on_right_class(clicks, gt)
        assert len({pixel(c) for c in clicks}) == len(clicks)  # without replacement
        for c, cmask in comps:
            n = sum(1 for k in clicks if k.label == c and cmask[pixel(k)])
            assert 1 <= n <= min(3, cmask.sum())
            if cmask.sum() == 1:
                assert n == 1
        big = comps[0][1]
        big_counts[sum(1 for k in clicks if k.label == 0 and big[pixel(k)])] += 1
    assert set(big_counts) == {1, 2, 3}
    for v in big_counts.values():
        assert v / 300 == pytest.approx(1 / 3, abs=0.1)


def test_sdg_single_click_follows_probability_map():
    gt = np.zeros((7, 7), dtype=np.int64)
    gt[1:6, 1:6] = 1
    cfg = DDGConfig(max_clicks_per_component=1, **NO_RULES_3_4)
    rng = np.random.default_rng(15)
    n = 2000
    hits = 0
    for _ in range(n):
        (click,) = [c for c in sdg_clicks(gt, 2, cfg, rng) if c.label == 1]
        hits += pixel(click) == (3, 3)
    assert hits / n == pytest.approx(3 / 35, abs=0.025)


def test_sdg_applies_rules_3_and_4():
    gt = multi_gt()
    rng = np.random.default_rng(16)
    for _ in range(30):
        clicks = sdg_clicks(gt, N_CLASSES, DDGConfig(drop_class=True, drop_fraction=0.0), rng)
        assert len({c.label for c in clicks}) == N_CLASSES - 1
    cfg = DDGConfig(max_clicks_per_component=1, drop_class=False, drop_fraction=0.8)
    kept = sum(len(sdg_clicks(gt, N_CLASSES, cfg, rng)) for _ in range(1000))
    assert kept / 8000 == pytest.approx(0.2, abs=0.02)


# --------------------------------------------------------------------------- evaluation user


def test_evaluation_user_clicks_at_distance_maximum_of_largest_region():
    gt, pred = corrective_scene()
    user = EvaluationUser(2)
    clicks = user.next_round(gt, pred)
    assert clicks == [Click(0, 14.0, 2.0), Click(1, 16.0, 16.0)]
    region_b = np.zeros_like(gt, dtype=bool)
    region_b[14:19, 14:19] = True
    assert pixel(clicks[1]) == central_click(region_b)
    assert user.next_round(gt, pred) == clicks  # deterministic
    assert EvaluationUser(2).next_round(gt, pred) == clicks


def test_evaluation_user_without_prediction_and_absent_classes():
    gt, pred = corrective_scene()
    user = EvaluationUser(3)  # class 2 absent from gt
    clicks = user.next_round(gt, None)
    assert [c.label for c in clicks] == [0, 1]
    assert pixel(clicks[1]) == (5, 5)  # centre of component A (largest of class 1)
    assert pixel(clicks[0]) == central_click(gt == 0)
    assert user.next_round(gt, gt.copy()) == []


def test_evaluation_user_batch_matches_single():
    gt, pred = corrective_scene()
    gts = np.stack([gt, gt.T, gt])
    preds = np.stack([pred, pred.T, gt])
    user = EvaluationUser(2)
    out = user.next_round_batch(gts, preds)
    assert out == [user.next_round(g, p) for g, p in zip(gts, preds)]
    assert out[2] == []
    assert user.next_round_batch(gts, None)[0] == user.next_round(gt, None)


# --------------------------------------------------------------------------- reproducibility, validation


def run_episode(seed: int, gt: np.ndarray, preds) -> list[list[Click]]:
    user = TrainingVirtualUser(N_CLASSES, DDGConfig(drop_fraction=0.3), rng=seed)
    user.start(gt)
    user.next_round(None)
    for p in preds:
        user.next_round(p)
    return user.history


def test_seeded_reproducibility():
    rng = np.random.default_rng(17)
    gt = blocky_gt(rng)
    preds = [rng.integers(0, N_CLASSES, size=gt.shape) for _ in range(3)]
    assert run_episode(1, gt, preds) == run_episode(1, gt, preds)
    assert any(run_episode(1, gt, preds) != run_episode(s, gt, preds) for s in (2, 3, 4))
    cfg = DDGConfig(drop_class=False, drop_fraction=0.0)
    assert sdg_clicks(gt, N_CLASSES, cfg, 5) == sdg_clicks(gt, N_CLASSES, cfg, 5)
    assert sdg_clicks(gt, N_CLASSES, cfg, 5) != sdg_clicks(gt, N_CLASSES, cfg, 6)


def test_input_validation():
    user = TrainingVirtualUser(3, DDGConfig(), rng=0)
    with pytest.raises(RuntimeError, match="start"):
        user.next_round(None)
    with pytest.raises(ValueError, match="class indices"):
        user.start(np.full((4, 4), 3))
    with pytest.raises(ValueError, match="2D"):
        user.start(np.zeros((2, 4, 4), dtype=int))
    user.start(np.zeros((4, 4)))  # integer-valued floats are accepted
    with pytest.raises(ValueError, match="shape"):
        user.next_round(np.zeros((5, 4), dtype=int))
    for bad in (
        dict(max_rounds=0),
        dict(max_clicks_per_component=0),
        dict(drop_fraction=1.5),
        dict(power=-1.0),
        dict(connectivity=3),
    ):
        with pytest.raises(ValueError):
            DDGConfig(**bad)
    with pytest.raises(ValueError):
        EvaluationUser(2).next_round(np.full((3, 3), 2))


def test_module_imports_no_gui_or_torch():
    src = Path(__file__).resolve().parents[1] / "src"
    code = (
        "import sys; import napari_simseg.core.interaction.virtual_user; "
        "bad = [m for m in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'torch') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(src)}, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr
