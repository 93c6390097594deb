"""A viewer session's files: the labels as shown and the interaction log beside them
(``<stem>.simseg.json``, :func:`log_path_for`), written by :func:`save_session`, read back by
:func:`read_saved` (everything checked on the GUI thread before anything is allocated) and
replayed by :func:`load_job`. Qt-free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_simseg.annotator.jobs import Job
from napari_simseg.core.io.images import WRITABLE_EXTENSIONS, ImageWriteError, split_extension
from napari_simseg.core.session.interaction_log import check_log, events_for_labels, labels_record, load_log

if TYPE_CHECKING:  # pragma: no cover
    from napari_simseg.annotator.labels_view import LabelsView
    from napari_simseg.core.session.interactive import InteractiveSession

__all__ = ["SavedSession", "load_job", "log_path_for", "read_saved", "save_session"]


def log_path_for(labels_path) -> Path:
    """The interaction log that goes with a labels file: ``<stem>.simseg.json`` beside it."""
    path = Path(labels_path)
    stem, _ = split_extension(path)
    return path.with_name(f"{stem}.simseg.json")


def save_session(labels: LabelsView, session: InteractiveSession, path) -> tuple[Path, Path]:
    """Write the labels as ``labels`` shows them to ``path`` and the session's log beside them.

    The pair is one transaction: the log, naming the labels it goes with and the previous
    save's (:func:`~napari_simseg.core.session.interaction_log.labels_record`), is written
    first, then the labels. Killed between the two, the files load back as the previous
    save, whole (:func:`read_saved`).

    Returns
    -------
    (labels path, log path)
    """
    path = Path(path)
    ext = split_extension(path)[1]
    if ext not in WRITABLE_EXTENSIONS:  # before the log: a refused name changes nothing
        raise ImageWriteError(path, f"unsupported extension '{ext}'; use one of {', '.join(WRITABLE_EXTENSIONS)}")
    log_file = log_path_for(path)
    record = labels_record(path, np.asarray(labels.live().data), session.log, log_file)
    log = session.save_log(log_file, labels=record)
    written = labels.write_file(path)
    return written, Path(log)


@dataclass
class SavedSession:
    """A saved session, read and checked (:func:`read_saved`).

    Attributes
    ----------
    path : Path
        The labels file.
    labels : ndarray
        Its labels, shaped like the labels layer.
    log_file : Path
        Where its log would be.
    log : dict or None
        The checked log (:func:`~napari_simseg.core.session.interaction_log.check_log`) that
        belongs to these labels, or None when there is no log file (or it is not used).
    note : str
        What the reader chose, for the summary ("" when nothing to say).
    """

    path: Path
    labels: np.ndarray
    log_file: Path
    log: dict | None
    note: str = ""


def read_saved(path, labels: LabelsView, shape: tuple, class_names: list, log: bool | None = None) -> SavedSession:
    """Read a labels file and its log, checking every field before anything is allocated from it.

    Parameters
    ----------
    log : bool, optional
        None: the log that belongs to these labels
        (:func:`~napari_simseg.core.session.interaction_log.events_for_labels`: the previous
        save's when the last save was interrupted between its two files); ``False``: none
        (the labels alone); ``True``: the log as it is, even if saved with other labels
        (where they differ, the labels count as hand edits).

    Raises
    ------
    ImageError
        For labels that do not fit the image or its classes.
    LogError
        For a log that does not fit them; ``LabelsMismatchError`` (with ``log=None``) for
        labels the log was not saved with, naming both files and what to do.
    """
    path = Path(path)
    array = labels.read_file(path)
    log_file = log_path_for(path)
    doc, note = None, ""
    if log is not False and log_file.is_file():
        doc = check_log(load_log(log_file), tuple(shape), class_names, str(log_file))
        if log is None:
            doc, note = events_for_labels(doc, array, path, log_file)
    elif log is False and log_file.is_file():
        note = f"{log_file.name} not used: interaction memories start empty"
    return SavedSession(path, array, log_file, doc, note)


def load_job(path, read: Callable[[], SavedSession], new_session: Callable[[], InteractiveSession],
             adopt: Callable[[InteractiveSession, SavedSession], None]) -> Job:
    """A job loading the session saved at ``path``: ``read()`` (:func:`read_saved`: the files,
    checked) and the replay of its log into ``new_session()`` run in ``compute``, a generator
    yielding ``(done, total)`` logged actions; once complete, ``adopt(fresh, saved)`` (GUI
    thread) makes it the viewer's session. Stopping it early, or an error, changes nothing."""
    name = Path(path).name
    progress = {"done": 0, "total": 0}
    loaded = {}

    def compute():
        from napari_simseg.core.session.interaction_log import iter_replay

        saved = read()
        fresh = new_session()
        if saved.log is not None:
            yield from iter_replay(fresh, saved.log)
        loaded.update(saved=saved, session=fresh)  # only a complete replay replaces the session

    def on_yield(value):
        progress.update(done=value[0], total=value[1])

    def finish(_):
        saved = loaded["saved"]
        adopt(loaded["session"], saved)
        if saved.log is None:
            return f"loaded {name} ({saved.note or f'no {saved.log_file.name}: interaction memories start empty'})"
        note = f"; {saved.note}" if saved.note else ""
        return f"loaded {name} and replayed {len(saved.log['events'])} logged actions{note}"

    def cancel():
        return f"loading {name} cancelled after {progress['done']}/{progress['total']} logged actions; nothing changed"

    def fail(exc):
        return f"loading {name} failed: {exc}"

    return Job("load", f"loading {name}", compute, finish, fail, on_yield=on_yield, cancel=cancel)
