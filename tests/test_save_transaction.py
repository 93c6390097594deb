"""``ViewerSession.save`` writes the labels and their log as one transaction (issue 34, points 2
and 9): killed at any moment, the pair loads back as the old save or the new one, never a mix;
labels changed since are refused by name and load as the user then asks."""

from __future__ import annotations

import json

import numpy as np
import pytest

# Load torch's native stack before the first canvas (see napari_simseg._llvm_guard).
import segmentation_models_pytorch  # noqa: F401, E402

from recovery_helpers import session_state

CLASSES = ("background", "a", "b")
TIMEOUT = 60_000  # ms


def _image():
    rng = np.random.default_rng(0)
    vol = rng.normal(100, 20, size=(5, 40, 48)).astype(np.float32)
    vol[:, 10:25, 12:30] += 80
    return vol


@pytest.fixture
def ckpt(make_checkpoint):
    return make_checkpoint(class_names=CLASSES)


def _session(ckpt):
    from napari.components import ViewerModel

    from napari_simseg import ViewerSession

    viewer = ViewerModel()
    viewer.add_image(_image(), name="ct")
    return ViewerSession(viewer, "ct", checkpoint=ckpt, device="cpu", overwrite_policy="always")


class _Killed(BaseException):
    """Stands for a kill: nothing after it runs."""


def _files_state(tmp_path):
    """What is on disk: the labels file's bytes and the log's events."""
    log = json.loads((tmp_path / "case.simseg.json").read_text())
    return (tmp_path / "case.nii.gz").read_bytes(), len(log["events"])


def test_a_save_killed_between_the_log_and_the_labels_loads_as_the_previous_save(ckpt, tmp_path, monkeypatch):
    from napari_simseg.annotator import labels_view

    vs = _session(ckpt)
    vs.add_clicks(1, [(1, 15, 20)])
    vs.save(tmp_path / "case.nii.gz")
    first = session_state(vs)
    vs.add_clicks(3, [(2, 20, 25)])
    vs.undo(1)

    def killed(self, path):
        raise _Killed

    monkeypatch.setattr(labels_view.LabelsView, "write_file", killed)
    with pytest.raises(_Killed):
        vs.save(tmp_path / "case.nii.gz")  # the new log is written, the labels are not
    monkeypatch.undo()
    log = json.loads((tmp_path / "case.simseg.json").read_text())
    assert len(log["events"]) == 3 and log["labels"]["previous"]["n_events"] == 1

    fresh = _session(ckpt)
    message = fresh.load(tmp_path / "case.nii.gz")
    assert "did not finish: loaded the save before it (1 logged actions)" in message
    got = session_state(fresh)
    for key in ("shown", "written", "memory", "clicks", "points"):
        assert got[key] == first[key], key


def test_a_save_killed_before_the_log_keeps_the_old_pair_and_a_whole_save_loads_new(ckpt, tmp_path, monkeypatch):
    from napari_simseg.core.session import interactive

    vs = _session(ckpt)
    vs.add_clicks(1, [(1, 15, 20)])
    vs.save(tmp_path / "case.nii.gz")
    first, before = session_state(vs), _files_state(tmp_path)
    vs.add_clicks(3, [(2, 20, 25)])

    def killed(*args, **kwargs):
        raise _Killed

    monkeypatch.setattr(interactive, "write_log", killed)
    with pytest.raises(_Killed):
        vs.save(tmp_path / "case.nii.gz")
    monkeypatch.undo()
    assert _files_state(tmp_path) == before
    fresh = _session(ckpt)
    assert "replayed 1 logged actions" in fresh.load(tmp_path / "case.nii.gz")
    assert session_state(fresh)["memory"] == first["memory"]

    vs.save(tmp_path / "case.nii.gz")  # not killed: the new pair
    second = session_state(vs)
    fresh = _session(ckpt)
    message = fresh.load(tmp_path / "case.nii.gz")
    assert "replayed 2 logged actions" in message and "did not finish" not in message
    got = session_state(fresh)
    assert got["shown"] == second["shown"] and got["memory"] == second["memory"]


def test_a_refused_name_writes_neither_file(ckpt, tmp_path):
    from napari_simseg.core.io.images import ImageWriteError

    vs = _session(ckpt)
    vs.add_clicks(1, [(1, 15, 20)])
    with pytest.raises(ImageWriteError, match="unsupported extension"):
        vs.save(tmp_path / "case.png.txt")
    assert list(tmp_path.iterdir()) == [p for p in tmp_path.iterdir() if p.suffix == ".safetensors"]


def test_labels_changed_elsewhere_are_refused_by_name_then_loaded_as_asked(ckpt, tmp_path):
    from napari_simseg.core.io.images import read_image, write_image
    from napari_simseg.core.session.interaction_log import LabelsMismatchError

    vs = _session(ckpt)
    vs.add_clicks(1, [(1, 15, 20)])
    labels_path, _ = vs.save(tmp_path / "case.nii.gz")
    edited = read_image(labels_path)
    edited.array[4, 0:3, 0:3] = 2
    write_image(labels_path, edited)
    fresh = _session(ckpt)
    with pytest.raises(LabelsMismatchError, match="case.nii.gz does not hold the labels case.simseg.json"):
        fresh.load(labels_path)
    assert fresh.mismatched_load == labels_path
    assert "not used" in fresh.load(labels_path, log=False)
    assert fresh.session.n_rounds(1) == 0 and fresh.mismatched_load is None
    assert "replayed 1 logged actions" in fresh.load(labels_path, log=True, discard=True)
    assert fresh.session.n_rounds(1) == 1 and fresh.hand_edited == {4}


@pytest.mark.gui
def test_the_widget_asks_to_load_the_labels_alone(make_napari_viewer, make_checkpoint, qtbot, monkeypatch, tmp_path):
    from napari_simseg import _widget
    from napari_simseg.core.io.images import read_image, write_image

    viewer = make_napari_viewer()
    viewer.add_image(_image(), name="mri")
    _, w = viewer.window.add_plugin_dock_widget("napari-simseg", "SimSeg")
    w.set_checkpoint(make_checkpoint(class_names=CLASSES))
    w.device_combo.setCurrentText("cpu")
    assert w.start(wait=True), w.status_label.text()
    w.session.add_clicks(1, [(1, 15, 20)])
    path, _ = w.save(tmp_path / "case.nii.gz")
    changed = read_image(path)
    changed.array[0, :2, :2] = 2
    write_image(path, changed)
    questions = []
    monkeypatch.setattr(_widget, "ask_labels_alone", lambda parent, text: questions.append(text) or True)
    with qtbot.waitSignal(w.job_finished, timeout=TIMEOUT) as refused:
        w.load(path)
    assert "does not hold the labels" in refused.args[1]
    with qtbot.waitSignal(w.job_finished, timeout=TIMEOUT) as loaded:
        pass  # the question comes once the refusal has ended, and the labels load alone
    assert len(questions) == 1 and "does not hold the labels" in questions[0]
    assert "not used" in loaded.args[1]
    np.testing.assert_array_equal(w.session.labels, changed.array)
    w.shutdown()
