"""Propagation (core.session.propagation, InteractiveSession.propagate): seeds, stop rules, never
overwriting the user's slices, undo as one step, the log."""

import numpy as np
import pytest

from napari_simseg.core.interaction.clicks import Click
from napari_simseg.core.network.predictor import Predictor
from napari_simseg.core.session.interactive import InteractiveSession, load_log, replay_log
from napari_simseg.core.session.propagation import SeedRule, carried_clicks, seed_clicks

Z, H, W = 10, 32, 32


def _truth() -> np.ndarray:
    """Class 1: a disk on slices 2..7 (centre (16, 16)); class 2: a square on slices 4..5."""
    yy, xx = np.mgrid[:H, :W]
    truth = np.zeros((Z, H, W), np.uint8)
    for z in range(2, 8):
        truth[z][(yy - 16) ** 2 + (xx - 16) ** 2 <= 36] = 1
    truth[4:6, 2:8, 2:8] = 2
    return truth


class TruthPredictor(Predictor):
    """Ignores clicks: predicts the truth of the slice whose image it is given (found by
    comparing with the session's normalised volume, set as ``volume``)."""

    truth = None
    volume = None
    calls = 0

    def predict(self, inputs, state=None):
        arr = np.asarray(inputs, np.float32)
        single = arr.ndim == 3
        arr = arr[None] if single else arr
        out = []
        for x in arr:
            z = int(np.argmin(((self.volume - x[0]) ** 2).sum((1, 2))))
            out.append(np.stack([(self.truth[z] == c) for c in range(3)]).astype(np.float32))
        type(self).calls += len(arr)
        out = np.stack(out)
        return (out[0] if single else out), None


@pytest.fixture
def truth_session(tiny_checkpoint):
    rng = np.random.default_rng(1)
    volume = rng.normal(100, 20, size=(Z, H, W)).astype(np.float32)
    predictor = TruthPredictor(tiny_checkpoint, device="cpu")
    session = InteractiveSession(volume, predictor)
    predictor.truth, predictor.volume = _truth(), session.volume[0]
    return session


def test_seed_clicks_are_deepest_points_of_every_large_enough_region():
    labels = np.zeros((20, 20), np.uint8)
    labels[2:9, 2:9] = 1  # 7 x 7: centre (5, 5)
    labels[15, 15] = 1  # one pixel: below min_area
    labels[12:15, 2:5] = 2
    seeds = seed_clicks(labels, 3, SeedRule(min_area=3))
    fg = [c for c in seeds if c.label]
    assert [(c.label, c.y, c.x) for c in fg] == [(1, 5, 5), (2, 13, 3)]
    assert [c.label for c in seeds].count(0) == 1  # the background: one region
    assert all(c.label for c in seed_clicks(labels, 3, SeedRule(min_area=3), background=False))
    assert seed_clicks(np.zeros((5, 5), np.uint8), 3, SeedRule(), background=False) == []
    with pytest.raises(ValueError):
        SeedRule(min_area=0)


def test_carried_clicks_keep_each_classes_first_click_where_it_still_holds():
    previous = np.zeros((10, 10), np.uint8)
    previous[2:6, 2:6] = 1
    user = [Click(1, 3, 3), Click(0, 8, 8), Click(1, 4, 4), Click(2, 3, 4)]
    assert carried_clicks(user, previous) == [Click(1, 3, 3), Click(0, 8, 8)]  # class 2 does not hold
    previous[3, 3] = 0
    assert carried_clicks(user, previous) == [Click(0, 8, 8)]  # the first click of 1 decides


def test_propagation_carries_clicks_until_the_structure_ends(truth_session):
    s = truth_session
    s.predict_auto()
    s.add_clicks(4, [(1, 16, 16), (0, 28, 28)])
    record = s.propagate(4)
    # up: 5 .. 8 (8 follows 7, which shows the disk; 9 follows 8, which does not); down: 3, 2, 1
    assert record.slices == [1, 2, 3, 5, 6, 7, 8]
    assert s.propagated == {z: 4 for z in record.slices}
    assert [z for z, _ in record.steps] == [5, 3, 6, 2, 7, 1, 8]  # the directions take turns
    for _z, rounds in record.steps:
        assert rounds == [[Click(1, 16.0, 16.0), Click(0, 28.0, 28.0)]]
    # seeds are guesses: slice 1 has no disk and its seeded pixel is not forced to class 1
    assert s.labels[1, 16, 16] == 0 and s.is_user_edited(1) is False and s.is_user_edited(4)
    assert s.n_rounds(5) == 1 and s.user_clicks(5) == []


def test_carry_labels_seeds_a_clicked_slices_neighbours_from_its_labels(truth_session):
    s = truth_session
    s.add_clicks(4, [(1, 16, 16)])
    record = s.propagate(4, direction="up", rule=SeedRule(carry="labels", max_slices=2))
    assert record.slices == [5, 6]
    first = record.steps[0][1][0]  # seeds of slice 5: every region of slice 4 (disk, square, background)
    assert {c.label for c in first} == {0, 1, 2} and Click(1, 16, 16) in first
    assert {c.label for c in record.steps[1][1][0]} == {0, 1, 2}  # slice 5 shows the square too
    with pytest.raises(ValueError, match="carry"):
        SeedRule(carry="both")


def test_propagation_never_overwrites_the_users_slices(truth_session):
    s = truth_session
    s.add_clicks(6, [(1, 16, 16)])
    s.set_labels(2, np.zeros((H, W), np.uint8))
    before = s.get_labels()
    record = s.propagate(5)  # a slice that shows nothing: nothing to carry
    assert record.slices == [] and not s.propagations
    s.add_clicks(4, [(1, 16, 16)])
    record = s.propagate(4, stop=[3])
    assert record.slices == [5]  # 6 has the user's rounds; 3 is in stop
    np.testing.assert_array_equal(s.labels[[2, 3, 6]], before[[2, 3, 6]])
    assert s.propagate(4, direction="down").slices == [3]  # 3 is not in stop now; 2 is hand-set


def test_painted_source_is_seeded_from_its_labels(truth_session):
    s = truth_session
    painted = _truth()[5]
    record = s.propagate(5, direction="up", labels=painted, rule=SeedRule(max_slices=1))
    assert record.slices == [6]
    seeds = record.steps[0][1][0]
    assert {c.label for c in seeds} == {0, 1, 2} and Click(1, 16, 16) in seeds
    with pytest.raises(ValueError, match="labels must have shape"):
        s.propagate(5, labels=painted[:3])
    with pytest.raises(ValueError, match="direction"):
        s.propagate(5, direction="sideways")


def test_nearer_finished_slice_keeps_its_propagated_slices(truth_session):
    s = truth_session
    s.add_clicks(2, [(1, 16, 16)])
    s.propagate(2, direction="up")
    assert s.propagated == {z: 2 for z in range(3, 9)}
    s.add_clicks(7, [(1, 16, 16)])
    s.propagate(7, direction="down")
    # 6 and 5 are nearer to 7 than to 2; 4 is nearer to 2 and stops the walk
    assert s.propagated == {3: 2, 4: 2, 5: 7, 6: 7, 8: 2}


def test_undo_on_a_propagated_slice_undoes_the_whole_propagation(truth_session):
    s = truth_session
    s.predict_auto()
    auto = s.get_labels()
    s.add_clicks(4, [(2, 4, 4)])  # the square of class 2: carried while it holds (4 -> 5, 3 gets it)
    after_click = s.get_labels()
    record = s.propagate(4)
    assert record.slices
    s.add_clicks(record.slices[0], [(1, 16, 16)])  # the user takes over one propagated slice
    kept = s.labels[record.slices[0]].copy()
    labels = s.undo(record.slices[-1])  # one step: every other slice goes back
    for z in record.slices[1:]:
        np.testing.assert_array_equal(s.labels[z], after_click[z])
    np.testing.assert_array_equal(labels, auto[record.slices[-1]])
    np.testing.assert_array_equal(s.labels[record.slices[0]], kept)  # the user's work stays
    assert not s.propagations and set(s.propagated) == set()
    with pytest.raises(RuntimeError, match="no propagation"):
        s.undo_propagation()


def test_undo_propagation_and_older_propagations(truth_session):
    s = truth_session
    s.predict_auto()
    s.add_clicks(3, [(1, 16, 16)])
    first = s.propagate(3, direction="up")
    s.add_clicks(3, [(0, 1, 1)])  # the source's second round: carried with its first
    second = s.propagate(3, direction="up")
    assert second.slices == first.slices == [4, 5, 6, 7, 8]
    assert second.steps[0][1] == [[Click(1, 16.0, 16.0), Click(0, 1.0, 1.0)]]
    assert s.undo_propagation(3) == first.slices  # the newest from 3: the first one's slices come back
    assert s.propagations == [first] and set(s.propagated) == set(first.slices)
    s.add_clicks(7, [(1, 16, 16)])  # the user takes over 7; from there 6 and 5 are nearer
    later = s.propagate(7, direction="down")
    assert later.slices == [5, 6]
    s.undo(4)  # the older propagation (it still holds 4 and 8)
    assert set(s.propagated) == {5, 6}
    s.undo_propagation()  # the later one must not bring the older one back on 5 and 6
    assert s.propagated == {} and s.propagations == []


def test_cancelled_propagation_keeps_logs_and_undoes_what_it_wrote(truth_session):
    s = truth_session
    s.add_clicks(4, [(1, 16, 16)])
    gen = s.iter_propagate(4)
    assert next(gen) == (0, 9, None)  # at most 5 up (5..9) and 4 down (3..0)
    done, total, z = next(gen)
    assert (done, z) == (1, 5) and total <= 9
    gen.close()
    assert s.propagated == {5: 4}
    assert s.log[-1]["action"] == "propagate" and s.log[-1]["steps"][0]["slice"] == 5
    assert s.undo_propagation() == [5] and not s.propagated
    with pytest.raises(IndexError):
        s.iter_propagate(99)


def test_propagation_log_replays_bit_for_bit(tmp_path, tiny_checkpoint, small_volume):
    s = InteractiveSession(small_volume, Predictor(tiny_checkpoint, device="cpu"))
    s.predict_auto(batch_size=2)
    s.add_clicks(1, [(1, 15, 20), (0, 2, 2)])
    rule = SeedRule(min_area=1)
    first = s.propagate(1, rule=rule, labels=np.where(small_volume[1] > 150, 1, 0))
    if first.slices:
        s.undo(first.slices[0])
    s.propagate(1, rule=rule, labels=np.where(small_volume[1] > 150, 1, 0))
    s.add_clicks(3, [(2, 12, 12)])
    path = s.save_log(tmp_path / "log.json")
    events = [e["action"] for e in load_log(path)["events"]]
    assert events.count("propagate") == 2
    fresh = InteractiveSession(small_volume, Predictor(tiny_checkpoint, device="cpu"))
    replay_log(fresh, path)
    np.testing.assert_array_equal(fresh.get_labels(), s.get_labels())
    assert fresh.propagated == s.propagated
    for z in s.propagated:
        np.testing.assert_array_equal(fresh.memory(z).last.probabilities, s.memory(z).last.probabilities)
