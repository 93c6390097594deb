"""Autosave off the GUI thread: snapshots of completed actions committed by a background thread.

The GUI thread takes a cheap :class:`~napari_simseg.core.session.recovery.Snapshot` of what
an action changed (copies of the changed slices, the new log events, the points) and hands
it to :meth:`AutosaveWriter.submit`, which returns at once. The writer's thread commits
snapshots to their :class:`~napari_simseg.core.session.recovery.RecoveryRecord` one after
the other; snapshots that arrive while it writes are merged into one
(:meth:`Snapshot.then <napari_simseg.core.session.recovery.Snapshot.then>`), so a slow disk
delays the recovery data, never the user. A failed commit (a full disk) is kept and merged
into the next one; :attr:`AutosaveWriter.error` says what failed until a commit succeeds.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections.abc import Callable

from napari_simseg.core.session.recovery import RecoveryRecord, RecoveryStore, Snapshot

__all__ = ["AutosaveWriter"]

_RUNNING: weakref.WeakSet = weakref.WeakSet()  # writers to finish when the interpreter exits


@atexit.register
def _finish_writing() -> None:
    """On a normal exit, write what waits (the thread is a daemon: it would be cut off)."""
    for writer in list(_RUNNING):
        writer.flush(timeout=10.0)


class AutosaveWriter:
    """Commits :class:`Snapshot` s to ``record`` on a background thread.

    Parameters
    ----------
    record : RecoveryRecord
        The session's folder (this writer's thread is the only one to commit to it).
    store : RecoveryStore, optional
        Pruned (expired and surplus folders removed) once, on the writer's thread.
    """

    def __init__(self, record: RecoveryRecord, store: RecoveryStore | None = None):
        self.record = record
        self._store = store
        self._cond = threading.Condition()
        self._pending: Snapshot | None = None
        self._callbacks: list = []  # run once the pending snapshot is committed
        self._failed: Snapshot | None = None  # a snapshot whose commit failed: retried with the next
        self._failed_callbacks: list = []
        self._busy = False
        self._closed = False
        self.error: BaseException | None = None
        self.commits = 0
        self._thread = threading.Thread(target=self._run, name="simseg-autosave", daemon=True)
        self._thread.start()
        _RUNNING.add(self)

    def submit(self, snap: Snapshot, on_committed: Callable[[], None] | None = None) -> None:
        """Queue ``snap`` (merged with any snapshot still waiting); returns at once.

        ``on_committed()`` runs on the writer's thread once ``snap`` is on disk (e.g. removing
        the folder of a session this one recovered).
        """
        with self._cond:
            if self._closed:
                raise RuntimeError("the autosave writer is closed")
            self._pending = snap if self._pending is None else self._pending.then(snap)
            if on_committed is not None:
                self._callbacks.append(on_committed)
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every submitted snapshot is committed (or failed); returns whether it is."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)

    @property
    def idle(self) -> bool:
        """Whether nothing waits to be written."""
        with self._cond:
            return self._pending is None and not self._busy

    def close(self, remove: bool, timeout: float | None = 30.0) -> None:
        """Stop the thread, then remove the folder (``remove``: what waits is not written) or
        keep it (what waits is written first)."""
        if not remove:
            self.flush(timeout)
        with self._cond:
            self._closed = True
            if remove:
                self._pending = None
            self._cond.notify_all()
        self._thread.join(timeout)
        if remove:
            self.record.remove()
        else:
            self.record.release()

    def _run(self) -> None:
        if self._store is not None:
            try:
                self._store.prune()
            except OSError as exc:  # a store we cannot tidy still takes this session's data
                self.error = exc
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                if self._pending is None:
                    return
                snap, self._pending = self._pending, None
                callbacks, self._callbacks = self._callbacks, []
                if self._failed is not None:
                    try:
                        snap = self._failed.then(snap)
                    except ValueError:
                        pass  # only a whole snapshot (a reset log) follows a mismatch
                    callbacks = self._failed_callbacks + callbacks
                    self._failed, self._failed_callbacks = None, []
                self._busy = True
            try:
                self.record.commit(snap)
                self.error = None
                self.commits += 1
            except Exception as exc:  # noqa: BLE001 - reported through .error; the GUI must go on
                self.error = exc
                self._failed, self._failed_callbacks = snap, callbacks
                callbacks = []
            try:
                for callback in callbacks:
                    callback()
            except Exception as exc:  # noqa: BLE001 - the data are written; say what else failed
                self.error = exc
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
