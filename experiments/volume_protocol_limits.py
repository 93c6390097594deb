"""Where the volume protocol loses (docs/propagation.md): how much of the error the
worst slices hold, and how much one corrective round and its propagation remove.

    python experiments/volume_protocol_limits.py [--volumes 40] [--steps 5] [--rounds-volumes 12]
        [--json docs/results/volume_protocol_limits.json]

On the bundled model's unseen hippocampus volumes (its ``val_volumes``):

* ``ceiling``: 3D Dice of the automatic result with the k slices that have the most
  mislabelled pixels replaced by the ground truth (a user whose every round makes its
  slice perfect, and no propagation);
* ``rounds``: for the first ``--rounds-volumes`` volumes, each step of the volume
  protocol (the same picks as ``core.jobs.volume_protocol``): the chosen slice's mislabelled
  pixels before and after its round, and the volume's after the propagation.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from napari_simseg.core.data.datasets import load_case
from napari_simseg.core.data.layouts import discover_dataset
from napari_simseg.core.imaging.metrics import dice_iou_per_class
from napari_simseg.core.interaction.virtual_user import EvaluationUser
from napari_simseg.core.network.predictor import Predictor
from napari_simseg.core.session.interactive import InteractiveSession


def _dice(labels, gt, n_classes):
    dice, _ = dice_iou_per_class(labels, gt, n_classes)
    return [float(d) for d in dice[1:]]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/Task04_Hippocampus")
    ap.add_argument("--volumes", type=int, default=40)
    ap.add_argument("--rounds-volumes", type=int, default=12)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    t0 = time.time()
    pred = Predictor("demo", device="cpu")
    spec = discover_dataset(args.data)
    ids = list(pred.meta.training["val_volumes"])[: args.volumes]
    n = pred.meta.n_classes
    ks = (0, 5, 10, 20)
    ceiling = {k: [] for k in ks}
    steps = []
    for i, cid in enumerate(ids):
        image, gt = load_case(spec.get_cases([cid])[0], axis=0, normalize=False, spec=spec)
        gt = np.asarray(gt).astype(np.uint8)
        session = InteractiveSession(list(np.asarray(image)), pred)  # normalised as the plugin does
        auto = session.predict_auto()
        order = np.argsort(-(auto != gt).reshape(len(gt), -1).sum(1), kind="stable")
        for k in ks:
            fixed = auto.copy()
            fixed[order[:k]] = gt[order[:k]]
            ceiling[k].append(_dice(fixed, gt, n))
        if i >= args.rounds_volumes:
            continue
        user = EvaluationUser(n)
        for _ in range(args.steps):
            errors = (session.labels != gt).sum(axis=(1, 2))
            z = int(np.argmax(errors))
            clicks = user.next_round(gt[z], session.labels[z])
            if not clicks:
                break
            before, total = int(errors[z]), int(errors.sum())
            session.add_clicks(z, clicks)
            after = int((session.labels[z] != gt[z]).sum())
            after_round = int((session.labels != gt).sum())
            written = len(session.propagate(z).slices)
            steps.append({"volume": cid, "slice": z, "clicks": len(clicks), "slice_errors_before": before,
                          "slice_errors_after": after, "volume_errors_before": total,
                          "volume_errors_after_round": after_round,
                          "volume_errors_after_propagation": int((session.labels != gt).sum()),
                          "propagated_slices": written})
    out = {"volumes": len(ids), "ceiling": {k: np.round(np.nanmean(v, 0), 4).tolist() for k, v in ceiling.items()}}
    if steps:
        b = np.array([s["slice_errors_before"] for s in steps], float)
        a = np.array([s["slice_errors_after"] for s in steps], float)
        out["rounds"] = {
            "volumes": min(args.rounds_volumes, len(ids)), "steps": len(steps),
            "slice_errors_before_mean": round(float(b.mean()), 1), "slice_errors_after_mean": round(float(a.mean()), 1),
            "rounds_that_made_their_slice_worse": int((a > b).sum()),
            "volume_errors_mean": round(float(np.mean([s["volume_errors_before"] for s in steps])), 1),
            "removed_by_round_mean": round(float(np.mean([s["volume_errors_before"] - s["volume_errors_after_round"]
                                                          for s in steps])), 1),
            "removed_by_propagation_mean": round(float(np.mean([s["volume_errors_after_round"]
                                                                - s["volume_errors_after_propagation"]
                                                                for s in steps])), 1),
            "per_step": steps}
    out["seconds"] = round(time.time() - t0, 1)
    for k, d in out["ceiling"].items():
        print(f"ceiling, {k:>2} worst slices set to the truth: Dice {d}")
    if steps:
        r = {k: v for k, v in out["rounds"].items() if k != "per_step"}
        print("rounds:", json.dumps(r))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
