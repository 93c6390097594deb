"""What a labelled data set is made of: its cases, what discovery found, and its errors.

:class:`Case` (one image's channel files and its labels or masks), :class:`DatasetSpec`
(what :func:`~napari_simseg.core.data.layouts.discover_dataset` found in a folder),
:class:`DatasetError` and :class:`CaseIssue` (a problem, by file), and
:func:`read_json`. No file is read here but a JSON file asked for.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LAYOUTS", "Case", "CaseIssue", "DatasetError", "DatasetSpec", "read_json"]

#: The layout names :attr:`DatasetSpec.layout` takes.
LAYOUTS = ("msd", "nnunet", "folder", "masks")


class DatasetError(ValueError):
    """A data set, case or volume that cannot be used as it is.

    Attributes
    ----------
    issues : list of CaseIssue
        The problems found, one per file and reason (may be empty when the error is
        not about specific files).
    """

    def __init__(self, message: str, issues: Sequence[CaseIssue] = ()):
        self.issues = list(issues)
        super().__init__(message)


@dataclass(frozen=True)
class CaseIssue:
    """A problem with one file (or folder) of one case."""

    case_id: str
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class Case:
    """One labelled image: its channel files and its labels.

    Attributes
    ----------
    case_id : str
        Identifier, the image file name without extension (and channel suffix).
    image_paths : tuple of pathlib.Path
        One file per channel, in channel order; a single path is wrapped into a
        1-tuple, so ``Case(case_id, image, labels)`` works.  One file may also hold
        every channel along its last axis (a 4D Decathlon image).
    label_path : pathlib.Path or None
        The label image (label value ``k`` is class ``k``); ``None`` in the mask
        layout.
    mask_paths : tuple of (str, pathlib.Path or None)
        Mask layout: one binary mask per class, in label order (entry ``k`` is label
        value ``k + 1``; the smaller structure wins where masks overlap); ``None`` where the
        case has no mask of that class (the class is empty there).
    problems : tuple of (pathlib.Path, str)
        What discovery already found wrong with this case (a missing channel file, a
        mask in a class folder the class list lacks), by file or folder.
    """

    case_id: str
    image_paths: tuple[Path, ...]
    label_path: Path | None = None
    mask_paths: tuple[tuple[str, Path | None], ...] = ()
    problems: tuple[tuple[Path, str], ...] = ()

    def __post_init__(self) -> None:
        paths = self.image_paths
        if isinstance(paths, (str, os.PathLike)):
            paths = (paths,)
        object.__setattr__(self, "image_paths", tuple(Path(p) for p in paths))
        if self.label_path is not None:
            object.__setattr__(self, "label_path", Path(self.label_path))
        masks = tuple((str(name), None if p is None else Path(p)) for name, p in self.mask_paths)
        object.__setattr__(self, "mask_paths", masks)
        object.__setattr__(self, "problems", tuple((Path(p), str(r)) for p, r in self.problems))
        if not self.image_paths:
            raise ValueError(f"case '{self.case_id}' has no image file")
        if self.label_path is None and not self.mask_paths:
            raise ValueError(f"case '{self.case_id}' needs a label_path or mask_paths")

    @property
    def image_path(self) -> Path:
        """The first (often only) image file."""
        return self.image_paths[0]

    @property
    def label_grid_path(self) -> Path | None:
        """The file whose grid the labels have: the label image or the first mask."""
        if self.label_path is not None:
            return self.label_path
        return next((p for _, p in self.mask_paths if p is not None), None)


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
        One of :data:`LAYOUTS`: ``"msd"``, ``"nnunet"``, ``"folder"``, ``"masks"``.
    name : str
        Data set name (``dataset.json``'s ``"name"`` or the folder name).
    unmatched : list of pathlib.Path
        Images without labels and labels (or masks) without an image, left out.
    channel_names : list of str
        One name per image channel (modality), e.g. ``["T1", "T2"]``.
    channels_in_last_axis : bool
        Whether each case's channels come from one 4D file's last (SimpleITK) axis
        rather than from one file per channel.
    notes : list of str
        What discovery did that a user should know (classes inferred, files
        ignored, classes without masks ...).
    """

    root: Path
    class_names: list[str]
    cases: list[Case]
    layout: str = "msd"
    name: str = ""
    unmatched: list[Path] = field(default_factory=list)
    channel_names: list[str] = field(default_factory=lambda: ["image"])
    channels_in_last_axis: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        """Number of classes, background included."""
        return len(self.class_names)

    @property
    def n_channels(self) -> int:
        """Number of image channels."""
        return len(self.channel_names)

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



def read_json(path: Path) -> Any:
    """The content of a JSON file; a :class:`DatasetError` naming the file otherwise."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
