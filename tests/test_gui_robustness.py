"""No lost work and no traceback on bad input in napari (issue 18, points 4 and 6): Load
asks before replacing unsaved rounds (the console session through ``confirm_discard``,
refusing without it), logs are checked before anything is allocated, long logs load
with progress and Cancel, NaN points are ignored with a message and indices are strict."""

from __future__ import annotations

import numpy as np
import pytest

# Load torch's native stack before the first canvas (see napari_simseg._llvm_guard).
import segmentation_models_pytorch  # noqa: F401, E402

pytestmark = pytest.mark.gui

CLASSES = ("background", "a", "b")
TIMEOUT = 60_000  # ms


@pytest.fixture
def session(viewer, volume, make_checkpoint):
    from napari_simseg import ViewerSession

    viewer.add_image(volume, name="mri")
    ckpt = make_checkpoint(class_names=CLASSES, seed=1)  # seed 1 labels every pixel 1
    return ViewerSession(viewer, "mri", checkpoint=ckpt, device="cpu", overwrite_policy="always")


def _long_log(path, n_events: int, shape=(5, 40, 48)):
    """A valid log of many rounds (as a long annotation session writes)."""
    from napari_simseg.core.session.interaction_log import write_log

    events = [{"action": "clicks", "slice": k % shape[0], "round": k // shape[0] + 1, "time": 0.0,
               "clicks": [{"class": 1 + k % 2, "y": 5.0 + k % 30, "x": 7.0 + k % 40}]} for k in range(n_events)]
    write_log(path, shape, CLASSES, "ck", events)


# ---------------------------------------------------------------- console API
def test_load_never_drops_unsaved_rounds_silently(viewer, session, tmp_path):
    session.add_clicks(1, [(1, 15, 20)])
    labels_path, _ = session.save(tmp_path / "case.nii.gz")
    assert not session.has_unsaved_rounds()
    session.add_clicks(3, [(2, 20, 25)])  # not saved
    assert session.has_unsaved_rounds()
    shown = session.labels
    with pytest.raises(RuntimeError, match="not loaded: it would replace rounds made since the last save"):
        session.load(labels_path)  # no confirm_discard: the safe default keeps the work
    asked = []
    session.confirm_discard = lambda question: asked.append(question) or False
    with pytest.raises(RuntimeError, match="Save first"):
        session.load(labels_path)
    assert asked and "case.nii.gz" in asked[0]
    np.testing.assert_array_equal(session.labels, shown)
    assert session.session.n_rounds(3) == 1 and len(viewer.layers["b clicks"].data) == 1
    session.confirm_discard = lambda question: True
    assert "replayed" in session.load(labels_path)
    assert session.session.n_rounds(3) == 0 and session.session.n_rounds(1) == 1
    assert not session.has_unsaved_rounds()
    session.add_clicks(2, [(1, 10, 10)])
    session.confirm_discard = None
    assert "replayed" in session.load(labels_path, discard=True)  # the explicit override


@pytest.mark.parametrize(
    "event, match",
    [
        ({"action": "auto", "slices": list(range(40000))}, r"event 0 \('auto'\): 40000 slices listed, the image has 5"),
        ({"action": "auto", "slices": [1, 1]}, "lists a slice twice"),
        ({"action": "clicks", "slice": 9, "clicks": []}, r"'slice' 9 is outside the image \(slices 0..4\)"),
        ({"action": "clicks", "slice": 2.5, "clicks": []}, "'slice' must be an integer, got 2.5"),
        (
            {"action": "clicks", "slice": 1, "clicks": [{"class": "a", "y": 1, "x": 1}]},
            "class index must be an integer, got 'a'",
        ),
        ({"action": "clicks", "slice": 1, "clicks": [{"class": 1, "y": float("nan"), "x": 1}]}, "not a finite number"),
        ({"action": "clicks", "slice": 1, "clicks": [{"class": 7, "y": 1, "x": 1}]}, "unknown class index 7"),
        ({"action": "set_labels", "slice": 1, "labels": [[0] * 48] * 3}, "'labels' must be 40 rows of 48"),
        ({"action": "explode", "slice": 1}, "unknown action"),
    ],
)
def test_bad_logs_are_refused_before_anything_is_allocated(viewer, session, tmp_path, event, match):
    from napari_simseg.core.session.interaction_log import LogError, write_log

    session.add_clicks(1, [(1, 15, 20)])
    labels_path, log_path = session.save(tmp_path / "case.nii.gz")
    write_log(log_path, (5, 40, 48), CLASSES, "ck", [event])
    shown = session.labels
    with pytest.raises(LogError, match=match) as err:
        session.load(labels_path)
    assert "\n" not in str(err.value) and str(log_path) in str(err.value)
    np.testing.assert_array_equal(session.labels, shown)
    assert session.session.n_rounds(1) == 1 and not session.busy


def test_a_cancelled_load_changes_nothing(viewer, session, tmp_path):
    session.add_clicks(1, [(1, 15, 20)])
    labels_path, log_path = session.save(tmp_path / "case.nii.gz")
    _long_log(log_path, 30)
    before = session.session
    job = session.prepare_load(labels_path)
    assert job.is_generator and session.busy
    steps = job.compute()
    for expected in ((0, 30), (1, 30)):
        value = next(steps)
        assert value == expected
        job.on_yield(value)
    steps.close()  # what the widget's Cancel does to the worker's generator
    assert "cancelled after 1/30 logged actions; nothing changed" in job.cancel() and not session.busy
    assert session.session is before and session.session.n_rounds(1) == 1
    assert len(viewer.layers["a clicks"].data) == 1


def test_nan_points_are_ignored_and_indices_strict(viewer, session):
    pts = viewer.layers["a clicks"]
    pts.add(np.array([[np.nan, 10.0, 10.0]]))
    pts.add(np.array([[2.0, np.inf, 10.0]]))
    assert session.prepare_round(2) is None
    assert session.ignored_points == 2 and "2 points with a NaN or infinite coordinate" in session.ignored_note
    assert len(pts.data) == 0
    pts.add(np.array([[2.0, 12.0, 14.0]]))
    result = session.run(2)  # later rounds are not poisoned
    assert result.round == 1 and session.ignored_points == 0 and session.ignored_note == ""
    with pytest.raises(IndexError, match="slice index must be an integer, got 2.7"):
        session.add_clicks(2.7, [(1, 5, 5)])
    from napari_simseg.core.interaction.clicks import ClickError

    for bad in (1.5, True, "a"):
        with pytest.raises(ClickError, match="class index must be an integer"):
            session.add_clicks(2, [(bad, 5, 5)])
    with pytest.raises(ClickError, match="finite"):
        session.add_clicks(2, [(1, float("nan"), 5)])
    assert session.session.n_rounds(2) == 1


# ---------------------------------------------------------------- the widget
def _add_widget(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-simseg", "SimSeg")
    return widget


@pytest.fixture
def started(viewer, volume, make_checkpoint):
    viewer.add_image(volume, name="mri")
    w = _add_widget(viewer)
    w.set_checkpoint(make_checkpoint(class_names=CLASSES, seed=1))
    w.device_combo.setCurrentText("cpu")
    assert w.start(wait=True), w.status_label.text()
    viewer.dims.set_current_step(0, 2)
    yield w
    w.shutdown()


def test_widget_ignores_nan_points_with_a_message(started, viewer, qtbot):
    viewer.layers["a clicks"].add(np.array([[2.0, np.nan, 5.0]]))
    qtbot.waitUntil(lambda: "NaN or infinite" in started.status_label.text(), timeout=TIMEOUT)
    assert len(viewer.layers["a clicks"].data) == 0 and started.worker is None
    with qtbot.waitSignal(started.round_finished, timeout=TIMEOUT):
        viewer.layers["a clicks"].add([2, 15, 20])
    qtbot.waitUntil(lambda: started.worker is None, timeout=TIMEOUT)
    assert "round 1 done" in started.status_label.text()
    assert (viewer.layers["SimSeg labels"].data[2] == 1).sum() > 0


def test_widget_load_asks_before_replacing_unsaved_rounds(started, viewer, qtbot, tmp_path, monkeypatch):
    import napari_simseg._widget as widget_module

    with qtbot.waitSignal(started.round_finished, timeout=TIMEOUT):
        viewer.layers["a clicks"].add([2, 15, 20])
    qtbot.waitUntil(lambda: started.worker is None, timeout=TIMEOUT)
    started.save(tmp_path / "seg.nii.gz")
    with qtbot.waitSignal(started.round_finished, timeout=TIMEOUT):
        viewer.layers["b clicks"].add([2, 30, 30])  # not saved
    qtbot.waitUntil(lambda: started.worker is None, timeout=TIMEOUT)
    asked = []
    monkeypatch.setattr(widget_module, "ask_discard", lambda parent, question: asked.append(question) or False)
    started.load(tmp_path / "seg.nii.gz")
    assert asked and started.worker is None and "not loaded" in started.status_label.text()
    assert started.session.session.n_rounds(2) == 2
    monkeypatch.setattr(widget_module, "ask_discard", lambda parent, question: True)
    with qtbot.waitSignal(started.job_finished, timeout=TIMEOUT) as blocker:
        started.load(tmp_path / "seg.nii.gz")
    assert blocker.args[0] == "load" and "replayed" in blocker.args[1]
    qtbot.waitUntil(lambda: started.worker is None, timeout=TIMEOUT)
    assert started.session.session.n_rounds(2) == 1 and len(viewer.layers["b clicks"].data) == 0


def test_widget_loads_a_long_log_with_progress_and_cancel(started, viewer, qtbot, tmp_path):
    with qtbot.waitSignal(started.round_finished, timeout=TIMEOUT):
        viewer.layers["a clicks"].add([2, 15, 20])
    qtbot.waitUntil(lambda: started.worker is None, timeout=TIMEOUT)
    labels_path, log_path = started.save(tmp_path / "seg.nii.gz")
    _long_log(log_path, 400)
    before = started.session.session
    with qtbot.waitSignal(started.job_finished, timeout=TIMEOUT) as blocker:
        started.load(labels_path)
        assert not started.progress.isHidden() and not started.cancel_button.isHidden()
        started.worker.yielded.connect(lambda value: value[0] >= 3 and started.cancel())
    kind, message = blocker.args
    assert kind == "load" and "cancelled" in message and "nothing changed" in message, message
    qtbot.waitUntil(lambda: started.worker is None, timeout=TIMEOUT)
    assert started.session.session is before and before.n_rounds(2) == 1
    assert started.progress.isHidden()
    _long_log(log_path, 12)  # a shorter one runs to the end
    with qtbot.waitSignal(started.job_finished, timeout=TIMEOUT) as blocker:
        started.load(labels_path)
    assert "replayed 12 logged actions" in blocker.args[1]
    qtbot.waitUntil(lambda: started.worker is None, timeout=TIMEOUT)
    assert started.session.session is not before


def test_widget_removes_a_point_outside_the_image_at_once_and_says_so(started, viewer, qtbot):
    n, h, w = viewer.layers["mri"].data.shape
    viewer.layers["a clicks"].add([2, h + 40, 5])
    qtbot.waitUntil(lambda: "outside the image" in started.status_label.text(), timeout=TIMEOUT)
    assert f"1 point outside the image ({n} x {h} x {w}) removed" in started.status_label.text()
    assert len(viewer.layers["a clicks"].data) == 0 and started.session.session.n_rounds(2) == 0


def test_removing_the_image_ends_the_session_and_keeps_its_layers(started, viewer, qtbot):
    with qtbot.waitSignal(started.round_finished, timeout=TIMEOUT):
        viewer.layers["a clicks"].add([2, 15, 20])
    qtbot.waitUntil(lambda: started.worker is None, timeout=TIMEOUT)
    labels = np.array(viewer.layers["SimSeg labels"].data)
    viewer.layers.remove("b clicks")
    assert "'b clicks' was removed" in started.status_label.text() and started.session is not None
    viewer.layers.remove("mri")
    assert started.session is None
    assert "the image 'mri' was removed from the viewer: its session ended" in started.status_label.text()
    assert not started.run_button.isEnabled() and not started.auto_slice_button.isEnabled()
    assert started.start_button.text() == "Start"
    np.testing.assert_array_equal(viewer.layers["SimSeg labels"].data, labels)  # nothing the user made is lost
    assert len(viewer.layers["a clicks"].data) == 1
    viewer.layers["a clicks"].add([2, 16, 21])  # no session listens: nothing runs
    qtbot.wait(300)
    assert started.worker is None
