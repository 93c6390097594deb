"""Reading and writing medical image volumes.

Every reader returns a :class:`Volume`: a numpy array plus its geometry, all in
**numpy axis order**.  For a 3D image that is ``(Z, Y, X)`` (SimpleITK's
``GetArrayFromImage`` order), for a 2D image ``(Y, X)``.  SimpleITK itself lists
spacing, origin and direction in ``(x, y, z)`` order; this module reverses them so
that ``volume.spacing[0]`` is the spacing along ``volume.array``'s axis 0.

Geometry convention
-------------------
With ``i`` a voxel index in numpy order (``i = (k, j, i_x)``) the physical position
of the voxel centre, **also listed in reversed (z, y, x) order**, is::

    p = origin + direction @ (spacing * i)

``direction`` is SimpleITK's direction cosine matrix with both its rows and its
columns reversed (``D_numpy = D_sitk[::-1, ::-1]``): column ``a`` is the physical
direction, in (z, y, x) world coordinates, of numpy axis ``a``.

Formats
-------
========================  ==================================================  =========
Format                    Extensions                                          Writable
========================  ==================================================  =========
NIfTI                     ``.nii``, ``.nii.gz``                               yes
NRRD                      ``.nrrd``, ``.nhdr`` (detached header)              yes
MetaImage                 ``.mha``, ``.mhd`` (detached header)                yes
TIFF (tifffile)           ``.tif``, ``.tiff``                                 yes
DICOM, single file        ``.dcm``                                            no
DICOM series              a folder (see :func:`read_image`)                   no
PNG, JPEG, BMP, GIF       ``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.gif``   no
========================  ==================================================  =========

Pictures (PNG 8/16-bit, JPEG, BMP, GIF, TIFF) read as ``(Y, X)``.  An RGB(A) picture of
grey content (R = G = B everywhere, alpha constant) becomes one grey channel, noted in
``volume.metadata["notes"]``; :func:`read_image` refuses true colour, which
:func:`read_channels` reads as three channels (red, green, blue).  :func:`read_channels`
also reads a 4D file whose last (SimpleITK) axis holds channels, and a TIFF with a
channel axis, as one volume per channel.

TIFF geometry: see :mod:`napari_simseg.core.io.tiff`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from napari_simseg.core.io.atomic import DETACHED_EXTENSIONS, atomic_path, detached_data_file
from napari_simseg.core.io.file_checks import (
    is_palette_png,
    nifti_truncation_problem,
    slice_positions_problem,
    unread_files_problem,
)
from napari_simseg.core.io.pil_pictures import PictureError, gif_image, palette_png_indices
from napari_simseg.core.io.tiff import TIFF_EXTENSIONS, colour_planes, read_tiff, write_tiff
from napari_simseg.core.io.volume import ImageInfo, ImageReadError, ImageWriteError, PathLike, Volume

__all__ = ["PICTURE_EXTENSIONS", "SUPPORTED_EXTENSIONS", "WRITABLE_EXTENSIONS", "ImageReadError", "ImageWriteError",
           "ImageInfo", "Volume", "is_supported", "read_channels", "read_image", "read_image_info", "split_extension",
           "write_image"]

logger = logging.getLogger(__name__)


#: File extensions :func:`write_image` accepts.
WRITABLE_EXTENSIONS: tuple[str, ...] = (
    ".nii.gz",
    ".nii",
    ".nrrd",
    ".nhdr",
    ".mha",
    ".mhd",
    ".tif",
    ".tiff",
)

#: 2D picture formats, read (not written) through SimpleITK.
PICTURE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif")

#: File extensions :func:`read_image` accepts (lower case); a folder is read as a
#: DICOM series.
SUPPORTED_EXTENSIONS: tuple[str, ...] = WRITABLE_EXTENSIONS + (".dcm",) + PICTURE_EXTENSIONS

_SITK_FORMATS = {
    ".nii.gz": "NIfTI",
    ".nii": "NIfTI",
    ".nrrd": "NRRD",
    ".nhdr": "NRRD",
    ".mha": "MetaImage",
    ".mhd": "MetaImage",
    ".dcm": "DICOM",
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".bmp": "BMP",
    ".gif": "GIF",  # read by Pillow (core.io.pil_pictures)
}


def split_extension(path: PathLike) -> tuple[str, str]:
    """Split a file name into its stem and its (possibly compound) extension.

    ``.nii.gz`` is recognised as one extension; any other name is split at its last
    dot.  The extension is returned in lower case.

    Examples
    --------
    >>> split_extension("/data/case_01.nii.gz")
    ('case_01', '.nii.gz')
    >>> split_extension("scan.TIF")
    ('scan', '.tif')
    """
    name = Path(path).name
    low = name.lower()
    for ext in SUPPORTED_EXTENSIONS:
        if low.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], ext
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        return name, ""
    return stem, "." + ext.lower()


def is_supported(path: PathLike) -> bool:
    """Whether :func:`read_image` can read ``path``, judged from its name.

    An existing folder counts as supported (it is read as a DICOM series); the
    content of files is not inspected.
    """
    p = Path(path)
    if p.is_dir():
        return True
    return split_extension(p)[1] in SUPPORTED_EXTENSIONS


def _format_of(path: Path) -> str:
    ext = split_extension(path)[1]
    if ext in TIFF_EXTENSIONS:
        return "TIFF"
    if ext in _SITK_FORMATS:
        return _SITK_FORMATS[ext]
    raise ImageReadError(
        path,
        f"unsupported file type '{ext or path.name}'; supported: "
        f"{', '.join(SUPPORTED_EXTENSIONS)} or a DICOM series folder",
    )


# --------------------------------------------------------------------------- errors

_OBJ_PREFIX = re.compile(r"^\w+\(0x[0-9a-fA-F]+\):\s*")


def _summarise_itk_error(exc: BaseException) -> str:
    """Turn a multi-line SimpleITK/ITK exception into a short one-line reason."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    reason = ""
    for ln in lines:
        m = re.search(r"(?:sitk::|itk::|ITK )ERROR:\s*(.*)", ln)
        if m:
            reason = _OBJ_PREFIX.sub("", m.group(1)).strip()
            break
    details = [ln for ln in lines if ln.startswith("[")]
    if details:
        last = re.sub(r"^\[\w+\]\s*", "", details[-1])
        reason = f"{reason} ({last})" if reason else last
    if not reason:
        reason = lines[-1] if lines else type(exc).__name__
    reason = " ".join(reason.split())
    if len(reason) > 240:
        reason = reason[:237] + "..."
    return reason


# --------------------------------------------------------------------------- SimpleITK


def _sitk():
    import SimpleITK as sitk

    return sitk


def _volume_from_sitk(img, fmt: str, path: Path) -> Volume:
    return _volumes_from_sitk(img, fmt, path, keep_colour=False)[0]


def _volumes_from_sitk(img, fmt: str, path: Path, keep_colour: bool) -> list[Volume]:
    """The image's channels: one, or three for a true-colour picture where ``keep_colour``."""
    sitk = _sitk()
    nd = img.GetDimension()
    n_components = img.GetNumberOfComponentsPerPixel()
    if n_components not in (1, 2, 3, 4):
        raise ImageReadError(path, f"it has {n_components} components per pixel (a vector image); convert "
                                   "it to a single-channel image")
    if nd == 4 and img.GetSize()[3] == 1:
        img = img[:, :, :, 0]
        nd = 3
    if nd not in (2, 3):
        raise ImageReadError(path, f"it is a {nd}D image of size {img.GetSize()} (x, y, z, ...); only 2D and "
                                   "3D single-channel images are supported (split multi-channel or time series first)")
    array = sitk.GetArrayFromImage(img)
    planes, names = [array], ["image"]
    notes = [img.GetMetaData("simseg_note")] if img.HasMetaDataKey("simseg_note") else []
    if n_components > 1:
        planes, names, note = colour_planes(array, path, keep_colour)
        notes.append(note)
    header = {}
    for k in img.GetMetaDataKeys():
        v = img.GetMetaData(k)
        if "UNKNOWN_PRINT_CHARACTERISTICS" not in v and k != "simseg_note":
            header[k] = v
    volumes = []
    for k, (plane, name) in enumerate(zip(planes, names)):
        meta: dict[str, Any] = {"format": fmt, "path": str(path), "header": dict(header)}
        if notes:
            meta["notes"] = list(notes)
        if len(planes) > 1:
            meta.update(channel=k, channel_name=name)
        volumes.append(Volume(
            array=plane,
            spacing=tuple(img.GetSpacing())[::-1],
            origin=tuple(img.GetOrigin())[::-1],
            direction=np.asarray(img.GetDirection(), dtype=float).reshape(nd, nd)[::-1, ::-1],
            metadata=meta,
        ))
    return volumes


def _volume_to_sitk(volume: Volume):
    sitk = _sitk()
    img = sitk.GetImageFromArray(_sitk_compatible(volume.array), isVector=False)
    img.SetSpacing([float(s) for s in volume.spacing[::-1]])
    img.SetOrigin([float(o) for o in volume.origin[::-1]])
    img.SetDirection([float(d) for d in np.asarray(volume.direction)[::-1, ::-1].ravel()])
    return img


def _sitk_compatible(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    return np.ascontiguousarray(array)


def _open_sitk_file(path: Path, fmt: str, labels: bool = False):
    """The SimpleITK image of a file, its read errors as :class:`ImageReadError`; a label
    map (``labels``) in a palette PNG as its colour indices."""
    sitk = _sitk()
    try:
        img = gif_image(path, labels) if fmt == "GIF" else sitk.ReadImage(str(path))
    except PictureError as exc:
        raise ImageReadError(path, str(exc)) from None
    except RuntimeError as exc:
        data = detached_data_file(path) if split_extension(path)[1] in DETACHED_EXTENSIONS else None
        if data is not None and not (path.parent / data).is_file():
            raise ImageReadError(path, f"its header names the data file {data}, which is not beside it; "
                                       f"keep the header and its data file together") from None
        reason = _summarise_itk_error(exc).replace(str(path), "the file")  # named once, by the error
        raise ImageReadError(
            path, f"the file is corrupt, truncated or not a valid {fmt} file ({reason})"
        ) from None
    if fmt == "NIfTI":
        problem = nifti_truncation_problem(path, img, compressed=split_extension(path)[1] != ".nii")
        if problem:
            raise ImageReadError(path, problem)
    if labels and fmt == "PNG" and is_palette_png(path):  # SimpleITK expands the palette to colours
        try:
            return palette_png_indices(path, img)
        except PictureError as exc:
            raise ImageReadError(path, str(exc)) from None
    return img



def _read_sitk_file(path: Path, fmt: str, labels: bool = False) -> Volume:
    return _volume_from_sitk(_open_sitk_file(path, fmt, labels), fmt, path)


def _read_dicom_series(folder: Path) -> Volume:
    sitk = _sitk()
    reader = sitk.ImageSeriesReader()
    try:
        series_ids = sorted(reader.GetGDCMSeriesIDs(str(folder)))
    except RuntimeError as exc:
        raise ImageReadError(folder, f"cannot scan the folder for DICOM ({_summarise_itk_error(exc)})") from None
    if not series_ids:
        raise ImageReadError(
            folder,
            "it is a folder but contains no DICOM series (folders are read as DICOM "
            "series; pass an image file instead)",
        )
    files = {sid: list(reader.GetGDCMSeriesFileNames(str(folder), sid)) for sid in series_ids}
    problem = unread_files_problem(folder, files)
    if problem:
        raise ImageReadError(folder, problem)
    chosen = max(series_ids, key=lambda sid: len(files[sid]))  # ties: first sorted id
    if len(series_ids) > 1:
        logger.warning(
            "%s holds %d DICOM series; reading the largest (%s, %d files)",
            folder, len(series_ids), chosen, len(files[chosen]),
        )
    reader.SetFileNames(files[chosen])
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise ImageReadError(
            folder, f"DICOM series {chosen} cannot be read ({_summarise_itk_error(exc)})"
        ) from None
    problem = slice_positions_problem(chosen, files[chosen], reader, img)
    if problem:
        raise ImageReadError(folder, problem)
    vol = _volume_from_sitk(img, "DICOM", folder)
    tags = {}
    for tag, name in (("0008|0060", "modality"), ("0008|103e", "series_description")):
        if reader.HasMetaDataKey(0, tag):
            tags[name] = reader.GetMetaData(0, tag).strip()
    vol.metadata.update(
        series_id=chosen,
        n_files=len(files[chosen]),
        all_series={sid: len(files[sid]) for sid in series_ids},
        **tags,
    )
    return vol


# --------------------------------------------------------------------------- public


def read_image(path: PathLike, labels: bool = False) -> Volume:
    """Read a 2D or 3D image file, or a DICOM series folder.

    Parameters
    ----------
    path : str or os.PathLike
        An image file with one of :data:`SUPPORTED_EXTENSIONS`, or a folder holding a
        DICOM series.  When a folder holds several series, the one with the most
        files (slices) is read; ties go to the first series UID in sorted order.  The
        series read and the other series' sizes are recorded in
        ``volume.metadata`` (``series_id``, ``all_series``).
    labels : bool
        The file is a label map or mask: a palette (indexed-colour) PNG gives its
        indices, not its colours.

    Returns
    -------
    Volume
        The array and its geometry, all in numpy axis order (see module docstring).

    Raises
    ------
    ImageReadError
        If the path does not exist, its type is not supported, or the file is
        corrupt, truncated, in true colour, multi-channel or not 2D/3D, or if a DICOM
        series has a slice missing, unreadable or unevenly spaced.  The message names
        the file and the reason on one line.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(p, "no such file or folder")
    if p.is_dir():
        return _read_dicom_series(p)
    fmt = _format_of(p)
    if p.stat().st_size == 0:
        raise ImageReadError(p, "the file is empty (0 bytes)")
    if fmt == "TIFF":
        return read_tiff(p)[0]
    return _read_sitk_file(p, fmt, labels)


def read_channels(path: PathLike) -> list[Volume]:
    """Read an image as its channels, one :class:`Volume` each.

    A 4D NIfTI, NRRD or MetaImage file whose last SimpleITK axis (numpy axis 0)
    holds ``C > 1`` entries, such as a multi-modal Medical Segmentation Decathlon
    MRI, gives ``C`` 3D volumes sharing the geometry of the first three axes; a TIFF
    with a channel axis (ImageJ ``C``) gives one volume per channel; a true-colour
    picture (PNG, JPEG, BMP, RGB TIFF) gives three, red, green and blue
    (:mod:`napari_simseg.core.io.colour`). ``metadata["channel"]`` is the index and
    ``metadata["channel_name"]`` the name. Any other image is read by
    :func:`read_image` as one channel.

    Raises
    ------
    ImageReadError
        As :func:`read_image`.
    """
    p = Path(path)
    fmt = _format_of(p) if p.is_file() else None
    if fmt is None or p.stat().st_size == 0:
        return [read_image(p)]
    if fmt == "TIFF":
        return read_tiff(p, channels=True)
    img = _open_sitk_file(p, fmt)
    if img.GetDimension() != 4 or img.GetSize()[3] == 1:  # colour splits in pictures only, as discovery looks
        return _volumes_from_sitk(img, fmt, p, keep_colour=fmt in ("PNG", "JPEG", "BMP", "GIF"))
    channels = [_volume_from_sitk(img[:, :, :, k], fmt, p) for k in range(img.GetSize()[3])]
    for k, volume in enumerate(channels):
        volume.metadata.update(channel=k, channel_name=f"channel_{k}")
    return channels


def read_image_info(path: PathLike) -> ImageInfo:
    """Read an image's shape, spacing, origin and data type without its pixels.

    Fast for NIfTI, NRRD and MetaImage files (header only); TIFF files and DICOM
    folders are read in full.

    Raises
    ------
    ImageReadError
        As :func:`read_image`.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(p, "no such file or folder")
    if p.is_dir():
        vol = _read_dicom_series(p)
        return ImageInfo(vol.shape, vol.spacing, vol.origin, vol.array.dtype)
    fmt = _format_of(p)
    if fmt in ("TIFF", "GIF"):
        vol = read_tiff(p)[0] if fmt == "TIFF" else read_image(p)  # tags and pixels come together
        return ImageInfo(vol.shape, vol.spacing, vol.origin, vol.array.dtype)
    sitk = _sitk()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ImageReadError(
            p, f"the file is corrupt or not a valid {fmt} file ({_summarise_itk_error(exc)})"
        ) from None
    size = list(reader.GetSize())
    spacing = list(reader.GetSpacing())
    origin = list(reader.GetOrigin())
    while len(size) > 3 and size[-1] == 1:
        size, spacing, origin = size[:-1], spacing[:-1], origin[:-1]
    pixel = sitk.Image(1, 1, reader.GetPixelID()) if reader.GetNumberOfComponents() == 1 else None
    dtype = sitk.GetArrayViewFromImage(pixel).dtype if pixel is not None else np.dtype(float)
    return ImageInfo(
        tuple(int(s) for s in size[::-1]),
        tuple(float(s) for s in spacing[::-1]),
        tuple(float(o) for o in origin[::-1]),
        np.dtype(dtype),
    )


def write_image(path: PathLike, volume: Volume | np.ndarray) -> Path:
    """Write a volume to an image file; the format follows the extension.

    Parameters
    ----------
    path : str or os.PathLike
        Destination with one of :data:`WRITABLE_EXTENSIONS`.  Missing parent folders
        are created; an existing file is replaced atomically (:mod:`.atomic`).  ``.mhd``
        and ``.nhdr`` also write a detached data file beside the header.  Data are
        compressed where the format allows it.
    volume : Volume or numpy.ndarray
        What to write; a bare array is written with unit spacing, zero origin and
        identity direction.  ``volume.metadata`` is not written.  Boolean arrays are
        written as uint8, float16 as float32.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    ImageWriteError
        For DICOM (writing is not supported), an unknown extension, a direction
        matrix the format cannot store, or an I/O failure.
    """
    p = Path(path)
    vol = volume if isinstance(volume, Volume) else Volume(np.asarray(volume))
    ext = split_extension(p)[1]
    if ext == ".dcm" or p.is_dir():
        raise ImageWriteError(
            p,
            "writing DICOM is not supported; write NIfTI (.nii.gz), NRRD, MetaImage "
            "or TIFF instead",
        )
    if ext not in WRITABLE_EXTENSIONS:
        raise ImageWriteError(
            p, f"unsupported file type '{ext}'; use one of {', '.join(WRITABLE_EXTENSIONS)}"
        )
    img = None
    if ext not in TIFF_EXTENSIONS:
        try:
            img = _volume_to_sitk(vol)
        except (RuntimeError, TypeError) as exc:
            raise ImageWriteError(
                p, f"data type {vol.array.dtype} cannot be stored ({_summarise_itk_error(exc)})"
            ) from None
    tmp = p
    try:  # atomic: a kill during the write leaves the old file whole
        with atomic_path(p, detached=ext in DETACHED_EXTENSIONS) as tmp:
            if img is None:
                write_tiff(tmp, vol)
            else:
                _sitk().WriteImage(img, str(tmp), useCompression=ext != ".nii")
    except RuntimeError as exc:
        raise ImageWriteError(p, _summarise_itk_error(exc).replace(str(tmp), "the file")) from None
    except OSError as exc:
        raise ImageWriteError(p, f"{exc.strerror or exc} ({type(exc).__name__})") from None
    except (ValueError, TypeError) as exc:
        raise ImageWriteError(p, f"{type(exc).__name__}: {exc}") from None
    return p
