"""The interaction log: every action of a session, in order, as JSON (``<name>.simseg.json``).

The one place the format is written and read. :meth:`InteractiveSession.save_log`
writes it; :func:`replay_log` applies a saved log to a fresh session (the widget's
*Load*, the console, the tests), and :func:`rounds_from_log` tells which clicks each
slice's rounds hold, and which undone rounds wait for redo, without running anything
(the napari adapter puts those clicks back into the points layers). :func:`check_log`
checks a log's image shape, classes and every event's fields before anything is replayed
or allocated from it (:func:`load_log` and :func:`replay_log` call it); :func:`iter_replay`
replays step by step, for a progress bar.

Format (version 1)::

    {"format": "napari-simseg-log", "version": 1,
     "image_shape": [Z, H, W] or [H, W], "class_names": [...], "checkpoint": str,
     "refinement": {"locality": ..., "follow_clicks": ..., "margin": ..., "min_lead": ..., "touch": ...,
                    "zoom": ..., "spread": ..., "network_rounds": ...},
     "events": [{"action": "clicks", "slice": z, "round": k, "time": t,
                 "clicks": [{"class": c, "y": y, "x": x}, ...],
                 "refinement": {...} (the round's own, as above; absent in older logs)},
                {"action": "undo" | "redo" | "reset", "slice": z, "time": t},
                {"action": "auto", "slices": [z, ...], "time": t},
                {"action": "set_labels", "slice": z, "labels": [[...]], "time": t},
                {"action": "propagate", "slice": source z, "direction": "both" | "up" | "down",
                 "steps": [{"slice": z, "rounds": [[{"class": c, "y": y, "x": x}, ...], ...]}, ...],
                 "source_labels": [[...]] (only when given, painted in a viewer), "time": t},
                {"action": "undo_propagation", "slice": source z, "time": t}]}

``refinement`` holds what the session's corrective rounds were allowed to change
(:class:`~napari_simseg.core.interaction.refinement.Refinement`); a replay runs with it, so
labels come back as they were shown. A log without it (written before the refinement
existed) replays with the network's labels as they were (``Refinement.off()``). Each
``clicks`` event also records the refinement its round was shown with, and a replay runs
that round with it: a session that replayed an older log (or whose refinement changed)
saves a log whose every round replays as it was shown; the top-level entry (the session's
refinement when the log was saved) serves the events that hold none.

A ``propagate`` event holds every seed of every slice it wrote
(:mod:`~napari_simseg.core.session.propagation`), so its replay does not depend on the seed
rules of the code that replays it; ``undo`` on a propagated slice undoes the whole
propagation, as it did when recorded.

A log saved with a labels file (the viewer's *Save*) names the labels it belongs to::

    "labels": {"file": name, "digest": labels_digest(labels as saved),
               "previous": {"digest": ..., "n_events": k} | {"digest": ..., "events": [...]} | null}

The pair is one transaction: the log is written first, then the labels file. A kill
between the two leaves the previous labels with the new log, whose ``previous`` names those
labels' digest and their events (the first ``k`` events of this log, or the events
themselves when the previous log was another session's): :func:`events_for_labels` then
gives the previous set back whole. Labels that fit neither (changed since, by another
program or an interrupted save of an older version) are refused by name
(:class:`LabelsMismatchError`), saying how to load them anyway.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_simseg.core.interaction.clicks import Click, ClickError, as_index, validate_click
from napari_simseg.core.interaction.refinement import Refinement
from napari_simseg.core.io.atomic import atomic_write_text

__all__ = ["LOG_FORMAT", "LOG_VERSION", "LabelsMismatchError", "LogError", "check_log", "event_refinement",
           "events_for_labels", "iter_replay", "labels_digest", "labels_record", "load_log", "log_refinement",
           "replay_log", "rounds_from_log", "write_log"]

LOG_FORMAT = "napari-simseg-log"
LOG_VERSION = 1


def write_log(path, image_shape: Sequence[int], class_names: Sequence[str], checkpoint,
              events: Sequence[dict], labels: dict | None = None, refinement: Refinement | None = None) -> Path:
    """Write a log document atomically (a temporary file in the same folder, then a rename).

    ``labels``: the labels file it belongs to (:func:`labels_record`), when there is one;
    ``refinement``: the session's (recorded so that a replay shows the same labels).
    """
    path = Path(path)
    doc = {
        "format": LOG_FORMAT,
        "version": LOG_VERSION,
        "image_shape": [int(s) for s in image_shape],
        "class_names": list(class_names),
        "checkpoint": checkpoint,
        **({} if refinement is None else {"refinement": refinement.to_dict()}),
        "events": list(events),
    }
    if labels is not None:
        doc["labels"] = labels
    return atomic_write_text(path, json.dumps(doc, indent=1))


class LogError(ValueError):
    """An interaction log that cannot be used; one line naming the file, the event and the field."""


def load_log(path) -> dict:
    """Read an interaction log written by :func:`write_log`, checked by :func:`check_log`.

    Raises
    ------
    ValueError
        For an unreadable file, another format, missing fields or a newer version
        (:class:`LogError` for a field out of its range).
    """
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read interaction log {path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != LOG_FORMAT:
        raise ValueError(f"{path} is not a napari-simseg interaction log")
    missing = [k for k in ("class_names", "events") if k not in doc]
    if missing:
        raise ValueError(f"interaction log {path} lacks {', '.join(missing)}")
    version = doc.get("version", 0)
    if not isinstance(version, int) or version > LOG_VERSION:
        raise ValueError(f"{path}: log version {version!r} is newer than supported")
    return check_log(doc, source=str(path))


def _shape_of(doc: dict, source: str) -> tuple:
    shape = doc.get("image_shape")
    if (not isinstance(shape, list) or len(shape) not in (2, 3)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)):
        raise LogError(f"{source}: 'image_shape' must be 2 or 3 positive integers, got {shape!r}")
    return tuple(shape)


def _slice(event: dict, key: str, n_slices: int, where: str) -> int:
    z = as_index(event.get(key), f"{where}: '{key}'", LogError)
    if not 0 <= z < n_slices:
        raise LogError(f"{where}: '{key}' {z} is outside the image (slices 0..{n_slices - 1})")
    return z


def _check_clicks(clicks, n_classes: int, slice_shape: tuple, where: str) -> None:
    if not isinstance(clicks, list):
        raise LogError(f"{where}: 'clicks' must be a list, got {type(clicks).__name__}")
    for c in clicks:
        if not isinstance(c, dict) or not {"class", "y", "x"} <= set(c):
            raise LogError(f"{where}: a click must be {{'class', 'y', 'x'}}, got {c!r:.80}")
        try:
            validate_click(Click(c["class"], c["y"], c["x"]), n_classes, slice_shape)
        except ClickError as exc:
            raise LogError(f"{where}: {exc}") from None


def _check_event(event, n_slices: int, slice_shape: tuple, n_classes: int, where: str) -> None:
    """One event's fields, in range for the log's image and classes (nothing is allocated)."""
    if not isinstance(event, dict):
        raise LogError(f"{where}: an event must be an object, got {event!r:.80}")
    action = event.get("action")
    where = f"{where} ({action!r})"
    if action in ("clicks", "undo", "redo", "reset", "set_labels", "propagate", "undo_propagation"):
        _slice(event, "slice", n_slices, where)
    if action == "clicks":
        _check_clicks(event.get("clicks"), n_classes, slice_shape, where)
        if "refinement" in event:
            _as_refinement(event["refinement"], where)
    elif action == "auto":
        slices = event.get("slices")
        if not isinstance(slices, list) or not slices:
            raise LogError(f"{where}: 'slices' must be a non-empty list, got {slices!r:.80}")
        if len(slices) > n_slices:  # checked before the entries: a huge list stops here
            raise LogError(f"{where}: {len(slices)} slices listed, the image has {n_slices}")
        zs = [_slice({"slice": z}, "slice", n_slices, where) for z in slices]
        if len(set(zs)) != len(zs):
            raise LogError(f"{where}: 'slices' lists a slice twice")
    elif action == "set_labels":
        _check_label_rows(event.get("labels"), "labels", slice_shape, n_classes, where)
    elif action == "propagate":
        if event.get("source_labels") is not None:
            _check_label_rows(event["source_labels"], "source_labels", slice_shape, n_classes, where)
        steps = event.get("steps")
        if not isinstance(steps, list) or len(steps) > n_slices:
            raise LogError(f"{where}: 'steps' must be a list of at most {n_slices} slices")
        for step in steps:
            if not isinstance(step, dict) or not isinstance(step.get("rounds"), list):
                raise LogError(f"{where}: a step must be {{'slice', 'rounds'}}, got {step!r:.80}")
            _slice(step, "slice", n_slices, where)
            for clicks in step["rounds"]:
                _check_clicks(clicks, n_classes, slice_shape, where)
    elif action not in ("undo", "redo", "reset", "undo_propagation"):
        raise LogError(f"{where}: unknown action")


def _check_label_rows(rows, name: str, slice_shape, n_classes: int, where: str) -> None:
    """A slice's labels as a log holds them: ``H`` rows of ``W`` class indices."""
    h, w = slice_shape
    if not (isinstance(rows, list) and len(rows) == h and all(isinstance(r, list) and len(r) == w for r in rows)):
        raise LogError(f"{where}: '{name}' must be {h} rows of {w} class indices")
    values = np.asarray(rows)
    if values.dtype.kind not in "iu" or values.min() < 0 or values.max() >= n_classes:
        raise LogError(f"{where}: '{name}' must hold class indices 0..{n_classes - 1}")


def check_log(doc: dict, image_shape: Sequence[int] | None = None, class_names: Sequence[str] | None = None,
              source: str = "interaction log") -> dict:
    """Check a log document's sizes and every event's fields before anything is replayed.

    Parameters
    ----------
    doc : dict
        The log document.
    image_shape, class_names : optional
        What the log must have been made with (the session's image and classes).
    source : str
        The file, for messages.

    Returns
    -------
    dict
        ``doc``.

    Raises
    ------
    LogError
        One line naming the file, the event (its index and action) and the field:
        an image shape or classes that differ, a slice outside the image, a class
        outside the classes, a click off the slice, an ``auto`` event listing more
        slices than the image has, labels of another shape.
    """
    shape = _shape_of(doc, source)
    names = doc.get("class_names")
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise LogError(f"{source}: 'class_names' must be a list of at least 2 names, got {names!r:.80}")
    if class_names is not None and list(class_names) != names:
        raise LogError(f"{source}: log was made with classes {names}, this session has {list(class_names)}")
    if image_shape is not None and tuple(int(s) for s in image_shape) != shape:
        raise LogError(f"{source}: log was made on an image of shape {shape}, this image is {tuple(image_shape)}")
    log_refinement(doc, source)
    events = doc.get("events")
    if not isinstance(events, list):
        raise LogError(f"{source}: 'events' must be a list, got {type(events).__name__}")
    _check_labels_entry(doc.get("labels"), len(events), source)
    n_slices = shape[0] if len(shape) == 3 else 1
    for i, event in enumerate(events):
        _check_event(event, n_slices, shape[-2:], len(names), f"{source}: event {i}")
    return doc


def labels_digest(labels) -> str:
    """A digest of a labels array's shape and values, whatever integer type holds them
    (a file read back in another type gives the same digest)."""
    a = np.asarray(labels)
    top = int(a.max()) if a.size else 0
    kind = "<u1" if top < 2**8 else "<u2" if top < 2**16 else "<u4"
    h = hashlib.blake2b(f"{a.shape}".encode(), digest_size=16)
    for part in a.reshape(-1, *a.shape[-2:]) if a.ndim >= 2 else [a]:  # a slice at a time: no big copy
        h.update(np.ascontiguousarray(part, dtype=kind).tobytes())
    return h.hexdigest()


def _without_times(events) -> str:
    return json.dumps([{k: v for k, v in e.items() if k != "time"} for e in events], sort_keys=True)


def _with_refinements(doc: dict) -> list[dict]:
    """A log's events with every ``clicks`` event holding the refinement its round was shown
    with (the log's own for events written before rounds recorded theirs)."""
    shown = log_refinement(doc).to_dict()
    return [{**e, "refinement": shown} if e.get("action") == "clicks" and "refinement" not in e else e
            for e in doc["events"]]


def labels_record(labels_file, labels, events: Sequence[dict], log_path) -> dict:
    """The ``"labels"`` entry of a log about to be written with a labels file (see the module).

    Parameters
    ----------
    labels_file : str or Path
        The labels file the log goes with.
    labels : ndarray
        The labels being saved.
    events : sequence of dict
        The new log's events.
    log_path : str or Path
        The log file; the log there now (if it names its labels) becomes ``previous``.
    """
    previous = None
    try:
        old = load_log(log_path) if Path(log_path).is_file() else None
    except ValueError:
        old = None  # an unreadable log: nothing to fall back on
    old_digest = (old.get("labels") or {}).get("digest") if old else None
    if old is not None and isinstance(old_digest, str):
        old_events = _with_refinements(old)  # as a replay of that log records them
        k = len(old_events)
        if k <= len(events) and _without_times(events[:k]) in (_without_times(old_events),
                                                                _without_times(old["events"])):
            previous = {"digest": old_digest, "n_events": k}
        else:
            previous = {"digest": old_digest, "events": old_events}
    return {"file": Path(labels_file).name, "digest": labels_digest(labels), "previous": previous}


class LabelsMismatchError(LogError):
    """A labels file and its log that were not saved together."""


def events_for_labels(doc: dict, labels, labels_file, log_file) -> tuple[dict, str]:
    """The log of ``doc`` that belongs to ``labels`` (read from ``labels_file``).

    Returns
    -------
    (doc, note)
        ``doc`` itself when the labels are those it was saved with (or it names none: a
        log from before labels were named); the previous save's log when the labels are
        those (the last save was interrupted between its two files; ``note`` says so).

    Raises
    ------
    LabelsMismatchError
        When the labels fit neither: naming both files and how to load them anyway.
    """
    entry = doc.get("labels")
    if not entry:
        return doc, ""
    digest = labels_digest(labels)
    if digest == entry["digest"]:
        return doc, ""
    previous = entry.get("previous") or {}
    if previous.get("digest") == digest:
        if "n_events" in previous:
            events = doc["events"][: previous["n_events"]]
        else:
            events = previous["events"]
        old = check_log({**doc, "events": events, "labels": None}, source=f"{log_file} (previous save)")
        return old, (f"the last save of {Path(labels_file).name} did not finish: loaded the save before it "
                     f"({len(events)} logged actions)")
    raise LabelsMismatchError(
        f"{Path(labels_file).name} does not hold the labels {Path(log_file).name} was saved with (changed since, "
        "or a save of an older version was interrupted): load the labels alone (load(..., log=False): the "
        "interaction memories start empty) or replay this log under them anyway (log=True: where they differ "
        "they count as hand edits)"
    )


def _check_labels_entry(entry, n_events: int, source: str) -> None:
    """The ``"labels"`` entry's fields (the labels file a log was saved with)."""
    if entry is None:
        return
    if not isinstance(entry, dict) or not isinstance(entry.get("digest"), str):
        raise LogError(f"{source}: 'labels' must name the labels' 'digest', got {entry!r:.80}")
    previous = entry.get("previous")
    if previous is None:
        return
    n = previous.get("n_events") if isinstance(previous, dict) else None
    if not isinstance(previous, dict) or not isinstance(previous.get("digest"), str) or not (
            isinstance(previous.get("events"), list)
            or (isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= n_events)):
        raise LogError(f"{source}: 'labels.previous' must be a digest with 'n_events' or 'events', "
                       f"got {previous!r:.80}")


def log_refinement(doc: dict, source: str = "interaction log") -> Refinement:
    """The refinement a log's rounds were shown with (``Refinement.off()`` for a log older
    than the refinement, no focus views for one older than them, every round refined for one
    older than the network rounds); a ``clicks`` event's own entry wins for its round
    (:func:`event_refinement`).

    Raises
    ------
    LogError
        A ``refinement`` entry that is not valid settings.
    """
    if "refinement" not in doc:
        return Refinement.off()
    return _as_refinement(doc["refinement"], source)


def event_refinement(event: dict, default: Refinement, where: str = "interaction log event") -> Refinement:
    """The refinement a ``clicks`` event's round was shown with: its own entry, else
    ``default`` (the log's, for events written before rounds recorded their own)."""
    if "refinement" not in event:
        return default
    return _as_refinement(event["refinement"], where)


def _as_refinement(recorded, where: str) -> Refinement:
    if isinstance(recorded, dict):  # older logs: shown without focus views, every round refined
        recorded = {"zoom": 1.0, "network_rounds": 0, **recorded}
    try:
        return Refinement.from_dict(recorded)
    except ValueError as exc:
        raise LogError(f"{where}: 'refinement': {exc}") from None


def _event_clicks(event: dict) -> list[Click]:
    return [Click(c["class"], c["y"], c["x"]) for c in event["clicks"]]


def replay_log(session, log):
    """Apply a saved log's events, in order, to a fresh session on the same image.

    Parameters
    ----------
    session : InteractiveSession
        A new session on the same image and checkpoint.
    log : dict, str or Path
        The log document or its file.

    Returns
    -------
    InteractiveSession
        ``session``.

    Raises
    ------
    LogError
        For a log of other classes or another image, or an event out of range
        (:func:`check_log`), before any event is applied.
    """
    for _ in iter_replay(session, log):
        pass
    return session


def iter_replay(session, log):
    """:func:`replay_log` step by step: yields ``(done, total)`` events, ``(0, total)`` first.

    The whole log is checked (:func:`check_log`) before the first event is applied.
    Stopping the generator early leaves ``session`` with the events so far.
    """
    doc = log if isinstance(log, dict) else load_log(log)
    shape = session.shape[1:] if session.is_2d else session.shape
    check_log(doc, shape, session.class_names, source="log" if isinstance(log, dict) else str(log))
    total = len(doc["events"])
    own = session.refinement
    recorded = log_refinement(doc)  # the labels as they were shown when recorded
    try:
        yield 0, total
        for done, event in enumerate(doc["events"], 1):
            session.refinement = event_refinement(event, recorded) if event["action"] == "clicks" else recorded
            _apply(session, event)
            yield done, total
    finally:
        session.refinement = own


def _apply(session, event: dict) -> None:
    """Apply one checked event to ``session``."""
    action = event["action"]
    if action == "clicks":
        session.add_clicks(event["slice"], _event_clicks(event))
    elif action == "undo":
        session.undo(event["slice"])
    elif action == "redo":
        session.redo(event["slice"])
    elif action == "reset":
        session.reset_slice(event["slice"])
    elif action == "auto":
        # the same batch as recorded: batch composition can change float rounding
        for _ in session.iter_auto(event["slices"], batch_size=len(event["slices"])):
            pass
    elif action == "set_labels":
        session.set_labels(event["slice"], np.asarray(event["labels"]))
    elif action == "propagate":
        session.replay_propagation(event)
    elif action == "undo_propagation":
        session.undo_propagation(event["slice"])
    else:
        raise ValueError(f"unknown log action {action!r}")


def rounds_from_log(doc: dict | None):
    """Which clicks each slice's rounds hold after a log, without running the network.

    Returns
    -------
    rounds, redo : dict of int -> list of list of Click
        Per slice, the clicks of every round (oldest first) and the stack of undone
        rounds that redo would bring back (the next one last).
    """
    rounds: dict[int, list[list[Click]]] = defaultdict(list)
    redo: dict[int, list[list[Click]]] = defaultdict(list)
    for event in (doc or {}).get("events", ()):
        action, z = event["action"], event.get("slice")
        if action == "clicks":
            rounds[z].append(_event_clicks(event))
            redo[z].clear()
        elif action == "undo" and rounds[z]:
            redo[z].append(rounds[z].pop())
        elif action == "redo" and redo[z]:
            rounds[z].append(redo[z].pop())
        elif action in ("reset", "set_labels"):
            rounds.pop(z, None)
            redo.pop(z, None)
    return rounds, redo
