"""A GUI that never freezes (issue 34, point 3): napari's event loop keeps ticking (a 20 ms
``QTimer``, never more than 250 ms without a tick) while the widget, added through the npe2
manifest, runs *Start*, a round, *Auto volume*, *Propagate* and *Load*: networks load, files
are read and layers' data are built off the GUI thread. *Teach* is measured in
``test_teach_gui.py`` (its start, its run and the switch to the new checkpoint).

The sizes are those of the other widget tests; the bound is on the event loop's
responsiveness, measured only while each action runs, not on how fast the action is.
The viewer has drawn its image before *Start*, as a user's has.
"""

from __future__ import annotations

import numpy as np
import pytest

# Load torch's native stack before the first canvas (see napari_simseg._llvm_guard).
import segmentation_models_pytorch  # noqa: F401, E402

from loop_watch import LoopWatch

pytestmark = pytest.mark.gui

CLASSES = ("background", "a", "b")
TIMEOUT = 120_000  # ms; the machine is small and shared
MAX_STALL = 0.25  # s


def test_the_event_loop_never_stalls_during_the_widgets_actions(make_napari_viewer, make_checkpoint, qtbot,
                                                                tmp_path):
    viewer = make_napari_viewer(show=True)
    rng = np.random.default_rng(0)
    volume = rng.normal(100, 20, size=(12, 40, 48)).astype(np.float32)
    volume[:, 10:25, 12:30] += 80
    viewer.add_image(volume, name="mri")
    _, widget = viewer.window.add_plugin_dock_widget("napari-simseg", "SimSeg")
    widget.set_checkpoint(make_checkpoint(class_names=CLASSES, seed=1, context_slices=1))
    widget.device_combo.setCurrentText("cpu")

    def run(name, action, signal=None):
        with loop.action(name), qtbot.waitSignal(signal or widget.job_finished, timeout=TIMEOUT) as blocker:
            action()
        qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT)
        return blocker.args

    qtbot.wait(300)  # the image's first draw
    with LoopWatch(20) as loop:
        kind, message = run("Start", widget.start_button.click)
        assert kind == "start" and message.startswith("segmenting 'mri'"), message
        viewer.dims.set_current_step(0, 6)
        result, = run("round", lambda: viewer.layers["a clicks"].add([6, 15, 20]), widget.round_finished)
        assert result.slice_index == 6
        kind, message = run("Propagate", widget.propagate_button.click)
        assert kind == "propagate" and "propagated to" in message, message
        widget.session.undo_propagation()
        kind, message = run("Auto volume", widget.auto_volume_button.click)
        assert kind == "auto" and "done" in message, message
        labels_path, _ = widget.save(tmp_path / "seg.nii.gz")
        widget.session.reset(6)
        kind, message = run("Load", lambda: widget.load(labels_path))
        assert kind == "load" and "replayed" in message, message
    print(f"event loop ({len(loop.ticks)} ticks of 20 ms), longest gap per action: {loop.report()}")
    stalled = {name: gap for name, gap in loop.gaps.items() if gap > MAX_STALL}
    assert not stalled, f"the event loop stalled: {loop.report()}"
    np.testing.assert_array_equal(widget.session.labels[6] > 0, True)  # the load restored the round's slice
    widget.shutdown()
