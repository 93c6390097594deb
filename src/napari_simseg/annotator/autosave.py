"""A viewer session's autosave and crash recovery: the napari side of
:mod:`napari_simseg.core.session.recovery`.

At *Start*, off the GUI thread, :func:`open_recovery` takes the image's key and finds the
sessions of this image that ended without closing. While the session runs,
:class:`SessionRecovery` takes, after every completed action (a round, an automatic run, a
propagation, undo/redo/reset, a load, a paint stroke), a snapshot of what changed on the GUI
thread: copies of the slices the labels layer shows (and SimSeg's own labels there) touched
since the last snapshot (:meth:`LabelsView.take_touched
<napari_simseg.annotator.labels_view.LabelsView.take_touched>`), the log's new events and the
click layers' state. A background thread
(:class:`~napari_simseg.core.session.autosave.AutosaveWriter`) compresses and writes it; the
GUI thread only copies. :meth:`SessionRecovery.recover_job` restores a killed session's work:
its log replayed, its labels and clicks put back. Qt-free.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from napari_simseg.annotator.jobs import Job
from napari_simseg.core.session.autosave import AutosaveWriter
from napari_simseg.core.session.recovery import (
    RecoveredSession,
    RecoveryInfo,
    RecoveryStore,
    Snapshot,
    image_fingerprint,
)

if TYPE_CHECKING:  # pragma: no cover
    from napari_simseg.annotator.click_layers import ClickLayers
    from napari_simseg.annotator.labels_view import LabelsView
    from napari_simseg.core.session.interactive import InteractiveSession

__all__ = ["RecoveryOpening", "SessionRecovery", "chosen", "image_path", "open_recovery"]


def image_path(layer) -> str | None:
    """The file an image layer was read from, if napari knows it."""
    path = getattr(getattr(layer, "source", None), "path", None)
    return str(path) if path else None


@dataclass
class RecoveryOpening:
    """What :func:`open_recovery` found for an image (off the GUI thread)."""

    store: RecoveryStore
    fingerprint: dict
    found: list  # RecoveryInfo, newest first


def open_recovery(autosave, channels, path) -> RecoveryOpening | None:
    """The recovery store of ``autosave`` (``True``: the user's cache folder; a
    :class:`RecoveryStore`; ``False``: none), the image's key, and the sessions of this image
    that ended without closing. Any thread: it hashes a sample of the pixels."""
    if autosave is False or autosave is None:
        return None
    store = autosave if isinstance(autosave, RecoveryStore) else RecoveryStore()
    fingerprint = image_fingerprint(channels, path)
    return RecoveryOpening(store, fingerprint, store.find(fingerprint))


class SessionRecovery:
    """Autosave of one viewer session, and the recoverable sessions of its image.

    Parameters
    ----------
    opening : RecoveryOpening
    labels : LabelsView
    clicks : ClickLayers
    image_shape : tuple
        The shape of the image's (first) channel, as the interaction log states it.
    image_name : str
        The image layer's name (kept with the data, said when it is offered).

    Attributes
    ----------
    found : list of RecoveryInfo
        Sessions of this image that ended without closing (newest first), found at *Start*.
    last_ms : float
        What the last snapshot cost the calling (GUI) thread, in milliseconds.
    """

    def __init__(self, opening: RecoveryOpening, labels: LabelsView, clicks: ClickLayers, image_shape: tuple,
                 image_name: str):
        self.store = opening.store
        self.fingerprint = opening.fingerprint
        self.found: list[RecoveryInfo] = list(opening.found)
        self._labels = labels
        self._clicks = clicks
        self._shape = tuple(image_shape)
        self._info = {"class_names": list(labels.class_names), "is_2d": labels.is_2d, "image": str(image_name)}
        self._writer: AutosaveWriter | None = None
        self._session = None  # the core session whose log the writer holds
        self._events = 0  # of its events, how many were handed over
        self._stored: set = set()  # slices whose labels the store holds (not empty)
        self._clicks_key = ""
        self._state = "active"
        self._failure: BaseException | None = None  # a snapshot that could not be taken or handed over
        self.last_ms = 0.0
        self.closed = False

    # ------------------------------------------------------------------ writing
    @property
    def error(self) -> str | None:
        """Why the last autosave failed (None while it works)."""
        exc = self._failure or (self._writer.error if self._writer is not None else None)
        return None if exc is None else f"autosave failed: {exc}"

    @property
    def folder(self):
        """This session's recovery folder (None until its first snapshot)."""
        return None if self._writer is None else self._writer.record.folder

    def snapshot(self, session: InteractiveSession, saved_events: int, state: str = "active",
                 on_committed: Callable[[], None] | None = None) -> bool:
        """Hand what changed since the last snapshot to the writer (GUI thread, no job running).

        Parameters
        ----------
        session : InteractiveSession
            The viewer session's core session now (a new one, after a load, is written whole).
        saved_events : int
            How many of its log's events are in a saved file.
        state : {"active", "saved"}
            ``"saved"``: the work is in a file (not offered after a crash).
        on_committed : callable, optional
            Run (on the writer's thread) once this snapshot is on disk.

        Returns
        -------
        bool
            Whether anything was handed over.
        """
        if self.closed:
            return False
        t0 = time.perf_counter()
        try:
            done = self._snapshot(session, saved_events, state, on_committed)
            self._failure = None
            return done
        except (OSError, ValueError) as exc:  # never in the way of the user's work: said by .error
            self._failure = exc
            return False
        finally:
            self.last_ms = (time.perf_counter() - t0) * 1000

    def _slices(self, touched, whole: bool):
        """The slices to copy: all after a failed write; touched ones; when every slice may have
        changed (a load, a re-added layer), those with labels and those the store holds."""
        if whole:
            return range(self._labels.n_slices)
        if touched is None:
            return sorted(self._labels.nonempty_slices() | self._stored)
        return sorted(touched)

    def _snapshot(self, session, saved_events, state, on_committed) -> bool:
        labels = self._labels
        touched = labels.take_touched()
        whole = self._writer is not None and self._writer.error is not None
        reset = whole or session is not self._session  # a new session (load, recovery): its whole log
        start = 0 if reset else self._events
        events = session.log_since(start)
        clicks = self._clicks.state()
        clicks_key = json.dumps(clicks, default=lambda a: a.tolist())
        slices = self._slices(touched, whole)
        shown = {z: labels.shown(z).copy() for z in slices}
        written = {z: labels.written[z].copy() for z in slices}
        self._stored = (self._stored - set(shown)) | {z for z, a in shown.items() if a.any()}
        if self._writer is None:
            if not (events or self._stored or any(len(layer) for layer in clicks["layers"])):
                return False  # nothing done yet: no folder
            record = self.store.create(self.fingerprint, labels.written.shape, labels.written.dtype, self._info)
            self._writer = AutosaveWriter(record, self.store)
        elif not (reset or events or shown or clicks_key != self._clicks_key
                  or (state == "saved" and self._state != "saved")):
            return False  # nothing new (unchanged work stays "saved" until something changes)
        info = {**self._info, "saved_events": int(saved_events), "checkpoint": str(session.predictor.checkpoint.path)}
        self._writer.submit(Snapshot(shown, written, events, start, reset, clicks, info, state), on_committed)
        self._session, self._events = session, start + len(events)
        self._clicks_key, self._state = clicks_key, state
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything handed over is written (tests, benchmarks)."""
        return True if self._writer is None else self._writer.flush(timeout)

    def close(self, remove: bool = True) -> None:
        """Stop autosaving; ``remove`` the folder (a clean end: nothing to restore) or keep it."""
        if self.closed:
            return
        self.closed = True
        if self._writer is not None:
            self._writer.close(remove=remove)

    # ------------------------------------------------------------------ recovering
    def recoverable(self) -> RecoveryInfo | None:
        """The newest session of this image that ended without closing and is still there."""
        self.found = [info for info in self.found if info.folder.exists()]
        return self.found[0] if self.found else None

    def forget(self, info: RecoveryInfo) -> None:
        """Do not offer ``info`` again (restored, discarded or declined)."""
        self.found = [i for i in self.found if i.folder != info.folder]

    def discard(self, info: RecoveryInfo) -> None:
        """Delete ``info``'s folder."""
        self.store.discard(info)
        self.forget(info)

    def decline(self, info: RecoveryInfo) -> None:
        """Mark ``info`` not to be offered again (it expires with the others)."""
        self.store.set_state(info, "declined")
        self.forget(info)

    def put_back(self, fresh: InteractiveSession, state: RecoveredSession, doc: dict) -> int:
        """The layers as ``state`` left them (GUI thread, ``fresh`` replayed from ``doc``): the
        labels as shown (hand edits included), the click layers with their rounds and redo
        stacks; returns how many of ``fresh``'s logged events were saved in a file. The
        recovered folder goes once this session's own holds the work."""
        saved_events = min(int(state.info.session.get("saved_events", 0)), len(fresh.log))
        if state.clicks is not None:
            self._clicks.restore_state(state.clicks)
        else:
            from napari_simseg.core.session.interaction_log import rounds_from_log

            self._clicks.restore(*rounds_from_log(doc))
        self._labels.replace(fresh.labels, state.labels[0] if self._labels.is_2d else state.labels)
        self.snapshot(fresh, saved_events, on_committed=lambda: self.store.discard(state.info))
        return saved_events

    @staticmethod
    def check_checkpoint(info: RecoveryInfo, checkpoint: str) -> None:
        """Refuse (RuntimeError, naming it) work made with another checkpoint than ``checkpoint``:
        its log would replay differently."""
        made_with = info.session.get("checkpoint")
        if made_with and Path(made_with).resolve() != Path(checkpoint).resolve():
            raise RuntimeError(f"the unsaved work was made with checkpoint {made_with}: Start with it to restore "
                               f"the work (this session runs {checkpoint})")

    def recover_job(self, info: RecoveryInfo, new_session: Callable[[], InteractiveSession],
                    adopt: Callable[[InteractiveSession, RecoveredSession, dict], None]) -> Job:
        """A job restoring ``info``: ``compute`` reads its folder, checks its log and replays it
        into ``new_session()``, yielding ``(done, total)``; once complete, ``adopt(fresh, state,
        log)`` (GUI thread) makes it the viewer's session, whose labels, clicks, memories and
        undo are then as after the work's last completed action. Stopped early, or failing,
        it changes nothing."""
        shape, class_names = self._shape, self._info["class_names"]
        from napari_simseg.core.session.interaction_log import LOG_FORMAT, LOG_VERSION, check_log

        progress = {"done": 0, "total": info.n_events}
        done = {}

        def compute():
            from napari_simseg.core.session.interaction_log import iter_replay

            state = self.store.read(info)
            fresh = new_session()
            # rounds saved with their own refinement replay with it; older ones as the new session's
            doc = {"format": LOG_FORMAT, "version": LOG_VERSION, "image_shape": list(shape),
                   "class_names": list(class_names), "refinement": fresh.refinement.to_dict(), "events": state.events}
            doc = check_log(doc, shape, class_names, str(info.folder))
            yield from iter_replay(fresh, doc)
            done.update(state=state, doc=doc, session=fresh)  # only a complete replay replaces the session

        def on_yield(value):
            progress.update(done=value[0], total=value[1])

        def finish(_):
            state, fresh = done["state"], done["session"]
            self.forget(info)
            adopt(fresh, state, done["doc"])
            differ = state.mismatched_slices(fresh.labels)
            text = f"restored the unsaved work ({len(state.events)} logged actions replayed)"
            if differ:
                text += (f"; slices {', '.join(map(str, differ))} replayed differently (another device or "
                         "network?): their labels are as you left them, their memories as replayed")
            return text

        def cancel():
            return (f"restoring unsaved work cancelled after {progress['done']}/{progress['total']} logged "
                    "actions; nothing changed (it is offered again at the next Start)")

        def fail(exc):
            return f"restoring unsaved work failed: {exc}"

        return Job("recover", "restoring unsaved work", compute, finish, fail, on_yield=on_yield, cancel=cancel)


def chosen(recovery: SessionRecovery | None, info: RecoveryInfo | None = None,
           checkpoint: str | None = None) -> RecoveryInfo:
    """``info``, or the newest recoverable work of ``recovery``'s image.

    Raises
    ------
    RuntimeError
        Nothing to restore (or autosave is off), or, with ``checkpoint``, work made with
        another checkpoint (its log would replay differently: Start with that one).
    """
    info = info or (None if recovery is None else recovery.recoverable())
    if info is None:
        raise RuntimeError("no unsaved work of this image to restore" + (" (autosave is off)" if recovery is None
                                                                          else ""))
    if checkpoint is not None:
        SessionRecovery.check_checkpoint(info, checkpoint)
    return info
