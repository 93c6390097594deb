"""Seeded 2D augmentations for training slices (paper section 5.1.2)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from napari_simseg.core.imaging.transforms import Flip

__all__ = ["Augmenter"]


# --------------------------------------------------------------------------- augmentation


@dataclass
class Augmenter:
    """Random 2D augmentations of section 5.1.2 of the paper.

    Each augmentation is applied independently with probability ``p``, in this
    order: (optionally, beyond the paper) a rotation and scaling about the slice
    centre, vertical flip, horizontal flip (image *and* labels), brightness shift,
    gamma correction, then a sharpness change -- Gaussian blur or unsharp masking,
    one of the two chosen at random (intensity changes touch the image only).

    An options object: each field is one augmentation's setting (keyword arguments).

    Parameters
    ----------
    seed : int
        Seed of the generator used when no ``rng`` is passed to the call.
    p : float
        Probability of each augmentation.
    flip_vertical, flip_horizontal : bool
        Enable flips along rows (up/down) and columns (left/right).
    brightness : float
        Largest additive shift, in normalised intensity units (standard deviations
        after :func:`normalize_volume`); 0 disables.
    gamma : (float, float) or None
        Range of the gamma exponent, applied to a min-max-rescaled copy that is then
        mapped back to the original range.
    blur_sigma : (float, float) or None
        Range of the Gaussian blur sigma in pixels.
    unsharp_amount : (float, float) or None
        Range of the unsharp-masking amount: ``x + amount * (x - blur(x, unsharp_sigma))``.
    unsharp_sigma : float
        Blur sigma of the unsharp mask.
    rotate_degrees : float
        Largest in-plane rotation, in degrees (uniform in ``[-r, r]``); 0 disables.
    scale : (float, float) or None
        Range of the zoom factor (``> 1`` enlarges the anatomy); ``None`` disables.
        Rotation and scaling are one affine resampling of every channel (linear) and
        of the labels (nearest), with edge values repeated; they are not part of the
        paper's list and are off by default.

    Notes
    -----
    The result depends only on the inputs and the generator state, so a generator
    seeded per (epoch, sample) makes training reproducible.  The same number of
    random draws is made whichever augmentations fire.
    """

    seed: int = 0
    p: float = 0.5
    flip_vertical: bool = True
    flip_horizontal: bool = True
    brightness: float = 0.2
    gamma: tuple[float, float] | None = (0.7, 1.5)
    blur_sigma: tuple[float, float] | None = (0.5, 1.2)
    unsharp_amount: tuple[float, float] | None = (0.3, 1.5)
    unsharp_sigma: float = 1.0
    rotate_degrees: float = 0.0
    scale: tuple[float, float] | None = None
    _rng: np.random.Generator = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        p, gamma, blur_sigma, unsharp_amount = self.p, self.gamma, self.blur_sigma, self.unsharp_amount
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1]; got {p}")
        for name, rng_ in (("gamma", gamma), ("blur_sigma", blur_sigma), ("unsharp_amount", unsharp_amount)):
            if rng_ is not None and (len(rng_) != 2 or rng_[0] > rng_[1] or rng_[0] < 0):
                raise ValueError(f"{name} must be a (low, high) range of non-negative values; got {rng_}")
        if gamma is not None and gamma[0] <= 0:
            raise ValueError(f"gamma must be positive; got {gamma}")
        if not 0.0 <= float(self.rotate_degrees) <= 180.0:
            raise ValueError(f"rotate_degrees must be in [0, 180]; got {self.rotate_degrees}")
        scale = self.scale
        if scale is not None and (len(scale) != 2 or not 0 < scale[0] <= scale[1]):
            raise ValueError(f"scale must be a (low, high) range of positive factors; got {scale}")
        self.rotate_degrees = float(self.rotate_degrees)
        self.scale = None if scale is None else (float(scale[0]), float(scale[1]))
        self.p = float(p)
        self.brightness = float(self.brightness)
        self.unsharp_sigma = float(self.unsharp_sigma)
        self._rng = np.random.default_rng(self.seed)

    def __call__(
        self, image: np.ndarray, labels: np.ndarray | None = None, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Augment one 2D slice (with its neighbours, for a 2.5D network).

        Parameters
        ----------
        image : numpy.ndarray, shape (H, W) or (C, H, W)
            A slice, or a :func:`context_stack`; every channel gets the same flips
            and intensity changes (blur and sharpening act within each channel; gamma
            rescales with the whole stack's range, one mapping for all channels).
        labels : numpy.ndarray, shape (H, W) or (L, H, W), optional
            One label map, or several (e.g. a slice's and its neighbour's) that get the
            same geometric changes.
        rng : numpy.random.Generator, optional
            Source of randomness; the augmenter's own seeded generator when omitted.

        Returns
        -------
        (image, labels)
            New contiguous arrays (image float32); inputs are not modified.
        """
        rng = self._rng if rng is None else rng
        img = np.asarray(image, dtype=np.float32)
        if img.ndim not in (2, 3):
            raise ValueError(f"Augmenter works on (H, W) slices or (C, H, W) stacks; got shape {img.shape}")
        lab = None if labels is None else np.asarray(labels)
        if lab is not None and (lab.ndim not in (2, 3) or lab.shape[-2:] != img.shape[-2:]):
            raise ValueError(f"labels shape {lab.shape} differs from image shape {img.shape[-2:]}")
        if self.rotate_degrees > 0 or self.scale is not None:
            # drawn only when enabled, so runs without it keep their random streams
            spatial = rng.random(3)  # fire, angle, zoom
            if spatial[0] < self.p:
                img, lab = self._rotate_scale(img, lab, spatial[1], spatial[2])
        fire = rng.random(5) < self.p  # vflip, hflip, brightness, gamma, sharpness
        u = rng.random(4)  # brightness, gamma, sharpness kind, sharpness strength
        flip = Flip(vertical=bool(fire[0] and self.flip_vertical), horizontal=bool(fire[1] and self.flip_horizontal))
        img = flip.transform(img)
        lab = None if lab is None else flip.transform(lab)
        in_plane = (0,) * (img.ndim - 2)  # no blur across the channel axis
        img = np.array(img, dtype=np.float32)  # contiguous copy
        if fire[2] and self.brightness > 0:
            img += np.float32((2 * u[0] - 1) * self.brightness)
        if fire[3] and self.gamma is not None:
            lo, hi = float(img.min()), float(img.max())
            if hi > lo:
                g = self.gamma[0] + u[1] * (self.gamma[1] - self.gamma[0])
                img = (((img - lo) / (hi - lo)) ** g * (hi - lo) + lo).astype(np.float32)
        if fire[4]:
            kinds = [k for k, r in (("blur", self.blur_sigma), ("unsharp", self.unsharp_amount)) if r is not None]
            if kinds:
                kind = kinds[min(int(u[2] * len(kinds)), len(kinds) - 1)]
                if kind == "blur":
                    s = self.blur_sigma[0] + u[3] * (self.blur_sigma[1] - self.blur_sigma[0])
                    img = ndimage.gaussian_filter(img, (*in_plane, s, s))
                else:
                    a = self.unsharp_amount[0] + u[3] * (self.unsharp_amount[1] - self.unsharp_amount[0])
                    sig = self.unsharp_sigma
                    img = img + np.float32(a) * (img - ndimage.gaussian_filter(img, (*in_plane, sig, sig)))
        lab = None if lab is None else np.ascontiguousarray(lab)
        return img.astype(np.float32, copy=False), lab

    def _rotate_scale(self, img, lab, u_angle, u_zoom):
        """Rotate by ``(2u - 1) * rotate_degrees`` and zoom within ``scale`` about the centre."""
        angle = np.deg2rad((2 * u_angle - 1) * self.rotate_degrees)
        zoom = 1.0 if self.scale is None else self.scale[0] + u_zoom * (self.scale[1] - self.scale[0])
        c, s_ = np.cos(angle), np.sin(angle)
        # output pixel o maps to input pixel M @ (o - centre) + centre
        matrix = np.array([[c, -s_], [s_, c]]) / zoom
        centre = (np.array(img.shape[-2:], float) - 1) / 2
        offset = centre - matrix @ centre
        planes = img.reshape(-1, *img.shape[-2:])
        out = np.stack([ndimage.affine_transform(pl, matrix, offset, order=1, mode="nearest")
                        for pl in planes]).reshape(img.shape).astype(np.float32)
        if lab is not None:
            lab = np.stack([ndimage.affine_transform(pl, matrix, offset, order=0, mode="nearest")
                            for pl in lab.reshape(-1, *lab.shape[-2:])]).reshape(lab.shape)
        return out, lab


