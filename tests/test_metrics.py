import numpy as np
import pytest

from napari_simseg.core.imaging.metrics import confusion_counts, dice_iou_from_confusion, dice_iou_per_class, noc


def test_confusion_counts_orientation_rows_are_gt():
    gt = np.array([[0, 0, 0], [1, 2, 2]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    cm = confusion_counts(pred, gt, 3)
    expected = np.array(
        [
            [1, 2, 0],  # gt 0: one predicted 0, two predicted 1
            [0, 1, 0],
            [1, 0, 1],  # gt 2: one predicted 0, one predicted 2
        ]
    )
    np.testing.assert_array_equal(cm, expected)
    assert cm.dtype == np.int64
    assert cm.sum() == gt.size


def test_confusion_counts_includes_unused_classes():
    cm = confusion_counts(np.zeros(4, int), np.zeros(4, int), 5)
    assert cm.shape == (5, 5)
    assert cm[0, 0] == 4 and cm.sum() == 4


@pytest.mark.parametrize(
    "pred, gt, exc",
    [
        (np.zeros((2, 2), int), np.zeros((2, 3), int), ValueError),
        (np.array([0, 3]), np.array([0, 1]), ValueError),  # 3 >= n_classes
        (np.array([0, -1]), np.array([0, 1]), ValueError),
        (np.array([0.0, 1.0]), np.array([0, 1]), TypeError),
    ],
)
def test_confusion_counts_rejects_bad_input(pred, gt, exc):
    with pytest.raises(exc):
        confusion_counts(pred, gt, 3)


def test_dice_iou_hand_computed_values():
    # class 1: |P|=2, |G|=3, |P∩G|=2 -> dice 4/5, iou 2/3
    gt = np.array([0, 1, 1, 1, 0, 0])
    pred = np.array([0, 1, 1, 0, 0, 0])
    dice, iou = dice_iou_per_class(pred, gt, 2)
    np.testing.assert_allclose(dice, [2 * 3 / (4 + 3), 4 / 5])
    np.testing.assert_allclose(iou, [3 / 4, 2 / 3])


def test_absent_class_is_nan_and_false_positive_class_is_zero():
    gt = np.array([0, 0, 1, 1])
    pred = np.array([0, 2, 1, 1])
    dice, iou = dice_iou_per_class(pred, gt, 4)
    # class 2 absent from gt but predicted: 0; class 3 absent from both: NaN
    assert dice[2] == 0 and iou[2] == 0
    assert np.isnan(dice[3]) and np.isnan(iou[3])
    assert not np.isnan(dice[:3]).any()
    # nanmean ignores the absent class
    assert np.nanmean(iou) == pytest.approx(np.mean(iou[:3]))


def test_dice_iou_3d_volume_equals_pooled_slices():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, size=(5, 16, 16))
    pred = np.where(rng.random(gt.shape) < 0.7, gt, rng.integers(0, 4, size=gt.shape))
    dice3d, iou3d = dice_iou_per_class(pred, gt, 4)
    pooled = sum(confusion_counts(p, g, 4) for p, g in zip(pred, gt))
    dice_p, iou_p = dice_iou_from_confusion(pooled)
    np.testing.assert_allclose(dice3d, dice_p)
    np.testing.assert_allclose(iou3d, iou_p)
    # dice = 2 iou / (1 + iou) holds class by class
    np.testing.assert_allclose(dice3d, 2 * iou3d / (1 + iou3d))
    assert (iou3d < 1).all() and (iou3d > 0).all()


def test_perfect_prediction_scores_one():
    gt = np.random.default_rng(1).integers(0, 3, size=(3, 8, 8)).astype(np.uint8)
    dice, iou = dice_iou_per_class(gt, gt, 3)
    np.testing.assert_array_equal(dice, 1.0)
    np.testing.assert_array_equal(iou, 1.0)


def _curves():
    # S=3 slices, R=5 rounds, N=2 classes
    c = np.zeros((3, 5, 2))
    c[0, :, 0] = [0.50, 0.86, 0.91, 0.95, 0.95]  # @85: 2 clicks, @90: 3 clicks
    c[1, :, 0] = [0.90, 0.90, 0.90, 0.90, 0.90]  # reaches both at click 1 (>= counts)
    c[2, :, 0] = [0.10, 0.20, 0.30, 0.40, 0.50]  # never: max_clicks, failure
    c[0, :, 1] = [0.0, 0.0, 0.0, 0.0, 0.88]  # @85: 5 clicks, @90: failure
    c[1, :, 1] = np.nan  # class 1 absent from slice 1: excluded
    c[2, :, 1] = [0.95, 0.95, 0.95, 0.95, 0.95]
    return c


def test_noc_means_and_failures():
    res = noc(_curves(), thresholds=(0.85, 0.90), max_clicks=20)
    assert set(res) == {0.85, 0.90}
    np.testing.assert_allclose(res[0.85]["mean"], [(2 + 1 + 20) / 3, (5 + 1) / 2])
    np.testing.assert_allclose(res[0.90]["mean"], [(3 + 1 + 20) / 3, (20 + 1) / 2])
    assert res[0.85]["failures"] == [1, 0]
    assert res[0.90]["failures"] == [1, 1]
    assert res[0.85]["n"] == [3, 2]


def test_noc_rounds_beyond_budget_are_ignored():
    c = np.zeros((1, 6, 1))
    c[0, 5, 0] = 0.99  # reached only at click 6
    assert noc(c, thresholds=[0.9], max_clicks=6)[0.9] == {"mean": [6.0], "failures": [0], "n": [1]}
    assert noc(c, thresholds=[0.9], max_clicks=5)[0.9] == {"mean": [5.0], "failures": [1], "n": [1]}


def test_noc_gt_present_excludes_zero_curves():
    c = np.zeros((2, 3, 2))
    c[:, :, 0] = 1.0
    # class 1: slice 0 never reaches (absent from gt, wrongly predicted), slice 1 at click 1
    c[1, :, 1] = 0.95
    present = np.array([[True, False], [True, True]])
    with_mask = noc(c, thresholds=[0.9], max_clicks=10, gt_present=present)[0.9]
    without = noc(c, thresholds=[0.9], max_clicks=10)[0.9]
    assert with_mask["mean"] == [1.0, 1.0] and with_mask["failures"] == [0, 0]
    assert without["mean"] == [1.0, 5.5] and without["failures"] == [0, 1]
    with pytest.raises(ValueError):
        noc(c, gt_present=np.ones((3, 2), bool))


def test_noc_class_never_present_is_nan():
    c = np.full((2, 3, 2), np.nan)
    c[:, :, 0] = 0.95
    res = noc(c, thresholds=[0.9])[0.9]
    assert res["mean"][0] == 1.0
    assert np.isnan(res["mean"][1]) and res["failures"][1] == 0 and res["n"][1] == 0


def test_noc_rejects_bad_shapes():
    with pytest.raises(ValueError):
        noc(np.zeros((3, 4)))
    with pytest.raises(ValueError):
        noc(np.zeros((1, 2, 3)), max_clicks=0)
