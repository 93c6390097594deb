"""Labelled data sets on disk: layouts, discovery, checks and loading one case.

A case is read (:func:`~napari_simseg.core.io.read_image`), checked
(:func:`check_case`: every problem listed by file), preprocessed
(:mod:`~napari_simseg.core.preprocessing`) and sliced along an axis
(:func:`load_case`). Splits live in :mod:`~napari_simseg.core.splits`, augmentation in
:mod:`~napari_simseg.core.augmentation` and the torch slice datasets in
:mod:`~napari_simseg.core.slices`. No torch here.

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

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np

from .io import ImageReadError, Volume, is_supported, read_image, read_image_info, split_extension
from .preprocessing import ImageError, n4_correct, normalize_volume, round_up, slice_volume

__all__ = [
    "Case",
    "CaseArrays",
    "CaseIssue",
    "CheckReport",
    "DatasetError",
    "DatasetSpec",
    "check_case",
    "check_dataset",
    "discover_dataset",
    "largest_slice_shape",
    "load_case",
    "read_json",
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


def read_json(path: Path) -> Any:
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
        meta = read_json(meta_path)
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
        obj = read_json(root / "classes.json")
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


def read_and_check(
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
    return read_and_check(case, n_classes)[2]


@dataclass
class CheckReport:
    """Outcome of :func:`check_dataset`: usable cases, skipped cases and why."""

    ok: list[Case]
    skipped: list[Case]
    issues: list[CaseIssue]


def issue_message(issues: Sequence[CaseIssue], n_total: int) -> str:
    n_bad = len({i.case_id for i in issues})
    lines = "\n".join(f"  - {i}" for i in issues)
    return f"{n_bad} of {n_total} case(s) cannot be used:\n{lines}"


def apply_error_policy(issues: Sequence[CaseIssue], n_total: int, on_error: str) -> None:
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be 'stop' or 'skip'; got {on_error!r}")
    if not issues:
        return
    msg = issue_message(issues, n_total)
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
    apply_error_policy(issues, len(cases), on_error)
    bad = {i.case_id for i in issues}
    return CheckReport(
        ok=[c for c in cases if c.case_id not in bad],
        skipped=[c for c in cases if c.case_id in bad],
        issues=issues,
    )


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
    return round_up(hmax, multiple), round_up(wmax, multiple)


# --------------------------------------------------------------------------- loading


class CaseArrays(NamedTuple):
    """A preprocessed case: ``image`` (float32) and ``labels``, slicing axis first."""

    image: np.ndarray
    labels: np.ndarray


def preprocess_case(
    case: Case, image: np.ndarray, *, n4: bool, cache_dir, normalize: bool, low_pct: float, high_pct: float
) -> np.ndarray:
    """A case's image as float32, N4-corrected (cached) and normalised as asked.

    Raises
    ------
    DatasetError
        When the image cannot be normalised (constant, NaN), naming the file.
    """
    img = image.astype(np.float32, copy=False)
    if n4:
        img = n4_correct(img, cache_dir=cache_dir, key=case.image_path)
    if normalize:
        try:
            img = normalize_volume(img, low_pct, high_pct, name=str(case.image_path))
        except ImageError as exc:
            raise DatasetError(str(exc), [CaseIssue(case.case_id, case.image_path, str(exc))]) from None
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
    image, labels, issues = read_and_check(case, n_classes)
    if issues:
        raise DatasetError(issue_message(issues, 1), issues)
    img = preprocess_case(case, image.array, n4=n4, cache_dir=cache_dir, normalize=normalize,
                      low_pct=low_pct, high_pct=high_pct)
    img_s, lab_s = slice_volume(img, labels, axis)
    return CaseArrays(np.ascontiguousarray(img_s), np.ascontiguousarray(lab_s))




def load_case_with(case: Case, normalization: dict, axis: int) -> CaseArrays:
    """One case preprocessed as a checkpoint's ``normalization`` header says.

    Returns
    -------
    CaseArrays
        float32 image and int64 labels, sliced along ``axis`` (slices first).
    """
    image, labels = load_case(case, axis=axis, n4=bool(normalization.get("n4", False)),
                              low_pct=normalization.get("low", 0.5), high_pct=normalization.get("high", 99.5))
    return CaseArrays(np.asarray(image, np.float32), np.asarray(labels).astype(np.int64))
