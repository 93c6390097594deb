"""Small Qt dialogs shared by the widget and console sessions."""

from __future__ import annotations

from qtpy.QtWidgets import QMessageBox

__all__ = ["ask_overwrite", "ask_restart"]


def ask_overwrite(parent, slices) -> bool:
    """Ask whether SimSeg may replace hand-edited labels on ``slices``."""
    slices = sorted(int(z) for z in slices)
    if len(slices) == 1:
        what = f"Slice {slices[0]} was"
    else:
        shown = ", ".join(str(z) for z in slices[:12]) + (" ..." if len(slices) > 12 else "")
        what = f"Slices {shown} were"
    answer = QMessageBox.question(
        parent,
        "SimSeg: replace hand-edited labels?",
        f"{what} edited by hand since SimSeg last wrote there.\n\n"
        "Replace those edits with SimSeg's new result?",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No,
    )
    return answer == QMessageBox.StandardButton.Yes


def ask_restart(parent) -> bool:
    """Ask before a restart forgets the interaction memories of the running session."""
    answer = QMessageBox.question(
        parent,
        "SimSeg: restart?",
        "Restarting forgets the clicks and interaction memories of this session "
        "(the labels stay; Save first to keep the memories).\n\nRestart?",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No,
    )
    return answer == QMessageBox.StandardButton.Yes
