"""Evaluation with the deterministic virtual user (paper section 5.2).

For every slice the evaluation starts from an empty memory. Round 0 is the automatic
prediction; in round ``k >= 1`` the :class:`~napari_simseg.core.interaction.virtual_user.EvaluationUser`
adds one click per class in that class's largest mislabelled region of the round
``k - 1`` output (in round 1, the largest region of the class), at the region's
distance-transform maximum, never dropping a click. The labels after ``k`` rounds are
the "k clicks" result; as in the interactive session, every pixel clicked so far shows
its click's class (``honour_clicks``; ``--no-honour-clicks`` scores the network's argmax
alone). The network is averaged over the four flips of its input, as the session's
:class:`~napari_simseg.core.network.predictor.Predictor` does by default (``--no-tta``: once).
Labels are decided with the checkpoint's per-class decision offsets when it has them
(fitted on the training split by ``simseg calibrate``; see
:mod:`~napari_simseg.core.jobs.calibration`), as the session does; ``--no-decision-offsets``
takes the plain argmax.
NoC@85/90/95 (the clicks a slice needs to reach that IoU) costs ``--noc-clicks`` rounds
on every slice and is computed only when asked (``noc_clicks > 0``; 0 is the default).
Every corrective round of the per-slice protocol is also scored against the round before
it (:func:`~napari_simseg.core.imaging.metrics.round_change`): whether it left its slice
with more mislabelled pixels (*worse*), the share of its slice's mislabelled pixels it
removed, and the share it removed of the regions its clicks point at (each click's
connected mislabelled region of its class); only rounds in which the user clicked count.
Dice and IoU are computed per volume in 3D over the reassembled prediction and
averaged over volumes (a class absent from a volume's ground truth and prediction is
left out of that class's mean).

That is the per-slice protocol (``protocol="slice"``, the default: ``k`` = rounds per
slice). ``protocol="volume"`` (:mod:`~napari_simseg.core.jobs.volume_protocol`) runs one
interactive session per volume: ``k`` = corrective rounds per volume, each on the slice
with the most mislabelled pixels and followed by a propagation from it. Both count the
user's clicks per volume (``clicks_per_volume``).

JSON written by ``--json``::

    {"checkpoint": str, "data": str, "method": str, "memory": str,
     "honour_clicks": bool (model) or null, "tta": bool (model) or null,
     "decision_offsets": [one per class] or null, "split": str,
     "protocol": "slice" | "volume",
     "refinement": {"locality": str, "follow_clicks": bool, "min_lead": float, "spread": float,
                    "network_rounds": int} (model)
                   or null,
     "classes": [names], "n_volumes": int, "volumes": [case ids],
     "results": [{"clicks": k,              # rounds per slice (slice) or per volume (volume)
                  "clicks_per_volume": mean user clicks per volume after k rounds,
                  "dice": {class: mean}, "iou": {class: mean},
                  "dice_sem": {class: standard error of that mean over volumes}}, ...],
     "per_volume": {case id: {"dice": {"k": {class: Dice}}, "clicks": {"k": clicks}}},
     "latency_ms": {"mean": ms, "std": ms},   # per slice and round, batched
     "noc": {"max_clicks": 20, "0.85": {class: {"mean", "failures", "n"}},
             "0.9": {...}, "0.95": {...}},        # only with --noc-clicks > 0
     "rounds": {"first_3": summary, "all": summary,   # slice protocol; summary =
                "per_round": [{"round": k, **summary}, ...]},
                # {"n", "worse", "removed", "removed_pooled", "clicked_removed", "clicked_removed_pooled"}
     "seconds": wall time}
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_simseg.core.data.datasets import discover_dataset, load_case, load_case_with
from napari_simseg.core.data.splits import choose_cases
from napari_simseg.core.imaging.metrics import dice_iou_per_class, noc, round_change, summarise_round_changes
from napari_simseg.core.imaging.transforms import WorkingSize
from napari_simseg.core.interaction.refinement import Refinement
from napari_simseg.core.interaction.virtual_user import EvaluationUser
from napari_simseg.core.io.atomic import atomic_path, atomic_write_text
from napari_simseg.core.jobs.volume_protocol import volume_protocol_outputs

__all__ = ["NOC_THRESHOLDS", "PROTOCOLS", "EvaluationOptions", "evaluate", "format_report", "write_clicks_plot",
           "write_plot", "write_table"]

PROTOCOLS = ("slice", "volume")
NOC_THRESHOLDS = (0.85, 0.90, 0.95)


@dataclass
class EvaluationOptions:
    """How :func:`evaluate` runs (every field is also a ``simseg evaluate`` option).

    Attributes
    ----------
    split : {"all", "train", "val", "test"} or None
        Which cases of the data set; None: the test (else validation) cases of a split file.
    split_file : str or None
        ``split.json`` to use (default: the data folder's, else the checkpoint folder's).
    clicks : sequence of int
        Rounds per slice (per volume for the volume protocol) to report.
    method : {"model", "random_walker", "grabcut"}
        The checkpoint's network or a classical segmenter on the same clicks.
    memory : {"none", "cim", "sim"} or None
        Override the checkpoint's memory (ablation); None keeps it.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``mps``.
    batch_size : int
        Slices per network call (bounded by memory).
    noc_clicks : int
        Click budget of NoC@85/90/95; 0 skips NoC.
    max_volumes : int or None
        Evaluate the first N selected cases only.
    max_slices : int or None
        Stop after the case that brings the slices evaluated to N (at least one case).
    axis : int or None
        Slicing axis (None: the checkpoint's).
    name : str or None
        Row name in reports (default: the run folder).
    honour_clicks, tta, decision_offsets : bool
        Decide labels as the session does: clicked pixels keep their class, flip
        averaging, the checkpoint's per-class offsets.
    protocol : {"slice", "volume"}
        Rounds per slice, or corrective rounds per volume with propagation.
    refinement : Refinement
        What a corrective round may change of the labels shown before it, as in the
        session (:mod:`~napari_simseg.core.interaction.refinement`); ``Refinement.off()``
        shows the network's new labels everywhere.
    """

    split: str | None = None
    split_file: str | None = None
    clicks: Sequence[int] = (0, 1, 2, 3, 6)
    method: str = "model"
    memory: str | None = None
    device: str = "auto"
    batch_size: int = 64
    noc_clicks: int = 0
    max_volumes: int | None = None
    max_slices: int | None = None
    axis: int | None = None
    name: str | None = None
    honour_clicks: bool = True
    tta: bool = True
    decision_offsets: bool = True
    protocol: str = "slice"
    refinement: Refinement = field(default_factory=Refinement)


@dataclass
class _Method:
    """What evaluates: a checkpoint's network, or a classical segmenter."""

    name: str
    run: Callable  # run(image, labels, sl, rounds, user, latency, clicks) -> label maps per round
    prepare: Callable  # prepare(image (C, S, H, W)) -> the image ``run`` reads (e.g. at working size)
    memory: str
    normalization: dict
    axis: int
    checkpoint: Path | None = None
    offsets: list | None = None
    predictor: Any = None  # the model's Predictor (the volume protocol's sessions use it)
    refinement: Any = None  # the rounds' Refinement, resolved for the checkpoint


def _model_method(checkpoint, class_names, opts: EvaluationOptions) -> _Method:
    from napari_simseg.core.engine.rounds import RoundSettings, VolumeImage, run_volume_rounds
    from napari_simseg.core.network.predictor import Predictor

    device, tta, memory, axis, honour = opts.device, opts.tta, opts.memory, opts.axis, opts.honour_clicks
    predictor = Predictor(checkpoint, device=device, tta=tta, expected_classes=class_names)
    meta = predictor.meta
    if memory and (memory == "sim") != (meta.memory == "sim"):
        raise ValueError(
            f"--memory {memory} needs a network trained with the same input layout; "
            f"this checkpoint uses {meta.memory!r}"
        )
    offsets = None
    if opts.decision_offsets and meta.decision_offsets is not None:
        offsets = [float(v) for v in meta.decision_offsets]
    mem_kind = memory or meta.memory
    settings = RoundSettings.for_checkpoint(meta, mem_kind, honour=honour, decision_offsets=offsets,
                                            refinement=opts.refinement)

    fine = {}  # the volume ``prepare`` saw last, on its own grid: a zoom-in cuts its focus views from it

    def run(image, labels, sl, rounds, user, latency, clicks):
        def on_round(k, lab, seconds, b=labels[sl].shape[0]):
            if k <= clicks[-1]:
                latency.append(seconds * 1e3 / b)

        return run_volume_rounds(predictor.model, settings, VolumeImage(image, fine.get("image")), labels, sl, rounds,
                                 user.next_round_batch, on_round)

    def prepare(image):  # the working grid, as the session's and the trainer's
        working = WorkingSize(image.shape[-2:], meta.working_size)
        fine["image"] = image if settings.refinement.zoom > 1 and not working.identity else None
        return working.transform(image)

    return _Method("model", run, prepare, mem_kind, dict(meta.normalization), meta.axis if axis is None else axis,
                   Path(predictor.checkpoint.path), offsets, predictor, settings.refinement)


def _classical_method(method: str, n: int, axis) -> _Method:
    from napari_simseg.core.engine.baselines import get_segmenter

    segmenter = get_segmenter(method)

    def run(image, labels, sl, rounds, user, latency, clicks):
        return _classical_rounds(segmenter, image[sl], labels[sl], rounds, n, user, latency)

    def prepare(image):
        return image if image.ndim == 3 else image[0]  # the classical methods read one channel

    return _Method(method, run, prepare, "cim", {"low": 0.5, "high": 99.5}, 0 if axis is None else axis)


class _ClickCounter:
    """The evaluation user of one batch of slices (the first is ``start``), counting its
    clicks per round and recording them: ``placed[k][z]`` holds slice ``z``'s round-``k``
    clicks."""

    def __init__(self, user: EvaluationUser, totals: np.ndarray, rounds: int, start: int = 0,
                 placed: dict | None = None):
        self.user, self.totals, self.rounds, self.calls = user, totals, rounds, 0
        self.start = start
        self.placed = {} if placed is None else placed

    def next_round_batch(self, gts, previous=None):  # the model: one call per round, in order
        out = self.user.next_round_batch(gts, previous)
        self.calls += 1
        self.totals[self.calls] += sum(len(c) for c in out)
        for i, clicks in enumerate(out):
            self.placed.setdefault(self.calls, {})[self.start + i] = list(clicks)
        return out

    def next_round(self, gt, previous=None):  # classical methods: rounds 1..R of each slice in turn
        out = self.user.next_round(gt, previous)
        k = self.calls % self.rounds + 1
        self.totals[k] += len(out)
        self.placed.setdefault(k, {})[self.start + self.calls // self.rounds] = list(out)
        self.calls += 1
        return out


def _volume_outputs(method: _Method, opts: EvaluationOptions, image, labels, rounds, user, latency, placed=None):
    """Label maps ``(S, H, W)`` of one volume after 0..``rounds`` rounds per slice, and
    the user's clicks in the volume after each (``placed`` receives them round by round,
    see :class:`_ClickCounter`)."""
    batch_size, clicks = opts.batch_size, sorted(opts.clicks)
    outputs = [np.zeros_like(labels) for _ in range(rounds + 1)]
    totals = np.zeros(rounds + 1, int)
    placed = {} if placed is None else placed
    image = method.prepare(image)
    if method.predictor is not None:  # slices per call bounded by memory, as the session's automatic mode
        batch_size = method.predictor.batch_for(batch_size, *image.shape[-2:])
        method.predictor.check_memory(batch_size, *image.shape[-2:])
    for start in range(0, labels.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        counter = _ClickCounter(user, totals, max(1, rounds), start, placed)
        preds = method.run(image, labels, sl, rounds, counter, latency, clicks)
        for k in range(rounds + 1):
            outputs[k][sl] = preds[k]
    return outputs, np.cumsum(totals).tolist()


def _case_outputs(how: _Method, opts: EvaluationOptions, case, spec, rounds, user, latency, placed) -> tuple:
    """One case's ground truth, label maps after 0..``rounds`` rounds and user clicks after each."""
    honour, offsets = opts.honour_clicks, opts.decision_offsets
    if opts.protocol == "slice":
        image, labels = load_case_with(case, how.normalization, how.axis, spec=spec)
        return (labels, *_volume_outputs(how, opts, image, labels, rounds, user, latency, placed))
    image, labels = load_case(case, axis=how.axis, normalize=False, spec=spec)  # the session normalises
    run = volume_protocol_outputs(how.predictor, image, labels, rounds, honour_clicks=honour,
                                  decision_offsets=offsets, refinement=opts.refinement)
    latency.extend(run.round_ms)
    return labels, [o.astype(labels.dtype) for o in run.outputs], run.clicks


def evaluate(checkpoint="demo", data=None, options: EvaluationOptions | None = None, *, progress: bool = True,
             log=print, **fields) -> dict:
    """Evaluate a checkpoint (or a classical method) with the evaluation virtual user.

    Parameters
    ----------
    checkpoint : str or Path
        A ``.safetensors`` checkpoint, or ``"demo"``.
    data : str or Path
        A data set folder (any layout ``simseg check-data`` reads).
    options : EvaluationOptions, optional
        How to evaluate; ``fields`` (e.g. ``clicks=(0, 3)``) override its fields.
    progress : bool
        Show a progress bar.
    log : callable
        Where messages go.

    Returns
    -------
    dict
        The result document of the module docstring. ``noc_clicks > 0`` also computes
        NoC@85/90/95 with that click budget (it runs that many rounds on every slice).
        ``protocol="volume"``: rounds per volume with propagation (model only, no NoC, no
        ``memory`` override).
    """
    opts = replace(options or EvaluationOptions(), **fields)
    t_start = time.monotonic()
    data = Path(data)
    spec = discover_dataset(data)
    class_names = list(spec.class_names)
    n = len(class_names)
    clicks = sorted({int(k) for k in opts.clicks})
    if clicks[0] < 0:
        raise ValueError("click counts must be >= 0")
    opts = replace(opts, clicks=clicks, noc_clicks=max(0, int(opts.noc_clicks)))
    if opts.max_slices is not None and opts.max_slices < 1:
        raise ValueError(f"max_slices must be at least 1 (None: every slice), got {opts.max_slices}")
    if opts.protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {opts.protocol!r}")
    if opts.protocol == "volume" and (opts.method != "model" or opts.memory or opts.noc_clicks):
        raise ValueError("--protocol volume runs the checkpoint's own session: no --method, --memory or --noc-clicks")
    rounds = max(clicks[-1], opts.noc_clicks)
    if opts.method == "model":
        how = _model_method(checkpoint, class_names, opts)
    else:
        how = _classical_method(opts.method, n, opts.axis)
    cases, which, split_src = choose_cases(spec, opts.split, opts.split_file, how.checkpoint, log=log)
    if opts.max_volumes:
        cases = cases[: int(opts.max_volumes)]
    chosen = _Chosen(data, class_names, cases, which, split_src)
    user = EvaluationUser(n)
    per_volume = {k: {"dice": [], "iou": [], "clicks": []} for k in clicks}
    latency, iou_curves, present, changes = [], [], [], [[] for _ in range(rounds + 1)]
    iterator = cases
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(cases, desc="evaluate", leave=False, dynamic_ncols=True)
    slices = 0
    for done, case in enumerate(iterator):
        if opts.max_slices and slices >= opts.max_slices:
            chosen = _Chosen(data, class_names, cases[:done], which, split_src)
            break
        placed: dict = {}
        labels, outputs, counts = _case_outputs(how, opts, case, spec, rounds, user, latency, placed)
        slices += labels.shape[0]
        for k in clicks:
            d, i = dice_iou_per_class(outputs[k], labels, n)
            per_volume[k]["dice"].append(d)
            per_volume[k]["iou"].append(i)
            per_volume[k]["clicks"].append(int(counts[k]))
        for k, by_slice in placed.items():
            changes[k] += [round_change(outputs[k - 1][z], outputs[k][z], labels[z], cs)
                           for z, cs in sorted(by_slice.items()) if cs]
        if opts.noc_clicks > 0:
            curve = np.stack([_slice_ious(outputs[k], labels, n) for k in range(1, opts.noc_clicks + 1)], axis=1)
            iou_curves.append(curve)
            present.append(np.stack([(labels == c).any((1, 2)) for c in range(n)], axis=1))
    result = _result_document(how, checkpoint, opts, chosen, per_volume, latency)
    if opts.noc_clicks > 0 and iou_curves:
        result["noc"] = _noc_summary(iou_curves, present, opts.noc_clicks, class_names)
    if opts.protocol == "slice" and rounds:
        result["rounds"] = _rounds_summary(changes)
    result["seconds"] = round(time.monotonic() - t_start, 2)
    return result


def _rounds_summary(changes: list) -> dict:
    """``changes[k]``: the :class:`RoundChange` of every slice clicked in round ``k``."""
    return {
        "first_3": summarise_round_changes([c for k in range(1, min(3, len(changes) - 1) + 1) for c in changes[k]]),
        "all": summarise_round_changes([c for cs in changes[1:] for c in cs]),
        "per_round": [{"round": k, **summarise_round_changes(changes[k])} for k in range(1, len(changes))],
    }


def _per_class(class_names, values) -> dict:
    return {name_: (None if np.isnan(v) else round(float(v), 5)) for name_, v in zip(class_names, values)}


def _mean_dict(class_names, values) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class absent from every volume
        return _per_class(class_names, np.nanmean(np.asarray(values, float), axis=0))


def _sem_dict(class_names, values) -> dict:
    """Standard error of the mean over the volumes where the class is scored."""
    arr = np.asarray(values, float).reshape(len(values), -1)
    cols = [col[~np.isnan(col)] for col in arr.T]
    return _per_class(class_names, [col.std(ddof=1) / np.sqrt(col.size) if col.size >= 2 else np.nan
                                    for col in cols])


@dataclass
class _Chosen:
    """What an evaluation runs on: the data folder, its classes, the cases and the split that chose them."""

    data: Path
    class_names: list
    cases: list
    which: str | None
    split_src: Path | None


def _network_rounds_words(rounds) -> str:
    if not rounds:
        return ""
    return ", the network's own labels in " + ("round 1" if rounds == 1 else f"rounds 1-{rounds}")


def _refinement_record(refinement) -> dict:
    return {"locality": refinement.locality, "follow_clicks": refinement.follow_clicks,
            "min_lead": round(refinement.min_lead, 4), "spread": round(refinement.spread, 4),
            "network_rounds": (refinement.network_rounds or 0) if refinement.active else 0}


def _result_document(how: _Method, checkpoint, opts: EvaluationOptions, chosen: _Chosen, per_volume,
                     latency) -> dict:
    data, which, split_src = chosen.data, chosen.which, chosen.split_src
    class_names, cases = chosen.class_names, chosen.cases
    is_model = how.name == "model"
    name, clicks, protocol = opts.name, opts.clicks, opts.protocol
    honour_clicks, tta = opts.honour_clicks, opts.tta
    return {
        "checkpoint": str(how.checkpoint) if how.checkpoint else None,
        "data": str(data),
        "method": how.name,
        # default row name: the run folder of a trained checkpoint ("demo" for the bundled one)
        "name": name or ("demo" if str(checkpoint) == "demo" and is_model
                         else how.checkpoint.parent.name if how.checkpoint else how.name),
        "memory": how.memory,
        "honour_clicks": bool(honour_clicks) if is_model else None,
        "tta": bool(tta) if is_model else None,
        "decision_offsets": how.offsets,
        "split": which,
        "split_file": str(split_src) if split_src else None,
        "axis": how.axis,
        "protocol": protocol,
        "refinement": _refinement_record(how.refinement or opts.refinement) if is_model else None,
        "classes": class_names,
        "n_volumes": len(cases),
        "volumes": [c.case_id for c in cases],
        "results": [
            {"clicks": k,
             "clicks_per_volume": round(statistics.fmean(per_volume[k]["clicks"]), 2) if cases else None,
             "dice": _mean_dict(class_names, per_volume[k]["dice"]),
             "iou": _mean_dict(class_names, per_volume[k]["iou"]),
             "dice_sem": _sem_dict(class_names, per_volume[k]["dice"])}
            for k in clicks
        ],
        "per_volume": {
            c.case_id: {"dice": {str(k): _per_class(class_names, per_volume[k]["dice"][v]) for k in clicks},
                        "clicks": {str(k): per_volume[k]["clicks"][v] for k in clicks}}
            for v, c in enumerate(cases)
        },
        "latency_ms": {
            "mean": round(statistics.fmean(latency), 3) if latency else None,
            "std": round(statistics.pstdev(latency), 3) if latency else None,
        },
    }


def _noc_summary(iou_curves, present, noc_clicks, class_names) -> dict:
    curves = np.concatenate(iou_curves)
    pres = np.concatenate(present)
    raw = noc(curves, thresholds=NOC_THRESHOLDS, max_clicks=noc_clicks, gt_present=pres)
    out = {"max_clicks": noc_clicks}
    for thr, v in raw.items():
        out[str(thr)] = {
            cname: {"mean": None if np.isnan(m) else round(float(m), 3), "failures": int(f), "n": int(c)}
            for cname, m, f, c in zip(class_names, v["mean"], v["failures"], v["n"])
        }
    return out


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
    volume = result.get("protocol") == "volume"
    width = max(10, *(len(c) + 2 for c in names))
    lines = [f"{result['name']}: {result['n_volumes']} volumes ({result['split']}), method {result['method']}, "
             f"memory {result['memory']}"
             + ("" if result.get("honour_clicks") is not False else ", network argmax alone (clicks not honoured)")
             + ("" if result.get("tta") is not False else ", no flip averaging")
             + ("" if not result.get("decision_offsets") else
                ", decision offsets " + "/".join(f"{v:+.2f}" for v in result["decision_offsets"]))
             + (", volume protocol (rounds per volume, each propagated)" if volume else "")
             + ("" if not result.get("refinement") else
                f", rounds refined: locality {result['refinement']['locality']}"
                + (", following clicks" if result["refinement"]["follow_clicks"] else "")
                + (f", spread {result['refinement']['spread']:.2f}" if result["refinement"].get("spread") else "")
                + _network_rounds_words(result["refinement"].get("network_rounds")))]
    lines.append("Dice".ljust(8) + "".join(c.rjust(width) for c in names))
    for row in result["results"]:
        vals = "".join(("-" if row["dice"][c] is None else f"{row['dice'][c]:.3f}").rjust(width) for c in names)
        per_volume = row.get("clicks_per_volume")
        lines.append(f"{row['clicks']:>2} {'rounds' if volume else 'clicks'}" + vals
                     + ("" if per_volume is None else f"   {per_volume:.1f} clicks/volume"))
    if "noc" in result:
        for thr in [k for k in result["noc"] if k != "max_clicks"]:
            vals = "".join(
                ("-" if result["noc"][thr][c]["mean"] is None else f"{result['noc'][thr][c]['mean']:.2f}").rjust(width)
                for c in names
            )
            lines.append(f"NoC@{int(float(thr) * 100)}".ljust(8) + vals)
    if "rounds" in result:
        for what, s in (("rounds 1-3", result["rounds"]["first_3"]), ("all rounds", result["rounds"]["all"])):
            if s["n"]:
                lines.append(f"{what}: {s['n']} rounds, {100 * s['worse']:.1f} % made their slice worse; error "
                             f"removed per round {100 * s['removed']:.1f} % of the slice's, "
                             f"{100 * s['clicked_removed']:.1f} % of the clicked regions'")
    lat = result["latency_ms"]
    if lat["mean"] is not None:
        what = "per corrective round" if volume else "per slice"
        lines.append(f"latency {what} {lat['mean']:.2f} ± {lat['std']:.2f} ms; wall {result['seconds']:.0f} s")
    return "\n".join(lines)


def write_table(results: Sequence[dict], path, clicks: int | None = None) -> Path:
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
    return atomic_write_text(path, "\n".join([header, sep, *rows]) + "\n")


def write_plot(results: Sequence[dict], path, title: str | None = None) -> Path:
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
    return _finish_dice_plot(fig, axes, title, path)


def write_clicks_plot(results: Sequence[dict], path, title: str | None = None) -> Path:
    """PNG of Dice per foreground class against the user's clicks per volume, one line
    per class and result (e.g. the per-slice and the volume protocol on one set)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = list(results)
    names = results[0]["classes"][1:]
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.8), squeeze=False, sharey=True)
    styles = ["o-", "s--", "^:", "d-."]
    for ax, cname in zip(axes[0], names):
        for res, style in zip(results, styles * len(results)):
            rows = [r for r in res["results"] if r.get("clicks_per_volume") is not None]
            xs = [r["clicks_per_volume"] for r in rows]
            ys = [np.nan if r["dice"][cname] is None else r["dice"][cname] for r in rows]
            unit = "rounds per volume" if res.get("protocol") == "volume" else "rounds per slice"
            ax.plot(xs, ys, style, label=f"{res['name']} (points: {unit})")
            for x, y, r in zip(xs, ys, rows):
                ax.annotate(str(r["clicks"]), (x, y), textcoords="offset points", xytext=(3, -10), fontsize=7)
        ax.set_title(cname, fontsize=10)
        ax.set_xlabel("user clicks per volume")
        ax.grid(alpha=0.3)
    return _finish_dice_plot(fig, axes, title, path)


def _finish_dice_plot(fig, axes, title: str | None, path) -> Path:
    """Label, title and write a figure of Dice panels atomically; returns its path."""
    import matplotlib.pyplot as plt

    axes[0][0].set_ylabel("Dice (3D, mean over volumes)")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:  # the format follows the temporary name's (= the target's) suffix
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path
