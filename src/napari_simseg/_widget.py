"""The SimSeg dock widget (buttons and threading around a :class:`ViewerSession`) and its dialogs.

Every action on the image goes through :class:`~napari_simseg.annotator.viewer_session.ViewerSession`
(the console API), so the widget and scripts cannot drift apart. What the widget adds:

* the network runs on a napari worker thread, never on the GUI thread: a round is
  ``ViewerSession.prepare_round`` (GUI thread) -> ``Job.compute`` (worker) ->
  ``Job.finish`` (GUI thread, via the worker's ``returned`` signal);
* clicks are debounced: each new point restarts a single-shot timer
  (:attr:`SimSegWidget.DEBOUNCE_MS`), and when it fires ``ViewerSession.prepare_round()``
  gathers the pending points of one slice into a round; clicks placed while a round
  runs wait for the next one;
* one job at a time: while a worker runs, the buttons that change the session are
  disabled and key presses are refused with a message;
* "Auto volume" and "Propagate" run generator workers reporting ``(done, total)`` to a
  progress bar; Cancel quits them between batches (slices) and the finished slices are kept;
* questions go through Qt dialogs (:func:`ask_overwrite` and :func:`ask_discard`, passed
  to the session as its ``confirm`` and ``confirm_discard``, and :func:`ask_restart`);
* "Load" replays the log as a generator job, with the progress bar and Cancel.

This module never imports torch; it gets numpy arrays back from the core.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from napari_simseg.annotator.dialogs import (
    JobError,
    ask_discard,
    ask_overwrite,
    ask_restart,
    disconnect_all,
    shield_runtime_errors,
)
from napari_simseg.annotator.image_picker import ImagePicker
from napari_simseg.annotator.layers import check_image_layer
from napari_simseg.annotator.teach_panel import TeachPanel
from napari_simseg.annotator.viewer_session import OVERWRITE_POLICIES, Job, ViewerSession
from napari_simseg.core.io.colour import is_colour_names
from napari_simseg.core.io.images import WRITABLE_EXTENSIONS
from napari_simseg.core.io.resources import DEMO_CHECKPOINT, peek_channel_names
from napari_simseg.core.network.devices import DEVICES

__all__ = ["SimSegWidget", "ask_discard", "ask_overwrite", "ask_restart"]

logger = logging.getLogger(__name__)


def _same_layer(a, b) -> bool:
    """Whether two layers are one, seen through napari's plugin proxies or not."""
    return a is not None and b is not None and getattr(a, "__wrapped__", a) is getattr(b, "__wrapped__", b)


def _one_line(exc: BaseException) -> str:
    """The first line of an error's message (the status label has one line)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_DEMO = "demo"

# Keys bound on the plugin's own layers only. Ctrl-Z stays napari's paint undo on the
# labels layer, so round undo/redo also have Alt bindings that work on every SimSeg layer.
KEYS_UNDO = ("Control-Z", "Alt-Z")
KEYS_REDO = ("Control-Shift-Z", "Alt-Shift-Z")
KEY_RUN = "Enter"
KEY_PROPAGATE = "Alt-P"  # P is napari's paint (labels) and add (points) mode


def _unbind_keys(layers) -> None:
    for layer in layers:
        for key in (*KEYS_UNDO, *KEYS_REDO, KEY_RUN, KEY_PROPAGATE):
            try:
                layer.bind_key(key, None)
            except (KeyError, ValueError, TypeError):
                pass
    del layers[:]


def _release(viewer_connections, layer_connections, bound_layers) -> None:
    """Let go of the viewer once the Qt widget is gone (no call may reach it then)."""
    disconnect_all(viewer_connections)
    disconnect_all(layer_connections)
    _unbind_keys(bound_layers)


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
    worker : napari worker or None
        The worker of the job in progress.
    overwrite_policy : {"ask", "always", "never"}
        What to do when a result would replace hand-edited labels.

    Signals
    -------
    round_finished(RoundResult)
        A round's labels are on the layer.
    job_finished(str kind, str message)
        Any job (``round``, ``auto``, ``load``) ended: done, failed or cancelled.
    """

    DEBOUNCE_MS = 400

    round_finished = Signal(object)
    job_finished = Signal(str, str)
    _idle = Signal()  # a job's worker is gone and the widget is ready for the next one

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session: ViewerSession | None = None
        self.worker = None
        self._job: Job | None = None
        self._end_session_when_idle: str | None = None  # end the session with this once the job ends
        self._ended = False  # whether the running job has reported its end
        self._layer_connections: list = []  # (emitter, callback) on the session's layers
        self._bound_layers: list = []
        self._build_ui()

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(self.DEBOUNCE_MS)
        self._debounce.timeout.connect(self._on_debounce)

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
        self.destroyed.connect(
            functools.partial(
                _release, self._viewer_connections, self._layer_connections, self._bound_layers
            )
        )
        self._refresh_image_combo()
        if not DEMO_CHECKPOINT.is_file():
            self._set_status(
                "The bundled demo model is not installed: choose a checkpoint "
                "(.safetensors) with Browse..."
            )

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)
        self.image_picker = ImagePicker(self.viewer)
        self.image_combo = self.image_picker.image_combo
        layout.addWidget(self.image_picker)
        form = QFormLayout()

        self.checkpoint_edit = QLineEdit(_DEMO)
        self.checkpoint_edit.setToolTip("'demo' for the bundled model, or a .safetensors checkpoint")
        self.checkpoint_edit.editingFinished.connect(self._on_checkpoint_changed)
        browse = QPushButton("Browse...")
        browse.clicked.connect(self._browse_checkpoint)
        row = QHBoxLayout()
        row.addWidget(self.checkpoint_edit)
        row.addWidget(browse)
        form.addRow("Checkpoint", row)

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

        grid = QGridLayout()
        for i, (name, text, tip, slot) in enumerate((
            ("run", "Run round", f"Run a round now with the new clicks of this slice ({KEY_RUN})", self.run_now),
            ("auto_slice", "Auto slice", "Segment this slice without clicks", self.auto_slice),
            ("auto_volume", "Auto volume", "Segment every slice without clicks (slices with clicks are kept)",
             self.auto_volume),
            ("undo", "Undo", "Undo this slice's last round, or the propagation that wrote it (Ctrl+Z on click "
             "layers, Alt+Z)", self.undo),
            ("redo", "Redo", "Redo this slice's last undone round (Ctrl+Shift+Z on click layers, Alt+Shift+Z)",
             self.redo),
            ("reset", "Reset slice", "Forget this slice's rounds and clicks and clear its labels", self.reset_slice),
            ("propagate", "Propagate", "Carry this finished slice into its neighbours, slice by slice, until the "
             f"structure ends or a slice you edited ({KEY_PROPAGATE}); Undo on a propagated slice undoes it all",
             self.propagate),
        )):
            button = QPushButton(text)
            button.setToolTip(tip)
            button.clicked.connect(slot)
            setattr(self, f"{name}_button", button)
            grid.addWidget(button, i // 3, i % 3)
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
        layout.addWidget(self.teach_panel)
        self.latency_label = QLabel("")
        self.status_label = QLabel("")
        for label in (self.latency_label, self.status_label):
            label.setWordWrap(True)
            label.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
            layout.addWidget(label)
        layout.addStretch(1)
        self._update_buttons()

    def _set_status(self, text: str) -> None:
        self.status_label.setText(text)
        if text:
            logger.info("SimSeg: %s", text)

    def _update_buttons(self) -> None:
        running = self.session is not None
        busy = self.worker is not None
        for button in (
            self.run_button, self.auto_slice_button, self.auto_volume_button, self.undo_button,
            self.redo_button, self.reset_button, self.propagate_button, self.save_button, self.load_button,
        ):
            button.setEnabled(running and not busy)
        self.start_button.setEnabled(not busy)
        self.device_combo.setEnabled(not busy)
        self.start_button.setText("Restart" if running else "Start")

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
        image = s.image_layer
        if _same_layer(layer, image):  # a channel view forwards its attributes, __wrapped__ too
            message = (f"the image '{layer.name}' was removed from the viewer: its session ended (the labels "
                       "and clicks layers stay; press Start to segment an image)")
            if self.worker is None:
                self._end_session(message)
            else:
                self._end_session_when_idle = message  # the running job still has its session
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

    def _on_checkpoint_changed(self) -> None:
        """Show one image box per channel when the checkpoint reads several."""
        self.image_picker.set_channels(peek_channel_names(self.checkpoint_edit.text().strip() or _DEMO))

    def configure(self, checkpoint=None, device=None, image_layer=None, start: bool = False) -> bool:
        """Set the checkpoint, device and image (any left None stays), optionally Start.

        Returns whether a session runs afterwards.
        """
        if checkpoint is not None:
            self.set_checkpoint(checkpoint)
        if device is not None:
            self.device_combo.setCurrentText(str(device))
        if image_layer is not None:
            self.image_picker.select(image_layer)
        if start:
            return self.start(wait=True)
        return self.session is not None

    def set_checkpoint(self, path) -> None:
        """Use this checkpoint at the next Start (``"demo"``: the bundled model)."""
        self.checkpoint_edit.setText(str(path))
        self._on_checkpoint_changed()

    def _browse_checkpoint(self) -> None:
        start = str(DEMO_CHECKPOINT.parent) if DEMO_CHECKPOINT.parent.is_dir() else ""
        path, _ = QFileDialog.getOpenFileName(self, "SimSeg checkpoint", start, "SimSeg checkpoints (*.safetensors)")
        if path:
            self.set_checkpoint(path)

    # ------------------------------------------------------------------ start
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

    def _confirm_restart(self) -> bool:
        return ask_restart(self)

    def start(self, wait: bool = False) -> bool:
        """Start (or restart) a session on the chosen image and checkpoint.

        The image is checked at once; the checkpoint then loads on a worker thread (the
        GUI stays responsive) and the session replaces the previous one when it is
        ready, with ``job_finished("start", message)``. On any problem the status label
        shows one line and nothing changes.

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
        if self.worker is not None:
            self._set_status("SimSeg is busy; wait for the current job to finish")
            return False
        checkpoint = self.checkpoint_edit.text().strip() or _DEMO
        if checkpoint == _DEMO and not DEMO_CHECKPOINT.is_file():
            self._set_status(
                f"the bundled demo model is not installed ({DEMO_CHECKPOINT.name}); choose a "
                "checkpoint (.safetensors) with Browse..."
            )
            return False
        ViewerSession.import_model_stack()  # the LLVM guard comes before torch's first import
        self._on_checkpoint_changed()
        image, channel_axis = self.image_picker.selection(), self.image_picker.channel_axis()
        try:
            for layer in image if isinstance(image, list) else [image] if channel_axis is None else []:
                check_image_layer(layer, allow_colour=is_colour_names(self.image_picker.channel_names))
        except (ValueError, TypeError) as exc:
            self._set_status(_one_line(exc))
            self._update_buttons()
            return False
        if self.session is not None and self.session.has_rounds() and not self._confirm_restart():
            return False
        device = self.device_combo.currentText()
        previous = self.session

        def load():
            return ViewerSession.load_predictor(checkpoint, device)

        def finish(predictor) -> str:
            session = ViewerSession(
                self.viewer,
                image,
                channel_axis=channel_axis,
                checkpoint=predictor,
                device=device,
                overwrite_policy=self.overwrite_policy,
                confirm=self._confirm_overwrite,
                confirm_discard=lambda question: ask_discard(self, question),
            )
            self._detach()
            self.session = session
            self._device = device
            self._attach()
            self.latency_label.setText("")
            slices = "" if session.is_2d else f" ({session.n_slices} slices)"
            kept = f"; the earlier labels are now '{session.kept_labels_layer}'" if session.kept_labels_layer else ""
            return (
                f"segmenting '{session.image_layer.name}'{slices} on {session.device} with classes "
                f"{', '.join(session.class_names)}: click in a '<class> clicks' layer{kept}"
            )

        job = Job("start", "loading the checkpoint", load, finish, _one_line)
        if not wait:
            self._start(job)
            return True
        from qtpy.QtCore import QEventLoop

        loop = QEventLoop()
        # connected before the worker starts: a load that fails at once must not end
        # before anyone listens (the loop would then wait forever)
        self._idle.connect(loop.quit)
        try:
            self._start(job)
            if self.worker is not None:
                loop.exec()
        finally:
            self._idle.disconnect(loop.quit)
        return self.session is not None and self.session is not previous

    def _attach(self) -> None:
        """Listen to the session's click layers and bind the SimSeg keys on its layers."""
        s = self.session
        for layer in s.click_layers:
            layer.events.data.connect(self._on_points_changed)
            self._layer_connections.append((layer.events.data, self._on_points_changed))
        for layer in [*s.click_layers, s.labels_layer]:
            is_labels = layer is s.labels_layer
            for key in KEYS_UNDO:
                if not (is_labels and key.startswith("Control")):
                    layer.bind_key(key, self._key(self.undo), overwrite=True)
            for key in KEYS_REDO:
                if not (is_labels and key.startswith("Control")):
                    layer.bind_key(key, self._key(self.redo), overwrite=True)
            layer.bind_key(KEY_RUN, self._key(self.run_now), overwrite=True)
            layer.bind_key(KEY_PROPAGATE, self._key(self.propagate), overwrite=True)
            self._bound_layers.append(layer)

    def _detach(self) -> None:
        disconnect_all(self._layer_connections)
        _unbind_keys(self._bound_layers)
        if self.session is not None:
            self.session.close()

    @staticmethod
    def _key(action):
        def handler(layer):
            action()

        return handler

    # ------------------------------------------------------------------ device
    def _on_device_changed(self, device: str) -> None:
        if self.session is None:
            self._device = device  # used at the next Start
        elif device != self._device:
            self.set_device(device)

    def set_device(self, device: str) -> bool:
        """Rebuild the predictor on ``device``; on failure the previous one stays."""
        if self.session is None:
            self.device_combo.setCurrentText(device)
            return True
        try:
            if self.worker is not None:
                raise RuntimeError("SimSeg is busy; change the device when the job is done")
            name = self.session.set_device(device)
        except (ValueError, RuntimeError, OSError) as exc:
            self._set_status(str(exc))
            self.device_combo.blockSignals(True)
            self.device_combo.setCurrentText(self._device)
            self.device_combo.blockSignals(False)
            return False
        self._device = device
        self.device_combo.blockSignals(True)
        self.device_combo.setCurrentText(device)
        self.device_combo.blockSignals(False)
        self._set_status(f"the network now runs on {name}")
        return True

    # ------------------------------------------------------------------ rounds
    def _on_points_changed(self, event) -> None:
        action = getattr(getattr(event, "action", None), "value", getattr(event, "action", None))
        if action in ("adding", "removing", "changing"):
            return  # the completed action follows
        self._debounce.start()  # restarts: quick clicks form one round

    def _on_debounce(self) -> None:
        if self.session is None:
            return
        if self.worker is not None:
            return  # picked up when the running job ends
        try:
            # the session picks the slice: the current one if it has new clicks, else the first that has
            job = self.session.prepare_round()
        except (ValueError, RuntimeError, IndexError) as exc:
            self._set_status(str(exc))
            return
        if job is None and self.session.ignored_points:
            self._set_status(self.session.ignored_note)
        self._start(job)

    def run_now(self) -> None:
        """Run a round now with the new clicks of the current slice."""
        if not self._ready():
            return
        self._debounce.stop()
        try:
            job = self.session.prepare_round(self.session.current_slice())
        except (ValueError, RuntimeError, IndexError) as exc:
            self._set_status(str(exc))
            return
        if job is None:
            note = f"; {self.session.ignored_note}" if self.session.ignored_points else ""
            self._set_status(f"no new clicks on slice {self.session.current_slice()}{note}")
            return
        self._start(job)

    def auto_slice(self) -> None:
        """Segment the current slice without clicks, on a worker."""
        if self._ready():
            self._start_guarded(lambda: self.session.prepare_auto(self.session.current_slice()))

    def auto_volume(self) -> None:
        """Segment every slice without clicks, on a generator worker with progress."""
        if self._ready():
            self._start_guarded(lambda: self.session.prepare_auto(None))

    def propagate(self) -> None:
        """Carry the current slice into its neighbours, on a generator worker with progress."""
        if self._ready():
            self._start_guarded(lambda: self.session.prepare_propagate(self.session.current_slice()))

    def cancel(self) -> None:
        """Stop a running automatic segmentation, propagation or load after its current step."""
        if self.worker is not None and self._job is not None and self._job.is_generator:
            self.worker.quit()
            self.cancel_button.setEnabled(False)
            self._set_status("cancelling after the current batch ...")

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
        if self.worker is not None:
            self._set_status(f"SimSeg is busy ({self._job.description}); wait for it to finish")
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

    def load(self, path) -> None:
        """Restore labels from ``path`` and replay their log (on a worker)."""
        if self._ready():
            self._start_guarded(lambda: self.session.prepare_load(path))

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

    # ------------------------------------------------------------------ threading
    def _start_guarded(self, prepare) -> None:
        try:
            job = prepare()
        except (ValueError, RuntimeError, OSError, IndexError) as exc:
            self._set_status(str(exc))
            return
        self._start(job)

    def _start(self, job: Job | None) -> None:
        """Run ``job.compute`` on a napari worker; results come back as signals."""
        if job is None:
            return
        from napari.qt.threading import create_worker

        # errors are shown in the status line, not re-raised in the GUI thread
        compute = shield_runtime_errors(job.compute) if job.is_generator else job.compute
        worker = create_worker(compute, _start_thread=False, _ignore_errors=True)
        if job.is_generator:
            worker.yielded.connect(self._on_yielded)
            worker.aborted.connect(self._on_aborted)
            self.progress.setRange(0, 0)  # busy until the first (done, total)
            self.progress.setVisible(True)
            self.cancel_button.setVisible(True)
            self.cancel_button.setEnabled(True)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_worker_finished)
        self.worker = worker
        self._job = job
        self._ended = False
        self._set_status(f"{job.description} ...")
        self._update_buttons()
        worker.start()

    def _on_yielded(self, value) -> None:
        job = self._job
        if job is None or job.on_yield is None:
            return
        done, total = value[0], value[1]
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        job.on_yield(value)

    def _end(self, kind: str, message: str) -> None:
        self._ended = True
        self._set_status(message)
        self.job_finished.emit(kind, message)

    def _on_returned(self, result) -> None:
        job = self._job
        if job is None:
            return
        try:
            out = job.finish(result)
        except (ValueError, RuntimeError, OSError, IndexError) as exc:
            self._end(job.kind, _one_line(exc))
            return
        if job.kind == "round":
            self._show_latency(out)
            self._end(job.kind, self._round_message(out))
            self.round_finished.emit(out)
        else:
            self.latency_label.setText("")  # it timed a round: not what the labels show now
            self._end(job.kind, str(out))

    def _on_errored(self, exc) -> None:
        job = self._job
        if job is not None:
            if isinstance(exc, JobError) and exc.__cause__ is not None:
                exc = exc.__cause__
            self._end(job.kind, job.fail(exc))

    def _on_aborted(self) -> None:
        job = self._job
        if job is not None and job.cancel is not None:
            self._end(job.kind, job.cancel())

    def _on_worker_finished(self) -> None:
        job = self._job
        if job is not None and not self._ended:
            # a generator quit before it yielded again still has to release the session
            message = job.cancel() if job.cancel is not None else job.fail(RuntimeError("stopped"))
            self._end(job.kind, message)
        self.worker = None
        self._job = None
        self.progress.setVisible(False)
        self.cancel_button.setVisible(False)
        self._update_buttons()
        if self._end_session_when_idle:
            self._end_session(self._end_session_when_idle)
        self._idle.emit()
        if self.session is not None and self.session.pending_points():
            QTimer.singleShot(0, self._on_debounce)  # clicks placed while it ran

    def _round_message(self, result) -> str:
        s = self.session
        where = "" if s.is_2d else f" on slice {result.slice_index}"
        n = s.last_round_clicks
        text = f"{n} new click{'s' * (n != 1)}{where}: round {result.round} done"
        if not s.last_round_shown:
            text += "; your hand-edited labels were kept (Undo/Reset slice, or set Hand edits)"
        if s.ignored_points:
            text += f"; {s.ignored_note}"
        return text

    def _show_latency(self, result) -> None:
        where = "" if self.session.is_2d else f" on slice {result.slice_index}"
        self.latency_label.setText(
            f"round {result.round}{where}: {result.total_ms:.0f} ms "
            f"(network {result.model_ms:.0f} ms)"
        )

    # ------------------------------------------------------------------ teardown
    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop a running worker and let go of the viewer's layers."""
        self._debounce.stop()
        if self.worker is not None:
            self.worker.quit()  # a generator stops at its next batch; a round just ends
            self.worker.await_workers(msecs=10000)
        self._detach()
        disconnect_all(self._viewer_connections)
