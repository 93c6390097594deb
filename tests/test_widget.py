"""The SimSeg dock widget, added through the npe2 manifest, driven like a user would.

Rounds run on napari worker threads; the tests wait for the widget's signals. The
checkpoints are tiny random networks (seed 1 labels every pixel of a slice with class
1, so a slice that received a result is easy to tell from one that did not).
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

# Load torch's native stack before the first canvas (see napari_simseg._llvm_guard).
import segmentation_models_pytorch  # noqa: F401, E402

pytestmark = pytest.mark.gui

CLASSES = ("background", "a", "b")
TIMEOUT = 60_000  # ms; the machine is small and shared


def ones_but(shape, clicked):
    """What the session shows after a round of the tiny test network (class 1 everywhere), except
    the clicked pixels, which show their click's class."""
    out = np.ones(shape, np.uint8)
    for (y, x), label in clicked.items():
        out[y, x] = label
    return out


def _add_widget(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-simseg", "SimSeg")
    return widget


@pytest.fixture
def widget(viewer, volume, make_checkpoint):
    viewer.add_image(volume, name="mri", scale=(2.0, 1.0, 1.0))
    w = _add_widget(viewer)
    w.set_checkpoint(make_checkpoint(class_names=CLASSES, seed=1))
    w.device_combo.setCurrentText("cpu")
    yield w
    w.shutdown()


@pytest.fixture
def started(widget, viewer):
    assert widget.start(wait=True), widget.status_label.text()
    viewer.dims.set_current_step(0, 2)
    return widget


def _layer_names(viewer):
    return [layer.name for layer in viewer.layers]


def test_widget_comes_from_the_manifest(widget):
    from napari_simseg._widget import SimSegWidget

    assert isinstance(widget, SimSegWidget)
    assert widget.image_combo.currentText() == "mri"
    assert widget.overwrite_policy == "ask"


def test_start_creates_layers(started, viewer):
    names = _layer_names(viewer)
    assert "SimSeg labels" in names
    for name in CLASSES:
        assert f"{name} clicks" in names
    lab = viewer.layers["SimSeg labels"]
    assert lab.data.shape == (5, 40, 48)
    np.testing.assert_allclose(lab.scale, (2.0, 1.0, 1.0))
    assert "segmenting 'mri'" in started.status_label.text()


def test_click_round_runs_on_worker_and_undo_redo(started, viewer, qtbot):
    vs = started.session
    threads = []
    real = vs.session.add_clicks

    def spy(*args, **kwargs):
        threads.append(threading.current_thread())
        return real(*args, **kwargs)

    vs.session.add_clicks = spy
    lab = viewer.layers["SimSeg labels"]
    before = lab.data.copy()
    with qtbot.waitSignal(started.round_finished, timeout=TIMEOUT) as blocker:
        # two quick clicks in two class layers: one debounced round
        viewer.layers["a clicks"].add([2, 15, 20])
        viewer.layers["b clicks"].add([2, 30, 40])
    result = blocker.args[0]
    assert result.slice_index == 2 and result.round == 1
    assert len(threads) == 1 and threads[0] is not threading.main_thread()
    assert len(vs.session.log[-1]["clicks"]) == 2
    after = lab.data.copy()
    # the tiny test network predicts class 1 everywhere; the clicked pixels show their class
    np.testing.assert_array_equal(after[2], ones_but(after[2].shape, {(30, 40): 2}))
    for z in (0, 1, 3, 4):
        np.testing.assert_array_equal(after[z], before[z])
    assert re.match(r"round 1 on slice 2: \d+ ms", started.latency_label.text())
    qtbot.waitUntil(lambda: started.worker is None, timeout=TIMEOUT)

    started.undo()
    np.testing.assert_array_equal(lab.data, before)
    assert len(viewer.layers["a clicks"].data) == 0
    assert len(viewer.layers["b clicks"].data) == 0
    started.redo()
    np.testing.assert_array_equal(lab.data[2], ones_but(lab.data[2].shape, {(30, 40): 2}))
    assert len(viewer.layers["a clicks"].data) == 1


def test_status_line_says_what_the_refinement_kept_back(started, viewer, qtbot):
    """A round whose network changed pixels away from its clicks says how many it did not show."""
    import dataclasses

    vs = started.session
    real = vs.session.add_clicks
    vs.session.add_clicks = lambda *a, **k: dataclasses.replace(real(*a, **k), withheld=17)
    with qtbot.waitSignal(started.round_finished, timeout=TIMEOUT):
        viewer.layers["a clicks"].add([2, 15, 20])
    qtbot.waitUntil(lambda: started.worker is None, timeout=TIMEOUT)
    text = started.status_label.text()
    assert "round 1 done" in text and "17 changed pixels away from the clicks not shown" in text, text


def test_a_click_on_an_image_finer_than_the_working_grid_is_refined_in_a_focus_view(viewer, tmp_path, qtbot):
    """A checkpoint trained to read magnified views, on an image four times its working grid:
    a click after the automatic result is refined finer, and the status line says so."""
    import dataclasses

    from conftest import tiny_meta_and_model
    from napari_simseg.core.network.checkpoint import save_checkpoint

    meta, model = tiny_meta_and_model(class_names=CLASSES, seed=1)
    meta = dataclasses.replace(meta, working_size=32, training={"config": {"aug_scale": [0.9, 4.0]}})
    checkpoint = save_checkpoint(tmp_path / "zoom.safetensors", model, meta)
    viewer.add_image(np.random.default_rng(3).normal(size=(128, 128)).astype(np.float32), name="xray")
    w = _add_widget(viewer)
    w.set_checkpoint(checkpoint)
    w.device_combo.setCurrentText("cpu")
    try:
        assert w.start(wait=True), w.status_label.text()
        with qtbot.waitSignal(w.job_finished, timeout=TIMEOUT):
            w.auto_volume()
        qtbot.waitUntil(lambda: w.worker is None, timeout=TIMEOUT)
        with qtbot.waitSignal(w.round_finished, timeout=TIMEOUT):
            viewer.layers["b clicks"].add([64, 64])
        qtbot.waitUntil(lambda: w.worker is None, timeout=TIMEOUT)
        text = w.status_label.text()
        assert "round 1 done" in text and "1 click refined 4x finer than the working grid" in text, text
    finally:
        w.shutdown()


def test_keyboard_shortcuts_on_plugin_layers(started, viewer, qtbot):
    from napari.utils.key_bindings import coerce_keybinding

    pts = viewer.layers["a clicks"]
    lab = viewer.layers["SimSeg labels"]
    started._debounce.setInterval(60_000)  # only the key may start this round
    pts.add([2, 15, 20])
    with qtbot.waitSignal(started.round_finished, timeout=TIMEOUT):
        pts.keymap[coerce_keybinding("Enter")](pts)
    qtbot.waitUntil(lambda: started.worker is None, timeout=TIMEOUT)
    assert (lab.data[2] == 1).all()
    pts.keymap[coerce_keybinding("Control-Z")](pts)
    assert (lab.data[2] == 0).all()
    lab.keymap[coerce_keybinding("Alt-Shift-Z")](lab)
    assert (lab.data[2] == 1).all()
    # Ctrl-Z stays napari's paint undo on the labels layer
    assert coerce_keybinding("Control-Z") not in lab.keymap
    # the image layer gets no SimSeg keys
    assert coerce_keybinding("Alt-Z") not in viewer.layers["mri"].keymap


def test_hand_edited_slice_is_not_overwritten_without_asking(started, viewer, qtbot, monkeypatch):
    import napari_simseg._widget as widget_module

    asked = []
    monkeypatch.setattr(widget_module, "ask_overwrite", lambda parent, slices: asked.append(slices) or False)
    lab = viewer.layers["SimSeg labels"]
    lab.paint((2, 5, 5), 2)  # the user paints on slice 2
    assert 2 in started.session.hand_edited
    painted = lab.data[2].copy()
    with qtbot.waitSignal(started.round_finished, timeout=TIMEOUT):
        viewer.layers["a clicks"].add([2, 20, 20])
    assert asked == [[2]]
    np.testing.assert_array_equal(lab.data[2], painted)

    started.overwrite_policy = "always"
    qtbot.waitUntil(lambda: started.worker is None, timeout=TIMEOUT)
    with qtbot.waitSignal(started.round_finished, timeout=TIMEOUT):
        viewer.layers["b clicks"].add([2, 30, 30])
    assert asked == [[2]]
    # the round's labels replaced the painted slice (what they are is the refinement's business)
    np.testing.assert_array_equal(lab.data[2], started.session.session.labels[2])
    assert lab.data[2][30, 30] == 2 and (lab.data[2] != painted).any()


def test_auto_volume_progress_and_cancel(viewer, make_checkpoint, qtbot):
    rng = np.random.default_rng(2)
    viewer.add_image(rng.normal(size=(12, 32, 32)).astype(np.float32), name="vol")
    w = _add_widget(viewer)
    w.set_checkpoint(make_checkpoint(class_names=CLASSES, seed=1))
    w.device_combo.setCurrentText("cpu")
    assert w.start(wait=True), w.status_label.text()
    w.session.batch_size = 2
    lab = viewer.layers["SimSeg labels"]

    with qtbot.waitSignal(w.job_finished, timeout=TIMEOUT) as blocker:
        w.auto_volume()
        assert not w.progress.isHidden() and not w.cancel_button.isHidden()
        w.worker.yielded.connect(lambda value: value[0] >= 2 and w.cancel())
    kind, message = blocker.args
    assert kind == "auto" and "cancelled" in message
    qtbot.waitUntil(lambda: w.worker is None, timeout=TIMEOUT)
    done = [z for z in range(12) if (lab.data[z] == 1).all()]
    untouched = [z for z in range(12) if (lab.data[z] == 0).all()]
    assert done and untouched and len(done) + len(untouched) == 12
    assert done == list(range(len(done)))  # finished batches are kept, in order

    with qtbot.waitSignal(w.job_finished, timeout=TIMEOUT) as blocker:
        w.auto_volume()
    assert "done" in blocker.args[1]
    assert (lab.data == 1).all()
    qtbot.waitUntil(lambda: w.worker is None, timeout=TIMEOUT)  # job_finished comes first
    assert w.progress.isHidden()
    w.shutdown()


def test_auto_slice_and_reset(started, viewer, qtbot):
    lab = viewer.layers["SimSeg labels"]
    with qtbot.waitSignal(started.job_finished, timeout=TIMEOUT):
        started.auto_slice()
    assert (lab.data[2] == 1).all() and (lab.data[1] == 0).all()
    qtbot.waitUntil(lambda: started.worker is None, timeout=TIMEOUT)
    started.reset_slice()
    assert (lab.data[2] == 0).all()


@pytest.mark.parametrize(
    "setup, expected",
    [
        ("none", "no image layer"),
        ("rgb", "RGB"),
        ("4d", "4 dimensions"),
    ],
)
def test_bad_images_change_nothing(viewer, make_checkpoint, setup, expected):
    if setup == "rgb":
        colour = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)  # true colour
        viewer.add_image(colour, name="photo", rgb=True)
    elif setup == "4d":
        viewer.add_image(np.zeros((2, 3, 16, 16), np.float32), name="timeseries")
    w = _add_widget(viewer)
    w.set_checkpoint(make_checkpoint(class_names=CLASSES))
    names = _layer_names(viewer)
    assert not w.start(wait=True)
    assert expected in w.status_label.text()
    assert _layer_names(viewer) == names
    assert w.session is None
    w.shutdown()


def test_start_on_an_image_of_another_shape_keeps_the_earlier_labels(started, viewer):
    first = viewer.layers["SimSeg labels"]
    first.data[3, 5:9, 6:10] = 2  # the user's work on the first image
    painted = first.data.copy()
    viewer.add_image(np.random.default_rng(1).normal(size=(7, 30, 36)).astype(np.float32), name="ct")
    started.image_combo.setCurrentText("ct")
    assert started.start(wait=True), started.status_label.text()
    assert started.session.image_layer.name == "ct"
    assert first.name == "SimSeg labels (mri)" and first in viewer.layers
    np.testing.assert_array_equal(first.data, painted)
    assert viewer.layers["SimSeg labels"].data.shape == (7, 30, 36)
    assert "'SimSeg labels (mri)'" in started.status_label.text()
    # an earlier layer of the same name is not overwritten: the next one is numbered
    from napari_simseg.annotator.layers import keep_other_labels_layer

    viewer.layers["SimSeg labels"].metadata["image_name"] = "mri"
    assert keep_other_labels_layer(viewer, (7, 30, 36)) is None  # it fits: it stays
    assert keep_other_labels_layer(viewer, (1, 2, 3)) == "SimSeg labels (mri, 2)"
    assert "SimSeg labels" not in viewer.layers and first.name == "SimSeg labels (mri)"


def test_checkpoint_classes_must_fit_existing_labels(viewer, volume, make_checkpoint, tmp_path):
    viewer.add_image(volume, name="mri")
    viewer.add_labels(
        np.zeros(volume.shape, np.uint8), name="SimSeg labels",
        metadata={"class_names": ["background", "liver"]},
    )
    w = _add_widget(viewer)
    w.image_combo.setCurrentText("mri")
    w.set_checkpoint(make_checkpoint(class_names=CLASSES))
    names = _layer_names(viewer)
    assert not w.start(wait=True)
    text = w.status_label.text()
    assert "trained for classes" in text and "\n" not in text
    assert _layer_names(viewer) == names

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    w.set_checkpoint(broken)
    assert not w.start(wait=True)
    assert "broken.safetensors" in w.status_label.text()
    assert _layer_names(viewer) == names
    w.shutdown()


def test_missing_demo_model_is_explained(viewer, volume, tmp_path, monkeypatch):
    import napari_simseg._widget as widget_module
    import napari_simseg.core.io.resources as resources

    # as in an installation whose demo model file went missing
    monkeypatch.setattr(resources, "DEMO_CHECKPOINT", tmp_path / "missing.safetensors")
    monkeypatch.setattr(widget_module, "DEMO_CHECKPOINT", tmp_path / "missing.safetensors")
    viewer.add_image(volume, name="mri")
    w = _add_widget(viewer)
    assert "demo model is not installed" in w.status_label.text()
    assert not w.start(wait=True)
    assert "demo model is not installed" in w.status_label.text()
    w.shutdown()


def test_device_choice(started):
    import torch

    assert started.set_device("cpu")
    assert "cpu" in started.status_label.text()
    if not torch.cuda.is_available():
        assert not started.set_device("cuda")
        assert "cuda" in started.status_label.text()
        assert started.device_combo.currentText() == "cpu"


def test_image_combo_follows_layers(widget, viewer):
    viewer.add_image(np.zeros((8, 8)), name="other")
    assert "other" in [widget.image_combo.itemText(i) for i in range(widget.image_combo.count())]
    viewer.layers["other"].name = "renamed"
    items = [widget.image_combo.itemText(i) for i in range(widget.image_combo.count())]
    assert "renamed" in items and "other" not in items
    viewer.layers.remove("renamed")
    assert widget.image_combo.count() == 1


def test_save_and_load_through_widget(started, viewer, qtbot, tmp_path):
    with qtbot.waitSignal(started.round_finished, timeout=TIMEOUT):
        viewer.layers["a clicks"].add([2, 15, 20])
    qtbot.waitUntil(lambda: started.worker is None, timeout=TIMEOUT)
    out = started.save(tmp_path / "seg.nrrd")
    assert out is not None
    assert (tmp_path / "seg.nrrd").is_file() and (tmp_path / "seg.simseg.json").is_file()
    started.reset_slice()
    assert (viewer.layers["SimSeg labels"].data == 0).all()
    with qtbot.waitSignal(started.job_finished, timeout=TIMEOUT) as blocker:
        started.load(tmp_path / "seg.nrrd")
    assert "replayed" in blocker.args[1]
    assert (viewer.layers["SimSeg labels"].data[2] == 1).all()
    assert started.session.session.n_rounds(2) == 1
    assert len(viewer.layers["a clicks"].data) == 1
    qtbot.waitUntil(lambda: started.worker is None, timeout=TIMEOUT)
    started.undo()
    assert (viewer.layers["SimSeg labels"].data[2] == 0).all()


def test_2d_image(viewer, make_checkpoint, qtbot):
    rng = np.random.default_rng(3)
    viewer.add_image(rng.normal(size=(36, 40)).astype(np.float32), name="xray")
    w = _add_widget(viewer)
    w.set_checkpoint(make_checkpoint(class_names=CLASSES, seed=1))
    w.device_combo.setCurrentText("cpu")
    assert w.start(wait=True), w.status_label.text()
    with qtbot.waitSignal(w.round_finished, timeout=TIMEOUT):
        viewer.layers["b clicks"].add([10, 12])
    np.testing.assert_array_equal(viewer.layers["SimSeg labels"].data, ones_but((36, 40), {(10, 12): 2}))
    assert re.match(r"round 1: \d+ ms", w.latency_label.text())
    qtbot.waitUntil(lambda: w.worker is None, timeout=TIMEOUT)
    w.undo()
    assert (viewer.layers["SimSeg labels"].data == 0).all()
    w.shutdown()


def test_llvm_guard_prevents_the_triton_crash(tmp_path):
    """Importing the model stack after a canvas exists must not crash (Mesa LLVM vs triton)."""
    script = textwrap.dedent(
        """
        import napari
        viewer = napari.Viewer(show=False)
        from napari_simseg._llvm_guard import avoid_triton_llvm_clash
        avoid_triton_llvm_clash()
        import segmentation_models_pytorch
        viewer.close()
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, encoding="utf-8",
                          errors="replace", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ok" in proc.stdout


def test_restart_asks_before_forgetting_memories(started, viewer, qtbot, monkeypatch):
    import napari_simseg._widget as widget_module

    with qtbot.waitSignal(started.round_finished, timeout=TIMEOUT):
        viewer.layers["a clicks"].add([2, 15, 20])
    qtbot.waitUntil(lambda: started.worker is None, timeout=TIMEOUT)
    assert "1 new click on slice 2" in started.status_label.text()
    session = started.session
    monkeypatch.setattr(widget_module, "ask_restart", lambda parent: False)
    assert not started.start(wait=True)
    assert started.session is session and len(viewer.layers["a clicks"].data) == 1
    monkeypatch.setattr(widget_module, "ask_restart", lambda parent: True)
    assert started.start(wait=True), started.status_label.text()
    assert started.session is not session
    assert len(viewer.layers["a clicks"].data) == 0  # the old session's clicks go
    assert (viewer.layers["SimSeg labels"].data[2] == 1).all()  # labels stay
    assert started.session.hand_edited == {2}  # and are protected as the user's


def test_start_loads_the_checkpoint_on_a_worker_thread(widget, viewer, qtbot, monkeypatch):
    from napari_simseg.annotator.viewer_session import ViewerSession

    original = ViewerSession.load_predictor
    threads = []

    def spy(checkpoint, device="auto"):
        threads.append(threading.get_ident())
        return original(checkpoint, device)

    monkeypatch.setattr(ViewerSession, "load_predictor", staticmethod(spy))
    names = _layer_names(viewer)
    with qtbot.waitSignal(widget.job_finished, timeout=TIMEOUT) as blocker:
        widget.start_button.click()
        # the click returned before the checkpoint was loaded: nothing changed yet
        assert widget.session is None and widget.worker is not None
        assert "loading the checkpoint" in widget.status_label.text()
        assert _layer_names(viewer) == names
    kind, message = blocker.args
    assert kind == "start" and message.startswith("segmenting 'mri'"), message
    assert threads and threads[0] != threading.get_ident()
    assert widget.session is not None and "a clicks" in viewer.layers
