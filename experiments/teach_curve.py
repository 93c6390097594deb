"""The learning curve of teaching (issue 17, point 7): how many labelled images until the model helps.

On the 2D TotalSegmentator CT set (``training/make_totalseg_2d.py ct``: 30 axial slices of
one CT, 10 structures the bundled hippocampus model does not know), taught one organ
(``--classes liver``, the default: background and liver, present on every slice) or all 10
structures (``--classes all``), a fixed set of held-out images is never taught on; teaching
runs on 1, 3 and 10 of the other images (nested subsets, evenly spread) for a few minutes
each, from a fresh network and from the bundled model (transfer: its encoder and decoder, a
fresh class head), through exactly the code the widget's *Teach* runs
(``core.session.teaching.start_teaching``: the teaching recipe, the held-back split, a
process of its own). Each taught checkpoint is evaluated on the held-out images with
``core.jobs.evaluation.evaluate`` at 0 and 3 clicks (evaluation virtual user), next to a
method that learns nothing (the random walker on the same clicks).

The images are slices of one patient and the labels are TotalSegmentator's outputs:
the held-out images are neighbours of the taught ones (the use case of teaching while
annotating one volume), not other patients.

    python experiments/teach_curve.py [--classes liver|all|liver,spleen,...] [--minutes 3] [--sizes 1,3,10]
        [--inits fresh,transfer] [--data /tmp/ts_ct2d] [--json docs/results/teach_curve.json]
        [--plot docs/results/teach_curve.png]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
INIT_BASES = {"fresh": None, "transfer": "demo"}


def _mean_fg(dice: dict, class_names) -> float | None:
    values = [dice.get(c) for c in class_names[1:]]
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), 4) if values else None


def choose_images(case_ids: list, held_out: int, sizes: list) -> tuple[list, dict]:
    """Held-out images (evenly spread) and nested training subsets of the others (evenly spread)."""
    ids = sorted(case_ids)
    test = [ids[i] for i in np.linspace(1, len(ids) - 2, held_out).round().astype(int)]
    pool = [c for c in ids if c not in test]
    largest = max(sizes)
    order = [pool[i] for i in np.linspace(0, len(pool) - 1, largest).round().astype(int)]
    # nested: each smaller subset is taken evenly from the larger one
    subsets, current = {}, order
    for n in sorted(sizes, reverse=True):
        current = (
            [current[i] for i in np.linspace(0, len(current) - 1, n + 2).round().astype(int)[1:-1]]
            if n < len(current)
            else current
        )
        subsets[n] = sorted(current)
    return test, subsets


def class_subset(data: Path, classes: list, out: Path) -> Path:
    """A copy of an ``images/`` + ``masks/<class>/`` set with only ``classes`` (links, no copies)."""
    out.mkdir(parents=True, exist_ok=True)
    for sub in ["images", *(f"masks/{c}" for c in classes)]:
        target = out / sub
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to((data / sub).resolve(), target_is_directory=True)
    (out / "classes.json").write_text(json.dumps(["background", *classes]))
    return out


def teach_once(cases, spec, base, minutes: float, out: Path, threads: int, options: dict | None = None) -> dict:
    from napari_simseg.core.session.teaching import TeachCase, TeachTask, start_teaching

    teach_cases = [TeachCase(cid, image, labels, [0]) for cid, (image, labels) in cases.items()]
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    job = start_teaching(TeachTask(
        teach_cases,
        spec.class_names,
        list(getattr(spec, "channel_names", None) or ["image"]),
        base,
        minutes,
        out,
        threads=threads,
        nice=0,
        options=options,
        provenance={"image": f"{len(cases)} images of {spec.root}"},
    ))
    path = job.result()
    return {
        "checkpoint": str(path),
        "seconds": round(time.monotonic() - t0, 1),
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "epochs": len(job.epochs),
        "steps": int(sum(e.get("steps") or 0 for e in job.epochs)),
        "plan": [t for t in job.log if "plan" in t],
        "held_back": job.state["summary"]["held_back"],
        "validation_dice": job.state["after"],
    }


def evaluate_on(checkpoint, data: Path, split_file: Path, method: str = "model") -> dict:
    from napari_simseg.core.jobs.evaluation import evaluate

    clicks = (0, 3) if method == "model" else (1, 3)
    res = evaluate(
        checkpoint,
        data,
        split="test",
        split_file=str(split_file),
        clicks=clicks,
        method=method,
        device="cpu",
        progress=False,
        log=lambda *a: None,
    )
    names = res["classes"]
    return {str(r["clicks"]): {"mean": _mean_fg(r["dice"], names), "per_class": r["dice"]} for r in res["results"]}


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    styles = {"fresh": "tab:blue", "transfer": "tab:orange"}
    for init, colour in styles.items():
        rows = [r for r in doc["runs"] if r["init"] == init]
        if not rows:
            continue
        n = [r["images"] for r in rows]
        for k, ls in (("3", "-"), ("0", "--")):
            ax.plot(
                n,
                [r["held_out_dice"][k]["mean"] for r in rows],
                ls,
                marker="o",
                color=colour,
                label=f"{init}, {k} clicks",
            )
    rw = doc.get("random_walker", {}).get("3", {}).get("mean")
    if rw is not None:
        ax.axhline(rw, color="grey", ls=":", label="random walker, 3 clicks (learns nothing)")
    ax.set_xscale("log")
    ax.set_xticks(doc["sizes"])
    ax.set_xticklabels([str(s) for s in doc["sizes"]])
    ax.set_xlabel(f"labelled images taught on ({doc['minutes']:g} min each)")
    what = doc["classes"][1] if len(doc["classes"]) == 2 else f"mean of {len(doc['classes']) - 1} structures"
    ax.set_ylabel(f"Dice ({what}), {len(doc['held_out'])} held-out images")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Teaching: Dice on held-out CT slices vs labelled images")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="/tmp/ts_ct2d")
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--sizes", default="1,3,10")
    ap.add_argument("--inits", default="fresh,transfer")
    ap.add_argument("--held-out", type=int, default=8)
    ap.add_argument(
        "--classes", default="liver", help="comma-separated structures of the set to teach ('all': every one of them)"
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--options", default="{}", help="training options over the teaching recipe, as JSON")
    ap.add_argument("--work", default="/tmp/teach_curve")
    ap.add_argument("--json", default=str(ROOT / "docs" / "results" / "teach_curve.json"))
    ap.add_argument("--plot", default=str(ROOT / "docs" / "results" / "teach_curve.png"))
    args = ap.parse_args(argv)
    from napari_simseg.core.data.datasets import discover_dataset, load_case

    data, work = Path(args.data), Path(args.work)
    if not (data / "classes.json").is_file():
        subprocess.run([sys.executable, str(ROOT / "training" / "make_totalseg_2d.py"), "ct", str(data)], check=True)
    work.mkdir(parents=True, exist_ok=True)
    if args.classes != "all":
        data = class_subset(data, args.classes.split(","), work / "data")
    spec = discover_dataset(data)
    sizes = [int(s) for s in args.sizes.split(",")]
    test, subsets = choose_images([c.case_id for c in spec.cases], args.held_out, sizes)
    split_file = work / "split.json"
    split_file.write_text(json.dumps({"train": sorted(set(sum(subsets.values(), []))), "val": [], "test": test}))
    arrays = {c.case_id: load_case(c, n_classes=spec.n_classes, spec=spec) for c in spec.cases}
    doc = {
        "data": str(data),
        "classes": list(spec.class_names),
        "held_out": test,
        "subsets": subsets,
        "sizes": sizes,
        "minutes": args.minutes,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "options": json.loads(args.options),
        "command": "python experiments/teach_curve.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "runs": [],
    }
    doc["random_walker"] = evaluate_on(None, data, split_file, method="random_walker")
    print(f"random walker: {doc['random_walker']['3']['mean']} at 3 clicks", flush=True)
    for init in args.inits.split(","):
        for n in sizes:
            cases = {cid: arrays[cid] for cid in subsets[n]}
            run = teach_once(
                cases,
                spec,
                INIT_BASES[init],
                args.minutes,
                work / f"{init}-{n}.safetensors",
                args.threads,
                json.loads(args.options) or None,
            )
            run.update(init=init, images=n, held_out_dice=evaluate_on(run["checkpoint"], data, split_file))
            doc["runs"].append(run)
            print(
                f"{init} {n:2d} images: held-out Dice {run['held_out_dice']['0']['mean']} @0, "
                f"{run['held_out_dice']['3']['mean']} @3 clicks ({run['steps']} steps, {run['seconds']} s, "
                f"load {run['load_before']}->{run['load_after']})",
                flush=True,
            )
            Path(args.json).write_text(json.dumps(doc, indent=1))
    plot(doc, Path(args.plot))
    print(f"wrote {args.json} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
