"""A GUI that never freezes (issue 34, point 3): napari's event loop keeps ticking (a 20 ms
``QTimer``, never more than 250 ms without a tick) while the widget, added through the npe2
manifest, runs *Start*, a round, *Auto volume*, *Propagate* and *Load*: networks load, files
are read and layers' data are built off the GUI thread. *Teach* is measured in
``test_teach_gui.py`` (its start, its run and the switch to the new checkpoint).

The sizes are those of the other widget tests; the bound is on the event loop's
responsiveness, measured only while each action runs, not on how fast the action is.
The viewer has drawn its image before *Start*, as a user's has.

The bound is 250 ms on this 2-core machine when it is quiet. A machine shared with other
work can be slower for a while (one fresh-clone run, and an hour of this session, saw every
action 1.5-3 times slower than usual, napari's own layer add included): the bound scales
with napari's own add of a bare labels layer, measured in the same viewer right after the
actions, against its quiet figure (``QUIET_LAYER_ADD``); a faster machine keeps 250 ms. A
stall is only reported when a second, whole attempt in a new viewer stalls too; both
attempts' figures are printed.
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
#: napari's own add (and first draw) of a bare labels layer on this 2-core machine when it is quiet
#: (121-139 ms in the runs that measured Start at 153-164 ms); a slower machine scales every bound
QUIET_LAYER_ADD = 0.13  # s


def _napari_labels_layer_add(viewer, shape, qtbot) -> float:
    """The event loop's longest gap while napari adds (and first draws) one labels layer of ``shape``,
    the second of two adds (the first pays one-time costs)."""
    gaps = []
    for _ in range(2):
        with LoopWatch(20) as loop:
            with loop.action("add"):
                layer = viewer.add_labels(np.zeros(shape, np.uint8), name="bare labels")
                qtbot.wait(300)  # its first draw
        viewer.layers.remove(layer)
        qtbot.wait(100)
        gaps.append(loop.gaps["add"])
    return gaps[-1]


def _watch_the_widgets_actions(make_napari_viewer, make_checkpoint, qtbot, folder) -> tuple[LoopWatch, float]:
    """Start, a round, Propagate, Auto volume and Load in a new viewer, the event loop watched;
    and napari's bare labels-layer add in the same viewer afterwards (the machine's speed now)."""
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
        folder.mkdir(exist_ok=True)
        labels_path, _ = widget.save(folder / "seg.nii.gz")
        widget.session.reset(6)
        kind, message = run("Load", lambda: widget.load(labels_path))
        assert kind == "load" and "replayed" in message, message
    np.testing.assert_array_equal(widget.session.labels[6] > 0, True)  # the load restored the round's slice
    bare_add = _napari_labels_layer_add(viewer, volume.shape, qtbot)
    print(f"event loop ({len(loop.ticks)} ticks of 20 ms), longest gap per action: {loop.report()}; "
          f"napari's bare labels-layer add {bare_add * 1e3:.0f} ms")
    widget.shutdown()
    return loop, bare_add


def test_the_event_loop_never_stalls_during_the_widgets_actions(make_napari_viewer, make_checkpoint, qtbot,
                                                                tmp_path):
    reports = []
    for attempt in (1, 2):  # a second, whole attempt only where the first stalled: a busy shared host
        loop, bare_add = _watch_the_widgets_actions(make_napari_viewer, make_checkpoint, qtbot,
                                                    tmp_path / f"try{attempt}")
        bound = MAX_STALL * max(1.0, bare_add / QUIET_LAYER_ADD)
        reports.append(f"{loop.report()} (bound {bound * 1e3:.0f} ms: napari's bare layer add {bare_add * 1e3:.0f} ms)")
        if all(gap <= bound for gap in loop.gaps.values()):
            return
    pytest.fail(f"the event loop stalled in both attempts: {reports}")
