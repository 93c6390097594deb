"""Labelled data sets on disk: the layouts understood and how their cases are found.

:func:`discover_dataset` turns a folder into a :class:`DatasetSpec`: the class names
(:mod:`~napari_simseg.core.data.class_lists`), the image channels and the :class:`Case`
list, without reading any pixel (except label files when the classes must be inferred
from their values).  Reading and checking the files is
:mod:`~napari_simseg.core.data.reading`'s job; the layouts themselves are documented in
:mod:`~napari_simseg.core.data.datasets`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_simseg.core.data.cases import LAYOUTS, Case, CaseIssue, DatasetError, DatasetSpec, read_json
from napari_simseg.core.data.class_lists import (
    check_mask_class_list,
    class_list,
    infer_class_names,
    numbered_names,
    parse_labels,
)
from napari_simseg.core.io.images import (
    PICTURE_EXTENSIONS,
    SUPPORTED_EXTENSIONS,
    ImageReadError,
    is_supported,
    read_channels,
    read_image_info,
    split_extension,
)

__all__ = [
    "LAYOUTS",
    "Case",
    "CaseIssue",
    "DatasetError",
    "DatasetSpec",
    "discover_dataset",
    "read_json",
]

logger = logging.getLogger(__name__)

# nnU-Net's channel suffix: ``<case>_0000.nii.gz`` is channel 0 of ``<case>``
_CHANNEL_SUFFIX = re.compile(r"(.+)_(\d{4})")


# --------------------------------------------------------------------------- files


def _hidden(p: Path) -> bool:
    """Skipped without a note: hidden files, and SimSeg's own checkpoints (a taught one is
    written beside its image when that folder is the user's)."""
    return p.name.startswith(".") or p.name.lower().endswith(".safetensors")


def _case_id(p: Path) -> str:
    return p.name if p.is_dir() else split_extension(p)[0]


def _shown(names: Sequence[str], limit: int = 10) -> str:
    return ", ".join(names[:limit]) + (" ..." if len(names) > limit else "")


def _note(notes: list[str], message: str) -> None:
    logger.warning("%s", message)
    notes.append(message)


def _list_files(folder: Path, notes: list[str], file_ending: str | None = None) -> list[Path]:
    """The readable images of a folder (sub-folders are DICOM series), sorted.

    Hidden files and checkpoints are skipped silently; files of another type (or, with
    ``file_ending``, another ending) are skipped with a note.
    """
    kept, ignored = [], []
    for p in sorted(folder.iterdir()):
        if _hidden(p):
            continue
        ok = p.is_dir() or (p.name.lower().endswith(file_ending) if file_ending else is_supported(p))
        (kept if ok else ignored).append(p)
    if ignored:
        what = f"not ending in {file_ending}" if file_ending else "of unsupported type"
        _note(notes, f"{folder}: {len(ignored)} file(s) {what} ignored: {_shown([p.name for p in ignored])}")
    return kept


def _by_case_id(files: Sequence[Path], folder: Path) -> dict[str, Path]:
    """``{case_id: file}``; several files for one case id are an error."""
    out: dict[str, Path] = {}
    dupes: dict[str, list[Path]] = {}
    for p in files:
        cid = _case_id(p)
        if cid in out:
            dupes.setdefault(cid, [out[cid]]).append(p)
        out[cid] = p
    if dupes:
        lines = "; ".join(f"{k}: {', '.join(q.name for q in v)}" for k, v in dupes.items())
        raise DatasetError(f"{folder}: several files share a case name ({lines}); keep one file per case")
    return out


def _unmatched_note(unmatched: list[Path], notes: list[str]) -> None:
    if unmatched:
        _note(notes, f"{len(unmatched)} file(s) without a matching image/label were left out: "
                     f"{_shown([p.name for p in unmatched])}")


# --------------------------------------------------------------------------- discovery


def discover_dataset(root: str | os.PathLike) -> DatasetSpec:
    """Find the cases, classes and channels of a data set folder.

    See :mod:`~napari_simseg.core.data.datasets` for the layouts understood.  Files are
    not opened (except label files when classes must be inferred); use
    :func:`~napari_simseg.core.data.datasets.check_dataset` to validate them.

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
    notes: list[str] = []
    if meta_path.is_file() or ((root / "imagesTr").is_dir() and (root / "labelsTr").is_dir()):
        meta = read_json(meta_path) if meta_path.is_file() else {}
        if not isinstance(meta, dict):
            raise DatasetError(f"{meta_path}: expected a JSON object")
        if "channel_names" in meta or "file_ending" in meta:
            spec = _discover_nnunet(root, meta_path, meta, notes)
        else:
            spec = _discover_msd(root, meta_path, meta, notes)
    elif (root / "images").is_dir() and (root / "labels").is_dir():
        if (root / "masks").is_dir():
            _note(notes, f"{root}: both labels/ and masks/; labels/ is used, masks/ ignored")
        spec = _discover_folder(root, notes)
    elif (root / "images").is_dir() and (root / "masks").is_dir():
        spec = _discover_masks(root, notes)
    else:
        raise DatasetError(
            f"'{root}' is not a data set folder: expected dataset.json with imagesTr/ and "
            "labelsTr/ (Medical Segmentation Decathlon or nnU-Net layout), images/ and "
            "labels/ (one label image per case), or images/ and masks/<class>/ (one "
            "binary mask per class)"
        )
    spec.notes = notes + spec.notes
    if not spec.cases:
        raise DatasetError(f"'{root}': no image/label pair found"
                           + (f" ({'; '.join(notes)})" if notes else ""))
    return spec


def _channel_groups(folder: Path, label_ids: set[str], notes: list[str],
                    file_ending: str | None = None) -> dict[str, dict[int, Path]]:
    """Image files grouped by case: ``{case_id: {channel: path}}``.

    ``<case>_0001.ext`` is channel 1 of ``<case>``, unless a label is named
    ``<case>_0001`` itself; a name without that suffix is channel 0.
    """
    groups: dict[str, dict[int, Path]] = {}
    for p in _list_files(folder, notes, file_ending):
        cid, channel = _case_id(p), 0
        m = _CHANNEL_SUFFIX.fullmatch(cid)
        if m and cid not in label_ids and not p.is_dir():
            cid, channel = m.group(1), int(m.group(2))
        files = groups.setdefault(cid, {})
        if channel in files:
            raise DatasetError(f"{folder}: several files are channel {channel} of case '{cid}' "
                               f"({files[channel].name}, {p.name}); keep one")
        files[channel] = p
    return groups


def _channel_case(cid: str, files: dict[int, Path], label: Path, channel_names: Sequence[str],
                  file_ending: str | None) -> Case:
    """A case from its channel files; missing or extra channels become its problems."""
    if len(channel_names) == 1 and set(files) == {0}:
        return Case(cid, (files[0],), label)
    first = files[min(files)]
    ending = file_ending or split_extension(first)[1]
    paths, problems = [], []
    for k, name in enumerate(channel_names):
        expected = files.get(k, first.parent / f"{cid}_{k:04d}{ending}")
        paths.append(expected)
        if k not in files:
            problems.append((expected, f"channel {k} ('{name}') of case '{cid}' is missing"))
    for k in sorted(set(files) - set(range(len(channel_names)))):
        problems.append((files[k], f"channel {k} is beyond the {len(channel_names)} channel(s) "
                                   f"declared ({', '.join(channel_names)})"))
    return Case(cid, tuple(paths), label, problems=tuple(problems))


def _channel_cases(images: dict[str, dict[int, Path]], labels: dict[str, Path],
                   channel_names: Sequence[str], file_ending: str | None,
                   notes: list[str]) -> tuple[list[Case], list[Path]]:
    cases = [_channel_case(cid, images[cid], labels[cid], channel_names, file_ending)
             for cid in sorted(images) if cid in labels]
    unmatched = [p for cid in sorted(images) if cid not in labels for p in images[cid].values()]
    unmatched += [labels[cid] for cid in sorted(labels) if cid not in images]
    _unmatched_note(unmatched, notes)
    return cases, unmatched


def _class_names(meta: dict, meta_path: Path, label_paths: Sequence[Path], root: Path,
                 notes: list[str]) -> list[str]:
    if "labels" in meta:
        return parse_labels(meta["labels"], str(meta_path))
    return infer_class_names(label_paths, str(root), notes)


def _discover_msd(root: Path, meta_path: Path, meta: dict, notes: list[str]) -> DatasetSpec:
    modality = numbered_names(meta["modality"], str(meta_path), "modality") if "modality" in meta else None
    unmatched: list[Path] = []
    if meta.get("training"):
        cases = _msd_training_cases(root, meta_path, meta["training"], modality)
        n_files = max((len(c.image_paths) for c in cases), default=1)
        channel_names = modality or _default_channel_names(n_files)
    else:
        for sub in ("imagesTr", "labelsTr"):
            if not (root / sub).is_dir():
                raise DatasetError(f"{meta_path}: no 'training' list and no {sub}/ folder to list")
        labels = _by_case_id(_list_files(root / "labelsTr", notes), root / "labelsTr")
        images = _channel_groups(root / "imagesTr", set(labels), notes)
        n_files = max((max(files) + 1 for files in images.values()), default=1)
        channel_names = modality or _default_channel_names(n_files)
        # several modalities but one file per case: the files are 4D, channels last
        file_channels = ["image"] if n_files == 1 else channel_names
        cases, unmatched = _channel_cases(images, labels, file_channels, None, notes)
    return DatasetSpec(
        root=root,
        class_names=_class_names(meta, meta_path, [c.label_path for c in cases], root, notes),
        cases=cases,
        layout="msd",
        name=str(meta.get("name", root.name)),
        unmatched=unmatched,
        channel_names=channel_names,
        channels_in_last_axis=len(channel_names) > 1 and all(len(c.image_paths) == 1 for c in cases),
    )


def _default_channel_names(n: int) -> list[str]:
    return ["image"] if n == 1 else [f"channel_{k}" for k in range(n)]


def _msd_training_cases(root: Path, meta_path: Path, training: Any,
                        modality: list[str] | None) -> list[Case]:
    """The cases of an MSD ``training`` list (an nnU-Net v1 entry may stand for channel files)."""
    cases = []
    seen = set()
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise DatasetError(
                f"{meta_path}: training entry {i} must be {{\"image\": ..., \"label\": ...}}; got {entry!r}"
            )
        image, label = entry["image"], entry["label"]
        if not isinstance(label, str) or not isinstance(image, (str, list)) or not image:
            raise DatasetError(f"{meta_path}: training entry {i}: 'image' and 'label' must be file names")
        paths = [root / p for p in image] if isinstance(image, list) else [root / image]
        if any(_hidden(p) for p in paths) or _hidden(root / label):
            continue
        cid, ext = _case_id(paths[0]), split_extension(paths[0])[1]
        if len(paths) == 1 and not paths[0].exists() and paths[0].with_name(f"{cid}_0000{ext}").exists():
            # nnU-Net v1 lists "case.nii.gz" for the files case_0000.nii.gz, case_0001.nii.gz ...
            paths = [paths[0].with_name(f"{cid}_{k:04d}{ext}") for k in range(len(modality or [0]))]
        elif len(paths) > 1 and _CHANNEL_SUFFIX.fullmatch(cid):
            cid = _CHANNEL_SUFFIX.fullmatch(cid).group(1)  # a list of channel files
        if cid in seen:
            raise DatasetError(f"{meta_path}: case '{cid}' is listed twice in 'training'")
        seen.add(cid)
        problems = tuple((p, f"channel {k} of case '{cid}' is missing")
                         for k, p in enumerate(paths) if len(paths) > 1 and not p.exists())
        cases.append(Case(cid, tuple(paths), root / label, problems=problems))
    return sorted(cases, key=lambda c: c.case_id)


def _discover_nnunet(root: Path, meta_path: Path, meta: dict, notes: list[str]) -> DatasetSpec:
    if "channel_names" in meta:
        channel_names = numbered_names(meta["channel_names"], str(meta_path), "channel_names")
    else:
        channel_names = numbered_names(meta.get("modality", {"0": "image"}), str(meta_path), "modality")
    file_ending = meta.get("file_ending")
    if file_ending is not None:
        file_ending = str(file_ending).lower()
        if file_ending not in SUPPORTED_EXTENSIONS:
            raise DatasetError(f"{meta_path}: file_ending '{file_ending}' is not a supported image type "
                               f"({', '.join(SUPPORTED_EXTENSIONS)})")
    for sub in ("imagesTr", "labelsTr"):
        if not (root / sub).is_dir():
            raise DatasetError(f"{meta_path}: nnU-Net layout without a {sub}/ folder")
    labels = _by_case_id(_list_files(root / "labelsTr", notes, file_ending), root / "labelsTr")
    images = _channel_groups(root / "imagesTr", set(labels), notes, file_ending)
    # several channels declared, one file per case: the file holds them (nnU-Net's RGB PNGs)
    in_file = len(channel_names) > 1 and bool(images) and all(
        set(f) == {0} and split_extension(f[0])[1] in _PICTURE_OR_TIFF for f in images.values())
    cases, unmatched = _channel_cases(images, labels, ["image"] if in_file else channel_names, file_ending, notes)
    n_declared = meta.get("numTraining")
    if isinstance(n_declared, int) and n_declared != len(cases):
        _note(notes, f"{meta_path}: numTraining is {n_declared} but {len(cases)} case(s) were found")
    return DatasetSpec(
        root=root,
        class_names=_class_names(meta, meta_path, [c.label_path for c in cases], root, notes),
        cases=cases,
        layout="nnunet",
        name=str(meta.get("name", root.name)),
        unmatched=unmatched,
        channel_names=channel_names,
        channels_in_last_axis=in_file,
    )


#: files that may hold several channels in one picture: colour samples, a TIFF channel axis
_PICTURE_OR_TIFF = PICTURE_EXTENSIONS + (".tif", ".tiff")


def _tiff_channel_names(path: Path) -> tuple | None:
    """A TIFF's channel names from its axes, without its pixels; None where the pixels must
    tell (a samples axis: grey or true colour) or the file cannot be opened here."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            shape, axes = tif.series[0].shape, tif.series[0].axes
    except Exception:  # reported when the case is read
        return None
    sizes = dict(zip(axes, shape))
    if sizes.get("S", 1) > 1:
        return None
    return tuple(f"channel_{k}" for k in range(sizes["C"])) if sizes.get("C", 1) > 1 else ("image",)


def _file_channel_names(paths: Sequence[Path], notes: list[str], sample: int = 8) -> list[str]:
    """The channels most of (up to ``sample``, evenly spread) image files hold: ``["image"]``,
    red, green and blue for colour pictures, ``channel_k`` for a 4D file or a TIFF's channel axis."""
    paths = sorted(paths)
    if not paths:
        return ["image"]
    counts: dict[tuple, int] = {}
    for i in np.unique(np.linspace(0, len(paths) - 1, min(sample, len(paths))).round().astype(int)):
        path = paths[i]
        try:
            tiff_names = _tiff_channel_names(path) if split_extension(path)[1] in (".tif", ".tiff") else None
            if tiff_names is not None:
                names = tiff_names
            elif split_extension(path)[1] in _PICTURE_OR_TIFF:
                names = tuple(v.metadata.get("channel_name", "image") for v in read_channels(path))
            else:  # header only: a 4D file's last SimpleITK axis holds its channels
                shape = read_image_info(path).shape if path.is_file() else (1,)
                names = tuple(f"channel_{k}" for k in range(shape[0])) if len(shape) == 4 else ("image",)
        except ImageReadError:
            continue  # reported when the case is read
        counts[names] = counts.get(names, 0) + 1
    if not counts:
        return ["image"]
    names = max(counts, key=lambda n: (counts[n], len(n)))
    if len(names) > 1:
        _note(notes, f"the images hold {len(names)} channels each ({', '.join(names)}), read as the network's "
                     "input channels")
    return list(names)


def _discover_folder(root: Path, notes: list[str]) -> DatasetSpec:
    images = _by_case_id(_list_files(root / "images", notes), root / "images")
    labels = _by_case_id(_list_files(root / "labels", notes), root / "labels")
    cases = [Case(k, images[k], labels[k]) for k in sorted(images) if k in labels]
    unmatched = [images[k] for k in sorted(images) if k not in labels]
    unmatched += [labels[k] for k in sorted(labels) if k not in images]
    _unmatched_note(unmatched, notes)
    class_names = class_list(root)
    if class_names is None:
        class_names = infer_class_names([c.label_path for c in cases], str(root), notes)
    channels = _file_channel_names([c.image_path for c in cases], notes)
    return DatasetSpec(root, class_names, cases, "folder", root.name, unmatched, channels, len(channels) > 1)


def _discover_masks(root: Path, notes: list[str]) -> DatasetSpec:
    """``images/`` and ``masks/<class>/<case>.<ext>``: one binary mask per class."""
    images = _by_case_id(_list_files(root / "images", notes), root / "images")
    entries = sorted(p for p in (root / "masks").iterdir() if not _hidden(p))
    folders = [p for p in entries if p.is_dir()]
    loose = [p.name for p in entries if not p.is_dir()]
    if loose:
        _note(notes, f"{root / 'masks'}: {len(loose)} file(s) outside a class folder ignored: {_shown(loose)}")
    class_names = class_list(root)
    if class_names is not None:
        check_mask_class_list(root, class_names, folders)
    else:
        class_names = ["background"] + [d.name for d in folders]
        _note(notes, "no classes.json: the classes are background + the mask folders sorted by name "
                     f"({', '.join(class_names[1:])}); list them in classes.json to choose the order "
                     "(the order gives the label values; where masks overlap the smaller structure wins)")
    known = class_names[1:]
    masks = {d.name: _by_case_id(_list_files(d, notes), d) for d in folders}
    for name in known:
        if name not in masks:
            _note(notes, f"class '{name}' has no folder masks/{name}/: it is empty in every case")
    unknown = [d for d in folders if d.name not in known]
    cases, unmatched = [], []
    for cid in sorted(images):
        entries_of_case = tuple((name, masks.get(name, {}).get(cid)) for name in known)
        foreign = [d for d in unknown if cid in masks[d.name]]
        if not any(p for _, p in entries_of_case) and not foreign:
            unmatched.append(images[cid])
            continue
        problems = tuple(  # one reason for every case of the folder: check-data says it once
            (masks[d.name][cid], f"class folder '{d.name}' is not in the class list ({', '.join(class_names)}); "
                                 "add the class to classes.json or remove the folder")
            for d in foreign
        )
        cases.append(Case(cid, images[cid], None, entries_of_case, problems))
    for d in folders:
        unmatched += [p for cid, p in sorted(masks[d.name].items()) if cid not in images]
    _unmatched_note(unmatched, notes)
    for name in known:
        lacking = [c.case_id for c in cases if dict(c.mask_paths)[name] is None and name in masks]
        if lacking:  # logged only: each case's read notes it (CaseRead.notes)
            logger.warning("class '%s': no mask for %d case(s), empty there: %s", name, len(lacking),
                           _shown(lacking, 5))
    channels = _file_channel_names([c.image_path for c in cases], notes)
    return DatasetSpec(root, class_names, cases, "masks", root.name, unmatched, channels, len(channels) > 1)
