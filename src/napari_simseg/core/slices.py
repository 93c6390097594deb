"""Torch datasets of 2D training slices cut from preprocessed labelled volumes."""

from __future__ import annotations

import copy
import os
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .augmentation import Augmenter
from .datasets import (ON_ERROR_CHOICES, CaseArrays, CaseIssue, DatasetError, DatasetSpec,
                       apply_error_policy, issue_message, largest_slice_shape, preprocess_case,
                       read_and_check)
from .memory import check_context_slices
from .preprocessing import context_stack, pad_to_multiple, slice_volume

__all__ = ["MultiAxisSlices", "SliceDataset"]


# --------------------------------------------------------------------------- torch dataset


class SliceDataset(torch.utils.data.Dataset):
    """2D slices of preprocessed labelled volumes, for training and validation.

    Every volume is read, checked, (optionally) N4-corrected and normalised once at
    construction and kept in memory (image float32, labels uint8); items are the
    slices along ``axis``, augmented (when an :class:`Augmenter` is given) and then
    padded to ``target_shape``.

    Parameters
    ----------
    spec : DatasetSpec
    case_ids : iterable of str, optional
        Cases to use (e.g. ``split["train"]``); all when ``None``.
    axis : int
        Slicing axis (0 = Z).
    target_shape : (H, W), optional
        Padding target; defaults to :func:`largest_slice_shape` of the *whole* data
        set, so train and validation sets get the same size.
    multiple : int
        Rounding of the default target.
    augmenter : Augmenter, optional
        Training augmentation; ``None`` for validation.
    normalize, low_pct, high_pct
        Per-volume :func:`normalize_volume`.
    n4 : bool
        Apply :func:`n4_correct` before normalisation.
    cache_dir : path, optional
        N4 cache folder.
    on_error : {"stop", "skip"}
        What to do with unusable cases (see :func:`check_dataset`); skipped ones are
        in :attr:`skipped` and their problems in :attr:`issues`.
    pad_value : float
        Image fill value of the padding (labels are padded with 0 = background).
    seed : int
        Base seed of the augmentation; item ``i`` of epoch ``e`` uses
        ``numpy.random.default_rng([seed, e, i])``.
    context_slices : int
        k neighbouring slices on each side stacked after the slice (see
        :func:`context_stack`); items' ``image`` is then ``(1 + 2k, H, W)``.

    Notes
    -----
    Call :meth:`set_epoch` at the start of each epoch to vary the augmentation
    reproducibly.  With ``DataLoader(num_workers > 0)`` keep
    ``persistent_workers=False`` (the default) so workers see the new epoch.

    Items are dicts ``{"image": float32 tensor (1 + 2k, H, W), "labels": int64 tensor
    (H, W), "case_id": str, "slice_index": int, "crop": int64 tensor (4,)}``; ``crop``
    holds ``(y0, y1, x0, x1)`` of the unpadded slice (see :class:`CropBox`).
    """

    def __init__(
        self,
        spec: DatasetSpec,
        case_ids: Iterable[str] | None = None,
        *,
        axis: int = 0,
        target_shape: Sequence[int] | None = None,
        multiple: int = 32,
        augmenter: Augmenter | None = None,
        normalize: bool = True,
        low_pct: float = 0.5,
        high_pct: float = 99.5,
        n4: bool = False,
        cache_dir: str | os.PathLike | None = None,
        on_error: str = "stop",
        pad_value: float = 0.0,
        seed: int = 0,
        context_slices: int = 0,
    ):
        check_context_slices(context_slices)
        self.context_slices = int(context_slices)
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be 'stop' or 'skip'; got {on_error!r}")
        self.spec = spec
        self.class_names = list(spec.class_names)
        self.axis = axis
        self.augmenter = augmenter
        self.pad_value = float(pad_value)
        self.seed = int(seed)
        self.epoch = 0
        cases = spec.get_cases(case_ids)
        self.images: dict[str, np.ndarray] = {}
        self.labels: dict[str, np.ndarray] = {}
        issues: list[CaseIssue] = []
        for case in cases:
            image, labels, case_issues = read_and_check(case, spec.n_classes)
            if not case_issues:
                try:
                    img = preprocess_case(case, image.array, n4=n4, cache_dir=cache_dir, normalize=normalize,
                                      low_pct=low_pct, high_pct=high_pct)
                except DatasetError as exc:
                    case_issues = [CaseIssue(case.case_id, case.image_path, str(exc))]
            if case_issues:
                issues += case_issues
                continue
            img_s, lab_s = slice_volume(img, labels, axis)
            self.images[case.case_id] = np.ascontiguousarray(img_s, dtype=np.float32)
            self.labels[case.case_id] = np.ascontiguousarray(lab_s)
        apply_error_policy(issues, len(cases), on_error)
        bad = {i.case_id for i in issues}
        self.issues = issues
        self.skipped = [c for c in cases if c.case_id in bad]
        self.cases = [c for c in cases if c.case_id not in bad]
        if not self.cases:
            detail = f":\n{issue_message(issues, len(cases))}" if issues else ""
            raise DatasetError(f"no usable case among the {len(cases)} requested{detail}", issues)
        if target_shape is None:
            target_shape = largest_slice_shape(spec, axis=axis, multiple=multiple)
        self.target_shape = (int(target_shape[0]), int(target_shape[1]))
        self._index_slices()

    def _index_slices(self) -> None:
        """Check every slice against ``target_shape`` and list ``(case_id, k)`` items."""
        th, tw = self.target_shape
        too_big = [
            f"{cid} {img.shape[1:]}" for cid, img in self.images.items()
            if img.shape[1] > th or img.shape[2] > tw
        ]
        if too_big:
            raise DatasetError(
                f"slices larger than target_shape {self.target_shape}: {', '.join(too_big[:10])}; "
                "use largest_slice_shape(spec) or a larger target"
            )
        self.index: list[tuple[str, int]] = [
            (c.case_id, k) for c in self.cases for k in range(self.images[c.case_id].shape[0])
        ]

    def along(self, axis: int) -> "SliceDataset":
        """The same loaded volumes sliced along ``axis`` instead.

        Nothing is read or preprocessed again: the arrays are views of this dataset's
        (no extra memory); every other setting is shared. Slices must still fit
        ``target_shape``.
        """
        other = copy.copy(self)
        other.axis = axis
        other.images, other.labels = {}, {}
        for cid, img in self.images.items():
            volume, labels = np.moveaxis(img, 0, self.axis), np.moveaxis(self.labels[cid], 0, self.axis)
            other.images[cid], other.labels[cid] = slice_volume(volume, labels, axis)
        other._index_slices()
        return other

    @property
    def n_classes(self) -> int:
        """Number of classes, background included."""
        return len(self.class_names)

    @property
    def case_ids(self) -> list[str]:
        """Identifiers of the cases loaded (skipped ones excluded)."""
        return [c.case_id for c in self.cases]

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.index)

    def volume(self, case_id: str) -> CaseArrays:
        """Preprocessed, unpadded, unaugmented ``(image, labels)`` of a case, slicing axis first."""
        return CaseArrays(self.images[case_id], self.labels[case_id])

    def __getitem__(self, idx: int) -> dict[str, Any]:
        if not -len(self) <= idx < len(self):
            raise IndexError(f"index {idx} out of range for {len(self)} slices")
        idx = int(idx) % len(self)
        case_id, k = self.index[idx]
        if self.context_slices:
            image = context_stack(self.images[case_id], k, self.context_slices)
        else:
            image = self.images[case_id][k]
        labels = self.labels[case_id][k]
        if self.augmenter is not None:
            rng = np.random.default_rng([self.seed, self.epoch, idx])
            image, labels = self.augmenter(image, labels, rng)
        image, box = pad_to_multiple(image, target=self.target_shape, value=self.pad_value)
        labels, _ = pad_to_multiple(labels, target=self.target_shape, value=0)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32).reshape(-1, *labels.shape)),
            "labels": torch.from_numpy(labels.astype(np.int64)),
            "case_id": case_id,
            "slice_index": k,
            "crop": torch.tensor(tuple(box), dtype=torch.int64),
        }

    def class_pixel_counts(self) -> np.ndarray:
        """Voxel count of each class over all loaded label volumes.

        Counts are taken on the original (unpadded, unaugmented) label volumes, so
        padding does not inflate the background count.

        Returns
        -------
        numpy.ndarray of int64, shape (n_classes,)
        """
        counts = np.zeros(self.n_classes, dtype=np.int64)
        for lab in self.labels.values():
            counts += np.bincount(lab.ravel(), minlength=self.n_classes)[: self.n_classes].astype(np.int64)
        return counts


class MultiAxisSlices(torch.utils.data.ConcatDataset):
    """The slices of the same volumes along several axes, as one training set.

    Multi-planar training: a 2D network sees each volume cut along every axis in
    ``parts``, up to three times the slices of one axis, for data sets too small for
    the network (``TrainConfig.train_axes``). Items are those of the parts, in order;
    validation and inference stay on one axis.

    Parameters
    ----------
    parts : sequence of SliceDataset
        The same cases and ``target_shape``, each along a different ``axis`` (e.g. one
        dataset and its :meth:`SliceDataset.along` the other axes).
    """

    def __init__(self, parts: Sequence[SliceDataset]):
        parts = list(parts)
        if not parts:
            raise ValueError("MultiAxisSlices needs at least one SliceDataset")
        first = parts[0]
        for p in parts[1:]:
            if p.case_ids != first.case_ids or tuple(p.target_shape) != tuple(first.target_shape):
                raise ValueError("MultiAxisSlices parts must hold the same cases padded to the same shape")
        if len({p.axis for p in parts}) != len(parts):
            raise ValueError(f"MultiAxisSlices parts must slice along different axes, "
                             f"got {[p.axis for p in parts]}")
        super().__init__(parts)
        self.parts = parts

    @property
    def case_ids(self) -> list[str]:
        """Identifiers of the cases (the same in every part)."""
        return self.parts[0].case_ids

    @property
    def axes(self) -> list[int]:
        return [p.axis for p in self.parts]

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` in every part."""
        for p in self.parts:
            p.set_epoch(epoch)

    def class_pixel_counts(self) -> np.ndarray:
        """Voxel count of each class (the volumes are the same along every axis)."""
        return self.parts[0].class_pixel_counts()
