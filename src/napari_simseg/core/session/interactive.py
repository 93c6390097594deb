"""The interactive session: one image, one network, one interaction memory per slice.

This is the API the napari widget, the console and the tests share. Everything it
returns is numpy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_simseg.core.imaging.preprocessing import (
    ImageError,
    channel_arrays,
    context_stack,
    normalised_channels,
    resize_probabilities,
)
from napari_simseg.core.imaging.regions import (
    FULL_SLICE_PIXELS,
    TILE_BATCH_BYTES,
    box_around,
    grow_box,
    scale_box,
    tiles,
    touched_boxes,
)
from napari_simseg.core.imaging.transforms import FocusCrop, WorkingSize
from napari_simseg.core.interaction.clicks import (
    Click,
    as_clicks,
    as_index,
    encode_clicks,
    honour_clicks,
    shift_clicks,
    validate_click,
)
from napari_simseg.core.interaction.memory import InteractionMemory, prior_probabilities
from napari_simseg.core.interaction.refinement import Refinement, refine_round
from napari_simseg.core.network.decision import decide_labels, log_probabilities
from napari_simseg.core.network.predictor import Predictor
from napari_simseg.core.session.interaction_log import load_log, replay_log, write_log
from napari_simseg.core.session.propagation import (
    DIRECTIONS,
    PROPAGATED,
    Propagation,
    SeedRule,
    SliceState,
    iter_propagate,
    replay_propagation,
    undo_propagation,
)

__all__ = ["ImageError", "InteractiveSession", "Propagation", "RoundResult", "load_log", "replay_log"]


@dataclass
class RoundResult:
    """What one interaction round produced for its slice."""

    slice_index: int
    round: int
    labels: np.ndarray  # (H, W) uint8/uint16, on the image's grid
    probabilities: np.ndarray  # (N, h, w) float32, on the working grid of ``box``
    model_ms: float
    total_ms: float
    box: tuple = ()  # (y0, y1, x0, x1) of the image the round ran on (see core.imaging.regions)
    withheld: int = 0  # pixels the network changed that the refinement did not show (away from the clicks)
    zoomed: str = ""  # what the round's focus views did (core.network.zoom.describe), '' when none ran
    network_rounds: int = 0  # > 0: a user's round shown as the network gave it (Refinement.network_rounds)

    @property
    def note(self) -> str:
        """One line for a status bar: the round's focus views and what the refinement kept away from the clicks."""
        kept = (f"{self.withheld} changed pixels away from the clicks not shown (the round stays where it points)"
                if self.withheld else "")
        first = "round" if self.network_rounds == 1 else f"{self.network_rounds} rounds"
        whole = (f"the network's whole answer (this model shows its first {first} of a slice unrefined)"
                 if self.network_rounds else "")
        return "; ".join(part for part in (whole, self.zoomed, kept) if part)


class InteractiveSession:
    """Interactive multi-class segmentation of one 2D or 3D image.

    Parameters
    ----------
    image : ndarray or sequence of ndarray
        ``(H, W)`` or ``(Z, H, W)``; slices are taken along the first axis. For a
        network that reads ``C`` channels (modalities, ``Predictor.channel_names``):
        a sequence of ``C`` such arrays of one shape, or one array with a channel axis
        given by ``channel_axis``.
    predictor : Predictor, str or Path
        A loaded :class:`Predictor`, a checkpoint path, or ``"demo"``.
    device : str
        Used when ``predictor`` is a path.
    max_state_history : int
        How many rounds per slice keep their ConvLSTM state for undo; older rounds keep
        their labels and clicks but, when undone to, the next round restarts the LSTM
        from zero states.
    honour_clicks : bool
        Show every clicked pixel in its click's class (see Notes).
    decision_offsets : bool
        Decide labels with the checkpoint's calibrated per-class offsets, when it has
        them (see Notes); ``False`` takes the plain argmax.
    channel_axis : int, optional
        The axis of ``image`` that holds the channels, when it is one array.

    Notes
    -----
    A slice's labels are the argmax of its newest round's probabilities (after adding
    the checkpoint's per-class ``decision_offsets`` to their logarithms, see
    :mod:`~napari_simseg.core.jobs.calibration`; the memory keeps the raw probabilities), with every
    pixel clicked in that slice's rounds so far set to its click's class (the newest
    click wins; ``honour_clicks=False`` shows the network's argmax alone). Before any
    round (or after undoing all of them) a slice shows its *base labels*: those of the
    last automatic prediction, or whatever was given with :meth:`set_labels`.
    Automatic prediction starts from an empty memory and pushes no round, exactly like
    the evaluation's 0-click result.

    A checkpoint with a *working size* (``Predictor.working_size``) runs on slices
    shrunk so that their longest side is that size (:attr:`working`, a
    :class:`~napari_simseg.core.imaging.transforms.WorkingSize`, as in the evaluation and
    the trainer); the memory (click masks, probabilities) lives on that working grid,
    clicks are given and labels returned on the image's own grid, and probabilities are
    resampled bilinearly to it before labels are decided.

    On a slice larger than 256 x 256 pixels at the working resolution, rounds run on a
    region around the slice's clicks and current labels and automatic segmentation on
    tiles (:mod:`~napari_simseg.core.imaging.regions`): a round's cost depends on the structures,
    not on the image size.
    """

    def __init__(
        self,
        image,
        predictor: Predictor | str | Path = "demo",
        device: str = "auto",
        max_state_history: int = 8,
        honour_clicks: bool = True,
        decision_offsets: bool = True,
        channel_axis: int | None = None,
        refinement: Refinement | None = None,
    ):
        if not isinstance(predictor, Predictor):
            predictor = Predictor(predictor, device=device)
        self.predictor = predictor
        self.honour_clicks = bool(honour_clicks)
        self.decision_offsets = bool(decision_offsets)
        self.refinement = (Refinement() if refinement is None else refinement).for_checkpoint(predictor.meta)
        channels = channel_arrays(image, channel_axis, predictor.channel_names)
        self.is_2d = channels[0].ndim == 2
        self.volume = normalised_channels(channels, predictor.meta.normalization)  # (C, Z, H, W)
        self.shape = self.volume.shape[1:]
        self.working = WorkingSize(self.shape[1:], predictor.working_size)  # image grid <-> network grid
        n = predictor.meta.n_classes
        self.n_classes = n
        self.class_names = list(predictor.meta.class_names)
        self.labels = np.zeros(self.shape, dtype=np.uint8 if n <= 255 else np.uint16)
        self._base_labels: dict[int, np.ndarray] = {}
        self._memories: dict[int, InteractionMemory] = {}
        self._regions: dict[int, tuple] = {}  # working-grid box each slice's memory covers
        self._hand_set: set[int] = set()  # slices whose base labels came from set_labels
        self._propagations: list[Propagation] = []  # active propagations, oldest first (core.session.propagation)
        self._log: list[dict] = []
        self.max_state_history = int(max_state_history)

    def set_predictor(self, predictor: Predictor) -> None:
        """Swap the network: another device, or another checkpoint of the same classes,
        channels and memory layout (e.g. one taught on this session's slices,
        ``core.session.teaching``), keeping every slice's labels and memory.

        Raises
        ------
        ValueError
            If the new predictor's classes, channels, memory layout or normalisation
            differ from this session's.

        Notes
        -----
        With another checkpoint, or flip averaging switched on or off
        (``Predictor(tta=...)``), the stored ConvLSTM states no longer fit the network;
        they are dropped, so each slice's next round restarts the LSTM from zero
        (clicks, labels and the memory's probabilities are kept).
        """
        old = self.predictor.meta
        new = predictor.meta
        key = ("class_names", "channel_names", "memory", "depth", "context_slices", "working_size")
        if any(getattr(new, k) != getattr(old, k) for k in key) or \
                {"n4": False, **new.normalization} != {"n4": False, **old.normalization}:
            raise ValueError("set_predictor needs the same classes, channels, memory and normalisation; "
                             "start a new session")
        # stored ConvLSTM states live on the CPU (see _state_to_storage): nothing to move
        same_file = str(predictor.checkpoint.path) == str(self.predictor.checkpoint.path)
        if predictor.tta != self.predictor.tta or not same_file:
            for mem in self._memories.values():
                for state in mem.rounds:
                    state.payload = None
        self.predictor = predictor

    # ------------------------------------------------------------------ helpers
    @property
    def scale(self) -> float:
        """Working pixels per image pixel (1: the network runs on the image's own grid)."""
        return self.working.scale

    @property
    def work_shape(self) -> tuple[int, int]:
        """A slice's ``(h, w)`` on the network's working grid."""
        return self.working.target

    def _on_working_grid(self, clicks: list) -> list:
        return [Click(c.label, *self.working.transform_point(c.y, c.x)) for c in clicks]

    @property
    def n_slices(self) -> int:
        return self.shape[0]

    def check_slice(self, slice_index) -> int:
        """``slice_index`` as a valid slice number (``None`` is slice 0 of a 2D image).

        Raises
        ------
        IndexError
            For a non-integer (``2.7``, ``True``, ``"2"``: refused, never rounded; see
            :func:`~napari_simseg.core.interaction.clicks.as_index`) or a slice outside the image.
        """
        if self.is_2d and slice_index is None:
            return 0
        idx = as_index(slice_index, "slice index", IndexError)
        if not 0 <= idx < self.n_slices:
            raise IndexError(f"slice {idx} is outside the image (0..{self.n_slices - 1})")
        return idx

    def memory(self, slice_index: int) -> InteractionMemory:
        """The interaction memory of a slice (created empty on first use)."""
        idx = self.check_slice(slice_index)
        mem = self._memories.get(idx)
        if mem is None:
            mem = self._new_memory()
            self._memories[idx] = mem
        return mem

    def _new_memory(self, shape=None) -> InteractionMemory:
        p = self.predictor
        return InteractionMemory(p.memory_kind, self.n_classes, shape or self.work_shape, p.depth,
                                 p.context_slices, p.n_channels)

    @property
    def _whole(self) -> tuple:
        return 0, self.work_shape[0], 0, self.work_shape[1]

    def _image_box(self, box: tuple) -> tuple:
        """A working-grid box on the image grid."""
        return box if self.scale == 1.0 else scale_box(box, 1.0 / self.scale, self.shape[1:])

    def _image_input(self, idx: int, box: tuple | None = None) -> np.ndarray:
        """The slice's channels, with its neighbours' when the network is 2.5D (see
        ``core.interaction.memory``), on the working grid, cut to ``box`` (working grid; default
        the whole slice): the image-grid box resampled to the box's working size."""
        box = box or self._whole
        y0, y1, x0, x1 = self._image_box(box)
        crop = FocusCrop((y0, y1, x0, x1), (box[1] - box[0], box[3] - box[2]))
        return crop.transform(context_stack(self.volume, idx, self.predictor.context_slices))

    def _region(self, idx: int, clicks_on_grid: list) -> tuple:
        """The working-grid box a round of ``idx`` runs on (see ``core.imaging.regions``); it
        (re)frames the slice's memory when the box is new or grows."""
        h, w = self.work_shape
        if h * w <= FULL_SLICE_PIXELS:
            return self._whole
        points = [(c.y, c.x) for c in clicks_on_grid]
        mem = self._memories.get(idx)
        box = self._regions.get(idx)
        if mem is not None and box is not None and (mem.n_rounds or mem.can_redo):
            grown = grow_box(box, self.work_shape, points)
            if grown != box:
                mem.reframe((grown[1] - grown[0], grown[3] - grown[2]), (box[0] - grown[0], box[2] - grown[2]))
                self._regions[idx] = grown
            return grown
        labels = self.working.transform(self.labels[idx], "labels")
        box = box_around(self.work_shape, points, touched_boxes(labels, points))
        self._memories[idx] = self._new_memory((box[1] - box[0], box[3] - box[2]))
        self._regions[idx] = box
        return box

    def n_rounds(self, slice_index: int) -> int:
        idx = self.check_slice(slice_index)
        mem = self._memories.get(idx)
        return 0 if mem is None else mem.n_rounds

    @property
    def offsets(self) -> list | None:
        """The per-class decision offsets in use (``None``: plain argmax)."""
        if not self.decision_offsets:
            return None
        return self.predictor.meta.decision_offsets

    def _to_labels(self, probabilities: np.ndarray, shape=None) -> np.ndarray:
        """Labels on the image grid (``shape``, default the slice's) from working-grid probabilities."""
        shape = tuple(shape or self.shape[1:])
        if probabilities.shape[-2:] != shape:
            probabilities = resize_probabilities(probabilities, shape)
        return decide_labels(probabilities, self.offsets, axis=0).astype(self.labels.dtype)

    def _show_current(self, idx: int) -> np.ndarray:
        base = self._base_labels.get(idx)
        labels = np.zeros(self.shape[1:], self.labels.dtype) if base is None else base.copy()
        mem = self._memories.get(idx)
        if mem is not None and mem.last is not None and mem.last.probabilities is not None:
            shown = mem.last.meta.get("shown")  # a refined round: the labels it decided to show
            if shown is not None:
                (y0, y1, x0, x1), refined = shown
                labels[y0:y1, x0:x1] = refined
            else:
                y0, y1, x0, x1 = self._image_box(self._regions.get(idx, self._whole))
                labels[y0:y1, x0:x1] = self._to_labels(mem.last.probabilities, (y1 - y0, x1 - x0))
            if self.honour_clicks:  # the user's clicks, not a propagation's seeds (guesses)
                for state in mem.rounds:
                    if PROPAGATED not in state.meta:
                        honour_clicks(labels, state.meta.get("click_list", ()))
        self.labels[idx] = labels
        return labels.copy()

    def _record(self, action: str, **fields) -> None:
        self._log.append({"action": action, "time": time.time(), **fields})

    # ------------------------------------------------------------------ rounds
    def add_clicks(self, slice_index, clicks: Sequence) -> RoundResult:
        """Run one interaction round on a slice.

        Parameters
        ----------
        slice_index : int
            Slice along the first axis (``None`` or 0 for a 2D image).
        clicks : sequence of Click or (class, y, x)
            The clicks of this round (may be empty: a round with no new clicks).

        Returns
        -------
        RoundResult
            That slice's new labels and probabilities and the round's timings.

        Raises
        ------
        ClickError
            For a click outside the slice or with an unknown class; nothing changes.
        """
        t0 = time.perf_counter()
        idx = self.check_slice(slice_index)
        clicks = self._checked_clicks(clicks)
        result = self._run_round(idx, clicks, t0)
        self._record("clicks", slice=idx, round=result.round,
                     clicks=[{"class": c.label, "y": c.y, "x": c.x} for c in clicks],
                     refinement=self.refinement.to_dict())  # a replay shows the round as it was shown
        return result

    def _checked_clicks(self, clicks: Sequence) -> list:
        clicks = as_clicks(clicks)
        for c in clicks:  # validate all before touching any state
            validate_click(c, self.n_classes, self.shape[1:])
        return clicks

    def _run_round(self, idx: int, clicks: list, t0: float, **meta) -> RoundResult:
        """One round of checked ``clicks`` on slice ``idx`` (``meta`` goes on the memory round)."""
        on_grid = self._on_working_grid(clicks)
        # a failed round leaves no trace: the slice's region, memory frame and redo stack
        # come back as they were (a refused round that grew the region must not leave
        # every later round on the grown region)
        old_box, old_mem = self._regions.get(idx), self._memories.get(idx)
        old_frame = old_mem.frame_snapshot() if old_mem is not None else None
        pushed = False
        try:
            box = self._region(idx, on_grid)
            mem = self.memory(idx)
            in_box = shift_clicks(on_grid, -box[0], -box[2])
            masks = encode_clicks(in_box, self.n_classes, mem.shape, self.predictor.click_radius)
            prev = mem.last
            state = self._state_to_device(prev.payload if prev is not None else None)
            mem.push(masks, click_list=[c.as_tuple() for c in clicks], **meta)
            pushed = True
            x = mem.network_input(self._image_input(idx, box))
            t1 = time.perf_counter()
            probs, new_state = self.predictor.predict(x, state)
        except BaseException:
            if pushed:
                mem.abandon()
            for store, old in ((self._regions, old_box), (self._memories, old_mem)):
                if old is None:
                    store.pop(idx, None)
                else:
                    store[idx] = old
            if old_mem is not None:
                old_mem.restore_frame(old_frame)
            raise
        model_ms = (time.perf_counter() - t1) * 1e3
        showed_before = idx in self._base_labels or mem.n_rounds > 1
        mem.set_probabilities(probs, payload=self._state_to_storage(new_state))
        withheld, zoomed, whole = 0, "", 0
        if self.refinement.active and showed_before and PROPAGATED not in meta and clicks:
            # labels set by hand are never the network's to redraw, whatever its rounds
            if self.refinement.refines_round(mem.n_rounds) or idx in self._hand_set:
                mem.last.meta["shown"], withheld, zoomed = self._refined(idx, box, probs, clicks, x)
            else:
                whole = self.refinement.network_rounds
        self._trim_states(mem)
        labels = self._show_current(idx)
        total_ms = (time.perf_counter() - t0) * 1e3
        return RoundResult(idx, mem.n_rounds, labels, probs, model_ms, total_ms, self._image_box(box), withheld,
                           zoomed, whole)

    def _refined(self, idx: int, box: tuple, probs: np.ndarray, clicks: list, x: np.ndarray) -> tuple:
        """``((image box, labels), withheld, zoomed)``: what a user's round shows in its region
        (the network's new labels, with each click's focus view where the working grid is
        coarser than the image (:mod:`~napari_simseg.core.network.zoom`), where
        :mod:`~napari_simseg.core.interaction.refinement` lets them change what the slice showed
        before the round, as in the evaluation's rounds), how many pixels the network changed
        that it does not show, and the status line's words for the focus views."""
        import torch

        from napari_simseg.core.network.zoom import describe, round_views, zoom_in

        y0, y1, x0, x1 = self._image_box(box)
        shape = (y1 - y0, x1 - x0)
        on_image = resize_probabilities(probs, shape) if probs.shape[-2:] != shape else probs
        before = self.labels[idx, y0:y1, x0:x1]
        views = []
        if (self.refinement.zoom or 1.0) > 1 and self.scale < 1:  # no labels decided twice where no view runs
            views = round_views(clicks, before, decide_labels(on_image, self.offsets, axis=0), self.scale,
                                self.work_shape, self.refinement.zoom, (y0, x0))
        if views:
            fine = context_stack(self.volume, idx, self.predictor.context_slices)
            on_image = zoom_in(torch.from_numpy(on_image), torch.from_numpy(x), (y0, y1, x0, x1), fine, views,
                               lambda batch: self.predictor.predict_tensor(batch)[0], self._round_settings).numpy()
        log_p = log_probabilities(on_image, self.offsets, axis=0)
        proposed = log_p.argmax(0).astype(self.labels.dtype)
        refined = refine_round(before, proposed, log_p, shift_clicks(clicks, -y0, -x0), self.refinement)
        withheld = int(((proposed != before) & (refined == before)).sum())
        return ((y0, y1, x0, x1), refined.astype(self.labels.dtype)), withheld, describe(views, self.scale)

    @property
    def _round_settings(self):
        from napari_simseg.core.network.zoom import InputLayout

        return InputLayout.for_checkpoint(self.predictor.meta, self.predictor.memory_kind)

    def _state_to_storage(self, state):
        # keep accelerator memory for the network: stored states live on the CPU
        if state is None or self.predictor.device.type == "cpu":
            return state
        return tuple((h.to("cpu"), c.to("cpu")) for h, c in state)

    def _state_to_device(self, state):
        if state is None or self.predictor.device.type == "cpu":
            return state
        dev = self.predictor.device
        return tuple((h.to(dev), c.to(dev)) for h, c in state)

    def _trim_states(self, mem: InteractionMemory) -> None:
        rounds = mem.rounds
        for state in rounds[: max(0, len(rounds) - self.max_state_history)]:
            state.payload = None

    def undo(self, slice_index) -> np.ndarray:
        """Undo the newest round of a slice; returns its labels as they were before it.

        On a propagated slice (its newest round is a propagation's) this undoes that whole
        propagation, every slice it wrote, as one step (see :meth:`undo_propagation`).
        """
        idx = self.check_slice(slice_index)
        mem = self.memory(idx)
        if not mem.can_undo:
            raise RuntimeError(f"nothing to undo on slice {idx}")
        owner = next((p for p in self._propagations if p.holds(self, idx)), None)
        if owner is not None:
            undo_propagation(self, self._propagations, owner)
            self._record("undo", slice=idx)
            return self.labels[idx].copy()
        mem.undo()
        self._record("undo", slice=idx)
        return self._show_current(idx)

    def redo(self, slice_index) -> np.ndarray:
        """Redo the most recently undone round of a slice."""
        idx = self.check_slice(slice_index)
        mem = self.memory(idx)
        if not mem.can_redo:
            raise RuntimeError(f"nothing to redo on slice {idx}")
        mem.redo()
        self._record("redo", slice=idx)
        return self._show_current(idx)

    def reset_slice(self, slice_index) -> np.ndarray:
        """Forget every round of a slice and clear its labels (base labels included)."""
        idx = self.check_slice(slice_index)
        self.memory(idx).reset()
        self._regions.pop(idx, None)
        self._base_labels.pop(idx, None)
        self._hand_set.discard(idx)
        self._record("reset", slice=idx)
        return self._show_current(idx)

    def set_labels(self, slice_index, labels: np.ndarray) -> None:
        """Make hand-edited labels the slice's base labels (its memory is reset)."""
        idx = self.check_slice(slice_index)
        labels = np.asarray(labels)
        if labels.shape != self.shape[1:]:
            raise ValueError(f"labels must have shape {self.shape[1:]}, got {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= self.n_classes):
            raise ValueError(f"label values must lie in 0..{self.n_classes - 1}")
        self.memory(idx).reset()
        self._regions.pop(idx, None)
        self._base_labels[idx] = labels.astype(self.labels.dtype)
        self._hand_set.add(idx)
        self._record("set_labels", slice=idx, labels=labels.astype(int).tolist())
        self._show_current(idx)

    # ------------------------------------------------------------------ propagation
    def is_user_edited(self, slice_index) -> bool:
        """Whether the user worked on a slice: rounds of the user's own (undone ones
        included) or labels set by hand (:meth:`set_labels`). Propagation never
        overwrites such a slice."""
        idx = self.check_slice(slice_index)
        mem = self._memories.get(idx)
        return idx in self._hand_set or (mem is not None and (
            mem.can_redo or any(PROPAGATED not in s.meta for s in mem.rounds)))

    @property
    def hand_set(self) -> list[int]:
        """Slices whose base labels were set by hand (:meth:`set_labels`) and not replaced since."""
        return sorted(self._hand_set)

    def user_clicks(self, slice_index) -> list[Click]:
        """The clicks of the user's rounds on a slice, oldest first (undone rounds excluded)."""
        mem = self._memories.get(self.check_slice(slice_index))
        rounds = () if mem is None else mem.rounds
        return [Click(*c) for s in rounds if PROPAGATED not in s.meta for c in s.meta.get("click_list", ())]

    @property
    def propagated(self) -> dict[int, int]:
        """Slices that show a propagated result (no round of the user's), with their source slice."""
        return {z: m.rounds[0].meta[PROPAGATED] for z, m in self._memories.items()
                if m.n_rounds and all(PROPAGATED in s.meta for s in m.rounds)}

    @property
    def propagations(self) -> list[Propagation]:
        """The active (not undone) propagations, oldest first."""
        return list(self._propagations)

    def iter_propagate(self, slice_index, direction: str = "both", stop: Sequence[int] = (),
                       rule: SeedRule | None = None, labels: np.ndarray | None = None
                       ) -> Iterator[tuple[int, int, int | None]]:
        """:meth:`propagate` step by step: yields ``(done, total, slice)`` after each slice
        (first ``(0, total, None)``); stopping early keeps, logs and makes undoable the
        slices written so far. The arguments are checked at the call."""
        return self._walk(*self._propagation_args(slice_index, direction, stop, rule, labels))

    def propagate(self, slice_index, direction: str = "both", stop: Sequence[int] = (),
                  rule: SeedRule | None = None, labels: np.ndarray | None = None) -> Propagation:
        """Carry a finished slice into its neighbours, slice by slice
        (see :mod:`~napari_simseg.core.session.propagation`).

        Parameters
        ----------
        slice_index : int
            The finished slice.
        direction : {"both", "up", "down"}
            Towards higher slice indices (``"up"``), lower ones, or both.
        stop : sequence of int
            More slices never to overwrite (e.g. painted in a viewer); propagation also
            stops at slices the user edited, at slices propagated from a nearer finished
            slice and where the structure ends.
        rule : SeedRule, optional
            Region size and distance limits.
        labels : ndarray, optional
            The finished slice's labels when they differ from the session's (painted in
            a viewer): seeds then come from them, not from the slice's clicks.

        Returns
        -------
        Propagation
            Its record (``slices`` written; none when nothing could be propagated).
            :meth:`undo_propagation`, or :meth:`undo` on any of its slices, undoes it as
            one step.
        """
        args = self._propagation_args(slice_index, direction, stop, rule, labels)
        for _ in self._walk(*args):
            pass
        return args[0]

    def _propagation_args(self, slice_index, direction, stop, rule, labels) -> tuple:
        idx = self.check_slice(slice_index)
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != self.shape[1:]:
                raise ValueError(f"labels must have shape {self.shape[1:]}, got {labels.shape}")
        return Propagation(idx, direction), [self.check_slice(z) for z in stop], rule or SeedRule(), labels

    def _walk(self, record: Propagation, stop: list, rule: SeedRule, labels):
        try:
            yield from iter_propagate(self, record, stop, rule, labels)
        finally:
            if record.steps:
                self._propagations.append(record)
                self._record("propagate", **record.log_fields())

    def undo_propagation(self, slice_index=None) -> list[int]:
        """Undo the newest active propagation (from ``slice_index``, when given) as one
        step; returns the slices restored (those changed since keep their state)."""
        source = None if slice_index is None else self.check_slice(slice_index)
        found = [p for p in self._propagations if source is None or p.source == source]
        if not found:
            raise RuntimeError("no propagation to undo" + ("" if source is None else f" from slice {source}"))
        restored = undo_propagation(self, self._propagations, found[-1])
        self._record("undo_propagation", slice=found[-1].source)
        return restored

    def replay_propagation(self, event: dict) -> Propagation:
        """Repeat a logged ``propagate`` event (``core.session.interaction_log.replay_log``)."""
        record = replay_propagation(self, event)
        self._propagations.append(record)
        self._record("propagate", **record.log_fields())
        return record

    def seeded_round(self, slice_index, clicks: Sequence, source: int, fresh: bool = True,
                     prior: np.ndarray | None = None) -> RoundResult:
        """A propagation's round on a slice, marked as propagated from ``source`` (not
        logged: the propagation logs itself); ``fresh`` starts from an empty memory.

        ``prior``: the labels of the slice before it (image grid). A network trained with
        neighbour priors (its checkpoint's ``neighbour_prior``) gets them first, as a
        state without clicks whose probabilities are
        :func:`~napari_simseg.core.interaction.memory.prior_probabilities` of those labels (on the
        round's region); other networks ignore it.
        """
        idx = self.check_slice(slice_index)
        clicks = self._checked_clicks(clicks)
        if fresh:
            self._memories.pop(idx, None)
            self._regions.pop(idx, None)
        if fresh and prior is not None and self.predictor.meta.neighbour_prior:
            self._push_prior(idx, clicks, np.asarray(prior), source)
        return self._run_round(idx, clicks, time.perf_counter(), **{PROPAGATED: int(source)})

    def _push_prior(self, idx: int, clicks: list, prior: np.ndarray, source: int) -> None:
        """Start slice ``idx``'s memory with a neighbour-prior state (see :meth:`seeded_round`)."""
        if prior.shape != self.shape[1:]:
            raise ValueError(f"a prior must have the slice's shape {self.shape[1:]}, got {prior.shape}")
        on_grid = self._on_working_grid(clicks)
        prior = self.working.transform(prior, "labels")
        y0, y1, x0, x1 = self._region(idx, on_grid)
        mem = self.memory(idx)
        maps = prior_probabilities(prior[y0:y1, x0:x1], self.n_classes)
        mem.push(np.zeros_like(maps), click_list=[], prior=True, **{PROPAGATED: int(source)})
        mem.set_probabilities(maps)

    def slice_state(self, slice_index) -> SliceState:
        """The slice's memory object, rounds and region (for ``core.session.propagation``'s undo)."""
        idx = self.check_slice(slice_index)
        mem = self._memories.get(idx)
        if mem is None:
            return SliceState(None)
        return SliceState(mem, mem.rounds, mem.can_redo, self._regions.get(idx))

    def restore_slice_state(self, slice_index, state: SliceState) -> np.ndarray:
        """Put back a state from :meth:`slice_state` (its memory object as it was); returns the labels."""
        idx = self.check_slice(slice_index)
        self._memories.pop(idx, None)
        self._regions.pop(idx, None)
        if state.memory is not None:
            self._memories[idx] = state.memory
            if state.region is not None:
                self._regions[idx] = state.region
        return self._show_current(idx)

    # ------------------------------------------------------------------ automatic
    def iter_auto(
        self,
        slices: Sequence[int] | None = None,
        batch_size: int = 8,
    ) -> Iterator[tuple[int, int]]:
        """Zero-click prediction, batched; yields ``(done, total)`` after each batch.

        Slices with interaction rounds are skipped (their rounds are the user's work).
        Stopping the generator early keeps the slices finished so far.
        """
        if slices is None:
            slices = range(self.n_slices)
        todo = [self.check_slice(s) for s in slices]
        todo = [s for s in todo if self.n_rounds(s) == 0]
        h, w = self.work_shape
        tiled = h * w > FULL_SLICE_PIXELS
        empty = self._new_memory()
        if not tiled:  # whole slices: as many per call as the tile budget allows, like tiles
            batch_size = max(1, min(int(batch_size), TILE_BATCH_BYTES // self.predictor.required_bytes(1, h, w)))
        total = len(todo)
        yield 0, total
        for start in range(0, total, max(1, int(batch_size))):
            chunk = todo[start : start + batch_size]
            if tiled:
                probs = [self._tiled_probabilities(s, batch_size) for s in chunk]
            else:
                probs, _ = self.predictor.predict(np.stack([empty.network_input(self._image_input(s))
                                                            for s in chunk]), None)
            for s, p in zip(chunk, probs):
                self._base_labels[s] = self._to_labels(p)
                self._hand_set.discard(s)
                self._show_current(s)
            self._record("auto", slices=chunk)
            yield min(start + len(chunk), total), total

    def _tiled_probabilities(self, idx: int, batch_size: int) -> np.ndarray:
        """0-click probabilities of a large slice on the working grid, from overlapping
        tiles averaged where they overlap (memory bounded by the tile size)."""
        boxes = tiles(self.work_shape)
        out = np.zeros((self.n_classes, *self.work_shape), np.float32)
        weight = np.zeros(self.work_shape, np.float32)
        b0 = boxes[0]
        per_tile = self.predictor.required_bytes(1, b0[1] - b0[0], b0[3] - b0[2])
        batch_size = max(1, min(int(batch_size), TILE_BATCH_BYTES // per_tile))  # memory stays bounded
        for start in range(0, len(boxes), batch_size):
            part = boxes[start:start + batch_size]
            shapes = {(b[1] - b[0], b[3] - b[2]) for b in part}
            for shape in shapes:  # a batch holds tiles of one size
                same = [b for b in part if (b[1] - b[0], b[3] - b[2]) == shape]
                empty = self._new_memory(shape)
                x = np.stack([empty.network_input(self._image_input(idx, b)) for b in same])
                probs, _ = self.predictor.predict(x, None)
                for (y0, y1, x0, x1), p in zip(same, probs):
                    out[:, y0:y1, x0:x1] += p
                    weight[y0:y1, x0:x1] += 1
        return out / weight

    def predict_auto(
        self,
        slice_index=None,
        batch_size: int = 8,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Automatic segmentation of one slice (``slice_index``) or of every slice (None).

        Returns the labels of that slice, or of the whole image.
        """
        slices = None if slice_index is None else [slice_index]
        for done, total in self.iter_auto(slices, batch_size):
            if progress is not None:
                progress(done, total)
        if slice_index is None:
            return self.get_labels()
        return self.labels[self.check_slice(slice_index)].copy()

    # ------------------------------------------------------------------ outputs
    def get_labels(self) -> np.ndarray:
        """All labels, shaped like the input image (``(H, W)`` or ``(Z, H, W)``)."""
        return self.labels[0].copy() if self.is_2d else self.labels.copy()

    @property
    def log(self) -> list[dict]:
        return [dict(e) for e in self._log]

    def log_since(self, start: int) -> list[dict]:
        """The log's events from index ``start`` on (what an autosave has not written yet)."""
        return [dict(e) for e in self._log[start:]]

    def save_log(self, path, labels: dict | None = None) -> Path:
        """Write the ordered interaction log as JSON (atomically); see ``core.session.interaction_log``.

        ``labels``: the labels file the log goes with
        (:func:`~napari_simseg.core.session.interaction_log.labels_record`)."""
        shape = self.shape if not self.is_2d else self.shape[1:]
        return write_log(path, shape, self.class_names, self.predictor.checkpoint.path, self._log, labels,
                         self.refinement)
