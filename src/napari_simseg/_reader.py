"""napari reader for medical image files, through :mod:`napari_simseg.core.io.images`.

Geometry travels with the layer: voxel spacing becomes the layer ``scale``, the
origin its ``translate``, and the direction cosine matrix (which napari's
scale/translate cannot express) is kept in ``layer.metadata["direction"]`` so the
writer can put it back. All three are in numpy axis order, as in ``core.io.images``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from napari_simseg.core.io.colour import is_colour_names
from napari_simseg.core.io.file_checks import looks_like_dicom
from napari_simseg.core.io.images import SUPPORTED_EXTENSIONS, Volume, is_supported, read_channels, split_extension

__all__ = ["get_reader", "layer_data_from_volume", "read_layers"]

PathOrPaths = str | list
#: a file of more channels than this (a 4D time series) opens as one layer, channels first
MAX_CHANNEL_LAYERS = 8

# Label volumes are recognised by name (MSD's labelsTr/, *_seg, *_mask ...): an
# integer image alone is not enough, many MRI/CT scans are stored as integers.
_LABEL_HINT = re.compile(r"(^|[^a-z])(label|labels|seg|segmentation|mask|gt)([^a-z]|$)", re.I)


def _looks_like_labels(path: Path, array: np.ndarray) -> bool:
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        return False
    stem = split_extension(path)[0]
    return bool(_LABEL_HINT.search(stem) or _LABEL_HINT.search(path.parent.name))


def _looks_like_dicom_folder(folder: Path, max_files: int = 64) -> bool:
    """Whether a folder holds DICOM files (by extension or the ``DICM`` magic, as the
    series reader counts them), looking at its first ``max_files`` files."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return False
    files = [e for e in entries if e.is_file()][:max_files]
    return any(looks_like_dicom(f) for f in files)


def get_reader(path: PathOrPaths) -> Callable | None:
    """Return :func:`read_layers` if this plugin can read ``path``, else None.

    Parameters
    ----------
    path : str or list of str
        A file, a DICOM series folder, or a list of them (each read as its own layer).
    """
    paths = path if isinstance(path, (list, tuple)) else [path]
    if not paths:
        return None
    for p in paths:
        p = Path(p)
        if p.is_dir():
            if not _looks_like_dicom_folder(p):
                return None
        elif not (is_supported(p) and split_extension(p)[1] in SUPPORTED_EXTENSIONS):
            return None
    return read_layers


def layer_data_from_volume(volume: Volume, name: str, layer_type: str = "image") -> tuple:
    """A napari ``LayerDataTuple`` carrying the volume's geometry.

    Parameters
    ----------
    volume : Volume
        Array plus spacing, origin and direction (numpy axis order).
    name : str
        Layer name.
    layer_type : {"image", "labels"}
    """
    direction = np.asarray(volume.direction, dtype=float)
    metadata = {
        "spacing": list(volume.spacing),
        "origin": list(volume.origin),
        "direction": direction.tolist(),
        "simseg_io": dict(volume.metadata),
    }
    kwargs = {
        "name": name,
        "scale": tuple(volume.spacing),
        "translate": tuple(volume.origin),
        "metadata": metadata,
    }
    data = volume.array
    if layer_type == "labels" and not np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.int32 if data.dtype != bool else np.uint8)
    return (data, kwargs, layer_type)


def read_layers(path: PathOrPaths) -> list:
    """Read one or more image files / DICOM folders into napari layer data.

    A file of several channels (a 4D NIfTI, a TIFF with a channel axis) gives one image
    layer per channel, ``"<name> channel_<k>"`` (more than :data:`MAX_CHANNEL_LAYERS`: one
    layer with them along its first axis); a true-colour TIFF one RGB layer.

    Raises
    ------
    ImageReadError
        With a one-line message naming the file and what is wrong.
    """
    paths = path if isinstance(path, (list, tuple)) else [path]
    out = []
    for p in paths:
        p = Path(p)
        name = p.name if p.is_dir() else split_extension(p)[0]
        channels = read_channels(p)
        if len(channels) > 1 and is_colour_names([v.metadata.get("channel_name") for v in channels]):
            # a true-colour TIFF: one RGB layer, as napari shows colour pictures
            data, kwargs, kind = layer_data_from_volume(channels[0], name, "image")
            out.append((np.stack([v.array for v in channels], -1), {**kwargs, "rgb": True}, kind))
            continue
        if len(channels) > MAX_CHANNEL_LAYERS:  # a time series in a 4D file: one layer, channels first
            volume = channels[0]
            volume.array = np.stack([v.array for v in channels])
            volume.spacing, volume.origin = (1.0, *volume.spacing), (0.0, *volume.origin)
            volume.direction = np.eye(volume.array.ndim)
            channels = [volume]
        for volume in channels:
            kind = "labels" if _looks_like_labels(p, volume.array) else "image"
            suffix = f" {volume.metadata['channel_name']}" if len(channels) > 1 else ""
            out.append(layer_data_from_volume(volume, name + suffix, kind))
    return out
