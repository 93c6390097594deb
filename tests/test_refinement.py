"""What a corrective round may change (``core.interaction.refinement``), on hand-made label
maps and on the bundled, trained model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_simseg.core.interaction.clicks import Click
from napari_simseg.core.interaction.refinement import Refinement, follow_clicks, keep_local_changes, refine_round


def _maps():
    previous = np.zeros((20, 30), int)
    previous[5:10, 5:10] = 1  # a structure of class 1, too small
    proposed = previous.copy()
    proposed[5:12, 5:12] = 1  # the network grows it where the user clicked ...
    proposed[15:18, 25:28] = 2  # ... and, far away, invents a class-2 blob
    proposed[12, 13] = 2  # ... and flips a pixel beside the click to another class
    return previous, proposed


def test_click_locality_keeps_only_the_clicked_class_near_the_click():
    previous, proposed = _maps()
    out = keep_local_changes(previous, proposed, [Click(1, 11, 11)], "click")
    assert (out[5:12, 5:12] == 1).all()  # the clicked structure grew
    assert (out[15:18, 25:28] == 0).all() and out[12, 13] == 0  # nothing else changed
    assert out.shape == previous.shape and out is not previous


def test_connected_locality_keeps_any_change_touching_a_click_and_none_keeps_all():
    previous, proposed = _maps()
    out = keep_local_changes(previous, proposed, [Click(1, 11, 11)], "connected")
    assert (out[5:12, 5:12] == 1).all() and (out[15:18, 25:28] == 0).all()
    assert out[12, 13] == 2  # another class, but connected to the click's change
    out = keep_local_changes(previous, proposed, [Click(2, 16, 26)], "connected")  # on the far blob
    assert (out[15:18, 25:28] == 2).all() and out[11, 11] == 0
    np.testing.assert_array_equal(keep_local_changes(previous, proposed, [], "none"), proposed)


def test_without_clicks_nothing_changes_and_unknown_locality_is_refused():
    previous, proposed = _maps()
    np.testing.assert_array_equal(keep_local_changes(previous, proposed, [], "click"), previous)
    with pytest.raises(ValueError, match="locality"):
        Refinement(locality="everywhere")


def test_following_a_contradicted_click_spreads_its_class_where_the_network_hesitates():
    labels = np.zeros((30, 30), int)  # the network says background everywhere
    p1 = np.full((30, 30), 0.05)
    p1[10:20, 10:20] = 0.45  # ... but hesitates on a 10 x 10 square
    log_p = np.log(np.stack([1 - p1, p1]))
    out = follow_clicks(labels, log_p, [Click(1, 15, 15)])
    assert (out[12:18, 12:18] == 1).all()  # the hesitant pixels near the click follow it
    assert (out[:8] == 0).all() and (out[:, :8] == 0).all()  # confident background stays
    assert out[15, 15] == 1
    # a click the labels already follow changes nothing
    np.testing.assert_array_equal(follow_clicks(out, log_p, [Click(1, 15, 15)]), out)


def test_changes_the_network_is_unsure_of_keep_their_old_label():
    previous = np.zeros((4, 4), int)
    proposed = np.ones((4, 4), int)
    p1 = np.full((4, 4), 0.9)
    p1[0] = 0.6  # the top row flips with a lead of log(1.5) only
    log_p = np.log(np.stack([1 - p1, p1]))
    from napari_simseg.core.interaction.refinement import confident_changes

    out = confident_changes(previous, proposed, log_p, np.log(4.0))
    assert (out[0] == 0).all() and (out[1:] == 1).all()
    np.testing.assert_array_equal(confident_changes(previous, proposed, log_p, 0.0), proposed)
    with pytest.raises(ValueError, match="min_lead"):
        Refinement(min_lead=-1)


def test_refine_round_combines_the_rules():
    previous, proposed = _maps()
    log_p = np.log(np.stack([np.full(previous.shape, 0.1), np.full(previous.shape, 0.8), np.full(previous.shape, 0.1)]))
    out = refine_round(previous, proposed, log_p, [Click(1, 11, 11)], Refinement())
    assert (out[5:12, 5:12] == 1).all() and (out[15:18, 25:28] == 0).all()
    np.testing.assert_array_equal(refine_round(previous, proposed, log_p, [Click(1, 11, 11)], Refinement.off()),
                                  proposed)


def test_a_click_on_a_mislabelled_region_fixes_it_and_leaves_far_pixels_alone():
    """The bundled (trained) model on the bundled sample: after the automatic result, a click
    in the largest region the result misses changes that region toward the click's class, and
    no pixel far from the click changes."""
    from scipy import ndimage

    from napari_simseg.core.interaction.virtual_user import largest_mislabelled_region
    from napari_simseg.core.io.images import read_image
    from napari_simseg.core.io.resources import SAMPLE_DIR
    from napari_simseg.core.session.interactive import InteractiveSession

    image = read_image(SAMPLE_DIR / "images" / "hippocampus_015.nii.gz").array
    gt = read_image(SAMPLE_DIR / "labels" / "hippocampus_015.nii.gz", labels=True).array.astype(int)
    session = InteractiveSession(image, "demo", device="cpu")
    session.predict_auto()
    best = None
    for z in range(gt.shape[0]):  # the slice and class with the largest missed region
        for c in (1, 2):
            found = largest_mislabelled_region(gt[z], session.labels[z].astype(int), c)
            if found is not None and (best is None or found[1].sum() > best[3].sum()):
                best = (z, c, found[0], found[1])
    z, c, sl, region = best
    missed = np.zeros(gt.shape[1:], bool)
    missed[sl] = region
    y, x = np.unravel_index(ndimage.distance_transform_edt(missed).argmax(), missed.shape)
    before = session.labels[z].copy()
    after = session.add_clicks(z, [Click(c, y, x)]).labels
    assert (after[missed] == c).mean() >= (before[missed] == c).mean() + 0.2
    far = ndimage.distance_transform_edt(~(missed | (before == c) | (after != before))) > 0  # not touched
    yy, xx = np.ogrid[: missed.shape[0], : missed.shape[1]]
    distant = ((yy - y) ** 2 + (xx - x) ** 2 > 15**2) & far
    assert distant.any()
    np.testing.assert_array_equal(after[distant], before[distant])
    # with refinement off the same click may change anything (the network's labels everywhere)
    plain = InteractiveSession(image, "demo", device="cpu", refinement=Refinement.off())
    plain.predict_auto()
    changed = plain.add_clicks(z, [Click(c, y, x)]).labels != before
    assert changed.any()


def test_spreading_a_click_covers_the_plausible_part_of_the_region_it_corrects():
    from napari_simseg.core.interaction.refinement import spread_clicks

    previous = np.zeros((20, 30), int)
    previous[:, 15:] = 2  # class 2 on the right; class 1 (the click's) missed in a sliver at columns 10-14
    labels = previous.copy()
    labels[8:12, 10:13] = 1  # the network fixed the sliver only next to the click
    p1 = np.full((20, 30), 0.02)
    p1[:, 10:15] = 0.3  # class 1 plausible (runner-up) along the whole sliver ...
    p1[:, 17:20] = 0.3  # ... and in a strip of class 2, not the clicked region's class
    p0 = np.where(previous == 0, 0.98 - p1 + 0.02, 0.02)
    p2 = 1 - p0 - p1
    log_p = np.log(np.clip(np.stack([p0, p1, p2]), 1e-6, 1))
    out = spread_clicks(previous, labels, log_p, [Click(1, 10, 11)], np.log(4.0))
    assert (out[:, 10:15] == 1).all()  # the whole sliver the click sits in
    assert (out[:, :10] == 0).all() and (out[:, 15:] == 2).all()  # not the class-2 strip, not the rest
    assert (spread_clicks(previous, labels, log_p, [Click(1, 10, 11)], np.log(1.2)) == labels).all()  # 0.3 vs 0.68
    on_its_class = previous.copy()
    on_its_class[10, 11] = 1  # a click on a pixel already shown as its class spreads nothing
    np.testing.assert_array_equal(spread_clicks(on_its_class, labels, log_p, [Click(1, 10, 11)], np.log(4.0)), labels)
    with pytest.raises(ValueError, match="spread"):
        Refinement(spread=-1)
    assert Refinement.from_dict(Refinement(spread=0.5).to_dict()).spread == 0.5


def test_the_session_shows_the_networks_own_labels_in_its_network_rounds():
    """A session with ``network_rounds=1`` shows a slice's first corrective round as the
    network gave it (as with the refinement off: the memory is the same), and refines from
    the second round on: then only the clicked class may grow, next to its click."""
    from napari_simseg.core.io.images import read_image
    from napari_simseg.core.io.resources import SAMPLE_DIR
    from napari_simseg.core.session.interactive import InteractiveSession

    image = read_image(SAMPLE_DIR / "images" / "hippocampus_015.nii.gz").array
    sessions = {name: InteractiveSession(image, "demo", device="cpu", refinement=refinement)
                for name, refinement in (("off", Refinement.off()), ("first", Refinement(network_rounds=1)))}
    assert sessions["first"].refinement.network_rounds == 1
    z = image.shape[0] // 2
    rounds, notes = {name: [] for name in sessions}, []
    for name, session in sessions.items():
        session.predict_auto()
        rounds[name].append(session.labels[z].copy())
        for click in ((1, 20, 20), (2, 15, 30), (1, 25, 12)):
            result = session.add_clicks(z, [Click(*click)])
            rounds[name].append(result.labels.copy())
            if name == "first":
                notes.append(result.note)
    assert "network's whole answer" in notes[0] and not any("whole answer" in n for n in notes[1:])  # the status line
    np.testing.assert_array_equal(rounds["first"][1], rounds["off"][1])  # round 1: the network's own
    for k, label in ((2, 2), (3, 1)):
        changed = rounds["first"][k] != rounds["first"][k - 1]
        assert set(np.unique(rounds["first"][k][changed])) <= {label}
    assert any(len(set(np.unique(rounds["off"][k][rounds["off"][k] != rounds["off"][k - 1]])) - {lab}) > 0
               for k, lab in ((2, 2), (3, 1)))  # where the network's own rounds changed other classes


def test_network_rounds_come_from_the_checkpoint_unless_asked_for():
    from types import SimpleNamespace

    from napari_simseg.core.session.interaction_log import log_refinement

    chose = SimpleNamespace(training={"refinement": {"network_rounds": 3}})
    assert Refinement().for_checkpoint(chose).network_rounds == 3
    assert Refinement(network_rounds=1).for_checkpoint(chose).network_rounds == 1  # asked for: kept
    assert Refinement().for_checkpoint(SimpleNamespace(training={})).network_rounds == 0
    assert Refinement().for_checkpoint(SimpleNamespace(training={"refinement": {"network_rounds": "3"}})
                                       ).network_rounds == 0  # not a whole number: ignored
    assert Refinement(network_rounds=2).refines_round(3) and not Refinement(network_rounds=2).refines_round(2)
    assert not Refinement.off().refines_round(5)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="network_rounds"):
            Refinement(network_rounds=bad)
    old = Refinement(zoom=1.0).to_dict()
    old.pop("network_rounds")
    assert log_refinement({"refinement": old}).network_rounds == 0  # a log from before: every round refined
    assert log_refinement({"refinement": Refinement(network_rounds=3).to_dict()}).network_rounds == 3


def test_a_slice_set_by_hand_is_refined_from_its_first_round():
    """The network's rounds never redraw labels the user set: with ``network_rounds=3`` a click on
    a slice set by hand changes only pixels to its class, where on an automatic result the same
    round shows the network's whole answer."""
    from napari_simseg.core.io.images import read_image
    from napari_simseg.core.io.resources import SAMPLE_DIR
    from napari_simseg.core.session.interactive import InteractiveSession

    image = read_image(SAMPLE_DIR / "images" / "hippocampus_015.nii.gz").array
    gt = read_image(SAMPLE_DIR / "labels" / "hippocampus_015.nii.gz", labels=True).array.astype(np.uint8)
    z = int(np.argmax((gt > 0).reshape(gt.shape[0], -1).sum(1)))
    hand = np.where(gt[z] == 2, 0, gt[z]).astype(np.uint8)  # the posterior part left out by hand
    session = InteractiveSession(image, "demo", device="cpu", refinement=Refinement(network_rounds=3))
    session.set_labels(z, hand)
    ys, xs = np.nonzero(gt[z] == 2)
    result = session.add_clicks(z, [Click(2, int(ys[len(ys) // 2]), int(xs[len(xs) // 2]))])
    changed = result.labels != hand
    assert changed.any() and set(np.unique(result.labels[changed])) <= {2}
    assert "whole answer" not in result.note


def test_a_log_replays_each_round_with_the_refinement_it_was_shown_with(tmp_path):
    """A session that replays a log made with another refinement and goes on saves a log
    whose every round replays as it was shown: each clicks event records its own refinement."""
    from napari_simseg.core.io.images import read_image
    from napari_simseg.core.io.resources import SAMPLE_DIR
    from napari_simseg.core.session.interaction_log import LogError, check_log, iter_replay, load_log, replay_log
    from napari_simseg.core.session.interactive import InteractiveSession

    image = read_image(SAMPLE_DIR / "images" / "hippocampus_015.nii.gz").array
    z = image.shape[0] // 2
    first = InteractiveSession(image, "demo", device="cpu", refinement=Refinement.off())
    first.predict_auto(z)
    for click in ((1, 20, 20), (2, 15, 30), (1, 25, 12)):
        first.add_clicks(z, [Click(*click)])
    first_log = first.save_log(tmp_path / "first.simseg.json")
    assert all(e["refinement"] == Refinement.off().to_dict() for e in load_log(first_log)["events"]
               if e["action"] == "clicks")

    later = replay_log(InteractiveSession(image, "demo", device="cpu"), first_log)  # refined rounds from here on
    np.testing.assert_array_equal(later.labels[z], first.labels[z])
    assert later.refinement.active  # the replay gave the session its own refinement back
    later.add_clicks(z, [Click(2, 30, 25)])
    later_log = load_log(later.save_log(tmp_path / "later.simseg.json"))
    assert later_log["refinement"]["locality"] != "none"  # the top level: the session's when saved

    again = InteractiveSession(image, "demo", device="cpu")
    steps = iter_replay(again, later_log)
    for done, _ in steps:
        if done == len(first.log):
            np.testing.assert_array_equal(again.labels[z], first.labels[z])  # the first session's rounds, as shown
    np.testing.assert_array_equal(again.labels[z], later.labels[z])
    broken = json.loads(json.dumps(later_log))
    clicks_event = next(i for i, e in enumerate(broken["events"]) if e["action"] == "clicks")
    broken["events"][clicks_event]["refinement"] = {"locality": "everywhere"}
    with pytest.raises(LogError, match=f"event {clicks_event} .*'refinement'"):
        check_log(broken)


@pytest.mark.parametrize("bad", [{"touch": "2"}, {"touch": 1.5}, {"touch": -3}, {"touch": None}, {"touch": True},
                                 {"follow_clicks": "no"}, {"follow_clicks": 1}, {"min_lead": True},
                                 {"margin": "1"}, {"spread": float("nan")}, {"min_lead": float("inf")}])
def test_refinement_settings_of_the_wrong_type_are_refused_by_name(bad):
    """A log's refinement entry is checked before anything is replayed: a string, fraction or
    negative ``touch`` or a string ``follow_clicks`` would otherwise fail midway or be misread."""
    from napari_simseg.core.session.interaction_log import LogError, log_refinement

    with pytest.raises(ValueError, match=next(iter(bad))):
        Refinement.from_dict({**Refinement().to_dict(), **bad})
    with pytest.raises(LogError, match=next(iter(bad))):
        log_refinement({"refinement": {**Refinement().to_dict(), **bad}})
