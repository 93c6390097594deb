"""napari writers for image and labels layers, through :mod:`napari_simseg.core.io.images`.

The inverse of :mod:`napari_simseg._reader`: the layer ``scale`` is written as the
voxel spacing, ``translate`` as the origin and ``metadata["direction"]`` (when it
fits the layer) as the direction cosine matrix. DICOM is read-only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_simseg.core.io.images import Volume, write_image

__all__ = ["compact_labels", "volume_from_layer", "write_image_layer", "write_labels_layer"]


def _direction(metadata: dict | None, ndim: int) -> np.ndarray | None:
    if not metadata or metadata.get("direction") is None:
        return None
    d = np.asarray(metadata["direction"], dtype=float)
    # a direction from another geometry (e.g. a 3D layer's on a 2D slice) is dropped
    return d if d.shape == (ndim, ndim) else None


def volume_from_layer(data: Any, meta: dict) -> Volume:
    """Build a :class:`Volume` from a layer's data and its state dict.

    Parameters
    ----------
    data : array-like
        Layer data (multiscale: the full-resolution level is used).
    meta : dict
        ``layer._get_state()``-like dict: ``scale``, ``translate``, ``metadata``,
        ``multiscale``, ``rgb``.

    Raises
    ------
    ValueError
        For RGB layers and anything that is not 2D or 3D.
    """
    if meta.get("multiscale"):
        data = data[0]
    if meta.get("rgb"):
        raise ValueError("RGB layers cannot be written as medical images; convert to one channel")
    array = np.asarray(data)
    if array.ndim not in (2, 3):
        raise ValueError(f"only 2D or 3D layers can be written; this one has shape {array.shape}")
    nd = array.ndim
    scale = meta.get("scale")
    translate = meta.get("translate")
    spacing = tuple(float(s) for s in scale[-nd:]) if scale is not None else None
    origin = tuple(float(t) for t in translate[-nd:]) if translate is not None else None
    return Volume(array, spacing, origin, _direction(meta.get("metadata"), nd))


def compact_labels(array: np.ndarray) -> np.ndarray:
    """Store labels in the smallest unsigned type that holds them (uint8/uint16).

    Napari makes int32/int64 label layers; 8 or 16 bits are what other tools expect
    and every format (ImageJ TIFF included) can hold them.
    """
    array = np.asarray(array)
    if array.dtype == bool:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer) or array.size == 0:
        return array
    lo, hi = int(array.min()), int(array.max())
    if lo < 0:
        return array
    if hi <= np.iinfo(np.uint8).max:
        return array.astype(np.uint8, copy=False)
    if hi <= np.iinfo(np.uint16).max:
        return array.astype(np.uint16, copy=False)
    return array


def write_image_layer(path: str, data: Any, meta: dict) -> list[str]:
    """Write an image layer (npe2 single-layer writer).

    Returns
    -------
    list of str
        The path written.
    """
    volume = volume_from_layer(data, meta)
    return [str(write_image(path, volume))]


def write_labels_layer(path: str, data: Any, meta: dict) -> list[str]:
    """Write a labels layer (npe2 single-layer writer), as uint8/uint16 when possible."""
    volume = volume_from_layer(data, meta)
    volume.array = compact_labels(volume.array)
    return [str(write_image(path, volume))]
