"""The image types every reader returns and every writer takes: :class:`Volume` (an array with
its geometry, in numpy axis order), :class:`ImageInfo`, and the read / write errors.

The geometry convention is :mod:`napari_simseg.core.io.images`'s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

__all__ = ["ImageInfo", "ImageReadError", "ImageWriteError", "PathLike", "Volume"]

PathLike = Union[str, "os.PathLike[str]"]


class ImageReadError(ValueError):
    """An image that cannot be read: missing, unsupported or corrupt.

    The message is one line naming the file and the reason.

    Attributes
    ----------
    path : str
        The file or folder that was being read.
    reason : str
        Why it could not be read.
    """

    def __init__(self, path: PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image '{self.path}': {reason}")


class ImageWriteError(ValueError):
    """An image that cannot be written (unsupported format, invalid geometry, I/O)."""

    def __init__(self, path: PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot write image '{self.path}': {reason}")


@dataclass
class Volume:
    """An image array with its physical geometry, in numpy axis order.

    Parameters
    ----------
    array : numpy.ndarray
        2D ``(Y, X)`` or 3D ``(Z, Y, X)`` array.
    spacing : sequence of float, optional
        Voxel size along each array axis, same order as ``array.shape``.
        Defaults to 1.0 per axis.
    origin : sequence of float, optional
        Physical position of the centre of voxel ``(0, ..., 0)``, listed in the same
        reversed (z, y, x) order. Defaults to zeros.
    direction : array_like, optional
        ``(ndim, ndim)`` direction cosine matrix in numpy axis order (SimpleITK's
        matrix with rows and columns reversed); column ``a`` is the world direction
        of array axis ``a``.  Defaults to the identity.
    metadata : dict, optional
        Free-form information from the reader (format, header entries, DICOM series
        ...).  Writers ignore it.
    """

    array: np.ndarray
    spacing: tuple[float, ...] | None = None
    origin: tuple[float, ...] | None = None
    direction: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        nd = self.array.ndim
        if nd not in (2, 3):
            raise ValueError(
                f"a Volume must be 2D (Y, X) or 3D (Z, Y, X); got an array of shape "
                f"{self.array.shape}"
            )
        self.spacing = _as_vector(self.spacing, nd, 1.0, "spacing")
        if any(not np.isfinite(s) or s <= 0 for s in self.spacing):
            raise ValueError(f"spacing must be finite and positive; got {self.spacing}")
        self.origin = _as_vector(self.origin, nd, 0.0, "origin")
        if self.direction is None:
            self.direction = np.eye(nd)
        else:
            d = np.asarray(self.direction, dtype=float)
            if d.size == nd * nd:
                d = d.reshape(nd, nd)
            if d.shape != (nd, nd) or not np.all(np.isfinite(d)):
                raise ValueError(
                    f"direction must be a finite ({nd}, {nd}) matrix for a {nd}D "
                    f"image; got shape {np.shape(self.direction)}"
                )
            self.direction = d
        if self.metadata is None:
            self.metadata = {}

    @property
    def ndim(self) -> int:
        """Number of array dimensions (2 or 3)."""
        return self.array.ndim

    @property
    def shape(self) -> tuple[int, ...]:
        """Array shape in numpy order."""
        return tuple(self.array.shape)


@dataclass(frozen=True)
class ImageInfo:
    """Geometry and data type of an image file, read without its pixels.

    Attributes
    ----------
    shape : tuple of int
        Array shape in numpy order.
    spacing, origin : tuple of float
        As in :class:`Volume`.
    dtype : numpy.dtype
        Pixel data type.
    """

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    dtype: np.dtype


def _as_vector(value, n: int, default: float, name: str) -> tuple[float, ...]:
    if value is None:
        return (float(default),) * n
    v = np.asarray(value, dtype=float).ravel()
    if v.size != n:
        raise ValueError(f"{name} needs {n} values for a {n}D image; got {tuple(v)}")
    return tuple(float(x) for x in v)


# --------------------------------------------------------------------------- paths
