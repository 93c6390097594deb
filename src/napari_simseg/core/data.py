"""From labelled volumes on disk to 2D training slices.

Pipeline (section 5.1.2 of the paper), applied per volume then per slice::

    read (io.read_image) -> check -> [N4 bias-field correction] -> clip at
    percentiles + standardise -> slice along an axis -> augment (training) ->
    pad to a common (H, W)

Data set layouts understood by :func:`discover_dataset`
-------------------------------------------------------
1. Medical Segmentation Decathlon (MSD): ``dataset.json`` with ``"labels"``
   (``{"0": "background", "1": ...}``) and ``"training"`` (a list of
   ``{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}``).  Without
   ``"training"``, ``imagesTr/`` and ``labelsTr/`` are matched by file name (an
   nnU-Net channel suffix ``_0000`` on image names is ignored).  nnU-Net v2
   ``"labels"`` (``{"background": 0, ...}``) are accepted too.  Without
   ``dataset.json`` but with ``imagesTr/`` and ``labelsTr/``, the classes are
   inferred as for a plain folder.
2. Plain folder: ``images/`` and ``labels/`` matched by file name without
   extension (so ``a.nii.gz`` matches ``a.nrrd``; a sub-folder is a DICOM series
   named after the folder).  Class names come from ``classes.json`` (a list of
   names, ``{"0": "background", ...}`` or an MSD-like ``{"labels": {...}}``) or
   ``classes.txt`` (one name per line, line ``k`` naming label ``k``, or lines
   ``"k name"``).  Without either, every label file is read and classes are
   named ``"background"`` (0) and ``"class_k"`` for ``k = 1 .. max label``.

Files whose names start with ``.`` (including macOS ``._`` resource forks) are
ignored everywhere.  Labels are never remapped: a label value ``k`` is class ``k``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from scipy import ndimage

from .io import ImageReadError, Volume, is_supported, read_image, read_image_info, split_extension
from .memory import check_context_slices

__all__ = [
    "Augmenter",
    "Case",
    "CaseArrays",
    "CaseIssue",
    "CheckReport",
    "CropBox",
    "DatasetError",
    "DatasetSpec",
    "MultiAxisSlices",
    "SliceDataset",
    "check_case",
    "check_dataset",
    "context_stack",
    "discover_dataset",
    "largest_slice_shape",
    "load_case",
    "load_split",
    "n4_correct",
    "normalize_volume",
    "pad_to_multiple",
    "save_split",
    "slice_volume",
    "split_cases",
    "unpad",
]

logger = logging.getLogger(__name__)

ON_ERROR_CHOICES = ("stop", "skip")


class DatasetError(ValueError):
    """A data set, case or volume that cannot be used as it is.

    Attributes
    ----------
    issues : list of CaseIssue
        The problems found, one per file and reason (may be empty when the error is
        not about specific files).
    """

    def __init__(self, message: str, issues: Sequence["CaseIssue"] = ()):
        self.issues = list(issues)
        super().__init__(message)


# --------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class Case:
    """One labelled volume.

    Attributes
    ----------
    case_id : str
        Identifier, the image file name without extension.
    image_path, label_path : pathlib.Path
        The image and its label map.
    """

    case_id: str
    image_path: Path
    label_path: Path


@dataclass
class DatasetSpec:
    """What :func:`discover_dataset` found.

    Attributes
    ----------
    root : pathlib.Path
        The data set folder.
    class_names : list of str
        Class names; the index is the label value, 0 is the background.
    cases : list of Case
        Cases sorted by ``case_id``.
    layout : str
        ``"msd"`` or ``"folder"``.
    name : str
        Data set name (``dataset.json``'s ``"name"`` or the folder name).
    unmatched : list of pathlib.Path
        Images without a label and labels without an image (not in ``cases``).
    """

    root: Path
    class_names: list[str]
    cases: list[Case]
    layout: str = "msd"
    name: str = ""
    unmatched: list[Path] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        """Number of classes, background included."""
        return len(self.class_names)

    @property
    def case_ids(self) -> list[str]:
        """All case identifiers, sorted."""
        return [c.case_id for c in self.cases]

    def get_cases(self, case_ids: Iterable[str] | None = None) -> list[Case]:
        """The cases with the given identifiers (all cases when ``None``), in order.

        Raises
        ------
        DatasetError
            If an identifier is not in this data set (all unknown ones are listed).
        """
        if case_ids is None:
            return list(self.cases)
        by_id = {c.case_id: c for c in self.cases}
        ids = list(case_ids)
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            shown = ", ".join(map(repr, unknown[:10])) + (" ..." if len(unknown) > 10 else "")
            raise DatasetError(
                f"{len(unknown)} case id(s) not in data set '{self.root}': {shown} "
                f"(stale split file? the data set has {len(by_id)} cases)"
            )
        return [by_id[i] for i in ids]


@dataclass(frozen=True)
class CaseIssue:
    """A problem with one file of one case."""

    case_id: str
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def _hidden(p: Path) -> bool:
    return p.name.startswith(".")


def _case_id(p: Path) -> str:
    return p.name if p.is_dir() else split_extension(p)[0]


def _list_images(folder: Path, strip_channel: bool = False) -> dict[str, Path]:
    out: dict[str, Path] = {}
    dupes: dict[str, list[Path]] = {}
    ignored: list[str] = []
    for p in sorted(folder.iterdir()):
        if _hidden(p):
            continue
        if not is_supported(p):
            ignored.append(p.name)
            continue
        cid = _case_id(p)
        if strip_channel and not p.is_dir():
            m = re.fullmatch(r"(.+)_(\d{4})", cid)
            if m:
                if m.group(2) != "0000":
                    logger.warning("%s: extra image channel ignored (only _0000 is used)", p)
                    continue
                cid = m.group(1)
        if cid in out:
            dupes.setdefault(cid, [out[cid]]).append(p)
        out[cid] = p
    if ignored:
        logger.warning(
            "%s: %d file(s) of unsupported type ignored: %s", folder, len(ignored),
            ", ".join(ignored[:10]) + (" ..." if len(ignored) > 10 else ""),
        )
    if dupes:
        lines = "; ".join(f"{k}: {', '.join(q.name for q in v)}" for k, v in dupes.items())
        raise DatasetError(
            f"{folder}: several files share a case name ({lines}); keep one file per case"
        )
    return out


def _match(images: dict[str, Path], labels: dict[str, Path]) -> tuple[list[Case], list[Path]]:
    cases = [Case(k, images[k], labels[k]) for k in sorted(images) if k in labels]
    unmatched = [images[k] for k in sorted(images) if k not in labels]
    unmatched += [labels[k] for k in sorted(labels) if k not in images]
    if unmatched:
        shown = ", ".join(p.name for p in unmatched[:10]) + (" ..." if len(unmatched) > 10 else "")
        logger.warning("%d file(s) without a matching image/label were left out: %s", len(unmatched), shown)
    return cases, unmatched


def _names_from_mapping(mapping: dict[int, str], source: str) -> list[str]:
    if not mapping:
        raise DatasetError(f"{source}: no classes declared")
    if min(mapping) < 0:
        raise DatasetError(f"{source}: negative label value {min(mapping)} in the class list")
    if 0 not in mapping:
        logger.warning("%s: label 0 not declared; naming it 'background'", source)
    names = []
    missing = []
    for k in range(max(mapping) + 1):
        if k in mapping:
            names.append(str(mapping[k]))
        else:
            names.append("background" if k == 0 else f"class_{k}")
            if k:
                missing.append(k)
    if missing:
        logger.warning("%s: label value(s) %s not declared; named class_k", source, missing)
    return names


def _parse_labels(obj: Any, source: str) -> list[str]:
    """Class names from a list, ``{"0": name}`` or nnU-Net ``{name: 0}`` mapping."""
    if isinstance(obj, list):
        return [str(n) for n in obj]
    if not isinstance(obj, dict) or not obj:
        raise DatasetError(f"{source}: 'labels' must be a non-empty mapping or list; got {obj!r}")
    try:
        if all(str(k).strip().lstrip("-").isdigit() for k in obj):
            return _names_from_mapping({int(k): str(v) for k, v in obj.items()}, source)
        if all(isinstance(v, int) or (isinstance(v, str) and v.isdigit()) for v in obj.values()):
            return _names_from_mapping({int(v): str(k) for k, v in obj.items()}, source)
    except (TypeError, ValueError):
        pass
    raise DatasetError(
        f"{source}: cannot read the class list {obj!r}; expected {{\"0\": \"background\", "
        "\"1\": \"name\", ...}"
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None


def _classes_from_txt(path: Path) -> list[str]:
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    pairs = [re.fullmatch(r"(\d+)\s*[:=,\s]\s*(.+)", ln) for ln in lines]
    if lines and all(pairs):
        return _names_from_mapping({int(m.group(1)): m.group(2).strip() for m in pairs}, str(path))
    return lines


def _infer_class_names(label_paths: Sequence[Path], source: str) -> list[str]:
    top = -1
    for p in label_paths:
        try:
            arr = read_image(p).array
        except ImageReadError:
            continue  # reported by check_case later
        if arr.size:
            top = max(top, int(np.nanmax(arr)))
    if top < 0:
        raise DatasetError(f"{source}: no readable label file to infer the classes from")
    logger.info("%s: no class list; inferred %d classes from label values", source, top + 1)
    return ["background"] + [f"class_{k}" for k in range(1, top + 1)]


def discover_dataset(root: str | os.PathLike) -> DatasetSpec:
    """Find the cases and class names of a data set folder.

    See the module docstring for the layouts understood.  Files are not opened
    (except label files when classes must be inferred); use :func:`check_dataset`
    or :class:`SliceDataset` to validate them.

    Parameters
    ----------
    root : path
        The data set folder.

    Returns
    -------
    DatasetSpec

    Raises
    ------
    DatasetError
        If the folder does not exist, matches no layout, ``dataset.json`` is invalid
        or no case is found.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data set folder '{root}' does not exist or is not a folder")
    meta_path = root / "dataset.json"
    if meta_path.is_file() or ((root / "imagesTr").is_dir() and (root / "labelsTr").is_dir()):
        spec = _discover_msd(root, meta_path)
    elif (root / "images").is_dir() and (root / "labels").is_dir():
        spec = _discover_folder(root)
    else:
        raise DatasetError(
            f"'{root}' is not a data set folder: expected dataset.json with imagesTr/ and "
            "labelsTr/ (Medical Segmentation Decathlon layout) or images/ and labels/ "
            "subfolders"
        )
    if not spec.cases:
        raise DatasetError(f"'{root}': no image/label pair found")
    return spec


def _discover_msd(root: Path, meta_path: Path) -> DatasetSpec:
    meta: dict = {}
    if meta_path.is_file():
        meta = _read_json(meta_path)
        if not isinstance(meta, dict):
            raise DatasetError(f"{meta_path}: expected a JSON object")
    training = meta.get("training")
    unmatched: list[Path] = []
    if training:
        cases = []
        seen = set()
        for i, entry in enumerate(training):
            if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
                raise DatasetError(
                    f"{meta_path}: training entry {i} must be {{\"image\": ..., \"label\": ...}}; got {entry!r}"
                )
            if not isinstance(entry["image"], str) or not isinstance(entry["label"], str):
                raise DatasetError(f"{meta_path}: training entry {i}: only one image file per case is supported")
            img = root / entry["image"]
            lab = root / entry["label"]
            if _hidden(img) or _hidden(lab):
                continue
            cid = _case_id(img)
            if cid in seen:
                raise DatasetError(f"{meta_path}: case '{cid}' is listed twice in 'training'")
            seen.add(cid)
            cases.append(Case(cid, img, lab))
        cases.sort(key=lambda c: c.case_id)
    else:
        for sub in ("imagesTr", "labelsTr"):
            if not (root / sub).is_dir():
                raise DatasetError(f"{meta_path}: no 'training' list and no {sub}/ folder to list")
        cases, unmatched = _match(
            _list_images(root / "imagesTr", strip_channel=True), _list_images(root / "labelsTr")
        )
    if "labels" in meta:
        class_names = _parse_labels(meta["labels"], str(meta_path))
    else:
        class_names = _infer_class_names([c.label_path for c in cases], str(root))
    return DatasetSpec(
        root=root,
        class_names=class_names,
        cases=cases,
        layout="msd",
        name=str(meta.get("name", root.name)),
        unmatched=unmatched,
    )


def _discover_folder(root: Path) -> DatasetSpec:
    cases, unmatched = _match(_list_images(root / "images"), _list_images(root / "labels"))
    if (root / "classes.json").is_file():
        obj = _read_json(root / "classes.json")
        if isinstance(obj, dict) and "labels" in obj:
            obj = obj["labels"]
        class_names = _parse_labels(obj, str(root / "classes.json"))
    elif (root / "classes.txt").is_file():
        class_names = _classes_from_txt(root / "classes.txt")
        if not class_names:
            raise DatasetError(f"{root / 'classes.txt'}: no class names")
    else:
        class_names = _infer_class_names([c.label_path for c in cases], str(root))
    return DatasetSpec(root, class_names, cases, "folder", root.name, unmatched)


# --------------------------------------------------------------------------- checks


def _label_dtype(n_classes: int) -> np.dtype:
    return np.dtype(np.uint8) if n_classes <= 256 else np.dtype(np.int32)


def _read_and_check(
    case: Case, n_classes: int | None
) -> tuple[Volume | None, np.ndarray | None, list[CaseIssue]]:
    """Read a case; return (image volume, integer labels, issues)."""
    issues: list[CaseIssue] = []
    image = labels = None
    try:
        image = read_image(case.image_path)
    except ImageReadError as exc:
        issues.append(CaseIssue(case.case_id, case.image_path, exc.reason))
    try:
        labels = read_image(case.label_path).array
    except ImageReadError as exc:
        issues.append(CaseIssue(case.case_id, case.label_path, exc.reason))
    if image is not None:
        arr = image.array
        if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            issues.append(CaseIssue(case.case_id, case.image_path, f"unsupported pixel type {arr.dtype}"))
        else:
            bad = arr.size - int(np.count_nonzero(np.isfinite(arr))) if arr.dtype.kind == "f" else 0
            if bad:
                issues.append(CaseIssue(case.case_id, case.image_path, f"contains {bad} NaN or infinite voxel(s)"))
            elif arr.size == 0 or arr.min() == arr.max():
                v = arr.flat[0] if arr.size else "n/a"
                issues.append(CaseIssue(case.case_id, case.image_path, f"image is constant (every voxel is {v})"))
    if labels is not None:
        if image is not None and labels.shape != image.array.shape:
            issues.append(
                CaseIssue(
                    case.case_id,
                    case.label_path,
                    f"label shape {labels.shape} differs from image shape {image.array.shape} "
                    f"({case.image_path.name})",
                )
            )
        if labels.dtype.kind == "f":
            finite = np.isfinite(labels)
            if not finite.all() or not np.array_equal(labels, np.round(labels)):
                issues.append(CaseIssue(case.case_id, case.label_path, "label values are not all integers"))
                labels = None
        elif labels.dtype.kind not in "iub":
            issues.append(CaseIssue(case.case_id, case.label_path, f"unsupported label pixel type {labels.dtype}"))
            labels = None
    if labels is not None:
        values = np.unique(labels)
        limit = n_classes if n_classes is not None else np.inf
        outside = values[(values < 0) | (values >= limit)]
        if outside.size:
            shown = ", ".join(str(int(v)) for v in outside[:10]) + (" ..." if outside.size > 10 else "")
            issues.append(
                CaseIssue(
                    case.case_id,
                    case.label_path,
                    f"label value(s) {shown} outside the {n_classes} declared classes "
                    f"(0..{n_classes - 1})",
                )
            )
        elif values.size and values.max() >= 2**31:
            issues.append(CaseIssue(case.case_id, case.label_path, f"label value {int(values.max())} too large"))
        else:
            top = int(values.max()) + 1 if values.size else 1
            labels = labels.astype(_label_dtype(max(top, n_classes or 0)), copy=False)
    return image, labels, issues


def check_case(case: Case, n_classes: int) -> list[CaseIssue]:
    """Check that a case can be used for training, without raising.

    Checks that both files can be read, that the image is 2D/3D, finite and not
    constant, that the label map has the image's shape and integer values in
    ``0 .. n_classes - 1``.

    Returns
    -------
    list of CaseIssue
        Empty when the case is usable; otherwise one entry per problem, naming the
        file.
    """
    return _read_and_check(case, n_classes)[2]


@dataclass
class CheckReport:
    """Outcome of :func:`check_dataset`: usable cases, skipped cases and why."""

    ok: list[Case]
    skipped: list[Case]
    issues: list[CaseIssue]


def _issue_message(issues: Sequence[CaseIssue], n_total: int) -> str:
    n_bad = len({i.case_id for i in issues})
    lines = "\n".join(f"  - {i}" for i in issues)
    return f"{n_bad} of {n_total} case(s) cannot be used:\n{lines}"


def _apply_policy(issues: Sequence[CaseIssue], n_total: int, on_error: str) -> None:
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be 'stop' or 'skip'; got {on_error!r}")
    if not issues:
        return
    msg = _issue_message(issues, n_total)
    if on_error == "stop":
        raise DatasetError(msg + "\nFix or remove these files, or use on_error='skip'.", issues)
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
        issues += check_case(c, spec.n_classes)
    _apply_policy(issues, len(cases), on_error)
    bad = {i.case_id for i in issues}
    return CheckReport(
        ok=[c for c in cases if c.case_id not in bad],
        skipped=[c for c in cases if c.case_id in bad],
        issues=issues,
    )


# --------------------------------------------------------------------------- splits


def split_cases(
    case_ids: Iterable[str], val_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0
) -> dict[str, list[str]]:
    """Split case identifiers (whole volumes) into train/val/test sets.

    The ids are sorted before a seeded shuffle, so the result depends only on the set
    of ids and the seed, not on their order.  ``round(fraction * n)`` cases go to
    validation and test, but at least one to each non-zero fraction when ``n``
    allows it; the rest is the training set.

    Returns
    -------
    dict
        ``{"train": [...], "val": [...], "test": [...]}``, each list sorted.

    Raises
    ------
    ValueError
        For duplicate ids, fractions outside [0, 1) or summing to 1 or more, or
        too few cases to leave a training case.
    """
    ids = [str(i) for i in case_ids]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"duplicate case ids: {dup[:10]}")
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise ValueError(f"{name} must be in [0, 1); got {f}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1; got {val_fraction + test_fraction}")
    ids.sort()
    n = len(ids)
    n_val = max(int(round(val_fraction * n)), 1 if val_fraction > 0 else 0)
    n_test = max(int(round(test_fraction * n)), 1 if test_fraction > 0 else 0)
    if n - n_val - n_test < 1:
        raise ValueError(
            f"{n} case(s) cannot be split with val_fraction={val_fraction} and "
            f"test_fraction={test_fraction}: no training case would remain"
        )
    order = np.random.default_rng(seed).permutation(n)
    shuffled = [ids[i] for i in order]
    return {
        "train": sorted(shuffled[n_val + n_test:]),
        "val": sorted(shuffled[:n_val]),
        "test": sorted(shuffled[n_val:n_val + n_test]),
    }


def save_split(path: str | os.PathLike, split: dict[str, Sequence[str]]) -> Path:
    """Write a split (``{"train", "val", "test"}`` lists of case ids) as JSON."""
    clean = _validate_split(split, str(path))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(clean, indent=2))
    return p


def load_split(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a split written by :func:`save_split` (missing lists read as empty).

    Raises
    ------
    DatasetError
        If the file is missing, not JSON, or the lists are malformed or overlap.
    """
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"split file '{p}' does not exist")
    return _validate_split(_read_json(p), str(p))


def _validate_split(split: Any, source: str) -> dict[str, list[str]]:
    if not isinstance(split, dict):
        raise DatasetError(f"{source}: a split must be a mapping with 'train', 'val', 'test' lists")
    unknown = set(split) - {"train", "val", "test"}
    if unknown:
        raise DatasetError(f"{source}: unknown split key(s) {sorted(unknown)}; expected train, val, test")
    out = {}
    for key in ("train", "val", "test"):
        ids = split.get(key, [])
        if not isinstance(ids, (list, tuple)) or not all(isinstance(i, str) for i in ids):
            raise DatasetError(f"{source}: '{key}' must be a list of case id strings")
        out[key] = list(ids)
    seen: dict[str, str] = {}
    for key, ids in out.items():
        for i in ids:
            if i in seen:
                raise DatasetError(f"{source}: case '{i}' is in both '{seen[i]}' and '{key}'")
            seen[i] = key
    return out


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
    DatasetError
        If the volume has NaN/inf values, is empty or constant.
    """
    what = f"image '{name}'" if name else "image"
    if not 0 <= low_pct < high_pct <= 100:
        raise ValueError(f"need 0 <= low_pct < high_pct <= 100; got {low_pct}, {high_pct}")
    a = np.asarray(array, dtype=np.float64)
    if a.size == 0:
        raise DatasetError(f"{what} is empty")
    finite = np.isfinite(a)
    if not finite.all():
        raise DatasetError(f"{what} contains {a.size - int(finite.sum())} NaN or infinite voxel(s)")
    lo, hi = np.percentile(a, [low_pct, high_pct])
    clipped = np.clip(a, lo, hi)
    std = clipped.std()
    if std == 0 or not np.isfinite(std):
        clipped = a
        std = a.std()
        if std == 0:
            raise DatasetError(f"{what} is constant (every voxel is {a.flat[0]:g}); cannot normalise it")
    return ((clipped - clipped.mean()) / std).astype(np.float32)


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
        ``(S, H, W)`` stack of slices (see :func:`slice_volume`).
    index : int or sequence of int
        Slice(s) to take.
    context_slices : int
        k; 0 gives the slice alone.

    Returns
    -------
    numpy.ndarray
        ``(1 + 2k, H, W)`` for one index, ``(len(index), 1 + 2k, H, W)`` for several:
        the slice, then ``z-1, z+1, z-2, z+2, ...``. Neighbours beyond the first or last
        slice repeat the end slice (the reading least likely to invent structure; a 2D
        image therefore gets ``1 + 2k`` copies of itself).
    """
    slices = np.asarray(slices)
    if slices.ndim != 3:
        raise ValueError(f"expected an (S, H, W) stack of slices; got shape {slices.shape}")
    k = int(context_slices)
    if k < 0:
        raise ValueError(f"context_slices must be >= 0; got {context_slices}")
    idx = np.asarray(index)
    if not np.issubdtype(idx.dtype, np.integer):
        raise IndexError(f"slice indices must be integers; got {index!r}")
    idx = idx.astype(np.int64)
    s = slices.shape[0]
    if np.any((idx < 0) | (idx >= s)):
        raise IndexError(f"slice index {index} outside 0..{s - 1}")
    offsets = [0] + [sign * d for d in range(1, k + 1) for sign in (-1, 1)]
    rows = np.clip(idx[..., None] + np.asarray(offsets), 0, s - 1)
    return slices[rows]


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


def _round_up(n: int, multiple: int) -> int:
    return int(-(-int(n) // multiple) * multiple)


def pad_to_multiple(
    array: np.ndarray, multiple: int = 32, target: Sequence[int] | None = None, value: float = 0
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
        the mean intensity for images standardised by :func:`normalize_volume`
        (the choice made here for training and inference alike).

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
        th, tw = _round_up(h, multiple), _round_up(w, multiple)
    else:
        th, tw = (int(v) for v in target)
        if th < h or tw < w:
            raise ValueError(
                f"slice of size {(h, w)} is larger than the padding target {(th, tw)}; use a "
                "larger target (see largest_slice_shape) or crop the image"
            )
    top, left = (th - h) // 2, (tw - w) // 2
    pad = [(0, 0)] * (array.ndim - 2) + [(top, th - h - top), (left, tw - w - left)]
    padded = np.pad(array, pad, mode="constant", constant_values=value) if (th, tw) != (h, w) else array.copy()
    return padded, CropBox(top, top + h, left, left + w)


def largest_slice_shape(
    dataset: DatasetSpec | Iterable[Case | str | os.PathLike], axis: int = 0, multiple: int = 32
) -> tuple[int, int]:
    """The smallest (H, W), multiple of ``multiple``, that holds every slice.

    This is the data-set-wide padding target (the paper pads to 512 x 512, its
    largest slice).  Only image headers are read; unreadable images are skipped.

    Parameters
    ----------
    dataset : DatasetSpec or iterable of Case or image paths
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
        path = item.image_path if isinstance(item, Case) else Path(item)
        try:
            shape = read_image_info(path).shape
        except ImageReadError as exc:
            logger.warning("largest_slice_shape: %s", exc)
            continue
        if len(shape) == 3:
            shape = tuple(s for i, s in enumerate(shape) if i != axis % 3)
        hmax, wmax = max(hmax, shape[0]), max(wmax, shape[1])
    if hmax == 0:
        raise DatasetError("largest_slice_shape: no readable image")
    return _round_up(hmax, multiple), _round_up(wmax, multiple)


# --------------------------------------------------------------------------- loading


class CaseArrays(NamedTuple):
    """A preprocessed case: ``image`` (float32) and ``labels``, slicing axis first."""

    image: np.ndarray
    labels: np.ndarray


def _preprocess(
    case: Case, image: np.ndarray, *, n4: bool, cache_dir, normalize: bool, low_pct: float, high_pct: float
) -> np.ndarray:
    img = image.astype(np.float32, copy=False)
    if n4:
        img = n4_correct(img, cache_dir=cache_dir, key=case.image_path)
    if normalize:
        img = normalize_volume(img, low_pct, high_pct, name=str(case.image_path))
    return img


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
) -> CaseArrays:
    """Read, check and preprocess one case, as used for training and evaluation.

    Parameters
    ----------
    case : Case
    n4 : bool
        Apply :func:`n4_correct` (cached in ``cache_dir`` when given).
    cache_dir : path, optional
    axis : int
        Slicing axis, moved first in the output (ignored for 2D images).
    n_classes : int, optional
        When given, label values must lie in ``0 .. n_classes - 1``.
    normalize, low_pct, high_pct
        Apply :func:`normalize_volume` with these percentiles.

    Returns
    -------
    CaseArrays
        ``(image, labels)`` of shape ``(n_slices, H, W)``; image float32, labels
        uint8 (int32 beyond 256 classes).

    Raises
    ------
    DatasetError
        Listing every problem of the case by file name.
    """
    image, labels, issues = _read_and_check(case, n_classes)
    if issues:
        raise DatasetError(_issue_message(issues, 1), issues)
    img = _preprocess(case, image.array, n4=n4, cache_dir=cache_dir, normalize=normalize,
                      low_pct=low_pct, high_pct=high_pct)
    img_s, lab_s = slice_volume(img, labels, axis)
    return CaseArrays(np.ascontiguousarray(img_s), np.ascontiguousarray(lab_s))


# --------------------------------------------------------------------------- augmentation


class Augmenter:
    """Random 2D augmentations of section 5.1.2 of the paper.

    Each augmentation is applied independently with probability ``p``, in this
    order: (optionally, beyond the paper) a rotation and scaling about the slice
    centre, vertical flip, horizontal flip (image *and* labels), brightness shift,
    gamma correction, then a sharpness change -- Gaussian blur or unsharp masking,
    one of the two chosen at random (intensity changes touch the image only).

    Parameters
    ----------
    seed : int
        Seed of the generator used when no ``rng`` is passed to the call.
    p : float
        Probability of each augmentation.
    flip_vertical, flip_horizontal : bool
        Enable flips along rows (up/down) and columns (left/right).
    brightness : float
        Largest additive shift, in normalised intensity units (standard deviations
        after :func:`normalize_volume`); 0 disables.
    gamma : (float, float) or None
        Range of the gamma exponent, applied to a min-max-rescaled copy that is then
        mapped back to the original range.
    blur_sigma : (float, float) or None
        Range of the Gaussian blur sigma in pixels.
    unsharp_amount : (float, float) or None
        Range of the unsharp-masking amount: ``x + amount * (x - blur(x, unsharp_sigma))``.
    unsharp_sigma : float
        Blur sigma of the unsharp mask.
    rotate_degrees : float
        Largest in-plane rotation, in degrees (uniform in ``[-r, r]``); 0 disables.
    scale : (float, float) or None
        Range of the zoom factor (``> 1`` enlarges the anatomy); ``None`` disables.
        Rotation and scaling are one affine resampling of every channel (linear) and
        of the labels (nearest), with edge values repeated; they are not part of the
        paper's list and are off by default.

    Notes
    -----
    The result depends only on the inputs and the generator state, so a generator
    seeded per (epoch, sample) makes training reproducible.  The same number of
    random draws is made whichever augmentations fire.
    """

    def __init__(
        self,
        seed: int = 0,
        p: float = 0.5,
        *,
        flip_vertical: bool = True,
        flip_horizontal: bool = True,
        brightness: float = 0.2,
        gamma: tuple[float, float] | None = (0.7, 1.5),
        blur_sigma: tuple[float, float] | None = (0.5, 1.2),
        unsharp_amount: tuple[float, float] | None = (0.3, 1.5),
        unsharp_sigma: float = 1.0,
        rotate_degrees: float = 0.0,
        scale: tuple[float, float] | None = None,
    ):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1]; got {p}")
        for name, rng_ in (("gamma", gamma), ("blur_sigma", blur_sigma), ("unsharp_amount", unsharp_amount)):
            if rng_ is not None and (len(rng_) != 2 or rng_[0] > rng_[1] or rng_[0] < 0):
                raise ValueError(f"{name} must be a (low, high) range of non-negative values; got {rng_}")
        if gamma is not None and gamma[0] <= 0:
            raise ValueError(f"gamma must be positive; got {gamma}")
        if not 0.0 <= float(rotate_degrees) <= 180.0:
            raise ValueError(f"rotate_degrees must be in [0, 180]; got {rotate_degrees}")
        if scale is not None and (len(scale) != 2 or not 0 < scale[0] <= scale[1]):
            raise ValueError(f"scale must be a (low, high) range of positive factors; got {scale}")
        self.rotate_degrees = float(rotate_degrees)
        self.scale = None if scale is None else (float(scale[0]), float(scale[1]))
        self.seed = seed
        self.p = float(p)
        self.flip_vertical = flip_vertical
        self.flip_horizontal = flip_horizontal
        self.brightness = float(brightness)
        self.gamma = gamma
        self.blur_sigma = blur_sigma
        self.unsharp_amount = unsharp_amount
        self.unsharp_sigma = float(unsharp_sigma)
        self._rng = np.random.default_rng(seed)

    def __repr__(self) -> str:
        return (
            f"Augmenter(seed={self.seed}, p={self.p}, flip_vertical={self.flip_vertical}, "
            f"flip_horizontal={self.flip_horizontal}, brightness={self.brightness}, "
            f"gamma={self.gamma}, blur_sigma={self.blur_sigma}, "
            f"unsharp_amount={self.unsharp_amount}, unsharp_sigma={self.unsharp_sigma}, "
            f"rotate_degrees={self.rotate_degrees}, scale={self.scale})"
        )

    def __call__(
        self, image: np.ndarray, labels: np.ndarray | None = None, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Augment one 2D slice (with its neighbours, for a 2.5D network).

        Parameters
        ----------
        image : numpy.ndarray, shape (H, W) or (C, H, W)
            A slice, or a :func:`context_stack`; every channel gets the same flips
            and intensity changes (blur and sharpening act within each channel; gamma
            rescales with the whole stack's range, one mapping for all channels).
        labels : numpy.ndarray, shape (H, W), optional
        rng : numpy.random.Generator, optional
            Source of randomness; the augmenter's own seeded generator when omitted.

        Returns
        -------
        (image, labels)
            New contiguous arrays (image float32); inputs are not modified.
        """
        rng = self._rng if rng is None else rng
        img = np.asarray(image, dtype=np.float32)
        if img.ndim not in (2, 3):
            raise ValueError(f"Augmenter works on (H, W) slices or (C, H, W) stacks; got shape {img.shape}")
        lab = None if labels is None else np.asarray(labels)
        if lab is not None and lab.shape != img.shape[-2:]:
            raise ValueError(f"labels shape {lab.shape} differs from image shape {img.shape[-2:]}")
        if self.rotate_degrees > 0 or self.scale is not None:
            # drawn only when enabled, so runs without it keep their random streams
            spatial = rng.random(3)  # fire, angle, zoom
            if spatial[0] < self.p:
                img, lab = self._rotate_scale(img, lab, spatial[1], spatial[2])
        fire = rng.random(5) < self.p  # vflip, hflip, brightness, gamma, sharpness
        u = rng.random(4)  # brightness, gamma, sharpness kind, sharpness strength
        if fire[0] and self.flip_vertical:
            img = img[..., ::-1, :]
            lab = None if lab is None else lab[::-1]
        if fire[1] and self.flip_horizontal:
            img = img[..., ::-1]
            lab = None if lab is None else lab[:, ::-1]
        in_plane = (0,) * (img.ndim - 2)  # no blur across the channel axis
        img = np.array(img, dtype=np.float32)  # contiguous copy
        if fire[2] and self.brightness > 0:
            img += np.float32((2 * u[0] - 1) * self.brightness)
        if fire[3] and self.gamma is not None:
            lo, hi = float(img.min()), float(img.max())
            if hi > lo:
                g = self.gamma[0] + u[1] * (self.gamma[1] - self.gamma[0])
                img = (((img - lo) / (hi - lo)) ** g * (hi - lo) + lo).astype(np.float32)
        if fire[4]:
            kinds = [k for k, r in (("blur", self.blur_sigma), ("unsharp", self.unsharp_amount)) if r is not None]
            if kinds:
                kind = kinds[min(int(u[2] * len(kinds)), len(kinds) - 1)]
                if kind == "blur":
                    s = self.blur_sigma[0] + u[3] * (self.blur_sigma[1] - self.blur_sigma[0])
                    img = ndimage.gaussian_filter(img, (*in_plane, s, s))
                else:
                    a = self.unsharp_amount[0] + u[3] * (self.unsharp_amount[1] - self.unsharp_amount[0])
                    sig = self.unsharp_sigma
                    img = img + np.float32(a) * (img - ndimage.gaussian_filter(img, (*in_plane, sig, sig)))
        lab = None if lab is None else np.ascontiguousarray(lab)
        return img.astype(np.float32, copy=False), lab

    def _rotate_scale(self, img, lab, u_angle, u_zoom):
        """Rotate by ``(2u - 1) * rotate_degrees`` and zoom within ``scale`` about the centre."""
        angle = np.deg2rad((2 * u_angle - 1) * self.rotate_degrees)
        zoom = 1.0 if self.scale is None else self.scale[0] + u_zoom * (self.scale[1] - self.scale[0])
        c, s_ = np.cos(angle), np.sin(angle)
        # output pixel o maps to input pixel M @ (o - centre) + centre
        matrix = np.array([[c, -s_], [s_, c]]) / zoom
        centre = (np.array(img.shape[-2:], float) - 1) / 2
        offset = centre - matrix @ centre
        planes = img.reshape(-1, *img.shape[-2:])
        out = np.stack([ndimage.affine_transform(pl, matrix, offset, order=1, mode="nearest")
                        for pl in planes]).reshape(img.shape).astype(np.float32)
        if lab is not None:
            lab = ndimage.affine_transform(lab, matrix, offset, order=0, mode="nearest")
        return out, lab


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
            image, labels, case_issues = _read_and_check(case, spec.n_classes)
            if not case_issues:
                try:
                    img = _preprocess(case, image.array, n4=n4, cache_dir=cache_dir, normalize=normalize,
                                      low_pct=low_pct, high_pct=high_pct)
                except DatasetError as exc:
                    case_issues = [CaseIssue(case.case_id, case.image_path, str(exc))]
            if case_issues:
                issues += case_issues
                continue
            img_s, lab_s = slice_volume(img, labels, axis)
            self.images[case.case_id] = np.ascontiguousarray(img_s, dtype=np.float32)
            self.labels[case.case_id] = np.ascontiguousarray(lab_s)
        _apply_policy(issues, len(cases), on_error)
        bad = {i.case_id for i in issues}
        self.issues = issues
        self.skipped = [c for c in cases if c.case_id in bad]
        self.cases = [c for c in cases if c.case_id not in bad]
        if not self.cases:
            detail = f":\n{_issue_message(issues, len(cases))}" if issues else ""
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

    def iter_volumes(self) -> Iterator[tuple[str, CaseArrays]]:
        """``(case_id, CaseArrays)`` of every loaded case."""
        for c in self.cases:
            yield c.case_id, self.volume(c.case_id)


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
