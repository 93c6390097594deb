"""Interaction memories: how past clicks and outputs reach the network.

Three kinds, for ``N`` classes (background included):

``none``
    Memory-less ("base" system). Input ``1 + N`` channels: the image, then the
    ``N`` click masks of the current round only.
``cim``
    Cumulative interaction memory. Input ``1 + N`` channels: the image, then the
    click masks of all rounds so far merged (logical or).
``sim``
    Sequential interaction memory of depth ``D``. Input ``1 + 2DN`` channels: the
    image, then for each of the last ``D`` states, oldest to newest, its ``N``
    click masks followed by its ``N`` probability maps.

What a state holds (our reading of section 4.1.2 of the paper)
-------------------------------------------------------------
A state is the pair (clicks placed in round ``k``, probability maps the network
produced in round ``k``). The network input of round ``k`` is built after the user's
clicks of round ``k`` are known but before the network has run, so the newest state's
probability maps are still missing and read as zeros; they are filled in
(:meth:`InteractionMemory.set_probabilities`) once the round's prediction exists and
are then seen by the network in the following rounds. States that do not exist yet
(fewer than ``D`` rounds) are zeros, placed at the oldest end so that the newest state
always occupies the last ``2N`` channels of the memory block (before any context
channels, see below). Training (DDG) builds its inputs with the same
code, so train and test inputs have the same layout.

Neighbouring slices (2.5D context, an extension beyond the paper)
-----------------------------------------------------------------
With ``context_slices = k > 0`` the network also sees the ``2k`` slices around the
current one, appended *after* the memory channels in the order ``z-1, z+1, z-2, z+2,
...`` (clamped at the volume's ends, see :func:`napari_simseg.core.imaging.preprocessing.context_stack`).
Appending keeps channel 0 and the memory layout unchanged, so a 2D network can be
fine-tuned into a 2.5D one by giving the first convolution zero weights for the new
channels. ``k = 0`` (the default) is the paper's 2D input.

Several image channels (modalities, an extension beyond the paper)
------------------------------------------------------------------
An image of ``C`` channels (e.g. T1, T2, FLAIR) takes the first ``C`` input channels
instead of one, so the paper's ``1 + 2DN`` becomes ``C + 2DN``; each neighbouring slice
brings its ``C`` channels (``2kC`` context channels). ``C = 1`` is the paper's layout.

Every memory keeps the full round history, so undo and redo are exact, and a
``payload`` per round (the session stores the convolutional LSTM's hidden state there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["MEMORY_KINDS", "InteractionMemory", "MemoryState", "image_channel_indices", "input_channels",
           "prior_probabilities"]

MEMORY_KINDS = ("none", "cim", "sim")


def input_channels(kind: str, n_classes: int, depth: int = 1, context_slices: int = 0,
                   image_channels: int = 1) -> int:
    """Number of network input channels for a memory kind.

    Parameters
    ----------
    kind : {"none", "cim", "sim"}
    n_classes : int
        N, background included.
    depth : int
        D, used by ``sim`` only.
    context_slices : int
        k neighbouring slices on each side (``2kC`` extra channels at the end).
    image_channels : int
        C, the image's channels (modalities).
    """
    _check_kind(kind)
    check_context_slices(context_slices)
    c = int(image_channels)
    if c < 1:
        raise ValueError(f"image_channels must be >= 1, got {image_channels}")
    extra = 2 * int(context_slices) * c
    if kind == "sim":
        return c + 2 * int(depth) * int(n_classes) + extra
    return c + int(n_classes) + extra


def image_channel_indices(kind: str, n_classes: int, depth: int = 1, context_slices: int = 0,
                          image_channels: int = 1) -> list[int]:
    """The network input channels that hold the image (its ``C`` channels first, the
    ``2kC`` of the context slices last; see :meth:`InteractionMemory.network_input`)."""
    total = input_channels(kind, n_classes, depth, context_slices, image_channels)
    c = int(image_channels)
    return list(range(c)) + list(range(total - 2 * int(context_slices) * c, total))


def prior_probabilities(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """A label map as the probability maps of a *neighbour prior* state (``(N, H, W)`` float32).

    Propagation with a network trained with neighbour priors
    (``TrainConfig.prior_fraction``) starts a slice's memory with one state that holds no
    clicks and, as its probabilities, the labels of the slice next to it: each class's
    indicator averaged over a 3 x 3 window (its edge repeated), so a boundary reads as
    the uncertain band it is between two slices and the maps sum to 1. Training builds the
    prior of a neighbouring slice's ground truth with this same function.
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"a prior needs a 2D label map; got shape {labels.shape}")
    maps = np.stack([(labels == c).astype(np.float32) for c in range(int(n_classes))])
    return ndimage.uniform_filter(maps, size=(1, 3, 3), mode="nearest").astype(np.float32)


def check_context_slices(context_slices) -> None:
    """Raise ``ValueError`` unless ``context_slices`` is an integer >= 0."""
    if isinstance(context_slices, bool) or not isinstance(context_slices, (int, np.integer)) or context_slices < 0:
        raise ValueError(f"context_slices must be an integer >= 0; got {context_slices!r}")


def _check_kind(kind: str) -> None:
    if kind not in MEMORY_KINDS:
        raise ValueError(
            f"unknown memory kind {kind!r}; choose one of {', '.join(MEMORY_KINDS)}"
        )


@dataclass
class MemoryState:
    """One round: its click masks, the probabilities it produced, and an opaque payload."""

    clicks: np.ndarray  # (N, H, W) float32 in {0, 1}
    probabilities: np.ndarray | None = None  # (N, H, W) float32, None until predicted
    payload: Any = None
    meta: dict = field(default_factory=dict)


class InteractionMemory:
    """The interaction memory of one slice.

    Parameters
    ----------
    kind : {"none", "cim", "sim"}
        Memory kind (see module docstring).
    n_classes : int
        N, background included.
    shape : (H, W)
        Slice shape.
    depth : int
        SIM depth D (ignored by the other kinds).
    context_slices : int
        k neighbouring slices on each side the network sees (0: the slice alone).
    image_channels : int
        C, the image's channels (modalities).

    Notes
    -----
    ``push`` starts a round, ``set_probabilities`` completes it, ``undo``/``redo``
    move through the rounds and ``reset`` forgets them all. ``network_input(image)``
    returns the float32 ``(C, H, W)`` tensor for the current round.
    """

    def __init__(self, kind: str, n_classes: int, shape, depth: int = 3, context_slices: int = 0,
                 image_channels: int = 1):
        _check_kind(kind)
        check_context_slices(context_slices)
        if n_classes < 2:
            raise ValueError(f"need at least 2 classes (background + one), got {n_classes}")
        if kind == "sim" and depth < 1:
            raise ValueError(f"SIM depth must be >= 1, got {depth}")
        self.kind = kind
        self.n_classes = int(n_classes)
        self.shape = (int(shape[0]), int(shape[1]))
        self.depth = int(depth) if kind == "sim" else 1
        self.context_slices = int(context_slices)
        self.image_channels = int(image_channels)
        self._rounds: list[MemoryState] = []
        self._redo: list[MemoryState] = []
        self._redo_before_push: list[MemoryState] = []

    # -- introspection -------------------------------------------------
    @property
    def channels(self) -> int:
        return input_channels(self.kind, self.n_classes, self.depth, self.context_slices, self.image_channels)

    @property
    def n_rounds(self) -> int:
        return len(self._rounds)

    @property
    def rounds(self) -> tuple[MemoryState, ...]:
        return tuple(self._rounds)

    @property
    def can_undo(self) -> bool:
        return bool(self._rounds)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    @property
    def last(self) -> MemoryState | None:
        return self._rounds[-1] if self._rounds else None

    # -- editing ---------------------------------------------------------
    def push(self, clicks: np.ndarray, payload: Any = None, **meta) -> MemoryState:
        """Start a new round with its ``(N, H, W)`` click masks; clears the redo stack."""
        clicks = np.asarray(clicks, dtype=np.float32)
        expected = (self.n_classes, *self.shape)
        if clicks.shape != expected:
            raise ValueError(f"click masks must have shape {expected}, got {clicks.shape}")
        state = MemoryState(clicks=clicks, payload=payload, meta=dict(meta))
        self._rounds.append(state)
        self._redo_before_push = self._redo[:]
        self._redo.clear()
        return state

    def abandon(self) -> None:
        """Drop the newest round as if it had never been pushed (its prediction failed).

        The redo stack that :meth:`push` cleared comes back.
        """
        if not self._rounds:
            raise RuntimeError("no round to abandon")
        self._rounds.pop()
        self._redo[:] = self._redo_before_push

    def set_probabilities(self, probabilities: np.ndarray, payload: Any = None) -> None:
        """Store the probabilities the newest round produced (and its payload)."""
        if not self._rounds:
            raise RuntimeError("no round to complete: push clicks first")
        probabilities = np.asarray(probabilities, dtype=np.float32)
        expected = (self.n_classes, *self.shape)
        if probabilities.shape != expected:
            raise ValueError(
                f"probabilities must have shape {expected}, got {probabilities.shape}"
            )
        self._rounds[-1].probabilities = probabilities
        if payload is not None:
            self._rounds[-1].payload = payload

    def undo(self) -> MemoryState:
        """Remove the newest round and keep it for redo."""
        if not self._rounds:
            raise RuntimeError("nothing to undo on this slice")
        state = self._rounds.pop()
        self._redo.append(state)
        return state

    def redo(self) -> MemoryState:
        """Restore the most recently undone round."""
        if not self._redo:
            raise RuntimeError("nothing to redo on this slice")
        state = self._redo.pop()
        self._rounds.append(state)
        return state

    def reframe(self, shape, offset) -> None:
        """Grow the memory's frame to ``shape``, the old frame placed at ``offset = (dy, dx)``.

        Every round (and undone round) keeps its click masks and probabilities, padded
        with zeros (no click, no probability) outside the old frame; their payloads (the
        ConvLSTM states, whose size was the old frame's) are dropped, so the next round
        restarts the LSTM.
        """
        shape = (int(shape[0]), int(shape[1]))
        dy, dx = int(offset[0]), int(offset[1])
        h, w = self.shape
        if dy < 0 or dx < 0 or dy + h > shape[0] or dx + w > shape[1]:
            raise ValueError(f"a {self.shape} frame at {offset} does not fit in {shape}")

        def grow(array):
            if array is None:
                return None
            out = np.zeros((array.shape[0], *shape), dtype=array.dtype)
            out[:, dy:dy + h, dx:dx + w] = array
            return out

        states = {id(st): st for st in (*self._rounds, *self._redo, *self._redo_before_push)}
        for state in states.values():
            state.clicks = grow(state.clicks)
            state.probabilities = grow(state.probabilities)
            state.payload = None
        self.shape = shape

    def frame_snapshot(self) -> tuple:
        """What :meth:`reframe` changes (the frame and every round's arrays and payload),
        for :meth:`restore_frame` to put back when the round that grew the frame fails."""
        states = {id(st): st for st in (*self._rounds, *self._redo, *self._redo_before_push)}
        return self.shape, [(st, st.clicks, st.probabilities, st.payload) for st in states.values()]

    def restore_frame(self, snapshot: tuple) -> None:
        """Undo every :meth:`reframe` since ``snapshot`` (from :meth:`frame_snapshot`)."""
        self.shape, saved = snapshot
        for state, clicks, probabilities, payload in saved:
            state.clicks, state.probabilities, state.payload = clicks, probabilities, payload

    def reset(self) -> None:
        """Forget every round (and the redo stack)."""
        self._rounds.clear()
        self._redo.clear()

    # -- network input ---------------------------------------------------
    def network_input(self, image: np.ndarray) -> np.ndarray:
        """Build the float32 ``(C_in, H, W)`` network input of the current round.

        Parameters
        ----------
        image : ndarray
            The ``(H, W)`` slice, or its ``(C (1 + 2k), H, W)``
            :func:`~napari_simseg.core.imaging.preprocessing.context_stack` (the slice's ``C``
            channels first, then its neighbours').
        """
        image = np.asarray(image, dtype=np.float32)
        c = self.image_channels
        n_img = c * (1 + 2 * self.context_slices)
        if image.shape == self.shape and n_img == 1:
            image = image[None]
        if image.shape != (n_img, *self.shape):
            want = self.shape if n_img == 1 else (n_img, *self.shape)
            raise ValueError(f"image slice must have shape {want}, got {image.shape}")
        n, (h, w) = self.n_classes, self.shape
        out = np.zeros((self.channels, h, w), dtype=np.float32)
        out[:c] = image[:c]
        if n_img > c:
            out[self.channels - (n_img - c):] = image[c:]
        if not self._rounds:
            return out
        if self.kind == "none":
            out[c : c + n] = self._rounds[-1].clicks
        elif self.kind == "cim":
            merged = out[c : c + n]
            for state in self._rounds:
                np.maximum(merged, state.clicks, out=merged)
        else:
            recent = self._rounds[-self.depth :]
            first_slot = self.depth - len(recent)  # missing states stay zero, oldest end
            for k, state in enumerate(recent):
                base = c + 2 * n * (first_slot + k)
                out[base : base + n] = state.clicks
                if state.probabilities is not None:
                    out[base + n : base + 2 * n] = state.probabilities
        return out
