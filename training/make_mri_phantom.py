"""A synthetic multi-modal brain-tumour MRI data set, laid out as the Decathlon's Task01.

Four modalities (FLAIR, T1w, T1gd, T2w) in one 4D NIfTI per case (the last axis holds
the modalities, as ``dataset.json``'s ``modality`` says), 240 x 240 x 155 voxels at
1 mm by default, and three nested tumour classes: oedema, non-enhancing and enhancing
tumour, each with its own contrast in each modality (oedema bright in FLAIR and T2,
the enhancing rim bright in T1gd only). Brain, ventricles and noise vary per case.
Synthetic: for checking reading, memory and the recipe's cost at real multi-modal
sizes, never for accuracy claims.

    python training/make_mri_phantom.py OUT_DIR [N_CASES] [SIZE] [SLICES]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

MODALITIES = ["FLAIR", "T1w", "t1gd", "T2w"]
LABELS = ["background", "edema", "non-enhancing tumor", "enhancing tumour"]
# mean intensity per tissue (rows: brain, ventricle, oedema, necrosis, enhancing) and modality
CONTRAST = np.array([
    [420, 600, 580, 380],
    [150, 200, 190, 900],
    [800, 480, 470, 750],
    [300, 280, 300, 620],
    [560, 520, 1100, 560],
], float)


def _ellipsoid(shape, centre, radii, rng):
    """Boolean ellipsoid with a wobbly surface (radius modulated by low-order harmonics)."""
    z, y, x = (np.arange(n, dtype=np.float32) for n in shape)
    dz = (z[:, None, None] - centre[0]) / radii[0]
    dy = (y[None, :, None] - centre[1]) / radii[1]
    dx = (x[None, None, :] - centre[2]) / radii[2]
    r = np.sqrt(dz**2 + dy**2 + dx**2)
    angle = np.arctan2(dy, dx)
    wobble = 1 + sum(rng.uniform(-0.12, 0.12) * np.cos(k * angle + rng.uniform(0, 6.3)) for k in (2, 3, 5))
    return r <= wobble


def make_case(rng: np.random.Generator, size: int, slices: int):
    """One case: image ``(4, slices, size, size)`` int16 and labels ``(slices, size, size)`` uint8."""
    shape = (slices, size, size)
    c = np.array(shape, float) / 2
    brain = _ellipsoid(shape, c + rng.normal(0, 3, 3), np.array([0.42, 0.40, 0.33]) * np.array(shape)
                       * rng.uniform(0.9, 1.05), rng)
    ventricle = _ellipsoid(shape, c + rng.normal(0, 2, 3), np.array([0.08, 0.12, 0.05]) * np.array(shape), rng)
    tumour_c = c + rng.uniform(-0.18, 0.18, 3) * np.array(shape)
    r = rng.uniform(0.07, 0.13) * size
    oedema = _ellipsoid(shape, tumour_c, np.array([r * 1.6, r * 1.9, r * 1.7]), rng) & brain
    core = _ellipsoid(shape, tumour_c + rng.normal(0, 2, 3), np.array([r, r * 1.1, r]), rng) & oedema
    necrosis = _ellipsoid(shape, tumour_c + rng.normal(0, 2, 3), np.array([r, r * 1.1, r]) * 0.55, rng) & core
    labels = np.zeros(shape, np.uint8)
    labels[oedema] = 1
    labels[core] = 3  # the enhancing rim
    labels[necrosis] = 2
    tissue = np.full(shape, -1, np.int8)
    tissue[brain] = 0
    tissue[brain & ventricle] = 1
    tissue[labels == 1] = 2
    tissue[labels == 2] = 3
    tissue[labels == 3] = 4
    image = np.zeros((4, *shape), np.float32)
    gain = rng.uniform(0.85, 1.15, 4)
    for m in range(4):
        means = np.concatenate([[0.0], CONTRAST[:, m] * gain[m]])
        image[m] = means[tissue + 1]
        image[m] += rng.normal(0, 35, shape).astype(np.float32)
    image[:, ~brain] = np.abs(rng.normal(0, 10, (4, int((~brain).sum())))).astype(np.float32)
    return np.clip(image, 0, 32000).astype(np.int16), labels


def main(argv):
    out = Path(argv[1])
    n = int(argv[2]) if len(argv) > 2 else 30
    size = int(argv[3]) if len(argv) > 3 else 240
    slices = int(argv[4]) if len(argv) > 4 else 155
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for i in range(n):
        rng = np.random.default_rng([7, i])
        image, labels = make_case(rng, size, slices)
        name = f"BRATS_{i:03d}.nii.gz"
        img = sitk.GetImageFromArray(image, isVector=False)  # (4, Z, Y, X): a 4D image, modality last in NIfTI
        sitk.WriteImage(img, str(out / "imagesTr" / name), useCompression=True)
        lab = sitk.GetImageFromArray(labels)
        sitk.WriteImage(lab, str(out / "labelsTr" / name), useCompression=True)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        print(f"{name}: tumour voxels {[int((labels == k).sum()) for k in (1, 2, 3)]}", flush=True)
    doc = {"name": "synthetic BraTS-like", "modality": {str(i): m for i, m in enumerate(MODALITIES)},
           "labels": {str(i): name for i, name in enumerate(LABELS)}, "numTraining": n, "training": training}
    (out / "dataset.json").write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main(sys.argv)
