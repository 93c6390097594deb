"""The long jobs of a :class:`~napari_simseg.annotator.viewer_session.ViewerSession`: automatic
segmentation, propagation and loading a saved session, and the :class:`Job` they return.

Each ``prepare_*`` runs on the GUI thread (reads the layers, asks its questions) and
returns a :class:`Job` whose ``compute`` is a generator yielding progress; the widget
runs it on a worker thread and may stop it (*Cancel*), the console runs it in place.
:class:`LongJobs` is a mixin of ``ViewerSession``: it uses the session's layer views
and its one-job-at-a-time guard. Qt-free, like ``viewer_session``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_simseg.core.io.images import split_extension
from napari_simseg.core.session.interaction_log import check_log, load_log, rounds_from_log

__all__ = ["Job", "LongJobs", "log_path_for"]


@dataclass
class Job:
    """One network computation of a :class:`ViewerSession`, split by thread.

    Attributes
    ----------
    kind : {"round", "auto", "load", "propagate"}
        (``auto``, ``load`` and ``propagate`` are generators yielding ``(done, total, ...)``)
    description : str
        Human-readable, e.g. ``"round on slice 12"``.
    compute : callable
        ``compute()``; a plain function or a generator function. Touches only the core
        session, never a layer, so it may run on a worker thread.
    finish : callable
        ``finish(result)`` on the GUI thread once ``compute`` returned (generators:
        ``None``); returns what the synchronous API returns.
    fail : callable
        ``fail(exception)`` on the GUI thread if ``compute`` raised; returns a message.
    on_yield : callable, optional
        ``on_yield(value)`` on the GUI thread for each value a generator yields.
    cancel : callable, optional
        ``cancel()`` on the GUI thread when a generator was stopped early; returns a
        message.
    slice : int, optional
        The slice a round works on.
    """

    kind: str
    description: str
    compute: Callable[[], Any]
    finish: Callable[[Any], Any]
    fail: Callable[[BaseException], str]
    on_yield: Callable[[Any], None] | None = None
    cancel: Callable[[], str] | None = None
    slice: int | None = None

    @property
    def is_generator(self) -> bool:
        return inspect.isgeneratorfunction(self.compute)


def log_path_for(labels_path) -> Path:
    """The interaction log that goes with a labels file: ``<stem>.simseg.json`` beside it."""
    path = Path(labels_path)
    stem, _ = split_extension(path)
    return path.with_name(f"{stem}.simseg.json")




class LongJobs:
    """``ViewerSession``'s automatic segmentation, propagation and loading (a mixin)."""

    # ------------------------------------------------------------------ automatic
    def prepare_auto(self, slices=None) -> Job:
        """A job predicting slices without clicks (0-click result), batched.

        Parameters
        ----------
        slices : int, sequence of int or None
            None: every slice. Slices with rounds are skipped (they hold the user's
            work); hand-edited slices are overwritten only as ``overwrite_policy``
            allows (asked once, for all of them).

        Raises
        ------
        RuntimeError
            When busy, or when no slice is left to predict.
        """
        self._ensure_idle()
        if slices is None:
            wanted = list(range(self.n_slices))
        else:
            wanted = [self._check_slice(s) for s in np.atleast_1d(slices)]
        todo = [z for z in wanted if self.session.n_rounds(z) == 0]
        with_rounds = len(wanted) - len(todo)
        edited = [z for z in todo if self.is_hand_edited(z)]
        approved = set(edited) if edited and self._may_overwrite(edited) else set()
        todo = [z for z in todo if z in approved or z not in edited]
        kept = len(edited) - len(approved)
        if not todo:
            what = "the slice has" if len(wanted) == 1 else "every slice has"
            reasons = [f"{what} clicks (Reset slice first)"] if with_rounds else []
            reasons += ["hand-edited labels were kept"] if kept else []
            raise RuntimeError("nothing to predict automatically: " + "; ".join(reasons or ["no slices"]))
        notes = [f"{with_rounds} with clicks skipped"] if with_rounds else []
        notes += [f"{kept} hand-edited kept"] if kept else []
        tail = f" ({', '.join(notes)})" if notes else ""  # what was left alone
        session, batch = self.session, self.batch_size
        progress = {"done": 0, "total": len(todo)}

        def compute():
            prev = 0
            for done, total in session.iter_auto(todo, batch):
                chunk, prev = todo[prev:done], done
                yield done, total, chunk, (session.labels[chunk].copy() if chunk else None)

        def on_yield(value):
            done, total, chunk, labels = value
            progress.update(done=done, total=total)
            for z, lab in zip(chunk, labels if labels is not None else ()):
                # edits made while this ran were not approved: keep them
                self._labels.write(z, lab, z in approved)

        def finish(_):
            self._job = None
            n = progress["total"]
            what = "" if self.is_2d else f" of {n} slice{'s' * (n != 1)}"
            return f"automatic segmentation{what} done{tail}"

        def cancel():
            self._job = None
            done, total = progress["done"], progress["total"]
            return f"automatic segmentation cancelled after {done}/{total} slices; finished slices kept{tail}"

        def fail(exc):
            self._job = None
            return f"automatic segmentation failed after {progress['done']}/{progress['total']} slices: {exc}"

        desc = "automatic segmentation" + ("" if len(todo) != 1 or self.is_2d else f" of slice {todo[0]}")
        job = Job("auto", desc, compute, finish, fail, on_yield=on_yield, cancel=cancel)
        self._job = job
        return job

    def auto(self, slice_index=None) -> str:
        """Automatic (0-click) segmentation of one slice, or of every slice (None); returns a summary line."""
        return self._run_sync(self.prepare_auto(slice_index))

    # ------------------------------------------------------------------ propagation
    def prepare_propagate(self, slice_index=None, direction: str = "both") -> Job:
        """A job carrying a finished slice into its neighbours, slice by slice
        (:meth:`InteractiveSession.propagate <napari_simseg.core.session.interactive.InteractiveSession.propagate>`).

        Slices edited by hand (painted) stop it like slices with clicks: they are never
        overwritten. A finished slice painted by hand is carried from its labels as
        shown; otherwise from its clicks. The job yields ``(done, total, slice,
        labels)``; cancelling keeps the slices done, and Undo on any propagated slice
        (or :meth:`undo_propagation`) undoes the whole propagation.
        """
        self._ensure_idle()
        if self.is_2d:
            raise RuntimeError("propagation needs a 3D image (a 2D image has no neighbouring slices)")
        z = self._check_slice(slice_index)
        painted = self.hand_edited
        shown = self._labels.shown(z).copy() if z in painted else None
        session = self.session
        walk = session.iter_propagate(z, direction, stop=sorted(painted - {z}), labels=shown)
        progress = {"done": 0, "total": 0, "slices": []}

        def compute():
            for done, total, s in walk:
                yield done, total, s, (None if s is None else session.labels[s].copy())

        def on_yield(value):
            done, total, s, labels = value
            progress.update(done=done, total=total)
            if s is not None:
                progress["slices"].append(s)
                self._labels.write(s, labels, False)  # painted while this ran: kept

        def summary(what: str) -> str:
            done = sorted(progress["slices"])
            if not done:
                return f"nothing to propagate from slice {z} (no structure, or its neighbours are edited)"
            return (f"{what} {len(done)} slice{'s' * (len(done) != 1)} ({done[0]}..{done[-1]}); "
                    "Undo on any of them undoes it")

        def finish(_):
            self._job = None
            return summary(f"slice {z} propagated to")

        def cancel():
            self._job = None
            walk.close()  # keeps, logs and makes undoable what was done
            return summary(f"propagation from slice {z} cancelled; kept")

        def fail(exc):
            self._job = None
            walk.close()
            return f"propagation from slice {z} failed after {progress['done']} slices: {exc}"

        job = Job("propagate", f"propagation from slice {z}", compute, finish, fail, on_yield=on_yield,
                  cancel=cancel, slice=z)
        self._job = job
        return job

    def propagate(self, slice_index=None, direction: str = "both") -> str:
        """Carry a finished slice (default: the current one) into its neighbours; returns a summary line."""
        return self._run_sync(self.prepare_propagate(slice_index, direction))

    def undo_propagation(self, slice_index=None) -> list[int]:
        """Undo the newest propagation (from ``slice_index``, when given) as one step; returns
        the slices restored."""
        self._ensure_idle()
        restored = self.session.undo_propagation(None if slice_index is None else self._check_slice(slice_index))
        self._write_changed()
        return restored

    # ------------------------------------------------------------------ files
    def prepare_load(self, path, discard: bool = False) -> Job:
        """A job restoring labels from a file and, with its log, the memories.

        Everything is checked here: the labels file, and every field of the log
        (:func:`~napari_simseg.core.session.interaction_log.check_log`) before anything is
        allocated from it. Rounds made since the last save or load are replaced only
        with ``discard=True`` or when ``confirm_discard`` agrees; otherwise a
        ``RuntimeError`` and nothing changes. The log replay (network rounds) is the
        job's ``compute``, a generator yielding ``(done, total)`` logged actions;
        stopping it early (the widget's Cancel) leaves the session as it was.
        """
        self._ensure_idle()
        path = Path(path)
        labels = self._labels.read_file(path)
        log_file = log_path_for(path)
        doc = None
        if log_file.is_file():
            doc = check_log(load_log(log_file), tuple(self._image.shape), self.class_names, str(log_file))
        if not discard and self.has_unsaved_rounds():
            question = f"Loading {path.name} replaces the rounds made since the last save."
            if self.confirm_discard is None or not self.confirm_discard(question):
                raise RuntimeError(f"{path.name} not loaded: it would replace rounds made since the last save; "
                                   "Save first (or load with discard=True)")
        s = self.session  # a fresh session like this one replays the log
        image, predictor = self._image, s.predictor
        settings = dict(max_state_history=s.max_state_history, honour_clicks=s.honour_clicks,
                        decision_offsets=s.decision_offsets)
        progress = {"done": 0, "total": len(doc["events"]) if doc else 0}
        replayed = {}

        def compute():
            from napari_simseg.core.session.interaction_log import iter_replay
            from napari_simseg.core.session.interactive import InteractiveSession

            fresh = InteractiveSession(image, predictor, **settings)
            if doc is not None:
                yield from iter_replay(fresh, doc)
            replayed["session"] = fresh  # only a complete replay replaces the session

        def on_yield(value):
            progress.update(done=value[0], total=value[1])

        def finish(_):
            self._job = None
            fresh = replayed["session"]
            self.session = fresh
            self._saved_events = len(fresh.log)
            self._clicks.restore(*rounds_from_log(doc))
            self._labels.replace(fresh.labels, labels)
            if doc is None:
                return f"loaded {path.name} (no {log_file.name}: interaction memories start empty)"
            return f"loaded {path.name} and replayed {len(doc['events'])} logged actions"

        def cancel():
            self._job = None
            return (f"loading {path.name} cancelled after {progress['done']}/{progress['total']} logged "
                    "actions; nothing changed")

        def fail(exc):
            self._job = None
            return f"loading {path.name} failed: {exc}"

        job = Job("load", f"loading {path.name}", compute, finish, fail, on_yield=on_yield, cancel=cancel)
        self._job = job
        return job

    def load(self, path, discard: bool = False) -> str:
        """Restore labels from a file and, if ``<stem>.simseg.json`` exists, the memories.

        Rounds made since the last save or load are replaced only with ``discard=True``
        or when ``confirm_discard`` agrees (see :meth:`prepare_load`).
        """
        return self._run_sync(self.prepare_load(path, discard))
