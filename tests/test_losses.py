import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_simseg.core.engine.losses import FocalLoss, class_weights_from_counts


def _data(seed=0, b=2, n=4, h=6, w=5, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, n, h, w, generator=g) * scale
    target = torch.randint(0, n, (b, h, w), generator=g)
    return logits, target


def test_gamma_zero_without_weights_equals_cross_entropy():
    logits, target = _data()
    fl = FocalLoss(gamma=0.0)(logits, target)
    ce = F.cross_entropy(logits, target)
    torch.testing.assert_close(fl, ce)


def test_gamma_zero_with_weights_is_weighted_sum_over_pixel_count():
    logits, target = _data(1)
    w = torch.tensor([0.2, 1.0, 2.0, 0.8])
    fl = FocalLoss(w, gamma=0.0)(logits, target)
    expected = F.cross_entropy(logits, target, weight=w, reduction="sum") / target.numel()
    torch.testing.assert_close(fl, expected)


def test_matches_manual_focal_formula():
    logits, target = _data(2)
    w = torch.tensor([1.0, 0.5, 3.0, 2.0])
    p = logits.softmax(1).gather(1, target[:, None]).squeeze(1)
    manual = (-w[target] * (1 - p) ** 2 * p.log()).mean()
    torch.testing.assert_close(FocalLoss(w, gamma=2.0)(logits, target), manual)


def test_focal_below_ce_for_confident_correct_predictions():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    logits = torch.zeros(1, 3, 4, 4)
    logits[:, 0] = 4.0  # p_t ~ 0.96
    ce = F.cross_entropy(logits, target)
    fl = FocalLoss(gamma=2.0)(logits, target)
    assert 0 < fl < ce
    p = torch.softmax(logits, 1)[0, 0, 0, 0]
    torch.testing.assert_close(fl, ce * (1 - p) ** 2)
    # a misclassified pixel is barely down-weighted: ratio close to 1
    bad = FocalLoss(gamma=2.0)(-logits, target) / F.cross_entropy(-logits, target)
    assert bad > 0.9


def test_weights_change_the_loss():
    logits, target = _data(3)
    plain = FocalLoss(gamma=2.0)(logits, target)
    weighted = FocalLoss(torch.tensor([5.0, 1.0, 1.0, 1.0]), gamma=2.0)(logits, target)
    assert not torch.isclose(plain, weighted)
    assert weighted > plain  # class 0 is present and up-weighted


def test_ignore_index_pixels_have_no_loss_or_gradient():
    logits, target = _data(4)
    target[0, :3] = 255
    logits.requires_grad_(True)
    loss = FocalLoss(gamma=0.0, ignore_index=255)(logits, target)
    torch.testing.assert_close(loss, F.cross_entropy(logits, target, ignore_index=255))
    loss.backward()
    assert (logits.grad[0, :, :3] == 0).all()
    assert (logits.grad[0, :, 3:] != 0).any()
    # nothing valid: zero, still differentiable
    all_ignored = torch.full_like(target, 255)
    z = FocalLoss(ignore_index=255)(logits, all_ignored)
    assert z.item() == 0.0 and z.requires_grad


def test_gradients_finite_for_extreme_logits():
    logits, target = _data(5, scale=1e4)
    logits.requires_grad_(True)
    loss = FocalLoss(torch.ones(4), gamma=2.0)(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_cpu_gives_finite_float32_loss(dtype):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 1)
    x = torch.randn(2, 3, 8, 8) * 50
    target = torch.randint(0, 4, (2, 8, 8))
    loss_fn = FocalLoss(torch.tensor([0.5, 1.0, 1.5, 1.0]), gamma=2.0)
    ref = loss_fn(conv(x), target)
    with torch.autocast("cpu", dtype=dtype):
        logits = conv(x)
        assert logits.dtype == dtype
        loss = loss_fn(logits, target)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, ref, rtol=0.05, atol=0.05)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in conv.parameters())


def test_weights_are_a_buffer_and_shapes_are_checked():
    fl = FocalLoss([1.0, 2.0, 3.0])
    assert "class_weights" in fl.state_dict()
    logits, target = _data(6, n=4)
    with pytest.raises(ValueError):
        fl(logits, target)  # 3 weights for 4 classes
    with pytest.raises(ValueError):
        FocalLoss()(logits, target[:, :-1])
    with pytest.raises(ValueError):
        FocalLoss(gamma=-1)


def test_inverse_frequency_weights_normalised_to_mean_one():
    w = class_weights_from_counts([90, 9, 1])
    assert w.dtype == torch.float32 and w.shape == (3,)
    assert w.mean().item() == pytest.approx(1.0)
    inv = np.array([100 / 90, 100 / 9, 100 / 1])
    np.testing.assert_allclose(w.numpy(), inv * 3 / inv.sum(), rtol=1e-6)
    assert w[2] > w[1] > w[0]


def test_median_frequency_weights():
    raw = class_weights_from_counts([80, 15, 5], method="median_frequency", normalize=False)
    # median frequency 0.15 -> weights 0.15/0.8, 1, 0.15/0.05
    np.testing.assert_allclose(raw.numpy(), [0.1875, 1.0, 3.0], rtol=1e-6)
    # differs from inverse frequency only by a factor: same once normalised
    torch.testing.assert_close(
        class_weights_from_counts([80, 15, 5], method="median_frequency"),
        class_weights_from_counts([80, 15, 5]),
    )


def test_zero_count_class_gets_max_weight_with_warning():
    with pytest.warns(UserWarning, match=r"\[2\]"):
        w = class_weights_from_counts(np.array([90, 10, 0]), normalize=False)
    assert w[2] == w.max() == w[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        class_weights_from_counts([1, 1])  # no warning without zero counts


@pytest.mark.parametrize(
    "counts, method",
    [
        ([0, 0], "inverse_frequency"),
        ([1, -1], "inverse_frequency"),
        ([1, 1], "bogus"),
        ([], "inverse_frequency"),
    ],
)
def test_class_weights_reject_bad_input(counts, method):
    with pytest.raises(ValueError):
        class_weights_from_counts(counts, method=method)


def test_inverse_sqrt_frequency_is_gentler():
    from napari_simseg.core.engine.losses import class_weights_from_counts

    counts = [970, 15, 15]
    inv = class_weights_from_counts(counts, "inverse_frequency")
    sq = class_weights_from_counts(counts, "inverse_sqrt_frequency")
    assert float(sq.mean()) == pytest.approx(1.0)
    assert sq[1] > sq[0] and float(sq[1] / sq[0]) == pytest.approx((970 / 15) ** 0.5, rel=1e-4)
    assert float(inv[1] / inv[0]) > float(sq[1] / sq[0])


def _soft_dice_manual(logits, target, classes):
    p = logits.softmax(1)
    vals = []
    for c in classes:
        g = (target == c).float()
        vals.append((2 * (p[:, c] * g).sum() + 1) / (p[:, c].sum() + g.sum() + 1))
    return 1 - torch.stack(vals).mean()


def test_soft_dice_matches_the_batch_pooled_formula_over_foreground_classes():
    from napari_simseg.core.engine.losses import SoftDiceLoss

    logits, target = _data(7)
    torch.testing.assert_close(SoftDiceLoss()(logits, target), _soft_dice_manual(logits, target, (1, 2, 3)))
    torch.testing.assert_close(SoftDiceLoss(include_background=True)(logits, target),
                               _soft_dice_manual(logits, target, (0, 1, 2, 3)))


def test_soft_dice_is_zero_for_a_perfect_prediction_and_near_one_for_a_wrong_one():
    from napari_simseg.core.engine.losses import SoftDiceLoss

    _, target = _data(8, h=16, w=16)
    onehot = F.one_hot(target, 4).movedim(-1, 1).float()
    assert float(SoftDiceLoss()(onehot * 40, target)) == pytest.approx(0.0, abs=1e-6)
    wrong = torch.roll(onehot, 1, dims=1)  # every pixel confidently another class
    assert float(SoftDiceLoss()(wrong * 40, target)) > 0.99


def test_soft_dice_ignores_padded_pixels_and_has_finite_gradients():
    from napari_simseg.core.engine.losses import SoftDiceLoss

    logits, target = _data(9)
    padded = target.clone()
    padded[:, :2] = 255
    loss_fn = SoftDiceLoss(ignore_index=255)
    changed = logits.clone()
    changed[:, :, :2] = torch.randn_like(changed[:, :, :2]) * 50  # only the ignored pixels
    torch.testing.assert_close(loss_fn(logits, padded), loss_fn(changed, padded))
    kept = _soft_dice_manual(logits[:, :, 2:], target[:, 2:], (1, 2, 3))
    torch.testing.assert_close(loss_fn(logits, padded), kept)
    x = logits.half().requires_grad_()
    loss_fn(x, padded).backward()
    assert torch.isfinite(x.grad).all() and x.grad[:, :, :2].abs().max() == 0


def test_focal_dice_is_focal_plus_weighted_dice_and_checks_its_inputs():
    from napari_simseg.core.engine.losses import FocalDiceLoss, SoftDiceLoss

    logits, target = _data(10)
    focal, dice = FocalLoss(gamma=2.0), SoftDiceLoss()
    torch.testing.assert_close(FocalDiceLoss(focal, dice, 0.3)(logits, target),
                               focal(logits, target) + 0.3 * dice(logits, target))
    with pytest.raises(ValueError, match="dice_weight must be > 0"):
        FocalDiceLoss(focal, dice, 0.0)
    with pytest.raises(ValueError, match="do not match"):
        dice(logits, target[:, :-1])
    with pytest.raises(ValueError, match="at least one foreground class"):
        dice(logits[:, :1], target.clamp(max=0))
