"""The *Teach* box of the SimSeg widget: fine-tune the network on the slices labelled so far.

Teaching runs in a process of its own (``ViewerSession.teach``); this panel only starts
it, polls it every :attr:`TeachPanel.POLL_MS` milliseconds with a ``QTimer`` (reading a
small progress file: the event loop never waits on the process) and shows its
progress: epoch, loss and validation Dice on the held-back slices, then the Dice before
and after on those slices and the new checkpoint, which the session now runs. Clicking
goes on while it teaches. Never imports torch.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QGridLayout,
    QGroupBox,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QWidget,
)

__all__ = ["TEACH_BASES", "TeachPanel", "progress_text", "set_wrapped_text", "wrapping_label"]

logger = logging.getLogger(__name__)

#: The start networks offered, and what ``ViewerSession.teach(checkpoint=...)`` gets for each.
TEACH_BASES = {"current model": "current", "bundled model": "demo", "fresh network": None}


def wrapping_label() -> QLabel:
    """A word-wrapped label that never asks for width: a long file name in it is cut at the
    dock's edge (and shown whole in its tooltip) instead of widening the dock."""
    label = QLabel("")
    label.setWordWrap(True)
    label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)
    label.setMinimumWidth(0)
    return label


def set_wrapped_text(label: QLabel, text: str) -> None:
    """Show ``text`` in a :func:`wrapping_label`, whole in its tooltip too."""
    label.setText(text)
    label.setToolTip(text)


def progress_text(state: dict) -> str:
    """The short text inside the progress bar (the details go to the status line below it)."""
    if state["status"] == "done":
        return "done"
    if state["status"] in ("failed", "cancelled"):
        return state["status"]
    if state.get("epoch"):
        return f"epoch {state['epoch']}/{state['epochs']}"
    return "starting"


def _cancel_job(holder: list) -> None:
    """Cancel the panel's job once its Qt widget is gone (the viewer closed)."""
    for job in holder:
        job.cancel()


class TeachPanel(QGroupBox):
    """Teach button, time budget, start network, progress bar, Cancel and status.

    Parameters
    ----------
    get_session : callable
        Returns the widget's running :class:`~napari_simseg.annotator.viewer_session.ViewerSession` (or None).

    Attributes
    ----------
    job : ViewerTeachJob or None
        The running or last job.
    options : dict
        Training options passed to ``ViewerSession.teach`` (empty: the teaching recipe).

    Signals
    -------
    teach_finished(str status, str message)
        A job ended: ``done``, ``failed`` or ``cancelled``.
    """

    POLL_MS = 200
    teach_finished = Signal(str, str)

    def __init__(self, get_session: Callable, parent: QWidget | None = None):
        super().__init__("Teach (learn from the labelled slices)", parent)
        self._get_session = get_session
        self.job = None
        self.options: dict = {}
        self._jobs: list = []  # what the destroyed-handler cancels (it must not reach self)
        self._busy = False  # the widget runs another job
        grid = QGridLayout(self)
        self.minutes_spin = QDoubleSpinBox()
        self.minutes_spin.setRange(0.1, 240.0)
        self.minutes_spin.setDecimals(1)
        self.minutes_spin.setValue(3.0)
        self.minutes_spin.setSuffix(" min")
        self.minutes_spin.setToolTip("Time budget: the new checkpoint is ready after about this long")
        self.base_combo = QComboBox()
        self.base_combo.addItems(list(TEACH_BASES))
        self.base_combo.setToolTip("Start from the network in use, the bundled model (another task: its "
                                   "encoder is reused) or a fresh network")
        self.teach_button = QPushButton("Teach")
        self.teach_button.setToolTip("Fine-tune on the slices you clicked, propagated or painted (a fifth held "
                                     "back to measure it); the session then uses the new checkpoint")
        self.teach_button.clicked.connect(self.teach)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(True)
        self.progress.setVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.status_label = wrapping_label()
        grid.addWidget(self.minutes_spin, 0, 0)
        grid.addWidget(self.base_combo, 0, 1)
        grid.addWidget(self.teach_button, 0, 2)
        grid.addWidget(self.progress, 1, 0, 1, 2)
        grid.addWidget(self.cancel_button, 1, 2)
        grid.addWidget(self.status_label, 2, 0, 1, 3)
        self._timer = QTimer(self)
        self._timer.setInterval(self.POLL_MS)
        self._timer.timeout.connect(self._poll)
        self.destroyed.connect(functools.partial(_cancel_job, self._jobs))

    @property
    def running(self) -> bool:
        return self._timer.isActive()

    def _set_status(self, text: str) -> None:
        if text and text != self.status_label.text():
            logger.info("SimSeg teach: %s", text)
        set_wrapped_text(self.status_label, text)

    def set_busy(self, busy: bool) -> None:
        """Disable *Teach* while the widget runs another job (Auto volume, a load ...)."""
        self._busy = bool(busy)
        self.teach_button.setEnabled(not self._busy and not self.running)

    def teach(self) -> bool:
        """Start teaching with the budget and start network chosen; returns whether it started."""
        session = self._get_session()
        if session is None:
            self._set_status("press Start first")
            return False
        if self.running:
            self._set_status("already teaching; Cancel first")
            return False
        if self._busy or session.busy:
            self._set_status("SimSeg is busy; Teach when the running job is done")
            return False
        base = TEACH_BASES[self.base_combo.currentText()]
        try:
            job = session.teach(max_minutes=self.minutes_spin.value(), checkpoint=base, options=self.options or None)
        except (ValueError, RuntimeError, OSError, IndexError) as exc:
            self._set_status(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            return False
        self.job = job
        self._jobs[:] = [job]
        self.teach_button.setEnabled(False)
        self.progress.setValue(0)
        self.progress.setFormat("starting")
        self.progress.setVisible(True)
        self.cancel_button.setVisible(True)
        self.cancel_button.setEnabled(True)
        self._set_status(f"teaching on {len(job.slices)} labelled slice{'s' * (len(job.slices) != 1)} "
                         f"for {self.minutes_spin.value():g} min (you can keep clicking)")
        self._timer.start()
        return True

    def _poll(self) -> None:
        job = self.job
        if job is None:
            self._timer.stop()
            return
        ended = job.done()
        text = job.describe()
        self.progress.setValue(int(1000 * job.fraction))
        self.progress.setFormat(progress_text(job.state))
        self._set_status(text if ended else f"{text} (you can keep clicking)")
        if ended:
            self._timer.stop()
            self.progress.setVisible(False)
            self.cancel_button.setVisible(False)
            self.teach_button.setEnabled(not self._busy)
            self.teach_finished.emit(job.state["status"], text)

    def cancel(self) -> None:
        """Stop teaching; the session keeps its network."""
        if self.job is not None and self.running:
            self.cancel_button.setEnabled(False)
            self.job.cancel()
            self._poll()

    def shutdown(self) -> None:
        """Stop polling and cancel a running job."""
        self._timer.stop()
        if self.job is not None:
            self.job.cancel()
