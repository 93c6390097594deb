"""Colour pictures as channels: grey content as one channel, true colour as three.

Radiographs are often saved as RGB(A) pictures whose three channels are equal, while
dermoscopy, endoscopy, fundus or histology pictures are in true colour. So a picture
(or a TIFF with a samples axis) is split along its last axis:

* **grey content** (R = G = B at every pixel, alpha constant): one channel, ``image``;
* **true colour**: three channels, ``red``, ``green``, ``blue`` (a constant alpha is
  dropped), each normalised on its own like any other channel, where the caller reads
  channels (:func:`napari_simseg.core.io.images.read_channels`: the trainer, ``simseg
  evaluate``); where it reads one grey image (:func:`napari_simseg.core.io.images.read_image`)
  true colour is refused;
* a **varying alpha** is refused: which pixels are transparent is the user's choice,
  not a channel the network could learn from.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["COLOUR_CHANNELS", "ColourError", "grey_if_equal", "is_colour_names", "split_colour"]

#: The channel names of a true-colour picture, in order.
COLOUR_CHANNELS: tuple[str, ...] = ("red", "green", "blue")
_KINDS = {2: "grey + alpha", 3: "RGB", 4: "RGBA"}


class ColourError(ValueError):
    """A colour picture that cannot be read as asked; the message is the reason."""


def grey_if_equal(planes: np.ndarray) -> np.ndarray | None:
    """The first plane of ``planes`` (channels last) when all of them are equal, else None."""
    grey = planes[..., 0]
    return np.ascontiguousarray(grey) if not (planes != grey[..., None]).any() else None


def split_colour(array: np.ndarray, keep_colour: bool) -> tuple[list[np.ndarray], list[str], str]:
    """The channels of a picture whose last axis holds 2 (grey + alpha), 3 (RGB) or 4 (RGBA) samples.

    Parameters
    ----------
    array : numpy.ndarray
        ``(..., S)`` with ``S`` in 2, 3, 4.
    keep_colour : bool
        Whether a true-colour picture gives its three channels (else it is refused).

    Returns
    -------
    (planes, names, note)
        One array per channel, their names (``["image"]`` or :data:`COLOUR_CHANNELS`) and
        a note saying what was done, for the user.

    Raises
    ------
    ColourError
        A varying alpha channel, or true colour where ``keep_colour`` is False.
    """
    n = array.shape[-1]
    kind = _KINDS[n]
    if n in (2, 4):
        alpha = array[..., -1]
        if alpha.size and alpha.min() != alpha.max():
            raise ColourError(f"{kind} picture whose alpha channel varies ({alpha.min()} to "
                              f"{alpha.max()}); save it without transparency")
    colour = array[..., : 3 if n >= 3 else 1]
    grey = grey_if_equal(colour)
    if grey is not None:
        return [grey], ["image"], f"{kind} picture of grey content read as one grey channel"
    if not keep_colour:
        differ = int(np.count_nonzero((colour != colour[..., :1]).any(axis=-1)))
        raise ColourError(
            f"it is a true-colour {kind} picture (R, G, B differ at {differ} pixel(s)); read as one "
            "grey image it needs converting to greyscale first, or train on colour pictures "
            "(simseg train reads them as three channels: red, green, blue)")
    planes = [np.ascontiguousarray(colour[..., k]) for k in range(3)]
    return planes, list(COLOUR_CHANNELS), f"true-colour {kind} picture read as three channels (red, green, blue)"


def is_colour_names(names: Sequence[str]) -> bool:
    """Whether channel names are those of a true-colour picture (red, green, blue or R, G, B)."""
    lower = tuple(str(n).lower() for n in names)
    return lower in (COLOUR_CHANNELS, ("r", "g", "b"))
