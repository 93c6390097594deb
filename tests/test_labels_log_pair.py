"""A labels file and its interaction log are one transaction (issue 34, point 2): the log names
the labels it was saved with, is written first, and a kill between the two files leaves a
pair that loads as the previous save whole; labels that fit neither save are refused by name."""

from __future__ import annotations

import numpy as np
import pytest

from napari_simseg.core.interaction.refinement import Refinement
from napari_simseg.core.session.interaction_log import (
    LabelsMismatchError,
    LogError,
    check_log,
    events_for_labels,
    labels_digest,
    labels_record,
    load_log,
    write_log,
)

SHAPE = (3, 8, 9)
NAMES = ["background", "a", "b"]


def _events(n, t=0.0):
    return [{"action": "clicks", "slice": i % 3, "round": 1, "time": t + i,
             "clicks": [{"class": 1, "y": 2, "x": 3}]} for i in range(n)]


def _labels(value):
    a = np.zeros(SHAPE, np.uint8)
    a[:, 1:4, 2:5] = value
    return a


def _save(tmp_path, labels, events):
    """What ViewerSession.save does: the log first (naming the labels), then the labels."""
    log = tmp_path / "case.simseg.json"
    record = labels_record(tmp_path / "case.nii.gz", labels, events, log)
    write_log(log, SHAPE, NAMES, "demo", events, record)
    return log


def test_digest_is_independent_of_the_integer_type():
    a = _labels(2)
    assert labels_digest(a) == labels_digest(a.astype(np.int32)) == labels_digest(a.astype(np.uint16))
    assert labels_digest(a) != labels_digest(_labels(1))
    assert labels_digest(a) != labels_digest(a.reshape(1, 3, 8, 9))


def test_a_kill_between_the_log_and_the_labels_loads_the_previous_save(tmp_path):
    first, second = _labels(1), _labels(2)
    _save(tmp_path, first, _events(2))
    # the same session saves again: the new log's first events are the old log's (their times
    # differ after a load's replay, which re-records them)
    log = _save(tmp_path, second, _events(2, t=100.0) + _events(3)[2:])
    doc = load_log(log)
    assert doc["labels"]["previous"] == {"digest": labels_digest(first), "n_events": 2}
    # killed before the labels were replaced: the old labels lie beside the new log
    old, note = events_for_labels(doc, first, tmp_path / "case.nii.gz", log)
    assert len(old["events"]) == 2 and "did not finish" in note and "2 logged actions" in note
    # the save completed: the new pair
    new, note = events_for_labels(doc, second.astype(np.int16), tmp_path / "case.nii.gz", log)
    assert new is doc and note == ""


def test_saving_over_another_sessions_pair_keeps_its_events_for_a_kill(tmp_path):
    _save(tmp_path, _labels(1), _events(4))
    other = [{"action": "auto", "slices": [0, 1], "time": 5.0}]
    log = _save(tmp_path, _labels(2), other)  # not a continuation: the old events go in whole
    doc = load_log(log)
    # kept with the refinement their rounds were shown with (the old log's: none recorded, so off)
    kept = [{**e, "refinement": Refinement.off().to_dict()} for e in _events(4)]
    assert doc["labels"]["previous"]["events"] == kept
    old, note = events_for_labels(doc, _labels(1), tmp_path / "case.nii.gz", log)
    assert old["events"] == kept and note


def test_a_continued_older_log_keeps_its_rounds_refinement_for_a_kill(tmp_path):
    """A log written before rounds recorded their refinement, replayed and continued (its
    replayed rounds now hold the old log's refinement), saved over: the old events are
    recognised as the new log's first ones, and carry the refinement they were shown with."""
    old_settings = Refinement(min_lead=1.0)
    log = tmp_path / "case.simseg.json"
    write_log(log, SHAPE, NAMES, "demo", _events(2), labels_record(tmp_path / "case.nii.gz", _labels(1), _events(2),
                                                                    log), old_settings)
    replayed = [{**e, "refinement": old_settings.to_dict()} for e in _events(2, t=50.0)]
    later = [{**e, "refinement": Refinement().to_dict()} for e in _events(3)[2:]]
    record = labels_record(tmp_path / "case.nii.gz", _labels(2), replayed + later, log)
    assert record["previous"] == {"digest": labels_digest(_labels(1)), "n_events": 2}
    write_log(log, SHAPE, NAMES, "demo", replayed + later, record, Refinement())
    old, _ = events_for_labels(load_log(log), _labels(1), tmp_path / "case.nii.gz", log)
    assert [e["refinement"] for e in old["events"]] == [old_settings.to_dict()] * 2


def test_labels_that_fit_neither_save_are_refused_by_name(tmp_path):
    log = _save(tmp_path, _labels(1), _events(1))
    log = _save(tmp_path, _labels(2), _events(2))
    with pytest.raises(LabelsMismatchError, match=r"case\.nii\.gz does not hold the labels case\.simseg\.json") \
            as err:
        events_for_labels(load_log(log), _labels(0), tmp_path / "case.nii.gz", log)
    assert "log=False" in str(err.value) and "log=True" in str(err.value)
    # a log from before logs named their labels: taken as it is
    plain = tmp_path / "plain.simseg.json"
    write_log(plain, SHAPE, NAMES, "demo", _events(1))
    doc = load_log(plain)
    assert events_for_labels(doc, _labels(0), "plain.nii.gz", plain) == (doc, "")


@pytest.mark.parametrize("entry", [
    "x", {"digest": 3}, {"digest": "d", "previous": {"digest": "e"}},
    {"digest": "d", "previous": {"digest": "e", "n_events": 9}},
    {"digest": "d", "previous": {"digest": "e", "n_events": True}},
])
def test_a_bad_labels_entry_is_refused(entry):
    doc = {"format": "napari-simseg-log", "version": 1, "image_shape": list(SHAPE), "class_names": NAMES,
           "events": _events(2), "labels": entry}
    with pytest.raises(LogError, match="'labels"):
        check_log(doc)


def test_previous_events_are_checked_before_use(tmp_path):
    log = _save(tmp_path, _labels(1), _events(1))
    doc = load_log(log)
    doc["labels"]["previous"] = {"digest": labels_digest(_labels(3)), "events": [{"action": "clicks", "slice": 7}]}
    with pytest.raises(LogError, match="previous save"):
        events_for_labels(doc, _labels(3), "case.nii.gz", log)
