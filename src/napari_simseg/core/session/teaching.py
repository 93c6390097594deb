"""Teaching: fine-tune the network on the slices a user labelled, in a background process.

A user's own corrections are the best training data there is. This module is the
part of teaching that runs in the interactive process (the viewer's, the console's):
which slices count as labelled, which of them are held back to measure the result,
packing them for the training process, and :class:`TeachJob`, the handle of that
process. The training itself is :mod:`~napari_simseg.core.jobs.teach_worker`, run as a
program of its own in a *spawned* process (never forked: the parent has Qt and torch
threads); the interactive process never imports the training code, and its event
loop only reads a small progress file now and then.

Accepted slices
---------------
:func:`accepted_slices` with ``mode="accepted"`` (the default) returns the slices a
user has looked at and left as they want them:

* slices with interaction rounds (clicked; the labels as shown, every clicked pixel in
  its click's class);
* slices with a propagated result that was kept (not undone);
* slices whose labels were set or painted by hand (``InteractiveSession.set_labels``,
  or a viewer's hand-edited slices, given as ``painted``).

Slices that only hold an automatic (0-click) result, or nothing, are not accepted:
nobody has checked them. ``mode="edited"`` leaves out the propagated slices too (only
the user's own rounds and paint). Every other slice's labels are never sent to the
training process (they are zeroed; their images still feed the 2.5D context).

Held-back slices
----------------
:func:`split_held_back` holds back a fifth (at least one) of the *units*, evenly
spread, when there are at least :data:`HOLD_BACK_MIN` of them: a unit is a whole case
when several cases (images) are taught, else a slice of the one volume. Validation
during teaching (the progress bar's Dice, the choice of the best epoch, the before and
after Dice) runs on the held-back slices. With fewer units nothing is held back and
validation runs on the training slices themselves (reported as such: a measure of fit,
not of generalisation). Neighbouring slices of one volume are alike, so Dice on
held-back slices of the volume being taught is optimistic for other volumes.

The process
-----------
:func:`start_teaching` packs the slices (each accepted slice with its neighbours for 2.5D
context, nothing else) into a temporary ``.npz`` with a JSON spec, and returns a
:class:`TeachJob` at once: a background thread writes the files and spawns the process,
``python -m napari_simseg.core.jobs.teach_worker WORKDIR``: a fresh interpreter, like
``multiprocessing``'s ``spawn`` start method but without re-running the caller's main script
in the child (``spawn`` does that, and a script that opens a viewer would open a second one
there). The process appends JSON lines to ``progress.jsonl``; :meth:`TeachJob.poll` reads
the new ones without blocking. :meth:`TeachJob.cancel` terminates the process and removes
the temporaries; the process also ends when the process that started it exits (``atexit``)
or dies (the worker watches its parent). The new checkpoint is written (atomically) to the
output path given, with its provenance in the header's training record
(``training["teach"]``: base checkpoint, slices per case, held-back slices, minutes, before
and after Dice).
"""

from __future__ import annotations

import atexit
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_simseg.core.io.atomic import atomic_write_text, remove_stale_temporaries

__all__ = [
    "HOLD_BACK_FRACTION",
    "HOLD_BACK_MIN",
    "SLICE_MODES",
    "TeachCase",
    "TeachJob",
    "TeachSplit",
    "TeachTask",
    "WORKER_MODULE",
    "accepted_slices",
    "init_kind",
    "pack_cases",
    "split_held_back",
    "start_teaching",
]

SLICE_MODES = ("accepted", "edited")
HOLD_BACK_FRACTION = 0.2
HOLD_BACK_MIN = 5  # units (cases, or slices of one volume) before any is held back
#: The training process's main module (run by name: this process never imports it).
WORKER_MODULE = "napari_simseg.core.jobs.teach_worker"
_TERMINAL = ("done", "failed", "cancelled")


@dataclass
class TeachCase:
    """One labelled image to teach on.

    Attributes
    ----------
    case_id : str
    image : ndarray
        ``(C, S, H, W)`` float32, normalised as the network expects (e.g.
        ``InteractiveSession.volume``).
    labels : ndarray
        ``(S, H, W)`` integer labels; only those of ``slices`` are used.
    slices : list of int
        The labelled (accepted) slices.
    """

    case_id: str
    image: np.ndarray
    labels: np.ndarray
    slices: list


@dataclass
class TeachSplit:
    """The labelled slices per case, split into those trained on and those held back."""

    train: dict
    held_back: dict = field(default_factory=dict)

    @property
    def validation(self) -> dict:
        """The slices validation runs on: the held-back ones, else the training slices."""
        return self.held_back or self.train


def accepted_slices(session, painted: Sequence[int] = (), mode: str = "accepted") -> list[int]:
    """The slices of an :class:`~napari_simseg.core.session.interactive.InteractiveSession` to teach on.

    Parameters
    ----------
    session : InteractiveSession
    painted : sequence of int
        Slices painted by hand in a viewer (``ViewerSession.hand_edited``).
    mode : {"accepted", "edited"}
        See the module docstring.
    """
    if mode not in SLICE_MODES:
        raise ValueError(f"slices must be one of {SLICE_MODES} or a list of slice indices, got {mode!r}")
    propagated = set(session.propagated)
    out = {session.check_slice(z) for z in painted} | set(session.hand_set)
    for z in range(session.n_slices):
        if session.n_rounds(z) > 0 and (mode == "accepted" or z not in propagated):
            out.add(z)
    return sorted(out)


def split_held_back(
    cases: Sequence[TeachCase], fraction: float = HOLD_BACK_FRACTION, minimum: int = HOLD_BACK_MIN
) -> TeachSplit:
    """Hold back ``fraction`` of the units (at least one, evenly spread) when there are
    ``minimum`` or more; a unit is a case when there are several, else a slice."""
    cases = [c for c in cases if len(c.slices)]
    if len(cases) > 1:
        units = [(c.case_id, None) for c in cases]
    else:
        units = [(cases[0].case_id, int(z)) for z in sorted(cases[0].slices)] if cases else []
    n = len(units)
    k = 0 if n < minimum else max(1, int(round(fraction * n)))
    held = {units[int((i + 0.5) * n / k)] for i in range(k)}
    train: dict = {}
    back: dict = {}
    for c in cases:
        for z in sorted(int(v) for v in c.slices):
            unit = (c.case_id, None) if len(cases) > 1 else (c.case_id, z)
            (back if unit in held else train).setdefault(c.case_id, []).append(z)
    return TeachSplit(train, back)


def init_kind(base_meta, class_names: Sequence[str], channel_names: Sequence[str]) -> str:
    """How teaching starts: ``"fresh"`` (no base), ``"finetune"`` (a base of these
    classes and channels) or ``"transfer"`` (a model of another task: every tensor of
    matching name and shape is copied, the class head starts fresh)."""
    if base_meta is None:
        return "fresh"
    same = list(base_meta.class_names) == list(class_names) and list(base_meta.channel_names) == list(channel_names)
    return "finetune" if same else "transfer"


#: The checkpoint fields that shape a session's memories: a taught network must keep them
LAYOUT_FIELDS = ("memory", "depth", "context_slices", "working_size")


def layout_of(meta) -> dict:
    """The fields of a checkpoint header that a session's memories depend on (and the click radius)."""
    return {**{k: getattr(meta, k) for k in LAYOUT_FIELDS}, "click_radius": meta.click_radius}


def pack_cases(cases: Sequence[TeachCase], split: TeachSplit, context: int) -> tuple[dict, list]:
    """The arrays the training process needs, and their manifest.

    Each case is cut into runs of consecutive slices that hold its labelled slices and
    their ``context`` neighbours on each side (nothing else is sent); labels outside
    the labelled slices are zeroed. Returns ``(arrays, parts)``: ``arrays`` for
    ``numpy.savez``, ``parts`` a list of ``{"id", "case", "first", "image", "labels",
    "train", "val"}`` (slice indices relative to the run).
    """
    arrays, parts = {}, []
    val = split.held_back
    for c in cases:
        train_z, val_z = split.train.get(c.case_id, []), val.get(c.case_id, [])
        labelled = sorted({*train_z, *val_z})
        if not labelled:
            continue
        n = c.image.shape[1]
        needed = sorted({j for z in labelled for j in range(max(0, z - context), min(n, z + context + 1))})
        runs, start = [], needed[0]
        for a, b in zip(needed, needed[1:] + [None]):
            if b != a + 1:
                runs.append((start, a + 1))
                start = b
        dtype = np.uint8 if int(np.max(c.labels[labelled])) < 256 else np.uint16
        for a, b in runs:
            i = len(parts)
            labels = np.zeros((b - a, *c.labels.shape[1:]), dtype)
            inside = [z for z in labelled if a <= z < b]
            labels[[z - a for z in inside]] = c.labels[inside]
            arrays[f"image{i}"] = np.ascontiguousarray(c.image[:, a:b], dtype=np.float32)
            arrays[f"labels{i}"] = labels
            parts.append(
                {
                    "id": c.case_id if len(runs) == 1 else f"{c.case_id}@{a}",
                    "case": c.case_id,
                    "first": a,
                    "image": f"image{i}",
                    "labels": f"labels{i}",
                    "train": [z - a for z in train_z if a <= z < b],
                    "val": [z - a for z in val_z if a <= z < b],
                }
            )
    return arrays, parts


def _check_cases(cases: Sequence[TeachCase], n_classes: int) -> list:
    cases = [c for c in cases if len(c.slices)]
    if not cases:
        raise ValueError("nothing to teach: no labelled slices (click, propagate or paint some slices first)")
    for c in cases:
        if c.image.ndim != 4 or c.labels.shape != c.image.shape[1:]:
            raise ValueError(
                f"{c.case_id}: image (C, S, H, W) {c.image.shape} and labels (S, H, W) {c.labels.shape} do not fit"
            )
        values = c.labels[sorted(c.slices)]
        if values.size and (values.min() < 0 or values.max() >= n_classes):
            raise ValueError(f"{c.case_id}: labels must lie in 0..{n_classes - 1} (the network's classes)")
    return cases


@dataclass
class TeachTask:
    """What to teach, from which network, in how long, and where the result goes.

    Attributes
    ----------
    cases : sequence of TeachCase
    class_names, channel_names : sequence of str
        The task's classes (background first) and image channels.
    base : str, Path or None
        The checkpoint to start from (``"demo"``, a path): fine-tuned when it has these
        classes and channels, else transferred (see :func:`init_kind`); ``None``: a
        fresh network.
    max_minutes : float
        The budget, from now to the new checkpoint (process start and validation included).
    output : str or Path
        Where the new checkpoint goes.
    layout : dict, optional
        :func:`layout_of` the session's checkpoint: the new network keeps it (memory,
        depth, context slices, working size, click radius), so that the session can
        switch to it keeping every slice's memory. A fine-tuned base must have it.
    normalization : dict, optional
        How ``cases``' images were normalised (recorded in the new checkpoint).
    options : dict, optional
        :class:`~napari_simseg.core.engine.train_config.TrainConfig` fields that override the
        teaching recipe (``core.jobs.teach_worker.teaching_options``).
    provenance : dict, optional
        More fields for the checkpoint's ``training["teach"]`` record (e.g. the image file).
    split : TeachSplit, optional
        The slices to train on and to hold back (default :func:`split_held_back`).
    threads, nice : int
        CPU threads of the training process (default: all cores but one) and its
        niceness (lower priority than the viewer).
    device : str
        Where the training process trains (``"auto"``, ``"cpu"``, ``"cuda"``...).
    """

    cases: Sequence[TeachCase]
    class_names: Sequence[str]
    channel_names: Sequence[str]
    base: str | os.PathLike | None
    max_minutes: float
    output: str | os.PathLike
    layout: dict | None = None
    normalization: dict | None = None
    options: dict | None = None
    provenance: dict | None = None
    split: TeachSplit | None = None
    threads: int | None = None
    nice: int = 10
    device: str = "auto"


def start_teaching(task: TeachTask) -> TeachJob:
    """Start teaching ``task`` in a background process; returns its :class:`TeachJob` at once.

    Raises
    ------
    ValueError
        For a budget that is not a positive number, no slice to teach, labels outside
        the classes, or a base to fine-tune whose memory layout differs from ``layout``.
    """
    from napari_simseg.core.io.resources import resolve_checkpoint
    from napari_simseg.core.network.checkpoint import read_checkpoint_meta

    t = task
    budget = float(t.max_minutes)
    if not (math.isfinite(budget) and budget > 0):
        raise ValueError(f"max_minutes must be a number > 0, got {t.max_minutes!r}")
    cases = _check_cases(t.cases, len(t.class_names))
    base_path = None if t.base is None else str(resolve_checkpoint(t.base))
    base_meta = None if base_path is None else read_checkpoint_meta(base_path)
    kind = init_kind(base_meta, t.class_names, t.channel_names)
    layout = t.layout
    if kind == "finetune" and layout is not None and layout_of(base_meta) != dict(layout):
        raise ValueError(
            f"{base_path} keeps its memories differently ({layout_of(base_meta)}) from this "
            f"session's network ({dict(layout)}); start a session with it first, or teach from "
            "the session's checkpoint"
        )
    split = t.split or split_held_back(cases)
    context = max([1, base_meta.context_slices if base_meta else 0, (layout or {}).get("context_slices") or 0])
    arrays, parts = pack_cases(cases, split, context)
    spec = {
        "started": time.time(),
        "max_minutes": budget,
        "base": base_path,
        "init": kind,
        "class_names": list(t.class_names),
        "channel_names": list(t.channel_names),
        "layout": layout,
        "normalization": t.normalization,
        "options": dict(t.options or {}),
        "output": str(Path(t.output).resolve()),
        "parts": parts,
        "shapes": [list(c.labels.shape if c.labels.shape[0] > 1 else c.labels.shape[1:]) for c in cases],
        "train_slices": split.train,
        "held_back": split.held_back,
        "provenance": dict(t.provenance or {}),
        "threads": t.threads or max(1, (os.cpu_count() or 2) - 1),
        "nice": int(t.nice),
        "device": t.device,
    }
    return TeachJob(spec, arrays)


_RUNNING: weakref.WeakSet[TeachJob] = weakref.WeakSet()


@atexit.register
def _cancel_running() -> None:
    """No teaching process outlives the process that started it."""
    for job in list(_RUNNING):
        job.cancel()


def _spawn_worker(workdir: Path) -> subprocess.Popen:
    """``python -m napari_simseg.core.jobs.teach_worker WORKDIR``: a fresh interpreter (never a fork
    of this one, which has Qt and torch threads) that imports nothing of the caller's main script."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[3])  # the folder that holds napari_simseg
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with open(workdir / "worker.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", WORKER_MODULE, str(workdir)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(workdir),
        )


class TeachJob:
    """A teaching process and what it reported so far.

    Every method returns at once except :meth:`result` (and :meth:`cancel`, which waits
    a moment for the process to end); none blocks on the process's output.

    Attributes
    ----------
    workdir : Path
        The temporaries (data, spec, progress, the training run); removed when the job ends.
    output : Path
        Where the new checkpoint is written.
    process : subprocess.Popen or None
        The training process (None until the background thread started it).
    log : list of str
        The trainer's log lines so far (the plan, each epoch).
    epochs : list of dict
        The ``epoch`` events so far (``epoch``, ``steps``, ``train_loss``, ``dice``, ``minutes``).
    state : dict
        ``status`` (``preparing``, ``running``, ``done``, ``failed``, ``cancelled``),
        ``epoch``, ``epochs``, ``loss``, ``dice`` (validation Dice at ``clicks``
        clicks, mean over the classes but the background), ``before`` and ``after``
        (``{clicks: Dice}`` on the validation slices; ``before`` is None unless
        fine-tuning), ``held_back`` (whether validation slices were held back),
        ``message``, ``checkpoint``, ``summary`` (the provenance record once done).
    """

    def __init__(self, spec: dict, arrays: dict):
        self.workdir = Path(tempfile.mkdtemp(prefix="simseg-teach-"))
        self.output = Path(spec["output"])
        self.max_minutes = float(spec["max_minutes"])
        self.process: subprocess.Popen | None = None
        self.state = {
            "status": "preparing",
            "epoch": 0,
            "epochs": None,
            "loss": None,
            "dice": None,
            "clicks": None,
            "before": None,
            "after": None,
            "held_back": bool(spec["held_back"]),
            "message": "starting the teaching process",
            "checkpoint": None,
            "summary": None,
        }
        self.log: list[str] = []  # the trainer's log lines
        self.epochs: list[dict] = []  # the epoch events (epoch, steps, train_loss, dice, minutes)
        self._started = time.monotonic()
        self._ended: float | None = None
        self._offset = 0
        self._lock = threading.Lock()
        self._cancelled = False
        self._launch_error: str | None = None
        _RUNNING.add(self)
        spec = {**spec, "parent_pid": os.getpid()}
        self._thread = threading.Thread(
            target=self._launch, args=(spec, arrays), daemon=True, name="simseg-teach-launch"
        )
        self._thread.start()

    # ------------------------------------------------------------------ launch
    def _launch(self, spec: dict, arrays: dict) -> None:
        try:
            np.savez(self.workdir / "data.npz", **arrays)
            with self._lock:
                if self._cancelled:
                    return
                atomic_write_text(self.workdir / "spec.json", json.dumps(spec))
                self.process = _spawn_worker(self.workdir)
        except Exception as exc:  # noqa: BLE001 - reported through poll()
            self._launch_error = f"could not start the teaching process: {exc}"

    @property
    def alive(self) -> bool:
        """Whether the training process runs."""
        return self.process is not None and self.process.poll() is None

    # ------------------------------------------------------------------ progress
    def _read_events(self) -> list:
        try:
            with open(self.workdir / "progress.jsonl", "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return []
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next poll
        self._offset += end
        events = []
        for line in data[:end].splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events

    def _apply(self, event: dict) -> None:
        st, kind = self.state, event.get("event")
        if kind == "started":
            st.update(status="running", message="preparing the slices")
        elif kind == "plan":
            st.update(
                epochs=event.get("epochs"),
                clicks=event.get("clicks"),
                message=f"training for {event.get('max_minutes') or 0:.1f} min",
            )
        elif kind == "before":
            st["before"] = event.get("dice")
        elif kind == "log":
            self.log.append(str(event.get("text")))
        elif kind == "epoch":
            self.epochs.append(dict(event))
            st.update(
                epoch=event.get("epoch"),
                epochs=event.get("epochs"),
                loss=event.get("train_loss"),
                dice=event.get("dice"),
                message=f"epoch {event.get('epoch')}/{event.get('epochs')}",
            )
        elif kind == "done":
            st.update(
                status="done",
                checkpoint=event.get("checkpoint"),
                after=event.get("after"),
                before=event.get("before", st["before"]),
                summary=event.get("summary"),
                message=f"taught: {Path(event.get('checkpoint') or '').name}",
            )
        elif kind == "error":
            st.update(status="failed", message=f"teaching failed: {event.get('message')}")

    def poll(self) -> dict:
        """Read what the process reported since the last call; returns :attr:`state`."""
        if self.state["status"] in _TERMINAL:
            return self.state
        for event in self._read_events():
            self._apply(event)
        process = self.process
        if self.state["status"] in _TERMINAL:
            self._finish()
        elif self._launch_error is not None:
            self.state.update(status="failed", message=self._launch_error)
            self._finish()
        elif process is not None and process.poll() is not None:
            for event in self._read_events():  # the last lines, written just before it ended
                self._apply(event)
            if self.state["status"] not in _TERMINAL:
                self.state.update(
                    status="failed",
                    message=f"the teaching process ended (exit code "
                    f"{process.returncode}) without a result"
                    f"{self._log_tail()}",
                )
            self._finish()
        return self.state

    def _log_tail(self) -> str:
        try:
            lines = (self.workdir / "worker.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return f": {lines[-1]}" if lines else ""

    @property
    def elapsed(self) -> float:
        """Seconds from the start to now, or to the end once the job ended."""
        return (self._ended or time.monotonic()) - self._started

    @property
    def fraction(self) -> float:
        """How much of the budget is used (1.0 once the job ended)."""
        if self.state["status"] in _TERMINAL:
            return 1.0
        return min(0.99, self.elapsed / (60.0 * self.max_minutes))

    def done(self) -> bool:
        """Whether the job ended (done, failed or cancelled)."""
        return self.poll()["status"] in _TERMINAL

    def result(self, timeout: float | None = None) -> Path:
        """Wait for the job; returns the new checkpoint's path.

        Raises
        ------
        RuntimeError
            When teaching failed or was cancelled.
        TimeoutError
            When ``timeout`` seconds pass first (the job keeps running).
        """
        end = None if timeout is None else time.monotonic() + float(timeout)
        while not self.done():
            if end is not None and time.monotonic() > end:
                raise TimeoutError(f"teaching still runs after {timeout} s")
            time.sleep(0.1)
        if self.state["status"] != "done":
            raise RuntimeError(self.state["message"])
        return Path(self.state["checkpoint"])

    # ------------------------------------------------------------------ ending
    def cancel(self) -> bool:
        """Stop the process and remove its temporaries; returns whether anything was stopped."""
        with self._lock:
            self._cancelled = True
            process = self.process
        if self.state["status"] in _TERMINAL:
            return False
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        self.state.update(status="cancelled", message="teaching cancelled")
        self._finish()
        remove_stale_temporaries(self.output.parent)  # a checkpoint write cut short
        return True

    def _finish(self) -> None:
        # never waits: after its last line the process only exits (Popen reaps it later)
        self._ended = time.monotonic()
        _RUNNING.discard(self)
        shutil.rmtree(self.workdir, ignore_errors=True)
