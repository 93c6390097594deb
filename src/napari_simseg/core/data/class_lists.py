"""Class lists: the names of a data set's classes, index = label value, 0 the background.

Read from ``classes.json`` / ``classes.txt`` (a list, ``{"0": name}`` or nnU-Net's
``{name: 0}``, region-based labels), from ``dataset.json``'s ``"labels"``, or inferred
from the label values; :func:`check_mask_class_list` says once what is wrong with a
mask layout's list that lacks the background.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_simseg.core.data.cases import CaseIssue, DatasetError, read_json
from napari_simseg.core.io.images import ImageReadError, read_image

__all__ = ["check_mask_class_list", "class_list", "class_list_file", "infer_class_names", "numbered_names",
           "parse_labels"]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- class lists


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


def _region_names(obj: dict, source: str) -> dict[int, str]:
    """nnU-Net's region-based labels (``{"whole tumor": [1, 2, 3], "enhancing tumor": 3}``)
    as one class per label value: the files hold the values, and each value is named
    after the smallest region holding it (a plain value's own name first)."""
    regions = [(sorted({int(x) for x in (v if isinstance(v, list) else [v])}), str(k)) for k, v in obj.items()]
    names = {}
    for values, name in sorted(regions, key=lambda r: -len(r[0])):  # smaller regions name last, so they win
        for v in values:
            names[v] = name
    logger.warning("%s: region-based labels; one class per label value, named after the smallest region "
                   "holding it: %s", source, ", ".join(f"{k} {names[k]}" for k in sorted(names)))
    return names


def parse_labels(obj: Any, source: str) -> list[str]:
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
        if all(isinstance(v, (int, list)) for v in obj.values()):
            return _names_from_mapping(_region_names(obj, source), source)
    except (TypeError, ValueError):
        pass
    raise DatasetError(
        f"{source}: cannot read the class list {obj!r}; expected {{\"0\": \"background\", "
        "\"1\": \"name\", ...}"
    )


def _classes_from_txt(path: Path) -> list[str]:
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    pairs = [re.fullmatch(r"(\d+)\s*[:=,\s]\s*(.+)", ln) for ln in lines]
    if lines and all(pairs):
        return _names_from_mapping({int(m.group(1)): m.group(2).strip() for m in pairs}, str(path))
    if not lines:
        raise DatasetError(f"{path}: no class names")
    return lines


def class_list_file(root: Path) -> Path | None:
    """``classes.json`` or ``classes.txt`` of ``root``, whichever is there (json first)."""
    return next((root / name for name in ("classes.json", "classes.txt") if (root / name).is_file()), None)


def class_list(root: Path) -> list[str] | None:
    """The names in ``classes.json`` or ``classes.txt``; ``None`` without either."""
    path = class_list_file(root)
    if path is None:
        return None
    if path.suffix == ".json":
        obj = read_json(path)
        if isinstance(obj, dict) and "labels" in obj:
            obj = obj["labels"]
        names = parse_labels(obj, str(path))
    else:
        names = _classes_from_txt(path)
    background = [k for k, n in enumerate(names) if n.strip().lower() == "background"]
    if background and background != [0]:
        raise DatasetError(f"{path}: 'background' is at index {background[0]} of the class list; index 0 is the "
                           f"background (label value 0): put it first, e.g. {_with_background(names)}")
    return names


def _with_background(names: Sequence[str], limit: int = 6) -> str:
    """The class list with "background" first, as JSON (the first few names)."""
    rest = [n for n in names if n.strip().lower() != "background"]
    shown = json.dumps(["background", *rest[:limit]])
    return shown[:-1] + ", ...]" if len(rest) > limit else shown


def check_mask_class_list(root: Path, class_names: Sequence[str], folders: Sequence[Path]) -> None:
    """A mask layout's class list must start with the background: label 0 has no mask.

    A list of the mask classes alone (``["spleen", "liver"]``) would make its first class
    the background and every case's mask of it "not in the class list"; said once here.
    """
    first = class_names[0]
    if first in {d.name for d in folders}:
        path = class_list_file(root)
        reason = (f"index 0 of the class list is the background (label value 0, no mask), but it names "
                  f"'{first}', which has a mask folder (masks/{first}/); put \"background\" first: "
                  f"{_with_background(class_names)}")
        raise DatasetError(f"{path}: {reason}", [CaseIssue("", path, reason)])


def infer_class_names(label_paths: Sequence[Path], source: str, notes: list[str]) -> list[str]:
    """``background`` and ``class_1 .. class_k`` up to the largest value of the label files
    (each read), with a note in ``notes``; unreadable files are left to the case checks."""
    top = -1
    for p in label_paths:
        try:
            arr = read_image(p, labels=True).array
        except ImageReadError:
            continue  # reported by the case checks later
        if arr.size:
            top = max(top, int(np.nanmax(arr)))
    if top < 0:
        raise DatasetError(f"{source}: no readable label file to infer the classes from")
    names = ["background"] + [f"class_{k}" for k in range(1, top + 1)]
    notes.append(f"no class list: {top + 1} classes inferred from the label values "
                 "(background, class_1, ...); name them in classes.json")
    logger.info("%s: %s", source, notes[-1])
    return names


def numbered_names(obj: Any, source: str, what: str) -> list[str]:
    """Names from ``{"0": "T1", "1": "T2"}`` (keys 0..n-1), as in ``modality``."""
    if not isinstance(obj, dict) or not obj:
        raise DatasetError(f"{source}: '{what}' must be a mapping like {{\"0\": \"T1\"}}; got {obj!r}")
    try:
        numbered = {int(k): str(v) for k, v in obj.items()}
    except ValueError:
        raise DatasetError(f"{source}: '{what}' keys must be channel numbers 0, 1, ...; got {list(obj)}") from None
    if sorted(numbered) != list(range(len(numbered))):
        raise DatasetError(f"{source}: '{what}' must number the channels 0..{len(numbered) - 1}; "
                           f"got {sorted(numbered)}")
    return [numbered[k] for k in range(len(numbered))]
