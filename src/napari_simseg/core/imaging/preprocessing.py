"""Image preprocessing shared by training, evaluation and the interactive session (no torch).

Per volume: check the pixels (:func:`check_image`), optional N4 bias-field correction
(:func:`n4_correct`), clipping at percentiles and standardisation
(:func:`normalize_volume`); then slicing along an axis (:func:`slice_volume`), the
2.5D neighbour stack (:func:`context_stack`) and centred padding
(:func:`pad_to_multiple`, undone by :func:`unpad`). The training pipeline
(section 5.1.2 of the paper) and inference use exactly these functions.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "CropBox",
    "ImageError",
    "channel_arrays",
    "check_image",
    "normalised_channels",
    "is_constant",
    "context_stack",
    "n4_correct",
    "normalize_volume",
    "PAD_MODES",
    "pad_to_multiple",
    "resize_image",
    "resize_labels",
    "resize_probabilities",
    "round_up",
    "slice_volume",
    "to_working_coordinates",
    "unpad",
    "working_scale",
    "working_shape",
    "working_volume",
]

#: how training items and network inputs are padded (``TrainConfig.pad_mode``)
PAD_MODES = ("constant", "edge")

logger = logging.getLogger(__name__)


class ImageError(ValueError):
    """An image that cannot be segmented as it is (wrong shape, type or values)."""


def is_constant(array: np.ndarray) -> bool:
    """Whether a non-empty array holds one value only (a constant channel is normalised to
    zeros beside varying ones, in training and in sessions)."""
    return array.size > 0 and bool(np.all(array == array.flat[0]))


def check_image(image) -> np.ndarray:
    """The image as an array if SimSeg can segment it, else an :class:`ImageError`.

    Accepts 2D ``(H, W)`` and 3D ``(Z, H, W)`` numeric, finite images with slices of
    at least 8 x 8 pixels; the message says what to do otherwise.
    """
    arr = np.asarray(image)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.number)):
        raise ImageError(f"image must be numeric, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise ImageError("complex-valued images are not supported")
    rgb_like = arr.ndim in (3, 4) and arr.shape[-1] in (3, 4) and min(arr.shape[:-1]) > 4
    if arr.ndim not in (2, 3) or rgb_like:
        hint = ""
        if rgb_like:
            hint = " (an RGB/RGBA image? convert it to a single channel first)"
        elif arr.ndim == 4:
            hint = " (a time series or multi-channel volume? pick one 3D volume first)"
        raise ImageError(
            f"SimSeg segments 2D (H, W) or 3D (Z, H, W) images; got shape {arr.shape}{hint}"
        )
    if arr.size == 0 or min(arr.shape) == 0:
        raise ImageError(f"image is empty (shape {arr.shape})")
    if min(arr.shape[-2:]) < 8:
        raise ImageError(f"slices of {arr.shape[-2]}x{arr.shape[-1]} pixels are too small (min 8x8)")
    if not np.all(np.isfinite(arr)):
        raise ImageError("image contains NaN or infinite values; fill or mask them first")
    _check_float32_range(arr)
    return arr


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_float32_range(arr: np.ndarray, what: str = "image") -> None:
    """Refuse finite values beyond float32 (the network's type), which would become inf."""
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 4:
        peak = float(np.max(np.abs(arr)))
        if peak > _FLOAT32_MAX:
            raise ImageError(f"{what} values reach {peak:.3g}, beyond the float32 range (+-3.4e38) SimSeg "
                             "computes in; rescale the image (e.g. divide it by a constant) first")


# --------------------------------------------------------------------------- intensity


def normalize_volume(
    array: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5, name: str | None = None
) -> np.ndarray:
    """Clip a volume at percentiles, then standardise it to zero mean, unit std.

    Statistics are computed over the whole volume.  If clipping leaves a constant
    volume while the original is not (more than ``100 - high_pct`` percent of the
    voxels share one value), the unclipped values are standardised instead.

    Parameters
    ----------
    array : numpy.ndarray
        Any numeric array.
    low_pct, high_pct : float
        Percentiles (0-100) to clip at; ``0, 100`` disables clipping.
    name : str, optional
        File or case name used in error messages.

    Returns
    -------
    numpy.ndarray of float32

    Raises
    ------
    ImageError
        If the volume has NaN/inf values, is empty or constant.
    """
    what = f"image '{name}'" if name else "image"
    if not 0 <= low_pct < high_pct <= 100:
        raise ValueError(f"need 0 <= low_pct < high_pct <= 100; got {low_pct}, {high_pct}")
    source = np.asarray(array)
    if source.size == 0:
        raise ImageError(f"{what} is empty")
    finite = np.isfinite(source)
    if not finite.all():
        raise ImageError(f"{what} contains {source.size - int(finite.sum())} NaN or infinite voxel(s)")
    del finite
    _check_float32_range(source, what)  # also: the variance of values near 1e300 overflows float64
    # float64 as before, but clipped and standardised in place: a 300 x 512 x 512 CT
    # needs about 1.5 GB less at its peak, with the same values to the last bit
    a = np.array(source, dtype=np.float64)
    lo, hi = np.percentile(a, [low_pct, high_pct])
    np.clip(a, lo, hi, out=a)
    std = a.std()
    if std == 0 or not np.isfinite(std):
        a = np.array(source, dtype=np.float64)  # the unclipped values
        std = a.std()
        if std == 0:
            raise ImageError(f"{what} is constant (every voxel is {a.flat[0]:g}); cannot normalise it")
    a -= a.mean()
    a /= std
    return a.astype(np.float32)


def n4_correct(
    array: np.ndarray,
    cache_dir: str | os.PathLike | None = None,
    key: str | os.PathLike | None = None,
    *,
    shrink_factor: int = 4,
    iterations: Sequence[int] = (30, 20, 10),
) -> np.ndarray:
    """N4 bias-field correction (SimpleITK ``N4BiasFieldCorrectionImageFilter``).

    The bias field is fitted on a copy shrunk by up to ``shrink_factor`` per axis
    (never below about 16 voxels) inside an Otsu foreground mask, then evaluated
    at full resolution and divided out.  Meant for MRI: a negative minimum is shifted
    to 0 before the correction and the shift is added back afterwards.

    Parameters
    ----------
    array : numpy.ndarray
        2D or 3D image.
    cache_dir : path, optional
        Folder for cached results (``n4_<hash>.npy``).  Used only with ``key``.
    key : str or path, optional
        Identifies the input, normally the source image path: when it names an
        existing file, the cache key is its resolved path, modification time and
        size (so an edited file is corrected again); any other value is used as
        given.  The N4 settings and the array shape are part of the key.
    shrink_factor : int
        Largest shrink factor per axis for the fit.
    iterations : sequence of int
        Iterations per fitting level.

    Returns
    -------
    numpy.ndarray of float32
    """
    import SimpleITK as sitk

    arr = np.asarray(array, dtype=np.float32)
    cache_file = None
    if cache_dir is not None and key is not None:
        kp = Path(key)
        if kp.exists():
            st = kp.stat()
            base = f"{kp.resolve()}|{st.st_mtime_ns}|{st.st_size}"
        else:
            base = str(key)
        base += f"|{arr.shape}|{shrink_factor}|{tuple(iterations)}|v1"
        digest = hashlib.sha1(base.encode()).hexdigest()[:24]
        cache_file = Path(cache_dir) / f"n4_{digest}.npy"
        if cache_file.is_file():
            try:
                cached = np.load(cache_file)
                if cached.shape == arr.shape:
                    return cached
            except (OSError, ValueError):
                logger.warning("ignoring unreadable N4 cache file %s", cache_file)
    shift = float(min(arr.min(), 0.0))
    img = sitk.GetImageFromArray(arr - shift)
    mask = sitk.OtsuThreshold(img, 0, 1, 200)
    factors = [int(max(1, min(shrink_factor, s // 16))) for s in img.GetSize()]
    small = sitk.Shrink(img, factors)
    small_mask = sitk.Shrink(mask, factors)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(i) for i in iterations])
    try:
        corrector.Execute(small, small_mask)
    except RuntimeError:
        # e.g. an empty Otsu mask on an odd image: fit on the whole image instead
        corrector.Execute(small)
    log_bias = corrector.GetLogBiasFieldAsImage(img)
    out = sitk.GetArrayFromImage(img / sitk.Exp(log_bias)).astype(np.float32) + np.float32(shift)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(cache_file.stem + f".{os.getpid()}.tmp.npy")
        np.save(tmp, out)
        os.replace(tmp, cache_file)
    return out


# --------------------------------------------------------------------------- slicing & padding


def slice_volume(
    image: np.ndarray, labels: np.ndarray | None = None, axis: int = 0
) -> tuple[np.ndarray, np.ndarray | None]:
    """View a volume as a stack of 2D slices along ``axis``.

    Parameters
    ----------
    image : numpy.ndarray
        3D volume, or a 2D image (one slice; ``axis`` is then ignored).
    labels : numpy.ndarray, optional
        Label volume of the same shape.
    axis : int
        Slicing axis of the 3D volume (0 = Z in numpy order, axial for most scans).

    Returns
    -------
    (image_slices, label_slices)
        Arrays of shape ``(n_slices, H, W)`` (views where possible): element ``k`` is
        slice ``k``.  ``label_slices`` is ``None`` without labels.
    """
    image = np.asarray(image)
    if labels is not None and np.shape(labels) != image.shape:
        raise ValueError(f"labels shape {np.shape(labels)} differs from image shape {image.shape}")
    if image.ndim == 2:
        return image[None], (None if labels is None else np.asarray(labels)[None])
    if image.ndim != 3:
        raise ValueError(f"expected a 2D or 3D array; got shape {image.shape}")
    if not -3 <= axis < 3:
        raise ValueError(f"axis must be 0, 1 or 2 for a 3D volume; got {axis}")
    img = np.moveaxis(image, axis, 0)
    lab = None if labels is None else np.moveaxis(np.asarray(labels), axis, 0)
    return img, lab


def context_stack(slices: np.ndarray, index, context_slices: int = 0) -> np.ndarray:
    """A slice with its ``context_slices`` neighbours on each side, for a 2.5D network.

    Parameters
    ----------
    slices : numpy.ndarray
        ``(S, H, W)`` stack of slices (see :func:`slice_volume`), or ``(C, S, H, W)``
        for an image of ``C`` channels (modalities).
    index : int or sequence of int
        Slice(s) to take.
    context_slices : int
        k; 0 gives the slice alone.

    Returns
    -------
    numpy.ndarray
        ``(C (1 + 2k), H, W)`` for one index, ``(len(index), C (1 + 2k), H, W)`` for
        several (``C = 1`` for an ``(S, H, W)`` stack): the slice's ``C`` channels, then
        those of ``z-1``, ``z+1``, ``z-2``, ``z+2``, ... Neighbours beyond the first or
        last slice repeat the end slice (the reading least likely to invent structure;
        a 2D image therefore gets ``1 + 2k`` copies of itself).
    """
    slices = np.asarray(slices)
    if slices.ndim not in (3, 4):
        raise ValueError(f"expected an (S, H, W) or (C, S, H, W) stack of slices; got shape {slices.shape}")
    k = int(context_slices)
    if k < 0:
        raise ValueError(f"context_slices must be >= 0; got {context_slices}")
    idx = np.asarray(index)
    if not np.issubdtype(idx.dtype, np.integer):
        raise IndexError(f"slice indices must be integers; got {index!r}")
    idx = idx.astype(np.int64)
    s = slices.shape[-3]
    if np.any((idx < 0) | (idx >= s)):
        raise IndexError(f"slice index {index} outside 0..{s - 1}")
    offsets = [0] + [sign * d for d in range(1, k + 1) for sign in (-1, 1)]
    rows = np.clip(idx[..., None] + np.asarray(offsets), 0, s - 1)
    if slices.ndim == 3:
        return slices[rows]
    stack = np.moveaxis(slices[:, rows], 0, -3)  # (..., 1 + 2k, C, H, W): neighbour-major
    return stack.reshape(*stack.shape[:-4], -1, *stack.shape[-2:])


# --------------------------------------------------------------------------- working resolution


def working_scale(shape: Sequence[int], working_size: int | None) -> float:
    """The factor a slice of ``shape`` (``(..., H, W)``) is resized by for the network.

    The network works at a *working resolution*: slices whose longest side exceeds
    ``working_size`` are shrunk so that it equals ``working_size``; smaller slices keep
    their resolution (``None``: every slice keeps it). Training and inference use the
    same rule, so the network sees anatomy at the scale it was trained on.
    """
    if working_size is None:
        return 1.0
    longest = max(int(shape[-2]), int(shape[-1]))
    return min(1.0, float(working_size) / longest)


def working_shape(shape: Sequence[int], scale: float) -> tuple[int, int]:
    """The ``(h, w)`` of a slice of ``shape`` at ``scale`` (at least one pixel each)."""
    h, w = int(shape[-2]), int(shape[-1])
    if scale == 1.0:
        return h, w
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def _resize_planes(array: np.ndarray, shape: Sequence[int], interpolation: int) -> np.ndarray:
    import cv2

    h, w = int(shape[0]), int(shape[1])
    planes = np.ascontiguousarray(array).reshape(-1, *array.shape[-2:])
    out = np.empty((planes.shape[0], h, w), dtype=planes.dtype)
    for i, plane in enumerate(planes):
        out[i] = cv2.resize(plane, (w, h), interpolation=interpolation)
    return out.reshape(*array.shape[:-2], h, w)


def resize_image(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Resize the last two axes of a float image to ``shape``: area averaging when
    shrinking (no aliasing), bilinear when enlarging. Returns float32."""
    import cv2

    array = np.asarray(array, dtype=np.float32)
    if tuple(array.shape[-2:]) == tuple(int(v) for v in shape):
        return array
    shrink = shape[0] <= array.shape[-2] and shape[1] <= array.shape[-1]
    return _resize_planes(array, shape, cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_labels(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Resize the last two axes of a label map to ``shape`` by nearest neighbour
    (labels are never interpolated)."""
    import cv2

    labels = np.asarray(labels)
    if tuple(labels.shape[-2:]) == tuple(int(v) for v in shape):
        return labels
    if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.uint16).max):
        raise ValueError("label values must lie in 0..65535 to be resized")
    work = labels.astype(np.uint16)  # a type every OpenCV interpolation takes
    return _resize_planes(work, shape, cv2.INTER_NEAREST_EXACT).astype(labels.dtype)


def resize_probabilities(probabilities: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Class probabilities ``(..., N, h, w)`` resampled bilinearly to ``shape`` (still
    summing to 1 over the classes)."""
    import cv2

    probabilities = np.asarray(probabilities, dtype=np.float32)
    if tuple(probabilities.shape[-2:]) == tuple(int(v) for v in shape):
        return probabilities
    return _resize_planes(probabilities, shape, cv2.INTER_LINEAR)


def working_volume(image: np.ndarray, working_size: int | None) -> np.ndarray:
    """A ``(..., S, H, W)`` volume with every slice resized to the working resolution."""
    scale = working_scale(image.shape, working_size)
    return resize_image(image, working_shape(image.shape, scale)) if scale != 1.0 else np.asarray(image)


def to_working_coordinates(y: float, x: float, scale: float) -> tuple[float, float]:
    """A pixel position on the image grid mapped to the working grid (pixel centres aligned)."""
    if scale == 1.0:
        return float(y), float(x)
    return (float(y) + 0.5) * scale - 0.5, (float(x) + 0.5) * scale - 0.5


class CropBox(NamedTuple):
    """Where the original slice lies inside a padded one: rows ``y0:y1``, columns ``x0:x1``."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(slice(y0, y1), slice(x0, x1))``."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def crop(self, array: np.ndarray) -> np.ndarray:
        """Undo the padding on the last two axes of ``array``."""
        return array[..., self.y0:self.y1, self.x0:self.x1]


def unpad(array, box: CropBox):
    """Undo :func:`pad_to_multiple` on the last two axes (numpy array or torch tensor)."""
    return CropBox(*box).crop(array)


def round_up(n: int, multiple: int) -> int:
    return int(-(-int(n) // multiple) * multiple)


def pad_to_multiple(
    array: np.ndarray, multiple: int = 32, target: Sequence[int] | None = None, value: float = 0,
    mode: str = "constant",
) -> tuple[np.ndarray, CropBox]:
    """Pad the last two axes, centring the content.

    Parameters
    ----------
    array : numpy.ndarray
        ``(..., H, W)``: a slice or a stack of slices, image or labels.
    multiple : int
        Without ``target``, pad H and W up to the next multiple of this (networks
        with 5 down-samplings need 32).
    target : (H, W), optional
        Exact output size; must be at least the input size.
    value : float
        Constant fill.  The default 0 is the background label for label maps, and
        the mean intensity for images standardised by :func:`normalize_volume`.
    mode : {"constant", "edge"}
        ``"edge"`` repeats the border pixels instead (``value`` unused): padding then adds
        no edge of its own, e.g. a band of mean grey beside black air
        (``TrainConfig.pad_mode``).

    Returns
    -------
    padded : numpy.ndarray
    box : CropBox
        ``box.crop(padded)`` (or :func:`unpad`) gives back ``array``.  The extra rows
        and columns are split evenly, the odd one going to the bottom/right.

    Raises
    ------
    ValueError
        If the slice is larger than ``target``.
    """
    array = np.asarray(array)
    if array.ndim < 2:
        raise ValueError(f"need at least 2 dimensions (H, W); got shape {array.shape}")
    h, w = array.shape[-2:]
    if target is None:
        if multiple < 1:
            raise ValueError(f"multiple must be >= 1; got {multiple}")
        th, tw = round_up(h, multiple), round_up(w, multiple)
    else:
        th, tw = (int(v) for v in target)
        if th < h or tw < w:
            raise ValueError(
                f"slice of size {(h, w)} is larger than the padding target {(th, tw)}; use a "
                "larger target (see largest_slice_shape) or crop the image"
            )
    top, left = (th - h) // 2, (tw - w) // 2
    pad = [(0, 0)] * (array.ndim - 2) + [(top, th - h - top), (left, tw - w - left)]
    if mode not in PAD_MODES:
        raise ValueError(f"pad mode must be one of {PAD_MODES}, got {mode!r}")
    if (th, tw) == (h, w):
        return array.copy(), CropBox(top, top + h, left, left + w)
    kwargs = {"constant_values": value} if mode == "constant" else {}
    padded = np.pad(array, pad, mode=mode, **kwargs)
    return padded, CropBox(top, top + h, left, left + w)


def channel_arrays(image, channel_axis: int | None, channel_names: Sequence[str]) -> list:
    """The image as a list of checked ``(H, W)`` or ``(Z, H, W)`` arrays, one per channel."""
    names = list(channel_names)
    if channel_axis is not None:
        arr = np.asarray(image)
        try:
            channels = list(np.moveaxis(arr, channel_axis, 0))
        except np.exceptions.AxisError:
            raise ImageError(f"channel_axis {channel_axis} does not exist in an image of shape {arr.shape}") from None
    elif isinstance(image, (list, tuple)):
        channels = list(image)
    else:
        channels = [image]
    if len(channels) != len(names):
        raise ImageError(
            f"this network reads {len(names)} image channel(s) {names}, got {len(channels)}: give one "
            f"array per channel (or channel_axis=) in that order"
        )
    channels = [check_image(c) for c in channels]
    shapes = {c.shape for c in channels}
    if len(shapes) > 1:
        raise ImageError(f"the channels {names} must have one shape; got {[c.shape for c in channels]}")
    return channels


def normalised_channels(channels: list, normalization: dict) -> np.ndarray:
    """``(C, Z, H, W)`` float32: each channel N4-corrected (when the network was trained
    so) and normalised on its own, as in training; a constant channel beside varying ones
    is zeros."""
    norm = dict(normalization)
    out = []
    varying = [not is_constant(arr) for arr in channels]
    for arr, varies in zip(channels, varying):
        volume = (arr[None] if arr.ndim == 2 else arr).astype(np.float32, copy=False)
        if not varies and any(varying):  # a missing modality or an empty colour channel: zeros, as in training
            out.append(np.zeros_like(volume))
            continue
        if norm.get("n4"):
            volume = n4_correct(volume)  # the network was trained on N4-corrected images
        try:
            volume = normalize_volume(volume, low_pct=float(norm.get("low", 0.5)),
                                      high_pct=float(norm.get("high", 99.5)))
        except ValueError as exc:
            raise ImageError(str(exc)) from None
        out.append(volume)
    return out[0][None] if len(out) == 1 else np.stack(out)  # one channel: no second copy
