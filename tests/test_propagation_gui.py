"""Propagate in napari: the console's ViewerSession.propagate and the widget's Propagate
button (added through the npe2 manifest), with its key, progress and Cancel.

The tiny test network (seed 1) labels every pixel of a slice with class 1, so a slice
that received a propagated result is easy to tell from one that did not (0).
"""

from __future__ import annotations

import numpy as np
import pytest

# Load torch's native stack before the first canvas (see napari_simseg._llvm_guard).
import segmentation_models_pytorch  # noqa: F401, E402

pytestmark = pytest.mark.gui

CLASSES = ("background", "a", "b")
TIMEOUT = 60_000  # ms; the machine is small and shared


def _image(n_slices):
    rng = np.random.default_rng(0)
    vol = rng.normal(100, 20, size=(n_slices, 32, 36)).astype(np.float32)
    vol[:, 8:22, 10:26] += 80
    return vol


@pytest.fixture
def console(viewer, make_checkpoint):
    from napari_simseg import ViewerSession

    viewer.add_image(_image(7), name="mri")
    return ViewerSession(viewer, "mri", checkpoint=make_checkpoint(class_names=CLASSES, seed=1), device="cpu")


def _started_widget(viewer, make_checkpoint, n_slices):
    viewer.add_image(_image(n_slices), name="mri")
    _, w = viewer.window.add_plugin_dock_widget("napari-simseg", "SimSeg")
    w.set_checkpoint(make_checkpoint(class_names=CLASSES, seed=1))
    w.device_combo.setCurrentText("cpu")
    assert w.start(wait=True), w.status_label.text()
    return w


def test_console_propagates_stops_at_painted_slices_and_undoes_in_one_step(viewer, console):
    lab = viewer.layers["SimSeg labels"]
    lab.paint((5, 3, 3), 2)  # the user paints slice 5: propagation must stop before it
    painted = lab.data[5].copy()
    console.add_clicks(2, [(1, 15, 18)])
    message = console.propagate(2)
    assert "slice 2 propagated to 4 slices (0..4)" in message, message
    for z in (0, 1, 3, 4):
        assert (lab.data[z] == 1).all()
    np.testing.assert_array_equal(lab.data[5], painted)
    assert (lab.data[6] == 0).all() and console.session.propagated == {0: 2, 1: 2, 3: 2, 4: 2}
    console.undo(4)  # Undo on a propagated slice: the whole propagation goes
    for z in (0, 1, 3, 4):
        assert (lab.data[z] == 0).all()
    assert (lab.data[2] == 1).any() and not console.session.propagated
    assert len(viewer.layers["a clicks"].data) == 1  # the user's click on slice 2 stays

    # a painted slice is carried from its labels as shown
    lab.paint((5, 15, 18), 1, refresh=True)
    console.propagate(5, direction="up")
    assert (lab.data[6] == 1).all()
    assert console.undo_propagation() == [6] and (lab.data[6] == 0).all()
    with pytest.raises(RuntimeError, match="no propagation"):
        console.undo_propagation()


def test_widget_propagate_button_key_and_undo(viewer, make_checkpoint, qtbot):
    from napari.utils.key_bindings import coerce_keybinding

    w = _started_widget(viewer, make_checkpoint, 5)
    lab = viewer.layers["SimSeg labels"]
    viewer.dims.set_current_step(0, 2)
    with qtbot.waitSignal(w.round_finished, timeout=TIMEOUT):
        viewer.layers["a clicks"].add([2, 15, 18])
    qtbot.waitUntil(lambda: w.worker is None, timeout=TIMEOUT)
    assert w.propagate_button.isEnabled()
    with qtbot.waitSignal(w.job_finished, timeout=TIMEOUT) as blocker:
        w.propagate_button.click()
    kind, message = blocker.args
    assert kind == "propagate" and "slice 2 propagated to 4 slices" in message, message
    qtbot.waitUntil(lambda: w.worker is None, timeout=TIMEOUT)
    assert all((lab.data[z] == 1).all() for z in (0, 1, 3, 4))

    viewer.dims.set_current_step(0, 4)
    pts = viewer.layers["b clicks"]
    pts.keymap[coerce_keybinding("Alt-Z")](pts)  # Undo on a propagated slice
    assert all((lab.data[z] == 0).all() for z in (0, 1, 3, 4))
    assert "propagation" in w.status_label.text()

    viewer.dims.set_current_step(0, 2)
    with qtbot.waitSignal(w.job_finished, timeout=TIMEOUT) as blocker:
        lab.keymap[coerce_keybinding("Alt-P")](lab)  # the key, on the labels layer too
    assert blocker.args[0] == "propagate"
    qtbot.waitUntil(lambda: w.worker is None, timeout=TIMEOUT)
    assert (lab.data[0] == 1).all()
    assert coerce_keybinding("Alt-P") not in viewer.layers["mri"].keymap
    w.shutdown()


def test_widget_propagation_progress_and_cancel(viewer, make_checkpoint, qtbot):
    w = _started_widget(viewer, make_checkpoint, 16)
    lab = viewer.layers["SimSeg labels"]
    viewer.dims.set_current_step(0, 8)
    w.session.add_clicks(8, [(1, 15, 18)])
    with qtbot.waitSignal(w.job_finished, timeout=TIMEOUT) as blocker:
        w.propagate()
        assert not w.progress.isHidden() and not w.cancel_button.isHidden()
        assert not w.propagate_button.isEnabled()
        w.worker.yielded.connect(lambda value: value[0] >= 2 and w.cancel())
    kind, message = blocker.args
    assert kind == "propagate" and "cancelled" in message, message
    qtbot.waitUntil(lambda: w.worker is None, timeout=TIMEOUT)
    assert w.progress.isHidden()
    done = [z for z in range(16) if z != 8 and (lab.data[z] == 1).all()]
    untouched = [z for z in range(16) if z != 8 and (lab.data[z] == 0).all()]
    assert done and untouched and len(done) + len(untouched) == 15
    assert set(done) == set(w.session.session.propagated)  # what the layer shows is what the session holds
    assert w.session.session.log[-1]["action"] == "propagate"
    assert sorted(w.session.undo_propagation()) == sorted(done)
    assert (lab.data[np.array(done)] == 0).all()
    w.shutdown()
