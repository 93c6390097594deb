"""Corrective starts: training items whose first clicks correct their automatic result,
as the first round of a session's user (and of the evaluation user) does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_simseg.core.engine.train_config import TrainConfig
from napari_simseg.core.interaction.virtual_user import DDGConfig, TrainingVirtualUser
from training_helpers import simulate


def _gt():
    gt = np.zeros((32, 32), np.int64)
    gt[4:14, 4:14] = 1
    gt[18:28, 16:30] = 2
    return gt


def test_a_corrective_first_round_clicks_only_in_the_automatic_results_errors():
    gt = _gt()
    auto = gt.copy()
    auto[4:14, 4:9] = 0  # half of class 1 missed; class 2 and the background right
    cfg = DDGConfig(drop_class=False, drop_fraction=0.0)
    user = TrainingVirtualUser(3, cfg, rng=0)
    user.start(gt)
    clicks = user.next_round(auto, correct_first=True)
    assert [c.label for c in clicks] == [1]
    assert 4 <= clicks[0].y < 14 and 4 <= clicks[0].x < 9  # inside the missed part
    assert user.p < 1  # rule 2 goes on as after a first round
    # step a) instead: a click in every component of every class, wherever the prediction is right
    plain = TrainingVirtualUser(3, cfg, rng=0)
    plain.start(gt)
    assert sorted(c.label for c in plain.next_round(auto)) == [0, 1, 2]
    # a perfect automatic result leaves nothing to correct; no prediction is refused
    perfect = TrainingVirtualUser(3, cfg, rng=0)
    perfect.start(gt)
    assert perfect.next_round(gt, correct_first=True) == []
    blind = TrainingVirtualUser(3, cfg, rng=0)
    blind.start(gt)
    with pytest.raises(ValueError, match="correct_first needs the prediction"):
        blind.next_round(None, correct_first=True)


def _spy_net():
    from conftest import tiny_meta_and_model
    from test_training import _Spy

    return _Spy(tiny_meta_and_model(radius=0)[1])


def _first_round_clicks(fraction, seed=1):
    n, b = 3, 8
    batch = {"image": torch.randn(b, 1, 32, 32), "labels": torch.from_numpy(np.stack([_gt()] * b))}
    cfg = TrainConfig(data="x", out="y", memory="sim", depth=3, max_clicks=1, click_radius=0, drop_fraction=0.0,
                      drop_class=False, decreasing_probability=False, auto_fraction=0.0, mix_rounds=True,
                      corrective_start_fraction=fraction).validate()
    spy = _spy_net()
    simulate(spy, batch, cfg, n, np.random.default_rng(seed))
    clicks = spy.calls[-1]["x"][:, 1:1 + 2 * n * 3].reshape(b, 3, 2, n, 32, 32)[:, -1, 0]  # newest state's clicks
    return spy, clicks, batch["labels"].numpy()


def test_training_items_with_a_corrective_start_click_where_their_automatic_result_is_wrong():
    spy, clicks, gts = _first_round_clicks(1.0)
    assert len(spy.calls) == 2  # the automatic forward, then the training forward
    auto_call, train_call = spy.calls
    assert not auto_call["grad"] and not auto_call["state"] and auto_call["batch"] == 8
    assert auto_call["x"][:, 1:].abs().sum() == 0  # the automatic input: the image alone
    assert train_call["grad"] and not train_call["state"]  # the automatic result leaves no LSTM state
    spy.net.eval()  # as it ran (the training forward left it in train mode)
    with torch.no_grad():
        auto = spy.net(auto_call["x"])[0].argmax(1).numpy()
    assert clicks.sum() > 0
    for i in range(len(gts)):
        for c in range(3):
            ys, xs = np.nonzero(clicks[i, c].numpy())
            assert (gts[i][ys, xs] == c).all() and (auto[i][ys, xs] != c).all()
    # without corrective starts the first round is step a): every class gets its click
    # in every item, wherever the network would be right
    spy, plain, _ = _first_round_clicks(0.0)
    assert len(spy.calls) == 1
    assert (plain.flatten(2).sum(-1) > 0).all()


def test_corrective_starts_need_mixed_ddg_rounds_and_a_fraction():
    with pytest.raises(ValueError, match="corrective_start_fraction needs"):
        TrainConfig(data="x", out="y", corrective_start_fraction=0.5).validate()  # the paper's per-batch DDG
    with pytest.raises(ValueError, match="corrective_start_fraction must be a number in"):
        TrainConfig(data="x", out="y", mix_rounds=True, corrective_start_fraction=1.5).validate()
