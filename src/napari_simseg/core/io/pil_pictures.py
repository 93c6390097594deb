"""Pictures SimpleITK cannot read as a user means them, read with Pillow.

* **GIF** (``.gif``): SimpleITK has no GIF reader, and public radiograph sets ship their
  masks as GIF (the SCR chest masks: one 1024 x 1024 GIF per structure). A GIF is
  indexed colour, so what its pixels mean depends on the palette: a palette of greys
  (black and white masks, grey pictures) is read as those grey values, whatever the
  index order (index 0 may well be white); a colour palette is read as its indices
  for a label map or mask (``labels``), else as red, green and blue. An animated GIF
  (more than one frame) is refused: which frame is meant is not ours to guess.
* **Palette PNG label maps**: SimpleITK expands the palette to colours; a label map's
  values are its indices.

The result is a SimpleITK image (spacing 1, as GIF holds none), so that the rest of
:mod:`~napari_simseg.core.io.images` treats it as any other picture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["PictureError", "gif_image", "palette_png_indices"]


class PictureError(ValueError):
    """A picture Pillow cannot read, with the reason (the caller names the file)."""


def _grey_palette(picture) -> bool:
    """Whether every colour the picture's pixels use is a grey (R = G = B)."""
    palette = np.asarray(picture.getpalette() or [], dtype=np.int32).reshape(-1, 3)
    used = np.unique(np.asarray(picture))
    used = used[used < len(palette)]
    return bool(np.all(palette[used, 0] == palette[used, 1]) and np.all(palette[used, 1] == palette[used, 2]))


def gif_image(path: Path, labels: bool = False):
    """A GIF as a SimpleITK image: grey values, palette indices (``labels`` with a colour
    palette) or an RGB vector image (a colour palette otherwise).

    Raises
    ------
    PictureError
        If Pillow cannot read it, or it has several frames.
    """
    import SimpleITK as sitk
    from PIL import Image

    try:
        with Image.open(path) as picture:
            frames = int(getattr(picture, "n_frames", 1))
            if frames > 1:
                raise PictureError(f"it is an animated GIF of {frames} frames; save the frame meant as a PNG")
            colour = picture.mode in ("RGB", "RGBA") or picture.mode == "P" and not _grey_palette(picture)
            indices = colour and labels and picture.mode == "P"
            if indices:
                array = np.asarray(picture)
            else:
                array = np.asarray(picture.convert("RGB" if colour else "L"))
    except PictureError:
        raise
    except Exception as exc:  # PIL raises many types (decompression bombs included)
        raise PictureError(f"it is not a readable GIF ({type(exc).__name__}: {exc})") from None
    image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=colour and not indices)
    if indices:
        image.SetMetaData("simseg_note", "GIF with a colour palette read as its indices (label values)")
    return image


def palette_png_indices(path: Path, like):
    """A palette PNG label map as its colour indices, with the geometry of the SimpleITK
    image ``like`` (the same file as SimpleITK read it).

    Raises
    ------
    PictureError
        If Pillow cannot read the palette.
    """
    import SimpleITK as sitk
    from PIL import Image

    try:
        with Image.open(path) as picture:
            indices = sitk.GetImageFromArray(np.asarray(picture))
        indices.CopyInformation(like)
    except Exception as exc:  # PIL raises many types (decompression bombs included)
        raise PictureError(f"its palette cannot be read ({type(exc).__name__}: {exc})") from None
    indices.SetMetaData("simseg_note", "palette PNG read as its colour indices (label values)")
    return indices
