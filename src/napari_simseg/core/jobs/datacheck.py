"""``simseg check-data``: what a data set folder holds and whether it can be trained on.

:func:`check_data` discovers the folder (any layout of
:mod:`~napari_simseg.core.data.datasets`), reads and checks every case once and returns a
plain, JSON-ready summary: the layout, cases, classes and their voxel counts,
channels, shapes and spacings, mask overlaps, notes and problems (by file, with the
reason), plus what ``simseg train`` would make of it on this machine (its working
resolution and the estimated seconds per training step, from
:mod:`~napari_simseg.core.jobs.recipe`).  :func:`format_data_check` prints it.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from napari_simseg.core.data.datasets import CaseRead, DatasetError, DatasetSpec, discover_dataset, read_and_check

__all__ = ["MIN_USABLE_CASES", "check_data", "format_data_check"]

#: A data set is usable for training with at least this many usable cases (train + validation).
MIN_USABLE_CASES = 2

_SHOWN_IDS = 5


def _empty_summary(root: Path) -> dict:
    return {
        "root": str(root), "name": root.name, "layout": None, "n_cases": 0, "n_usable": 0,
        "usable": False, "case_ids": [], "classes": [], "channels": [], "channels_in_last_axis": False,
        "shapes": {}, "spacings": {}, "class_voxels": {}, "class_cases": {},
        "overlaps": {"total": [], "per_case": {}}, "notes": [], "problems": [], "unmatched": [],
        "working_size": None, "working_shape": None, "item_shape": None, "batch_size": None,
        "seconds_per_step": None, "cases_read": None,
    }


def _problem(case_id: str, path, reason: str) -> dict:
    return {"case": case_id, "file": str(path), "reason": reason}


def check_data(root: str | os.PathLike, *, progress: Callable[[int, int], None] | None = None) -> dict:
    """Discover a data set folder, read and check every case, and summarise.

    Parameters
    ----------
    root : path
        The data set folder.
    progress : callable, optional
        Called as ``progress(done, total)`` after each case.

    Returns
    -------
    dict
        JSON-ready: ``root``, ``name``, ``layout``, ``n_cases``, ``n_usable``,
        ``usable`` (at least :data:`MIN_USABLE_CASES` usable cases), ``case_ids``
        (the first few), ``classes``, ``channels``, ``channels_in_last_axis``,
        ``shapes`` (label grid and image ``min``/``max`` per axis, and ``per_case``),
        ``spacings`` (``min``/``max``), ``class_voxels`` and ``class_cases`` (per
        class name: voxels, cases where present), ``overlaps`` (``total``: one entry
        per overlapping class pair; ``per_case``), ``notes``, ``problems`` (a list of
        ``{"case", "file", "reason"}``), ``unmatched``, and ``working_size``,
        ``working_shape``, ``item_shape``, ``batch_size`` and ``seconds_per_step`` as
        ``simseg train``'s default recipe would use them on this machine (``None``
        when the data set is not usable; a ``working_size`` of ``None`` keeps the
        slices' own resolution).
    """
    root = Path(root)
    summary = _empty_summary(root)
    try:
        spec = discover_dataset(root)
    except DatasetError as exc:
        summary["problems"] = [_problem(i.case_id, i.path, i.reason) for i in exc.issues] or \
            [_problem("", root, str(exc))]
        return summary
    summary.update(
        name=spec.name, layout=spec.layout, n_cases=len(spec.cases), case_ids=spec.case_ids[:_SHOWN_IDS],
        classes=list(spec.class_names), channels=list(spec.channel_names),
        channels_in_last_axis=spec.channels_in_last_axis, notes=list(spec.notes),
        unmatched=[str(p) for p in spec.unmatched],
    )
    reads = []
    for k, case in enumerate(spec.cases):
        read = read_and_check(case, spec=spec)
        summary["problems"] += [_problem(i.case_id, i.path, i.reason) for i in read.issues]
        # keep only what the summary needs, not the pixels
        reads.append(_CaseFacts.of(read, spec))
        if progress is not None:
            progress(k + 1, len(spec.cases))
    hint = _class_list_hint(spec, reads)
    if hint is not None:  # the cause of the cases' label problems, said once before them
        summary["problems"].insert(0, _problem("", *hint))
    _summarise_cases(summary, spec, reads)
    summary["usable"] = summary["n_usable"] >= MIN_USABLE_CASES
    if summary["usable"]:  # `simseg train` refuses the others: nothing to estimate
        summary.update(_training_estimate(summary))
    return summary


def _class_list_hint(spec: DatasetSpec, facts: list[_CaseFacts]) -> tuple[Path, str] | None:
    """``(file, reason)`` when the class list seems to lack the background: its index 0 is not
    named so and the labels hold one value more than it names."""
    names = list(spec.class_names)
    top = max((f.label_max for f in facts if f.label_max is not None), default=None)
    if names[0].strip().lower() == "background" or top != len(names):
        return None
    files = [spec.root / "dataset.json"] if spec.layout in ("msd", "nnunet") else \
        [spec.root / n for n in ("classes.json", "classes.txt") if (spec.root / n).is_file()]
    rest = json.dumps(["background", *names[:6]])
    rest = rest[:-1] + ", ...]" if len(names) > 6 else rest
    return (files[0] if files else spec.root,
            f"the class list names {len(names)} classes ({', '.join(names[:6])}{' ...' * (len(names) > 6)}) but "
            f"the labels hold values up to {top}: index 0 is the background (label value 0); if the list names "
            f"only the structures, put \"background\" first: {rest}")


class _CaseFacts:
    """What the summary keeps of one :class:`CaseRead` (its pixels are dropped)."""

    def __init__(self, read: CaseRead, counts: np.ndarray | None):
        self.case_id = read.case.case_id
        self.usable = not read.issues
        self.shape = None if read.labels is None else tuple(int(s) for s in read.labels.shape)
        self.image_shape = read.image_shape
        self.spacing = read.spacing
        self.notes = read.notes
        self.overlaps = read.overlaps
        self.label_max = read.label_max
        self.counts = counts

    @classmethod
    def of(cls, read: CaseRead, spec: DatasetSpec) -> _CaseFacts:
        counts = None
        if not read.issues:
            counts = np.bincount(read.labels.ravel(), minlength=spec.n_classes)[: spec.n_classes]
        return cls(read, counts)


def _axis_range(values: list) -> dict:
    if not values:
        return {}
    arr = np.asarray(values, dtype=float)
    as_number = (lambda v: int(v)) if all(float(v).is_integer() for v in arr.ravel()) else \
        (lambda v: round(float(v), 6))
    return {"min": [as_number(v) for v in arr.min(axis=0)], "max": [as_number(v) for v in arr.max(axis=0)]}


def _summarise_cases(summary: dict, spec: DatasetSpec, facts: list[_CaseFacts]) -> None:
    usable = [f for f in facts if f.usable]
    summary["n_usable"] = len(usable)
    by_ndim = [f for f in usable if len(f.shape) == max((len(u.shape) for u in usable), default=0)]
    summary["shapes"] = {
        "ndim": len(by_ndim[0].shape) if by_ndim else None,
        "labels": _axis_range([f.shape for f in by_ndim]),
        "images": _axis_range([f.image_shape for f in by_ndim]),
        "per_case": {f.case_id: list(f.shape) for f in usable},
    }
    summary["spacings"] = _axis_range([f.spacing for f in by_ndim])
    counts = np.sum([f.counts for f in usable], axis=0) if usable else np.zeros(spec.n_classes, int)
    present = np.sum([f.counts > 0 for f in usable], axis=0) if usable else np.zeros(spec.n_classes, int)
    summary["class_voxels"] = {n: int(c) for n, c in zip(spec.class_names, counts)}
    summary["class_cases"] = {n: int(c) for n, c in zip(spec.class_names, present)}
    pairs: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    per_case = {}
    for f in usable:
        if f.overlaps:
            per_case[f.case_id] = [{"classes": list(p), "pixels": n} for p, n in f.overlaps.items()]
            for p, n in f.overlaps.items():
                pairs[p][0] += n
                pairs[p][1] += 1
    summary["overlaps"] = {
        "total": [{"classes": list(p), "pixels": n, "cases": k} for p, (n, k) in
                  sorted(pairs.items(), key=lambda item: [spec.class_names.index(c) for c in item[0]])],
        "per_case": per_case,
    }
    # one line per distinct note, with the cases it concerns
    cases_of: dict[str, list[str]] = defaultdict(list)
    for f in facts:
        for note in f.notes:
            cases_of[note].append(f.case_id)
    for note, ids in cases_of.items():
        shown = ", ".join(ids[:_SHOWN_IDS]) + (" ..." if len(ids) > _SHOWN_IDS else "")
        summary["notes"].append(f"{note} ({len(ids)} case(s): {shown})")


def _training_estimate(summary: dict) -> dict:
    """What ``simseg train`` (the default recipe) would use for these cases on this machine.

    Returns ``working_size`` (the recipe's; ``None``: slices at their own
    resolution), ``working_shape`` (the largest slice at the working resolution),
    ``item_shape`` and ``batch_size`` (one training batch, padded, as
    :class:`~napari_simseg.core.data.slices.SliceDataset` pads it) and
    ``seconds_per_step`` (a few real training steps timed on random data).
    """
    # ---- THE call into core.jobs.recipe: the default training recipe and its cost here ----
    from napari_simseg.core.jobs.recipe import default_recipe, estimate_step_seconds, item_shape, working_slice_shape

    shapes = list(summary["shapes"]["per_case"].values())
    options = default_recipe(shapes, summary["classes"], summary["channels"])
    working = working_slice_shape(shapes, options["working_size"])
    item = item_shape(options, shapes)
    seconds = estimate_step_seconds(options, len(summary["classes"]), len(summary["channels"]), item)
    return {"working_size": options["working_size"], "working_shape": list(working), "item_shape": list(item),
            "batch_size": options["batch_size"], "seconds_per_step": seconds, "cases_read": options["max_volumes"]}


def _fmt_shape(shape) -> str:
    return "x".join(str(v) for v in shape)


def _range_text(rng: dict) -> str:
    if not rng:
        return "n/a"
    lo, hi = _fmt_shape(rng["min"]), _fmt_shape(rng["max"])
    return lo if lo == hi else f"{lo} to {hi}"


def _grouped_problems(problems: list[dict]) -> list[str]:
    """One line per problem; a reason shared by several files once, with how many and the first few."""
    files_of: dict[str, list[str]] = defaultdict(list)
    for p in problems:
        files_of[p["reason"]].append(p["file"])
    lines = []
    for reason, files in files_of.items():
        if len(files) == 1:
            lines.append(f"  - {files[0]}: {reason}")
        else:
            shown = ", ".join(files[:3]) + (" ..." if len(files) > 3 else "")
            lines.append(f"  - {len(files)} files: {reason} ({shown})")
    return lines


def format_data_check(summary: dict, *, max_problems: int = 50) -> str:
    """The summary of :func:`check_data` as text for a terminal."""
    s = summary
    lines = [f"Data set: {s['root']} (layout: {s['layout'] or 'none found'}, name: {s['name']})"]
    if s["layout"] is not None:
        ids = ", ".join(s["case_ids"]) + (" ..." if s["n_cases"] > len(s["case_ids"]) else "")
        bad = sorted({p["case"] for p in s["problems"] if p["case"]})
        unusable = (f"; not usable: {', '.join(bad[:_SHOWN_IDS])}{' ...' * (len(bad) > _SHOWN_IDS)} (see Problems)"
                    if bad else "")
        lines.append(f"Cases: {s['n_cases']} found ({ids}), {s['n_usable']} usable{unusable}")
        where = ", in each image file's last axis" if s["channels_in_last_axis"] else ""
        lines.append(f"Channels: {len(s['channels'])} ({', '.join(s['channels'])}{where})")
        lines.append(f"Classes: {len(s['classes'])} ({', '.join(s['classes'])})")
        shapes = s["shapes"]
        if shapes.get("labels"):
            lines.append(f"Shapes ({shapes['ndim']}D, numpy order): label grid {_range_text(shapes['labels'])}; "
                         f"images {_range_text(shapes['images'])}")
            lines.append(f"Spacings: {_range_text(s['spacings'])}")
        lines.append("Voxels per class (cases where present):")
        width = max((len(n) for n in s["classes"]), default=0)
        for name in s["classes"]:
            lines.append(f"  {name:<{width}}  {s['class_voxels'].get(name, 0):>14,}  "
                         f"({s['class_cases'].get(name, 0)} of {s['n_usable']})")
    if s["overlaps"]["total"]:
        lines.append("Mask overlaps (the smaller structure of the case wins there):")
        for o in s["overlaps"]["total"]:
            lines.append(f"  {o['classes'][0]} / {o['classes'][1]}: {o['pixels']:,} pixel(s) in {o['cases']} case(s)")
    if s["notes"]:
        lines.append("Notes:")
        lines += [f"  - {n}" for n in s["notes"]]
    if s["problems"]:
        n_cases = len({p["case"] for p in s["problems"] if p["case"]})
        lines.append(f"Problems ({len(s['problems'])}" + (f", {n_cases} case(s)):" if n_cases else "):"))
        grouped = _grouped_problems(s["problems"])
        lines += grouped[:max_problems]
        if len(grouped) > max_problems:
            lines.append(f"  ... and {len(grouped) - max_problems} more (see --json)")
    if s["seconds_per_step"] is not None:
        size = (f"working size {s['working_size']}" if s["working_size"] is not None
                else "slices at their own resolution")
        lines.append(f"Training here (simseg train's default recipe): {size}, largest slice "
                     f"{_fmt_shape(s['working_shape'])}, batches of {s['batch_size']} x "
                     f"{_fmt_shape(s['item_shape'])}, about {s['seconds_per_step']:.2f} s per training step"
                     + (f"; {s['cases_read']} cases read (what fits in memory)" if s.get("cases_read") else ""))
    verdict = "usable" if s["usable"] else f"NOT usable: fewer than {MIN_USABLE_CASES} usable cases"
    lines.append(f"Verdict: {verdict}" + (" (problem cases are left out with --on-error skip)"
                                          if s["usable"] and s["problems"] else ""))
    return "\n".join(lines)
