"""Qt helpers of the dock widget: its Yes/No questions (restoring unsaved work among them), and its
workers' and signals' plumbing."""

from __future__ import annotations

from qtpy.QtWidgets import QMessageBox

__all__ = ["JobError", "ask_discard", "ask_labels_alone", "ask_overwrite", "ask_recover", "ask_restart",
           "disconnect_all", "shield_runtime_errors"]


def _ask(parent, title: str, text: str, default_yes: bool = False) -> bool:
    """A Yes/No question whose default (Enter) is No unless ``default_yes``."""
    buttons = QMessageBox.StandardButton
    default = buttons.Yes if default_yes else buttons.No
    return QMessageBox.question(parent, title, text, buttons.Yes | buttons.No, default) == buttons.Yes


def ask_overwrite(parent, slices) -> bool:
    """Ask whether SimSeg may replace hand-edited labels on ``slices``."""
    slices = sorted(int(z) for z in slices)
    if len(slices) == 1:
        what = f"Slice {slices[0]} was"
    else:
        shown = ", ".join(str(z) for z in slices[:12]) + (" ..." if len(slices) > 12 else "")
        what = f"Slices {shown} were"
    return _ask(parent, "SimSeg: replace hand-edited labels?", f"{what} edited by hand since SimSeg last "
                "wrote there.\n\nReplace those edits with SimSeg's new result?")


def ask_restart(parent) -> bool:
    """Ask before a restart forgets the interaction memories of the running session."""
    return _ask(parent, "SimSeg: restart?", "Restarting forgets the clicks and interaction memories of this "
                "session (the labels stay; Save first to keep the memories).\n\nRestart?")


def ask_discard(parent, question: str) -> bool:
    """Ask before a Load replaces rounds made since the last save (``question`` says which)."""
    return _ask(parent, "SimSeg: discard unsaved rounds?", f"{question}\n\nThey are lost unless you Save "
                "first.\n\nLoad anyway?")


def ask_recover(parent, what: str) -> bool:
    """Ask whether to restore the unsaved work a session left on this image (``what`` says what
    it holds); Enter restores (restoring loses nothing, declining hides it)."""
    return _ask(parent, "SimSeg: restore unsaved work?", f"SimSeg kept {what} on this image: its session "
                "ended without Save (napari was closed or crashed).\n\nRestore it? (No: it is not offered "
                "again and is deleted after 14 days.)", default_yes=True)


def ask_labels_alone(parent, refusal: str) -> bool:
    """Ask whether to load a labels file alone after its log was refused (``refusal`` says why)."""
    return _ask(parent, "SimSeg: labels and log do not match", f"{refusal}\n\nLoad the labels alone (the "
                "interaction memories start empty)?")


class JobError(Exception):
    """Carries a RuntimeError out of a generator worker (``__cause__`` is the original)."""


def shield_runtime_errors(gen_func):
    """Wrap a generator function so that its RuntimeErrors reach ``errored``.

    superqt's GeneratorWorker takes a RuntimeError raised by the generator for "the
    worker was deleted" and ends without emitting ``errored`` or ``finished``; torch
    reports most failures as RuntimeError.
    """

    def wrapper():
        try:
            yield from gen_func()
        except RuntimeError as exc:
            raise JobError(str(exc)) from exc

    return wrapper


def disconnect_all(connections) -> None:
    for emitter, callback in connections:
        try:
            emitter.disconnect(callback)
        except (TypeError, ValueError, RuntimeError):
            pass
    del connections[:]
