"""A synthetic chest radiograph data set, for trying the pipeline and the recipe at real sizes.

Frontal chest X-ray-like images with five overlapping structures, laid out as a
public set of this kind is: 2048 x 2048 16-bit PNG images, one binary 1024 x 1024
mask folder per structure (``masks/<class>/``) and ``classes.json`` (left and right
lung, heart, left and right clavicle; the heart and the clavicles overlap the lungs, and
the smaller structure wins there when the masks are read). Shapes, positions, tilt, contrast and noise vary per image;
ribs, spine and breast shadows are unlabelled distractors. Synthetic: for speed,
memory and pipeline checks and rough recipe comparisons, never for accuracy claims.

    python training/make_cxr_phantom.py OUT_DIR [N_IMAGES] [SIZE]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

CLASSES = ["background", "right_lung", "left_lung", "heart", "right_clavicle", "left_clavicle"]


def _rotate(y, x, cy, cx, angle):
    c, s = np.cos(angle), np.sin(angle)
    return c * (y - cy) - s * (x - cx), s * (y - cy) + c * (x - cx)


def _lung(yy, xx, cy, cx, h, w, side, rng):
    """A lung field: a rounded shape, flat on the mediastinal side, pointed at the apex."""
    u, v = (yy - cy) / h, (xx - cx) / w * side  # v > 0 towards the lateral side
    apex = 1.0 - 0.55 * np.clip(-u, 0, 1) ** 1.5  # narrower towards the top
    r = (v / apex) ** 2 + np.maximum(u, 0) ** 4 * 1.2 + np.maximum(-u, 0) ** 2
    bumps = 1 + 0.04 * np.sin(7 * u + rng.uniform(0, 6.3)) + 0.03 * np.sin(11 * v + rng.uniform(0, 6.3))
    return (r < bumps) & (v > -0.75)


def make_image(size: int, rng: np.random.Generator):
    """One image ``(size, size)`` float32 in ~[0, 1] and its ``(size, size)`` class masks."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    tilt = rng.uniform(-0.06, 0.06)
    yy, xx = _rotate(yy, xx, 0.5, 0.5, tilt)
    yy, xx = yy + 0.5, xx + 0.5
    cx = 0.5 + rng.uniform(-0.03, 0.03)
    body = ((xx - cx) / rng.uniform(0.42, 0.48)) ** 2 + ((yy - 0.55) / 0.62) ** 2 < 1
    img = 0.55 * body
    spine = np.abs(xx - cx) < 0.045
    img = img + 0.25 * spine * body
    lung_h, lung_w = rng.uniform(0.28, 0.33), rng.uniform(0.15, 0.19)
    gap = rng.uniform(0.05, 0.08)
    ly = rng.uniform(0.46, 0.52)
    right = _lung(yy, xx, ly, cx - gap - lung_w * 0.55, lung_h, lung_w, -1, rng)  # patient right = image left
    left = _lung(yy, xx, ly + 0.01, cx + gap + lung_w * 0.55, lung_h * rng.uniform(0.95, 1.02), lung_w, 1, rng)
    heart_c = (ly + lung_h * rng.uniform(0.45, 0.6), cx + rng.uniform(0.02, 0.06))
    hy, hx = _rotate(yy, xx, heart_c[0], heart_c[1], rng.uniform(0.3, 0.6))
    heart = (hy / rng.uniform(0.11, 0.14)) ** 2 + (hx / rng.uniform(0.13, 0.17)) ** 2 < 1
    lungs = right | left
    img = img - 0.38 * lungs
    # vessels and ribs: texture and distractors
    vessels = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), size / 180)
    img = img + 0.06 * vessels / (vessels.std() + 1e-6) * lungs
    for k in range(10):
        for side in (-1, 1):
            y0 = ly - lung_h * 0.9 + k * lung_h * 0.21
            arc = yy - (y0 + 0.9 * (xx - cx) ** 2 * side ** 2 + 0.05 * np.abs(xx - cx))
            img = img + 0.07 * (np.abs(arc) < 0.008) * (np.abs(xx - cx) > 0.05) * body
    img = img + 0.30 * heart
    clavicles = []
    for side in (-1, 1):
        t = np.linspace(0, 1, 200)
        x0, x1 = cx + side * 0.035, cx + side * rng.uniform(0.30, 0.36)
        y0, y1 = ly - lung_h * rng.uniform(0.72, 0.85), ly - lung_h * rng.uniform(0.95, 1.1)
        px = x0 + (x1 - x0) * t
        py = y0 + (y1 - y0) * t - rng.uniform(0.01, 0.03) * np.sin(np.pi * t)
        width = rng.uniform(0.010, 0.014) * (1 + 0.3 * np.sin(np.pi * t))
        mask = np.zeros((size, size), bool)
        for y_, x_, w_ in zip(py, px, width):
            r = int(w_ * size) + 1
            cy_, cx_ = int(y_ * size), int(x_ * size)
            ys, xs = np.ogrid[max(0, cy_ - r):cy_ + r + 1, max(0, cx_ - r):cx_ + r + 1]
            mask[ys, xs] |= (ys - y_ * size) ** 2 + (xs - x_ * size) ** 2 <= (w_ * size) ** 2
        mask = ndimage.map_coordinates(mask.astype(np.float32), _inverse(size, tilt), order=0) > 0.5
        clavicles.append(mask)
        img = img + 0.22 * mask
    img = ndimage.gaussian_filter(img, size / 700)
    img = np.clip(img, 0, None) ** rng.uniform(0.8, 1.25)
    img = img + rng.normal(0, 0.015, img.shape)
    labels = [right, left, heart, *clavicles]  # rotated frame already for the first three
    return img.astype(np.float32), labels


def _inverse(size, tilt):
    """Coordinates that rotate an unrotated mask into the image's tilted frame."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    ry, rx = _rotate(yy, xx, 0.5, 0.5, tilt)
    return np.stack([(ry + 0.5) * size, (rx + 0.5) * size])


def build(out: Path, n: int = 60, size: int = 2048, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for name in CLASSES[1:]:
        (out / "masks" / name).mkdir(parents=True, exist_ok=True)
    (out / "classes.json").write_text(json.dumps(CLASSES))
    for i in range(n):
        img, masks = make_image(size // 2, rng)  # drawn at the mask grid, then enlarged 2x
        big = ndimage.zoom(img, 2, order=1)
        big = np.clip(big * 3000 + 500, 0, 65535).astype(np.uint16)
        sitk.WriteImage(sitk.GetImageFromArray(big), str(out / "images" / f"cxr{i:03d}.png"))
        for name, mask in zip(CLASSES[1:], masks):
            sitk.WriteImage(sitk.GetImageFromArray(mask.astype(np.uint8) * 255),
                            str(out / "masks" / name / f"cxr{i:03d}.png"))
    print(f"{out}: {n} images of {size}x{size}, masks at {size // 2}x{size // 2}, classes {CLASSES[1:]}")


if __name__ == "__main__":
    args = sys.argv[1:]
    build(Path(args[0]), int(args[1]) if len(args) > 1 else 60, int(args[2]) if len(args) > 2 else 2048)
