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
from napari_simseg.core.io.images import split_extension
from napari_simseg.core.session.interaction_log import check_log, load_log

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

    Returns
    -------
    (labels path, log path)
    """
    written = labels.write_file(path)
    log = session.save_log(log_path_for(written))
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
        The checked log (:func:`~napari_simseg.core.session.interaction_log.check_log`), or
        None when there is no log file.
    """

    path: Path
    labels: np.ndarray
    log_file: Path
    log: dict | None


def read_saved(path, labels: LabelsView, shape: tuple, class_names: list) -> SavedSession:
    """Read a labels file and its log, checking every field before anything is allocated from it.

    Raises
    ------
    ImageError
        For labels that do not fit the image or its classes.
    LogError
        For a log that does not fit them.
    """
    path = Path(path)
    array = labels.read_file(path)
    log_file = log_path_for(path)
    doc = None
    if log_file.is_file():
        doc = check_log(load_log(log_file), tuple(shape), class_names, str(log_file))
    return SavedSession(path, array, log_file, doc)


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
            return f"loaded {name} (no {saved.log_file.name}: interaction memories start empty)"
        return f"loaded {name} and replayed {len(saved.log['events'])} logged actions"

    def cancel():
        return f"loading {name} cancelled after {progress['done']}/{progress['total']} logged actions; nothing changed"

    def fail(exc):
        return f"loading {name} failed: {exc}"

    return Job("load", f"loading {name}", compute, finish, fail, on_yield=on_yield, cancel=cancel)
