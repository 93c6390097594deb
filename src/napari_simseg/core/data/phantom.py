"""Seeded synthetic "female pelvis MRI"-like phantoms for tests, demos and smoke training.

The phantom mimics the difficulties listed in section 3 of the paper, not the
anatomy in detail:

* five classes -- ``background``, ``organ`` (uterus-like), ``cavity`` (a thin bright
  slit inside the organ), ``tumour`` (0 to 27 dark nodules in or on the organ) and
  ``neighbour`` (a bright bladder-like organ pressed against it);
* strong class imbalance (background is typically > 90 % of the voxels, the cavity
  well under 1 %);
* several connected components per class on some slices: the organ is a tube bent
  into a "V"/"U" (like an anteflexed uterus whose body and cervix are cut
  separately by axial slices), tumours are separate nodules;
* class intensities that overlap (tumours vs muscle, cavity vs bladder vs fat,
  organ vs bone marrow), per-class texture and partial-volume blur, so that no
  threshold separates the classes;
* a smooth multiplicative bias field and Rician noise as in magnitude MRI, and an
  arbitrary per-volume intensity scale (10^2 to 10^3.5), so that per-volume
  normalisation is needed.

All randomness comes from ``numpy.random.default_rng(seed)``: a seed always gives the
same volume.  Geometry is defined in millimetres over a fixed field of view (72 mm
in Z, 144 mm along the shorter in-plane side), so any ``shape`` shows the same
anatomy at a different resolution; :func:`phantom_spacing` gives the voxel size.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = [
    "CLASS_NAMES",
    "MAX_TUMOURS",
    "make_phantom",
    "make_phantom_dataset",
    "phantom_spacing",
]

#: Class names of the phantom; the index is the label value.
CLASS_NAMES: tuple[str, ...] = ("background", "organ", "cavity", "tumour", "neighbour")
#: Largest number of tumours (as in the paper's data set).
MAX_TUMOURS = 27

_FOV_Z_MM = 72.0
_FOV_INPLANE_MM = 144.0

# Relative T2-weighted intensities (multiplied by a per-volume jitter).
_INTENSITY = {
    "fat": 0.75,
    "muscle": 0.30,
    "marrow": 0.58,
    "cortex": 0.06,
    "rectum": 0.24,
    "neighbour": 0.90,
    "organ": 0.56,
    "junction": 0.36,
    "cavity": 0.84,
    "tumour": 0.28,
}


def phantom_spacing(shape: Sequence[int]) -> tuple[float, float, float]:
    """Voxel size in mm ``(z, y, x)`` of a phantom of the given ``(Z, H, W)`` shape."""
    z, h, w = _check_shape(shape)
    s = _FOV_INPLANE_MM / min(h, w)
    return (_FOV_Z_MM / z, s, s)


def _check_shape(shape) -> tuple[int, int, int]:
    try:
        z, h, w = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be three integers (Z, H, W); got {shape!r}") from None
    if z < 4 or h < 32 or w < 32:
        raise ValueError(
            f"phantom shape {(z, h, w)} is too small: need Z >= 4 and H, W >= 32"
        )
    return z, h, w


def _draw_n_tumours(rng: np.random.Generator) -> int:
    # Skewed towards few tumours (P(0) = 0.15, mean about 5), capped at 27.
    return int(min(MAX_TUMOURS, rng.geometric(0.15) - 1))


def make_phantom(
    shape: Sequence[int] = (24, 96, 96),
    seed: int = 0,
    n_tumours: int | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Make one synthetic pelvis-like MRI volume with its labels.

    Parameters
    ----------
    shape : (Z, H, W)
        Volume shape; Z >= 4, H and W >= 32.  Default ``(24, 96, 96)``.
    seed : int
        Seed of all randomness; the same seed gives the same volume.
    n_tumours : int, optional
        Number of tumours, 0 to 27.  Each is a separate 3D connected component
        (they never touch each other, the cavity or the neighbour organ), so the
        tumour label has exactly ``n_tumours`` components.  ``None`` draws it from a
        distribution skewed towards few tumours (0 in about 15 % of the volumes, in
        which case the tumour class is absent).

    Returns
    -------
    image : numpy.ndarray of float32, shape (Z, H, W)
        Non-negative MRI-like intensities on an arbitrary per-volume scale.
    labels : numpy.ndarray of uint8, shape (Z, H, W)
        Values index ``class_names``.
    class_names : list of str
        ``["background", "organ", "cavity", "tumour", "neighbour"]``.
    """
    z_n, h_n, w_n = _check_shape(shape)
    rng = np.random.default_rng(seed)
    if n_tumours is None:
        n_tumours = _draw_n_tumours(rng)
    elif int(n_tumours) != n_tumours or not 0 <= n_tumours <= MAX_TUMOURS:
        raise ValueError(f"n_tumours must be an integer in 0..{MAX_TUMOURS}; got {n_tumours!r}")
    # the random draws happen in this order: the same seed gives the same volume
    canvas = _Canvas((z_n, h_n, w_n), rng)
    body = canvas.paint_body_and_bones()
    apex, r_body, organ_sd, cavity_sd = canvas.organ_distances()
    neighbour = canvas.paint_neighbour(apex, r_body)
    cavity = canvas.paint_organ(organ_sd, cavity_sd)
    canvas.paint_tumours(int(n_tumours), organ_sd, cavity, neighbour, body)
    return canvas.image(), canvas.labels, list(CLASS_NAMES)


class _Canvas:
    """The phantom under construction: centred physical coordinates (mm), labels and tissue."""

    def __init__(self, full: tuple, rng: np.random.Generator):
        z_n, h_n, w_n = full
        self.rng = rng
        self.full = full
        self.sz, self.sy, self.sx = sz, sy, sx = phantom_spacing(full)
        # centred physical coordinates (mm), broadcastable
        self.zc = ((np.arange(z_n) - (z_n - 1) / 2) * sz).astype(np.float32)[:, None, None]
        self.yc = ((np.arange(h_n) - (h_n - 1) / 2) * sy).astype(np.float32)[None, :, None]
        self.xc = ((np.arange(w_n) - (w_n - 1) / 2) * sx).astype(np.float32)[None, None, :]
        self.half_h, self.half_w = h_n * sy / 2, w_n * sx / 2
        self.labels = np.zeros(full, dtype=np.uint8)
        self.tissue = np.zeros(full, dtype=np.float32)  # clean intensity map
        self.texture_amp = np.zeros(full, dtype=np.float32)
        self.jitter = {k: v * rng.uniform(0.88, 1.12) for k, v in _INTENSITY.items()}

    def ellipsoid(self, c, axes, angle=0.0):
        """Normalised radius (<1 inside) of an ellipsoid rotated in-plane by angle."""
        dz, dy, dx = self.zc - c[0], self.yc - c[1], self.xc - c[2]
        ca, sa = np.cos(angle), np.sin(angle)
        u = dy * ca + dx * sa
        v = -dy * sa + dx * ca
        return np.sqrt((dz / axes[0]) ** 2 + (u / axes[1]) ** 2 + (v / axes[2]) ** 2)

    def paint(self, mask, key, amp):
        self.tissue[mask] = self.jitter[key]
        self.texture_amp[mask] = amp * self.jitter[key]

    def paint_body_and_bones(self) -> np.ndarray:
        """Body, subcutaneous fat, muscle, pelvic bones and rectum; returns the body mask."""
        rng, yc, xc, zc, full = self.rng, self.yc, self.xc, self.zc, self.full
        half_h, half_w = self.half_h, self.half_w
        body_ay = half_h * rng.uniform(0.80, 0.92)
        body_ax = half_w * rng.uniform(0.86, 0.96)
        wobble = 1.0 + 0.04 * np.sin(zc / 20.0 + rng.uniform(0, 2 * np.pi))
        body_r = np.sqrt((yc / (body_ay * wobble)) ** 2 + (xc / (body_ax * wobble)) ** 2)
        body = np.broadcast_to(body_r < 1.0, full)
        self.paint(body, "fat", 0.06)
        fat_depth = rng.uniform(0.80, 0.88)
        self.paint(np.broadcast_to(body_r < fat_depth, full), "muscle", 0.10)
        # pelvic bones (background distractors)
        for side in (-1, 1):
            c = (0.0, half_h * rng.uniform(0.05, 0.20), side * half_w * rng.uniform(0.55, 0.65))
            axes = (80.0, rng.uniform(10, 15), rng.uniform(8, 12))
            r = self.ellipsoid(c, axes, rng.uniform(-0.4, 0.4))
            self.paint(r < 1.0, "cortex", 0.05)
            self.paint(r < 0.75, "marrow", 0.12)
        # rectum, posterior
        c = (0.0, half_h * rng.uniform(0.40, 0.55), rng.uniform(-8, 8))
        r = self.ellipsoid(c, (80.0, rng.uniform(8, 12), rng.uniform(9, 14)))
        self.paint(r < 1.0, "rectum", 0.10)
        self.paint(r < 0.5, "muscle", 0.15)
        return body

    def organ_distances(self):
        """Signed distances to the organ (a tube bent along a circular arc) and its cavity."""
        rng, zc, yc, xc, full = self.rng, self.zc, self.yc, self.xc, self.full
        u_angle = np.pi / 2 + rng.uniform(-0.5, 0.5)  # arc plane mostly antero-posterior
        e_u = np.array([0.0, np.sin(u_angle), np.cos(u_angle)])  # in-plane (y, x) direction
        e_z = np.array([1.0, 0.0, 0.0])
        arc_r = rng.uniform(16.0, 26.0)
        theta = np.linspace(rng.uniform(-1.9, -0.5), rng.uniform(0.7, 1.9), 40)
        apex = np.array([rng.uniform(2.0, 18.0), rng.uniform(-0.05, 0.12) * self.half_h,
                         rng.uniform(-0.12, 0.12) * self.half_w])
        centre = apex - arc_r * e_z
        line = centre[None] + arc_r * (np.cos(theta)[:, None] * e_z + np.sin(theta)[:, None] * e_u)
        t = np.linspace(0.0, 1.0, len(theta))
        r_body = rng.uniform(12.0, 16.0)
        radius = r_body * (0.55 + 0.35 * np.sin(np.pi * t) + 0.25 * t**2)  # thin cervix, thick fundus
        organ_sd = np.full(full, np.inf, dtype=np.float32)
        cavity_sd = np.full(full, np.inf, dtype=np.float32)
        flat = rng.uniform(-np.pi, np.pi)  # in-plane direction along which the cavity is thin
        fy, fx = np.float32(np.sin(flat)), np.float32(np.cos(flat))
        for k, (p, rad) in enumerate(zip(line, radius)):
            dz, dy, dx = zc - p[0], yc - p[1], xc - p[2]
            dz2 = dz * dz
            d = np.sqrt(dz2 + dy * dy + dx * dx)
            np.minimum(organ_sd, d - rad, out=organ_sd)
            if 0.2 <= t[k] <= 0.85:
                thin = dy * fy + dx * fx
                dc = np.sqrt(dz2 + dy * dy + dx * dx + 3.0 * thin * thin)
                np.minimum(cavity_sd, dc - max(0.26 * rad, 2.6), out=cavity_sd)
        return apex, r_body, organ_sd, cavity_sd

    def paint_neighbour(self, apex, r_body) -> np.ndarray:
        """The neighbour (bladder) pressed against the organ's anterior side."""
        rng, half_h, half_w = self.rng, self.half_h, self.half_w
        nb_axes = (rng.uniform(14, 22), rng.uniform(14, 22), rng.uniform(18, 28))
        a_dir = rng.uniform(-0.6, 0.6)
        offset = r_body + 0.75 * nb_axes[1]
        nb_c = (
            np.clip(apex[0] - rng.uniform(5, 15), -25.0, 25.0),
            np.clip(apex[1] - offset * np.cos(a_dir), -half_h * 0.7, half_h * 0.7),
            np.clip(apex[2] + offset * np.sin(a_dir), -half_w * 0.7, half_w * 0.7),
        )
        dz, dy, dx = self.zc - nb_c[0], self.yc - nb_c[1], self.xc - nb_c[2]
        phi = np.arctan2(dy, dx)
        bumps = (
            1.0
            + 0.07 * np.sin(2 * phi + rng.uniform(0, 2 * np.pi))
            + 0.05 * np.sin(3 * phi + rng.uniform(0, 2 * np.pi))
        )
        nb_r = np.sqrt((dz / nb_axes[0]) ** 2 + (dy / nb_axes[1]) ** 2 + (dx / nb_axes[2]) ** 2) / bumps
        neighbour = nb_r < 1.0
        self.paint(neighbour, "neighbour", 0.04)
        self.labels[neighbour] = 4
        return neighbour

    def paint_organ(self, organ_sd, cavity_sd) -> np.ndarray:
        """The organ and its cavity (never empty); returns the cavity mask."""
        zc, yc, xc, full = self.zc, self.yc, self.xc, self.full
        organ = organ_sd < 0
        self.paint(organ, "organ", 0.10)
        self.paint(organ & (cavity_sd < 2.5), "junction", 0.08)  # dark band around the cavity
        self.labels[organ] = 1
        cavity = organ & (cavity_sd < 0)
        if not cavity.any():  # arc mostly out of view: keep the class present
            inner = np.unravel_index(np.argmin(organ_sd), full)
            cavity = self.ellipsoid([zc.ravel()[inner[0]], yc.ravel()[inner[1]], xc.ravel()[inner[2]]],
                                    (2.5, 2.5, 2.5)) < 1.0
            cavity &= organ
            cavity[inner] = True
        self.paint(cavity, "cavity", 0.06)
        self.labels[cavity] = 2
        return cavity

    def paint_tumours(self, n_tumours: int, organ_sd, cavity, neighbour, body) -> None:
        """Separate nodules in or on the organ, never touching each other, the cavity or the neighbour."""
        rng, full, sz, sy, sx = self.rng, self.full, self.sz, self.sy, self.sx
        blocked = ndimage.binary_dilation(cavity | neighbour, structure=np.ones((3, 3, 3), bool))
        tumours = np.zeros(full, dtype=bool)
        candidates = np.argwhere(organ_sd < -1.0)
        if len(candidates) == 0:
            candidates = np.argwhere(organ_sd < 0)
        r_max = 10.0 - 5.0 * n_tumours / MAX_TUMOURS
        placed = 0
        attempts = 0
        while placed < n_tumours:
            attempts += 1
            shrink = 0.9 ** (attempts // 40)
            r = max(rng.uniform(3.0, r_max) * shrink, 0.5 * sy)
            if attempts > 2000:  # organ too crowded or out of view: use the whole body
                candidates = np.argwhere(body & ~blocked)
            cz, cy, cx = candidates[rng.integers(len(candidates))]
            axes = np.array([r / sz, r * rng.uniform(0.8, 1.2) / sy, r * rng.uniform(0.8, 1.2) / sx])
            ext = np.ceil(axes).astype(int)
            lo = np.maximum([cz, cy, cx] - ext, 0)
            hi = np.minimum(np.array([cz, cy, cx]) + ext + 1, full)
            gz, gy, gx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            ball = ((gz - cz) / axes[0]) ** 2 + ((gy - cy) / axes[1]) ** 2 + ((gx - cx) / axes[2]) ** 2 <= 1.0
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
            if (ball & blocked[box]).any():
                continue
            tumours[box] |= ball
            lo2, hi2 = np.maximum(lo - 1, 0), np.minimum(hi + 1, full)
            box2 = tuple(slice(a, b) for a, b in zip(lo2, hi2))
            blocked[box2] |= ndimage.binary_dilation(tumours[box2], structure=np.ones((3, 3, 3), bool))
            placed += 1
        self.paint(tumours, "tumour", 0.22)
        self.labels[tumours] = 3

    def image(self) -> np.ndarray:
        """Texture, partial volume, a smooth bias field and Rician noise on an arbitrary scale."""
        rng, full = self.rng, self.full
        noise_tex = ndimage.gaussian_filter(rng.standard_normal(full).astype(np.float32), sigma=(0.7, 1.5, 1.5))
        noise_tex /= max(float(noise_tex.std()), 1e-6)
        image = self.tissue + self.texture_amp * noise_tex
        image = ndimage.gaussian_filter(image, sigma=(0.4, 0.7, 0.7))  # partial volume
        zn = self.zc / (_FOV_Z_MM / 2)
        yn, xn = self.yc / self.half_h, self.xc / self.half_w
        coef = rng.normal(0.0, 0.18, size=6)
        log_bias = (coef[0] * zn + coef[1] * yn + coef[2] * xn + coef[3] * yn * yn + coef[4] * xn * xn
                    + coef[5] * yn * xn)
        image = image * np.exp(log_bias).astype(np.float32)
        sigma = rng.uniform(0.03, 0.06)
        n1 = rng.standard_normal(full).astype(np.float32)
        n2 = rng.standard_normal(full).astype(np.float32)
        image = np.sqrt((image + sigma * n1) ** 2 + (sigma * n2) ** 2)  # Rician magnitude
        image *= np.float32(10 ** rng.uniform(2.0, 3.5))
        return image.astype(np.float32)


def make_phantom_dataset(
    out_dir: str | os.PathLike,
    n_volumes: int,
    seed: int = 0,
    shape: Sequence[int] = (24, 96, 96),
    n_tumours: int | None = None,
) -> Path:
    """Write a phantom data set in the Medical Segmentation Decathlon layout.

    Creates ``out_dir/dataset.json`` (with ``"labels": {"0": "background", ...}`` and
    a ``"training"`` list of ``{"image": "./imagesTr/...", "label": "./labelsTr/..."}``),
    ``out_dir/imagesTr/phantom_NNN.nii.gz`` and ``out_dir/labelsTr/phantom_NNN.nii.gz``.
    Volume ``i`` uses a seed derived from ``(seed, i)``, so data sets with the same
    seed share their first volumes.  Existing files with the same names are
    overwritten.

    Parameters
    ----------
    out_dir : path
        Destination folder (created if missing).
    n_volumes : int
        Number of volumes, at least 1.
    seed : int
        Data-set seed.
    shape : (Z, H, W)
        Shape of every volume.
    n_tumours : int, optional
        Tumour count of every volume; ``None`` draws it per volume.

    Returns
    -------
    pathlib.Path
        ``out_dir``.
    """
    from napari_simseg.core.io.images import Volume, write_image

    if int(n_volumes) < 1:
        raise ValueError(f"n_volumes must be at least 1; got {n_volumes}")
    shape = _check_shape(shape)
    out = Path(out_dir)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    spacing = phantom_spacing(shape)
    origin = tuple(-(n - 1) * s / 2 for n, s in zip(shape, spacing))
    training = []
    for i in range(int(n_volumes)):
        vol_seed = int(np.random.SeedSequence([int(seed), i]).generate_state(1)[0])
        image, labels, _ = make_phantom(shape, seed=vol_seed, n_tumours=n_tumours)
        name = f"phantom_{i:03d}.nii.gz"
        write_image(out / "imagesTr" / name, Volume(image, spacing, origin))
        write_image(out / "labelsTr" / name, Volume(labels, spacing, origin))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {
        "name": "SimSegPhantom",
        "description": "Synthetic pelvis-like MRI phantoms made by napari_simseg.core.data.phantom",
        "reference": "napari-simseg",
        "licence": "BSD-3-Clause",
        "tensorImageSize": "3D",
        "modality": {"0": "MRI"},
        "labels": {str(i): n for i, n in enumerate(CLASS_NAMES)},
        "numTraining": len(training),
        "numTest": 0,
        "training": training,
        "test": [],
        "phantom": {"seed": int(seed), "shape": list(shape), "n_tumours": n_tumours},
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2))
    return out
