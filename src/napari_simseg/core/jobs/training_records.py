"""What a training run keeps and reports: validation, checkpoints, its state and logs.

After every epoch :func:`end_epoch` validates the network (:func:`validate`: Dice and
IoU per class at 0 and ``val_clicks`` clicks), writes ``last.safetensors`` and, when it
scores better, ``best.safetensors``, the training state ``train_state.pt`` (for
``resume``) and ``log.json`` / ``log.csv``. :func:`resume_state` reads the state back
(:func:`check_resume_options` first refuses options that would change the network or
the data). At the end, :func:`report_run` says what a user must know about the result:
classes the network has not learnt, a budget too short for the steps the run needed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from napari_simseg.core.engine.rounds import RoundSettings, cropped_clicker, run_rounds
from napari_simseg.core.engine.train_config import TrainConfig
from napari_simseg.core.imaging.regions import TILE_BATCH_BYTES
from napari_simseg.core.io.atomic import atomic_path, atomic_write_text
from napari_simseg.core.jobs.recipe import LEARNING_STEPS
from napari_simseg.core.jobs.training_setup import TrainingRun
from napari_simseg.core.network.checkpoint import CheckpointError, read_checkpoint_meta, save_checkpoint

__all__ = ["RESUME_FIXED", "WEAK_DICE", "check_resume_options", "end_epoch", "mean_score", "report_run",
           "resume_state", "validate", "validation_batch", "write_logs"]

#: A class whose validation Dice (at ``val_clicks`` clicks) stays below this is not learnt.
WEAK_DICE = 0.1


# ---------------------------------------------------------------------- validation
def validate(net, dataset, cfg: TrainConfig, n_classes, device, amp) -> dict:
    """Dice and IoU per class on the validation slices, pooled over all of them,
    at 0 clicks and at ``val_clicks`` evaluation-user clicks per class."""
    from napari_simseg.core.imaging.metrics import confusion_counts, dice_iou_from_confusion
    from napari_simseg.core.interaction.virtual_user import EvaluationUser

    rounds = 0 if cfg.simulation == "auto" else max(0, int(cfg.val_clicks))
    user = EvaluationUser(n_classes)
    conf = {0: np.zeros((n_classes, n_classes), np.int64), rounds: np.zeros((n_classes, n_classes), np.int64)}
    batch_size = validation_batch(net, dataset, cfg, n_classes)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in loader:
        images = batch["image"].to(device)
        gts = batch["labels"].numpy()
        valid = np.zeros(gts.shape, bool)  # score the real pixels, not the padding
        for i, (y0, y1, x0, x1) in enumerate(batch["crop"].tolist()):
            valid[i, y0:y1, x0:x1] = True
        clicker = cropped_clicker(user.next_round_batch, batch["crop"].tolist())
        settings = RoundSettings(cfg.memory, cfg.effective_depth, n_classes, cfg.click_radius, amp=amp,
                                 image_channels=images.shape[1] // (1 + 2 * cfg.context_slices))
        preds = run_rounds(net, images, gts, rounds, clicker, settings)
        for k in conf:
            conf[k] += confusion_counts(preds[k][valid], gts[valid], n_classes)
    out = {}
    for k, c in conf.items():
        dice, iou = dice_iou_from_confusion(c)
        out[k] = {"dice": dice.tolist(), "iou": iou.tolist()}
    return out


def validation_batch(net, dataset, cfg: TrainConfig, n_classes: int) -> int:
    """``val_batch_size``, or fewer slices where a call on that many would take more than
    the automatic mode's memory budget (large multi-channel slices)."""
    module = getattr(net, "module", net)  # an averaged (EMA) or distributed wrapper: its network
    estimate = getattr(module, "activation_floats_per_pixel", None)
    if estimate is None or not len(dataset):
        return int(cfg.val_batch_size)
    h, w = dataset[0]["image"].shape[-2:]
    per_slice = 4 * (0.5 * estimate() + module.config.in_channels + 2 * n_classes) * h * w
    return max(1, min(int(cfg.val_batch_size), int(TILE_BATCH_BYTES // per_slice)))


def mean_score(val: dict, rounds: int) -> float:
    """The mean Dice of the classes but the background at ``rounds`` clicks (0 when none is scored)."""
    dice = np.asarray(val[rounds]["dice"][1:], float)
    return float(np.nanmean(dice)) if np.isfinite(dice).any() else 0.0


#: Options a resumed run must share with the run it continues: they change the network or the data.
RESUME_FIXED = ("data", "memory", "depth", "decoder", "encoder", "encoder_depth", "decoder_channels",
                "lstm_kernel_size", "lstm_separable", "encoder_stem_stride", "context_slices", "axis",
                "train_axes", "pad_to", "n4", "on_error", "val_fraction", "test_fraction", "split_seed",
                "max_volumes", "working_size", "crop_size")


def check_resume_options(cfg: TrainConfig) -> None:
    """Refuse ``resume`` with options that differ, in :data:`RESUME_FIXED`, from the
    run's ``config.yaml``, listing them all (one line)."""
    import yaml

    path = Path(cfg.out) / "config.yaml"
    if not path.is_file():
        return  # nothing to compare with; the training state is checked when loaded
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"--resume: cannot read {path}: {str(exc).splitlines()[0]}") from None
    diffs = []
    for key in RESUME_FIXED:
        if key not in saved:
            continue
        old, new = saved[key], getattr(cfg, key)
        if key == "data":
            same = os.path.realpath(str(old)) == os.path.realpath(str(new))
        elif isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
            same = list(old) == list(new)
        else:
            same = old == new
        if not same:
            diffs.append(f"{key} (run: {old!r}, now: {new!r})")
    if diffs:
        raise ValueError(f"--resume: options that change the network or the data differ from {path}: "
                         f"{'; '.join(diffs)}; resume with the run's own options, or train into a new --out")


def resume_state(run: TrainingRun):
    """``(start_epoch, best score, history)``: from ``train_state.pt`` with ``resume``."""
    cfg, state_path = run.cfg, run.out / "train_state.pt"
    if not cfg.resume:
        return 0, -math.inf, []
    if not state_path.is_file():
        raise FileNotFoundError(f"--resume: no {state_path} to resume from")
    st = torch.load(state_path, map_location="cpu", weights_only=True)
    try:
        run.net.load_state_dict(st["model"])  # float32, even when checkpoints are stored in float16
    except RuntimeError:
        raise ValueError(f"--resume: {state_path} holds another network than these options build; resume "
                         f"with the run's own options (its config.yaml)") from None
    if run.ema is not None:
        if "ema" not in st:
            raise ValueError(f"--resume with ema_decay {cfg.ema_decay}: {state_path} was written "
                             f"without weight averaging; resume with the run's own options")
        run.ema.load_state_dict(st["ema"])
    run.optimizer.load_state_dict(st["optimizer"])
    if "scaler" in st and run.scaler.is_enabled():
        run.scaler.load_state_dict(st["scaler"])
    start_epoch, best, history = int(st["epoch"]), float(st["best"]), json.loads(st["history"])
    # an epoch stopped by max_minutes is redone: its row goes, or log.json would list it twice
    history = [row for row in history if int(row.get("epoch", 0)) <= start_epoch]
    if run.dist.main:
        run.log(f"resuming after epoch {start_epoch} (best score {best:.4f})")
    return start_epoch, best, history


def end_epoch(run: TrainingRun, epoch: int, row: dict, history: list, best: float, stopped: bool, t_start: float):
    """Validate, save ``last``/``best``/``train_state.pt`` and the logs; returns the best score."""
    cfg, class_names = run.cfg, run.class_names
    val_rounds = 0 if cfg.simulation == "auto" else max(0, int(cfg.val_clicks))
    best_path = run.out / "best.safetensors"
    # the network that is validated and saved: the averaged one when averaging
    saved_net = run.net if run.ema is None else run.ema.module
    val = validate(saved_net, run.val_ds, cfg, run.n_classes, run.device, run.amp)
    score = mean_score(val, val_rounds)
    for k, v in val.items():
        for metric in ("dice", "iou"):
            for name, value in zip(class_names, v[metric]):
                row[f"val_{metric}_{k}clicks_{name}"] = round(float(value), 5)
    row["score"] = round(score, 5)
    row["minutes"] = round((time.monotonic() - t_start) / 60, 2)
    history.append(row)
    run.meta.training = {
        "epoch": epoch + 1, "score": score, "val": val, "data": _data_folder(cfg.data),
        "train_volumes": list(run.train_ds.case_ids), "val_volumes": list(run.val_ds.case_ids),
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("data", "out")},
    }
    if cfg.encoder_weights:  # provenance only: the checkpoint never needs the file
        run.meta.training["initial_encoder_weights"] = str(cfg.encoder_weights)
    save_checkpoint(run.out / "last.safetensors", saved_net, run.meta, half=cfg.half_checkpoint)
    if score > best or not best_path.is_file():
        best = max(best, score)
        save_checkpoint(best_path, saved_net, run.meta, half=cfg.half_checkpoint)
    train_state = {"epoch": epoch + (0 if stopped else 1), "best": best, "model": run.net.state_dict(),
                   "optimizer": run.optimizer.state_dict(),
                   "scaler": run.scaler.state_dict(), "history": json.dumps(history)}
    if run.ema is not None:
        train_state["ema"] = run.ema.state_dict()
    with atomic_path(run.out / "train_state.pt") as tmp:
        torch.save(train_state, str(tmp))
    write_logs(run.out, history)
    dice_txt = ", ".join(f"{n}={d:.3f}" for n, d in zip(class_names, val[val_rounds]["dice"]))
    run.log(f"epoch {epoch + 1}: loss {row['train_loss']:.4f}, val Dice (pooled) @{val_rounds} clicks: {dice_txt} "
            f"({row['train_seconds']:.0f}s train)")
    return best


def report_run(run: TrainingRun, history: list, planned_steps: int | None = None,
               out_of_time: bool = False) -> list[str]:
    """The run's verdict: ``WARNING`` lines for the classes its best checkpoint has not learnt
    (validation Dice below :data:`WEAK_DICE`) and for a budget too short for its steps, with
    the budget it would need; also recorded in ``log.json``'s last row (``warnings``,
    ``verdict``). Empty when there is nothing to warn about.

    The budget needed is the :data:`~napari_simseg.core.jobs.recipe.LEARNING_STEPS` the
    default recipe took to learn every class of its reference data sets, at this run's
    measured seconds per step and share of time spent outside the steps (validation).
    """
    cfg = run.cfg
    rounds = 0 if cfg.simulation == "auto" else max(0, int(cfg.val_clicks))
    val = _best_validation(run)
    weak = {}
    if val is not None and (str(rounds) in val or rounds in val):
        dice = (val.get(str(rounds)) or val.get(rounds))["dice"]
        weak = {name: d for name, d in zip(run.class_names[1:], dice[1:])
                if d is not None and math.isfinite(d) and d < WEAK_DICE}
    steps = int(sum(row.get("steps", 0) for row in history))
    train_s = float(sum(row.get("train_seconds", 0.0) for row in history))
    step_s = train_s / max(steps, 1)
    overhead = max(1.0, 60 * float(history[-1].get("minutes", 0.0)) / max(train_s, 1e-6))
    needed = math.ceil(LEARNING_STEPS * step_s * overhead / 60 / 0.92)
    needed = needed if needed <= 10 else 5 * math.ceil(needed / 5)
    short = planned_steps is not None and steps < 0.5 * planned_steps and (out_of_time or cfg.time_schedule)
    lines = []
    if weak:
        listed = ", ".join(f"{name} ({d:.3f})" for name, d in weak.items())
        lines.append(f"WARNING: validation Dice below {WEAK_DICE} at {rounds} clicks for {listed}: the network has "
                     f"not learnt {'it' if len(weak) == 1 else 'them'}.")
        if steps < LEARNING_STEPS:
            lines.append(f"WARNING: this run made {steps} optimisation steps ({step_s:.1f} s each here); the default "
                         f"recipe needed about {LEARNING_STEPS} to learn every class of its reference data sets: "
                         f"give it about {needed} minutes (--max-minutes {needed}).")
        else:
            lines.append(f"WARNING: this run made {steps} optimisation steps, more than the default recipe needed "
                         f"({LEARNING_STEPS}): check these classes' labels and sizes (simseg check-data "
                         f"{cfg.data}) before giving it more time.")
    elif short:
        lines.append(f"WARNING: the budget let this run make {steps} of the {planned_steps} optimisation steps it "
                     f"planned ({step_s:.1f} s each here, a busy machine?): about {needed} minutes would hold the "
                     f"{LEARNING_STEPS} steps the default recipe needs.")
    if lines or "warnings" in history[-1]:
        for row in history:
            row.pop("warnings", None)
            row.pop("verdict", None)
        if lines:
            history[-1]["warnings"] = lines
            history[-1]["verdict"] = {"weak_classes": {k: round(float(v), 5) for k, v in weak.items()},
                                      "steps": steps, "planned_steps": planned_steps,
                                      "seconds_per_step": round(step_s, 3), "minutes_needed": needed}
        write_logs(run.out, history)
    return lines


def _data_folder(data) -> str:
    """Where the run's data are: an existing folder as an absolute path (evaluation knows its
    own split by it from any working folder), anything else as given."""
    return os.path.abspath(str(data)) if os.path.isdir(str(data)) else str(data)


def _best_validation(run: TrainingRun) -> dict | None:
    """The validation of the checkpoint the run hands over (``best.safetensors``' header)."""
    try:
        return read_checkpoint_meta(run.out / "best.safetensors").training.get("val")
    except (CheckpointError, OSError):
        return None


def write_logs(out: Path, history: list) -> None:
    atomic_write_text(out / "log.json", json.dumps(history, indent=1))
    keys = []
    for row in history:
        keys += [k for k in row if k not in keys and k not in ("warnings", "verdict")]
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    w.writerows(history)
    with atomic_path(out / "log.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        f.write(text.getvalue())
