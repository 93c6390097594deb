"""Fitting the per-class decision offsets (``simseg calibrate``).

The network is trained with a class-weighted focal loss (dataset-wide weights, paper
section 4.3), which deliberately pushes it towards the rarer foreground classes. Its
argmax therefore over-segments: on the demo data's validation volumes the foreground
predicted after 3 clicks is 13-17 % larger than the ground truth (0 clicks: 6-23 %).
A *decision offset* per class corrects that bias where labels are decided
(:mod:`~napari_simseg.core.network.decision`)::

    labels = argmax_c( log p_c + offset_c )

The offsets are fitted by :func:`calibrate` (``simseg calibrate``) on the
**training** split, never on the volumes the model is judged on: the evaluation virtual
user runs 0..3 rounds on training volumes with the offsets off, the per-round
probabilities and clicks are kept, and a coordinate search over a grid picks the
offsets that maximise the mean foreground Dice over those rounds, with clicked pixels
honoured as in the session. Because the clicks are those placed on the uncalibrated
labels, the fit is an approximation of the loop with offsets on; a test pins that it
recovers a known bias.

The offsets are stored in the checkpoint header (``decision_offsets``) and used by the
session, the widget and ``simseg evaluate``; the interaction memory keeps the
network's own probabilities (that is what the network was trained on). Training's
internal validation decides by plain argmax. ``--no-decision-offsets`` (evaluate) and
``InteractiveSession(decision_offsets=False)`` switch them off.

**Network rounds.** Calibration also chooses how a slice's first corrective rounds are
shown (:func:`choose_network_rounds`): refined from the first round (the default of
:mod:`~napari_simseg.core.interaction.refinement`), or as the network gives them for the
rounds its dynamic data generation trained it on (:func:`trained_rounds`), refined after. On some
data the network's own early rounds fix errors no click points at, on others they break
correct regions (``docs/method.md``), so the choice is measured per checkpoint: the
evaluation user (:func:`~napari_simseg.core.jobs.evaluation.evaluate`, the same rounds as
``simseg evaluate``) runs ``choice_rounds`` rounds on the first volumes of the same split,
``choice_slices`` slices or just over, with each setting and decision offsets on; the network rounds win when
their mean foreground Dice over rounds 1..``choice_rounds`` beats the default's by more
than :data:`CHOICE_MARGIN`. The choice is stored as ``training["refinement"]``
(``network_rounds`` and both scores) and read by
:meth:`~napari_simseg.core.interaction.refinement.Refinement.for_checkpoint`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from napari_simseg.core.data.datasets import discover_dataset, load_case_with
from napari_simseg.core.data.splits import choose_cases
from napari_simseg.core.imaging.metrics import dice_iou_per_class
from napari_simseg.core.imaging.transforms import WorkingSize
from napari_simseg.core.interaction.clicks import as_clicks, honour_clicks
from napari_simseg.core.interaction.virtual_user import EvaluationUser
from napari_simseg.core.network.decision import decide_labels

__all__ = ["CHOICE_MARGIN", "CalibrationOptions", "calibrate", "choose_network_rounds", "collect_rounds",
           "fit_decision_offsets", "score_offsets", "trained_rounds"]

#: The network rounds must beat refining every round by this much (mean foreground Dice over
#: the choice's rounds) to be chosen: the default is the more local, safer rule.
CHOICE_MARGIN = 0.002


def score_offsets(volumes, offsets, n_classes: int, rounds: Sequence[int]) -> float:
    """Mean foreground Dice over ``rounds`` and volumes with ``offsets`` (the fit's objective).

    Parameters
    ----------
    volumes : list of dict
        From :func:`collect_rounds`: ``gt`` ``(S, H, W)``, ``logp`` ``(R + 1, S, N, H, W)``,
        ``clicked`` (per round, the ``(z, y, x, class)`` rows of the clicks so far).
    """
    per_round = []
    for r in rounds:
        dice = []
        for vol in volumes:
            labels = decide_labels(vol["logp"][r], offsets, axis=1, log=True)
            honour_clicks(labels, vol["clicked"][r])
            d, _ = dice_iou_per_class(labels, vol["gt"], n_classes)
            dice.append(d[1:])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a class absent from every volume
            per_round.append(np.nanmean(np.asarray(dice, float)))
    return float(np.nanmean(per_round))


def fit_decision_offsets(volumes, n_classes: int, rounds: Sequence[int] = (0, 1, 2, 3),
                         grid: Sequence[float] = tuple(np.round(np.arange(-1.0, 1.0001, 0.1), 2)),
                         sweeps: int = 2):
    """Coordinate search for the per-class offsets maximising :func:`score_offsets`.

    The background offset stays 0; each sweep tries every grid value for each
    foreground class in turn, keeping the best (ties go to the smaller magnitude).

    Returns
    -------
    offsets : list of float
    before, after : float
        The objective with zero offsets and with the fitted ones.
    """
    offsets = np.zeros(n_classes, np.float32)
    before = best = score_offsets(volumes, offsets, n_classes, rounds)
    grid = sorted({float(g) for g in grid} | {0.0}, key=abs)
    for _ in range(int(sweeps)):
        changed = False
        for c in range(1, n_classes):
            for g in grid:
                if np.isclose(g, offsets[c]):
                    continue
                trial = offsets.copy()
                trial[c] = g
                s = score_offsets(volumes, trial, n_classes, rounds)
                if s > best + 1e-9:
                    best, offsets, changed = s, trial, True
        if not changed:
            break
    return [round(float(v), 4) for v in offsets], before, best


@dataclass
class CalibrationOptions:
    """How :func:`calibrate` fits (each field is also a ``simseg calibrate`` option).

    Attributes
    ----------
    split : {"train", "all", "val", "test"}
        The volumes to fit on (never those you report).
    split_file : str or None
        ``split.json`` (default: the data folder's, else the checkpoint folder's).
    max_volumes : int or None
        Fit on the first N volumes.
    rounds : int
        Click rounds to fit over (0..rounds).
    tta : bool
        Fit for the network averaged over flips, as the session runs it.
    device : str
    batch_size : int
        Slices per network call (bounded by memory).
    sweeps : int
        Coordinate sweeps of the offset search.
    offsets : bool
        Fit decision offsets (False: keep the checkpoint's as they are).
    choice_rounds : int
        Rounds per slice of the network-rounds choice (0: no choice; the header's is kept).
    choice_slices : int
        The choice runs on the first volumes of the split until this many slices are reached (a
        volume is evaluated whole): on 2D images that many images, on 3D volumes usually one.
    """

    split: str = "train"
    split_file: str | None = None
    max_volumes: int | None = 40
    rounds: int = 3
    tta: bool = True
    device: str = "auto"
    batch_size: int = 64
    sweeps: int = 2
    offsets: bool = True
    choice_rounds: int = 10
    choice_slices: int = 32


def collect_rounds(checkpoint, data, options: CalibrationOptions | None = None, *, progress: bool = True,
                   **fields) -> dict:
    """Run the evaluation virtual user (offsets off) and keep every round's probabilities
    (``fields`` override ``options``' fields).

    Returns
    -------
    dict
        ``volumes`` (list of dicts for :func:`score_offsets`), ``case_ids``, ``meta``,
        ``path`` (the resolved checkpoint) and ``split``.
    """
    import torch

    from napari_simseg.core.engine.rounds import RoundSettings, run_volume_rounds
    from napari_simseg.core.network.predictor import Predictor

    opts = replace(options or CalibrationOptions(), **fields)
    split, max_volumes, rounds, batch_size = opts.split, opts.max_volumes, opts.rounds, opts.batch_size
    device, tta, split_file = opts.device, opts.tta, opts.split_file
    data = Path(data)
    spec = discover_dataset(data)
    predictor = Predictor(checkpoint, device=device, tta=tta, expected_classes=list(spec.class_names))
    path, meta, net = Path(predictor.checkpoint.path), predictor.meta, predictor.model
    n = meta.n_classes
    cases, which, _ = choose_cases(spec, split, split_file, path, log=print if progress else None)
    if max_volumes:
        cases = cases[: int(max_volumes)]
    if not cases:
        raise ValueError(f"no volumes in split {split!r} of {data}")
    recorded: list = []

    class _Recorder(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, state=None):
            logits, new_state = self.inner(x, state)
            recorded.append(torch.log_softmax(logits.float(), 1).cpu().numpy().astype(np.float16))
            return logits, new_state

    recorder = _Recorder(net).eval()
    norm = dict(meta.normalization)
    axis = meta.axis
    iterator = cases
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(cases, desc="calibrate", leave=False, dynamic_ncols=True)
    volumes = []
    for case in iterator:
        image, labels = load_case_with(case, norm, axis, spec=spec)
        # fitted on the working grid: the probabilities the network gives, at bounded memory
        grid = WorkingSize(labels.shape[-2:], meta.working_size)
        image, labels = grid.transform(image), grid.transform(labels, "labels")
        logp_chunks = []
        new_rows = [[] for _ in range(rounds + 1)]  # (z, y, x, class) of the clicks of round r
        step = predictor.batch_for(batch_size, *image.shape[-2:])  # slices per call bounded by memory
        for start in range(0, labels.shape[0], step):
            user = EvaluationUser(n)
            round_no = [0]

            def clicker(gts, previous, z0=start, user=user, round_no=round_no, new_rows=new_rows):
                round_no[0] += 1
                clicks = user.next_round_batch(gts, previous)
                new_rows[round_no[0]].extend((z0 + i, int(round(c.y)), int(round(c.x)), c.label)
                                             for i, cs in enumerate(clicks) for c in as_clicks(cs))
                return clicks

            recorded.clear()
            run_volume_rounds(recorder, RoundSettings.for_checkpoint(meta, honour=True), image, labels,
                              slice(start, start + step), rounds, clicker)
            logp_chunks.append(np.stack(recorded))
        # after round r every click of rounds 1..r is honoured, oldest first
        clicked = [np.asarray([row for rr in new_rows[: r + 1] for row in rr], np.int64).reshape(-1, 4)
                   for r in range(rounds + 1)]
        volumes.append({"gt": labels.astype(np.uint8 if n <= 255 else np.int64),
                        "logp": np.concatenate(logp_chunks, axis=1), "clicked": clicked})
    return {"volumes": volumes, "case_ids": [c.case_id for c in cases], "meta": meta,
            "path": Path(path), "split": which}


def trained_rounds(meta) -> int:
    """How many rounds of its own output a checkpoint's network was trained on (DDG's
    ``ddg_rounds``, else ``max_clicks``); 0 for one trained without them (SDG, automatic).
    A DDG checkpoint whose header does not say (e.g. a weight average) is taken to have
    trained with the default (:class:`~napari_simseg.core.engine.train_config.TrainConfig`)."""
    from napari_simseg.core.engine.train_config import TrainConfig

    if "ddg" not in str(meta.simulation):
        return 0
    config = (meta.training or {}).get("config") or {}
    rounds = config.get("ddg_rounds") or config.get("max_clicks", TrainConfig.max_clicks)
    return rounds if isinstance(rounds, int) and not isinstance(rounds, bool) and rounds > 0 else 0


def choose_network_rounds(checkpoint, data, options: CalibrationOptions | None = None, *, log=print,
                          **fields) -> dict | None:
    """Choose the checkpoint's network rounds on ``options.split`` (module docstring).

    Returns
    -------
    dict or None
        The record stored as ``training["refinement"]``: ``network_rounds`` (chosen),
        ``scores`` (candidate rounds -> mean foreground Dice over rounds 1..``rounds``),
        ``split``, ``volumes``, ``rounds``, ``seconds``; None when there is nothing to choose
        (``choice_rounds`` 0, or a network not trained on rounds of its own output:
        :func:`trained_rounds`).
    """
    from napari_simseg.core.interaction.refinement import Refinement
    from napari_simseg.core.io.resources import resolve_checkpoint
    from napari_simseg.core.jobs.evaluation import evaluate
    from napari_simseg.core.network.checkpoint import read_checkpoint_meta

    opts = replace(options or CalibrationOptions(), **fields)
    trained = trained_rounds(read_checkpoint_meta(resolve_checkpoint(checkpoint)))
    if opts.choice_rounds <= 0 or not trained:
        return None
    rounds = int(opts.choice_rounds)
    t0 = time.monotonic()
    scores, which, volumes = {}, opts.split, 0
    for candidate in (0, trained):
        result = evaluate(checkpoint, data, split=opts.split, split_file=opts.split_file,
                          clicks=list(range(1, rounds + 1)), max_slices=opts.choice_slices or None,
                          device=opts.device, batch_size=opts.batch_size, tta=opts.tta, progress=False,
                          log=lambda *a: None, refinement=Refinement(network_rounds=candidate))
        per_round = [[v for name, v in row["dice"].items() if name != result["classes"][0] and v is not None]
                     for row in result["results"]]
        scores[candidate] = float(np.mean([np.mean(r) for r in per_round if r]))
        which, volumes = result["split"], result["n_volumes"]
    chosen = trained if scores[trained] > scores[0] + CHOICE_MARGIN else 0
    record = {"network_rounds": chosen, "scores": {str(k): round(v, 5) for k, v in scores.items()},
              "split": which, "volumes": volumes, "rounds": rounds,
              "objective": f"mean foreground Dice over rounds 1..{rounds}, refinement as in the session",
              "seconds": round(time.monotonic() - t0, 1)}
    log(f"network rounds: {chosen} (mean foreground Dice over rounds 1..{rounds} on {volumes} {which} volumes: "
        + ", ".join(f"{k} rounds {v:.4f}" for k, v in scores.items()) + f"; {record['seconds']} s)")
    return record


def calibrate(checkpoint, data, output, options: CalibrationOptions | None = None, *, progress: bool = True,
              log=print, **fields) -> dict:
    """Fit decision offsets on ``options.split``, choose the network rounds
    (:func:`choose_network_rounds`) and write a checkpoint that carries them (``fields``
    override ``options``' fields).

    The network's tensors are copied unchanged; only the header gains
    ``decision_offsets`` and a ``training["calibration"]`` record (unless ``options.offsets``
    is False: the checkpoint's offsets stay) and the choice as ``training["refinement"]``.

    Returns
    -------
    dict
        ``offsets``, ``dice_before``/``dice_after`` (the objective on the calibration
        volumes; None without a fit), ``volumes``, ``split``, ``rounds``, ``network_rounds``
        (the choice's record, or None), ``seconds``, ``output``.
    """
    from napari_simseg.core.io.resources import resolve_checkpoint
    from napari_simseg.core.network.checkpoint import read_checkpoint_meta, update_checkpoint_meta

    opts = replace(options or CalibrationOptions(), **fields)
    split, rounds, tta = opts.split, opts.rounds, opts.tta
    if split in ("val", "test"):
        log(f"calibrate: warning: fitting on the {split!r} split makes its evaluation optimistic; "
            "use the training split")
    if opts.choice_slices is not None and opts.choice_slices < 1:
        raise ValueError(f"choice_slices must be at least 1, got {opts.choice_slices}")
    t0 = time.monotonic()
    source = resolve_checkpoint(checkpoint)
    meta = read_checkpoint_meta(source)
    choosing = opts.choice_rounds > 0 and trained_rounds(meta) > 0
    if not opts.offsets and not choosing:
        raise ValueError("nothing to do: no decision offsets to fit (--no-offsets) and no network rounds to choose "
                         "(--choice-rounds 0, or a network not trained on rounds of its own output)")
    # one split for both steps: the one found for the source checkpoint, never one beside the output
    _, _, split_path = choose_cases(discover_dataset(Path(data)), split, opts.split_file, source)
    opts = replace(opts, split_file=str(split_path) if split_path else opts.split_file)
    changes, offsets = {}, meta.decision_offsets
    record = {"split": split, "volumes": 0, "rounds": [], "dice_before": None, "dice_after": None}
    if opts.offsets:
        collected = collect_rounds(source, data, opts, progress=progress)
        offsets, before, after = fit_decision_offsets(collected["volumes"], meta.n_classes,
                                                      rounds=tuple(range(rounds + 1)), sweeps=opts.sweeps)
        record = {"split": collected["split"], "volumes": len(collected["case_ids"]),
                  "rounds": list(range(rounds + 1)), "tta": bool(tta),
                  "objective": "mean foreground Dice over rounds, clicks honoured",
                  "dice_before": round(before, 5), "dice_after": round(after, 5)}
        changes = {"decision_offsets": offsets, "training": {**meta.training, "calibration": record}}
        log("decision offsets: " + ", ".join(f"{nm} {o:+.2f}" for nm, o in zip(meta.class_names, offsets)))
        log(f"mean foreground Dice over rounds 0..{rounds} on {record['volumes']} {record['split']} "
            f"volumes: {before:.4f} -> {after:.4f}")
    output, choice = Path(output), None
    if choosing:
        staged = output.parent / f"{output.stem}.choosing.safetensors"  # the output is written once, whole
        try:
            choice = choose_network_rounds(update_checkpoint_meta(source, staged, **changes), data, opts, log=log)
        finally:
            staged.unlink(missing_ok=True)
        changes["training"] = {**changes.get("training", meta.training), "refinement": choice}
    out = update_checkpoint_meta(source, output, **changes)
    result = dict(record, offsets=offsets, network_rounds=choice, output=str(out),
                  seconds=round(time.monotonic() - t0, 1))
    log(f"wrote {out}  ({result['seconds']} s)")
    return result
