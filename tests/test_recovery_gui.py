"""Autosave and recovery through the widget (issue 34, point 1), added through the npe2
manifest: rounds and paint strokes reach the recovery folder's manifest, and after a session
that did not end cleanly, *Start* on the same image offers them back."""

from __future__ import annotations

import json

import pytest

# Load torch's native stack before the first canvas (see napari_simseg._llvm_guard).
import segmentation_models_pytorch  # noqa: F401, E402

from recovery_helpers import session_state

pytestmark = pytest.mark.gui

CLASSES = ("background", "a", "b")
TIMEOUT = 60_000  # ms; the machine is small and shared


def _widget(make_napari_viewer, volume, ckpt):
    viewer = make_napari_viewer()
    viewer.add_image(volume, name="mri")
    _, widget = viewer.window.add_plugin_dock_widget("napari-simseg", "SimSeg")
    widget.set_checkpoint(ckpt)
    widget.device_combo.setCurrentText("cpu")
    return viewer, widget


def test_rounds_and_paint_are_autosaved_and_offered_after_a_kill(make_napari_viewer, volume, make_checkpoint,
                                                                  qtbot, monkeypatch):
    from napari_simseg import _widget as widget_module

    ckpt = make_checkpoint(class_names=CLASSES)
    asked = []
    monkeypatch.setattr(widget_module, "ask_recover", lambda parent, what: asked.append(what) or True)
    viewer, w = _widget(make_napari_viewer, volume, ckpt)
    assert w.start(wait=True), w.status_label.text()
    qtbot.wait(100)
    assert asked == []  # nothing to offer on a first start
    viewer.dims.set_current_step(0, 2)
    with qtbot.waitSignal(w.round_finished, timeout=TIMEOUT):
        viewer.layers["a clicks"].add([2, 15, 20])
    qtbot.waitUntil(lambda: w.worker is None, timeout=TIMEOUT)
    viewer.layers["SimSeg labels"].paint((3, 10, 10), 2)  # a stroke: saved by the widget's timer
    qtbot.waitUntil(lambda: not w._autosave_timer.isActive(), timeout=TIMEOUT)
    vs = w.session
    assert vs.recovery.flush(30) and vs.recovery.error is None
    manifest = json.loads((vs.recovery.folder / "manifest.json").read_text())
    assert manifest["n_events"] == 1 and {"2", "3"} <= set(manifest["slices"]) and manifest["state"] == "active"
    before = session_state(vs)
    assert before["hand_edited"] == [3]
    vs.recovery.close(remove=False)  # what a kill leaves: the folder, its lock released

    viewer2, w2 = _widget(make_napari_viewer, volume, ckpt)
    with qtbot.waitSignal(w2.job_finished, timeout=TIMEOUT,
                          check_params_cb=lambda kind, message: kind == "recover") as blocker:
        assert w2.start(wait=True), w2.status_label.text()
    assert len(asked) == 1 and "1 action" in asked[0]
    assert "restored the unsaved work" in blocker.args[1]
    qtbot.waitUntil(lambda: w2.worker is None, timeout=TIMEOUT)
    assert session_state(w2.session) == before
    w2.shutdown()
    w.shutdown()


def test_declining_keeps_the_work_unoffered(make_napari_viewer, volume, make_checkpoint, qtbot, monkeypatch):
    from napari_simseg import _widget as widget_module

    ckpt = make_checkpoint(class_names=CLASSES)
    monkeypatch.setattr(widget_module, "ask_recover", lambda parent, what: False)
    viewer, w = _widget(make_napari_viewer, volume, ckpt)
    assert w.start(wait=True)
    w.session.add_clicks(1, [(1, 15, 20)])
    assert w.session.recovery.flush(30)
    folder = w.session.recovery.folder
    w.session.recovery.close(remove=False)
    viewer2, w2 = _widget(make_napari_viewer, volume, ckpt)
    assert w2.start(wait=True)
    qtbot.waitUntil(lambda: w2.session.recoverable() is None, timeout=TIMEOUT)
    assert folder.exists() and w2.session.session.n_rounds(1) == 0
    w2.shutdown()
    w.shutdown()
