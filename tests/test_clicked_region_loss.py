"""Training for clicks that count (issue 32): ``clicked_region_weight`` weighs the loss on the
mislabelled regions the last simulated round's clicks point at, as the evaluation's per-round
figures define them (:func:`~napari_simseg.core.imaging.metrics.clicked_regions`)."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
import torch

from napari_simseg.core.engine.data_generation import StepContext, training_step
from napari_simseg.core.engine.losses import FocalDiceLoss, FocalLoss, SoftDiceLoss
from napari_simseg.core.imaging.metrics import clicked_regions
from training_helpers import simulate, tiny_config


class _AllBackground(torch.nn.Module):
    """A network that answers background everywhere, whatever its input: the labels each
    corrective round corrects are known."""

    recurrent = False

    def __init__(self, n_classes: int):
        super().__init__()
        self.n_classes = n_classes
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, state=None):
        logits = torch.zeros(x.shape[0], self.n_classes, *x.shape[-2:])
        logits[:, 0] = 5.0
        return logits + self.bias, None


def _batch(b=3):
    labels = np.zeros((b, 32, 32), np.int64)
    labels[:, 4:14, 4:14] = 1
    labels[:, 18:28, 16:30] = 2
    labels[1, 20:24, 2:6] = 2  # a second, smaller region of class 2 on one item
    return {"image": torch.randn(b, 1, 32, 32), "labels": torch.from_numpy(labels)}


def _cfg(**kw):
    base = dict(memory="sim", depth=2, max_clicks=2, random_rounds=False, drop_fraction=0.0, drop_class=False,
                decreasing_probability=False, clicked_region_weight=3.0)
    return tiny_config("x", "y", **{**base, **kw})


@pytest.mark.parametrize("mix_rounds", [False, True])
def test_the_loss_weighs_exactly_the_regions_the_last_rounds_clicks_point_at(mix_rounds):
    batch = _batch()
    _, _, weights = simulate(_AllBackground(3), batch, _cfg(mix_rounds=mix_rounds), 3, np.random.default_rng(0))
    gt = batch["labels"].numpy()
    # round 2 corrects an all-background answer: one click per foreground class, in its largest missed region
    expected = 1.0 + 3.0 * ((gt == 1) | ((gt == 2) & ~_small_region(gt)))
    np.testing.assert_array_equal(weights.numpy(), expected)


def _small_region(gt):
    small = np.zeros(gt.shape, bool)
    small[1, 20:24, 2:6] = True
    return small


def test_a_first_round_on_an_empty_memory_is_not_weighted_and_zero_weight_is_off():
    batch = _batch()
    _, _, weights = simulate(_AllBackground(3), batch, _cfg(max_clicks=1), 3, np.random.default_rng(0))
    np.testing.assert_array_equal(weights.numpy(), 1.0)  # its clicks mark whole structures, no correction
    _, _, off = simulate(_AllBackground(3), batch, _cfg(clicked_region_weight=0.0), 3, np.random.default_rng(0))
    assert off is None


def test_the_training_step_hands_the_weights_to_the_loss():
    seen = {}

    class Recording(FocalLoss):
        def forward(self, logits, target, pixel_weights=None):
            seen["weights"] = pixel_weights
            return super().forward(logits, target, pixel_weights)

    net = _AllBackground(3)
    cfg = _cfg()
    ctx = StepContext(net, net, cfg, 3, torch.device("cpu"), nullcontext, Recording(None),
                      torch.optim.SGD(net.parameters(), lr=0.1), torch.amp.GradScaler("cpu", enabled=False))
    training_step(ctx, _batch(), np.random.default_rng(0))
    assert seen["weights"] is not None and float(seen["weights"].max()) == 4.0


def test_pixel_weights_multiply_each_pixels_focal_term():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 5, 6), torch.randint(0, 3, (2, 5, 6))
    target[0, 0, 0] = 255  # ignored: no loss whatever its weight
    weights = torch.rand(2, 5, 6) * 4
    loss = FocalLoss(None, gamma=0.0, ignore_index=255)(logits, target, weights)
    ce = torch.nn.functional.cross_entropy(logits, target.clamp_max(2), reduction="none")
    valid = target != 255
    assert torch.isclose(loss, (ce * weights * valid).sum() / valid.sum())
    ones = FocalLoss(None, gamma=2.0)(logits, target.clamp_max(2), torch.ones(2, 5, 6))
    assert torch.isclose(ones, FocalLoss(None, gamma=2.0)(logits, target.clamp_max(2)))
    combined = FocalDiceLoss(FocalLoss(None), SoftDiceLoss(), 1.0)
    t = target.clamp_max(2)
    assert torch.isclose(combined(logits, t, weights), FocalLoss(None)(logits, t, weights) + SoftDiceLoss()(logits, t))
    with pytest.raises(ValueError, match="pixel_weights"):
        FocalLoss(None)(logits, t, torch.ones(2, 5))


def test_clicked_regions_follows_the_evaluations_definition():
    gt = np.array([[1, 1, 0, 1],
                   [0, 0, 1, 0],
                   [2, 2, 2, 0]])
    before = np.array([[0, 1, 0, 0],
                       [0, 0, 0, 0],
                       [2, 0, 0, 0]])
    # the click on the missed 1 at (0, 0): its region is that pixel (4-connected; (0, 1) was right)
    assert clicked_regions(before, gt, [(1, 0, 0)]).sum() == 1
    # 8-connectivity joins (1, 2) to (0, 3): both missed 1s, touching diagonally
    assert clicked_regions(before, gt, [(1, 1, 2)]).sum() == 1
    assert clicked_regions(before, gt, [(1, 1, 2)], connectivity=2).sum() == 2
    # a click on a pixel that was already right, or outside the slice, points at nothing
    assert not clicked_regions(before, gt, [(1, 0, 1), (2, 2, 0), (1, 7, 7)]).any()
    # two clicks in one region count it once; a second class adds its own
    both = clicked_regions(before, gt, [(2, 2, 1), (2, 2, 2), (1, 0, 0)])
    np.testing.assert_array_equal(np.argwhere(both), [[0, 0], [2, 1], [2, 2]])
    with pytest.raises(ValueError, match="one shape"):
        clicked_regions(before[:2], gt, [])


def test_the_option_is_checked():
    with pytest.raises(ValueError, match="clicked_region_weight must be a number >= 0"):
        _cfg(clicked_region_weight=-1.0).validate()
    with pytest.raises(ValueError, match="clicked_region_weight must be a number >= 0"):
        _cfg(clicked_region_weight=float("nan")).validate()
    with pytest.raises(ValueError, match="needs simulation 'ddg'"):
        _cfg(simulation="sdg").validate()
    assert _cfg(clicked_region_weight="2").validate().clicked_region_weight == 2.0
