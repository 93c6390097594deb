
import numpy as np
import pytest

from napari_simseg.core.interaction.clicks import ClickError
from napari_simseg.core.network.predictor import Predictor
from napari_simseg.core.session.interactive import ImageError, InteractiveSession, load_log, replay_log


@pytest.fixture
def session(tiny_checkpoint, small_volume):
    return InteractiveSession(small_volume, Predictor(tiny_checkpoint, device="cpu"))


def test_round_changes_only_its_slice(session):
    before = session.get_labels()
    res = session.add_clicks(2, [(1, 15, 20), (2, 30, 40), (0, 2, 2)])
    after = session.get_labels()
    assert res.labels.shape == (40, 48) and res.probabilities.shape == (3, 40, 48)
    np.testing.assert_allclose(res.probabilities.sum(0), 1, atol=1e-5)
    np.testing.assert_array_equal(after[2], res.labels)
    for z in (0, 1, 3):
        np.testing.assert_array_equal(after[z], before[z])
    assert session.n_rounds(2) == 1 and res.round == 1


def test_undo_redo_restore_labels_exactly(session):
    r1 = session.add_clicks(1, [(1, 15, 20)]).labels
    r2 = session.add_clicks(1, [(2, 5, 5)]).labels
    np.testing.assert_array_equal(session.undo(1), r1)
    np.testing.assert_array_equal(session.redo(1), r2)
    session.undo(1)
    np.testing.assert_array_equal(session.undo(1), np.zeros_like(r1))
    with pytest.raises(RuntimeError, match="nothing to undo"):
        session.undo(1)


class _StatelessPredictor(Predictor):
    """Drops the recurrent state: what the session would do if it forgot to pass it."""

    def predict(self, inputs, state=None):
        return super().predict(inputs, None)


def test_recurrent_state_is_carried_restored_and_reset(tiny_checkpoint, small_volume):
    s = InteractiveSession(small_volume, Predictor(tiny_checkpoint, device="cpu"))
    ref = InteractiveSession(small_volume, _StatelessPredictor(tiny_checkpoint, device="cpu"))
    a = s.add_clicks(0, [(1, 15, 20)]).probabilities
    np.testing.assert_array_equal(a, ref.add_clicks(0, [(1, 15, 20)]).probabilities)  # round 1: zero state
    b = s.add_clicks(0, [(2, 5, 5)]).probabilities
    b_ref = ref.add_clicks(0, [(2, 5, 5)]).probabilities
    assert not np.allclose(b, b_ref)  # same memory input: only the carried LSTM state differs
    # undo restores the state of round 1: redoing round 2 by hand gives the same output
    s.undo(0)
    s._memories[0]._redo.clear()
    np.testing.assert_array_equal(s.add_clicks(0, [(2, 5, 5)]).probabilities, b)
    s.reset_slice(0)
    c = s.add_clicks(0, [(1, 15, 20)]).probabilities
    np.testing.assert_array_equal(a, c)  # reset really forgot everything
    assert s.n_rounds(0) == 1


def test_failed_round_keeps_redo(session, monkeypatch):
    session.add_clicks(0, [(1, 15, 20)])
    session.add_clicks(0, [(2, 5, 5)])
    session.undo(0)

    def boom(*a, **k):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(session.predictor, "predict", boom)
    with pytest.raises(RuntimeError, match="out of memory"):
        session.add_clicks(0, [(1, 1, 1)])
    assert session.n_rounds(0) == 1 and session.memory(0).can_redo


def test_bad_clicks_change_nothing(session):
    session.add_clicks(0, [(1, 5, 5)])
    labels = session.get_labels()
    with pytest.raises(ClickError, match="outside the 40x48"):
        session.add_clicks(0, [(1, 5, 5), (1, 100, 5)])
    with pytest.raises(ClickError, match="unknown class index 7"):
        session.add_clicks(0, [(7, 5, 5)])
    assert session.n_rounds(0) == 1
    np.testing.assert_array_equal(session.get_labels(), labels)
    with pytest.raises(IndexError, match="outside the image"):
        session.add_clicks(9, [(1, 5, 5)])


@pytest.mark.parametrize(
    "image,match",
    [
        (np.zeros((4, 5, 6, 7)), "2D .* or 3D"),
        (np.zeros((10, 12, 3, 2)), "2D .* or 3D"),
        (np.zeros((64, 64, 3)), "RGB"),
        (np.zeros((64, 64, 4)), "RGB"),
        (np.zeros((0, 10, 10)), "empty"),
        (np.full((10, 10), np.nan), "NaN"),
        (np.ones((2, 10, 10)), "constant"),
    ],
)
def test_bad_images_are_refused(tiny_checkpoint, image, match):
    with pytest.raises(ImageError, match=match):
        InteractiveSession(image, Predictor(tiny_checkpoint, device="cpu"))


def test_2d_image_and_auto(tiny_checkpoint, small_volume):
    s = InteractiveSession(small_volume[0], Predictor(tiny_checkpoint, device="cpu"))
    labels = s.predict_auto()
    assert labels.shape == (40, 48)
    res = s.add_clicks(None, [(1, 10, 10)])
    assert res.labels.shape == (40, 48)
    # undo back to zero rounds shows the automatic result again
    np.testing.assert_array_equal(s.undo(0), labels)


def test_auto_volume_is_batched_with_progress_and_matches_single(session):
    seen = []
    vol = session.predict_auto(batch_size=3, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(0, 4), (3, 4), (4, 4)]
    single = session.predict_auto(slice_index=1)
    np.testing.assert_array_equal(single, vol[1])


def test_auto_skips_slices_with_rounds(session):
    mine = session.add_clicks(2, [(2, 10, 10)]).labels
    session.predict_auto()
    np.testing.assert_array_equal(session.get_labels()[2], mine)


def test_log_replays_bit_for_bit(tmp_path, tiny_checkpoint, small_volume):
    s = InteractiveSession(small_volume, Predictor(tiny_checkpoint, device="cpu"))
    s.predict_auto(batch_size=2)
    s.add_clicks(1, [(1, 15, 20), (2, 3, 3)])
    s.add_clicks(1, [(0, 30, 30)])
    s.undo(1)
    s.redo(1)
    s.add_clicks(3, [(2, 12, 12)])
    s.reset_slice(0)
    path = s.save_log(tmp_path / "log.json")
    doc = load_log(path)
    clicks = [e for e in doc["events"] if e["action"] == "clicks"]
    assert clicks[0]["slice"] == 1 and clicks[0]["round"] == 1
    assert clicks[0]["clicks"][0] == {"class": 1, "y": 15.0, "x": 20.0}
    assert all("time" in e for e in doc["events"])
    fresh = InteractiveSession(small_volume, Predictor(tiny_checkpoint, device="cpu"))
    replay_log(fresh, path)
    np.testing.assert_array_equal(fresh.get_labels(), s.get_labels())
    assert fresh.n_rounds(1) == 2


def test_log_with_other_classes_is_refused(tmp_path, session, make_checkpoint, small_volume):
    session.add_clicks(0, [(1, 5, 5)])
    path = session.save_log(tmp_path / "log.json")
    other = make_checkpoint(class_names=("background", "x", "y", "z"))
    s2 = InteractiveSession(small_volume, Predictor(other, device="cpu"))
    with pytest.raises(ValueError, match="log was made with classes"):
        replay_log(s2, path)


def test_set_predictor_keeps_memories(tiny_checkpoint, small_volume, make_checkpoint):
    s = InteractiveSession(small_volume, Predictor(tiny_checkpoint, device="cpu"))
    s.add_clicks(0, [(1, 15, 20)])
    s.set_predictor(Predictor(tiny_checkpoint, device="cpu"))
    assert s.n_rounds(0) == 1
    s.add_clicks(0, [(2, 5, 5)])
    assert s.memory(0).rounds[0].payload is not None
    with pytest.raises(ValueError, match="same classes"):
        s.set_predictor(Predictor(make_checkpoint(class_names=("background", "x")), device="cpu"))


def test_clicked_pixels_show_their_class_until_undone(tiny_checkpoint, small_volume):
    from napari_simseg.core.interaction.refinement import Refinement
    from napari_simseg.core.session.interactive import InteractiveSession

    # the network's rounds as they are: this is about honouring clicks, not the refinement
    plain = InteractiveSession(small_volume, tiny_checkpoint, device="cpu", honour_clicks=False,
                               refinement=Refinement.off())
    honoured = InteractiveSession(small_volume, tiny_checkpoint, device="cpu", refinement=Refinement.off())
    # a random network: find a pixel whose argmax is not class 2, and click class 2 there
    first = plain.add_clicks(1, [(1, 5, 5)])
    y, x = map(int, np.argwhere(first.labels != 2)[0])
    a = plain.add_clicks(1, [(2, y, x)])
    honoured.add_clicks(1, [(1, 5, 5)])
    b = honoured.add_clicks(1, [(2, y, x)])
    np.testing.assert_array_equal(a.probabilities, b.probabilities)  # the network is untouched
    np.testing.assert_array_equal(a.labels, a.probabilities.argmax(0))
    assert b.labels[y, x] == 2 and b.labels[5, 5] == 1
    diff = np.argwhere(a.labels != b.labels).tolist()
    assert all(p in ([y, x], [5, 5]) for p in diff)
    assert honoured.get_labels()[1, y, x] == 2
    honoured.undo(1)
    assert honoured.get_labels()[1, 5, 5] == 1  # round 1's click is still honoured
    np.testing.assert_array_equal(honoured.get_labels()[1], honour_expected(honoured, 1))


def honour_expected(session, idx):
    labels = session.memory(idx).last.probabilities.argmax(0).astype(np.uint8)
    for state in session.memory(idx).rounds:
        for c, y, x in state.meta["click_list"]:
            labels[int(round(y)), int(round(x))] = c
    return labels


def test_a_log_replays_with_the_refinement_it_was_shown_with(tiny_checkpoint, small_volume, tmp_path):
    """Labels come back as they were shown: the log records the session's refinement and a
    replay uses it (then the session's own again); a log without one replays the network's
    labels as they were; a broken entry is refused by name."""
    import json

    from napari_simseg.core.interaction.refinement import Refinement
    from napari_simseg.core.session.interaction_log import LogError, load_log
    from napari_simseg.core.session.interactive import InteractiveSession, replay_log

    loose = Refinement(locality="connected", follow_clicks=False, min_lead=0.0)
    s = InteractiveSession(small_volume, tiny_checkpoint, device="cpu", refinement=loose)
    s.add_clicks(1, [(1, 5, 5)])
    s.add_clicks(1, [(2, 20, 20), (1, 10, 30)])
    path = s.save_log(tmp_path / "a.simseg.json")
    # recorded as the session ran it: the zoom resolved for the checkpoint (1: no focus views)
    # (and the network rounds: the tiny checkpoint chose none)
    assert load_log(path)["refinement"] == {**loose.to_dict(), "zoom": 1.0, "network_rounds": 0}
    fresh = InteractiveSession(small_volume, tiny_checkpoint, device="cpu")
    replay_log(fresh, path)
    np.testing.assert_array_equal(fresh.get_labels(), s.get_labels())
    assert fresh.refinement == Refinement(zoom=1.0, network_rounds=0)  # its own again after the replay

    doc = json.loads(path.read_text())
    del doc["refinement"]  # a log from before the refinement
    off = InteractiveSession(small_volume, tiny_checkpoint, device="cpu", refinement=Refinement.off())
    off.add_clicks(1, [(1, 5, 5)])
    off.add_clicks(1, [(2, 20, 20), (1, 10, 30)])
    old = InteractiveSession(small_volume, tiny_checkpoint, device="cpu")
    replay_log(old, doc)
    np.testing.assert_array_equal(old.get_labels(), off.get_labels())

    doc["refinement"] = {"locality": "everywhere"}
    with pytest.raises(LogError, match="refinement.*locality"):
        replay_log(InteractiveSession(small_volume, tiny_checkpoint, device="cpu"), doc)
    doc["refinement"] = {"radius": 3}
    with pytest.raises(LogError, match="unknown refinement setting.*radius"):
        replay_log(InteractiveSession(small_volume, tiny_checkpoint, device="cpu"), doc)
