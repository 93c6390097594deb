"""Evaluation with the deterministic virtual user (paper section 5.2).

For every slice the evaluation starts from an empty memory. Round 0 is the automatic
prediction; in round ``k >= 1`` the :class:`~napari_simseg.core.virtual_user.EvaluationUser`
adds one click per class in that class's largest mislabelled region of the round
``k - 1`` output (in round 1, the largest region of the class), at the region's
distance-transform maximum, never dropping a click. The labels after ``k`` rounds are
the "k clicks" result; as in the interactive session, every pixel clicked so far shows
its click's class (``honour_clicks``; ``--no-honour-clicks`` scores the network's argmax
alone). The network is averaged over the four flips of its input, as the session's
:class:`~napari_simseg.core.predictor.Predictor` does by default (``--no-tta``: once).
Labels are decided with the checkpoint's per-class decision offsets when it has them
(fitted on the training split by ``simseg calibrate``; see
:mod:`~napari_simseg.core.calibration`), as the session does; ``--no-decision-offsets``
takes the plain argmax.
Dice and IoU are computed per volume in 3D over the reassembled prediction and
averaged over volumes (a class absent from a volume's ground truth and prediction is
left out of that class's mean).

JSON written by ``--json``::

    {"checkpoint": str, "data": str, "method": str, "memory": str,
     "honour_clicks": bool (model) or null, "tta": bool (model) or null,
     "decision_offsets": [one per class] or null, "split": str,
     "classes": [names], "n_volumes": int, "volumes": [case ids],
     "results": [{"clicks": k, "dice": {class: mean}, "iou": {class: mean},
                  "dice_sem": {class: standard error of that mean over volumes}}, ...],
     "per_volume": {case id: {"dice": {"k": {class: Dice}}}},
     "latency_ms": {"mean": ms, "std": ms},   # per slice and round, batched
     "noc": {"max_clicks": 20, "0.85": {class: {"mean", "failures", "n"}},
             "0.9": {...}},                       # when --noc-clicks > 0
     "seconds": wall time}
"""

from __future__ import annotations

import json
import statistics
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

__all__ = ["add_evaluate_arguments", "evaluate", "main_evaluate", "write_plot", "write_table"]


def add_evaluate_arguments(p) -> None:
    p.add_argument("--checkpoint", default="demo", help="checkpoint file, or 'demo' (default)")
    p.add_argument("--data", required=True, help="dataset folder (MSD layout or images/ + labels/)")
    p.add_argument("--split", default=None, choices=["all", "train", "val", "test"],
                   help="which volumes (default: test, else val, of a saved split; 'all' when none)")
    p.add_argument("--split-file", default=None,
                   help="split.json to use (default: DIR/split.json, else the checkpoint folder's)")
    p.add_argument("--clicks", default="0,1,2,3,6", help="click counts to report, e.g. 0,1,2,3,6")
    p.add_argument("--method", default="model", choices=["model", "random_walker", "grabcut"])
    p.add_argument("--memory", default=None, choices=["none", "cim", "sim"],
                   help="override the checkpoint's memory (e.g. cim for SDG-CIM on an SDG-base model)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=64, help="slices per forward pass")
    p.add_argument("--noc-clicks", type=int, default=20,
                   help="click budget for NoC@85/90 (0 disables NoC)")
    p.add_argument("--max-volumes", type=int, default=None, help="evaluate only the first N volumes")
    p.add_argument("--axis", type=int, default=None, help="slicing axis (default: the checkpoint's)")
    p.add_argument("--no-honour-clicks", dest="honour_clicks", action="store_false",
                   help="score the network's argmax alone, without giving clicked pixels their class")
    p.add_argument("--no-tta", dest="tta", action="store_false",
                   help="run the network once per round instead of averaging it over four flips")
    p.add_argument("--no-decision-offsets", dest="decision_offsets", action="store_false",
                   help="decide labels by the plain argmax, ignoring the checkpoint's calibrated "
                        "per-class offsets")
    p.add_argument("--name", default=None, help="row name in tables and plots")
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None, help="PNG of Dice per class against clicks")
    p.add_argument("--table", default=None, help="Markdown table (IoU and Dice per class)")


def _find_split(data: Path, checkpoint: Optional[Path], split_file: Optional[str]):
    from .data import load_split

    candidates = [Path(split_file)] if split_file else [data / "split.json"]
    if not split_file and checkpoint is not None:
        candidates.append(checkpoint.parent / "split.json")
    for c in candidates:
        if c.is_file():
            return load_split(c), c
    if split_file:
        raise FileNotFoundError(f"split file {split_file} does not exist")
    return None, None


def _select_cases(spec, split, which):
    ids = [c.case_id for c in spec.cases]
    if which is None:
        if split is None:
            which = "all"
        else:
            which = "test" if split.get("test") else "val"
    if which == "all":
        chosen = ids
    else:
        if split is None:
            raise ValueError(f"--split {which} needs a saved split (split.json); use --split all")
        chosen = [i for i in split.get(which, []) if i in set(ids)]
        if not chosen:
            raise ValueError(f"the saved split has no {which!r} volumes in this dataset")
    by_id = {c.case_id: c for c in spec.cases}
    return [by_id[i] for i in chosen], which


def _open_network(checkpoint, class_names, device: str, tta: bool):
    """Load a checkpoint for virtual-user rounds.

    Returns ``(path, meta, network, device)``: the network in eval mode on ``device``,
    averaged over flips (:class:`~napari_simseg.core.model.FlipEnsemble`) when ``tta``.
    """
    from .checkpoint import load_checkpoint
    from .predictor import resolve_device
    from .resources import resolve_checkpoint

    path = resolve_checkpoint(checkpoint)
    ck = load_checkpoint(path, expected_classes=class_names)
    dev = resolve_device(device)
    net = ck.model.to(dev).eval()
    if tta:
        from .model import FlipEnsemble

        net = FlipEnsemble(net).eval()
    return path, ck.meta, net, dev


def _load_volume(case, norm: dict, axis: int):
    """One case as a normalised float32 image and int64 labels, sliced along ``axis``."""
    from . import data as D

    image, labels = D.load_case(case, axis=axis, n4=bool(norm.get("n4", False)),
                                low_pct=norm.get("low", 0.5), high_pct=norm.get("high", 99.5))
    return np.asarray(image, np.float32), np.asarray(labels).astype(np.int64)


def _network_rounds(net, meta, memory_kind: str, image, labels, sl: slice, rounds: int, clicker,
                    device, **kwargs):
    """:func:`~napari_simseg.core.simulation.run_evaluation_rounds` on slices ``sl`` of a volume.

    The slices get their context neighbours from the whole ``image``; ``kwargs`` go to
    ``run_evaluation_rounds`` (``on_round``, ``honour``, ``decision_offsets``).
    """
    import torch

    from .data import context_stack
    from .simulation import run_evaluation_rounds

    idx = np.arange(image.shape[0])[sl]
    x = torch.from_numpy(context_stack(image, idx, meta.context_slices)).to(device)
    return run_evaluation_rounds(
        net, x, labels[sl], rounds, memory_kind, meta.depth if memory_kind == "sim" else 1,
        meta.n_classes, meta.click_radius, clicker, amp=device.type == "cuda", **kwargs,
    )


def _slice_ious(pred: np.ndarray, gt: np.ndarray, n: int) -> np.ndarray:
    """IoU per slice and class for (S, H, W) arrays; NaN where the class is absent from gt."""
    out = np.full((pred.shape[0], n), np.nan)
    for c in range(n):
        p, g = pred == c, gt == c
        inter = (p & g).sum((1, 2))
        union = (p | g).sum((1, 2))
        present = g.any((1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[present, c] = inter[present] / union[present]
    return out


def evaluate(
    checkpoint="demo",
    data=None,
    split: Optional[str] = None,
    split_file: Optional[str] = None,
    clicks: Sequence[int] = (0, 1, 2, 3, 6),
    method: str = "model",
    memory: Optional[str] = None,
    device: str = "auto",
    batch_size: int = 64,
    noc_clicks: int = 20,
    max_volumes: Optional[int] = None,
    axis: Optional[int] = None,
    name: Optional[str] = None,
    progress: bool = True,
    log=print,
    honour_clicks: bool = True,
    tta: bool = True,
    decision_offsets: bool = True,
) -> dict:
    """Evaluate a checkpoint (or a classical method) with the evaluation virtual user.

    Returns the result dictionary documented in the module docstring.
    """
    from . import data as D
    from .metrics import dice_iou_per_class, noc
    from .virtual_user import EvaluationUser

    t_start = time.monotonic()
    data = Path(data)
    spec = D.discover_dataset(data)
    class_names = list(spec.class_names)
    n = len(class_names)
    clicks = sorted({int(k) for k in clicks})
    if clicks[0] < 0:
        raise ValueError("click counts must be >= 0")
    rounds = max(clicks[-1], noc_clicks)

    ckpt_path = None
    offsets = None
    norm = {"low": 0.5, "high": 99.5}
    if method == "model":
        ckpt_path, meta, net, dev = _open_network(checkpoint, class_names, device, tta)
        mem_kind = memory or meta.memory
        if memory and (memory == "sim") != (meta.memory == "sim"):
            raise ValueError(
                f"--memory {memory} needs a network trained with the same input layout; "
                f"this checkpoint uses {meta.memory!r}"
            )
        if decision_offsets and meta.decision_offsets is not None:
            offsets = [float(v) for v in meta.decision_offsets]
        norm = dict(meta.normalization)
        if axis is None:
            axis = meta.axis
    else:
        from .baselines import get_segmenter

        segmenter = get_segmenter(method)
        mem_kind = "cim"
        if axis is None:
            axis = 0
    split_doc, split_src = _find_split(data, Path(ckpt_path) if ckpt_path else None, split_file)
    cases, which = _select_cases(spec, split_doc, split)
    if max_volumes:
        cases = cases[: int(max_volumes)]
    user = EvaluationUser(n)
    per_volume = {k: {"dice": [], "iou": []} for k in clicks}
    latency = []
    iou_curves, present = [], []
    iterator = cases
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(cases, desc="evaluate", leave=False, dynamic_ncols=True)
    for case in iterator:
        image, labels = _load_volume(case, norm, axis)
        # labels_per_round[k] is (S, H, W)
        outputs = [np.zeros_like(labels) for _ in range(rounds + 1)]
        for start in range(0, image.shape[0], batch_size):
            sl = slice(start, start + batch_size)
            gts = labels[sl]
            if method == "model":
                def on_round(k, lab, seconds, b=gts.shape[0]):
                    if k <= clicks[-1]:
                        latency.append(seconds * 1e3 / b)

                preds = _network_rounds(net, meta, mem_kind, image, labels, sl, rounds,
                                        user.next_round_batch, dev, on_round=on_round,
                                        honour=honour_clicks, decision_offsets=offsets)
            else:
                preds = _classical_rounds(segmenter, image[sl], gts, rounds, n, user, latency)
            for k in range(rounds + 1):
                outputs[k][sl] = preds[k]
        for k in clicks:
            d, i = dice_iou_per_class(outputs[k], labels, n)
            per_volume[k]["dice"].append(d)
            per_volume[k]["iou"].append(i)
        if noc_clicks > 0:
            curve = np.stack([_slice_ious(outputs[k], labels, n) for k in range(1, noc_clicks + 1)], axis=1)
            iou_curves.append(curve)
            present.append(np.stack([(labels == c).any((1, 2)) for c in range(n)], axis=1))

    def per_class(values):
        return {name_: (None if np.isnan(v) else round(float(v), 5)) for name_, v in zip(class_names, values)}

    def mean_dict(values):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a class absent from every volume
            return per_class(np.nanmean(np.asarray(values, float), axis=0))

    def sem_dict(values):
        # standard error of the mean over the volumes where the class is scored
        arr = np.asarray(values, float).reshape(len(values), -1)
        cols = [col[~np.isnan(col)] for col in arr.T]
        return per_class([col.std(ddof=1) / np.sqrt(col.size) if col.size >= 2 else np.nan for col in cols])

    result = {
        "checkpoint": str(ckpt_path) if ckpt_path else None,
        "data": str(data),
        "method": method,
        # default row name: the run folder of a trained checkpoint ("demo" for the bundled one)
        "name": name or ("demo" if str(checkpoint) == "demo" and method == "model"
                         else Path(ckpt_path).parent.name if ckpt_path else method),
        "memory": mem_kind,
        "honour_clicks": bool(honour_clicks) if method == "model" else None,
        "tta": bool(tta) if method == "model" else None,
        "decision_offsets": offsets,
        "split": which,
        "split_file": str(split_src) if split_src else None,
        "axis": axis,
        "classes": class_names,
        "n_volumes": len(cases),
        "volumes": [c.case_id for c in cases],
        "results": [
            {"clicks": k, "dice": mean_dict(per_volume[k]["dice"]), "iou": mean_dict(per_volume[k]["iou"]),
             "dice_sem": sem_dict(per_volume[k]["dice"])}
            for k in clicks
        ],
        "per_volume": {
            c.case_id: {"dice": {str(k): per_class(per_volume[k]["dice"][v]) for k in clicks}}
            for v, c in enumerate(cases)
        },
        "latency_ms": {
            "mean": round(statistics.fmean(latency), 3) if latency else None,
            "std": round(statistics.pstdev(latency), 3) if latency else None,
        },
    }
    if noc_clicks > 0 and iou_curves:
        curves = np.concatenate(iou_curves)
        pres = np.concatenate(present)
        raw = noc(curves, thresholds=(0.85, 0.90), max_clicks=noc_clicks, gt_present=pres)
        result["noc"] = {"max_clicks": noc_clicks}
        for thr, v in raw.items():
            result["noc"][str(thr)] = {
                cname: {"mean": None if np.isnan(m) else round(float(m), 3), "failures": int(f), "n": int(c)}
                for cname, m, f, c in zip(class_names, v["mean"], v["failures"], v["n"])
            }
    result["seconds"] = round(time.monotonic() - t_start, 2)
    return result


def _classical_rounds(segmenter, images, gts, rounds, n, user, latency):
    """Rounds of a classical method: each slice re-segmented from all clicks so far."""
    preds = [np.zeros_like(gts) for _ in range(rounds + 1)]
    for s in range(images.shape[0]):
        so_far = []
        previous = None
        for k in range(1, rounds + 1):
            so_far += list(user.next_round(gts[s], previous))
            t0 = time.perf_counter()
            previous = segmenter.predict(images[s], so_far, n).astype(gts.dtype)
            latency.append((time.perf_counter() - t0) * 1e3)
            preds[k][s] = previous
    return preds


def format_report(result: dict) -> str:
    """A plain-text table: Dice per class for each click count, plus NoC."""
    names = result["classes"]
    width = max(10, *(len(c) + 2 for c in names))
    lines = [f"{result['name']}: {result['n_volumes']} volumes ({result['split']}), method {result['method']}, "
             f"memory {result['memory']}"
             + ("" if result.get("honour_clicks") is not False else ", network argmax alone (clicks not honoured)")
             + ("" if result.get("tta") is not False else ", no flip averaging")
             + ("" if not result.get("decision_offsets") else
                ", decision offsets " + "/".join(f"{v:+.2f}" for v in result["decision_offsets"]))]
    lines.append("Dice".ljust(8) + "".join(c.rjust(width) for c in names))
    for row in result["results"]:
        vals = "".join(("-" if row["dice"][c] is None else f"{row['dice'][c]:.3f}").rjust(width) for c in names)
        lines.append(f"{row['clicks']:>2} clicks" + vals)
    if "noc" in result:
        for thr in ("0.85", "0.9"):
            vals = "".join(
                ("-" if result["noc"][thr][c]["mean"] is None else f"{result['noc'][thr][c]['mean']:.2f}").rjust(width)
                for c in names
            )
            lines.append(f"NoC@{int(float(thr) * 100)}".ljust(8) + vals)
    lat = result["latency_ms"]
    if lat["mean"] is not None:
        lines.append(f"latency per slice {lat['mean']:.2f} ± {lat['std']:.2f} ms; wall {result['seconds']:.0f} s")
    return "\n".join(lines)


def write_table(results: Sequence[dict], path, clicks: Optional[int] = None) -> Path:
    """Markdown table in the shape of the paper's Table 1: one row per system (or per
    click count when a single result is given), IoU and Dice per class in percent."""
    results = list(results)
    names = results[0]["classes"]
    header = "| System | Clicks | " + " | ".join(f"{c} IoU | {c} Dice" for c in names) + " |"
    sep = "|---|---:|" + "---:|" * (2 * len(names))
    rows = []
    for res in results:
        if clicks is None:
            rows_src = res["results"]
        else:  # the requested count, else the most this result has below it (Auto: 0)
            fit = [r for r in res["results"] if r["clicks"] <= clicks]
            rows_src = fit[-1:] if fit else []
        for r in rows_src:
            cells = []
            for c in names:
                for metric in ("iou", "dice"):
                    v = r[metric][c]
                    cells.append("-" if v is None else f"{100 * v:.1f}")
            rows.append(f"| {res['name']} | {r['clicks']} | " + " | ".join(cells) + " |")
    path = Path(path)
    path.write_text("\n".join([header, sep, *rows]) + "\n")
    return path


def write_plot(results: Sequence[dict], path, title: Optional[str] = None) -> Path:
    """PNG of Dice per class against the number of clicks, one line per class
    (one panel per result when several are given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = list(results)
    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 3.6), squeeze=False, sharey=True)
    for ax, res in zip(axes[0], results):
        ks = [r["clicks"] for r in res["results"]]
        for c in res["classes"]:
            ys = [np.nan if r["dice"][c] is None else r["dice"][c] for r in res["results"]]
            ax.plot(ks, ys, marker="o", label=c)
        ax.set_xlabel("clicks per class per slice")
        ax.set_title(res["name"], fontsize=10)
        ax.set_xticks(ks)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("Dice (3D, mean over volumes)")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main_evaluate(args) -> int:
    clicks = [int(k) for k in str(args.clicks).split(",") if k.strip()]
    result = evaluate(
        checkpoint=args.checkpoint, data=args.data, split=args.split, split_file=args.split_file,
        clicks=clicks, method=args.method, memory=args.memory, device=args.device,
        batch_size=args.batch_size, noc_clicks=args.noc_clicks, max_volumes=args.max_volumes,
        axis=args.axis, name=args.name, honour_clicks=args.honour_clicks,
        tta=args.tta, decision_offsets=args.decision_offsets,
    )
    print(format_report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.table:
        write_table([result], args.table)
    if args.plot:
        write_plot([result], args.plot)
    return 0
