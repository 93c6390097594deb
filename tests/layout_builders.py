"""Small generated data sets in every layout ``core.data.datasets`` reads (test helpers).

Images are noise plus bright discs, so that they are neither constant nor trivially
normalised; masks and labels are discs too.  Everything is tiny (tens of pixels).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from napari_simseg.core.io.images import Volume, write_image


def write_picture(path: Path, array: np.ndarray) -> Path:
    """Write a 2D array (or ``(H, W, 3|4)`` colour array) as PNG/JPEG/BMP with SimpleITK."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(array)
    img = sitk.GetImageFromArray(arr, isVector=arr.ndim == 3)
    sitk.WriteImage(img, str(path))
    return path


def disc(shape: Sequence[int], centre: Sequence[float], radius: float) -> np.ndarray:
    """Boolean disc (2D) or ball (3D) of ``radius`` pixels."""
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre)) <= radius**2


def noisy_image(shape: Sequence[int], seed: int, regions=(), dtype=np.uint8) -> np.ndarray:
    """Noise around 60 with each region raised by 80 (fits uint8)."""
    rng = np.random.default_rng(seed)
    img = rng.normal(60, 10, size=tuple(shape))
    for r in regions:
        img[r] += 80
    return np.clip(img, 0, 255).astype(dtype)


def mask_regions(shape: Sequence[int]) -> dict[str, np.ndarray]:
    """Three overlapping structures: lung overlaps heart, heart overlaps clavicle."""
    h, w = shape
    return {
        "lung": disc(shape, (h * 0.45, w * 0.35), h * 0.2),
        "heart": disc(shape, (h * 0.55, w * 0.5), h * 0.15),
        "clavicle": disc(shape, (h * 0.7, w * 0.6), h * 0.1),
    }


CLASSES = ["background", "lung", "heart", "clavicle"]


def make_masks_dataset(root: Path, n: int = 3, size: int = 32, image_factor: int = 1, ext: str = ".png",
                       classes: Sequence[str] | None = CLASSES) -> Path:
    """``images/`` (``image_factor`` times the mask size) and ``masks/<class>/`` binary PNGs (0/255)."""
    for i in range(n):
        regions = mask_regions((size, size))
        big = {k: np.kron(v, np.ones((image_factor, image_factor), bool)) for k, v in regions.items()}
        write_picture(root / "images" / f"c{i}{ext}", noisy_image((size * image_factor,) * 2, i, big.values()))
        for name, m in regions.items():
            write_picture(root / "masks" / name / f"c{i}.png", (m * 255).astype(np.uint8))
    if classes is not None:
        (root / "classes.json").write_text(json.dumps(list(classes)))
    return root


def make_nnunet_dataset(root: Path, n: int = 3, ending: str = ".png", shape=(32, 40),
                        channels=("T1", "T2")) -> Path:
    """nnU-Net v2 raw: ``imagesTr/<case>_000k<ending>``, ``labelsTr/<case><ending>``, ``dataset.json``."""
    for i in range(n):
        centre = [s / 2 for s in shape]
        core, edema = disc(shape, centre, shape[-1] / 8), disc(shape, centre, shape[-1] / 4)
        lab = np.where(core, 2, np.where(edema, 1, 0)).astype(np.uint8)
        for k in range(len(channels)):
            # channel k: a different brightness scale, so per-channel normalisation shows
            img = noisy_image(shape, 10 * i + k, [edema]).astype(np.uint16) * (k * 50 + 1)
            _write(root / "imagesTr" / f"case{i:03d}_{k:04d}{ending}", img)
        _write(root / "labelsTr" / f"case{i:03d}{ending}", lab)
    meta = {"channel_names": {str(k): c for k, c in enumerate(channels)},
            "labels": {"background": 0, "edema": 1, "core": 2}, "numTraining": n, "file_ending": ending}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _write(path: Path, array: np.ndarray) -> None:
    if path.suffix in (".png", ".bmp", ".jpg"):
        write_picture(path, array)
    else:
        write_image(path, array)


def make_msd4d_dataset(root: Path, n: int = 3, shape=(6, 24, 28), modalities=("FLAIR", "T1w", "T2w")) -> Path:
    """MSD with 4D images (modalities on the last SimpleITK axis) and a ``training`` list."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(n):
        ball = disc(shape, [s / 2 for s in shape], shape[-1] / 4)
        vols = []
        for k in range(len(modalities)):
            v = sitk.GetImageFromArray(noisy_image(shape, 10 * i + k, [ball]).astype(np.float32) * (k + 1) * 10)
            v.SetSpacing((0.9, 0.8, 3.0))
            vols.append(v)
        sitk.WriteImage(sitk.JoinSeries(vols), str(root / "imagesTr" / f"brats_{i:03d}.nii.gz"))
        write_image(root / "labelsTr" / f"brats_{i:03d}.nii.gz", Volume(ball.astype(np.uint8), spacing=(3.0, 0.8, 0.9)))
        training.append({"image": f"./imagesTr/brats_{i:03d}.nii.gz", "label": f"./labelsTr/brats_{i:03d}.nii.gz"})
    meta = {"name": "Brain", "modality": {str(k): m for k, m in enumerate(modalities)},
            "labels": {"0": "background", "1": "tumour"}, "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def make_folder_dataset(root: Path, n: int = 3, ext: str = ".png", shape=(32, 36)) -> Path:
    """``images/`` + ``labels/`` of 2D pictures, classes in ``classes.json``."""
    for i in range(n):
        region = disc(shape, [s / 2 for s in shape], 8)
        _write(root / "images" / f"img{i}{ext}", noisy_image(shape, i, [region]))
        _write(root / "labels" / f"img{i}.png", region.astype(np.uint8))
    (root / "classes.json").write_text(json.dumps(["background", "nodule"]))
    return root
