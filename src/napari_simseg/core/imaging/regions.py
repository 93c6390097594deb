"""Where on a slice the network runs: regions around the user's structures, and tiles.

A round's cost must depend on the structures, not on the image size: on a slice
larger than :data:`FULL_SLICE_PIXELS` at the working resolution, the session runs the
network on a *region* around the round's clicks and the labelled structures they touch
(:func:`touched_boxes`: connected labels within the margin of a click), with a margin
of :data:`MARGIN` pixels and at least :data:`MIN_SIDE` pixels a side. The region
is chosen at the slice's first round and kept while the clicks fall inside it (the
interaction memory and the ConvLSTM state live on it); a click outside grows it, the
memory is padded to the new frame and the ConvLSTM restarts. Outside the region the
slice keeps the labels it had (the automatic result, or what was painted). The cost of
a round is that of its region: clicks far apart make a large one (a round the memory
guard refuses leaves the region as it was).

Automatic segmentation of such a slice runs on overlapping :func:`tiles` of
:data:`TILE` pixels whose probabilities are averaged where they overlap.

Smaller slices (the hippocampus crops, any slice of a checkpoint with a working size
of at most 256) are always processed whole, exactly as before regions existed.

Boxes are ``(y0, y1, x0, x1)``, half-open, in pixels of the grid they belong to.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["FULL_SLICE_PIXELS", "MARGIN", "MIN_SIDE", "TILE", "TILE_BATCH_BYTES", "TILE_OVERLAP", "box_around",
           "foreground_box", "grow_box", "scale_box", "tiles", "touched_boxes"]

FULL_SLICE_PIXELS = 256 * 256
MARGIN = 32
MIN_SIDE = 96  # the bundled model's 96 x 96 round, flips included, takes ~250 ms on 2 cores
TILE = 320
TILE_OVERLAP = 32
TILE_BATCH_BYTES = 2**30  # tiles per network call: about this much memory at most

Box = tuple[int, int, int, int]


def foreground_box(labels: np.ndarray) -> Box | None:
    """The bounding box of the nonzero pixels of a 2D label map (``None``: all background)."""
    rows = np.flatnonzero(labels.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(labels.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _fit(lo: float, hi: float, size: int, margin: int, min_side: int) -> tuple[int, int]:
    """``[lo, hi)`` widened by ``margin``, to at least ``min_side``, kept inside ``[0, size)``."""
    lo, hi = int(np.floor(lo)) - margin, int(np.ceil(hi)) + margin
    if hi - lo < min_side:
        centre = (lo + hi) / 2
        lo, hi = int(round(centre - min_side / 2)), int(round(centre + min_side / 2))
    if hi - lo >= size:
        return 0, size
    if lo < 0:
        lo, hi = 0, hi - lo
    if hi > size:
        lo, hi = lo - (hi - size), size
    return lo, hi


def box_around(shape: Sequence[int], points: Iterable[Sequence[float]], boxes: Iterable[Box | None] = (),
               margin: int = MARGIN, min_side: int = MIN_SIDE) -> Box:
    """The box around ``points`` (``(y, x)``) and ``boxes``, with ``margin``, at least
    ``min_side`` a side, inside a grid of ``shape`` (the whole grid when there is nothing)."""
    ys, xs = [], []
    for y, x in points:
        ys += [y, y + 1]
        xs += [x, x + 1]
    for b in boxes:
        if b is not None:
            ys += [b[0], b[1]]
            xs += [b[2], b[3]]
    h, w = int(shape[0]), int(shape[1])
    if not ys:
        return 0, h, 0, w
    y0, y1 = _fit(min(ys), max(ys), h, margin, min_side)
    x0, x1 = _fit(min(xs), max(xs), w, margin, min_side)
    return y0, y1, x0, x1


def grow_box(box: Box, shape: Sequence[int], points: Iterable[Sequence[float]], margin: int = MARGIN) -> Box:
    """``box``, grown just enough to hold every point with ``margin`` around it; unchanged
    when they are all inside."""
    points = [(float(y), float(x)) for y, x in points]
    if all(box[0] <= y < box[1] and box[2] <= x < box[3] for y, x in points):
        return box
    around = box_around(shape, points, margin=margin, min_side=0)
    return min(box[0], around[0]), max(box[1], around[1]), min(box[2], around[2]), max(box[3], around[3])


def touched_boxes(labels: np.ndarray, points: Iterable[Sequence[float]], margin: int = MARGIN) -> list[Box]:
    """The bounding boxes of the labelled regions (connected foreground, any class) that
    come within ``margin`` of a point: the structures a round's clicks are about."""
    from scipy import ndimage

    points = [(float(y), float(x)) for y, x in points]
    if not points or not labels.any():
        return []
    regions, _ = ndimage.label(labels > 0)
    out = []
    for sl in ndimage.find_objects(regions):
        if sl is None:
            continue
        box = (sl[0].start, sl[0].stop, sl[1].start, sl[1].stop)
        if any(box[0] - margin <= y < box[1] + margin and box[2] - margin <= x < box[3] + margin
               for y, x in points):
            out.append(box)
    return out


def scale_box(box: Box, scale: float, shape: Sequence[int]) -> Box:
    """A box of one grid on a grid ``scale`` times finer (``1 / scale`` for the other way), rounded
    outwards and clipped to ``shape``."""
    y0, y1, x0, x1 = box
    h, w = int(shape[0]), int(shape[1])
    return (max(0, int(np.floor(y0 * scale))), min(h, int(np.ceil(y1 * scale))),
            max(0, int(np.floor(x0 * scale))), min(w, int(np.ceil(x1 * scale))))


def tiles(shape: Sequence[int], tile: int = TILE, overlap: int = TILE_OVERLAP) -> list[Box]:
    """Overlapping ``tile``-pixel boxes covering a grid of ``shape`` (one box when it fits)."""

    def starts(size: int) -> list[int]:
        if size <= tile:
            return [0]
        step = tile - overlap
        out = list(range(0, size - tile, step))
        return out + [size - tile]

    h, w = int(shape[0]), int(shape[1])
    return [(y, min(h, y + tile), x, min(w, x + tile)) for y in starts(h) for x in starts(w)]
