"""Flip averaging (test-time augmentation) of the network."""

import numpy as np
import pytest
import torch

from conftest import tiny_meta_and_model
from napari_simseg.core.network.predictor import FlipEnsemble


@pytest.fixture
def net():
    return tiny_meta_and_model()[1].eval()


def test_probabilities_are_the_mean_over_the_four_flips(net):
    x = torch.randn(2, net.config.in_channels, 24, 40)
    with torch.no_grad():
        logits, state = FlipEnsemble(net)(x)
        want = 0
        for dims in ((), (-1,), (-2,), (-2, -1)):
            xi = x.flip(dims) if dims else x
            p = torch.softmax(net(xi)[0], 1)
            want = want + (p.flip(dims) if dims else p)
        want = want / 4
    torch.testing.assert_close(torch.softmax(logits, 1), want, rtol=1e-5, atol=1e-6)
    assert logits.shape == (2, 3, 24, 40)
    assert state[0][0].shape[0] == 8  # one recurrent state per flipped view


def test_the_ensemble_is_flip_equivariant(net):
    x = torch.randn(1, net.config.in_channels, 32, 32)  # no padding: exact symmetry
    ens = FlipEnsemble(net)
    with torch.no_grad():
        p = torch.softmax(ens(x)[0], 1)
        for dims in ((-1,), (-2,)):
            q = torch.softmax(ens(x.flip(dims))[0], 1)
            torch.testing.assert_close(q.flip(dims), p, rtol=1e-5, atol=1e-6)
        # the bare network is not: the ensemble does add something
        a = torch.softmax(net(x.flip(-1))[0], 1).flip(-1)
        b = torch.softmax(net(x)[0], 1)
        assert not torch.allclose(a, b, atol=1e-4)


def test_recurrent_state_is_carried_per_view(net):
    ens = FlipEnsemble(net)
    x = torch.randn(2, net.config.in_channels, 24, 24)
    with torch.no_grad():
        _, s1 = ens(x)
        a, _ = ens(x, s1)
        b, _ = ens(x, None)
        # round 2 with round 1's state differs from a fresh start
        assert not torch.allclose(a, b)
        # view k of the state is the bare network's state on flip k
        _, s_plain = net(x.flip(-1))
        torch.testing.assert_close(s1[0][0][2:4], s_plain[0][0])


def test_predictor_and_session_flip_by_default_and_can_run_once(tiny_checkpoint, small_volume):
    from napari_simseg.core.network.predictor import Predictor
    from napari_simseg.core.session.interactive import InteractiveSession

    on, off = Predictor(tiny_checkpoint, device="cpu"), Predictor(tiny_checkpoint, device="cpu", tta=False)
    assert on.tta and not off.tta
    x = np.random.default_rng(0).normal(size=(on.in_channels, 20, 28)).astype(np.float32)
    p_on, _ = on.predict(x)
    p_off, _ = off.predict(x)
    with torch.no_grad():
        raw = torch.softmax(off.network(torch.from_numpy(x[None]))[0], 1)[0].numpy()
    np.testing.assert_allclose(p_off, raw, rtol=1e-5, atol=1e-6)
    assert np.abs(p_on - p_off).max() > 1e-6  # a random tiny network is nearly flat, yet not symmetric
    np.testing.assert_allclose(p_on.sum(0), 1.0, atol=1e-5)
    session = InteractiveSession(small_volume, on)
    for r in range(3):  # the state of the four views goes round after round, undo included
        session.add_clicks(2, [(1, 12 + r, 20)])
    session.undo(2)
    session.add_clicks(2, [(2, 30, 30)])
    assert session.n_rounds(2) == 3


def test_switching_flip_averaging_drops_stored_states_but_keeps_the_work(tiny_checkpoint, small_volume):
    from napari_simseg.core.network.predictor import Predictor
    from napari_simseg.core.session.interactive import InteractiveSession

    session = InteractiveSession(small_volume, Predictor(tiny_checkpoint, device="cpu"))
    session.add_clicks(1, [(1, 10, 10)])
    session.add_clicks(1, [(2, 20, 20)])
    labels = session.get_labels()
    session.set_predictor(Predictor(tiny_checkpoint, device="cpu", tta=False))
    np.testing.assert_array_equal(session.get_labels(), labels)
    assert all(s.payload is None for s in session.memory(1).rounds)
    res = session.add_clicks(1, [(1, 30, 30)])  # the 4-view state would not fit any more
    assert res.round == 3
    session.undo(1)
    np.testing.assert_array_equal(session.get_labels(), labels)


def test_large_inputs_run_one_view_at_a_time_with_the_same_result_and_state(net, monkeypatch):
    x = torch.randn(2, net.config.in_channels, 24, 40)
    ens = FlipEnsemble(net)
    with torch.no_grad():
        want1, s1 = ens(x)
        want2, s2 = ens(x, s1)
        assert not ens.one_view_at_a_time(2, 24, 40)
        monkeypatch.setattr(FlipEnsemble, "ONE_CALL_PIXELS", 4 * 24 * 40)  # below 4 views x 2 inputs
        assert ens.one_view_at_a_time(2, 24, 40)
        calls = []
        real = net.forward
        monkeypatch.setattr(net, "forward", lambda v, st=None: (calls.append(v.shape[0]), real(v, st))[1])
        got1, t1 = ens(x)
        got2, t2 = ens(x, t1)
    assert calls == [2] * 8  # four calls of one view per round
    torch.testing.assert_close(got1, want1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got2, want2, rtol=1e-5, atol=1e-5)
    for (h, c), (hw, cw) in zip(t2, s2):
        torch.testing.assert_close(h, hw, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(c, cw, rtol=1e-5, atol=1e-5)


def test_the_memory_guard_counts_one_view_for_a_large_region(tiny_checkpoint):
    from napari_simseg.core.network.predictor import Predictor

    pred = Predictor(tiny_checkpoint, device="cpu")
    small, large = pred.required_bytes(1, 100, 100), pred.required_bytes(1, 1000, 1100)
    assert pred.views == 4 and FlipEnsemble.ONE_CALL_PIXELS < 4 * 1000 * 1100
    assert large < 110 * small / 2  # 110x the pixels, about a quarter of the memory per pixel
