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

__all__ = ["CalibrationOptions", "calibrate", "collect_rounds", "fit_decision_offsets", "score_offsets"]


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
    """

    split: str = "train"
    split_file: str | None = None
    max_volumes: int | None = 40
    rounds: int = 3
    tta: bool = True
    device: str = "auto"
    batch_size: int = 64
    sweeps: int = 2


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


def calibrate(checkpoint, data, output, options: CalibrationOptions | None = None, *, progress: bool = True,
              log=print, **fields) -> dict:
    """Fit decision offsets on ``options.split`` and write a checkpoint that carries them
    (``fields`` override ``options``' fields).

    The network's tensors are copied unchanged; only the header gains
    ``decision_offsets`` and a ``training["calibration"]`` record.

    Returns
    -------
    dict
        ``offsets``, ``dice_before``/``dice_after`` (the objective on the calibration
        volumes), ``volumes``, ``split``, ``rounds``, ``seconds``, ``output``.
    """
    from napari_simseg.core.network.checkpoint import update_checkpoint_meta

    opts = replace(options or CalibrationOptions(), **fields)
    split, rounds, tta = opts.split, opts.rounds, opts.tta
    if split in ("val", "test"):
        log(f"calibrate: warning: fitting on the {split!r} split makes its evaluation optimistic; "
            "use the training split")
    t0 = time.monotonic()
    collected = collect_rounds(checkpoint, data, opts, progress=progress)
    meta = collected["meta"]
    offsets, before, after = fit_decision_offsets(collected["volumes"], meta.n_classes,
                                                  rounds=tuple(range(rounds + 1)), sweeps=opts.sweeps)
    record = {
        "split": collected["split"],
        "volumes": len(collected["case_ids"]),
        "rounds": list(range(rounds + 1)),
        "tta": bool(tta),
        "objective": "mean foreground Dice over rounds, clicks honoured",
        "dice_before": round(before, 5),
        "dice_after": round(after, 5),
    }
    training = dict(meta.training)
    training["calibration"] = record
    out = update_checkpoint_meta(collected["path"], output, decision_offsets=offsets,
                                 training=training)
    result = dict(record, offsets=offsets, output=str(out), seconds=round(time.monotonic() - t0, 1))
    names = meta.class_names
    log("decision offsets: " + ", ".join(f"{nm} {o:+.2f}" for nm, o in zip(names, offsets)))
    log(f"mean foreground Dice over rounds 0..{rounds} on {record['volumes']} {record['split']} "
        f"volumes: {before:.4f} -> {after:.4f}  ({result['seconds']} s)")
    log(f"wrote {out}")
    return result
