"""Torch datasets of 2D training slices cut from preprocessed labelled volumes."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_simseg.core.data.augmentation import Augmenter
from napari_simseg.core.data.datasets import (
    ON_ERROR_CHOICES,
    CaseArrays,
    CaseIssue,
    DatasetError,
    DatasetSpec,
    apply_error_policy,
    issue_message,
    load_case,
)
from napari_simseg.core.imaging.preprocessing import (
    context_stack,
    round_up,
    slice_volume,
)
from napari_simseg.core.imaging.transforms import Canvas, WorkingSize
from napari_simseg.core.interaction.memory import check_context_slices, prior_probabilities

__all__ = ["MultiAxisSlices", "SliceDataset", "SliceOptions", "split_slice_sets"]

logger = logging.getLogger(__name__)

# bump when the cached arrays' meaning changes
_CACHE_VERSION = 1


@dataclass
class SliceOptions:
    """How a :class:`SliceDataset` prepares its volumes and cuts its items.

    The first group decides what a volume becomes (and is part of the on-disk cache
    key); the second how items are cut from it.

    Attributes
    ----------
    axis : int
        Slicing axis (0 = Z).
    normalize, low_pct, high_pct
        Per-volume, per-channel :func:`~napari_simseg.core.imaging.preprocessing.normalize_volume`.
    n4 : bool
        Apply N4 bias-field correction before normalisation.
    working_size : int, optional
        Slices whose longest side exceeds it are shrunk to it (see
        :func:`~napari_simseg.core.imaging.preprocessing.working_scale`); ``None``: every slice
        at its own resolution.
    target_shape : (H, W), optional
        Padding target; defaults to the largest slice of the cases at the working
        resolution (or ``crop_size``), rounded up to ``multiple``. Call
        :meth:`SliceDataset.pad_to` to give train and validation sets one size.
    multiple : int
        Rounding of the default target.
    augmenter : Augmenter, optional
        Training augmentation; ``None`` for validation.
    pad_value : float
        Image fill value of the padding (labels are padded with 0 = background).
    pad_mode : {"constant", "edge"}
        ``"edge"``: images padded by repeating their border pixels (``pad_value`` unused).
    seed : int
        Base seed of the augmentation and the crops; item ``i`` of epoch ``e`` uses
        ``numpy.random.default_rng([seed, e, i])``.
    context_slices : int
        k neighbouring slices on each side stacked after the slice (see
        :func:`~napari_simseg.core.imaging.preprocessing.context_stack`); items' ``image`` is
        then ``(C (1 + 2k), H, W)``.
    crop_size : int, optional
        Training items are ``crop_size`` squares of the working-resolution slice,
        centred on a pixel of a random structure (foreground class) with probability
        ``foreground_crop``, anywhere otherwise: detail at the cost of a smaller
        image. ``None``: whole slices.
    foreground_crop : float
        See ``crop_size``.
    neighbour_prior : bool
        Items also hold ``"prior"``: :func:`~napari_simseg.core.interaction.memory.prior_probabilities`
        of the labels of a neighbouring slice (``z - 1`` or ``z + 1``, drawn per item;
        the one that exists at a volume's end), with the item's augmentation and crop,
        and ``"has_prior"`` (False for a volume of one slice, whose prior is zeros: a
        slice is never its own prior). For training with neighbour priors
        (``TrainConfig.prior_fraction``).
    """

    # what a volume becomes
    axis: int = 0
    normalize: bool = True
    low_pct: float = 0.5
    high_pct: float = 99.5
    n4: bool = False
    working_size: int | None = None
    # how items are cut
    target_shape: Sequence[int] | None = None
    multiple: int = 32
    augmenter: Augmenter | None = None
    pad_value: float = 0.0
    pad_mode: str = "constant"
    seed: int = 0
    context_slices: int = 0
    crop_size: int | None = None
    foreground_crop: float = 0.67
    neighbour_prior: bool = False

    def volume_settings(self) -> dict:
        """The fields that decide what a volume becomes (the cache key's)."""
        return {"axis": self.axis, "normalize": self.normalize, "low_pct": self.low_pct, "high_pct": self.high_pct,
                "n4": self.n4, "working_size": self.working_size}


class SliceDataset(torch.utils.data.Dataset):
    """2D slices of preprocessed labelled volumes, for training and validation.

    Every volume is read, checked, (optionally) N4-corrected, normalised per channel
    and resized to the working resolution once, at construction, and kept in memory
    (image float32 ``(C, S, h, w)``, labels uint8 ``(S, h, w)``); with ``cache_dir``
    these arrays are also cached on disk, so the next run on the same files and
    settings reads no image file at all. Items are the slices along ``axis``,
    augmented (when an :class:`Augmenter` is given), cut to ``crop_size`` (training)
    and padded to ``target_shape``.

    Parameters
    ----------
    spec : DatasetSpec
    case_ids : iterable of str, optional
        Cases to use (e.g. ``split["train"]``); all when ``None``.
    options : SliceOptions, optional
        How volumes are prepared and items cut (the defaults when not given).
    cache_dir : path, optional
        Folder for the N4 cache and the preprocessed arrays.
    on_error : {"stop", "skip"}
        What to do with unusable cases (see ``check_dataset``); skipped ones are in
        :attr:`skipped` and their problems in :attr:`issues`.

    Notes
    -----
    Call :meth:`set_epoch` at the start of each epoch to vary the augmentation
    reproducibly.  With ``DataLoader(num_workers > 0)`` keep
    ``persistent_workers=False`` (the default) so workers see the new epoch.

    Items are dicts ``{"image": float32 tensor (C (1 + 2k), H, W), "labels": int64
    tensor (H, W), "case_id": str, "slice_index": int, "crop": int64 tensor (4,)}``;
    ``crop`` holds ``(y0, y1, x0, x1)`` of the real (unpadded) pixels (see
    :class:`~napari_simseg.core.imaging.preprocessing.CropBox`).
    """

    def __init__(
        self,
        spec: DatasetSpec,
        case_ids: Iterable[str] | None = None,
        options: SliceOptions | None = None,
        *,
        cache_dir: str | os.PathLike | None = None,
        on_error: str = "stop",
    ):
        o = options or SliceOptions()
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be 'stop' or 'skip'; got {on_error!r}")
        self._take_item_options(o)
        self.neighbour_prior = bool(o.neighbour_prior)
        self.spec = spec
        self.class_names = list(spec.class_names)
        self.axis = o.axis
        self.working_size = o.working_size
        self.scales: dict[str, float] = {}
        cases = spec.get_cases(case_ids)
        self.images: dict[str, np.ndarray] = {}
        self.labels: dict[str, np.ndarray] = {}
        settings = o.volume_settings()
        issues: list[CaseIssue] = []
        for case in cases:
            try:
                image, labels, scale = _cached_case(case, spec, settings, cache_dir)
            except DatasetError as exc:
                issues += exc.issues or [CaseIssue(case.case_id, case.image_path, str(exc))]
                continue
            self.images[case.case_id], self.labels[case.case_id] = image, labels
            self.scales[case.case_id] = scale
        apply_error_policy(issues, len(cases), on_error)
        bad = {i.case_id for i in issues}
        self.issues = issues
        self.skipped = [c for c in cases if c.case_id in bad]
        self.cases = [c for c in cases if c.case_id not in bad]
        if not self.cases:
            detail = f":\n{issue_message(issues, len(cases))}" if issues else ""
            raise DatasetError(f"no usable case among the {len(cases)} requested{detail}", issues)
        if self.crop_size is not None and all(max(img.shape[-2:]) <= self.crop_size for img in self.images.values()):
            self.crop_size = None  # crops at least as large as every slice: whole slices
        target_shape = o.target_shape if o.target_shape is not None else self.largest_item_shape(o.multiple)
        self.target_shape = (int(target_shape[0]), int(target_shape[1]))
        self._index_slices()

    def _take_item_options(self, o: SliceOptions) -> None:
        """The options items are cut with (both constructors)."""
        check_context_slices(o.context_slices)
        self.context_slices = int(o.context_slices)
        self.augmenter = o.augmenter
        self.pad_value, self.pad_mode, self.seed, self.epoch = float(o.pad_value), str(o.pad_mode), int(o.seed), 0
        self.crop_size = None if o.crop_size is None else int(o.crop_size)
        self.foreground_crop = float(o.foreground_crop)

    @classmethod
    def from_arrays(cls, images: dict, labels: dict, class_names: Sequence[str], options: SliceOptions | None = None,
                    *, slices: dict | None = None) -> SliceDataset:
        """A dataset of volumes already in memory (e.g. what a user labelled in napari).

        Parameters
        ----------
        images : dict of str -> ndarray
            ``(C, S, H, W)`` float32 volumes, already normalised, per case id.
        labels : dict of str -> ndarray
            ``(S, H, W)`` integer labels per case id.
        options : SliceOptions, optional
            As for the constructor; of what a volume becomes only ``working_size`` applies
            (the volumes are sliced along their first axis, already normalised).
        slices : dict of str -> list of int, optional
            The labelled slices of each case: only these become items (their
            neighbours still feed the 2.5D context). All slices when not given.
        """
        from napari_simseg.core.data.layouts import Case

        o = options or SliceOptions()
        ds = cls.__new__(cls)
        ds._take_item_options(o)
        ds.axis, ds.working_size, ds.neighbour_prior = 0, o.working_size, False
        ds.class_names, ds.spec, ds.issues, ds.skipped = list(class_names), None, [], []
        ds.images, ds.labels, ds.scales = {}, {}, {}
        working_size = o.working_size
        for cid, image in images.items():
            lab = np.asarray(labels[cid])
            image = np.asarray(image, dtype=np.float32)
            grid = WorkingSize(lab.shape[-2:], working_size)
            image, lab = grid.transform(image, "image"), grid.transform(lab, "labels")
            ds.images[cid], ds.labels[cid] = np.ascontiguousarray(image), np.ascontiguousarray(lab)
            ds.scales[cid] = grid.scale
        ds.cases = [Case(cid, Path(cid), label_path=Path(cid)) for cid in images]  # in memory: no files
        ds.labelled = {cid: sorted(int(k) for k in ks) for cid, ks in (slices or {}).items()}
        ds.target_shape = tuple(o.target_shape) if o.target_shape is not None else ds.largest_item_shape(o.multiple)
        ds._index_slices()
        return ds

    @property
    def n_channels(self) -> int:
        """C, the image channels."""
        return next(iter(self.images.values())).shape[0]

    def largest_item_shape(self, multiple: int = 32) -> tuple[int, int]:
        """The smallest ``(H, W)``, multiple of ``multiple``, that holds every item."""
        if self.crop_size is not None:
            return round_up(self.crop_size, multiple), round_up(self.crop_size, multiple)
        h = max(img.shape[-2] for img in self.images.values())
        w = max(img.shape[-1] for img in self.images.values())
        return round_up(h, multiple), round_up(w, multiple)

    def pad_to(self, target_shape: Sequence[int]) -> None:
        """Pad every item to ``target_shape`` (e.g. the largest of train and validation)."""
        self.target_shape = (int(target_shape[0]), int(target_shape[1]))
        self._index_slices()

    def _index_slices(self) -> None:
        """Check every slice against ``target_shape`` and list ``(case_id, k)`` items."""
        th, tw = self.target_shape
        too_big = [] if self.crop_size is not None else [
            f"{cid} {img.shape[-2:]}" for cid, img in self.images.items()
            if img.shape[-2] > th or img.shape[-1] > tw
        ]
        if too_big or (self.crop_size is not None and (self.crop_size > th or self.crop_size > tw)):
            raise DatasetError(
                f"slices larger than target_shape {self.target_shape}: {', '.join(too_big[:10]) or self.crop_size}; "
                "use a larger target"
            )
        only = getattr(self, "labelled", None) or {}
        self.index: list[tuple[str, int]] = [
            (c.case_id, k) for c in self.cases
            for k in (only[c.case_id] if c.case_id in only else range(self.images[c.case_id].shape[1]))
        ]

    def limit_empty_slices(self, max_fraction: float) -> int:
        """Keep slices without a structure (no label above 0) to at most ``max_fraction``
        of the items, evenly spread over the cases; returns how many were left out.

        Volumes whose structure fills a few of their slices (a tumour in a brain, an
        organ in a CT) would otherwise spend most training steps on empty slices. A set
        with no structure at all is left as it is.
        """
        empty = [(cid, k) for cid, k in self.index if not self.labels[cid][k].any()]
        n_full = len(self.index) - len(empty)
        keep = int(max_fraction / (1.0 - max_fraction) * n_full + 1e-9)  # 1/3 of 9 is 3, not 2.999
        if n_full == 0 or len(empty) <= keep:
            return 0
        chosen = np.linspace(0, len(empty) - 1, keep).round().astype(int) if keep else []
        kept = {empty[i] for i in chosen}
        dropped = set(empty) - kept
        self.index = [item for item in self.index if item not in dropped]
        return len(dropped)

    def subsample(self, max_items: int) -> None:
        """Keep at most ``max_items`` items, evenly spread over the cases and slices
        (a cheaper validation pass on a large set)."""
        if len(self.index) > max_items:
            keep = np.linspace(0, len(self.index) - 1, int(max_items)).round().astype(int)
            self.index = [self.index[i] for i in keep]

    def along(self, axis: int) -> SliceDataset:
        """The same loaded volumes sliced along ``axis`` instead.

        Nothing is read or preprocessed again: the arrays are views of this dataset's
        (no extra memory); every other setting is shared. Slices must still fit
        ``target_shape``, and the volumes must be at their own resolution (a working
        size shrinks slices in-plane only).
        """
        if any(s != 1.0 for s in self.scales.values()):
            raise ValueError("slices along other axes need volumes at their own resolution; "
                             "a working size shrank these in-plane (drop train_axes or the working size)")
        other = copy.copy(self)
        other.axis = axis
        other.images, other.labels = {}, {}
        for cid, img in self.images.items():
            volume, labels = np.moveaxis(img, 1, 1 + self.axis), np.moveaxis(self.labels[cid], 0, self.axis)
            other.images[cid] = np.moveaxis(volume, 1 + axis, 1)
            other.labels[cid] = slice_volume(volume[0], labels, axis)[1]
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
        """Preprocessed (working resolution), unpadded, unaugmented ``(image (C, S, h, w),
        labels (S, h, w))`` of a case, slicing axis first."""
        return CaseArrays(self.images[case_id], self.labels[case_id])

    def __getitem__(self, idx: int) -> dict[str, Any]:
        if not -len(self) <= idx < len(self):
            raise IndexError(f"index {idx} out of range for {len(self)} slices")
        idx = int(idx) % len(self)
        case_id, k = self.index[idx]
        image = context_stack(self.images[case_id], k, self.context_slices)
        volume_labels = self.labels[case_id]
        labels = volume_labels[k]
        rng = np.random.default_rng([self.seed, self.epoch, idx])
        has_prior = False
        if self.neighbour_prior:  # drawn only when on, so other runs keep their random streams
            side = -1 if rng.random() < 0.5 else 1
            n = volume_labels.shape[0]
            j = k + side if 0 <= k + side < n else k - side
            has_prior = 0 <= j < n and j != k
            labels = np.stack([labels, volume_labels[j] if has_prior else labels])
        if self.augmenter is not None:
            image, labels = self.augmenter(image, labels, rng)
        if self.crop_size is not None:
            image, labels = self._crop(image, labels, rng)
        canvas = Canvas(labels.shape[-2:], self.target_shape)
        if canvas.target != tuple(self.target_shape):
            raise ValueError(f"slice of size {canvas.source} is larger than the padding target "
                             f"{tuple(self.target_shape)}; use a larger target (see largest_slice_shape) or crop "
                             "the image")
        image, labels = canvas.transform(image, self.pad_mode, self.pad_value), canvas.transform(labels)
        box = canvas.box
        if canvas.identity:  # padding copies; without it an item must not share memory with the kept slices
            image, labels = image.copy(), labels.copy()
        item = {}
        if self.neighbour_prior:
            labels, neighbour = labels
            prior = prior_probabilities(neighbour, self.n_classes) if has_prior else \
                np.zeros((self.n_classes, *neighbour.shape), np.float32)
            item = {"prior": torch.from_numpy(prior), "has_prior": torch.tensor(has_prior)}
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32).reshape(-1, *labels.shape)),
            "labels": torch.from_numpy(labels.astype(np.int64)),
            "case_id": case_id,
            "slice_index": k,
            "crop": torch.tensor(tuple(box), dtype=torch.int64),
            **item,
        }

    def _crop(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
        """A ``crop_size`` square around a random structure pixel (or anywhere); ``labels``
        ``(H, W)``, or ``(L, H, W)`` cut alike, the first map choosing the structure."""
        size = self.crop_size
        h, w = labels.shape[-2:]
        u = rng.random(3)  # foreground or not, which pixel, jitter: drawn every time
        fg = np.flatnonzero(labels if labels.ndim == 2 else labels[0])
        if fg.size and u[0] < self.foreground_crop:
            cy, cx = divmod(int(fg[min(int(u[1] * fg.size), fg.size - 1)]), w)
            jitter = int((u[2] - 0.5) * size / 2)  # the structure is not always dead centre
            y0, x0 = cy - size // 2 + jitter, cx - size // 2 - jitter
        else:
            y0, x0 = int(u[1] * max(0, h - size + 1)), int(u[2] * max(0, w - size + 1))
        y0 = int(np.clip(y0, 0, max(0, h - size)))
        x0 = int(np.clip(x0, 0, max(0, w - size)))
        return image[..., y0:y0 + size, x0:x0 + size], labels[..., y0:y0 + size, x0:x0 + size]

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


def _working_case(case, spec: DatasetSpec, settings: dict):
    """A case preprocessed and resized to the working resolution: ``(image, labels, scale)``."""
    image, labels = load_case(case, n4=settings["n4"], cache_dir=settings.get("n4_cache"), axis=settings["axis"],
                              n_classes=spec.n_classes, normalize=settings["normalize"],
                              low_pct=settings["low_pct"], high_pct=settings["high_pct"], spec=spec)
    grid = WorkingSize(labels.shape[-2:], settings["working_size"])
    image, labels = grid.transform(image, "image"), grid.transform(labels, "labels")
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(labels), grid.scale


def _cached_case(case, spec: DatasetSpec, settings: dict, cache_dir):
    """:func:`_working_case`, read from (or written to) the on-disk cache when there is one."""
    if cache_dir is None:
        return _working_case(case, spec, settings)
    cache_dir = Path(cache_dir)
    settings = dict(settings, n4_cache=str(cache_dir))
    files = [Path(p) for p in (*case.image_paths, case.label_path, *(m for _, m in getattr(case, "mask_paths", ())))
             if p is not None]
    stamp = [(str(f.resolve()), f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.exists()]
    key = json.dumps([_CACHE_VERSION, stamp, {k: v for k, v in settings.items() if k != "n4_cache"},
                      list(spec.class_names)], sort_keys=True, default=str)
    path = cache_dir / f"case_{hashlib.sha1(key.encode()).hexdigest()[:24]}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                return z["image"], z["labels"], float(z["scale"])
        except (OSError, ValueError, KeyError):
            pass  # unreadable (a killed write): recompute below
    image, labels, scale = _working_case(case, spec, settings)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + f".{os.getpid()}.tmp.npz")
    np.savez(tmp, image=image, labels=labels, scale=np.float64(scale))
    os.replace(tmp, path)
    return image, labels, scale


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


def split_slice_sets(spec: DatasetSpec, split: dict, *, on_error: str, split_seed: int,
                     train_options: SliceOptions, val_options: SliceOptions,
                     cache_dir: str | os.PathLike | None = None) -> tuple:
    """The training and validation :class:`SliceDataset` of ``split``, and the split used.

    Both parts are read before ``on_error`` is applied, so ``"stop"`` lists the
    unusable files of both at once. With ``"skip"``, a part left with no usable case
    (e.g. the only bad volume drawn into validation) is not an error while two usable
    cases remain: the usable training and validation cases are split again, in the
    split's proportion and with ``split_seed`` (the test part is untouched), and the
    split returned is the one actually used.

    Parameters
    ----------
    train_options, val_options : SliceOptions
        Each part's options.
    cache_dir : path, optional
        The parts' cache folder (see :class:`SliceDataset`).

    Returns
    -------
    train, val : SliceDataset
    split : dict
        ``split`` with the ``"train"`` and ``"val"`` parts actually used.
    skipped : list of str
        The unusable cases of the original split's training and validation parts.
    """
    from napari_simseg.core.data.splits import split_cases

    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be 'stop' or 'skip'; got {on_error!r}")
    options = {"train": train_options, "val": val_options}

    def read(part, ids):
        try:
            return SliceDataset(spec, ids, options[part], cache_dir=cache_dir, on_error="skip")
        except DatasetError as exc:  # not one usable case in this part
            return exc

    parts = {part: read(part, split[part]) for part in ("train", "val")}
    issues = [i for ds in parts.values() for i in ds.issues]
    n_read = len(split["train"]) + len(split["val"])
    bad = {i.case_id for i in issues}
    if on_error == "stop":  # each part logged its own under "skip"
        apply_error_policy(issues, n_read, on_error)
    if any(isinstance(ds, DatasetError) for ds in parts.values()):
        usable = [i for i in (*split["train"], *split["val"]) if i not in bad]
        if len(usable) < 2:
            raise DatasetError(f"only {len(usable)} of the {n_read} training and validation case(s) can be used "
                               f"(training needs one of each):\n{issue_message(issues, n_read)}", issues)
        share = len(split["val"]) / n_read
        again = split_cases(usable, min(max(share, 1 / len(usable)), (len(usable) - 1) / len(usable)), 0.0,
                            split_seed)
        logger.warning("no usable %s case in the split: the %d usable cases were split again (%d train / %d val)",
                       "validation" if isinstance(parts["val"], DatasetError) else "training", len(usable),
                       len(again["train"]), len(again["val"]))
        split = {**split, "train": again["train"], "val": again["val"]}
        parts = {part: read(part, split[part]) for part in ("train", "val")}
        for ds in parts.values():
            if isinstance(ds, DatasetError):
                raise ds
    return parts["train"], parts["val"], split, sorted(bad)
