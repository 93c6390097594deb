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
:class:`~napari_simseg.annotator.jobs.Job`), ``Job.compute`` (any thread: touches only the
core session), then ``Job.finish`` / ``fail`` / ``cancel`` (GUI thread: writes the layers and
says what happened, ``Job.summary``); one job at a time (:class:`~napari_simseg.annotator.jobs.JobRunner`).

The session owns its collaborators and hands them explicitly to the jobs it builds: the
:class:`~napari_simseg.annotator.labels_view.LabelsView` (the labels layer and its hand edits),
the :class:`~napari_simseg.annotator.click_layers.ClickLayers` (the click layers and which
points each round used) and the job runner. Qt-free: questions to the user come in as the
``confirm`` and ``confirm_discard`` callbacks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_simseg.annotator.autosave import SessionRecovery, chosen
from napari_simseg.annotator.click_layers import (
    ClickLayers,
    IgnoredPoints,
    PointKey,
    click_layer_steps,
    clicks_from_keys,
)
from napari_simseg.annotator.jobs import Job, JobRunner, one_line
from napari_simseg.annotator.labels_view import LabelsView
from napari_simseg.annotator.layers import (
    CLICKS_SUFFIX,
    LABELS_LAYER_NAME,
    current_slice,
    keep_other_labels_layer,
    view_problem,
)
from napari_simseg.annotator.session_files import (
    SavedSession,
    load_job,
    log_path_for,
    read_saved,
    save_session,
)
from napari_simseg.annotator.session_start import (
    LIVE_SESSIONS,
    OVERWRITE_POLICIES,
    SessionOptions,
    StartParts,
    StartPlan,
    freeze_long_lived_objects,
    plan_start,
)
from napari_simseg.annotator.slice_jobs import auto_job, propagate_job
from napari_simseg.core.interaction.clicks import as_clicks, validate_click

if TYPE_CHECKING:  # pragma: no cover
    from napari_simseg.core.network.predictor import Predictor
    from napari_simseg.core.session.interactive import InteractiveSession, RoundResult
    from napari_simseg.core.session.recovery import RecoveredSession, RecoveryInfo, RecoveryStore

__all__ = ["CLICKS_SUFFIX", "LABELS_LAYER_NAME", "OVERWRITE_POLICIES", "Job", "SessionOptions", "ViewerSession",
           "log_path_for"]

# log actions that are the user's work (a Load replacing them asks first)
_WORK_ACTIONS = ("clicks", "auto", "set_labels", "propagate")


class ViewerSession:
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
    autosave : bool or RecoveryStore
        Keep the work after every completed action in the recovery store (``True``: the user's
        cache folder), for :meth:`recover` after a crash; ``False``: off.

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
    RuntimeError
        Another session of this viewer (not closed) drives the layers this one would use.

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
                 confirm_discard: Callable[[str], bool] | None = None, channel_axis: int | None = None,
                 autosave: bool | RecoveryStore = True):
        from napari_simseg._llvm_guard import avoid_triton_llvm_clash

        avoid_triton_llvm_clash()  # before the first torch import in a process with a canvas
        options = SessionOptions(device, overwrite_policy, confirm, batch_size, confirm_discard, channel_axis, autosave)
        plan = plan_start(viewer, image_layer, checkpoint, options, self.load_predictor)
        self._bind(plan, plan.build())

    @classmethod
    def prepare_start(cls, viewer, image_layer=None, checkpoint="demo", options: SessionOptions | None = None,
                      replaces: ViewerSession | None = None) -> Job:
        """A job starting a session (the widget's *Start*): the layers are chosen and checked
        here, ``compute`` loads the network, reads the pixels and builds the core session
        (any thread), and ``finish`` (GUI thread) checks the viewer's layers again, makes the
        session's layers and returns the new :class:`ViewerSession` (``replaces``, the session
        it restarts, is closed then).

        Raises
        ------
        ImageError, RuntimeError
            As the constructor, for what can be checked before loading.
        """
        from napari_simseg._llvm_guard import avoid_triton_llvm_clash

        avoid_triton_llvm_clash()  # here on the GUI thread; torch is imported by compute
        plan = plan_start(viewer, image_layer, checkpoint, options or SessionOptions(), cls.load_predictor, replaces)

        def finish(parts: StartParts):
            session = cls.__new__(cls)  # bound here, on the GUI thread, from what compute built

            def steps():
                yield from cls._bind_steps(session, plan, parts)
                return session

            return steps()  # one layer per step: the widget lets the event loop run between them

        def compute():
            cls.import_model_stack()
            freeze_long_lived_objects()  # torch's modules: before the load makes more
            parts = plan.build()
            freeze_long_lived_objects()
            return parts

        return Job("start", "loading the checkpoint", compute, finish, one_line, summary=cls.describe)

    def _bind(self, plan: StartPlan, parts: StartParts) -> None:
        """Bind to the viewer at once (the console)."""
        for _ in self._bind_steps(plan, parts):
            pass

    def _bind_steps(self, plan: StartPlan, parts: StartParts) -> Iterator[str]:
        """Check the viewer's layers against the loaded network, then make this session's layers,
        yielding after each layer it adds."""
        viewer, options = plan.viewer, plan.options
        existing = plan.check_viewer(parts)  # every check happens before the first change to the viewer
        if plan.replaces is not None:
            plan.replaces.close()
        self.viewer = viewer
        self.kept_labels_layer = keep_other_labels_layer(viewer, parts.channels[0].shape)
        self.image_layer = plan.image.layer
        self._channels = parts.channels
        self.session: InteractiveSession = parts.session
        self.overwrite_policy = options.overwrite_policy
        self.confirm = options.confirm
        self.confirm_discard = options.confirm_discard
        self.batch_size = options.batch_size
        self._saved_events = 0  # the session's log up to here is saved (or was loaded)
        self._ignored = IgnoredPoints()  # what the last prepare_round removed
        self._jobs = JobRunner(after=self.autosave)  # every job's end hands its work to the autosave
        self.teach_job = None  # the running or last teach() job (napari_simseg.annotator.teach.ViewerTeachJob)
        self.last_result: RoundResult | None = None
        self.last_round_clicks = 0  # clicks of the last finished round
        self.last_round_shown = True  # whether its labels reached the layer
        #: the labels file the last load refused for a log saved with other labels (else None)
        self.mismatched_load: Path | None = None
        self._closed = False
        #: ``schedule_autosave()`` defers the autosave after a paint stroke (the widget's timer); None: at once
        self.schedule_autosave: Callable[[], None] | None = None
        #: the autosave (``error``, ``last_ms``, ``flush()``, ``decline(info)``); None with ``autosave=False``
        self.recovery: SessionRecovery | None = None
        self._labels = LabelsView(viewer, self.image_layer, self.class_names, self.session.labels, existing,
                                  new_layer=parts.labels_layer)
        LIVE_SESSIONS.add(self)  # from its first layer on, no other session takes them over
        yield LABELS_LAYER_NAME
        click_layers = []
        yield from click_layer_steps(viewer, self.image_layer, self.class_names, parts.click_layers, click_layers)
        self._clicks = ClickLayers(viewer, click_layers, self.session.shape)
        self._clicks.activate()
        if parts.recovery is not None:
            shape, name = tuple(self._channels[0].shape), self.image_layer.name
            self.recovery = SessionRecovery(parts.recovery, self._labels, self._clicks, shape, name)
            self._labels.on_hand_edit = lambda: (self.schedule_autosave or self.autosave)()

    def describe(self) -> str:
        """What this session segments, in one line (the widget's status after *Start*)."""
        slices = "" if self.is_2d else f" ({self.n_slices} slices)"
        kept = f"; the earlier labels are now '{self.kept_labels_layer}'" if self.kept_labels_layer else ""
        return (f"segmenting '{self.image_layer.name}'{slices} on {self.device} with classes "
                f"{', '.join(self.class_names)}: click in a '<class> clicks' layer{kept}")

    # ------------------------------------------------------------------ set-up
    @staticmethod
    def import_model_stack() -> None:
        """Import torch and the model code on the calling thread, after the LLVM guard (which must
        run before torch's first import in a process with a canvas)."""
        from napari_simseg._llvm_guard import avoid_triton_llvm_clash

        avoid_triton_llvm_clash()
        from napari_simseg.core.network import checkpoint, predictor  # noqa: F401

    @staticmethod
    def load_predictor(checkpoint, device: str = "auto") -> Predictor:
        """Load a checkpoint (path, ``"demo"``) onto ``device``; touches no layer, so it
        may run on a worker thread. Pass the result as ``checkpoint=`` to the
        constructor, which then checks its classes against an existing labels layer.
        A loaded Predictor is kept (an unavailable device is refused as for a path)."""
        from napari_simseg.core.network.devices import resolve_device
        from napari_simseg.core.network.predictor import Predictor

        if isinstance(checkpoint, Predictor):
            resolve_device(device)
            return checkpoint
        return Predictor(checkpoint, device=device)  # refuses an unavailable device before the slow load

    def close(self) -> None:
        """Stop listening to the layers (the layers and their contents stay), cancel a running
        teach job, let another session take the layers over and remove this session's
        recovery data (a clean end: nothing to restore)."""
        if self.teach_job is not None:
            self.teach_job.cancel()
        self._labels.close()
        self._closed = True
        LIVE_SESSIONS.discard(self)
        if self.recovery is not None:
            self.recovery.close(remove=True)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

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
        return self._jobs.busy

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
        """How many points the last :meth:`prepare_round` removed (NaN/inf, between slices, outside the image)."""
        return self._ignored.count

    @property
    def ignored_note(self) -> str:
        """What the last :meth:`prepare_round` ignored, in words ("" when nothing)."""
        return self._ignored.note

    def has_unsaved_rounds(self) -> bool:
        """Whether rounds, automatic results or set labels were made since the last save or load."""
        return any(e["action"] in _WORK_ACTIONS for e in self.session.log[self._saved_events:])

    def _check_slice(self, slice_index) -> int:
        if slice_index is None:
            return self.current_slice()
        return 0 if self.is_2d else self.session.check_slice(slice_index)

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
        ignored = self.ignored_note
        where = "" if self.is_2d else f" on slice {z}"

        def compute():
            return session.add_clicks(z, clicks)

        def finish(result):
            self._clicks.end_round(z, keys, result.round)
            self.last_round_shown = self._labels.write(z, result.labels, self._may_overwrite)
            self.last_round_clicks = len(keys)
            self.last_result = result
            return result

        def fail(exc):
            self._clicks.abandon_round()  # the clicks become pending again; the user retries with "Run"
            return f"round{where} failed: {exc}"

        def summary(result) -> str:
            n = len(keys)
            text = f"{n} new click{'s' * (n != 1)}{where}: round {result.round} done"
            if not self.last_round_shown:
                text += "; your hand-edited labels were kept (Undo/Reset slice, or set Hand edits)"
            if result.note:
                text += f"; {result.note}"
            return text + (f"; {ignored}" if ignored else "")

        def timing(result) -> str:
            return f"round {result.round}{where}: {result.total_ms:.0f} ms (network {result.model_ms:.0f} ms)"

        job = self._jobs.hold(Job("round", f"round{where}", compute, finish, fail, slice=z, summary=summary,
                                  timing=timing))
        self._clicks.begin_round(keys)
        return job

    def prepare_round(self, slice_index=None) -> Job | None:
        """Gather a slice's pending points into a round job (None: nothing pending).

        Parameters
        ----------
        slice_index : int or None
            The slice; None picks one: the current slice if it has pending points,
            else the first slice that has some (the widget's path for new clicks).

        Points outside the image are removed, and so are points with a NaN or infinite
        coordinate and points between slices (a slice coordinate that is not a whole
        number: the API refuses slice 2.7, so the layers do too), on every slice (counted
        in :attr:`ignored_points` and described in :attr:`ignored_note`, which the
        widget reports). Raises RuntimeError when busy or when the view does not show
        slices along the first axis.
        """
        self._jobs.ensure_idle()
        self._ignored = self._clicks.drop_unusable()  # at once: said now, not at a later round
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
        return None if job is None else self._jobs.run(job)

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
            For clicks that are not a sequence of clicks, a click outside the slice or of
            an unknown class (nothing changes).
        """
        self._jobs.ensure_idle()
        z = self._check_slice(slice_index)
        clicks = as_clicks(clicks)
        for c in clicks:
            validate_click(c, self.n_classes, self.session.shape[1:])
        keys = self._clicks.keys(z, clicks)
        self._ignored = IgnoredPoints()
        job = self._round_job(z, keys)  # marks the points as used before they appear
        try:
            self._clicks.add(keys)
        except Exception:
            self._jobs.release()
            self._clicks.abandon_round()
            raise
        return self._jobs.run(job)

    def undo(self, slice_index=None) -> np.ndarray:
        """Undo the newest round of a slice: its points go, its labels go back."""
        self._jobs.ensure_idle()
        z = self._check_slice(slice_index)
        labels = self.session.undo(z)  # raises when there is nothing to undo
        self._clicks.undo(z)
        self._labels.sync(self.session.labels, self._may_overwrite, also=[z])  # a propagation: all its slices
        self.autosave()
        return labels

    def redo(self, slice_index=None) -> np.ndarray:
        """Redo the most recently undone round of a slice (its points come back)."""
        self._jobs.ensure_idle()
        z = self._check_slice(slice_index)
        labels = self.session.redo(z)  # raises when there is nothing to redo
        self._clicks.redo(z)
        self._labels.write(z, labels, self._may_overwrite)
        self.autosave()
        return labels

    def reset(self, slice_index=None) -> np.ndarray:
        """Forget every round of a slice, remove its points and clear its labels."""
        self._jobs.ensure_idle()
        z = self._check_slice(slice_index)
        labels = self.session.reset_slice(z)
        self._clicks.reset(z)
        self._labels.write(z, labels, self._may_overwrite)
        self.autosave()
        return labels

    # ------------------------------------------------------------------ automatic, propagation
    def prepare_auto(self, slices=None) -> Job:
        """A job predicting slices without clicks (0-click result), batched.

        Parameters
        ----------
        slices : int, sequence of int or None
            None: every slice. Slices with rounds (clicks, or a propagation) are skipped
            (they hold the user's work); hand-edited slices are overwritten only as
            ``overwrite_policy`` allows (asked once, for all of them).

        Raises
        ------
        RuntimeError
            When busy, or when no slice is left to predict.
        """
        self._jobs.ensure_idle()
        wanted = list(range(self.n_slices)) if slices is None else [self._check_slice(s) for s in np.atleast_1d(slices)]
        return self._jobs.hold(auto_job(self.session, self._labels, wanted, self._may_overwrite, self.batch_size))

    def auto(self, slice_index=None) -> str:
        """Automatic (0-click) segmentation of one slice, or of every slice (None); returns a summary line."""
        return self._jobs.run(self.prepare_auto(slice_index))

    def prepare_propagate(self, slice_index=None, direction: str = "both") -> Job:
        """A job carrying a finished slice into its neighbours, slice by slice
        (:meth:`InteractiveSession.propagate <napari_simseg.core.session.interactive.InteractiveSession.propagate>`).

        Slices edited by hand (painted) stop it like slices with clicks: they are never
        overwritten. A finished slice painted by hand is carried from its labels as
        shown; otherwise from its clicks. The job yields ``(done, total, slice,
        labels)``; cancelling keeps the slices done, and Undo on any propagated slice
        (or :meth:`undo_propagation`) undoes the whole propagation.
        """
        self._jobs.ensure_idle()
        if self.is_2d:
            raise RuntimeError("propagation needs a 3D image (a 2D image has no neighbouring slices)")
        z = self._check_slice(slice_index)
        return self._jobs.hold(propagate_job(self.session, self._labels, z, direction))

    def propagate(self, slice_index=None, direction: str = "both") -> str:
        """Carry a finished slice (default: the current one) into its neighbours; returns a summary line."""
        return self._jobs.run(self.prepare_propagate(slice_index, direction))

    def undo_propagation(self, slice_index=None) -> list[int]:
        """Undo the newest propagation (from ``slice_index``, when given) as one step; returns
        the slices restored."""
        self._jobs.ensure_idle()
        restored = self.session.undo_propagation(None if slice_index is None else self._check_slice(slice_index))
        self._labels.sync(self.session.labels, self._may_overwrite)
        self.autosave()
        return restored

    # ------------------------------------------------------------------ device, checkpoint
    def set_device(self, device: str) -> str:
        """Move the network to another device (``auto``, ``cpu``, ``cuda``, ``mps``)."""
        from napari_simseg.core.network.predictor import Predictor

        self._jobs.ensure_idle()
        old = self.session.predictor
        new = Predictor(old.checkpoint, device=device, tta=old.tta)
        self.session.set_predictor(new)
        return str(new.device)

    @property
    def checkpoint(self) -> str:
        """The checkpoint file the network runs now (the bundled model's file for ``"demo"``)."""
        return str(self.session.predictor.checkpoint.path)

    def set_checkpoint(self, checkpoint) -> str:
        """Run another checkpoint (a path, or a loaded Predictor) of the same classes, channels and
        memory layout (e.g. a taught one), keeping every slice's labels and memory (the LSTM states restart)."""
        from napari_simseg.core.network.predictor import Predictor

        self._jobs.ensure_idle()
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
            The new checkpoint's file or folder. Default: beside the image file when that
            folder is the user's and writable (never inside the installed package), else
            the user's data folder (``napari_simseg.annotator.teach.user_checkpoint_dir``);
            named ``<image>.taught-<time>.safetensors``.
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
        from napari_simseg.annotator.teach import TeachRequest, start_viewer_teaching

        if self.teach_job is not None and not self.teach_job.done():
            raise RuntimeError("SimSeg is already teaching; wait for it or cancel it first")
        self._jobs.ensure_idle()  # the labels are read as the layer shows them: not while a job writes them
        request = TeachRequest(max_minutes=max_minutes, slices=slices, base=checkpoint, output=output,
                               options=options)
        self.teach_job = start_viewer_teaching(self, request)
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

        Notes
        -----
        The pair is one transaction: the log is written first, naming the labels it goes
        with and the previous save's; a save killed between the two files loads back as the
        previous save, whole (see :meth:`prepare_load`).
        """
        self._jobs.ensure_idle()
        saved = len(self.session.log)
        written = save_session(self._labels, self.session, path)
        self._saved_events = saved
        self.autosave(state="saved")  # the work is in files: nothing to offer after a crash
        return written

    def prepare_load(self, path, discard: bool = False, log: bool | None = None) -> Job:
        """A job restoring labels from a file and, with its log, the memories.

        Rounds made since the last save or load are replaced only with ``discard=True``
        or when ``confirm_discard`` agrees; otherwise a ``RuntimeError`` and nothing
        changes. The job's ``compute`` reads the labels file and the log, checks every
        field of the log (:func:`~napari_simseg.core.session.interaction_log.check_log`)
        before anything is allocated from it, and replays it (network rounds), yielding
        ``(done, total)`` logged actions; stopping it early (the widget's Cancel) or an
        error leaves the session as it was.

        The log must be the one saved with these labels (the previous save's when the last
        save was interrupted between its two files); labels it was not saved with fail the
        job with ``LabelsMismatchError`` naming both files, unless ``log`` says what to do:
        ``False`` loads the labels alone, ``True`` replays the log under them anyway (where
        they differ they count as hand edits); :attr:`mismatched_load` then names the file
        (the widget asks whether to load the labels alone).
        """
        self._jobs.ensure_idle()
        path = Path(path)
        self._confirm_replacing(path.name, discard)
        labels, shape, names = self._labels, tuple(self._channels[0].shape), self.class_names

        def read() -> SavedSession:
            return read_saved(path, labels, shape, names, log)

        self.mismatched_load = None
        job = load_job(path, read, self._session_factory(), self._adopt)

        def fail(exc):
            from napari_simseg.core.session.interaction_log import LabelsMismatchError

            self.mismatched_load = path if isinstance(exc, LabelsMismatchError) else None
            return job.fail(exc)

        return self._jobs.hold(dataclasses.replace(job, fail=fail))

    def _confirm_replacing(self, what: str, discard: bool) -> None:
        """Refuse (RuntimeError) to replace rounds made since the last save, unless ``discard`` or
        ``confirm_discard`` agrees."""
        if not discard and self.has_unsaved_rounds():
            question = f"Loading {what} replaces the rounds made since the last save."
            if self.confirm_discard is None or not self.confirm_discard(question):
                raise RuntimeError(f"{what} not loaded: it would replace rounds made since the last save; "
                                   "Save first (or load with discard=True)")

    def _session_factory(self) -> Callable[[], InteractiveSession]:
        """A fresh core session like this one (the image, network and settings of now)."""
        from napari_simseg.core.session.interactive import InteractiveSession

        s, channels = self.session, self._channels
        image = channels if len(channels) > 1 else channels[0]
        settings = dict(max_state_history=s.max_state_history, honour_clicks=s.honour_clicks,
                        decision_offsets=s.decision_offsets, refinement=s.refinement)
        return lambda: InteractiveSession(image, s.predictor, **settings)

    def _adopt(self, fresh: InteractiveSession, saved: SavedSession) -> None:
        """A loaded session becomes this one's: its labels, clicks and memories (GUI thread)."""
        from napari_simseg.core.session.interaction_log import rounds_from_log

        self.session = fresh
        self._saved_events = len(fresh.log)
        self._clicks.restore(*rounds_from_log(saved.log))
        self._labels.replace(fresh.labels, saved.labels)
        self.autosave(state="saved")  # the loaded work is in files: nothing to offer after a crash

    # ------------------------------------------------------------------ autosave, recovery
    def autosave(self, state: str = "active") -> bool:
        """Hand the work done since the last autosave to :attr:`recovery`'s background writer
        (each action's end does; a paint stroke through :attr:`schedule_autosave`); returns
        whether anything was handed over (never while a job runs)."""
        if self.recovery is None or self._jobs.busy:
            return False
        return self.recovery.snapshot(self.session, self._saved_events, state)

    def recoverable(self) -> RecoveryInfo | None:
        """The newest unsaved work a session left on this image when it ended without closing
        (napari killed or crashed), or None; its ``describe()`` says what it holds."""
        return None if self.recovery is None else self.recovery.recoverable()

    def discard_recovery(self, info: RecoveryInfo | None = None) -> None:
        """Delete unsaved work (default: :meth:`recoverable`'s); ``recovery.decline(info)`` hides it."""
        self.recovery.discard(chosen(self.recovery, info))

    def prepare_recover(self, info: RecoveryInfo | None = None, discard: bool = False) -> Job:
        """A job restoring unsaved work (default: :meth:`recoverable`'s) exactly as after its last
        completed action (:meth:`SessionRecovery.recover_job
        <napari_simseg.annotator.autosave.SessionRecovery.recover_job>`); rounds made in this
        session are replaced only as for a load (``discard``, ``confirm_discard``). Raises
        RuntimeError when there is nothing to restore or it was made with another checkpoint.
        """
        self._jobs.ensure_idle()
        info = chosen(self.recovery, info, self.checkpoint)
        self._confirm_replacing("the unsaved work", discard)
        return self._jobs.hold(self.recovery.recover_job(info, self._session_factory(), self._adopt_recovered))

    def _adopt_recovered(self, fresh: InteractiveSession, state: RecoveredSession, doc: dict) -> None:
        self.session = fresh  # recovered work becomes this session's (GUI thread)
        self._saved_events = self.recovery.put_back(fresh, state, doc)

    def recover(self, info: RecoveryInfo | None = None, discard: bool = False) -> str:
        """Restore unsaved work (see :meth:`prepare_recover`); returns a summary line."""
        return self._jobs.run(self.prepare_recover(info, discard))

    def load(self, path, discard: bool = False, log: bool | None = None) -> str:
        """Restore labels from a file and, if ``<stem>.simseg.json`` exists, the memories.

        Rounds made since the last save or load are replaced only with ``discard=True``
        or when ``confirm_discard`` agrees; ``log``: what to do with a log saved with other
        labels (see :meth:`prepare_load`).
        """
        return self._jobs.run(self.prepare_load(path, discard, log))
