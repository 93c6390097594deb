"""The batched interaction-round engine: many slices, one network call per round.

Shared by training (DDG/SDG memories), its validation, the evaluation and the
calibration.

:class:`BatchMemory` is the torch, batched twin of
:class:`~napari_simseg.core.interaction.memory.InteractionMemory`; both build the same channel
layout (a test pins the equality), so what the network sees in training is what it sees
in the napari session.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch

from napari_simseg.core.imaging.preprocessing import context_stack
from napari_simseg.core.imaging.transforms import WorkingSize
from napari_simseg.core.interaction.clicks import Click, as_clicks, encode_clicks, honour_clicks, shift_clicks
from napari_simseg.core.interaction.memory import input_channels
from napari_simseg.core.interaction.refinement import Refinement, refine_round
from napari_simseg.core.network.decision import active_offsets, decide_labels, log_probabilities
from napari_simseg.core.network.devices import autocast_for
from napari_simseg.core.network.zoom import InputLayout

__all__ = ["BatchMemory", "RoundSettings", "VolumeImage", "cropped_clicker", "encode_click_batch", "run_rounds",
           "run_volume_rounds"]


def encode_click_batch(clicks_per_image, n_classes, shape, radius, device=None) -> torch.Tensor:
    """Encode one round of clicks for each image of a batch as ``(B, N, H, W)``."""
    masks = np.stack([encode_clicks(c, n_classes, shape, radius) for c in clicks_per_image])
    return torch.from_numpy(masks).to(device)


class BatchMemory:
    """Interaction memories of a batch of slices, on one device.

    Parameters
    ----------
    kind : {"none", "cim", "sim"}
    n_classes : int
    depth : int
    images : Tensor
        ``(B, C (1 + 2k), H, W)`` normalised slices: the slice's ``C`` channels, then
        its ``2k`` neighbours' (``k = 0``: ``(B, C, H, W)``; see ``core.interaction.memory`` for the
        layout).
    image_channels : int
        C, the image's channels.
    """

    def __init__(self, kind: str, n_classes: int, depth: int, images: torch.Tensor, image_channels: int = 1):
        c = int(image_channels)
        if images.ndim != 4 or images.shape[1] % c or (images.shape[1] // c) % 2 != 1:
            raise ValueError(f"images must be (B, {c} (1 + 2k), H, W); got {tuple(images.shape)}")
        self.kind = kind
        self.n_classes = int(n_classes)
        self.depth = int(depth) if kind == "sim" else 1
        self.images = images
        self.image_channels = c
        self.context_slices = (images.shape[1] // c - 1) // 2
        self.channels = input_channels(kind, n_classes, self.depth, self.context_slices, c)
        self._clicks: list[torch.Tensor] = []
        self._probs: list[torch.Tensor | None] = []

    @property
    def n_rounds(self) -> int:
        return len(self._clicks)

    def push(self, clicks: torch.Tensor) -> None:
        """Start a round with ``(B, N, H, W)`` click masks."""
        self._clicks.append(clicks.to(self.images.device, self.images.dtype))
        self._probs.append(None)

    def set_probabilities(self, probs: torch.Tensor) -> None:
        """Store the newest round's ``(B, N, H, W)`` probabilities (detached)."""
        self._probs[-1] = probs.detach().to(self.images.dtype)

    def network_input(self) -> torch.Tensor:
        """The ``(B, C, H, W)`` input of the current round (same layout as InteractionMemory)."""
        b, _, h, w = self.images.shape
        n, c = self.n_classes, self.image_channels
        out = self.images.new_zeros(b, self.channels, h, w)
        out[:, :c] = self.images[:, :c]
        if self.context_slices:
            out[:, self.channels - 2 * self.context_slices * c :] = self.images[:, c:]
        if not self._clicks:
            return out
        if self.kind == "none":
            out[:, c : c + n] = self._clicks[-1]
        elif self.kind == "cim":
            out[:, c : c + n] = torch.stack(self._clicks).amax(dim=0)
        else:
            k0 = max(0, len(self._clicks) - self.depth)
            first_slot = self.depth - (len(self._clicks) - k0)
            for j, k in enumerate(range(k0, len(self._clicks))):
                base = c + 2 * n * (first_slot + j)
                out[:, base : base + n] = self._clicks[k]
                if self._probs[k] is not None:
                    out[:, base + n : base + 2 * n] = self._probs[k]
        return out


def cropped_clicker(clicker, crops):
    """Wrap a batch clicker so it sees only each image's real (unpadded) region.

    ``crops`` holds ``(y0, y1, x0, x1)`` per image; the clicks come back in padded
    coordinates. Without this, background clicks land in the padding (often the
    background's distance-transform peak), where no user would ever click.
    """
    if crops is None:
        return clicker
    boxes = [tuple(int(v) for v in b) for b in crops]

    def wrapped(gts, previous):
        out = []
        for i, (y0, y1, x0, x1) in enumerate(boxes):
            prev = None if previous is None else previous[i : i + 1, y0:y1, x0:x1]
            out.append(shift_clicks(clicker(gts[i : i + 1, y0:y1, x0:x1], prev)[0], y0, x0))
        return out

    return wrapped


@dataclass(frozen=True)
class RoundSettings(InputLayout):
    """How the network's rounds run: its memory and input layout, and how labels are decided.

    Attributes
    ----------
    memory_kind : {"none", "cim", "sim"}
    depth : int
        SIM states (1 for the other memories).
    n_classes : int
    click_radius : int
        Click disks' radius on the network's grid.
    image_channels : int
        The image's channels (before any context slices).
    context_slices : int
        Neighbours on each side a 2.5D network reads (:func:`run_volume_rounds` stacks them).
    amp : bool
        Mixed precision (CUDA).
    honour : bool
        Clicked pixels show their click's class.
    decision_offsets : sequence of float or None
        Per-class offsets added to the log-probabilities before the argmax.
    refinement : Refinement or None
        What each corrective round may change of the labels shown before it (None: all).
    """

    amp: bool = False
    honour: bool = False
    decision_offsets: Sequence[float] | None = None
    refinement: Refinement | None = None

    @classmethod
    def for_checkpoint(cls, meta, memory_kind: str | None = None, **fields) -> RoundSettings:
        """The settings of a checkpoint's header ``meta`` (``memory_kind`` overrides its memory)."""
        base = vars(InputLayout.for_checkpoint(meta, memory_kind))
        if fields.get("refinement") is not None:  # its zoom, as the checkpoint was trained for
            fields["refinement"] = fields["refinement"].for_checkpoint(meta)
        return cls(**{**base, **fields})


@torch.inference_mode()
def run_rounds(
    model: torch.nn.Module,
    images: torch.Tensor,
    gts: np.ndarray,
    n_rounds: int,
    clicker: Callable[[np.ndarray, np.ndarray | None], Sequence[Sequence]],
    settings: RoundSettings,
    on_round: Callable[[int, np.ndarray, float], None] | None = None,
    fine_images: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Run 0..``n_rounds`` rounds of a virtual user on a batch of slices.

    ``images`` are at the network's working resolution; ``gts`` may be on a finer image
    grid (the slices' own resolution): then the probabilities are resampled
    bilinearly to that grid before labels are decided, the clicker sees and clicks on
    that grid, and its clicks are mapped to the working grid to be encoded, so labels
    and scores are at the image's own resolution, as in the session.

    Round 0 is the automatic (0-click) prediction from an empty memory. Round ``k``
    asks ``clicker(gts, previous)`` for the clicks of every slice, where ``previous``
    is the label map shown after round ``k - 1`` (in round 1, the automatic result:
    the user corrects what they see), pushes them, and predicts, carrying the
    ConvLSTM state. The automatic prediction itself is not a round: round 1 starts
    from an empty memory and a fresh ConvLSTM state.

    With ``settings.honour`` the label maps (returned, and shown to the clicker) give every
    pixel clicked so far its click's class, as the interactive session does
    (:func:`~napari_simseg.core.interaction.clicks.honour_clicks`); the memory keeps the network's
    own probabilities either way. ``settings.decision_offsets`` (one per class) are added to the
    log-probabilities before the argmax (:mod:`~napari_simseg.core.network.decision`).
    ``settings.refinement`` decides, as in the session, what each corrective round after its
    ``network_rounds`` may change of the labels shown before it
    (:func:`~napari_simseg.core.interaction.refinement.refine_round`; None: everything). Its
    ``zoom`` (> 1) refines each click in a focus view finer than the working grid
    (:mod:`~napari_simseg.core.network.zoom`); that needs ``fine_images``, the slices'
    normalised channels on the image grid ``(B, C (1 + 2k), H, W)``.

    Returns
    -------
    list of ndarray
        ``n_rounds + 1`` label maps ``(B, H, W)``: after 0, 1, ..., ``n_rounds`` rounds.
    """
    device = images.device
    model.eval()
    n_classes, honour, refinement = settings.n_classes, settings.honour, settings.refinement
    memory = BatchMemory(settings.memory_kind, n_classes, settings.depth, images, settings.image_channels)
    shape = tuple(images.shape[-2:])
    out_shape = tuple(np.shape(gts)[-2:])
    grid = _working_grid(out_shape, shape)
    offsets = active_offsets(settings.decision_offsets, n_classes)
    results, state, previous = [], None, None
    placed = [[] for _ in range(images.shape[0])]
    refine = refinement is not None and refinement.active
    zoom = (refinement.zoom or 1.0) if refine and grid.scale < 1 else 1.0
    if zoom > 1 and fine_images is None:
        raise ValueError("a zoom-in needs the slices on the image grid (fine_images)")
    for k in range(n_rounds + 1):
        if k > 0:
            clicks = [as_clicks(c) for c in clicker(gts, previous)]
            if honour:
                for i, image_clicks in enumerate(clicks):
                    placed[i].extend(image_clicks)
            memory.push(encode_click_batch([_to_grid(c, grid) for c in clicks], n_classes, shape,
                                           settings.click_radius, device))
        x = memory.network_input()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast_for(device, settings.amp):
            logits, new_state = model(x, state if k > 0 else None)
        probs = torch.softmax(logits.float(), dim=1)
        shown = grid.inverse(probs, "probabilities")
        if offsets is None:
            labels = decide_labels(shown, axis=1).cpu().numpy()
        else:
            labels = decide_labels(torch.log(shown.clamp_min(1e-12)) if shown is not probs
                                   else torch.log_softmax(logits.float(), dim=1),
                                   offsets, axis=1, log=True).cpu().numpy()
        refined = k > 0 and refine and refinement.refines_round(k)
        if refined and zoom > 1:
            shown, labels = _zoomed(model, settings, x, shown, labels, previous, clicks, fine_images)
        if refined:
            log_p = log_probabilities(shown, offsets, axis=1).cpu().numpy() if refinement.needs_probabilities else None
            for i in range(labels.shape[0]):
                labels[i] = refine_round(previous[i], labels[i], None if log_p is None else log_p[i], clicks[i],
                                         refinement)
        for i, image_clicks in enumerate(placed):
            honour_clicks(labels[i], image_clicks)
        elapsed = time.perf_counter() - t0
        if k > 0:
            memory.set_probabilities(probs)
            state = new_state
        else:
            # the automatic prediction is not a round: the first round starts afresh
            state = None
        results.append(labels)
        previous = labels
        if on_round is not None:
            on_round(k, labels, elapsed)
    return results


def _zoomed(model, settings: RoundSettings, x, shown, labels, previous, clicks, fine_images):
    """``shown`` and ``labels`` with every click's focus view pasted in (:mod:`~napari_simseg.core.network.zoom`);
    ``shown`` is the coarse probabilities resampled to the image grid (a tensor of its own), changed in place."""
    from napari_simseg.core.network.zoom import round_views, zoom_in

    def run_network(batch):
        with autocast_for(batch.device, settings.amp):
            logits, _ = model(batch, None)
        return torch.softmax(logits.float(), dim=1)

    grid = _working_grid(tuple(shown.shape[-2:]), tuple(x.shape[-2:]))
    offsets = active_offsets(settings.decision_offsets, settings.n_classes)
    whole = (0, shown.shape[-2], 0, shown.shape[-1])
    for i in range(labels.shape[0]):
        views = round_views(clicks[i], previous[i], labels[i], grid.scale, grid.target, settings.refinement.zoom)
        if views:
            zoomed = zoom_in(shown[i], x[i], whole, fine_images[i], views, run_network, settings)
            shown[i] = zoomed
            labels[i] = decide_labels(torch.log(zoomed.clamp_min(1e-12)), offsets, axis=0, log=True).cpu().numpy()
    return shown, labels


def _working_grid(image_shape: tuple, working: tuple) -> WorkingSize:
    """The :class:`WorkingSize` that took slices of ``image_shape`` to ``working`` (as
    :func:`~napari_simseg.core.imaging.preprocessing.working_volume` did)."""
    grid = WorkingSize(image_shape, max(working) if working != image_shape else None)
    if grid.target != working:
        raise ValueError(f"slices of {working} are not a working size of the {image_shape} labels")
    return grid


def _to_grid(clicks, grid: WorkingSize) -> list:
    """Clicks on the image grid mapped to the working grid (pixel centres aligned)."""
    if grid.identity:
        return clicks
    return [Click(c.label, *grid.transform_point(c.y, c.x)) for c in as_clicks(clicks)]


class VolumeImage(NamedTuple):
    """A preprocessed volume on the network's working grid and, for a zoom-in, on its own grid."""

    working: np.ndarray
    fine: np.ndarray | None = None


def run_volume_rounds(model, settings: RoundSettings, image: np.ndarray | VolumeImage, labels: np.ndarray,
                      sl: slice, rounds: int, clicker, on_round=None) -> list[np.ndarray]:
    """:func:`run_rounds` on the slices ``sl`` of one preprocessed volume.

    The slices get their ``settings.context_slices`` neighbours from the whole ``image``.

    Parameters
    ----------
    model : torch.nn.Module
        The network as run (e.g. ``Predictor.model``); the slices go to its device.
    settings : RoundSettings
        E.g. :meth:`RoundSettings.for_checkpoint`.
    image : ndarray or VolumeImage
        ``(C, S, h, w)`` (or ``(S, h, w)`` for one channel) normalised volume at the
        network's working resolution (:class:`~napari_simseg.core.imaging.transforms.WorkingSize`);
        a :class:`VolumeImage` adds the volume on the image's own grid, for a zoom-in
        (``settings.refinement.zoom``).
    labels : ndarray
        ``(S, H, W)`` ground truth on the image's own grid, where labels are scored.
    """
    image, fine_image = image if isinstance(image, VolumeImage) else (image, None)
    device = next(model.parameters()).device
    idx = np.arange(image.shape[-3])[sl]
    x = torch.from_numpy(np.ascontiguousarray(context_stack(image, idx, settings.context_slices))).to(device)
    settings = replace(settings, image_channels=1 if image.ndim == 3 else image.shape[0],
                       amp=settings.amp or device.type == "cuda")
    fine = None
    if fine_image is not None and settings.refinement is not None and (settings.refinement.zoom or 1) > 1:
        fine = context_stack(fine_image, idx, settings.context_slices)
    return run_rounds(model, x, labels[sl], rounds, clicker, settings, on_round, fine)
