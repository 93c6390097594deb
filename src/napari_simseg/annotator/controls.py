"""The widget's controls that hold no session logic: the *Checkpoint* field and the grid of
session buttons.

:class:`CheckpointField` knows what a checkpoint entry means (``"demo"`` when empty, *Browse*,
whether the file is there); :func:`session_buttons` lays out the buttons that act on a running
session.
"""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QFileDialog, QGridLayout, QHBoxLayout, QLineEdit, QPushButton, QWidget

from napari_simseg.annotator.shortcuts import KEY_PROPAGATE, KEY_RUN
from napari_simseg.core.io.resources import DEMO_CHECKPOINT, resolve_checkpoint

__all__ = ["DEMO", "CheckpointField", "session_buttons"]

DEMO = "demo"


class CheckpointField(QWidget):
    """The checkpoint entry and its *Browse...* button.

    Signals
    -------
    changed()
        The user finished editing the entry or picked a file.
    """

    changed = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.edit = QLineEdit(DEMO)
        self.edit.setToolTip("'demo' for the bundled model, or a .safetensors checkpoint")
        self.edit.editingFinished.connect(self.changed.emit)
        browse = QPushButton("Browse...")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit)
        row.addWidget(browse)

    def text(self) -> str:
        """The checkpoint as entered (``"demo"`` when empty)."""
        return self.edit.text().strip() or DEMO

    def set_text(self, text: str) -> None:
        self.edit.setText(str(text))
        self.changed.emit()

    def problem(self) -> str | None:
        """Why the entered checkpoint cannot be used (a missing file, a folder), or None."""
        try:
            resolve_checkpoint(self.text())
        except OSError as exc:  # missing, a folder, a name the system refuses
            return str(exc).strip().splitlines()[0]
        return None

    def _browse(self) -> None:
        start = str(DEMO_CHECKPOINT.parent) if DEMO_CHECKPOINT.parent.is_dir() else ""
        path, _ = QFileDialog.getOpenFileName(self, "SimSeg checkpoint", start, "SimSeg checkpoints (*.safetensors)")
        if path:
            self.set_text(path)


def session_buttons(slots: dict[str, Callable[[], None]]) -> tuple[QGridLayout, dict[str, QPushButton]]:
    """The grid of buttons acting on a running session, each connected to ``slots[name]``
    (``run``, ``auto_slice``, ``auto_volume``, ``undo``, ``redo``, ``reset``, ``propagate``)."""
    grid = QGridLayout()
    buttons = {}
    for i, (name, text, tip) in enumerate((
        ("run", "Run round", f"Run a round now with the new clicks of this slice ({KEY_RUN})"),
        ("auto_slice", "Auto slice", "Segment this slice without clicks"),
        ("auto_volume", "Auto volume", "Segment every slice without clicks (slices with clicks are kept)"),
        ("undo", "Undo", "Undo this slice's last round, or the propagation that wrote it (Ctrl+Z on click "
         "layers, Alt+Z)"),
        ("redo", "Redo", "Redo this slice's last undone round (Ctrl+Shift+Z on click layers, Alt+Shift+Z)"),
        ("reset", "Reset slice", "Forget this slice's rounds and clicks and clear its labels"),
        ("propagate", "Propagate", "Carry this finished slice into its neighbours, slice by slice, until the "
         f"structure ends or a slice you edited ({KEY_PROPAGATE}); Undo on a propagated slice undoes it all"),
    )):
        button = QPushButton(text)
        button.setToolTip(tip)
        button.clicked.connect(slots[name])
        buttons[name] = button
        grid.addWidget(button, i // 3, i % 3)
    return grid, buttons
