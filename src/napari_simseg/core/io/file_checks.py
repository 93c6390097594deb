"""Checks of image files that the readers' libraries do not make.

ITK zero-fills a truncated NIfTI file; GDCM leaves a DICOM file it cannot parse out of
every series without a word, and ITK reads a series with one averaged spacing, so a
missing slice would shift every slice after it; tifffile falls back to the pages it
finds in a truncated ImageJ stack. :mod:`~napari_simseg.core.io.images` refuses such files
with the problem these functions describe (``None``: no problem).
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["imagej_image_count", "is_palette_png", "looks_like_dicom", "nifti_truncation_problem",
           "slice_positions_problem", "unread_files_problem"]


def nifti_truncation_problem(path: Path, image, compressed: bool) -> str | None:
    """A NIfTI file (``.nii.gz`` when ``compressed``) shorter than its header (``image``:
    its SimpleITK image, whose metadata holds the header) says, described."""
    try:
        ndim = int(image.GetMetaData("dim[0]"))
        nvox = int(np.prod([int(image.GetMetaData(f"dim[{k}]")) for k in range(1, ndim + 1)]))
        expected = int(float(image.GetMetaData("vox_offset"))) + nvox * int(image.GetMetaData("bitpix")) // 8
    except (RuntimeError, ValueError):
        return None  # header entries unavailable: nothing to compare against
    if not compressed:
        size = Path(path).stat().st_size
        return f"the file is truncated ({size} bytes, the header needs {expected})" if size < expected else None
    with open(path, "rb") as fh:
        fh.seek(-4, os.SEEK_END)
        isize = struct.unpack("<I", fh.read(4))[0]
    if isize == expected % 2**32:
        return None
    # size mismatch: decompress fully to tell a truncated stream from trailing data
    try:
        with gzip.open(path, "rb") as fh:
            total = 0
            while chunk := fh.read(1 << 22):
                total += len(chunk)
    except (EOFError, OSError, zlib.error) as exc:
        return f"the compressed data is corrupt or truncated ({exc})"
    return f"the file is truncated ({total} bytes of data, the header needs {expected})" if total < expected else None


def imagej_image_count(ij: dict) -> int | None:
    """The number of 2D images an ImageJ description announces (``images=``, else
    ``channels x slices x frames``); ``None`` without any such entry."""
    try:
        if "images" in ij:
            return int(ij["images"])
        counts = [int(ij[k]) for k in ("channels", "slices", "frames") if k in ij]
    except (TypeError, ValueError):
        return None
    return int(np.prod(counts)) if counts else None


def looks_like_dicom(path: Path) -> bool:
    """A ``.dcm`` file, or one with the ``DICM`` magic at byte 128 (not a DICOMDIR)."""
    path = Path(path)
    if path.name.upper() == "DICOMDIR" or path.name.startswith("."):
        return False
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def is_palette_png(path: Path) -> bool:
    """Whether a PNG stores colour indices (IHDR colour type 3), as label maps often do."""
    with open(path, "rb") as f:
        head = f.read(26)
    return len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and head[25] == 3

def _names(paths, most: int = 5) -> str:
    names = [Path(p).name for p in paths]
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def unread_files_problem(folder: Path, files: dict[str, list[str]]) -> str | None:
    """The files of ``folder`` that look like DICOM but are in none of the series
    ``files`` (series id: file names, as GDCM listed them), described; ``None`` if none."""
    found = sorted(p for p in Path(folder).iterdir() if p.is_file() and looks_like_dicom(p))
    read = {os.path.realpath(f) for names in files.values() for f in names}
    unread = [p for p in found if os.path.realpath(p) not in read]
    if not unread:
        return None
    return (f"{len(found)} files look like DICOM but only {len(found) - len(unread)} can be read; "
            f"{_names(unread)} {'is' if len(unread) == 1 else 'are'} corrupt or truncated "
            "(a slice would be missing: replace or remove the file(s))")


def _position(text: str) -> tuple | None:
    try:
        values = [float(v) for v in text.replace("\\", " ").split()]
    except ValueError:
        return None
    return tuple(values) if len(values) == 3 else None


def slice_positions_problem(series_id: str, files: list[str], reader, image) -> str | None:
    """What is wrong with the slice positions of a series read by ``reader`` (a
    SimpleITK ``ImageSeriesReader`` with its metadata dictionaries) into ``image``:
    two slices at one position, a gap of a multiple of the spacing (slices missing), or
    uneven spacing; ``None`` when they are uniform (within 1% of the spacing or 1e-3 mm)
    or cannot be checked (under 3 slices, multi-frame files, no ImagePositionPatient)."""
    if len(files) < 3 or image.GetDimension() != 3 or image.GetSize()[2] != len(files):
        return None
    positions = []
    for k in range(len(files)):
        if not reader.HasMetaDataKey(k, "0020|0032"):
            return None  # no ImagePositionPatient (secondary capture...): nothing to check
        p = _position(reader.GetMetaData(k, "0020|0032"))
        if p is None:
            return None
        positions.append(p)
    d = image.GetDirection()
    z = np.asarray(positions) @ np.array((d[2], d[5], d[8]))
    steps = np.diff(z)
    if steps.sum() < 0:
        z, steps = -z, -steps
    where = f"DICOM series {series_id} ({len(files)} DICOM files read)"

    def between(k: int) -> str:
        return (f"slice positions jump from {z[k]:.4g} to {z[k + 1]:.4g} mm between files "
                f"{Path(files[k]).name} and {Path(files[k + 1]).name}")

    if (steps <= 0).any():
        k = int(np.argmax(steps <= 0))
        return f"{where}: {between(k)}: two slices at the same position (a duplicated slice or two series with one UID)"
    step = float(steps.min())
    tol = max(1e-3, 0.01 * step)
    if np.all(np.abs(steps - step) <= tol):
        return None
    k = int(np.argmax(np.abs(steps - step) > tol))
    ratio = steps[k] / step
    if abs(ratio - round(ratio)) * step <= tol:
        missing = int(round(ratio)) - 1
        return (f"{where}: {between(k)} (spacing {step:.4g} mm): "
                + ("a slice is missing" if missing == 1 else f"{missing} slices are missing"))
    return (f"{where}: the slices are not uniformly spaced: {between(k)}, where the spacing elsewhere is "
            f"{step:.4g} mm (a tilted gantry or mixed series? resample it to a uniform grid first)")
