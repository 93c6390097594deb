"""The interaction log: every action of a session, in order, as JSON (``<name>.simseg.json``).

The one place the format is written and read. :meth:`InteractiveSession.save_log`
writes it; :func:`replay_log` applies a saved log to a fresh session (the widget's
*Load*, the console, the tests), and :func:`rounds_from_log` tells which clicks each
slice's rounds hold, and which undone rounds wait for redo, without running anything
(the napari adapter puts those clicks back into the points layers).

Format (version 1)::

    {"format": "napari-simseg-log", "version": 1,
     "image_shape": [Z, H, W] or [H, W], "class_names": [...], "checkpoint": str,
     "events": [{"action": "clicks", "slice": z, "round": k, "time": t,
                 "clicks": [{"class": c, "y": y, "x": x}, ...]},
                {"action": "undo" | "redo" | "reset", "slice": z, "time": t},
                {"action": "auto", "slices": [z, ...], "time": t},
                {"action": "set_labels", "slice": z, "labels": [[...]], "time": t}]}
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from .clicks import Click

__all__ = ["LOG_FORMAT", "LOG_VERSION", "load_log", "replay_log", "rounds_from_log", "write_log"]

LOG_FORMAT = "napari-simseg-log"
LOG_VERSION = 1


def write_log(path, image_shape: Sequence[int], class_names: Sequence[str], checkpoint,
              events: Sequence[dict]) -> Path:
    """Write a log document atomically (a temporary file in the same folder, then a rename)."""
    path = Path(path)
    doc = {
        "format": LOG_FORMAT,
        "version": LOG_VERSION,
        "image_shape": [int(s) for s in image_shape],
        "class_names": list(class_names),
        "checkpoint": checkpoint,
        "events": list(events),
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)
    return path


def load_log(path) -> dict:
    """Read an interaction log written by :func:`write_log`.

    Raises
    ------
    ValueError
        For an unreadable file, another format, missing fields or a newer version.
    """
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read interaction log {path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != LOG_FORMAT:
        raise ValueError(f"{path} is not a napari-simseg interaction log")
    missing = [k for k in ("class_names", "events") if k not in doc]
    if missing:
        raise ValueError(f"interaction log {path} lacks {', '.join(missing)}")
    if doc.get("version", 0) > LOG_VERSION:
        raise ValueError(f"{path}: log version {doc.get('version')} is newer than supported")
    return doc


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
    """
    doc = log if isinstance(log, dict) else load_log(log)
    if list(doc["class_names"]) != session.class_names:
        raise ValueError(
            f"log was made with classes {doc['class_names']}, session has {session.class_names}"
        )
    for event in doc["events"]:
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
        else:
            raise ValueError(f"unknown log action {action!r}")
    return session


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
