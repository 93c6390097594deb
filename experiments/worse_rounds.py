"""Which corrective rounds make their slice worse, and how (issue 32).

Runs ``simseg evaluate``'s per-slice protocol (20 rounds per slice) on a checkpoint's
held-out slices and records, for every round: mislabelled pixels before and after, the
pixels it fixed and broke, the size of each clicked region (the evaluation's definition:
the connected region of the click's class the labels before the round missed), and the
median distance of the broken pixels to the nearest click. With ``--reach F`` the
round's changes are also cut to disks of radius ``F`` x the slice's shorter side around
its clicks (a bound on how far a click may act; not in the package: it did not help).

    python experiments/worse_rounds.py --checkpoint runs/base/ct2d/best.safetensors \
        --data /tmp/ts_ct2d --split-file runs/base/ct2d/split.json [--reach 0.03] [--json OUT]

Published in ``docs/method.md`` ("Rounds that make their slice worse").
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from scipy import ndimage

import napari_simseg.core.engine.rounds as rounds_module
import napari_simseg.core.jobs.evaluation as evaluation
from napari_simseg.core.imaging import metrics
from napari_simseg.core.interaction.clicks import as_clicks
from napari_simseg.core.interaction.refinement import Refinement, refine_round


def _describe(before, after, gt, clicks) -> dict:
    clicks = as_clicks(clicks)
    broke = (before == gt) & (after != gt)
    sizes = [int(metrics.clicked_regions(before, gt, [click]).sum()) for click in clicks]
    distance = None
    if broke.any() and clicks:
        free = np.ones(before.shape, bool)
        for click in clicks:
            free[int(round(click.y)), int(round(click.x))] = False
        distance = float(np.median(ndimage.distance_transform_edt(free)[broke]))
    return {"errors_before": int((before != gt).sum()), "errors_after": int((after != gt).sum()),
            "fixed": int(((before != gt) & (after == gt)).sum()), "broke": int(broke.sum()),
            "clicked_region_sizes": sizes, "broke_median_distance": distance}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split-file", required=True)
    parser.add_argument("--reach", type=float, default=0.0, help="cut each round's changes to this fraction of "
                        "the slice's shorter side around its clicks (0: no cut)")
    parser.add_argument("--json", help="write the rounds and the evaluation here")
    args = parser.parse_args()

    described = []
    round_change = metrics.round_change

    def recording(before, after, gt, clicks, connectivity=1):
        described.append(_describe(before, after, gt, clicks))
        return round_change(before, after, gt, clicks, connectivity)

    def cut(previous, proposed, log_probabilities, clicks, refinement):
        out = refine_round(previous, proposed, log_probabilities, clicks, refinement)
        if args.reach > 0 and len(clicks):
            h, w = previous.shape
            yy, xx = np.ogrid[:h, :w]
            radius = args.reach * min(h, w)
            near = np.zeros((h, w), bool)
            for click in as_clicks(clicks):
                near |= (yy - click.y) ** 2 + (xx - click.x) ** 2 <= radius**2
            out = np.where(near, out, previous).astype(out.dtype, copy=False)
        return out

    evaluation.round_change = recording
    rounds_module.refine_round = cut
    result = evaluation.evaluate(checkpoint=args.checkpoint, data=args.data, split="val", split_file=args.split_file,
                                 clicks=[0, 1, 2, 3, 5, 10], device="cpu", noc_clicks=20,
                                 refinement=Refinement(zoom=1.0))
    worse = [r for r in described if r["errors_after"] > r["errors_before"]]
    print(evaluation.format_report(result))
    print(f"{len(described)} rounds, {len(worse)} made their slice worse")
    if worse:
        sizes = [s for r in worse for s in r["clicked_region_sizes"]]
        print(f"in those: median clicked region {np.median(sizes):.0f} px, pixels fixed / broken per round "
              f"{np.median([r['fixed'] for r in worse]):.0f} / {np.median([r['broke'] for r in worse]):.0f}, "
              f"broken pixels a median {np.median([r['broke_median_distance'] for r in worse]):.1f} px from a click")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"reach": args.reach, "rounds": described, "evaluation": result}, f, indent=1)


if __name__ == "__main__":
    main()
