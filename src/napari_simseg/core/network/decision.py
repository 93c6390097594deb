"""Labels from class probabilities: the argmax, optionally with per-class decision offsets.

The network is trained with a class-weighted focal loss (dataset-wide weights, paper
section 4.3), which pushes it towards the rarer foreground classes, so its argmax can
over-segment them. A *decision offset* per class corrects that bias where labels are
decided::

    labels = argmax_c( log p_c + offset_c )

``offset_0 = 0`` (only differences matter); a negative offset makes a class harder to
win. Offsets are fitted by :mod:`~napari_simseg.core.jobs.calibration` and stored in the
checkpoint. This is the one place labels are decided, for numpy arrays (the session,
calibration) and torch tensors (the batched rounds of training, evaluation and
calibration) alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["active_offsets", "decide_labels", "log_probabilities"]


def active_offsets(offsets: Sequence[float] | None, n_classes: int) -> np.ndarray | None:
    """``offsets`` as float32, or ``None`` when they change nothing (absent or all zero).

    Raises
    ------
    ValueError
        If there is not one offset per class.
    """
    if offsets is None:
        return None
    off = np.asarray(offsets, np.float32).reshape(-1)
    if off.size != n_classes:
        raise ValueError(f"{off.size} decision offsets for {n_classes} classes")
    return off if np.any(off) else None


def decide_labels(scores, offsets: Sequence[float] | None = None, axis: int = 0,
                  log: bool = False):
    """Labels from class probabilities (or log-probabilities), with optional offsets.

    Parameters
    ----------
    scores : ndarray or torch.Tensor
        Probabilities (``log=False``) or log-probabilities (``log=True``) with the
        classes along ``axis``.
    offsets : sequence of float, optional
        One offset per class added to ``log p`` before the argmax; ``None`` (or all
        zeros) is the plain argmax.
    axis : int
        The class axis.
    log : bool
        Whether ``scores`` already are log-probabilities.

    Returns
    -------
    ndarray or torch.Tensor of int64
        ``scores`` without ``axis``, of the same kind as ``scores``.
    """
    is_numpy = isinstance(scores, np.ndarray) or not hasattr(scores, "detach")
    if is_numpy:
        scores = np.asarray(scores)
    off = active_offsets(offsets, scores.shape[axis])
    if off is None:
        return scores.argmax(axis) if is_numpy else scores.argmax(dim=axis)
    shape = [1] * scores.ndim
    shape[axis] = -1
    if is_numpy:
        with np.errstate(divide="ignore"):
            logp = scores.astype(np.float32, copy=False) if log else np.log(scores.astype(np.float32, copy=False))
        return (logp + off.reshape(shape)).argmax(axis=axis)
    import torch

    logp = scores.float() if log else torch.log(scores.float())
    return (logp + torch.from_numpy(off).to(logp.device).view(shape)).argmax(dim=axis)


def log_probabilities(probabilities, offsets: Sequence[float] | None = None, axis: int = 0):
    """``log p + offset`` per class: the scores whose argmax :func:`decide_labels` takes
    (numpy or torch; probabilities clamped at 1e-12 so that a zero is a large negative
    score, not ``-inf``)."""
    is_numpy = isinstance(probabilities, np.ndarray) or not hasattr(probabilities, "detach")
    off = active_offsets(offsets, probabilities.shape[axis])
    shape = [1] * probabilities.ndim
    shape[axis] = -1
    if is_numpy:
        logp = np.log(np.maximum(np.asarray(probabilities, np.float32), 1e-12))
        return logp if off is None else logp + off.reshape(shape)
    import torch

    logp = torch.log(probabilities.float().clamp_min(1e-12))
    return logp if off is None else logp + torch.from_numpy(off).to(logp.device).view(shape)
