"""Drive SimSeg in a napari viewer: the actions behind the widget's buttons.

:class:`ViewerSession` binds an :class:`~napari_simseg.core.session.interactive.InteractiveSession`
to a viewer's layers: one points layer per class (``"<class> clicks"``, background
included) for the clicks and one labels layer (``"SimSeg labels"``) for the results.
From napari's console every call runs synchronously::

    from napari_simseg import ViewerSession
    vs = ViewerSession(viewer, checkpoint="model.safetensors")
    vs.add_clicks(12, [(1, 40, 52), (0, 10, 10)])   # (class, y, x) on slice 12
    vs.undo(12)
    vs.auto()                                        # every slice without clicks

The widget adds threading only: ``prepare_*`` (GUI thread: reads the layers, returns a
:class:`Job`), ``Job.compute`` (any thread: touches only the core session), then
``Job.finish`` / ``fail`` / ``cancel`` (GUI thread: updates the layers); one job at a
time. This module is Qt-free (questions to the user come in as the ``confirm`` and
``confirm_discard`` callbacks) and reads and writes layers through :mod:`napari_simseg.annotator.layers`;
its long jobs (automatic segmentation, propagation, loading) are in :mod:`napari_simseg.annotator.jobs`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_simseg.annotator.jobs import Job, LongJobs, log_path_for
from napari_simseg.annotator.layers import (
    CLICKS_SUFFIX,
    LABELS_LAYER_NAME,
    ClickLayers,
    LabelsView,
    PointKey,
    check_click_layer_names,
    check_image_layer,
    clicks_from_keys,
    current_slice,
    existing_labels_layer,
    find_image_layer,
    image_channels,
    keep_other_labels_layer,
    labels_class_problem,
    view_problem,
)
from napari_simseg.core.interaction.clicks import as_clicks, validate_click

if TYPE_CHECKING:  # pragma: no cover
    from napari_simseg.core.network.predictor import Predictor
    from napari_simseg.core.session.interactive import InteractiveSession, RoundResult

__all__ = ["CLICKS_SUFFIX", "LABELS_LAYER_NAME", "OVERWRITE_POLICIES", "Job", "ViewerSession", "log_path_for"]

OVERWRITE_POLICIES = ("ask", "always", "never")
# log actions that are the user's work (a Load replacing them asks first)
_WORK_ACTIONS = ("clicks", "auto", "set_labels", "propagate")


class ViewerSession(LongJobs):
    """Interactive segmentation of one image layer of a napari viewer.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer whose layers are used.
    image_layer : napari.layers.Image, str, sequence of them, or None
        The image (or its name); ``None`` takes the selected image layer, else the
        topmost one. For a network that reads several channels (``T1``, ``T2``...): one
        layer per channel in its order, or one layer with the channels along
        ``channel_axis`` (the first axis is found by itself); ``None`` takes the image
        layers named after the channels.
    checkpoint : str, Path or Predictor
        ``"demo"`` (the bundled model), a ``.safetensors`` path, or a loaded Predictor.
    device : {"auto", "cpu", "cuda", "mps"}
        Where the network runs.
    overwrite_policy : {"ask", "always", "never"}
        What happens when a result would replace hand-edited labels: ask ``confirm``,
        overwrite always, or never.
    confirm : callable, optional
        ``confirm(slices) -> bool``, asked under the ``"ask"`` policy with the list of
        hand-edited slices a result would change (the widget passes a question
        dialog). Without it, ``"ask"`` keeps the hand edits: they are never
        overwritten silently.
    batch_size : int
        Slices per network call in automatic segmentation.
    channel_axis : int, optional
        The axis of a single ``image_layer`` that holds the channels.
    confirm_discard : callable, optional
        ``confirm_discard(question) -> bool``, asked before :meth:`load` replaces rounds
        made since the last save or load (the widget passes a question dialog).
        Without it such a load is refused (``RuntimeError``) unless ``discard=True``:
        unsaved work is never dropped silently.

    Raises
    ------
    ImageError
        Unusable image layer, or a layer called ``"SimSeg labels"`` that is not a labels layer.
    CheckpointError
        Checkpoint that cannot be loaded or whose classes do not fit the existing
        ``"SimSeg labels"`` layer.
    FileNotFoundError
        Missing checkpoint (for ``"demo"``: the demo model is not installed).
    ValueError
        Unavailable device.

    Notes
    -----
    The viewer is only modified once everything has been checked: a failing
    constructor leaves the layers as they were. A slice whose labels differ from what
    the session last wrote there was edited by hand (painted, filled, erased, loaded
    from a file without a log); results replace it only as ``overwrite_policy`` allows.
    A ``"SimSeg labels"`` layer of another shape (an earlier image's) is kept, renamed
    ``"SimSeg labels (<its image>)"`` (``kept_labels_layer``), and a new one is made.
    """

    def __init__(self, viewer, image_layer=None, checkpoint: str | Path | Predictor = "demo",
                 device: str = "auto", *, overwrite_policy: str = "ask",
                 confirm: Callable[[list], bool] | None = None, batch_size: int = 8,
                 confirm_discard: Callable[[str], bool] | None = None, channel_axis: int | None = None):
        from napari_simseg._llvm_guard import avoid_triton_llvm_clash

        avoid_triton_llvm_clash()  # before the first torch import in a process with a canvas
        from napari_simseg.core.session.interactive import InteractiveSession

        if overwrite_policy not in OVERWRITE_POLICIES:
            raise ValueError(f"overwrite_policy must be one of {OVERWRITE_POLICIES}, got {overwrite_policy!r}")
        self.viewer = viewer
        if not isinstance(image_layer, (list, tuple)) and channel_axis is None:
            layer = find_image_layer(viewer, image_layer)
            if layer is None or np.ndim(layer.data) != 4:  # a 4D layer may hold channels
                check_image_layer(layer, allow_colour=True)  # before the slow load

        # --- every check happens before the first change to the viewer
        predictor = self._load_predictor(checkpoint, device)
        image, channels = image_channels(viewer, image_layer, predictor.channel_names, channel_axis)
        existing = existing_labels_layer(viewer, channels[0].shape)
        self._check_labels_classes(existing, predictor)
        check_click_layer_names(viewer, predictor.class_names)
        session = InteractiveSession(channels if len(channels) > 1 else channels[0], predictor)

        # --- checks passed: bind to the viewer
        self.kept_labels_layer = keep_other_labels_layer(viewer, channels[0].shape)
        self.image_layer = image
        self._image = channels[0]
        self.session: InteractiveSession = session
        self.overwrite_policy = overwrite_policy
        self.confirm = confirm
        self.confirm_discard = confirm_discard
        self.batch_size = int(batch_size)
        self._saved_events = 0  # the session's log up to here is saved (or was loaded)
        self._nonfinite_points = self._outside_points = 0  # what the last prepare_round removed
        self._job: Job | None = None
        self.teach_job = None  # the running or last teach() job (napari_simseg.annotator.teach.ViewerTeachJob)
        self.last_result: RoundResult | None = None
        self.last_round_clicks = 0  # clicks of the last finished round
        self.last_round_shown = True  # whether its labels reached the layer
        self._labels = LabelsView(viewer, image, self.class_names, session.labels, existing)
        self._clicks = ClickLayers(viewer, image, self.class_names, session.shape)
        self._clicks.activate()

    # ------------------------------------------------------------------ set-up
    @staticmethod
    def import_model_stack() -> None:
        """Import torch and the model code on the calling (GUI) thread, before a worker loads a
        checkpoint: the LLVM guard must run before torch's first import, best not off the main thread."""
        from napari_simseg._llvm_guard import avoid_triton_llvm_clash

        avoid_triton_llvm_clash()
        from napari_simseg.core.network import checkpoint, predictor  # noqa: F401

    @staticmethod
    def load_predictor(checkpoint, device: str = "auto") -> Predictor:
        """Load a checkpoint (path, ``"demo"``) onto ``device``; touches no layer, so it
        may run on a worker thread. Pass the result as ``checkpoint=`` to the
        constructor, which then checks its classes against an existing labels layer."""
        return ViewerSession._load_predictor(checkpoint, device)

    @staticmethod
    def _load_predictor(checkpoint, device: str) -> Predictor:
        """The predictor on ``device`` (a loaded one is kept; an unavailable device is refused)."""
        from napari_simseg.core.network.devices import resolve_device
        from napari_simseg.core.network.predictor import Predictor

        if isinstance(checkpoint, Predictor):
            resolve_device(device)  # an unavailable device is refused as for a path
            return checkpoint
        return Predictor(checkpoint, device=device)  # refuses an unavailable device before the slow load

    @staticmethod
    def _check_labels_classes(existing, predictor) -> None:
        """Refuse a predictor whose classes do not fit an ``existing`` labels layer."""
        from napari_simseg.core.network.checkpoint import CheckpointError

        problem = None if existing is None else labels_class_problem(existing, predictor.class_names)
        if problem:
            raise CheckpointError(
                f"{predictor.checkpoint.path}: trained for classes {predictor.class_names}, but the "
                f"'{LABELS_LAYER_NAME}' layer {problem}; pick a matching checkpoint or rename that layer"
            )

    def close(self) -> None:
        """Stop listening to the layers (the layers and their contents stay) and cancel a running teach job."""
        if self.teach_job is not None:
            self.teach_job.cancel()
        self._labels.close()

    # ------------------------------------------------------------------ properties
    @property
    def class_names(self) -> list:
        return list(self.session.class_names)

    @property
    def n_classes(self) -> int:
        return self.session.n_classes

    @property
    def is_2d(self) -> bool:
        return self.session.is_2d

    @property
    def n_slices(self) -> int:
        return self.session.n_slices

    @property
    def busy(self) -> bool:
        """Whether a job (network computation) is in progress."""
        return self._job is not None

    @property
    def labels_layer(self):
        """The ``"SimSeg labels"`` layer (a new one if the user deleted it and a result came)."""
        return self._labels.layer

    @property
    def click_layers(self) -> list:
        """The ``"<class> clicks"`` points layers, in class-index order."""
        return self._clicks.layers

    @property
    def labels(self) -> np.ndarray:
        """A copy of the labels as shown (hand edits included), shaped like the image."""
        return np.array(self._labels.live().data, copy=True)

    @property
    def device(self) -> str:
        return str(self.session.predictor.device)

    def current_slice(self) -> int:
        """The slice (index along axis 0 of the image) the viewer shows; 0 for 2D."""
        return 0 if self.is_2d else current_slice(self.viewer, self.labels_layer, self.n_slices)

    def view_problem(self) -> str | None:
        """Why clicks cannot be taken in the current view, or None."""
        return None if self.is_2d else view_problem(self.viewer)

    def has_rounds(self) -> bool:
        """Whether any slice holds interaction rounds (or undone ones)."""
        return self._clicks.has_rounds()

    @property
    def ignored_points(self) -> int:
        """How many points the last :meth:`prepare_round` removed (NaN/inf or outside the image)."""
        return self._nonfinite_points + self._outside_points

    @property
    def ignored_note(self) -> str:
        """What the last :meth:`prepare_round` ignored, in words ("" when nothing)."""
        parts = []
        n = self._outside_points
        if n:
            size = " x ".join(str(d) for d in (self.session.shape[1:] if self.is_2d else self.session.shape))
            parts.append(f"{n} point{'s' * (n != 1)} outside the image ({size}) removed")
        n = self._nonfinite_points
        if n:
            parts.append(f"{n} point{'s' * (n != 1)} with a NaN or infinite coordinate ignored (removed)")
        return "; ".join(parts)

    def has_unsaved_rounds(self) -> bool:
        """Whether rounds, automatic results or set labels were made since the last save or load."""
        return any(e["action"] in _WORK_ACTIONS for e in self.session.log[self._saved_events:])

    def _check_slice(self, slice_index) -> int:
        if slice_index is None:
            return self.current_slice()
        return 0 if self.is_2d else self.session.check_slice(slice_index)

    def _ensure_idle(self) -> None:
        if self._job is not None:
            raise RuntimeError(f"SimSeg is busy ({self._job.description}); wait for it to finish")

    # ------------------------------------------------------------------ hand edits
    def is_hand_edited(self, slice_index) -> bool:
        """Whether a slice's labels differ from what the session last wrote there."""
        return self._labels.is_hand_edited(self._check_slice(slice_index))

    @property
    def hand_edited(self) -> set:
        """Slices whose labels differ from what the session last wrote there."""
        return self._labels.hand_edited

    def _may_overwrite(self, slices: list) -> bool:
        """Whether results may replace the hand edits of ``slices`` (``overwrite_policy``)."""
        if self.overwrite_policy == "always":
            return True
        if self.overwrite_policy == "never" or self.confirm is None:
            return False  # "ask" with nobody to ask: the hand edits stay
        return bool(self.confirm(list(slices)))

    # ------------------------------------------------------------------ points
    def pending_points(self) -> dict[int, list[PointKey]]:
        """Points not yet used by a round, by slice (points outside the image excluded)."""
        return self._clicks.pending()

    def pending_slices(self) -> list[int]:
        """Slices with pending points, the current slice first."""
        return self._clicks.pending_slices(self.current_slice())

    # ------------------------------------------------------------------ rounds
    def _round_job(self, z: int, keys: list[PointKey]) -> Job:
        clicks = clicks_from_keys(keys)
        session = self.session  # the job keeps its session even if load() replaces it
        self._clicks.begin_round(keys)

        def compute():
            return session.add_clicks(z, clicks)

        def finish(result):
            self._job = None
            self._clicks.end_round(z, keys, result.round)
            self.last_round_shown = self._labels.write(z, result.labels, self._may_overwrite)
            self.last_round_clicks = len(keys)
            self.last_result = result
            return result

        def fail(exc):
            # the clicks become pending again; the user retries with "Run"
            self._job = None
            self._clicks.abandon_round()
            return f"round on slice {z} failed: {exc}"

        where = "" if self.is_2d else f" on slice {z}"
        job = Job("round", f"round{where}", compute, finish, fail, slice=z)
        self._job = job
        return job

    def prepare_round(self, slice_index=None) -> Job | None:
        """Gather a slice's pending points into a round job (None: nothing pending).

        Parameters
        ----------
        slice_index : int or None
            The slice; None picks one: the current slice if it has pending points,
            else the first slice that has some (the widget's path for new clicks).

        Points outside the image are removed, and so are points with a NaN or infinite
        coordinate, on every slice (counted in :attr:`ignored_points` and described in
        :attr:`ignored_note`, which the widget reports).
        Raises RuntimeError when busy or when the view does not show slices along the
        first axis.
        """
        self._ensure_idle()
        self._nonfinite_points = self._clicks.drop_nonfinite()
        self._outside_points = self._clicks.drop_outside()  # at once: said now, not at a later round
        if slice_index is None:
            slices = self.pending_slices()
            if not slices:
                return None
            slice_index = slices[0]
        problem = self.view_problem()
        if problem:
            raise RuntimeError(problem)
        z = self._check_slice(slice_index)
        keys = self._clicks.pending().get(z, [])
        if not keys:
            return None
        return self._round_job(z, keys)

    def run(self, slice_index=None) -> RoundResult | None:
        """Run a round with the pending points of a slice (default: the current one).

        Returns
        -------
        RoundResult or None
            None when the slice has no new points.
        """
        job = self.prepare_round(self.current_slice() if slice_index is None else slice_index)
        return None if job is None else self._run_sync(job)

    def add_clicks(self, slice_index, clicks: Sequence) -> RoundResult:
        """Place clicks on a slice (they appear in the class layers) and run the round.

        Parameters
        ----------
        slice_index : int or None
            Slice along the first axis (None: the current slice; ignored for 2D).
        clicks : sequence of Click or (class index, y, x)
            Pixel coordinates of the slice; class 0 is the background.

        Raises
        ------
        ClickError
            For a click outside the slice or of an unknown class (nothing changes).
        """
        self._ensure_idle()
        z = self._check_slice(slice_index)
        clicks = as_clicks(clicks)
        for c in clicks:
            validate_click(c, self.n_classes, self.session.shape[1:])
        keys = self._clicks.keys(z, clicks)
        job = self._round_job(z, keys)  # marks the points as used before they appear
        try:
            self._clicks.add(keys)
        except Exception:
            self._job = None
            self._clicks.abandon_round()
            raise
        return self._run_sync(job)

    def _run_sync(self, job: Job):
        try:
            if job.is_generator:
                for value in job.compute():
                    job.on_yield(value)
                result = None
            else:
                result = job.compute()
        except BaseException as exc:
            job.fail(exc)
            raise
        return job.finish(result)

    def undo(self, slice_index=None) -> np.ndarray:
        """Undo the newest round of a slice: its points go, its labels go back."""
        self._ensure_idle()
        z = self._check_slice(slice_index)
        labels = self.session.undo(z)  # raises when there is nothing to undo
        self._clicks.undo(z)
        self._write_changed([z])  # undoing a propagation changes all its slices
        return labels

    def _write_changed(self, also=()) -> list[int]:
        """Show ``also`` and every slice whose session labels differ from what was last written there."""
        diff = np.flatnonzero((self.session.labels != self._labels.written).any(axis=(1, 2)))
        changed = sorted({int(z) for z in diff} | set(also))
        for z in changed:
            self._labels.write(z, self.session.labels[z], self._may_overwrite)
        return changed

    def redo(self, slice_index=None) -> np.ndarray:
        """Redo the most recently undone round of a slice (its points come back)."""
        self._ensure_idle()
        z = self._check_slice(slice_index)
        labels = self.session.redo(z)  # raises when there is nothing to redo
        self._clicks.redo(z)
        self._labels.write(z, labels, self._may_overwrite)
        return labels

    def reset(self, slice_index=None) -> np.ndarray:
        """Forget every round of a slice, remove its points and clear its labels."""
        self._ensure_idle()
        z = self._check_slice(slice_index)
        labels = self.session.reset_slice(z)
        self._clicks.reset(z)
        self._labels.write(z, labels, self._may_overwrite)
        return labels

    # ------------------------------------------------------------------ device
    def set_device(self, device: str) -> str:
        """Move the network to another device (``auto``, ``cpu``, ``cuda``, ``mps``)."""
        from napari_simseg.core.network.predictor import Predictor

        self._ensure_idle()
        old = self.session.predictor
        new = Predictor(old.checkpoint, device=device, tta=old.tta)
        self.session.set_predictor(new)
        return str(new.device)

    # ------------------------------------------------------------------ teaching
    @property
    def checkpoint(self) -> str:
        """The checkpoint file the network runs now (the bundled model's file for ``"demo"``)."""
        return str(self.session.predictor.checkpoint.path)

    def set_checkpoint(self, checkpoint) -> str:
        """Run another checkpoint (a path, or a loaded Predictor) of the same classes, channels and
        memory layout (e.g. a taught one), keeping every slice's labels and memory (the LSTM states restart)."""
        from napari_simseg.core.network.predictor import Predictor

        self._ensure_idle()
        old = self.session.predictor
        if not isinstance(checkpoint, Predictor):
            checkpoint = Predictor(checkpoint, device=str(old.device), tta=old.tta, expected_classes=self.class_names)
        self.session.set_predictor(checkpoint)
        return self.checkpoint

    def teach(self, max_minutes: float = 3.0, slices="accepted", checkpoint="current", output=None,
              options: dict | None = None):
        """Fine-tune the network on this session's labelled slices in a background process.

        Parameters
        ----------
        max_minutes : float
            The time budget, until the new checkpoint is written.
        slices : {"accepted", "edited"} or sequence of int
            ``"accepted"``: slices with rounds, kept propagations and hand-painted slices;
            ``"edited"``: without the propagated ones (``core.session.teaching.accepted_slices``);
            or the slices themselves. Labels are taken as the labels layer shows them.
        checkpoint : "current", "demo", path or None
            Where teaching starts: this session's network, the bundled model, any
            checkpoint (of other classes: transfer), or a fresh network (``None``).
        output : str or Path, optional
            The new checkpoint's file or folder (default: beside the image file, else the
            working directory), named ``<image>.taught-<time>.safetensors``.
        options : dict, optional
            Training options that override the teaching recipe (``core.jobs.teach_worker``).

        Returns
        -------
        napari_simseg.annotator.teach.ViewerTeachJob
            At once: ``done()``, ``result()`` (the new checkpoint's path), ``cancel()``,
            ``state``. Once done (checked by ``done()``/``result()``, the widget every
            200 ms), the session runs the new checkpoint (:attr:`checkpoint`), keeping
            every slice's labels and memory. :meth:`close` cancels it.
        """
        from napari_simseg.annotator.teach import start_viewer_teaching

        if self.teach_job is not None and not self.teach_job.done():
            raise RuntimeError("SimSeg is already teaching; wait for it or cancel it first")
        self.teach_job = start_viewer_teaching(self, max_minutes, slices, checkpoint, output, options)
        return self.teach_job

    # ------------------------------------------------------------------ files
    def save(self, path) -> tuple[Path, Path]:
        """Write the labels (as shown) and the interaction log beside them.

        Parameters
        ----------
        path : str or Path
            Labels file, one of ``core.io.images.WRITABLE_EXTENSIONS``; the log goes to
            ``<stem>.simseg.json`` in the same folder.

        Returns
        -------
        (labels path, log path)
        """
        self._ensure_idle()
        written = self._labels.write_file(path)
        saved = len(self.session.log)
        log = self.session.save_log(log_path_for(written))
        self._saved_events = saved
        return written, Path(log)

