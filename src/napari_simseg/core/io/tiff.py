"""TIFF files with their geometry (tifffile).

The Y/X spacing is stored in the XResolution/YResolution tags (pixels per unit, no unit
conversion on reading) and the Z spacing in the ImageJ ``spacing`` entry, as ImageJ and
Fiji do. Origin and direction, which plain TIFF cannot hold, are stored in two extra
ImageJ entries (``simseg_origin``, ``simseg_direction``) that ImageJ ignores. Data types
ImageJ cannot hold (anything but uint8, uint16 and float32) are written as a tifffile
"shaped" TIFF whose JSON description carries ``spacing``, ``origin`` and ``direction``. A
TIFF without any such information reads with spacing 1, origin 0 and identity direction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_simseg.core.io.colour import ColourError, split_colour
from napari_simseg.core.io.file_checks import imagej_image_count
from napari_simseg.core.io.volume import ImageReadError, Volume

__all__ = ["TIFF_EXTENSIONS", "colour_planes", "read_tiff", "write_tiff"]

TIFF_EXTENSIONS = (".tif", ".tiff")
_IMAGEJ_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


def colour_planes(array: np.ndarray, path: Path, keep_colour: bool) -> tuple[list, list, str]:
    """:func:`~napari_simseg.core.io.colour.split_colour` of a picture's ``(..., samples)``
    array, its refusal as an :class:`ImageReadError` naming ``path``."""
    try:
        return split_colour(array, keep_colour)
    except ColourError as exc:
        raise ImageReadError(path, str(exc)) from None


def _floats(text, n: int) -> tuple[float, ...] | None:
    try:
        vals = [float(v) for v in (text.split() if isinstance(text, str) else text)]
    except (TypeError, ValueError):
        return None
    return tuple(vals) if len(vals) == n else None


def _tiff_contents(path: Path) -> tuple:
    """``(array, axes, ImageJ metadata, shaped metadata, resolution tags)`` of a TIFF's first series."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = series.axes
            array = series.asarray()
            ij = tif.imagej_metadata or {}
            n_images = int(np.prod([n for n, a in zip(series.shape, axes) if a not in "YXS"]))
            shaped = (tif.shaped_metadata or [{}])[0] if tif.is_shaped else {}
            page = tif.pages[0]
            res = {}
            for tag in ("XResolution", "YResolution"):
                t = page.tags.get(tag)
                if t is not None:
                    res[tag] = t.value
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise ImageReadError(path, f"the file is corrupt or not a valid TIFF ({type(exc).__name__}: {exc})") from None
    expected = imagej_image_count(ij)
    if expected is not None and expected > n_images:
        # tifffile logs "ImageJ series metadata invalid or corrupted file" and falls back
        # to the pages it can find (often only the first): a smaller image, no error.
        raise ImageReadError(
            path, f"its ImageJ metadata says {expected} images but only {n_images} can be "
                  "read; the file looks truncated (copy or save it again)"
        )
    return array, axes, ij, shaped, res


def _tiff_planes(path: Path, array: np.ndarray, axes: str, channels: bool) -> tuple[list, list, list]:
    """``(planes, channel names, notes)``: a channel (``C``) or samples (``S``) axis split
    into channels where ``channels`` (a picture's samples as :func:`split_colour` does)."""
    n_c = array.shape[axes.index("C")] if "C" in axes else 1
    n_s = array.shape[axes.index("S")] if "S" in axes else 1
    if n_c > 1 and (not channels or n_s > 1):
        raise ImageReadError(
            path, f"it has {n_c} channels (axes {axes}); read as one grey image it needs one file per "
                  "channel (Fiji: Image > Color > Split Channels); simseg train reads its channels"
        )
    if n_c > 1:
        return list(np.moveaxis(array, axes.index("C"), 0)), [f"channel_{k}" for k in range(n_c)], []
    if n_s > 4 and channels:
        return list(np.moveaxis(array, axes.index("S"), 0)), [f"channel_{k}" for k in range(n_s)], []
    if n_s > 4:
        raise ImageReadError(
            path, f"it has {n_s} samples per pixel (multi-channel); convert it to a single-channel image"
        )
    if n_s > 1:
        planes, names, note = colour_planes(np.moveaxis(array, axes.index("S"), -1), path, channels)
        return planes, names, [note]
    return [array], ["image"], []


def read_tiff(path: Path, channels: bool = False) -> list[Volume]:
    """A TIFF's channels: one, or (where ``channels``) every entry of its channel axis or
    the three of a true-colour picture."""
    array, axes, ij, shaped, res = _tiff_contents(path)
    planes, names, notes = _tiff_planes(path, array, axes, channels)
    for k, plane in enumerate(planes):
        if plane.ndim > 3:
            planes[k] = plane = np.squeeze(plane)
            if plane.ndim > 3:
                raise ImageReadError(path, f"it has shape {array.shape} (axes {axes}); only 2D and 3D "
                                           "single-channel TIFFs are supported")
        if plane.ndim < 2:
            raise ImageReadError(path, f"it has shape {plane.shape}; expected a 2D or 3D image")
    nd = planes[0].ndim
    spacing = [1.0] * nd
    for tag, axis in (("YResolution", nd - 2), ("XResolution", nd - 1)):
        val = res.get(tag)
        if isinstance(val, tuple) and len(val) == 2 and val[0] > 0 and val[1] > 0:
            spacing[axis] = val[1] / val[0]
    if nd == 3 and "spacing" in ij:
        try:
            spacing[0] = float(ij["spacing"])
        except (TypeError, ValueError):
            pass
    origin = direction = None
    meta: dict[str, Any] = {"format": "TIFF", "path": str(path)}
    if notes:
        meta["notes"] = notes
    if ij:
        origin = _floats(ij.get("simseg_origin"), nd)
        d = _floats(ij.get("simseg_direction"), nd * nd)
        direction = None if d is None else np.reshape(d, (nd, nd))
        if "unit" in ij:
            meta["unit"] = ij["unit"]
    elif shaped:
        s = _floats(shaped.get("spacing"), nd)
        if s is not None:
            spacing = list(s)
        origin = _floats(shaped.get("origin"), nd)
        d = _floats(np.ravel(shaped.get("direction", [])).tolist(), nd * nd)
        direction = None if d is None else np.reshape(d, (nd, nd))
    if any(s <= 0 or not np.isfinite(s) for s in spacing):
        spacing = [1.0] * nd
    extra = [dict(channel=k, channel_name=n) if len(planes) > 1 else {} for k, n in enumerate(names)]
    return [Volume(array=plane, spacing=tuple(spacing), origin=origin, direction=direction,
                   metadata={**meta, **more, **({"notes": list(notes)} if notes else {})})
            for plane, more in zip(planes, extra)]


def write_tiff(path: Path, volume: Volume) -> None:
    import tifffile

    arr = volume.array
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    nd = arr.ndim
    sy, sx = volume.spacing[-2], volume.spacing[-1]
    resolution = (1.0 / sx, 1.0 / sy)
    if arr.dtype in _IMAGEJ_DTYPES:
        metadata: dict[str, Any] = {"axes": "ZYX" if nd == 3 else "YX", "unit": "mm"}
        if nd == 3:
            metadata["spacing"] = float(volume.spacing[0])
        metadata["simseg_origin"] = " ".join(repr(float(v)) for v in volume.origin)
        metadata["simseg_direction"] = " ".join(
            repr(float(v)) for v in np.asarray(volume.direction).ravel()
        )
        tifffile.imwrite(path, arr, imagej=True, resolution=resolution, metadata=metadata)
    else:
        metadata = {
            "spacing": [float(s) for s in volume.spacing],
            "origin": [float(o) for o in volume.origin],
            "direction": np.asarray(volume.direction, dtype=float).tolist(),
        }
        tifffile.imwrite(
            path, arr, resolution=resolution, metadata=metadata, photometric="minisblack"
        )
