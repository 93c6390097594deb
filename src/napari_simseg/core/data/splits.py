"""Train / validation / test splits by whole volume, saved as ``split.json``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_simseg.core.data.datasets import DatasetError, read_json
from napari_simseg.core.io.atomic import atomic_write_text

__all__ = ["cap_split", "choose_cases", "find_split", "load_split", "save_split", "select_cases", "split_cases"]


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


def cap_split(split: dict[str, Sequence[str]], max_cases: int, seed: int = 0) -> dict[str, list[str]]:
    """At most ``max_cases`` cases of ``split`` in all, in the split's proportions.

    Each part keeps a seeded random subset of its cases (not its first ids: ids are often
    grouped by site or scanner), sized by the largest-remainder rule so that the parts add
    up to exactly ``min(max_cases, total)``; every non-empty part keeps at least one case
    while ``max_cases`` allows it (training first, then validation, then test).

    Returns
    -------
    dict
        The same keys, each list sorted.
    """
    parts = {k: sorted(str(i) for i in v) for k, v in split.items()}
    total = sum(len(v) for v in parts.values())
    budget = min(int(max_cases), total)
    if budget < 1:
        raise ValueError(f"max_cases must be at least 1; got {max_cases}")
    order = sorted((k for k in parts if parts[k]), key=lambda k: ("train", "val", "test").index(k)
                   if k in ("train", "val", "test") else 3)
    exact = {k: budget * len(parts[k]) / total for k in order}
    keep = {k: int(exact.get(k, 0)) for k in parts}
    for k in order[:budget]:  # every non-empty part keeps a case while the budget allows
        keep[k] = max(keep[k], 1)
    while sum(keep.values()) > budget:  # the minimum of one overshot: trim the largest part
        k = max(order, key=lambda k: keep[k])
        keep[k] -= 1
    by_remainder = sorted(order, key=lambda k: exact[k] - int(exact[k]), reverse=True)
    while sum(keep.values()) < budget:  # budget <= total: some part always has room
        k = next(k for k in by_remainder if keep[k] < len(parts[k]))
        keep[k] += 1
        by_remainder.remove(k)
        by_remainder.append(k)
    rng = np.random.default_rng(seed)
    return {k: sorted(rng.permutation(v)[:keep[k]].tolist()) if v else [] for k, v in parts.items()}


def save_split(path: str | os.PathLike, split: dict[str, Sequence[str]]) -> Path:
    """Write a split (``{"train", "val", "test"}`` lists of case ids) as JSON."""
    clean = _validate_split(split, str(path))
    return atomic_write_text(path, json.dumps(clean, indent=2))


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
    return _validate_split(read_json(p), str(p))


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




def _shown_ids(ids, limit: int = 5) -> str:
    return ", ".join(ids[:limit]) + (" ..." if len(ids) > limit else "")


def _trained_on(checkpoint) -> str | None:
    """The data folder a checkpoint's header says it was trained on (None when it does not say)."""
    from napari_simseg.core.network.checkpoint import CheckpointError, read_checkpoint_meta

    try:
        data = read_checkpoint_meta(checkpoint).training.get("data")
    except (CheckpointError, OSError):
        return None
    return str(data) if data else None


def _same_folder(a, b) -> bool:
    return os.path.realpath(str(a)) == os.path.realpath(str(b))


def find_split(data: Path, checkpoint: Path | None = None, split_file: str | os.PathLike | None = None,
               case_ids: Sequence[str] | None = None, log=None):
    """The saved split to use for ``data``: ``split_file``, else ``data/split.json``, else
    the ``split.json`` beside ``checkpoint`` (a training run's folder).

    With ``case_ids`` (the data set's cases) a split file found, not given, applies only
    to its own data: ``data/split.json`` when it names some of the cases; the run's when
    the checkpoint's header says it was trained on ``data``, or when its cases are
    exactly the data set's (the data set moved). Otherwise it is passed over, said
    through ``log``: evaluating another folder uses all of it, even when some of its
    case names match (two folders each numbered from 0).

    Returns
    -------
    (split, path) or (None, None)
        The split and the file it came from; ``(None, None)`` when none applies.

    Raises
    ------
    DatasetError
        When ``split_file`` is given and does not exist, is malformed or names none of
        the data set's cases (the message names the file and ``--split all``).
    """
    ids = None if case_ids is None else set(case_ids)
    if split_file:
        path = Path(split_file)
        if not path.is_file():
            raise DatasetError(f"split file {split_file} does not exist")
        split = load_split(path)
        listed = [i for part in split.values() for i in part]
        if ids is not None and listed and not ids.intersection(listed):
            raise DatasetError(f"split file {path} names none of the {len(ids)} cases of {data} (it lists "
                               f"{_shown_ids(listed)}); evaluate every volume with --split all")
        return split, path
    own = Path(data) / "split.json"
    if own.is_file():
        split = load_split(own)
        listed = [i for part in split.values() for i in part]
        if ids is None or ids.intersection(listed):
            return split, own
        if log is not None:
            log(f"{own} names none of the cases here: not used")
    run = None if checkpoint is None else Path(checkpoint).parent / "split.json"
    if run is not None and run.is_file():
        split = load_split(run)
        listed = [i for part in split.values() for i in part]
        trained_on = _trained_on(checkpoint)
        # the run's own data folder, or that data set moved (the same cases, every one in the split)
        if ids is None or (trained_on is not None and _same_folder(trained_on, data)) or set(listed) == ids:
            return split, run
        if log is not None:
            source = f"the split of {trained_on}" if trained_on else "a split of other cases"
            log(f"{run} is {source}, not of {data}: every volume here is used (--split-file {run} to use "
                f"that split's cases that are here)")
    return None, None


def select_cases(spec, split: dict | None, which: str | None, source: str | os.PathLike | None = None):
    """The cases of ``spec`` in split ``which`` (``all``, ``train``, ``val``, ``test``).

    ``which=None`` picks the test volumes of ``split`` when it has any, else its
    validation volumes, and all volumes when there is no split. ``source`` (the split's
    file) is named in the errors.

    Returns
    -------
    (cases, which)
        The cases, in the data set's order, and the split name used.
    """
    ids = [c.case_id for c in spec.cases]
    if which is None:
        if split is None:
            which = "all"
        else:
            which = "test" if split.get("test") else "val"
    if which == "all":
        chosen = ids
    else:
        if split is None:
            raise DatasetError(f"--split {which} needs a saved split (split.json in {spec.root} or beside the "
                               f"checkpoint, or --split-file FILE); none applies here: use --split all")
        chosen = [i for i in split.get(which, []) if i in set(ids)]
        if not chosen:
            named = f"the split file {source}" if source else "the saved split"
            raise DatasetError(f"{named} has no {which!r} volumes in {spec.root}; use --split all (every volume) "
                               f"or another --split")
    by_id = {c.case_id: c for c in spec.cases}
    return [by_id[i] for i in chosen], which


def choose_cases(spec, which: str | None = None, split_file=None, checkpoint=None, log=None):
    """The cases an evaluation (or calibration) of ``spec`` runs on, and why.

    :func:`find_split` for the data set's cases, then :func:`select_cases`; with no split
    that applies and ``which=None``, every case (said through ``log`` when a split file was
    passed over).

    Returns
    -------
    (cases, which, split_path)
        ``split_path`` is the split file used, ``None`` when none was.
    """
    split, path = find_split(spec.root, checkpoint, split_file, spec.case_ids, log=log)
    cases, which = select_cases(spec, split, which, path)
    return cases, which, path
