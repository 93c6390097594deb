"""Labelled data sets on disk: layouts, reading, checks and loading one case.

A data set folder is discovered (:func:`discover_dataset`, in
:mod:`~napari_simseg.core.data.layouts`; its parts in :mod:`~napari_simseg.core.data.cases`
and :mod:`~napari_simseg.core.data.class_lists`), each case read and checked
(:func:`read_and_check`, in :mod:`~napari_simseg.core.data.reading`: every problem
listed by file), preprocessed (:func:`preprocess_case`, each channel on its own) and
sliced along an axis (:func:`load_case`), here; the names of those modules are
importable from here too.  Splits live in :mod:`~napari_simseg.core.data.splits`, augmentation
in :mod:`~napari_simseg.core.data.augmentation` and the torch slice datasets in
:mod:`~napari_simseg.core.data.slices`.  No torch here.

Data set layouts understood by :func:`discover_dataset`
-------------------------------------------------------
``layout`` names the one found (checked in this order):

``"nnunet"`` (nnU-Net v2 raw data)
    ``dataset.json`` with ``"channel_names"`` (``{"0": "T1", "1": "T2"}``),
    ``"labels"`` (``{"background": 0, "edema": 1, ...}``) and ``"file_ending"``
    (``".nii.gz"``, ``".png"`` ...); ``imagesTr/<case>_0000<ending>``,
    ``<case>_0001<ending>`` ... (one file per channel, every channel used) and
    ``labelsTr/<case><ending>``.  A case missing a channel file is a problem listed
    by that file.
``"msd"`` (Medical Segmentation Decathlon)
    ``dataset.json`` with ``"labels"`` (``{"0": "background", "1": ...}``; the
    nnU-Net ``{name: value}`` form is accepted too), ``"modality"`` (the channel
    names) and ``"training"`` (a list of ``{"image": "./imagesTr/x.nii.gz",
    "label": "./labelsTr/x.nii.gz"}``).  With several modalities and one image file
    per case, the file is 4D and its last (SimpleITK) axis holds the channels
    (``channels_in_last_axis``).  Without ``"training"``, ``imagesTr/`` and
    ``labelsTr/`` are matched by file name, nnU-Net channel suffixes (``_0000``,
    ``_0001`` ...) giving the channels.  Without ``dataset.json`` but with
    ``imagesTr/`` and ``labelsTr/``, the classes are inferred as for a plain folder.
``"folder"`` (one label image per case)
    ``images/`` and ``labels/`` matched by file name without extension (so
    ``a.nii.gz`` matches ``a.nrrd``; a sub-folder is a DICOM series named after the
    folder).  Class names come from ``classes.json`` (a list of names,
    ``{"0": "background", ...}`` or an MSD-like ``{"labels": {...}}``) or
    ``classes.txt`` (one name per line, line ``k`` naming label ``k``, or lines
    ``"k name"``).  Without either, every label file is read and classes are named
    ``"background"`` (0) and ``"class_k"`` for ``k = 1 .. max label``.
``"masks"`` (one binary mask per class)
    ``images/<case>.<ext>`` and ``masks/<class name>/<case>.<ext>``; a mask is "in"
    where it is nonzero.  ``classes.json`` (or ``classes.txt``) gives the order
    (index = label value, index 0 the background); where masks overlap, the class
    with fewer pixels in that case wins (a thin structure over a large one keeps its
    shape, which costs the large one a small share of itself; masks that nest, such as
    tumour sub-regions, nest in any order; at equal size the later class), and the
    overlapping pixels are counted per class pair
    (:attr:`CaseRead.overlaps`).  A mask in a class folder not in the list is a problem
    listed by that mask's file; a case without a mask of some class has that class
    empty (a note).  Without a class list: background + the folder names sorted, with a
    note; a list whose first name has a mask folder lacks the background (one error).

Files: every format of :mod:`~napari_simseg.core.io.images`, 2D pictures (PNG, JPEG, BMP,
TIFF) included; an RGB(A) picture of grey content is read as one channel (a note),
true colour is refused.  An image whose label grid differs by an integer factor per
axis (at most :data:`MAX_RESAMPLE_FACTOR`; e.g. a 2048 x 2048 image with 1024 x 1024
labels) is resampled to the label grid with a note: down by block mean, up by linear
interpolation; labels are never interpolated.  Any other mismatch is a problem listed
by the label file with both shapes.

Files whose names start with ``.`` (including macOS ``._`` resource forks) are
ignored everywhere.  Labels are never remapped: a label value ``k`` is class ``k``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from napari_simseg.core.data.cases import LAYOUTS, Case, CaseIssue, DatasetError, DatasetSpec, read_json
from napari_simseg.core.data.layouts import discover_dataset
from napari_simseg.core.data.reading import (
    MAX_RESAMPLE_FACTOR,
    ON_ERROR_CHOICES,
    CaseRead,
    CheckReport,
    apply_error_policy,
    check_case,
    check_dataset,
    issue_message,
    read_and_check,
)
from napari_simseg.core.imaging.preprocessing import (
    ImageError,
    is_constant,
    n4_correct,
    normalize_volume,
    round_up,
    slice_volume,
)
from napari_simseg.core.io.images import ImageReadError, read_image_info

__all__ = [
    "LAYOUTS",
    "MAX_RESAMPLE_FACTOR",
    "ON_ERROR_CHOICES",
    "Case",
    "CaseArrays",
    "CaseIssue",
    "CaseRead",
    "CheckReport",
    "DatasetError",
    "DatasetSpec",
    "apply_error_policy",
    "check_case",
    "check_dataset",
    "discover_dataset",
    "issue_message",
    "largest_slice_shape",
    "load_case",
    "load_case_with",
    "preprocess_case",
    "read_and_check",
    "read_json",
]

logger = logging.getLogger(__name__)


def largest_slice_shape(
    dataset: DatasetSpec | Iterable[Case | str | os.PathLike], axis: int = 0, multiple: int = 32
) -> tuple[int, int]:
    """The smallest (H, W), multiple of ``multiple``, that holds every slice.

    This is the data-set-wide padding target (the paper pads to 512 x 512, its
    largest slice).  Slices are measured on the label grid (the grid images are
    resampled to), from file headers only; unreadable files are skipped.

    Parameters
    ----------
    dataset : DatasetSpec or iterable of Case or label paths
    axis : int
        Slicing axis (as in :func:`slice_volume`).
    multiple : int

    Returns
    -------
    (H, W) : tuple of int
    """
    items = dataset.cases if isinstance(dataset, DatasetSpec) else list(dataset)
    hmax = wmax = 0
    for item in items:
        path = item.label_grid_path if isinstance(item, Case) else Path(item)
        if path is None:
            continue
        try:
            shape = read_image_info(path).shape
        except ImageReadError as exc:
            logger.warning("largest_slice_shape: %s", exc)
            continue
        shape = shape[-3:]  # a 4D file: channels first
        if len(shape) == 3:
            shape = tuple(s for i, s in enumerate(shape) if i != axis % 3)
        hmax, wmax = max(hmax, shape[0]), max(wmax, shape[1])
    if hmax == 0:
        raise DatasetError("largest_slice_shape: no readable label file")
    return round_up(hmax, multiple), round_up(wmax, multiple)


# --------------------------------------------------------------------------- loading


class CaseArrays(NamedTuple):
    """A preprocessed case: ``image`` float32 ``(C, S, H, W)`` and ``labels`` ``(S, H, W)``,
    slicing axis first (``S = 1`` for a 2D image)."""

    image: np.ndarray
    labels: np.ndarray


def _n4_key(case: Case, channel: int, n_channels: int) -> Path | str:
    """N4 cache key of one channel: its file, or the shared 4D file and the channel."""
    if len(case.image_paths) == n_channels:
        return case.image_paths[channel]
    path = case.image_path
    try:
        st = path.stat()
        return f"{path.resolve()}|{st.st_mtime_ns}|{st.st_size}|channel {channel}"
    except OSError:
        return f"{path}|channel {channel}"


def preprocess_case(
    case: Case, image: np.ndarray, *, n4: bool, cache_dir, normalize: bool, low_pct: float, high_pct: float
) -> np.ndarray:
    """A case's image as float32, each channel on its own N4-corrected (cached) and
    normalised as asked.

    Parameters
    ----------
    case : Case
        The case the image comes from (names the files in errors and keys the N4 cache).
    image : numpy.ndarray
        ``(C, *spatial)``, e.g. :attr:`CaseRead.image`.
    n4, cache_dir, normalize, low_pct, high_pct
        As in :func:`load_case`.

    Returns
    -------
    numpy.ndarray
        float32 ``(C, *spatial)``.

    Raises
    ------
    DatasetError
        When a channel cannot be normalised (constant, NaN), naming its file.
    """
    img = np.asarray(image, dtype=np.float32)
    out = np.empty_like(img)
    n = img.shape[0]
    varying = [not is_constant(c) for c in img]
    for k in range(n):
        channel = img[k]
        if n > 1 and not varying[k] and any(varying):  # a missing modality or an empty colour channel
            out[k] = 0.0
            continue
        own_file = len(case.image_paths) == n
        path = case.image_paths[k] if own_file else case.image_path
        if n4:
            channel = n4_correct(channel, cache_dir=cache_dir, key=_n4_key(case, k, n))
        if normalize:
            try:
                name = str(path) if own_file or n == 1 else f"{path} channel {k}"
                channel = normalize_volume(channel, low_pct, high_pct, name=name)
            except ImageError as exc:
                raise DatasetError(str(exc), [CaseIssue(case.case_id, path, str(exc))]) from None
        out[k] = channel
    return out


def load_case(
    case: Case,
    n4: bool = False,
    cache_dir: str | os.PathLike | None = None,
    axis: int = 0,
    *,
    n_classes: int | None = None,
    normalize: bool = True,
    low_pct: float = 0.5,
    high_pct: float = 99.5,
    spec: DatasetSpec | None = None,
) -> CaseArrays:
    """Read, check and preprocess one case, as used for training and evaluation.

    Parameters
    ----------
    case : Case
    n4 : bool
        Apply :func:`n4_correct` to each channel (cached in ``cache_dir`` when given).
    cache_dir : path, optional
    axis : int
        Slicing axis, moved first in the output (ignored for 2D images).
    n_classes : int, optional
        When given, label values must lie in ``0 .. n_classes - 1``.
    normalize, low_pct, high_pct
        Apply :func:`normalize_volume` with these percentiles, each channel on its own.
    spec : DatasetSpec, optional
        The case's data set (its class and channel counts are checked).

    Returns
    -------
    CaseArrays
        ``image`` float32 ``(C, S, H, W)``, ``labels`` ``(S, H, W)`` uint8 (int32
        beyond 256 classes); ``S = 1`` for a 2D image.

    Raises
    ------
    DatasetError
        Listing every problem of the case by file name.
    """
    read = read_and_check(case, n_classes, spec=spec)
    if read.issues:
        raise DatasetError(issue_message(read.issues, 1), read.issues)
    img = preprocess_case(case, read.image, n4=n4, cache_dir=cache_dir, normalize=normalize,
                          low_pct=low_pct, high_pct=high_pct)
    img_s = np.stack([slice_volume(channel, None, axis)[0] for channel in img])
    lab_s = slice_volume(read.labels, None, axis)[0]
    return CaseArrays(np.ascontiguousarray(img_s), np.ascontiguousarray(lab_s))


def load_case_with(case: Case, normalization: dict, axis: int, *, spec: DatasetSpec | None = None) -> CaseArrays:
    """One case preprocessed as a checkpoint's ``normalization`` header says.

    Returns
    -------
    CaseArrays
        float32 image ``(C, S, H, W)`` and int64 labels ``(S, H, W)``, sliced along
        ``axis`` (slices first).
    """
    image, labels = load_case(case, axis=axis, n4=bool(normalization.get("n4", False)),
                              low_pct=normalization.get("low", 0.5), high_pct=normalization.get("high", 99.5),
                              spec=spec)
    return CaseArrays(np.asarray(image, np.float32), np.asarray(labels).astype(np.int64))
