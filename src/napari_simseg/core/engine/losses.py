"""Training losses: multi-class focal loss and dataset-wide class weights.

The paper (section 5.1.1) counters class imbalance with the focal loss of Lin et al.
and precalculated per-class weights; :class:`FocalLoss` and
:func:`class_weights_from_counts` provide both. :class:`SoftDiceLoss` is an optional
extra term (trainer option ``dice_loss_weight``, 0 in the paper's recipes): the
weighted focal loss alone makes the network over-segment small structures, and a Dice
term optimises the overlap that the evaluation reports.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FocalLoss", "SoftDiceLoss", "FocalDiceLoss", "class_weights_from_counts"]


def _checked_target(logits: Tensor, target: Tensor) -> Tensor:
    """``target`` as int64 after checking it matches ``logits`` (B, N, *spatial)."""
    if logits.ndim < 2 or target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"logits (B, N, *spatial) and target (B, *spatial) do not match: "
            f"{tuple(logits.shape)} vs {tuple(target.shape)}"
        )
    return target if target.dtype == torch.long else target.long()


def _split_ignored(target: Tensor, ignore_index: int | None) -> tuple[Tensor | None, Tensor]:
    """``(valid, safe_target)``: the mask of counted pixels (``None``: all) and the
    target with ignored pixels set to class 0, so it can index and one-hot."""
    if ignore_index is None:
        return None, target
    valid = target != ignore_index
    return valid, torch.where(valid, target, torch.zeros_like(target))


class FocalLoss(nn.Module):
    """Multi-class focal loss on logits (Lin et al., 2017).

    For a pixel of true class ``t`` with predicted probability ``p_t``::

        FL = - w[t] * (1 - p_t) ** gamma * log(p_t)

    averaged over the pixels that are not ``ignore_index``.

    Parameters
    ----------
    class_weights : Tensor or sequence of float, shape (N,), optional
        Per-class weights ``w`` (the "alpha" of Lin et al.), e.g. from
        :func:`class_weights_from_counts`. None means all ones. Stored as a buffer,
        so ``.to(device)`` moves it with the module.
    gamma : float
        Focusing parameter, ``>= 0``. ``gamma = 0`` gives the cross-entropy.
    ignore_index : int, optional
        Target value whose pixels contribute neither loss nor gradient.

    Notes
    -----
    * Input: logits ``(B, N, H, W)`` (any trailing spatial dims) and int64 targets
      ``(B, H, W)``. The loss is computed in float32 from ``log_softmax`` with
      autocast disabled, so it is finite under fp16/bf16 autocast.
    * Reduction is the plain mean over the valid pixels, also when weights are
      given: with ``gamma = 0`` it equals
      ``F.cross_entropy(logits, target, weight=w, reduction="sum") / n_valid``,
      not PyTorch's weighted mean (which divides by the sum of the weights).
      Weights normalised to mean 1 keep the loss on the scale of the unweighted one.
    * With no valid pixel the loss is 0 (still attached to the graph).
    """

    def __init__(
        self,
        class_weights: Tensor | Sequence[float] | None = None,
        gamma: float = 2.0,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        if class_weights is not None:
            w = torch.as_tensor(class_weights, dtype=torch.float32).detach().clone()
            if w.ndim != 1:
                raise ValueError(f"class_weights must be 1D, got shape {tuple(w.shape)}")
            if not torch.isfinite(w).all() or (w < 0).any():
                raise ValueError("class_weights must be finite and non-negative")
            self.register_buffer("class_weights", w)
        else:
            self.class_weights = None

    def extra_repr(self) -> str:
        weighted = self.class_weights is not None
        return f"gamma={self.gamma}, ignore_index={self.ignore_index}, weighted={weighted}"

    def forward(self, logits: Tensor, target: Tensor, pixel_weights: Tensor | None = None) -> Tensor:
        """Mean focal loss.

        Parameters
        ----------
        logits : Tensor, shape (B, N, *spatial)
            Unnormalised class scores.
        target : Tensor of int64, shape (B, *spatial)
            Class indices in ``[0, N)`` or ``ignore_index``.
        pixel_weights : Tensor, shape (B, *spatial), optional
            A weight per pixel, multiplied in (the mean still divides by the number of
            valid pixels): the trainer's ``clicked_region_weight``.

        Returns
        -------
        Tensor
            Scalar float32 loss.
        """
        target = _checked_target(logits, target)
        n_classes = logits.shape[1]
        if self.class_weights is not None and self.class_weights.numel() != n_classes:
            raise ValueError(
                f"{self.class_weights.numel()} class weights for {n_classes} classes"
            )

        with torch.autocast(device_type=logits.device.type, enabled=False):
            logp = F.log_softmax(logits.float(), dim=1)
            valid, safe_target = _split_ignored(target, self.ignore_index)
            logpt = logp.gather(1, safe_target.unsqueeze(1)).squeeze(1)
            loss = -logpt
            if self.gamma != 0:
                pt = logpt.exp()
                # clamp guards against 1 - pt < 0 by rounding, which pow would turn into NaN
                loss = loss * (1.0 - pt).clamp_min(0.0).pow(self.gamma)
            if self.class_weights is not None:
                loss = loss * self.class_weights.to(loss.device)[safe_target]
            if pixel_weights is not None:
                if pixel_weights.shape != loss.shape:
                    raise ValueError(f"pixel_weights {tuple(pixel_weights.shape)} do not match the target "
                                     f"{tuple(loss.shape)}")
                loss = loss * pixel_weights.to(loss.device, loss.dtype)
            if valid is None:
                return loss.mean()
            n_valid = valid.sum()
            return (loss * valid).sum() / n_valid.clamp_min(1)


class SoftDiceLoss(nn.Module):
    """Soft multi-class Dice loss over the foreground classes, pooled over the batch.

    ``1 - mean_c (2 * sum(p_c * g_c) + s) / (sum(p_c) + sum(g_c) + s)`` for every class
    ``c`` except class 0 (background), with ``p`` the softmax probabilities, ``g`` the
    one-hot target and the sums over all valid pixels of the batch (batch pooling keeps
    slices without a class from dominating, as in nnU-Net's "batch Dice").

    Parameters
    ----------
    ignore_index : int, optional
        Target value of pixels left out of every sum (e.g. padding).
    smooth : float
        ``s`` above; keeps the loss finite and near 0 for a class absent from both the
        target and the prediction.
    include_background : bool
        Also average over class 0.
    """

    def __init__(self, ignore_index: int | None = None, smooth: float = 1.0,
                 include_background: bool = False) -> None:
        super().__init__()
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, got {smooth}")
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.smooth = float(smooth)
        self.include_background = bool(include_background)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean Dice loss over the (foreground) classes; scalar float32."""
        target = _checked_target(logits, target)
        n_classes = logits.shape[1]
        first = 0 if self.include_background else 1
        if n_classes - first < 1:
            raise ValueError("SoftDiceLoss needs at least one foreground class")
        with torch.autocast(device_type=logits.device.type, enabled=False):
            prob = F.softmax(logits.float(), dim=1)
            valid, safe_target = _split_ignored(target, self.ignore_index)
            onehot = F.one_hot(safe_target, n_classes).movedim(-1, 1).float()
            if valid is not None:
                mask = valid.unsqueeze(1).float()
                onehot, prob = onehot * mask, prob * mask
            dims = (0,) + tuple(range(2, logits.ndim))
            inter = (prob * onehot).sum(dims)[first:]
            total = (prob.sum(dims) + onehot.sum(dims))[first:]
            dice = (2 * inter + self.smooth) / (total + self.smooth).clamp_min(1e-12)
            return 1.0 - dice.mean()


class FocalDiceLoss(nn.Module):
    """``focal + dice_weight * soft Dice``: the trainer's loss when ``dice_loss_weight > 0``.

    Parameters
    ----------
    focal : FocalLoss
        The paper's loss.
    dice : SoftDiceLoss
        The extra overlap term.
    dice_weight : float
        Weight of the Dice term (> 0).
    """

    def __init__(self, focal: FocalLoss, dice: SoftDiceLoss, dice_weight: float) -> None:
        super().__init__()
        if not dice_weight > 0:
            raise ValueError(f"dice_weight must be > 0, got {dice_weight}")
        self.focal = focal
        self.dice = dice
        self.dice_weight = float(dice_weight)

    def forward(self, logits: Tensor, target: Tensor, pixel_weights: Tensor | None = None) -> Tensor:
        """Scalar float32 loss (``pixel_weights`` weigh the focal term's pixels)."""
        return self.focal(logits, target, pixel_weights) + self.dice_weight * self.dice(logits, target)


def class_weights_from_counts(
    counts: Sequence[float] | np.ndarray | Tensor,
    method: str = "inverse_frequency",
    normalize: bool = True,
) -> Tensor:
    """Per-class loss weights from dataset-wide pixel counts.

    Parameters
    ----------
    counts : array_like, shape (N,)
        Number of pixels of each class over the training set (non-negative).
    method : {"inverse_frequency", "inverse_sqrt_frequency", "median_frequency"}
        ``"inverse_frequency"``: ``w_c = 1 / f_c`` with ``f_c = counts_c / sum(counts)``.
        ``"inverse_sqrt_frequency"``: ``w_c = 1 / sqrt(f_c)``, a gentler balance (the
        trainer's default: with 1/f the background of a 97%-background data set weighs
        ~1/30 of a 3% class and the network over-segments the foreground).
        ``"median_frequency"`` (Eigen & Fergus): ``w_c = median(f) / f_c``, the median
        taken over the classes with a non-zero count (mean of the two middle
        values for an even number), so the median class gets 1.
        The two differ only by a constant factor, hence are identical once
        normalised; they differ when ``normalize=False``.
    normalize : bool
        If True, scale the weights so that their mean over the N classes is 1
        (``sum(w) == N``); this keeps the weighted loss on the scale of the
        unweighted one.

    Returns
    -------
    Tensor of float32, shape (N,)

    Warns
    -----
    UserWarning
        If a class has a zero count. It gets the largest weight of the counted
        classes (it is at least as rare as the rarest one seen), rather than 0,
        which would silently stop it from ever being learned should it occur.

    Raises
    ------
    ValueError
        For an unknown method, negative or non-finite counts, or all counts zero.
    """
    c = torch.as_tensor(counts).detach().to("cpu", torch.float64).flatten()
    methods = ("inverse_frequency", "inverse_sqrt_frequency", "median_frequency")
    if method not in methods:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(methods)}")
    if c.numel() == 0:
        raise ValueError("counts is empty")
    if not torch.isfinite(c).all() or (c < 0).any():
        raise ValueError(f"counts must be finite and non-negative, got {c.tolist()}")
    seen = c > 0
    if not seen.any():
        raise ValueError("all class counts are zero: cannot derive class weights")
    freq = c / c.sum()
    w = torch.zeros_like(c)
    w[seen] = 1.0 / freq[seen]
    if method == "inverse_sqrt_frequency":
        w[seen] = w[seen].sqrt()
    if method == "median_frequency":
        w[seen] = w[seen] * freq[seen].quantile(0.5)
    if not seen.all():
        missing = torch.nonzero(~seen).flatten().tolist()
        warnings.warn(
            f"classes {missing} have zero pixels in the counts; giving them the "
            f"largest weight of the other classes",
            UserWarning,
            stacklevel=2,
        )
        w[~seen] = w[seen].max()
    if normalize:
        w = w * (w.numel() / w.sum())
    return w.to(torch.float32)
