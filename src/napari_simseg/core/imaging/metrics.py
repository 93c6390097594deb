"""Segmentation metrics: per-class Dice and IoU, the RITM-style number of clicks, and what
one corrective round did to its slice.

Everything here is plain, vectorised numpy and works on label arrays of any
dimension (2D slices or reassembled 3D volumes).

Conventions
-----------
* Labels are integer class indices in ``[0, n_classes)``; class 0 is the background.
* The confusion matrix ``C`` has the ground truth along the rows and the prediction
  along the columns: ``C[i, j]`` is the number of pixels whose ground truth is ``i``
  and whose prediction is ``j`` (the scikit-learn convention).
* A class that is absent from **both** the prediction and the ground truth has an
  undefined Dice and IoU (0 / 0). It is reported as ``NaN`` so that ``np.nanmean``
  leaves it out of averages, instead of counting it as a perfect 1 or a failed 0.
  A class absent from the ground truth but present in the prediction scores 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "RoundChange",
    "clicked_regions",
    "confusion_counts",
    "dice_iou_from_confusion",
    "dice_iou_per_class",
    "noc",
    "round_change",
    "summarise_round_changes",
]


def _check_labels(arr: np.ndarray, name: str, n_classes: int) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= n_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{name} holds class index {bad}, outside [0, {n_classes}) "
                f"for n_classes={n_classes}"
            )
    return arr


def confusion_counts(pred: np.ndarray, gt: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrix of two label arrays, computed with one ``np.bincount``.

    Parameters
    ----------
    pred, gt : ndarray of int
        Predicted and ground-truth labels of identical shape, any dimension.
        Values must lie in ``[0, n_classes)``.
    n_classes : int
        Number of classes N, background included.

    Returns
    -------
    ndarray of int64, shape (N, N)
        ``C[i, j]`` = number of pixels with ground truth ``i`` predicted as ``j``.

    Raises
    ------
    ValueError
        If the shapes differ, ``n_classes < 1`` or a label lies outside the range.
    TypeError
        If an array is not of integer (or bool) dtype.
    """
    n_classes = int(n_classes)
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    pred_a = np.asarray(pred)
    gt_a = np.asarray(gt)
    if pred_a.shape != gt_a.shape:
        raise ValueError(f"pred and gt shapes differ: {pred_a.shape} vs {gt_a.shape}")
    pred_a = _check_labels(pred_a, "pred", n_classes)
    gt_a = _check_labels(gt_a, "gt", n_classes)
    flat = gt_a.ravel().astype(np.int64) * n_classes + pred_a.ravel().astype(np.int64)
    counts = np.bincount(flat, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes).astype(np.int64, copy=False)


def dice_iou_from_confusion(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class Dice and IoU from a confusion matrix (rows = gt, columns = pred).

    Confusion matrices of several slices or volumes can be summed first to get
    pooled (micro-averaged) scores.

    Parameters
    ----------
    confusion : ndarray, shape (N, N)

    Returns
    -------
    dice, iou : ndarray of float64, shape (N,)
        ``NaN`` for a class absent from both prediction and ground truth.
    """
    cm = np.asarray(confusion, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion must be a square 2D matrix, got shape {cm.shape}")
    tp = np.diag(cm)
    fn = cm.sum(axis=1) - tp
    fp = cm.sum(axis=0) - tp
    union = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        dice = np.where(union > 0, 2.0 * tp / (2.0 * tp + fp + fn), np.nan)
    return dice, iou


def dice_iou_per_class(
    pred: np.ndarray, gt: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class Dice and IoU of two label arrays of any dimension.

    Parameters
    ----------
    pred, gt : ndarray of int
        Predicted and ground-truth labels of identical shape (e.g. ``(H, W)`` or a
        reassembled ``(Z, H, W)`` volume).
    n_classes : int
        Number of classes N, background included.

    Returns
    -------
    dice, iou : ndarray of float64, shape (N,)
        ``dice[c] = 2|P∩G| / (|P|+|G|)`` and ``iou[c] = |P∩G| / |P∪G|``. A class
        absent from both arrays gets ``NaN`` (use ``np.nanmean`` to average); a
        class absent from ``gt`` only, or from ``pred`` only, gets 0.

    Examples
    --------
    >>> gt = np.array([[0, 1], [1, 1]])
    >>> pred = np.array([[0, 1], [0, 1]])
    >>> dice, iou = dice_iou_per_class(pred, gt, 3)
    >>> iou.round(3).tolist()[:2], bool(np.isnan(iou[2]))
    ([0.5, 0.667], True)
    """
    return dice_iou_from_confusion(confusion_counts(pred, gt, n_classes))


def noc(
    iou_curves: np.ndarray,
    thresholds: Sequence[float] | Iterable[float] = (0.85, 0.90),
    max_clicks: int = 20,
    gt_present: np.ndarray | None = None,
) -> dict[float, dict[str, list]]:
    """RITM-style number of clicks (NoC) needed to reach IoU thresholds, per class.

    Parameters
    ----------
    iou_curves : array_like, shape (S, R, N)
        IoU of each of ``S`` slices after each of ``R`` click rounds for each of
        ``N`` classes; round ``r`` (0-based) is the result after ``r + 1`` clicks.
        Only the first ``max_clicks`` rounds are used.
    thresholds : sequence of float
        IoU thresholds, e.g. ``(0.85, 0.90)`` for NoC@85 and NoC@90.
    max_clicks : int
        Click budget. A slice that never reaches the threshold within the budget
        (or within the ``R`` rounds available) counts ``max_clicks`` clicks and is
        a failure.
    gt_present : array_like of bool, shape (S, N), optional
        Whether each class is present in each slice's ground truth. Slice/class
        pairs where it is False are excluded from that class's mean and failure
        count. If omitted, a pair is excluded when its IoU curve holds any NaN:
        with :func:`dice_iou_per_class`, a class present in the ground truth always
        has a defined IoU, so NaN means it is absent. A class absent from the
        ground truth but wrongly predicted has IoU 0, not NaN, and is only excluded
        when ``gt_present`` is given, so pass it when you have it.

    Returns
    -------
    dict
        ``{threshold: {"mean": [N floats], "failures": [N ints], "n": [N ints]}}``
        with the mean number of clicks, the number of slices that never reached the
        threshold, and the number of slices counted, per class. A class with no
        slice counted has mean ``NaN``, 0 failures and ``n`` 0.

    Notes
    -----
    A failure is a slice that never reaches the threshold within the budget. This
    is stricter than RITM's ``NoC >= max_clicks`` count, which also counts a slice
    that first reaches the threshold exactly at click ``max_clicks``.
    """
    curves = np.asarray(iou_curves, dtype=np.float64)
    if curves.ndim != 3:
        raise ValueError(
            f"iou_curves must have shape (slices, rounds, classes), got {curves.shape}"
        )
    max_clicks = int(max_clicks)
    if max_clicks < 1:
        raise ValueError(f"max_clicks must be >= 1, got {max_clicks}")
    s, r, n = curves.shape
    curves = curves[:, :max_clicks, :]
    if gt_present is None:
        present = ~np.isnan(curves).any(axis=1)
    else:
        present = np.asarray(gt_present, dtype=bool)
        if present.shape != (s, n):
            raise ValueError(
                f"gt_present must have shape (slices, classes) = {(s, n)}, "
                f"got {present.shape}"
            )
    counted = present.sum(axis=0)

    out: dict[float, dict[str, list]] = {}
    for thr in thresholds:
        thr = float(thr)
        reached = curves >= thr  # NaN compares False
        ever = reached.any(axis=1)  # (S, N)
        if reached.shape[1]:
            first = np.argmax(reached, axis=1) + 1  # clicks to reach, valid where ever
        else:
            first = np.zeros((s, n), dtype=np.int64)
        clicks = np.where(ever, first, max_clicks).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(
                counted > 0, (clicks * present).sum(axis=0) / counted, np.nan
            )
        failures = (~ever & present).sum(axis=0)
        out[thr] = {
            "mean": [float(v) for v in mean],
            "failures": [int(v) for v in failures],
            "n": [int(v) for v in counted],
        }
    return out


@dataclass(frozen=True)
class RoundChange:
    """What one corrective round did to one slice (see :func:`round_change`).

    Attributes
    ----------
    errors_before, errors_after : int
        Mislabelled pixels of the slice before and after the round.
    clicked_errors : int
        Mislabelled pixels before the round in the regions the round's clicks point at.
    clicked_fixed : int
        How many of those are right after the round.
    """

    errors_before: int
    errors_after: int
    clicked_errors: int
    clicked_fixed: int

    @property
    def worse(self) -> bool:
        """The round left more mislabelled pixels in its slice than it found."""
        return self.errors_after > self.errors_before

    @property
    def removed(self) -> float:
        """Share of the slice's mislabelled pixels the round removed (negative: it added some)."""
        return (self.errors_before - self.errors_after) / self.errors_before if self.errors_before else 0.0

    @property
    def clicked_removed(self) -> float:
        """Share of the clicked regions' mislabelled pixels the round removed."""
        return self.clicked_fixed / self.clicked_errors if self.clicked_errors else 0.0


def clicked_regions(before: np.ndarray, gt: np.ndarray, clicks, connectivity: int = 1) -> np.ndarray:
    """The mislabelled regions a round's clicks point at: for a click of class ``c`` at pixel
    ``p``, the connected region of ``(gt == c) & (before != c)`` that holds ``p`` (nothing for
    a click on a pixel that was already right, or outside the slice).

    Parameters
    ----------
    before, gt : ndarray of int, shape (H, W)
        The labels shown before the round, and the ground truth.
    clicks : iterable of (label, y, x)
        ``Click`` objects work; pixel coordinates of the slice.
    connectivity : {1, 2}
        4- or 8-neighbourhood of the regions.

    Returns
    -------
    ndarray of bool, shape (H, W)

    Examples
    --------
    >>> gt = np.array([[1, 1, 0, 1]]); before = np.zeros((1, 4), int)
    >>> clicked_regions(before, gt, [(1, 0, 1)]).astype(int).tolist()
    [[1, 1, 0, 0]]
    """
    from scipy import ndimage

    before, gt = np.asarray(before), np.asarray(gt)
    if before.shape != gt.shape:
        raise ValueError(f"before and gt must have one shape; got {before.shape}, {gt.shape}")
    pointed = np.zeros(gt.shape, bool)
    structure = ndimage.generate_binary_structure(gt.ndim, connectivity)
    for click in clicks:
        label, y, x = (click.label, click.y, click.x) if hasattr(click, "label") else click
        y, x = int(round(float(y))), int(round(float(x)))
        if not (0 <= y < gt.shape[0] and 0 <= x < gt.shape[1]):
            continue
        wrong = (gt == int(label)) & (before != int(label))
        if not wrong[y, x] or pointed[y, x]:
            continue
        regions, _ = ndimage.label(wrong, structure)
        pointed |= regions == regions[y, x]
    return pointed


def round_change(before: np.ndarray, after: np.ndarray, gt: np.ndarray, clicks, connectivity: int = 1) -> RoundChange:
    """What a corrective round did to its slice.

    A click of class ``c`` at pixel ``p`` points at the connected region of
    ``(gt == c) & (before != c)`` that holds ``p`` (the region the evaluation user
    clicked into); a click on a pixel that was already right points at nothing.

    Parameters
    ----------
    before, after : ndarray of int, shape (H, W)
        The labels shown before and after the round.
    gt : ndarray of int, shape (H, W)
        Ground truth.
    clicks : iterable of (label, y, x)
        The round's clicks (``Click`` objects work), in pixel coordinates of the slice.
    connectivity : {1, 2}
        4- or 8-neighbourhood of the clicked regions.

    Returns
    -------
    RoundChange

    Examples
    --------
    >>> gt = np.array([[1, 1, 0, 0]]); before = np.array([[0, 0, 0, 1]]); after = np.array([[1, 1, 0, 1]])
    >>> ch = round_change(before, after, gt, [(1, 0, 0)])
    >>> (ch.errors_before, ch.errors_after, ch.clicked_errors, ch.clicked_fixed, ch.worse)
    (3, 1, 2, 2, False)
    """
    before, after, gt = np.asarray(before), np.asarray(after), np.asarray(gt)
    if not before.shape == after.shape == gt.shape:
        raise ValueError(f"before, after and gt must have one shape; got {before.shape}, {after.shape}, {gt.shape}")
    pointed = clicked_regions(before, gt, clicks, connectivity)
    return RoundChange(
        errors_before=int((before != gt).sum()),
        errors_after=int((after != gt).sum()),
        clicked_errors=int(pointed.sum()),
        clicked_fixed=int((pointed & (after == gt)).sum()),
    )


def summarise_round_changes(changes: Sequence[RoundChange]) -> dict:
    """Shares over many rounds: how many made their slice worse, and how much of the error
    they removed, in their slice and in the regions their clicks point at.

    ``removed`` and ``clicked_removed`` are means over rounds of each round's share;
    the ``_pooled`` figures divide the pixels removed over all rounds by the pixels
    mislabelled before them (large slices weigh more). Empty input gives ``n`` 0 and
    ``None`` for the rest.
    """
    n = len(changes)
    if not n:
        return {"n": 0, "worse": None, "removed": None, "removed_pooled": None,
                "clicked_removed": None, "clicked_removed_pooled": None}
    before = sum(c.errors_before for c in changes)
    clicked = sum(c.clicked_errors for c in changes)
    return {
        "n": n,
        "worse": round(sum(c.worse for c in changes) / n, 5),
        "removed": round(float(np.mean([c.removed for c in changes])), 5),
        "removed_pooled": round((before - sum(c.errors_after for c in changes)) / before, 5) if before else None,
        "clicked_removed": round(float(np.mean([c.clicked_removed for c in changes if c.clicked_errors]
                                               or [0.0])), 5),
        "clicked_removed_pooled": round(sum(c.clicked_fixed for c in changes) / clicked, 5) if clicked else None,
    }
