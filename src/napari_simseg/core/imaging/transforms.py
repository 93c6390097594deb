"""Geometry transforms between a slice's own pixel grid and the grid the network sees.

Each concern is one transform with ``transform`` (slice grid -> network side) and
``inverse`` (back), for arrays and for points, so that the session, the evaluation and the
trainer map images, labels, probabilities and clicks the same way:

* :class:`WorkingSize` - the slice resized to the checkpoint's working size;
* :class:`FocusCrop` - a box of the slice resampled to a target size (a zoom-in on the
  region a click points at);
* :class:`Canvas` - centred padding to the size the network was trained on (or to its
  stride);
* :class:`Flip` - a flip of the rows and / or columns (flip averaging).

Arrays are ``(..., H, W)``: any leading axes (channels, slices, classes) ride along, so one
transform serves a 2D slice, a stack of slices and a ``(C, Z, H, W)`` volume. ``kind`` says
how values are resampled: ``"image"`` (area averaging when shrinking, bilinear when
enlarging), ``"probabilities"`` (bilinear) and ``"labels"`` (nearest neighbour: labels are
never interpolated). Points are ``(y, x)`` in pixels with pixel centres aligned: pixel ``i``
covers ``[i - 0.5, i + 0.5)``, so a grid shrunk by ``s`` maps ``y`` to ``(y + 0.5) * s - 0.5``.
Point maps are exact inverses of each other; array maps are exact wherever no resampling
happens (a crop or a padding alone), and resampling is the only loss.
Torch tensors are accepted by :class:`Canvas` and :class:`Flip` (the network pads and flips
on its device).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_simseg.core.imaging.preprocessing import (
    PAD_MODES,
    resize_image,
    resize_labels,
    resize_probabilities,
    working_scale,
    working_shape,
)

__all__ = ["KINDS", "Canvas", "Flip", "FocusCrop", "WorkingSize", "resample"]

KINDS = ("image", "probabilities", "labels")


def resample(array, shape: Sequence[int], kind: str = "image"):
    """``array`` ``(..., H, W)`` resampled to ``shape`` as ``kind`` says (see the module docstring).

    A torch tensor is resampled on its device with the same geometry (pixel centres
    aligned: ``align_corners=False``); ``"image"`` then averages areas only for integer
    factors, else bilinear.
    """
    if not isinstance(array, np.ndarray) and hasattr(array, "dim"):
        return _resample_torch(array, shape, kind)
    if kind == "image":
        return resize_image(array, shape)
    if kind == "probabilities":
        return resize_probabilities(array, shape)
    if kind == "labels":
        return resize_labels(array, shape)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _resample_torch(tensor, shape: Sequence[int], kind: str):
    import torch.nn.functional as F

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    size = (int(shape[0]), int(shape[1]))
    if tuple(tensor.shape[-2:]) == size:
        return tensor
    lead = tensor.shape[:-2]
    flat = tensor.reshape(1, -1, *tensor.shape[-2:])
    if kind == "labels":
        out = F.interpolate(flat.float(), size=size, mode="nearest-exact").to(tensor.dtype)
    else:
        h, w = tensor.shape[-2:]
        shrink = size[0] <= h and size[1] <= w and h % size[0] == 0 and w % size[1] == 0
        mode = "area" if kind == "image" and shrink else "bilinear"
        out = F.interpolate(flat.float(), size=size, mode=mode, **({} if mode == "area" else {"align_corners": False}))
    return out.reshape(*lead, *size)


def _shape2(shape) -> tuple[int, int]:
    return int(shape[-2]), int(shape[-1])


@dataclass(frozen=True)
class WorkingSize:
    """A slice of ``source`` ``(H, W)`` resized so that its longest side is at most ``working_size``.

    Slices not larger than ``working_size`` (or ``working_size=None``) keep their grid:
    then both directions are the identity.
    """

    source: tuple[int, int]
    working_size: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "source", _shape2(self.source))

    @property
    def scale(self) -> float:
        """Working pixels per slice pixel (at most 1)."""
        return working_scale(self.source, self.working_size)

    @property
    def target(self) -> tuple[int, int]:
        """The working grid's ``(h, w)``."""
        return working_shape(self.source, self.scale)

    @property
    def identity(self) -> bool:
        return self.scale == 1.0

    def transform(self, array, kind: str = "image"):
        """``(..., H, W)`` on the slice grid to ``(..., h, w)`` on the working grid (numpy or torch)."""
        return array if self.identity else resample(array, self.target, kind)

    def inverse(self, array, kind: str = "probabilities"):
        """``(..., h, w)`` on the working grid back to the slice grid (numpy or torch)."""
        return array if self.identity else resample(array, self.source, kind)

    def transform_point(self, y: float, x: float) -> tuple[float, float]:
        if self.identity:
            return float(y), float(x)
        sy, sx = self.target[0] / self.source[0], self.target[1] / self.source[1]
        return (float(y) + 0.5) * sy - 0.5, (float(x) + 0.5) * sx - 0.5

    def inverse_point(self, y: float, x: float) -> tuple[float, float]:
        if self.identity:
            return float(y), float(x)
        sy, sx = self.target[0] / self.source[0], self.target[1] / self.source[1]
        return (float(y) + 0.5) / sy - 0.5, (float(x) + 0.5) / sx - 0.5


@dataclass(frozen=True)
class FocusCrop:
    """The box ``(y0, y1, x0, x1)`` of a slice resampled to ``target`` ``(h, w)``.

    ``inverse`` maps a result back to the box's own size and, given the whole slice's array
    ``into``, pastes it there (a copy; the rest of ``into`` is untouched). Use
    :meth:`around` to place a box on a structure.
    """

    box: tuple[int, int, int, int]
    target: tuple[int, int]

    def __post_init__(self):
        y0, y1, x0, x1 = (int(v) for v in self.box)
        if y1 <= y0 or x1 <= x0:
            raise ValueError(f"a focus box needs y0 < y1 and x0 < x1, got {self.box}")
        object.__setattr__(self, "box", (y0, y1, x0, x1))
        object.__setattr__(self, "target", _shape2(self.target))

    @property
    def size(self) -> tuple[int, int]:
        """The box's ``(h, w)`` on the slice grid."""
        return self.box[1] - self.box[0], self.box[3] - self.box[2]

    @property
    def zoom(self) -> tuple[float, float]:
        """Target pixels per slice pixel, along rows and columns (> 1: a zoom-in)."""
        return self.target[0] / self.size[0], self.target[1] / self.size[1]

    @classmethod
    def around(cls, center: Sequence[float], half_extent: Sequence[float], shape: Sequence[int],
               target: Sequence[int], spacing: Sequence[float] = (1.0, 1.0)) -> FocusCrop:
        """A box centred on ``center`` (``(y, x)`` pixels) reaching ``half_extent`` (``(hy, hx)``,
        in physical units of ``spacing``) each way, moved (not shrunk) to lie inside ``shape``
        where it fits, clipped where it does not, resampled to ``target``.

        With anisotropic ``spacing`` the box is square in millimetres, not in pixels, so the
        structure keeps its shape in the network's input when ``target`` is square.
        """
        h, w = _shape2(shape)
        sides = []
        for c, half, sp, n in zip(center, half_extent, spacing, (h, w)):
            side = min(n, max(1, int(round(2 * float(half) / float(sp)))))
            lo = int(round(float(c) - side / 2))
            lo = min(max(0, lo), n - side)
            sides += [lo, lo + side]
        return cls(tuple(sides), target)

    def _cut(self, array):
        y0, y1, x0, x1 = self.box
        return array[..., y0:y1, x0:x1]

    def transform(self, array, kind: str = "image"):
        """``(..., H, W)`` on the slice grid to ``(..., *target)``: the box, resampled."""
        cut = self._cut(np.asarray(array))
        return cut if self.size == self.target else resample(cut, self.target, kind)

    def inverse(self, array, kind: str = "probabilities", into=None):
        """``(..., *target)`` back to the box's size; pasted into a copy of ``into`` when given."""
        array = np.asarray(array)
        back = array if self.size == self.target else resample(array, self.size, kind)
        if into is None:
            return back
        out = np.array(into, copy=True)
        y0, y1, x0, x1 = self.box
        out[..., y0:y1, x0:x1] = back
        return out

    def transform_point(self, y: float, x: float) -> tuple[float, float]:
        zy, zx = self.zoom
        return (float(y) - self.box[0] + 0.5) * zy - 0.5, (float(x) - self.box[2] + 0.5) * zx - 0.5

    def inverse_point(self, y: float, x: float) -> tuple[float, float]:
        zy, zx = self.zoom
        return (float(y) + 0.5) / zy - 0.5 + self.box[0], (float(x) + 0.5) / zx - 0.5 + self.box[2]

    def contains(self, y: float, x: float) -> bool:
        """Whether the slice pixel ``(y, x)`` lies in the box."""
        y0, y1, x0, x1 = self.box
        return y0 <= round(float(y)) < y1 and x0 <= round(float(x)) < x1


@dataclass(frozen=True)
class Canvas:
    """Centred padding of a ``source`` ``(H, W)`` slice to ``canvas`` (at least), rounded up to
    a multiple of ``multiple``; ``inverse`` cuts it out again (exact).

    The extra rows and columns are split evenly, the odd one going to the bottom / right,
    as :func:`~napari_simseg.core.imaging.preprocessing.pad_to_multiple` does.
    """

    source: tuple[int, int]
    canvas: tuple[int, int] | None = None
    multiple: int = 1

    def __post_init__(self):
        object.__setattr__(self, "source", _shape2(self.source))
        if self.canvas is not None:
            object.__setattr__(self, "canvas", _shape2(self.canvas))
        if int(self.multiple) < 1:
            raise ValueError(f"multiple must be >= 1, got {self.multiple}")

    @property
    def target(self) -> tuple[int, int]:
        ch, cw = self.canvas or (0, 0)
        m = int(self.multiple)
        return tuple(-(-max(s, c) // m) * m for s, c in zip(self.source, (ch, cw)))

    @property
    def pads(self) -> tuple[int, int, int, int]:
        """``(top, bottom, left, right)`` rows and columns added."""
        (h, w), (th, tw) = self.source, self.target
        top, left = (th - h) // 2, (tw - w) // 2
        return top, th - h - top, left, tw - w - left

    @property
    def identity(self) -> bool:
        return self.target == self.source

    def transform(self, array, mode: str = "constant", value: float = 0.0):
        """Pad ``(..., H, W)`` (numpy or torch) to the canvas: ``"constant"`` with ``value``,
        or ``"edge"`` repeating the border pixels."""
        if mode not in PAD_MODES:
            raise ValueError(f"pad mode must be one of {PAD_MODES}, got {mode!r}")
        if tuple(array.shape[-2:]) != self.source:
            raise ValueError(f"this canvas pads {self.source} slices, got {tuple(array.shape[-2:])}")
        if self.identity:
            return array
        top, bottom, left, right = self.pads
        if isinstance(array, np.ndarray):
            pad = [(0, 0)] * (array.ndim - 2) + [(top, bottom), (left, right)]
            kwargs = {"constant_values": value} if mode == "constant" else {}
            return np.pad(array, pad, mode=mode, **kwargs)
        import torch.nn.functional as F

        if mode == "edge":
            return F.pad(array, (left, right, top, bottom), mode="replicate")
        return F.pad(array, (left, right, top, bottom), value=value)

    @property
    def box(self) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)``: where the source slice lies in the canvas."""
        top, _, left, _ = self.pads
        return top, top + self.source[0], left, left + self.source[1]

    def inverse(self, array):
        """The source slice cut out of a padded ``(..., *target)`` array (numpy or torch)."""
        top, _, left, _ = self.pads
        h, w = self.source
        return array[..., top:top + h, left:left + w]

    def transform_point(self, y: float, x: float) -> tuple[float, float]:
        return float(y) + self.pads[0], float(x) + self.pads[2]

    def inverse_point(self, y: float, x: float) -> tuple[float, float]:
        return float(y) - self.pads[0], float(x) - self.pads[2]


@dataclass(frozen=True)
class Flip:
    """A flip of the rows (``vertical``) and / or columns (``horizontal``) of ``(..., H, W)``
    arrays (numpy or torch); its own inverse."""

    vertical: bool = False
    horizontal: bool = False
    shape: tuple[int, int] | None = None  # the slice's (H, W), needed for points only

    @property
    def axes(self) -> tuple[int, ...]:
        return tuple(a for a, on in ((-2, self.vertical), (-1, self.horizontal)) if on)

    def transform(self, array):
        if not self.axes:
            return array
        if isinstance(array, np.ndarray):
            return np.flip(array, self.axes)
        return array.flip(self.axes)

    inverse = transform

    def transform_point(self, y: float, x: float) -> tuple[float, float]:
        if self.axes and self.shape is None:
            raise ValueError("a Flip needs the slice's shape to map points")
        h, w = self.shape or (0, 0)
        return (h - 1 - float(y) if self.vertical else float(y)), (w - 1 - float(x) if self.horizontal else float(x))

    inverse_point = transform_point
