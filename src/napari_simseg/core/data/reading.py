"""Reading and checking one case: every file read once, every problem listed by its file.

:func:`read_and_check` reads a case's image channels and its labels (or merges its class
masks, the smaller structure winning where they overlap), resamples an image on a grid
an integer factor away from the labels' and returns a :class:`CaseRead` with what it
found: the arrays, notes for the user and the problems by file. :func:`check_dataset`
does it for every case and applies ``on_error`` (stop, or skip the unusable cases).
The rules are documented in :mod:`~napari_simseg.core.data.datasets`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_simseg.core.data.cases import Case, CaseIssue, DatasetError, DatasetSpec
from napari_simseg.core.imaging.preprocessing import is_constant
from napari_simseg.core.io.colour import is_colour_names
from napari_simseg.core.io.images import ImageReadError, Volume, read_channels, read_image, split_extension

__all__ = ["MAX_RESAMPLE_FACTOR", "ON_ERROR_CHOICES", "CaseRead", "CheckReport", "apply_error_policy", "check_case",
           "check_dataset", "issue_message", "read_and_check"]

logger = logging.getLogger(__name__)

ON_ERROR_CHOICES = ("stop", "skip")

#: The largest integer factor per axis by which an image is resampled to its label grid.
MAX_RESAMPLE_FACTOR = 8


# --------------------------------------------------------------------------- reading


@dataclass
class CaseRead:
    """One case read from disk and checked (see :func:`read_and_check`).

    Attributes
    ----------
    case : Case
    image : numpy.ndarray or None
        float32 ``(C, *spatial)`` on the label grid (resampled when needed); ``None``
        when an image file has a problem.
    labels : numpy.ndarray or None
        ``spatial`` integer labels (uint8, int32 beyond 256 classes); ``None`` when
        a label or mask file has a problem.
    spacing : tuple of float or None
        Voxel size of the label grid (as the label file, or the first mask, states
        it), numpy axis order.
    image_shape : tuple of int or None
        Spatial shape of the image files, before any resampling.
    notes : list of str
        What was done that a user should know (grey RGB converted, image
        resampled, a class without mask ...), without the case id.
    issues : list of CaseIssue
        Why the case cannot be used, by file; empty when it can.
    overlaps : dict
        Mask layout: ``{(class_a, class_b): pixels}`` where both masks are in (the
        smaller structure wins there); only pairs that overlap.
    label_max : int or None
        The largest label value of the label file, also when it is out of the declared
        classes (``None`` before the labels are read, or for masks).
    """

    case: Case
    image: np.ndarray | None = None
    labels: np.ndarray | None = None
    spacing: tuple[float, ...] | None = None
    image_shape: tuple[int, ...] | None = None
    notes: list[str] = field(default_factory=list)
    issues: list[CaseIssue] = field(default_factory=list)
    overlaps: dict[tuple[str, str], int] = field(default_factory=dict)
    label_max: int | None = None

    def problem(self, path: Path, reason: str) -> None:
        """Add an issue about ``path``."""
        self.issues.append(CaseIssue(self.case.case_id, Path(path), reason))


def _label_dtype(n_classes: int) -> np.dtype:
    return np.dtype(np.uint8) if n_classes <= 256 else np.dtype(np.int32)


def _pixel_problem(arr: np.ndarray) -> str | None:
    """Why an image's pixels cannot be used (None when they can)."""
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        return f"unsupported pixel type {arr.dtype}"
    bad = arr.size - int(np.count_nonzero(np.isfinite(arr))) if arr.dtype.kind == "f" else 0
    if bad:
        return f"contains {bad} NaN or infinite voxel(s)"
    if arr.size == 0 or arr.min() == arr.max():
        return f"image is constant (every voxel is {arr.flat[0] if arr.size else 'n/a'})"
    return None


def _channel_names(spec: DatasetSpec | None, n: int) -> list[str]:
    if spec is not None and spec.n_channels == n:
        return list(spec.channel_names)
    return ["image"] if n == 1 else [f"channel_{k}" for k in range(n)]


def _read_image_channels(read: CaseRead, spec: DatasetSpec | None,
                         blocked: set[Path]) -> list[tuple[Volume, Path]] | None:
    """Every channel of the case as ``(volume, file)``; None after a problem."""
    case = read.case
    channels: list[tuple[Volume, Path]] = []
    n_before = len(read.issues)
    for path in case.image_paths:
        if path in blocked:
            continue
        try:
            volumes = read_channels(path)
        except ImageReadError as exc:
            read.problem(path, exc.reason)
            continue
        for v in volumes:
            read.notes += v.metadata.get("notes", [])
            channels.append((v, path))
    if len(read.issues) > n_before or any(p in blocked for p in case.image_paths):
        return None
    if spec is not None and is_colour_names(spec.channel_names) and len(channels) == 1:
        read.notes.append("a grey picture in a set of colour pictures: its grey is each of red, green and blue")
        channels = channels * 3
    if spec is not None and len(channels) != spec.n_channels:
        where = " (along its last axis)" if len(case.image_paths) == 1 else ""
        read.problem(case.image_path, f"{len(channels)} image channel(s){where}, the data set has "
                                      f"{spec.n_channels} ({', '.join(spec.channel_names)})")
        return None
    names = _channel_names(spec, len(channels))
    first, first_path = channels[0]
    constant = [is_constant(v.array) for v, _ in channels] if len(channels) > 1 else [False]
    for k, (v, path) in enumerate(channels):
        which = f"channel '{names[k]}': " if len(channels) > 1 else ""
        if v.shape != first.shape:
            read.problem(path, f"{which}shape {v.shape} differs from {first.shape} of channel "
                               f"'{names[0]}' ({first_path.name})")
        elif len(channels) > 1 and constant[k] and not all(constant):
            read.notes.append(f"{which}constant: given to the network as zeros (the other channels vary)")
        elif (reason := _pixel_problem(v.array)) is not None:
            read.problem(path, which + reason)
    return None if len(read.issues) > n_before else channels


def _integer_labels(read: CaseRead, labels: np.ndarray, path: Path, n_classes: int | None) -> np.ndarray | None:
    """The labels as uint8/int32 once their values are checked; None after a problem."""
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all() or not np.array_equal(labels, np.round(labels)):
            read.problem(path, "label values are not all integers")
            return None
    elif labels.dtype.kind not in "iub":
        read.problem(path, f"unsupported label pixel type {labels.dtype}")
        return None
    values = np.unique(labels)
    read.label_max = int(values.max()) if values.size else None
    limit = n_classes if n_classes is not None else np.inf
    outside = values[(values < 0) | (values >= limit)]
    if outside.size:
        shown = ", ".join(str(int(v)) for v in outside[:10]) + (" ..." if outside.size > 10 else "")
        read.problem(path, f"label value(s) {shown} outside the {n_classes} declared classes "
                           f"(0..{n_classes - 1})")
        return None
    if values.size and values.max() >= 2**31:
        read.problem(path, f"label value {int(values.max())} too large")
        return None
    top = int(values.max()) + 1 if values.size else 1
    return labels.astype(_label_dtype(max(top, n_classes or 0)), copy=False)


def _mask_inside(mask: np.ndarray, path: Path, read: CaseRead) -> np.ndarray:
    """A binary mask's inside: every non-zero pixel, or for a lossy JPEG mask (whose
    compression rings around both values) every pixel above half its foreground value, the
    most common non-zero value (255 for 0/255 masks, 1 for 0/1 masks)."""
    if split_extension(path)[1] not in (".jpg", ".jpeg") or not np.any(mask):
        return mask != 0
    values, counts = np.unique(mask[mask != 0], return_counts=True)
    foreground = float(values[np.argmax(counts)])
    if len(values) > 1:
        read.notes.append("JPEG mask: pixels above half its foreground value taken as inside (lossy compression)")
    return mask > foreground / 2


def _merge_masks(read: CaseRead) -> tuple[np.ndarray, Path, tuple[float, ...]] | None:
    """One label image from the case's class masks (the smaller structure wins where they
    overlap, the later class at equal size); None after a problem."""
    case = read.case
    inside: dict[str, np.ndarray] = {}
    grid_path: Path | None = None
    n_before = len(read.issues)
    for name, path in case.mask_paths:
        if path is None:
            read.notes.append(f"no mask for class '{name}': empty there")
            continue
        try:
            volume = read_image(path, labels=True)
        except ImageReadError as exc:
            read.problem(path, exc.reason)
            continue
        read.notes += volume.metadata.get("notes", [])
        if not np.issubdtype(volume.array.dtype, np.number):
            read.problem(path, f"unsupported mask pixel type {volume.array.dtype}")
            continue
        if grid_path is None:
            grid_path, grid, spacing = path, volume.shape, volume.spacing
        elif volume.shape != grid:
            read.problem(path, f"mask shape {volume.shape} differs from {grid} of "
                               f"{grid_path.parent.name}/{grid_path.name} "
                               f"(the class masks of one case share one grid)")
            continue
        inside[name] = _mask_inside(volume.array, path, read)
    if len(read.issues) > n_before:
        return None
    if grid_path is None:
        read.problem(case.image_path, "no mask file for any class")
        return None
    labels = np.zeros(grid, _label_dtype(len(case.mask_paths) + 1))
    names = [name for name, _ in case.mask_paths]
    # the largest structure is painted first, so the smaller one wins where masks overlap
    # (a clavicle over a lung keeps its shape; nested masks nest in any class order)
    order = sorted((-int(np.count_nonzero(inside[n])), value, n)
                   for value, n in enumerate(names, start=1) if n in inside)
    for _, value, name in order:
        labels[inside[name]] = value
    present = [n for n in names if n in inside]
    for i, a in enumerate(present):
        for b in present[i + 1:]:
            n = int(np.count_nonzero(inside[a] & inside[b]))
            if n:
                read.overlaps[(a, b)] = n
    return labels, grid_path, spacing


def _grid_factors(image_shape: Sequence[int], label_shape: Sequence[int]) -> list[int] | None:
    """Per axis: 1 (same size), k (image k times larger), -k (k times smaller); None otherwise."""
    if len(image_shape) != len(label_shape):
        return None
    factors = []
    for i, n in zip(image_shape, label_shape):
        if i == n:
            factors.append(1)
        elif n and i % n == 0 and i // n <= MAX_RESAMPLE_FACTOR:
            factors.append(i // n)
        elif i and n % i == 0 and n // i <= MAX_RESAMPLE_FACTOR:
            factors.append(-(n // i))
        else:
            return None
    return factors


def _block_mean(array: np.ndarray, axis: int, k: int) -> np.ndarray:
    """Shrink ``axis`` by ``k``: each output pixel is the mean of the ``k`` it covers."""
    a = np.moveaxis(array, axis, -1)
    a = a.reshape(*a.shape[:-1], a.shape[-1] // k, k).mean(axis=-1)
    return np.moveaxis(a, -1, axis)


def _linear_upsample(array: np.ndarray, axis: int, k: int) -> np.ndarray:
    """Grow ``axis`` by ``k`` with linear interpolation between pixel centres (edges held)."""
    n = array.shape[axis]
    pos = np.clip((np.arange(n * k) + 0.5) / k - 0.5, 0, n - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    shape = [1] * array.ndim
    shape[axis] = n * k
    w = (pos - lo).reshape(shape)
    return np.take(array, lo, axis=axis) * (1 - w) + np.take(array, hi, axis=axis) * w


def _resample(image: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """A ``(C, *spatial)`` image brought to the label grid by :func:`_grid_factors`' factors."""
    out = image.astype(np.float64)
    for axis, f in enumerate(factors, start=1):
        if f > 1:
            out = _block_mean(out, axis, f)
        elif f < -1:
            out = _linear_upsample(out, axis, -f)
    return out.astype(np.float32)


def _resample_note(image_shape: tuple, label_shape: tuple, factors: Sequence[int]) -> str:
    methods = [m for m, used in (("block mean", any(f > 1 for f in factors)),
                                 ("linear interpolation", any(f < -1 for f in factors))) if used]
    scale = " x ".join(f"1/{f}" if f > 1 else str(-f) if f < -1 else "1" for f in factors)
    return (f"image {'x'.join(map(str, image_shape))} resampled to the {'x'.join(map(str, label_shape))} "
            f"label grid ({' and '.join(methods)}, scale {scale})")


def read_and_check(case: Case, n_classes: int | None = None, *, spec: DatasetSpec | None = None) -> CaseRead:
    """Read a case and check that it can be used, without raising.

    Reads every channel (a 4D file gives its channels) and the labels (the label
    image, or the class masks merged); checks that the files can be read, that each
    channel is finite and not constant, that the channels share one grid, that the
    label values are integers in ``0 .. n_classes - 1``, and that the image grid
    matches the label grid or differs by an integer factor per axis (the image is
    then resampled to the label grid).

    Parameters
    ----------
    case : Case
    n_classes : int, optional
        Number of declared classes (``spec.n_classes`` when a spec is given).
    spec : DatasetSpec, optional
        The case's data set: the number of channels is then checked too.

    Returns
    -------
    CaseRead
        ``issues`` is empty when the case is usable; ``image`` is then float32
        ``(C, *spatial)`` on the label grid.
    """
    if n_classes is None and spec is not None:
        n_classes = spec.n_classes
    read = CaseRead(case)
    for path, reason in case.problems:
        read.problem(path, reason)
    blocked = {path for path, _ in case.problems}
    channels = _read_image_channels(read, spec, blocked)
    if case.label_path is None:
        merged = _merge_masks(read)
    elif case.label_path in blocked:
        merged = None
    else:
        try:
            volume = read_image(case.label_path, labels=True)
            read.notes += volume.metadata.get("notes", [])
            merged = volume.array, case.label_path, volume.spacing
        except ImageReadError as exc:
            read.problem(case.label_path, exc.reason)
            merged = None
    labels = None if merged is None else _integer_labels(read, merged[0], merged[1], n_classes)
    if channels is not None:
        read.image_shape = channels[0][0].shape
    if merged is not None:
        read.spacing = tuple(float(s) for s in merged[2])  # the label grid's, as its file states it
    if channels is None or labels is None:
        read.notes = list(dict.fromkeys(read.notes))
        return read
    image = np.stack([v.array.astype(np.float32, copy=False) for v, _ in channels])
    factors = _grid_factors(image.shape[1:], labels.shape)
    if factors is None:
        what = "label" if case.label_path is not None else "mask"
        read.problem(merged[1], f"{what} shape {labels.shape} differs from image shape {image.shape[1:]} "
                                f"({case.image_path.name}) by no integer factor up to {MAX_RESAMPLE_FACTOR} "
                                "per axis; resample one of them")
    else:
        if any(f != 1 for f in factors):
            read.notes.append(_resample_note(image.shape[1:], labels.shape, factors))
            image = _resample(image, factors)
        read.image, read.labels = image, labels
    read.notes = list(dict.fromkeys(read.notes))
    return read


# --------------------------------------------------------------------------- checks


def check_case(case: Case, n_classes: int | None = None, *, spec: DatasetSpec | None = None) -> list[CaseIssue]:
    """Check that a case can be used for training, without raising.

    See :func:`read_and_check` for what is checked.

    Returns
    -------
    list of CaseIssue
        Empty when the case is usable; otherwise one entry per problem, naming the
        file.
    """
    return read_and_check(case, n_classes, spec=spec).issues


@dataclass
class CheckReport:
    """Outcome of :func:`check_dataset`: usable cases, skipped cases and why."""

    ok: list[Case]
    skipped: list[Case]
    issues: list[CaseIssue]


def issue_message(issues: Sequence[CaseIssue], n_total: int) -> str:
    """``"k of n case(s) cannot be used:"`` and one line per issue."""
    n_bad = len({i.case_id for i in issues})
    lines = "\n".join(f"  - {i}" for i in issues)
    return f"{n_bad} of {n_total} case(s) cannot be used:\n{lines}"


def apply_error_policy(issues: Sequence[CaseIssue], n_total: int, on_error: str) -> None:
    """Raise (``"stop"``) or warn (``"skip"``) about the issues found in ``n_total`` cases."""
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be 'stop' or 'skip'; got {on_error!r}")
    if not issues:
        return
    msg = issue_message(issues, n_total)
    if on_error == "stop":
        raise DatasetError(msg + "\nFix or remove these files, or leave them out with --on-error skip "
                           "(on_error='skip' in Python).", issues)
    logger.warning("%s\nThese cases are skipped.", msg)


def check_dataset(
    spec: DatasetSpec, case_ids: Iterable[str] | None = None, *, on_error: str = "stop"
) -> CheckReport:
    """Check every case (reads every file once).

    Parameters
    ----------
    spec : DatasetSpec
    case_ids : iterable of str, optional
        Cases to check; all when ``None``.
    on_error : {"stop", "skip"}
        ``"stop"`` raises :class:`DatasetError` listing every bad file and its
        reason; ``"skip"`` logs the same list as a warning and reports the bad
        cases in ``CheckReport.skipped``.

    Returns
    -------
    CheckReport
    """
    cases = spec.get_cases(case_ids)
    issues: list[CaseIssue] = []
    for c in cases:
        issues += check_case(c, spec=spec)
    apply_error_policy(issues, len(cases), on_error)
    bad = {i.case_id for i in issues}
    return CheckReport(
        ok=[c for c in cases if c.case_id not in bad],
        skipped=[c for c in cases if c.case_id in bad],
        issues=issues,
    )
