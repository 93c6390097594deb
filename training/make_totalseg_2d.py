"""Build a 2D multi-structure PNG data set from the TotalSegmentator example files.

Every axial slice of ``example_ct_sm.nii.gz`` (or ``example_mr_sm.nii.gz``) becomes one
case: a 16-bit PNG image at 4x the slice's resolution and one binary PNG mask per
class at 2x (so the reader's integer-factor resampling is exercised too), in the
``images/`` + ``masks/<class>/`` layout with ``classes.json``. The labels are
TotalSegmentator's own outputs, not manual annotations: a test bed for the pipeline
and the recipe, not a ground truth for accuracy claims.

    python training/make_totalseg_2d.py ct OUT_DIR [EXAMPLES_DIR]
    python training/make_totalseg_2d.py mr OUT_DIR [EXAMPLES_DIR]

``EXAMPLES_DIR`` holds ``example_ct_sm.nii.gz``, ``example_seg.nii.gz``,
``example_mr_sm.nii.gz`` and ``example_seg_mr.nii.gz``: the test files of the
TotalSegmentator repository (``tests/reference_files/`` of
https://github.com/wasserth/TotalSegmentator). Without it, ``$TOTALSEG_EXAMPLES`` or the
development machine's copy is used.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

# where the development machine keeps the examples (a folder beside the repository)
DEFAULT_EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalseg_example"
# class name -> TotalSegmentator label values merged into it
CLASSES = {
    "ct": ("example_ct_sm.nii.gz", "example_seg.nii.gz", {
        "liver": [5], "spleen": [1], "kidney_right": [2], "kidney_left": [3], "stomach": [6],
        "aorta": [52], "vertebrae": [30, 31, 32], "autochthon_left": [86], "autochthon_right": [87],
        "costal_cartilages": [117],
    }),
    "mr": ("example_mr_sm.nii.gz", "example_seg_mr.nii.gz", {
        "liver": [5], "spleen": [1], "kidney_right": [2], "kidney_left": [3], "stomach": [6],
        "aorta": [23], "vertebrae": [19], "autochthon_left": [46], "autochthon_right": [47],
    }),
}


def _zoom(plane: np.ndarray, factor: int, labels: bool) -> np.ndarray:
    img = sitk.GetImageFromArray(plane.astype(np.float32))
    size = [s * factor for s in img.GetSize()]
    out = sitk.Resample(img, size, sitk.Transform(), sitk.sitkNearestNeighbor if labels else sitk.sitkLinear,
                        img.GetOrigin(), [s / factor for s in img.GetSpacing()], img.GetDirection())
    return sitk.GetArrayFromImage(out)


def build(kind: str, out: Path, examples: Path = DEFAULT_EXAMPLES) -> None:
    image_file, seg_file, classes = CLASSES[kind]
    missing = [name for name in (image_file, seg_file) if not (examples / name).is_file()]
    if missing:
        raise SystemExit(
            f"{examples} lacks {', '.join(missing)}: pass the folder holding TotalSegmentator's example files "
            "(tests/reference_files/ of https://github.com/wasserth/TotalSegmentator) as EXAMPLES_DIR"
        )
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(examples / image_file))).astype(np.float32)
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(examples / seg_file)))
    offset = 1024.0 if kind == "ct" else 0.0  # CT: Hounsfield units shifted to unsigned
    (out / "images").mkdir(parents=True, exist_ok=True)
    for name in classes:
        (out / "masks" / name).mkdir(parents=True, exist_ok=True)
    (out / "classes.json").write_text(json.dumps(["background", *classes]))
    for z in range(image.shape[0]):
        case = f"{kind}_z{z:02d}"
        plane = np.clip(_zoom(image[z], 4, False) + offset, 0, 65535).astype(np.uint16)
        sitk.WriteImage(sitk.GetImageFromArray(plane), str(out / "images" / f"{case}.png"))
        for name, values in classes.items():
            mask = _zoom(np.isin(seg[z], values).astype(np.uint8), 2, True).astype(np.uint8) * 255
            sitk.WriteImage(sitk.GetImageFromArray(mask), str(out / "masks" / name / f"{case}.png"))
    print(f"{out}: {image.shape[0]} cases, classes {list(classes)}")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4) or sys.argv[1] not in CLASSES:
        raise SystemExit(__doc__)
    default = os.environ.get("TOTALSEG_EXAMPLES") or DEFAULT_EXAMPLES
    build(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3] if len(sys.argv) == 4 else default))
