"""Zoom-in: a corrective click refined at a finer resolution than the working grid.

A network that runs on a working grid coarser than the image (a 2048² radiograph seen at
256²) decides boundaries eight image pixels at a time, and a click on a boundary cannot
move it by less. After a round's usual (coarse) pass, each click of the round gets a
*focus view* (RITM's zoom-in, FocalClick's focus crop): a square box of the image around
the click and the region the coarse pass changed there, resampled so that the network
sees it ``zoom`` times finer than on the working grid (never finer than the image's own
pixels), with the same channels it just read:

* the image channels are cut from the image at its own resolution;
* the memory's channels (earlier clicks, earlier probabilities) are the coarse input's,
  resampled onto the focus grid (click channels kept binary);
* the round's own clicks are encoded anew on the focus grid, at the network's click
  radius, so that a click is the size the network was trained on;
* the ConvLSTM state starts empty (a view is not a round of the slice's memory).

The view's probabilities replace the coarse ones inside its box, on the image grid, before
:func:`~napari_simseg.core.interaction.refinement.refine_round` decides what the round
shows; the memory keeps the coarse pass's probabilities (the next round reads the slice
as the network saw it). One implementation serves the interactive session and the
evaluation's rounds (``run_rounds``); the trainer's slices are on the working grid
already, where there is nothing finer to zoom into.

The box: the 8-connected pixels the coarse pass changed that touch the click (its
proposed correction), with the click, grown by half its size each way (context), and at
least the size that gives the wanted magnification; a box so large that the
magnification would stay below :data:`MIN_GAIN` gets no view (the coarse pass already
saw it about as well).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from napari_simseg.core.imaging.transforms import FocusCrop, resample
from napari_simseg.core.interaction.clicks import Click, as_clicks, encode_clicks, shift_clicks
from napari_simseg.core.interaction.refinement import MIN_GAIN, component_touching

__all__ = ["MIN_GAIN", "FocusView", "InputLayout", "describe", "focus_crop", "focus_input", "round_views", "zoom_in"]



@dataclass(frozen=True)
class InputLayout:
    """Where a network input's channels are (``core.interaction.memory``'s layout): what a focus
    view needs to rebuild the input on its own grid. The engine's ``RoundSettings`` extends it."""

    memory_kind: str
    depth: int
    n_classes: int
    click_radius: int
    image_channels: int = 1
    context_slices: int = 0

    @classmethod
    def for_checkpoint(cls, meta, memory_kind: str | None = None) -> InputLayout:
        """The layout of a checkpoint's header ``meta`` (``memory_kind`` overrides its memory)."""
        kind = memory_kind or meta.memory
        return cls(kind, meta.depth if kind == "sim" else 1, meta.n_classes, meta.click_radius,
                   len(meta.channel_names), meta.context_slices)


@dataclass(frozen=True)
class FocusView:
    """One click's focus view: the crop (image grid -> focus grid) and the click (image grid)."""

    crop: FocusCrop
    click: Click

    @property
    def gain(self) -> float:
        """Focus pixels per image pixel (the magnification against the image itself)."""
        return min(self.crop.zoom)


def focus_crop(click: Click, previous: np.ndarray, proposed: np.ndarray, scale: float,
               target: Sequence[int], zoom: float, touch: int = 2) -> FocusCrop | None:
    """The focus box of one click on the image grid, resampled to ``target`` (None: no view).

    Parameters
    ----------
    click : Click
        On the image grid.
    previous, proposed : ndarray of int, shape (H, W)
        Labels shown before the round; the coarse pass's labels (image grid).
    scale : float
        Working pixels per image pixel (< 1: the working grid is coarser).
    target : (h, w)
        The focus grid's size (the network's working size).
    zoom : float
        Wanted magnification over the working grid (capped at the image's own pixels).
    touch : int
        A change counts as touching the click within this many pixels.

    Returns
    -------
    FocusCrop or None
        None when the image's own pixels are not at least :data:`MIN_GAIN` times finer than
        the working grid, or the region is too large to gain that much.
    """
    h, w = previous.shape
    gain = min(float(zoom), 1.0 / float(scale))  # focus pixels per working pixel
    if gain < MIN_GAIN:
        return None
    side_px = min(int(target[0]), int(target[1]))
    y, x = int(round(click.y)), int(round(click.x))
    ys, xs = [y], [x]
    correction = component_touching(proposed != previous, Click(click.label, y, x), touch)
    if correction is not None:
        rows, cols = np.nonzero(correction)
        ys += [int(rows.min()), int(rows.max())]
        xs += [int(cols.min()), int(cols.max())]
    extent = max(max(ys) - min(ys), max(xs) - min(xs)) + 1
    wanted = side_px / (float(scale) * gain)  # image pixels the box spans at the wanted magnification
    side = max(wanted, 2.0 * extent)
    if side_px / (float(scale) * side) < MIN_GAIN:
        return None
    centre = ((min(ys) + max(ys)) / 2.0, (min(xs) + max(xs)) / 2.0)
    side = min(side, float(min(h, w)))
    return FocusCrop.around(centre, (side / 2.0, side / 2.0), (h, w), (side_px, side_px))


def _crop_onto(x: torch.Tensor, box: Sequence[float], target: Sequence[int]) -> torch.Tensor:
    """``x`` ``(C, h, w)`` cut to the continuous box ``(y0, y1, x0, x1)`` (pixel edges on its
    grid) and resampled bilinearly to ``target`` (pixel centres aligned)."""
    import torch.nn.functional as F

    c, h, w = x.shape
    th, tw = int(target[0]), int(target[1])
    y0, y1, x0, x1 = (float(v) for v in box)
    ys = y0 + (torch.arange(th, dtype=torch.float32, device=x.device) + 0.5) * (y1 - y0) / th
    xs = x0 + (torch.arange(tw, dtype=torch.float32, device=x.device) + 0.5) * (x1 - x0) / tw
    gy, gx = torch.meshgrid(2 * ys / h - 1, 2 * xs / w - 1, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1)[None]
    out = F.grid_sample(x[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0].to(x.dtype)


def _click_slots(settings) -> list[int]:
    """First channel of every click-mask group in the network input (see ``core.interaction.memory``)."""
    c, n = settings.image_channels, settings.n_classes
    if settings.memory_kind == "sim":
        return [c + 2 * n * j for j in range(settings.depth)]
    return [c]


def focus_input(x: torch.Tensor, x_box: Sequence[int], view: FocusView, fine: np.ndarray, settings) -> torch.Tensor:
    """The network input of one focus view (module docstring).

    Parameters
    ----------
    x : Tensor, shape (C, h, w)
        The round's coarse network input, covering the image box ``x_box``.
    x_box : (y0, y1, x0, x1)
        The image-grid box ``x`` resamples (the whole slice, or the session's region).
    view : FocusView
        Its crop is on the image grid.
    fine : ndarray, shape (C_image (1 + 2k), H, W)
        The slice's normalised channels at the image's own resolution, then its context
        slices' (the layout of :func:`~napari_simseg.core.imaging.preprocessing.context_stack`).
    settings : InputLayout or RoundSettings
        The memory layout (memory kind, depth, classes, click radius, image channels, context).

    Returns
    -------
    Tensor, shape (C, *view.crop.target)
    """
    target = view.crop.target
    by0, by1, bx0, bx1 = x_box
    zy, zx = x.shape[-2] / (by1 - by0), x.shape[-1] / (bx1 - bx0)
    y0, y1, x0, x1 = view.crop.box
    out = _crop_onto(x, ((y0 - by0) * zy, (y1 - by0) * zy, (x0 - bx0) * zx, (x1 - bx0) * zx), target)
    n, c, k = settings.n_classes, settings.image_channels, settings.context_slices
    image = torch.from_numpy(np.ascontiguousarray(view.crop.transform(fine, "image"), dtype=np.float32))
    image = image.to(out.device, out.dtype)
    out[:c] = image[:c]
    if k:
        out[out.shape[0] - 2 * k * c:] = image[c:]
    slots = _click_slots(settings)
    for s in slots:  # clicks stay clicks, however they were resampled
        out[s:s + n] = (out[s:s + n] >= 0.5).to(out.dtype)
    clicks = [Click(view.click.label, *view.crop.transform_point(view.click.y, view.click.x))]
    masks = torch.from_numpy(encode_clicks(clicks, n, target, settings.click_radius)).to(out.device, out.dtype)
    newest = slots[-1]
    out[newest:newest + n] = torch.maximum(out[newest:newest + n], masks) if settings.memory_kind == "cim" else masks
    return out


def zoom_in(shown: torch.Tensor, x: torch.Tensor, x_box: Sequence[int], fine: np.ndarray, views: Sequence[FocusView],
            run_network: Callable[[torch.Tensor], torch.Tensor], settings) -> torch.Tensor:
    """``shown`` (``(N, H', W')`` probabilities on the image grid, covering ``x_box``) with each
    view's probabilities pasted over its box (a new tensor; ``shown`` unchanged).

    ``run_network`` maps a ``(B, C, h, w)`` batch to ``(B, N, h, w)`` probabilities.
    Views run as one batch, and paste in order (a later view wins where boxes overlap).
    """
    if not views:
        return shown
    batch = torch.stack([focus_input(x, x_box, v, fine, settings) for v in views])
    probs = run_network(batch).to(shown.device, shown.dtype)
    out = shown.clone()
    by0, bx0 = x_box[0], x_box[2]
    for view, p in zip(views, probs):
        y0, y1, x0, x1 = view.crop.box
        back = resample(p, view.crop.size, "probabilities")
        out[:, y0 - by0:y1 - by0, x0 - bx0:x1 - bx0] = back
    return out


def round_views(clicks: Sequence, previous: np.ndarray, proposed: np.ndarray, scale: float, target: Sequence[int],
                zoom: float, offset: Sequence[int] = (0, 0)) -> list[FocusView]:
    """The focus views of a round's ``clicks`` (image grid; ``previous`` and ``proposed`` cover
    the image from ``offset`` on), one per click that gains (see :func:`focus_crop`); crops
    are returned on the whole image's grid."""
    if not zoom or zoom <= 1 or scale >= 1 / MIN_GAIN:
        return []
    views = []
    oy, ox = int(offset[0]), int(offset[1])
    for click in shift_clicks(as_clicks(clicks), -oy, -ox):
        crop = focus_crop(click, previous, proposed, scale, target, zoom)
        if crop is None:
            continue
        y0, y1, x0, x1 = crop.box
        views.append(FocusView(FocusCrop((y0 + oy, y1 + oy, x0 + ox, x1 + ox), crop.target),
                               Click(click.label, click.y + oy, click.x + ox)))
    return views


def describe(views: Sequence[FocusView], scale: float) -> str:
    """A status line's words for a round's views ('' when none ran)."""
    if not views:
        return ""
    gain = min(v.gain for v in views) / float(scale)
    n = len(views)
    return f"{n} click{'s' if n > 1 else ''} refined {math.floor(gain * 10) / 10:g}x finer than the working grid"
