"""Clicks and their encoding as per-class disk masks.

A click is ``(class_index, y, x)`` in pixel coordinates of one 2D slice; the class
index counts the background as class 0. A round of clicks is encoded as ``N`` binary
masks (one per class), each click drawn as a filled disk of ``radius`` pixels in its
class's mask. Radius 0 marks the single pixel.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Click", "ClickError", "as_clicks", "as_index", "disk_offsets", "encode_clicks", "honour_clicks",
           "shift_clicks", "validate_click"]


class ClickError(ValueError):
    """A click that cannot be placed (unknown class, outside the image)."""


@dataclass(frozen=True)
class Click:
    """One user click.

    Parameters
    ----------
    label : int
        Class index, 0 is the background.
    y, x : float
        Row and column in pixels; rounded to the nearest pixel when encoded.
    """

    label: int
    y: float
    x: float

    def as_tuple(self) -> tuple[int, float, float]:
        return (int(self.label), float(self.y), float(self.x))


def _shown(value) -> str:
    return repr(value.item() if isinstance(value, np.generic) else value)


def as_index(value, what: str = "index", error: type = ValueError) -> int:
    """``value`` as an integer index, refusing anything that is not one.

    Python and numpy integers are indices, and so are floats without a fractional
    part (``2.0``: numbers read from a float array or JSON). Booleans, fractional,
    non-finite and non-numeric values are refused instead of being rounded or
    truncated.

    Parameters
    ----------
    value : object
    what : str
        What the value is, for the message (``"class index"``, ``"slice index"``).
    error : type of Exception
        The exception raised.

    Raises
    ------
    error
        ``"<what> must be an integer, got <value>"``.
    """
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)):
        raise error(f"{what} must be an integer, got {_shown(value)} (a boolean)")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and np.isfinite(value) and float(value).is_integer():
        return int(value)
    raise error(f"{what} must be an integer, got {_shown(value)}")


def _as_coordinate(value, click) -> float:
    """A pixel coordinate as a float (NaN and inf pass: :func:`validate_click` names them)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ClickError(f"click coordinates must be numbers, got {_shown(value)} in {click!r}")
    return float(value)


def as_clicks(clicks: Iterable) -> list[Click]:
    """Convert ``Click`` objects or ``(label, y, x)`` triples to a list of ``Click``.

    Raises
    ------
    ClickError
        For ``clicks`` that is not a sequence (``None``, a single click), a malformed
        click, a class index that is not an integer (see :func:`as_index`: ``1.5`` and
        ``True`` are refused, not rounded) or a coordinate that is not a number.
    """
    if isinstance(clicks, (str, bytes, Click)) or not isinstance(clicks, Iterable):
        raise ClickError(f"clicks must be a sequence of Click or (class index, y, x); got {clicks!r}")
    out = []
    for c in clicks:
        if isinstance(c, Click):
            out.append(c)
            continue
        try:
            label, y, x = c
        except (TypeError, ValueError):
            raise ClickError(
                f"a click must be (class index, y, x); got {c!r}"
            ) from None
        label = as_index(label, "class index", ClickError)
        out.append(Click(label, _as_coordinate(y, c), _as_coordinate(x, c)))
    return out


def validate_click(click: Click, n_classes: int, shape: Sequence[int]) -> tuple[int, int]:
    """Check a click against the class count and slice shape.

    Returns
    -------
    (row, col) : tuple of int
        The pixel the click lands on.

    Raises
    ------
    ClickError
        If the class index is not in ``[0, n_classes)`` or the pixel lies outside
        ``shape``; the message names the offending value.
    """
    h, w = int(shape[0]), int(shape[1])
    label = as_index(click.label, "class index", ClickError)
    if not 0 <= label < n_classes:
        raise ClickError(
            f"unknown class index {label}: this model has {n_classes} classes "
            f"(0..{n_classes - 1}, 0 is the background)"
        )
    _as_coordinate(click.y, click), _as_coordinate(click.x, click)
    if not (np.isfinite(click.y) and np.isfinite(click.x)):
        raise ClickError(f"click position ({click.y}, {click.x}) is not a finite number")
    row, col = int(round(click.y)), int(round(click.x))
    if not (0 <= row < h and 0 <= col < w):
        raise ClickError(
            f"click at (y={click.y:g}, x={click.x:g}) lies outside the {h}x{w} image"
        )
    return row, col


def shift_clicks(clicks: Iterable, dy: float, dx: float) -> list[Click]:
    """The clicks moved by ``(dy, dx)`` pixels, e.g. from a crop's coordinates to the
    full slice's (``dy, dx`` = the crop's top-left corner) or back (their negatives)."""
    return [Click(c.label, c.y + dy, c.x + dx) for c in as_clicks(clicks)]


def disk_offsets(radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column offsets of the pixels of a disk of ``radius`` around ``(0, 0)``."""
    r = int(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = yy * yy + xx * xx <= r * r
    return yy[keep], xx[keep]


def encode_clicks(
    clicks: Iterable,
    n_classes: int,
    shape: Sequence[int],
    radius: int = 3,
) -> np.ndarray:
    """Encode one round of clicks as ``(n_classes, H, W)`` float32 binary masks.

    Parameters
    ----------
    clicks : iterable of Click or (label, y, x)
        The clicks of this round.
    n_classes : int
        Number of classes N, background included.
    shape : (H, W)
        Slice shape.
    radius : int
        Disk radius in pixels (0 = single pixel).

    Raises
    ------
    ClickError
        For an unknown class or a click outside the image.
    """
    if radius < 0:
        raise ValueError(f"click radius must be >= 0, got {radius}")
    h, w = int(shape[0]), int(shape[1])
    masks = np.zeros((n_classes, h, w), dtype=np.float32)
    dy, dx = disk_offsets(radius)
    for click in as_clicks(clicks):
        row, col = validate_click(click, n_classes, (h, w))
        ys, xs = row + dy, col + dx
        keep = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        masks[int(click.label), ys[keep], xs[keep]] = 1.0
    return masks


def honour_clicks(labels: np.ndarray, clicks) -> np.ndarray:
    """Give every clicked pixel its click's class, in place (later clicks win).

    A click is the user's explicit statement about one pixel, so the label map shown
    after a round never contradicts it, even where the network's argmax does (a click
    on a one-pixel boundary error, or one older than the SIM depth remembers). Only the
    click's own pixel is set, not the encoding disk, which may cross a boundary.

    Parameters
    ----------
    labels : ndarray
        ``(H, W)`` label map, or any label array when ``clicks`` are index rows;
        modified in place.
    clicks : iterable of Click or (label, y, x), or ndarray of int
        Clicks already checked against this slice (see :func:`validate_click`), or an
        ``(M, labels.ndim + 1)`` integer array of ``(index..., class)`` rows, oldest
        first (e.g. ``(z, y, x, class)`` for a volume).

    Returns
    -------
    ndarray
        ``labels``.
    """
    if isinstance(clicks, np.ndarray) and np.issubdtype(clicks.dtype, np.integer):
        if len(clicks):
            labels[tuple(clicks[:, :-1].T)] = clicks[:, -1]
        return labels
    h, w = labels.shape[-2:]
    for click in as_clicks(clicks):
        row, col = int(round(click.y)), int(round(click.x))
        if 0 <= row < h and 0 <= col < w:
            labels[row, col] = click.label
    return labels
