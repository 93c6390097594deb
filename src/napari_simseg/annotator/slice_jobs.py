"""The jobs that write many slices: automatic segmentation (:func:`auto_job`) and propagation
(:func:`propagate_job`).

Each is planned on the GUI thread (which slices, the user's answer about hand edits) and
returns a :class:`~napari_simseg.annotator.jobs.Job` whose ``compute`` is a generator yielding
progress with the finished slices' labels; ``on_yield`` (GUI thread) writes them through the
:class:`~napari_simseg.annotator.labels_view.LabelsView`, so a cancelled job keeps what it
finished. The builders get their collaborators explicitly (the core session, the labels view)
and touch nothing else. Qt-free.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from napari_simseg.annotator.jobs import Job

if TYPE_CHECKING:  # pragma: no cover
    from napari_simseg.annotator.labels_view import LabelsView
    from napari_simseg.core.session.interactive import InteractiveSession

__all__ = ["auto_job", "propagate_job", "skipped_note"]


def _slices(n: int, what: str = "slice") -> str:
    return f"{n} {what}{'s' * (n != 1)}"


def skipped_note(with_clicks: int, propagated: int, kept: int) -> str:
    """What an automatic segmentation left alone, and why, in words ("" when nothing):
    slices with the user's clicks and propagated slices hold rounds it never replaces;
    hand-edited slices stay when the user did not let it overwrite them."""
    skipped = [f"{_slices(with_clicks)} with clicks"] if with_clicks else []
    skipped += [_slices(propagated, "propagated slice")] if propagated else []
    notes = ["skipped: " + ", ".join(skipped)] if skipped else []
    notes += [f"{kept} hand-edited kept"] if kept else []
    return "; ".join(notes)


def auto_job(session: InteractiveSession, labels: LabelsView, wanted: Sequence[int],
             may_overwrite: Callable[[list], bool], batch_size: int) -> Job:
    """A job predicting the ``wanted`` slices that hold no rounds (0-click results), batched.

    Slices with rounds (the user's clicks, or a propagation) are skipped: they hold the
    user's work. Hand-edited slices are overwritten only if ``may_overwrite(slices)`` says
    so (asked once, for all of them, here on the GUI thread).

    Raises
    ------
    RuntimeError
        When no slice is left to predict.
    """
    propagated = set(session.propagated)
    todo = [z for z in wanted if session.n_rounds(z) == 0]
    skipped = [z for z in wanted if session.n_rounds(z) > 0]
    n_propagated = sum(z in propagated for z in skipped)
    edited = [z for z in todo if labels.is_hand_edited(z)]
    approved = set(edited) if edited and may_overwrite(edited) else set()
    todo = [z for z in todo if z in approved or z not in edited]
    note = skipped_note(len(skipped) - n_propagated, n_propagated, len(edited) - len(approved))
    if not todo:
        what = "the slice has" if len(wanted) == 1 else "every slice has"
        reasons = [f"{what} clicks or a propagation (Reset slice or Undo first)"] if skipped else []
        reasons += ["hand-edited labels were kept"] if len(edited) > len(approved) else []
        raise RuntimeError("nothing to predict automatically: " + "; ".join(reasons or ["no slices"]))
    tail = f" ({note})" if note else ""
    progress = {"done": 0, "total": len(todo)}

    def compute():
        prev = 0
        for done, total in session.iter_auto(todo, batch_size):
            chunk, prev = todo[prev:done], done
            yield done, total, chunk, (session.labels[chunk].copy() if chunk else None)

    def on_yield(value):
        done, total, chunk, chunk_labels = value
        progress.update(done=done, total=total)
        for z, lab in zip(chunk, chunk_labels if chunk_labels is not None else ()):
            labels.write(z, lab, z in approved)  # edits made while this ran were not approved: kept

    def finish(_):
        n = progress["total"]
        what = "" if session.is_2d else f" of {_slices(n)}"
        return f"automatic segmentation{what} done{tail}"

    def cancel():
        done, total = progress["done"], progress["total"]
        return f"automatic segmentation cancelled after {done}/{total} slices; finished slices kept{tail}"

    def fail(exc):
        return f"automatic segmentation failed after {progress['done']}/{progress['total']} slices: {exc}"

    desc = "automatic segmentation" + ("" if len(todo) != 1 or session.is_2d else f" of slice {todo[0]}")
    return Job("auto", desc, compute, finish, fail, on_yield=on_yield, cancel=cancel)


def propagate_job(session: InteractiveSession, labels: LabelsView, z: int, direction: str) -> Job:
    """A job carrying finished slice ``z`` into its neighbours, slice by slice
    (``InteractiveSession.iter_propagate``).

    Slices edited by hand stop it like slices with clicks; a finished slice painted by
    hand is carried from its labels as shown. Cancelling keeps the slices done.
    """
    painted = labels.hand_edited
    shown = labels.shown(z).copy() if z in painted else None
    walk = session.iter_propagate(z, direction, stop=sorted(painted - {z}), labels=shown)
    progress = {"done": 0, "total": 0, "slices": []}

    def compute():
        for done, total, s in walk:
            yield done, total, s, (None if s is None else session.labels[s].copy())

    def on_yield(value):
        done, total, s, slice_labels = value
        progress.update(done=done, total=total)
        if s is not None:
            progress["slices"].append(s)
            labels.write(s, slice_labels, False)  # painted while this ran: kept

    def summary(what: str) -> str:
        done = sorted(progress["slices"])
        if not done:
            return f"nothing to propagate from slice {z} (no structure, or its neighbours are edited)"
        return f"{what} {_slices(len(done))} ({done[0]}..{done[-1]}); Undo on any of them undoes it"

    def finish(_):
        return summary(f"slice {z} propagated to")

    def cancel():
        walk.close()  # keeps, logs and makes undoable what was done
        return summary(f"propagation from slice {z} cancelled; kept")

    def fail(exc):
        walk.close()
        return f"propagation from slice {z} failed after {progress['done']} slices: {exc}"

    return Job("propagate", f"propagation from slice {z}", compute, finish, fail, on_yield=on_yield,
               cancel=cancel, slice=z)
