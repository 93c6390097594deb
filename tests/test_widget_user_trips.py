"""What a new and a hostile user tripped over in the widget (issue 34, points 6, 7 and 9), driven
through the npe2 manifest like a user would: every class's clicks layer places points after
Start, the automatic segmentation says truthfully what it skipped, Teach waits for running
jobs, a fixed checkpoint path clears its error, long messages do not widen the dock, two
widgets never drive the same layers, bad choices and bad clicks are refused by name."""

from __future__ import annotations

import numpy as np
import pytest

# Load torch's native stack before the first canvas (see napari_simseg._llvm_guard).
import segmentation_models_pytorch  # noqa: F401, E402

pytestmark = pytest.mark.gui

CLASSES = ("background", "a", "b")
TIMEOUT = 60_000  # ms; the machine is small and shared


def _add_widget(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-simseg", "SimSeg")
    return widget


def _image(n_slices):
    rng = np.random.default_rng(0)
    vol = rng.normal(100, 20, size=(n_slices, 32, 36)).astype(np.float32)
    vol[:, 8:22, 10:26] += 80
    return vol


@pytest.fixture
def checkpoint(make_checkpoint):
    return make_checkpoint(class_names=CLASSES, seed=1)  # seed 1 labels every pixel 1


def _started(viewer, checkpoint, n_slices=5):
    viewer.add_image(_image(n_slices), name="mri")
    w = _add_widget(viewer)
    w.set_checkpoint(checkpoint)
    w.device_combo.setCurrentText("cpu")
    assert w.start(wait=True), w.status_label.text()
    return w


def test_after_start_every_class_places_points_and_never_pans(make_napari_viewer, checkpoint, qtbot):
    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer(show=True)  # a real canvas, clicked as a user clicks it
    w = _started(viewer, checkpoint)
    assert [viewer.layers[f"{n} clicks"].mode for n in CLASSES] == ["add"] * 3
    canvas = viewer.window._qt_viewer.canvas._scene_canvas
    middle = (canvas.size[0] // 2, canvas.size[1] // 2)
    for name in ("b", "background"):  # switch class, then click
        viewer.layers.selection.active = viewer.layers[f"{name} clicks"]
        QApplication.processEvents()
        center = tuple(getattr(viewer, "scene", viewer).camera.center)
        canvas.events.mouse_press(pos=middle, modifiers=(), button=0)
        canvas.events.mouse_release(pos=middle, modifiers=(), button=0)
        assert len(viewer.layers[f"{name} clicks"].data) == 1, f"clicking in '{name} clicks' placed no point"
        assert tuple(getattr(viewer, "scene", viewer).camera.center) == center  # no pan
    qtbot.waitUntil(lambda: w.session.session.n_rounds(w.session.current_slice()) >= 1, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: w.worker is None, timeout=TIMEOUT)
    w.shutdown()


def test_auto_volume_says_what_it_skipped_and_why(viewer, checkpoint, qtbot):
    w = _started(viewer, checkpoint, n_slices=7)
    vs = w.session
    vs.add_clicks(3, [(1, 15, 18)])
    assert "propagated to 3 slices (4..6)" in vs.propagate(3, direction="up")
    with qtbot.waitSignal(w.job_finished, timeout=TIMEOUT) as blocker:
        w.auto_volume()
    kind, message = blocker.args
    assert kind == "auto", message
    assert "automatic segmentation of 3 slices done (skipped: 1 slice with clicks, 3 propagated slices)" in message
    qtbot.waitUntil(lambda: w.worker is None, timeout=TIMEOUT)
    lab = viewer.layers["SimSeg labels"].data
    assert all((lab[z] == 1).all() for z in (0, 1, 2))
    assert "propagated to 3 slices (0..2)" in vs.propagate(3, direction="down")
    w.auto_volume()  # nothing left: said why, and nothing runs
    assert w.worker is None
    assert "nothing to predict automatically: every slice has clicks or a propagation" in w.status_label.text()
    w.shutdown()


def test_teach_waits_for_a_running_job(viewer, make_checkpoint, qtbot):
    w = _started(viewer, make_checkpoint(class_names=CLASSES, seed=1), n_slices=12)
    w.session.batch_size = 1
    w.session.add_clicks(2, [(1, 15, 18)])
    panel = w.teach_panel
    assert panel.teach_button.isEnabled()
    with qtbot.waitSignal(w.job_finished, timeout=TIMEOUT):
        w.auto_volume()
        assert not panel.teach_button.isEnabled()
        assert not panel.teach() and "busy" in panel.status_label.text() and panel.job is None
        with pytest.raises(RuntimeError, match="busy"):
            w.session.teach(max_minutes=1)  # the console too
    qtbot.waitUntil(lambda: w.worker is None, timeout=TIMEOUT)
    assert panel.teach_button.isEnabled()
    w.shutdown()


def test_a_fixed_checkpoint_path_clears_its_error(viewer, checkpoint, tmp_path):
    viewer.add_image(_image(5), name="mri")
    w = _add_widget(viewer)
    missing = tmp_path / "typo.safetensors"
    w.set_checkpoint(missing)
    assert "does not exist" in w.status_label.text()  # said at once
    assert not w.start(wait=True) and w.session is None
    assert "does not exist" in w.status_label.text()
    w.set_checkpoint(checkpoint)
    assert "does not exist" not in w.status_label.text()
    assert checkpoint.name in w.status_label.text() and "press Start" in w.status_label.text()
    assert w.start(wait=True), w.status_label.text()
    w.shutdown()


def test_long_messages_do_not_widen_the_dock(viewer, checkpoint):
    w = _started(viewer, checkpoint)
    width = w.minimumSizeHint().width()
    long_name = "x" * 150 + ".taught-20260101-120000.safetensors"  # no space to wrap at
    w.set_checkpoint(long_name)  # "checkpoint ... does not exist" with that name
    w.teach_panel.status_label.setText(f"taught on 5 slices; now using {long_name}")
    assert long_name in w.status_label.text()
    assert w.minimumSizeHint().width() <= width
    assert w.status_label.toolTip() == w.status_label.text()  # the whole message is still there
    w.shutdown()


def test_two_widgets_never_drive_the_same_layers(viewer, checkpoint, qtbot):
    from napari_simseg import SimSegWidget, ViewerSession

    first = _started(viewer, checkpoint)
    with qtbot.waitSignal(first.round_finished, timeout=TIMEOUT):
        viewer.layers["a clicks"].add([2, 15, 20])
    qtbot.waitUntil(lambda: first.worker is None, timeout=TIMEOUT)
    labels = np.array(viewer.layers["SimSeg labels"].data)
    second = SimSegWidget(viewer)
    viewer.window.add_dock_widget(second, name="SimSeg (second)")
    second.set_checkpoint(checkpoint)
    second.device_combo.setCurrentText("cpu")
    assert not second.start(wait=True) and second.session is None
    text = second.status_label.text()
    assert "another SimSeg session (segmenting 'mri')" in text and "close it first" in text, text
    # the first session's layers and work are untouched, and it still runs
    assert len(viewer.layers["a clicks"].data) == 1
    np.testing.assert_array_equal(viewer.layers["SimSeg labels"].data, labels)
    with pytest.raises(RuntimeError, match="another SimSeg session"):
        ViewerSession(viewer, "mri", checkpoint=checkpoint, device="cpu")  # the console too
    with qtbot.waitSignal(first.round_finished, timeout=TIMEOUT):
        viewer.layers["b clicks"].add([2, 30, 30])
    qtbot.waitUntil(lambda: first.worker is None, timeout=TIMEOUT)
    first.shutdown()  # its session ends: the layers are free
    assert second.start(wait=True), second.status_label.text()
    second.shutdown()


def test_configure_refuses_a_layer_that_is_not_an_image(viewer, checkpoint):
    viewer.add_image(_image(5), name="mri")
    labels = viewer.add_labels(np.zeros((5, 32, 36), np.uint8), name="mask")
    w = _add_widget(viewer)
    names = [layer.name for layer in viewer.layers]
    assert w.configure(checkpoint=checkpoint, device="cpu", image_layer=labels, start=True) is False
    assert w.session is None and [layer.name for layer in viewer.layers] == names
    assert "'mask' is a Labels layer, not an image layer" in w.status_label.text()
    assert w.configure(image_layer="nothing-called-so", start=True) is False
    assert "not a layer of this viewer" in w.status_label.text()
    assert w.configure(checkpoint=checkpoint, device="cpu", image_layer="mri", start=True)
    assert w.session.image_layer.name == "mri"
    w.shutdown()


def test_clicks_none_is_a_clear_error(viewer, checkpoint):
    from napari_simseg import InteractiveSession, ViewerSession
    from napari_simseg.core.interaction.clicks import ClickError

    viewer.add_image(_image(5), name="mri")
    vs = ViewerSession(viewer, "mri", checkpoint=checkpoint, device="cpu")
    core = InteractiveSession(_image(5), checkpoint, device="cpu")
    for session in (vs, core):
        with pytest.raises(ClickError, match=r"clicks must be a sequence of Click or \(class index, y, x\); got None"):
            session.add_clicks(1, None)
    assert core.log == [] and vs.session.log == []
    assert not vs.busy and len(viewer.layers["a clicks"].data) == 0


def test_a_point_between_slices_is_refused_as_the_api_refuses_it(viewer, checkpoint, qtbot):
    w = _started(viewer, checkpoint)
    pts = viewer.layers["a clicks"]
    pts.add(np.array([[2.7, 15.0, 20.0]]))
    qtbot.waitUntil(lambda: "between slices" in w.status_label.text(), timeout=TIMEOUT)
    assert "1 point between slices removed" in w.status_label.text()
    assert len(pts.data) == 0 and w.worker is None
    assert all(w.session.session.n_rounds(z) == 0 for z in range(5))  # not rounded onto slice 3
    with pytest.raises(IndexError, match="slice index must be an integer, got 2.7"):
        w.session.add_clicks(2.7, [(1, 15, 20)])
    with qtbot.waitSignal(w.round_finished, timeout=TIMEOUT) as blocker:  # on a slice, with float error: taken
        pts.add(np.array([[3.0 + 1e-9, 15.0, 20.0]]))
    assert blocker.args[0].slice_index == 3
    qtbot.waitUntil(lambda: w.worker is None, timeout=TIMEOUT)
    w.shutdown()
