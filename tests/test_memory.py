import numpy as np
import pytest

from napari_simseg.core.interaction.memory import InteractionMemory, input_channels

N, H, W = 3, 8, 10


def masks(value):
    return np.full((N, H, W), value, dtype=np.float32)


def image():
    return np.arange(H * W, dtype=np.float32).reshape(H, W)


@pytest.mark.parametrize("kind,depth,expected", [("none", 1, 4), ("cim", 1, 4), ("sim", 3, 19), ("sim", 1, 7)])
def test_channel_counts(kind, depth, expected):
    assert input_channels(kind, N, depth) == expected
    assert InteractionMemory(kind, N, (H, W), depth).network_input(image()).shape == (expected, H, W)


def test_empty_memory_is_image_then_zeros():
    for kind in ("none", "cim", "sim"):
        x = InteractionMemory(kind, N, (H, W), 2).network_input(image())
        assert x.dtype == np.float32
        np.testing.assert_array_equal(x[0], image())
        assert not x[1:].any()


def test_none_keeps_only_current_round():
    m = InteractionMemory("none", N, (H, W))
    a = np.zeros((N, H, W), np.float32)
    a[0, 1, 1] = 1
    b = np.zeros((N, H, W), np.float32)
    b[2, 3, 3] = 1
    m.push(a)
    m.set_probabilities(masks(0.5))
    m.push(b)
    x = m.network_input(image())
    np.testing.assert_array_equal(x[1:], b)


def test_cim_merges_all_rounds():
    m = InteractionMemory("cim", N, (H, W))
    a = np.zeros((N, H, W), np.float32)
    a[0, 1, 1] = 1
    b = np.zeros((N, H, W), np.float32)
    b[2, 3, 3] = 1
    m.push(a)
    m.set_probabilities(masks(0.5))
    m.push(b)
    x = m.network_input(image())
    np.testing.assert_array_equal(x[1:], np.maximum(a, b))


def test_sim_layout_channel_by_channel():
    D = 3
    m = InteractionMemory("sim", N, (H, W), D)
    # round k: clicks filled with 10k+c, probabilities with 100k+c (distinct per channel)
    for k in range(1, 5):
        clicks = np.stack([np.full((H, W), 10 * k + c, np.float32) for c in range(N)])
        m.push(clicks)
        if k < 4:  # newest round not predicted yet
            m.set_probabilities(np.stack([np.full((H, W), 100 * k + c, np.float32) for c in range(N)]))
    x = m.network_input(image())
    # states 2, 3, 4 oldest to newest; state 4's probabilities are missing -> zeros
    expected = [None]
    for _slot, k in enumerate((2, 3, 4)):
        for c in range(N):
            expected.append(10 * k + c)
        for c in range(N):
            expected.append(0 if k == 4 else 100 * k + c)
    for ch in range(1, x.shape[0]):
        assert np.all(x[ch] == expected[ch]), f"channel {ch}"


def test_sim_missing_states_are_zero_at_oldest_end():
    D = 3
    m = InteractionMemory("sim", N, (H, W), D)
    clicks = np.ones((N, H, W), np.float32)
    m.push(clicks)
    x = m.network_input(image())
    assert not x[1 : 1 + 2 * N * (D - 1)].any()  # two missing states
    np.testing.assert_array_equal(x[1 + 2 * N * (D - 1) : 1 + 2 * N * (D - 1) + N], clicks)
    assert not x[-N:].any()  # probabilities of the pending round


def test_undo_redo_reset():
    m = InteractionMemory("sim", N, (H, W), 2)
    a = masks(1)
    b = masks(2)
    m.push(a)
    m.set_probabilities(masks(0.1))
    m.push(b)
    m.set_probabilities(masks(0.2))
    before = m.network_input(image())
    m.undo()
    assert m.n_rounds == 1 and m.can_redo
    m.redo()
    np.testing.assert_array_equal(m.network_input(image()), before)
    m.undo()
    m.push(a)
    assert not m.can_redo  # a new round clears redo
    m.reset()
    assert m.n_rounds == 0 and not m.can_undo and not m.can_redo
    with pytest.raises(RuntimeError, match="nothing to undo"):
        m.undo()
    with pytest.raises(RuntimeError, match="nothing to redo"):
        m.redo()


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown memory kind 'lstm'"):
        InteractionMemory("lstm", N, (H, W))
    m = InteractionMemory("cim", N, (H, W))
    with pytest.raises(ValueError, match="shape"):
        m.push(np.zeros((N + 1, H, W)))
    with pytest.raises(ValueError, match="image slice must have shape"):
        m.network_input(np.zeros((H + 1, W)))
    with pytest.raises(RuntimeError, match="push clicks first"):
        m.set_probabilities(masks(0))
