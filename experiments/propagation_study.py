"""Which seeds carry a finished slice best (docs/propagation.md): the volume protocol with
the bundled model (or ``--checkpoint``) on some of the bundled model's unseen hippocampus
volumes, once per seed rule.

    python experiments/propagation_study.py [--volumes 8] [--steps 10] [--rules clicks,none]
        [--checkpoint runs/prior/best.safetensors] [--json docs/results/propagation_study.json]

A ``--checkpoint`` must have been trained on the bundled model's split (its
``val_volumes`` are checked), or the study would score volumes it trained on.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from napari_simseg.core.data.datasets import load_case
from napari_simseg.core.data.layouts import discover_dataset
from napari_simseg.core.imaging.metrics import dice_iou_per_class
from napari_simseg.core.io.resources import DEMO_CHECKPOINT
from napari_simseg.core.jobs.volume_protocol import volume_protocol_outputs
from napari_simseg.core.network.checkpoint import read_checkpoint_meta
from napari_simseg.core.network.predictor import Predictor
from napari_simseg.core.session.propagation import SeedRule

RULES = {"clicks": SeedRule(carry="clicks"), "labels": SeedRule(carry="labels"),
         "clicks-2": SeedRule(carry="clicks", max_slices=2), "clicks-5": SeedRule(carry="clicks", max_slices=5),
         "none": SeedRule(min_area=10**9)}  # "none": every structure ends at once, nothing is propagated


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="../shared/data/Task04_Hippocampus")
    ap.add_argument("--checkpoint", default="demo", help="checkpoint path (default: the bundled model)")
    ap.add_argument("--rules", default=",".join(RULES), help=f"comma-separated, of {', '.join(RULES)}")
    ap.add_argument("--volumes", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--json", default="docs/results/propagation_study.json")
    args = ap.parse_args()
    val = read_checkpoint_meta(DEMO_CHECKPOINT).training["val_volumes"]
    ids = [val[i] for i in np.linspace(0, len(val) - 1, args.volumes).round().astype(int)]
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        raise SystemExit(f"unknown rule(s) {', '.join(unknown)}; choose from {', '.join(RULES)}")
    spec = discover_dataset(args.data)
    predictor = Predictor(args.checkpoint, device="cpu")
    if args.checkpoint != "demo":
        own_val = predictor.meta.training.get("val_volumes")
        if own_val is not None and sorted(own_val) != sorted(val):
            raise SystemExit(f"{args.checkpoint} was trained on another split than the bundled model; "
                             "its validation volumes differ, so this study would score volumes it trained on")
    classes = predictor.class_names
    out = {}
    for name in rules:
        rule = RULES[name]
        t0 = time.monotonic()
        dice = []  # per volume, per step, per foreground class
        for case in spec.get_cases(ids):
            image, labels = load_case(case, axis=0, normalize=False, spec=spec)
            run = volume_protocol_outputs(predictor, image, labels, args.steps, rule=rule)
            dice.append([dice_iou_per_class(o, labels, len(classes))[0][1:] for o in run.outputs])
        mean = np.nanmean(np.asarray(dice, float), axis=0)
        out[name] = {
            int(k): [round(float(v), 4) for v in mean[k]] for k in sorted({0, 1, 3, 5, args.steps}) if k <= args.steps
        }
        print(
            f"{name:8s} "
            + "  ".join(f"{k}: {'/'.join(f'{v:.3f}' for v in out[name][k])}" for k in out[name])
            + f"  ({time.monotonic() - t0:.0f} s)",
            flush=True,
        )
    with open(args.json, "w") as fh:
        json.dump(
            {
                "checkpoint": args.checkpoint,
                "neighbour_prior": bool(predictor.meta.neighbour_prior),
                "volumes": ids,
                "classes": classes[1:],
                "dice": out,
            },
            fh,
            indent=1,
        )


if __name__ == "__main__":
    main()
