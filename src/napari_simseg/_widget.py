"""The SimSeg dock widget: buttons around a :class:`ViewerSession`, its jobs run off the GUI thread.

Every action on the image goes through :class:`~napari_simseg.annotator.viewer_session.ViewerSession`
(the console API), so the widget and scripts cannot drift apart. One path down and back:
the widget asks the session for a :class:`~napari_simseg.annotator.jobs.Job`
(``prepare_round``, ``prepare_auto``, ``prepare_propagate``, ``prepare_load``,
``ViewerSession.prepare_start``), :class:`~napari_simseg.annotator.job_worker.JobWorker` runs its
``compute`` on a napari worker thread and its ``finish`` on the GUI thread (which writes the
layers), and the widget shows the job's own summary. What the widget adds:

* clicks are debounced: each new point restarts a single-shot timer
  (:attr:`SimSegWidget.DEBOUNCE_MS`), and when it fires ``ViewerSession.prepare_round()``
  gathers the pending points of one slice into a round; clicks placed while a round
  runs wait for the next one;
* one job at a time: while a worker runs, the buttons that change the session (and
  *Teach*) are disabled and key presses are refused with a message;
* "Auto volume", "Propagate" and "Load" run generator jobs reporting ``(done, total)`` to a
  progress bar; Cancel quits them between steps and what was finished is kept (a load
  changes nothing until it is complete);
* questions go through Qt dialogs (:func:`ask_overwrite` and :func:`ask_discard`, passed
  to the session as its ``confirm`` and ``confirm_discard``, and :func:`ask_restart`); those a
  job's end raises (restore unsaved work after *Start*, load labels alone) once its worker is gone;
* autosave: every job's end hands the session's work to its recovery store; a paint stroke
  does after :attr:`SimSegWidget.AUTOSAVE_MS` (strokes in quick succession are saved once);
* the model stack (torch) is imported on a thread of its own when the widget is first shown.

This module never imports torch; it gets numpy arrays back from the core.
"""

from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path

from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_simseg.annotator.controls import DEMO, CheckpointField, session_buttons
from napari_simseg.annotator.dialogs import (
    ask_discard,
    ask_labels_alone,
    ask_overwrite,
    ask_recover,
    ask_restart,
    disconnect_all,
)
from napari_simseg.annotator.image_picker import ImagePicker
from napari_simseg.annotator.job_worker import JobWorker
from napari_simseg.annotator.jobs import one_line
from napari_simseg.annotator.shortcuts import bind_session_keys, unbind_keys
from napari_simseg.annotator.teach_panel import TeachPanel, set_wrapped_text, wrapping_label
from napari_simseg.annotator.viewer_session import OVERWRITE_POLICIES, SessionOptions, ViewerSession
from napari_simseg.core.io.images import WRITABLE_EXTENSIONS
from napari_simseg.core.io.resources import DEMO_CHECKPOINT, peek_channel_names
from napari_simseg.core.network.devices import DEVICES

__all__ = ["SimSegWidget", "ask_discard", "ask_overwrite", "ask_restart"]

logger = logging.getLogger(__name__)

#: what a failed action raises that the status line reports (anything else is a bug: it propagates)
_REPORTED = (ValueError, TypeError, RuntimeError, OSError, IndexError)


def _same_layer(a, b) -> bool:
    """Whether two layers are one, seen through napari's plugin proxies or not."""
    return a is not None and b is not None and getattr(a, "__wrapped__", a) is getattr(b, "__wrapped__", b)


def _release(viewer_connections, layer_connections, bound_layers, sessions) -> None:
    """Let go of the viewer once the Qt widget is gone (no call may reach it then)."""
    disconnect_all(viewer_connections)
    disconnect_all(layer_connections)
    unbind_keys(bound_layers)
    for session in sessions:
        session.close()  # another widget may take its layers over
    del sessions[:]


def _import_model_stack() -> None:
    try:
        ViewerSession.import_model_stack()
    except Exception:  # noqa: BLE001 - Start reports it, with its reason
        logger.debug("SimSeg: importing the model stack failed", exc_info=True)


class SimSegWidget(QWidget):
    """Interactive multi-class segmentation of an image layer.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        Injected by napari when the widget is opened from the Plugins menu.

    Attributes
    ----------
    session : ViewerSession or None
        The running session (also usable from the console).
    jobs : JobWorker
        Runs the session's jobs on worker threads (``jobs.worker``: the one in progress).
    overwrite_policy : {"ask", "always", "never"}
        What to do when a result would replace hand-edited labels.

    Signals
    -------
    round_finished(RoundResult)
        A round's labels are on the layer.
    job_finished(str kind, str message)
        Any job (``start``, ``round``, ``auto``, ``propagate``, ``load``) ended: done, failed or cancelled.
    """

    DEBOUNCE_MS = 400
    AUTOSAVE_MS = 250

    round_finished = Signal(object)
    job_finished = Signal(str, str)
    _idle = Signal()  # a job's worker is gone and the widget is ready for the next one

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session: ViewerSession | None = None
        self._end_session_when_idle: str | None = None  # end the session with this once the job ends
        self._questions: list = []  # dialogs a job's end raised, asked once its worker is gone
        self._start_failure: str | None = None  # the status of the last failed Start
        self._starting_device = "auto"
        self._preloaded = False
        self._layer_connections: list = []  # (emitter, callback) on the session's layers
        self._bound_layers: list = []
        self._sessions: list = []  # the session, for the destroyed-handler to close
        self._build_ui()
        self.jobs = JobWorker(self.progress, self.cancel_button, self)
        self.jobs.ended.connect(self._on_job_ended)
        self.jobs.idle.connect(self._on_idle)
        self._update_buttons()

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(self.DEBOUNCE_MS)
        self._debounce.timeout.connect(self._on_debounce)
        self._autosave_timer = QTimer(self)  # after a paint stroke (a job's end saves by itself)
        self._autosave_timer.setSingleShot(True)
        self._autosave_timer.setInterval(self.AUTOSAVE_MS)
        self._autosave_timer.timeout.connect(self._autosave)

        self._viewer_connections = [
            (self.viewer.layers.events.inserted, self._on_layers_changed),
            (self.viewer.layers.events.removed, self._on_layers_changed),
            (self.viewer.layers.events.moved, self._on_layers_changed),
        ]
        for emitter, callback in self._viewer_connections:
            emitter.connect(callback)
        for layer in self.viewer.layers:
            self._watch_name(layer)
        # the C++ widget can go before the viewer: then nothing may call into it
        # (the lists are emptied in place, so the partial sees later additions)
        self.destroyed.connect(functools.partial(
            _release, self._viewer_connections, self._layer_connections, self._bound_layers, self._sessions))
        self._refresh_image_combo()
        if not DEMO_CHECKPOINT.is_file():
            self._set_status("The bundled demo model is not installed: choose a checkpoint "
                             "(.safetensors) with Browse...")

    @property
    def worker(self):
        """The napari worker of the job in progress, or None."""
        return self.jobs.worker

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)
        self.image_picker = ImagePicker(self.viewer)
        self.image_combo = self.image_picker.image_combo
        layout.addWidget(self.image_picker)
        form = QFormLayout()

        self.checkpoint_field = CheckpointField()
        self.checkpoint_edit = self.checkpoint_field.edit
        self.checkpoint_field.changed.connect(self._on_checkpoint_changed)
        form.addRow("Checkpoint", self.checkpoint_field)

        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        self.device_combo.setToolTip("Where the network runs; changing it moves the loaded model")
        self._device = "auto"
        self.device_combo.currentTextChanged.connect(self._on_device_changed)
        form.addRow("Device", self.device_combo)

        self.policy_combo = QComboBox()
        self.policy_combo.addItems(OVERWRITE_POLICIES)
        self.policy_combo.setToolTip(
            "When a result would replace labels you painted by hand: ask, always replace, never replace"
        )
        self.policy_combo.currentTextChanged.connect(self._on_policy_changed)
        form.addRow("Hand edits", self.policy_combo)
        layout.addLayout(form)

        self.start_button = QPushButton("Start")
        self.start_button.setToolTip("Load the checkpoint and create one click layer per class")
        self.start_button.clicked.connect(lambda: self.start())
        layout.addWidget(self.start_button)
        grid, buttons = session_buttons({
            "run": self.run_now, "auto_slice": self.auto_slice, "auto_volume": self.auto_volume, "undo": self.undo,
            "redo": self.redo, "reset": self.reset_slice, "propagate": self.propagate})
        for name, button in buttons.items():
            setattr(self, f"{name}_button", button)
        layout.addLayout(grid)

        progress_row = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.cancel)
        progress_row.addWidget(self.progress)
        progress_row.addWidget(self.cancel_button)
        layout.addLayout(progress_row)

        files = QHBoxLayout()
        self.save_button = QPushButton("Save...")
        self.save_button.setToolTip("Write the labels and the interaction log (<name>.simseg.json)")
        self.save_button.clicked.connect(self._save_dialog)
        self.load_button = QPushButton("Load...")
        self.load_button.setToolTip("Restore labels and, with their .simseg.json log, the interaction memories")
        self.load_button.clicked.connect(self._load_dialog)
        files.addWidget(self.save_button)
        files.addWidget(self.load_button)
        layout.addLayout(files)

        self.teach_panel = TeachPanel(lambda: self.session)  # Teach: budget, progress, Cancel, Dice
        self.teach_panel.teach_finished.connect(self._on_teach_finished)
        layout.addWidget(self.teach_panel)
        self.latency_label = wrapping_label()
        self.status_label = wrapping_label()
        layout.addWidget(self.latency_label)
        layout.addWidget(self.status_label)
        layout.addStretch(1)

    def _set_status(self, text: str) -> None:
        set_wrapped_text(self.status_label, text)
        if text:
            logger.info("SimSeg: %s", text)

    def _update_buttons(self) -> None:
        running = self.session is not None
        busy = self.jobs.busy
        for button in (
            self.run_button, self.auto_slice_button, self.auto_volume_button, self.undo_button,
            self.redo_button, self.reset_button, self.propagate_button, self.save_button, self.load_button,
        ):
            button.setEnabled(running and not busy)
        self.start_button.setEnabled(not busy)
        self.device_combo.setEnabled(not busy)
        self.teach_panel.set_busy(busy)
        self.start_button.setText("Restart" if running else "Start")

    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        if not self._preloaded:  # the canvas exists now, so the LLVM guard sees its driver
            self._preloaded = True
            threading.Thread(target=_import_model_stack, daemon=True, name="simseg-import").start()

    # ------------------------------------------------------------------ layers
    def _watch_name(self, layer) -> None:
        emitter = layer.events.name
        emitter.connect(self._on_layers_changed)
        self._viewer_connections.append((emitter, self._on_layers_changed))

    def _on_layers_changed(self, event=None) -> None:
        kind = getattr(event, "type", None) if event is not None else None
        if kind == "inserted":
            self._watch_name(event.value)
        elif kind == "removed" and self.session is not None:
            self._on_session_layer_removed(event.value)
        self._refresh_image_combo()

    def _on_session_layer_removed(self, layer) -> None:
        """The session's image gone: the session ends (its labels and clicks stay); a
        class's clicks layer gone: say what that means."""
        s = self.session
        if _same_layer(layer, s.image_layer):  # a channel view forwards its attributes, __wrapped__ too
            message = (f"the image '{layer.name}' was removed from the viewer: its session ended (the labels "
                       "and clicks layers stay; press Start to segment an image)")
            if self.jobs.busy:
                self._end_session_when_idle = message  # the running job still has its session
            else:
                self._end_session(message)
        elif any(_same_layer(layer, c) for c in s.click_layers):
            self._set_status(f"'{layer.name}' was removed: that class cannot be clicked until Restart, which "
                             "makes the layer again (the labels stay)")

    def _end_session(self, message: str) -> None:
        """Stop the session without touching its layers; the widget waits for Start."""
        self._end_session_when_idle = None
        self._debounce.stop()
        self._detach()
        self.session = None
        self.latency_label.setText("")
        self._update_buttons()
        self._set_status(message)

    def _refresh_image_combo(self) -> None:
        self.image_picker.refresh()

    def selected_image_layer(self):
        """The image layer chosen in the *Image* box, or None."""
        return self.image_picker.image_layer()

    # ------------------------------------------------------------------ checkpoint, configuration
    def _on_checkpoint_changed(self) -> None:
        """Show one image box per channel when the checkpoint reads several; say at once when
        the file is missing, and clear what a failed Start said once the path is fixed."""
        text = self.checkpoint_field.text()
        self.image_picker.set_channels(peek_channel_names(text))
        problem = self.checkpoint_field.problem()
        if problem:
            self._start_failure = problem
            self._set_status(problem)
        elif self._start_failure is not None and self.status_label.text() == self._start_failure:
            self._start_failure = None
            self._set_status(f"checkpoint {Path(text).name}: press {self.start_button.text()}")

    def configure(self, checkpoint=None, device=None, image_layer=None, start: bool = False) -> bool:
        """Set the checkpoint, device and image (any left None stays), optionally Start.

        Returns whether a session runs afterwards; an ``image_layer`` that is not an image
        layer of this viewer is refused (nothing changes, nothing starts) with a message.
        """
        if image_layer is not None:
            problem = self._image_choice_problem(image_layer)
            if problem:
                self._set_status(problem)
                return False
        if checkpoint is not None:
            self.set_checkpoint(checkpoint)
        if device is not None:
            self.device_combo.setCurrentText(str(device))
        if image_layer is not None:
            self.image_picker.select(image_layer)
        if start:
            return self.start(wait=True)
        return self.session is not None

    def _image_choice_problem(self, image_layer) -> str | None:
        from napari.layers import Image

        name = getattr(image_layer, "name", str(image_layer))
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        if layer is None or (not isinstance(image_layer, str) and not _same_layer(layer, image_layer)):
            return f"'{name}' is not a layer of this viewer: nothing started"
        if not isinstance(layer, Image):
            kind = type(getattr(layer, "__wrapped__", layer)).__name__
            return f"'{name}' is a {kind} layer, not an image layer: choose an image (nothing started)"
        return None

    def set_checkpoint(self, path) -> None:
        """Use this checkpoint at the next Start (``"demo"``: the bundled model)."""
        self.checkpoint_field.set_text(str(path))

    @property
    def overwrite_policy(self) -> str:
        return self.policy_combo.currentText()

    @overwrite_policy.setter
    def overwrite_policy(self, value: str) -> None:
        if value not in OVERWRITE_POLICIES:
            raise ValueError(f"overwrite_policy must be one of {OVERWRITE_POLICIES}, got {value!r}")
        self.policy_combo.setCurrentText(value)

    def _on_policy_changed(self, value: str) -> None:
        if self.session is not None:
            self.session.overwrite_policy = value

    def _confirm_overwrite(self, slices) -> bool:
        return ask_overwrite(self, slices)

    def _confirm_discard(self, question: str) -> bool:
        return ask_discard(self, question)

    # ------------------------------------------------------------------ start
    def start(self, wait: bool = False) -> bool:
        """Start (or restart) a session on the chosen image and checkpoint.

        The layers are checked at once; the checkpoint then loads and the image is read on a
        worker thread (the GUI stays responsive), and the session replaces the previous one
        when it is ready, with ``job_finished("start", message)``. On any problem the status
        label shows one line and nothing changes.

        Parameters
        ----------
        wait : bool
            Return only when loading has ended, running the Qt event loop meanwhile
            (scripts, ``configure(start=True)``).

        Returns
        -------
        bool
            ``wait=False``: whether loading started. ``wait=True``: whether a new
            session now runs.
        """
        if self.jobs.busy:
            self._set_status("SimSeg is busy; wait for the current job to finish")
            return False
        checkpoint = self.checkpoint_field.text()
        if checkpoint == DEMO and not DEMO_CHECKPOINT.is_file():
            self._set_status(f"the bundled demo model is not installed ({DEMO_CHECKPOINT.name}); choose a "
                             "checkpoint (.safetensors) with Browse...")
            return False
        self._on_checkpoint_changed()
        options = SessionOptions(device=self.device_combo.currentText(), overwrite_policy=self.overwrite_policy,
                                 confirm=self._confirm_overwrite, confirm_discard=self._confirm_discard,
                                 channel_axis=self.image_picker.channel_axis())
        try:
            job = ViewerSession.prepare_start(self.viewer, self.image_picker.selection(), checkpoint, options,
                                              replaces=self.session)
        except _REPORTED as exc:
            self._start_failure = one_line(exc)
            self._set_status(self._start_failure)
            return False
        if self.session is not None and self.session.has_rounds() and not ask_restart(self):
            return False
        self._starting_device = options.device
        previous = self.session
        if not wait:
            self._run(job)
            return True
        from qtpy.QtCore import QEventLoop

        loop = QEventLoop()
        # connected before the worker starts: a load that fails at once must not end
        # before anyone listens (the loop would then wait forever)
        self._idle.connect(loop.quit)
        try:
            self._run(job)
            if self.jobs.busy:
                loop.exec()
        finally:
            self._idle.disconnect(loop.quit)
        return self.session is not None and self.session is not previous

    def _adopt(self, session: ViewerSession) -> None:
        """The started session becomes the widget's (the previous one was closed by it)."""
        self._detach()
        self.session = session
        session.schedule_autosave = self._autosave_timer.start
        self._sessions[:] = [session]
        self._device = self._starting_device
        self._start_failure = None
        self._attach()

    def _attach(self) -> None:
        """Listen to the session's click layers and bind the SimSeg keys on its layers."""
        s = self.session
        for layer in s.click_layers:
            layer.events.data.connect(self._on_points_changed)
            self._layer_connections.append((layer.events.data, self._on_points_changed))
        actions = {"undo": self.undo, "redo": self.redo, "run": self.run_now, "propagate": self.propagate}
        bind_session_keys(s.click_layers, s.labels_layer, actions, self._bound_layers)

    def _detach(self) -> None:
        disconnect_all(self._layer_connections)
        unbind_keys(self._bound_layers)
        if self.session is not None:
            self.session.close()
        del self._sessions[:]

    # ------------------------------------------------------------------ device
    def _on_device_changed(self, device: str) -> None:
        if self.session is None:
            self._device = device  # used at the next Start
        elif device != self._device:
            self.set_device(device)

    def _show_device(self, device: str) -> None:
        self.device_combo.blockSignals(True)
        self.device_combo.setCurrentText(device)
        self.device_combo.blockSignals(False)

    def set_device(self, device: str) -> bool:
        """Rebuild the predictor on ``device``; on failure the previous one stays."""
        if self.session is None:
            self.device_combo.setCurrentText(device)
            return True
        try:
            if self.jobs.busy:
                raise RuntimeError("SimSeg is busy; change the device when the job is done")
            name = self.session.set_device(device)
        except (ValueError, RuntimeError, OSError) as exc:
            self._set_status(str(exc))
            self._show_device(self._device)
            return False
        self._device = device
        self._show_device(device)
        self._set_status(f"the network now runs on {name}")
        return True

    # ------------------------------------------------------------------ rounds and jobs
    def _on_points_changed(self, event) -> None:
        action = getattr(getattr(event, "action", None), "value", getattr(event, "action", None))
        if action in ("adding", "removing", "changing"):
            return  # the completed action follows
        self._debounce.start()  # restarts: quick clicks form one round

    def _on_debounce(self) -> None:
        if self.session is None or self.jobs.busy:
            return  # a running job picks the clicks up when it ends
        try:
            # the session picks the slice: the current one if it has new clicks, else the first that has
            job = self.session.prepare_round()
        except _REPORTED as exc:
            self._set_status(str(exc))
            return
        if job is None and self.session.ignored_points:
            self._set_status(self.session.ignored_note)
        self._run(job)

    def run_now(self) -> None:
        """Run a round now with the new clicks of the current slice."""
        if not self._ready():
            return
        self._debounce.stop()
        z = self.session.current_slice()
        try:
            job = self.session.prepare_round(z)
        except _REPORTED as exc:
            self._set_status(str(exc))
            return
        if job is None:
            note = f"; {self.session.ignored_note}" if self.session.ignored_points else ""
            self._set_status(f"no new clicks on slice {z}{note}")
        self._run(job)

    def auto_slice(self) -> None:
        """Segment the current slice without clicks, on a worker."""
        if self._ready():
            self._prepare_and_run(lambda s: s.prepare_auto(s.current_slice()))

    def auto_volume(self) -> None:
        """Segment every slice without clicks, on a generator worker with progress."""
        if self._ready():
            self._prepare_and_run(lambda s: s.prepare_auto(None))

    def propagate(self) -> None:
        """Carry the current slice into its neighbours, on a generator worker with progress."""
        if self._ready():
            self._prepare_and_run(lambda s: s.prepare_propagate(s.current_slice()))

    def load(self, path) -> None:
        """Restore labels from ``path`` and replay their log (on a worker)."""
        if self._ready():
            self._prepare_and_run(lambda s: s.prepare_load(path))

    def cancel(self) -> None:
        """Stop a running automatic segmentation, propagation or load after its current step."""
        if self.jobs.cancel():
            self._set_status("cancelling after the current batch ...")

    def _prepare_and_run(self, prepare) -> None:
        try:
            job = prepare(self.session)
        except _REPORTED as exc:
            self._set_status(str(exc))
            return
        self._run(job)

    def _run(self, job) -> None:
        if job is None:
            return
        self.jobs.start(job)
        self._set_status(f"{job.description} ...")
        self._update_buttons()

    def _on_job_ended(self, kind: str, message: str, timing: str, value) -> None:
        if kind == "start":
            if value is not None:
                self._adopt(value)
                self._questions.append(self._offer_recovery)  # asked once the worker is gone
            else:
                self._start_failure = message
        if value is not None:
            self.latency_label.setText(timing)  # a round's timing; other jobs: what it showed is stale
        self._set_status(message)
        self.job_finished.emit(kind, message)
        if kind == "round" and value is not None:
            self.round_finished.emit(value)
        if kind == "load" and self.session is not None and self.session.mismatched_load is not None:
            self._questions.append(self._offer_labels_alone)  # asked once the worker is gone

    def _offer_labels_alone(self) -> None:
        """A load refused for a log saved with other labels: ask whether to load the labels alone."""
        path = None if self.session is None else self.session.mismatched_load
        if path is not None and ask_labels_alone(self, self.status_label.text()):
            self._prepare_and_run(lambda s: s.prepare_load(path, discard=True, log=False))

    def _offer_recovery(self) -> None:
        """After Start: offer the unsaved work a session left on this image; declined, it is not
        offered again (and expires)."""
        info = None if self.session is None else self.session.recoverable()
        if info is None:
            return
        if ask_recover(self, info.describe()):
            self._prepare_and_run(lambda s: s.prepare_recover(info))
        else:
            self.session.recovery.decline(info)

    def _autosave(self) -> None:
        """A paint stroke's autosave (a running job's end does it instead)."""
        if self.session is not None and not self.jobs.busy:
            self.session.autosave()
            if self.session.recovery is not None and self.session.recovery.error:
                self._set_status(self.session.recovery.error)

    def _ask_questions(self) -> None:
        """The questions a job's end raised (one job at a time: the first that starts one ends it)."""
        while self._questions and not self.jobs.busy:
            self._questions.pop(0)()

    def _on_idle(self) -> None:
        self._update_buttons()
        if self._end_session_when_idle:
            self._end_session(self._end_session_when_idle)
        self._idle.emit()
        if self._questions:
            QTimer.singleShot(0, self._ask_questions)
        if self.session is not None:
            QTimer.singleShot(0, self._on_debounce)  # clicks placed while it ran

    def _on_teach_finished(self, status: str, message: str) -> None:
        """The session switched to a taught checkpoint: the field shows it, so Restart keeps it."""
        job = self.session.teach_job if self.session is not None else None
        if job is not None and job.switched:
            self.checkpoint_field.set_text(self.session.checkpoint)

    # ------------------------------------------------------------------ undo, redo, reset
    def undo(self) -> None:
        """Undo the current slice's newest round (its clicks go too)."""
        self._quick(lambda s: s.undo(), "undid the last round (or the propagation) on slice {z}")

    def redo(self) -> None:
        """Redo the current slice's most recently undone round."""
        self._quick(lambda s: s.redo(), "redid a round on slice {z}")

    def reset_slice(self) -> None:
        """Forget the current slice's rounds and clicks and clear its labels."""
        self._quick(lambda s: s.reset(), "slice {z} reset")

    def _quick(self, action, message: str) -> None:
        # undo/redo/reset need no network: they run here, but never during a job
        if not self._ready():
            return
        z = self.session.current_slice()
        try:
            action(self.session)
        except (ValueError, RuntimeError, IndexError) as exc:
            self._set_status(str(exc))
            return
        self.latency_label.setText("")
        self._set_status(message.format(z=z))

    def _ready(self) -> bool:
        if self.session is None:
            self._set_status("press Start first")
            return False
        if self.jobs.busy:
            self._set_status(f"SimSeg is busy ({self.jobs.job.description}); wait for it to finish")
            return False
        return True

    # ------------------------------------------------------------------ files
    def save(self, path) -> tuple | None:
        """Write the labels to ``path`` and the interaction log beside them."""
        if not self._ready():
            return None
        try:
            labels, log = self.session.save(path)
        except (ValueError, OSError, RuntimeError) as exc:
            self._set_status(str(exc))
            return None
        self._set_status(f"saved {labels.name} and {log.name}")
        return labels, log

    def _file_filter(self) -> str:
        patterns = " ".join(f"*{e}" for e in WRITABLE_EXTENSIONS)
        return f"Label images ({patterns})"

    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save SimSeg labels", "labels.nii.gz", self._file_filter())
        if path:
            self.save(path)

    def _load_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load SimSeg labels", "", self._file_filter())
        if path:
            self.load(Path(path))

    # ------------------------------------------------------------------ teardown
    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop a running worker and let go of the viewer's layers."""
        self._debounce.stop()
        self._autosave_timer.stop()
        self.jobs.shutdown()
        self._detach()
        disconnect_all(self._viewer_connections)
