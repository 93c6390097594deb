"""Where the errors left after 3 evaluation clicks lie (README, demo model section).

    python experiments/boundary_errors.py [CHECKPOINT] [N_VOLUMES]

For the first N validation volumes of ``runs/demo_hippocampus/split.json``: error pixels
per foreground pixel at 0 and 3 clicks, and the share of error pixels on the one-pixel
rim of the ground truth (dilation minus erosion by one pixel).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_simseg.core.data.datasets import discover_dataset
from napari_simseg.core.data.slices import SliceDataset, SliceOptions
from napari_simseg.core.engine.rounds import RoundSettings, cropped_clicker, run_rounds
from napari_simseg.core.interaction.virtual_user import EvaluationUser
from napari_simseg.core.io.resources import resolve_checkpoint
from napari_simseg.core.network.checkpoint import load_checkpoint


def main(checkpoint: str = "demo", n_volumes: int = 12, data="../shared/data/Task04_Hippocampus",
         split_file="runs/demo_hippocampus/split.json") -> None:
    ck = load_checkpoint(resolve_checkpoint(checkpoint))
    net = ck.model.eval()
    n = len(ck.meta.class_names)
    spec = discover_dataset(data)
    split = json.loads(open(split_file).read())
    ds = SliceDataset(spec, split["val"][:n_volumes],
                      SliceOptions(target_shape=(64, 64), seed=0, context_slices=ck.meta.context_slices))
    user = EvaluationUser(n)
    stats = {k: dict(err=0, rim=0, fg=0) for k in (0, 3)}
    areas = []
    for batch in torch.utils.data.DataLoader(ds, batch_size=64):
        gts, crops = batch["labels"].numpy(), batch["crop"].tolist()
        preds = run_rounds(net, batch["image"], gts, 3, cropped_clicker(user.next_round_batch, crops),
                           RoundSettings.for_checkpoint(ck.meta))
        for k in stats:
            for i, (y0, y1, x0, x1) in enumerate(crops):
                g, p = gts[i, y0:y1, x0:x1], preds[k][i, y0:y1, x0:x1]
                for c in range(1, n):
                    gc = g == c
                    err = gc ^ (p == c)
                    rim = ndi.binary_dilation(gc) & ~ndi.binary_erosion(gc)
                    stats[k]["err"] += int(err.sum())
                    stats[k]["rim"] += int((err & rim).sum())
                    stats[k]["fg"] += int(gc.sum())
                    if k == 0 and gc.any():
                        areas.append(int(gc.sum()))
    for k, s in stats.items():
        print(f"{k} clicks: {s['err'] / s['fg']:.3f} error pixels per foreground pixel, "
              f"{s['rim'] / max(s['err'], 1):.1%} of them on the ground truth's rim")
    print(f"foreground pixels per slice and class: median {np.median(areas):.0f}")


if __name__ == "__main__":
    main(*(sys.argv[1:2] or ["demo"]), *([int(sys.argv[2])] if len(sys.argv) > 2 else []))
