"""Which seeds carry a finished slice best (docs/propagation.md): the volume protocol with
the bundled model on some of its unseen hippocampus volumes, once per seed rule.

    python training/propagation_study.py [--volumes 10] [--steps 10] [--json docs/results/propagation_study.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from napari_simseg.core.checkpoint import read_checkpoint_meta
from napari_simseg.core.datasets import load_case
from napari_simseg.core.layouts import discover_dataset
from napari_simseg.core.metrics import dice_iou_per_class
from napari_simseg.core.predictor import Predictor
from napari_simseg.core.propagation import SeedRule
from napari_simseg.core.resources import DEMO_CHECKPOINT
from napari_simseg.core.volume_protocol import volume_protocol_outputs

RULES = {"clicks": SeedRule(carry="clicks"), "labels": SeedRule(carry="labels"),
         "clicks-2": SeedRule(carry="clicks", max_slices=2), "clicks-5": SeedRule(carry="clicks", max_slices=5),
         "none": SeedRule(min_area=10**9)}  # "none": every structure ends at once, nothing is propagated


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="../shared/data/Task04_Hippocampus")
    ap.add_argument("--volumes", type=int, default=10)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--json", default="docs/results/propagation_study.json")
    args = ap.parse_args()
    val = read_checkpoint_meta(DEMO_CHECKPOINT).training["val_volumes"]
    ids = [val[i] for i in np.linspace(0, len(val) - 1, args.volumes).round().astype(int)]
    spec = discover_dataset(args.data)
    predictor = Predictor("demo", device="cpu")
    classes = predictor.class_names
    out = {}
    for name, rule in RULES.items():
        t0 = time.monotonic()
        dice = []  # per volume, per step, per foreground class
        for case in spec.get_cases(ids):
            image, labels = load_case(case, axis=0, normalize=False, spec=spec)
            run = volume_protocol_outputs(predictor, image, labels, args.steps, rule=rule)
            dice.append([dice_iou_per_class(o, labels, len(classes))[0][1:] for o in run.outputs])
        mean = np.nanmean(np.asarray(dice, float), axis=0)
        out[name] = {int(k): [round(float(v), 4) for v in mean[k]] for k in sorted({0, 1, 3, 5, args.steps}) if k <= args.steps}
        print(f"{name:8s} " + "  ".join(f"{k}: {'/'.join(f'{v:.3f}' for v in out[name][k])}" for k in out[name])
              + f"  ({time.monotonic() - t0:.0f} s)", flush=True)
    with open(args.json, "w") as fh:
        json.dump({"volumes": ids, "classes": classes[1:], "dice": out}, fh, indent=1)


if __name__ == "__main__":
    main()
