"""A synthetic true-colour picture set (dermoscopy-like), for checking colour pictures end to end.

Skin-toned RGB pictures with one lesion each and a darker core inside it, laid out as a
public set of this kind is: 8-bit RGB PNG ``images/``, one binary mask folder per class
(``masks/lesion/``, ``masks/core/``) and ``classes.json`` (the core is listed last and
wins inside the lesion). The lesion differs from the skin in **hue at the same
brightness** (its grey value is within a few levels of the skin's), so a network that
sees only a grey picture cannot find it; the core is darker. Illumination gradients,
hair-like dark curves and noise vary per picture. Synthetic: a pipeline check that the
colour channels reach the network, never an accuracy claim.

    python training/make_colour_phantom.py OUT_DIR [N_IMAGES] [SIZE]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

CLASSES = ["background", "lesion", "core"]
_LUMA = np.array([0.299, 0.587, 0.114])


def _same_brightness(colour: np.ndarray, target: float) -> np.ndarray:
    """``colour`` scaled so that its grey (luma) value is ``target``."""
    return colour * target / float(colour @ _LUMA)


def make_picture(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size] / size
    cy, cx = rng.uniform(0.35, 0.65, 2)
    angle = rng.uniform(0, np.pi)
    u = np.cos(angle) * (yy - cy) + np.sin(angle) * (xx - cx)
    v = -np.sin(angle) * (yy - cy) + np.cos(angle) * (xx - cx)
    a, b = rng.uniform(0.12, 0.25), rng.uniform(0.08, 0.18)
    theta = np.arctan2(v, u)
    wobble = 1 + 0.12 * np.sin(3 * theta + rng.uniform(0, 6.3)) + 0.06 * np.sin(7 * theta + rng.uniform(0, 6.3))
    r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    lesion = r < wobble
    core = r < wobble * rng.uniform(0.3, 0.5)
    brightness = rng.uniform(140, 180)
    skin = _same_brightness(np.array([1.0, 0.72, 0.6]) * rng.uniform(0.9, 1.1, 3), brightness)
    spot = _same_brightness(np.array([0.55, 0.62, 1.0]) * rng.uniform(0.9, 1.1, 3), brightness)  # bluish
    rgb = np.where(lesion[..., None], spot, skin)
    rgb = np.where(core[..., None], spot * 0.55, rgb)
    rgb = ndimage.gaussian_filter(rgb, sigma=(size / 200, size / 200, 0))  # soft borders
    light = 1 + 0.25 * ((yy - rng.uniform()) * rng.uniform(-1, 1) + (xx - rng.uniform()) * rng.uniform(-1, 1))
    rgb = rgb * light[..., None]
    for _ in range(rng.integers(3, 9)):  # hair: thin dark curves, unlabelled
        t = np.linspace(0, 1, 400)
        y0, x0, dy, dx, bend = rng.uniform(0, 1, 5)
        py = (y0 + (dy - 0.5) * t + 0.1 * np.sin(6 * bend * t)) * size
        px = (x0 + (dx - 0.5) * t) * size
        keep = (py >= 0) & (py < size) & (px >= 0) & (px < size)
        hair = np.zeros((size, size), bool)
        hair[py[keep].astype(int), px[keep].astype(int)] = True
        hair = ndimage.binary_dilation(hair, iterations=max(1, size // 400))
        rgb[hair] *= 0.35
    rgb += rng.normal(0, 6, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8), lesion, core


def main(out: Path, n: int = 60, size: int = 512) -> None:
    rng = np.random.default_rng(0)
    for sub in ("images", "masks/lesion", "masks/core"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rgb, lesion, core = make_picture(size, rng)
        name = f"skin{i:03d}.png"
        sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(out / "images" / name))
        sitk.WriteImage(sitk.GetImageFromArray(lesion.astype(np.uint8) * 255), str(out / "masks/lesion" / name))
        sitk.WriteImage(sitk.GetImageFromArray(core.astype(np.uint8) * 255), str(out / "masks/core" / name))
    (out / "classes.json").write_text(json.dumps(CLASSES))
    print(f"{out}: {n} pictures of {size}x{size}, classes {CLASSES[1:]}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), *(int(a) for a in sys.argv[2:4]))
