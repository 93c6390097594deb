"""The teaching process: fine-tune a network on a user's labelled slices with the trainer's own code.

:class:`~napari_simseg.core.session.teaching.TeachJob` runs this module in a process of its
own (``python -m napari_simseg.core.jobs.teach_worker WORKDIR``); :func:`run_teaching` is
the same work in the calling process. It reads the
packed slices (``data.npz``) and the spec (``spec.json``) from its folder, builds a
:class:`~napari_simseg.core.jobs.training.TrainingData` from them and calls
:func:`~napari_simseg.core.jobs.training.train`: the virtual user (DDG), the loss, the
augmentation, the schedule and the checkpoints are the trainer's. Progress goes to
``progress.jsonl``, one JSON object per line (``started``, ``before``, ``plan``,
``log``, ``epoch``, then ``done`` or ``error``).

The teaching recipe (:func:`teaching_options`)
----------------------------------------------
The default training recipe (:mod:`~napari_simseg.core.jobs.recipe`) for the images taught,
changed where a start network says otherwise:

* **Fine-tuning** (a base checkpoint of these classes and channels): the base's
  network, memory, depth, context slices, working size, click radius, stem stride,
  trained flips and padding (``pad_mode``), at a learning rate of :data:`FINE_TUNE_LR` (the recipe's 1e-3 is for
  a network that starts from nothing; at that rate a few minutes on a handful of
  slices would first undo what the base knew).
* **Transfer** (a base of other classes, e.g. the bundled hippocampus model for a CT
  organ): the base's encoder and decoder (every tensor of matching name and shape is
  copied; the class head and the first convolution start fresh), the recipe's
  resolution, crops, stem stride and learning rate for this data.
* **Fresh**: the recipe's network.

With a ``layout`` (a session's network, see ``core.session.teaching.layout_of``) the new
network keeps that session's memory, depth, context slices, working size and click
radius, so the session can switch to it keeping every slice's memory. The training
slices are listed several times in an epoch (at least :data:`MIN_TRAIN_ITEMS` items):
each listing draws its own augmentation and crop, where one labelled slice would
otherwise be seen the same way all epoch. The schedule follows the clock over the time
left of the budget (``time_schedule``, without timing steps first: ``plan_steps`` would
spend a minute of a three-minute budget on a CPU where a step takes 10 s), in 2
epochs (validations) per minute of budget, 3 to 10.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import traceback
from dataclasses import replace
from pathlib import Path

import numpy as np

from napari_simseg.core.data.slices import SliceDataset, SliceOptions
from napari_simseg.core.jobs.recipe import CROP_SIZE, PIXELS_PER_BATCH, default_recipe, item_shape, working_slice_shape
from napari_simseg.core.jobs.training import TrainingData
from napari_simseg.core.session.teaching import layout_of

__all__ = ["FINE_TUNE_LR", "MIN_TRAIN_ITEMS", "build_data", "main", "new_checkpoint", "run_teaching",
           "teaching_options"]

FINE_TUNE_LR = 3e-4
MIN_TRAIN_ITEMS = 256
#: the network options a fine-tuned or transferred network takes from its base
NETWORK_FIELDS = ("encoder", "encoder_depth", "decoder", "decoder_channels", "lstm_kernel_size", "lstm_separable")
#: the share of the budget kept for what ``train`` does not count: planning the steps, the last write
RESERVE = 0.06


def teaching_options(class_names, channel_names, shapes, max_minutes: float, init: str, base_meta=None,
                     layout=None) -> dict:
    """:class:`~napari_simseg.core.engine.train_config.TrainConfig` fields of a teaching run (see the module docstring).

    Parameters
    ----------
    shapes : sequence of shape tuples
        The taught images' shapes, ``(Z, H, W)`` or ``(H, W)``.
    init : {"fresh", "finetune", "transfer"}
    base_meta : CheckpointMeta, optional
        The base checkpoint's header (fine-tuning and transfer).
    layout : dict, optional
        The memory layout to keep (``core.session.teaching.layout_of``).
    """
    # the 256 rule: a taught network keeps its session's working size where it has one
    opts = default_recipe(shapes, class_names, channel_names, max_minutes, budget_working_size=False)
    if base_meta is not None:
        opts.update({k: base_meta.model[k] for k in NETWORK_FIELDS}, memory=base_meta.memory, depth=base_meta.depth)
        opts["decoder_channels"] = list(opts["decoder_channels"])
    if init == "finetune":
        opts.update(layout_of(base_meta), encoder_stem_stride=base_meta.model["encoder_stem_stride"],
                    aug_flips=list(base_meta.trained_flips), lr=FINE_TUNE_LR,
                    pad_mode="edge" if base_meta.model.get("edge_padded_channels") else "constant")  # as it learned
    elif layout:
        opts.update(layout)
    # crops and batch for the working size and stem actually used (as the recipe sizes them)
    h, w = working_slice_shape(shapes, opts["working_size"])
    crop = CROP_SIZE if max(h, w) > CROP_SIZE else None
    item = item_shape({"crop_size": crop, "working_size": opts["working_size"]}, shapes)
    stem = 4 if opts["encoder_stem_stride"] == 1 else 1
    opts.update(crop_size=crop, batch_size=int(np.clip(round(PIXELS_PER_BATCH / (item[0] * item[1] * stem)), 4, 32)))
    if opts["memory"] == "sim":
        opts["max_clicks"] = opts["depth"]  # the paper's t = D
    # the clock sizes the schedule: timing steps first (plan_steps) would come on top of the
    # budget, and a minute's budget holds only a few steps here; fewer epochs (validations) when short
    opts.update(plan_steps=False, time_schedule=True, steps_per_epoch=None,
                epochs=int(np.clip(round(2 * float(max_minutes)), 3, 10)))
    return opts


def new_checkpoint(path, class_names, shape, channel_names=("image",), seed: int = 0) -> Path:
    """An untrained network of the teaching recipe for images of ``shape`` (``(Z, H, W)`` or
    ``(H, W)``), written to ``path``: for a user with no model at all, who starts a session
    with it, labels a few slices by hand and teaches from a fresh network (``checkpoint=None``)."""
    import torch

    from napari_simseg.core.engine.train_config import TrainConfig
    from napari_simseg.core.network.checkpoint import FLIP_AXES, CheckpointMeta, save_checkpoint
    from napari_simseg.core.network.model import build_model

    opts = teaching_options(list(class_names), list(channel_names), [tuple(int(v) for v in shape)], 3.0, "fresh")
    cfg = TrainConfig(data="-", out="-", **opts)
    torch.manual_seed(seed)
    net = build_model(cfg.model_config(len(class_names), len(channel_names))).eval()
    flips = list(cfg.aug_flips)
    meta = CheckpointMeta(class_names=list(class_names), memory=cfg.memory, depth=cfg.effective_depth,
                          click_radius=cfg.click_radius, model=net.config.to_dict(), simulation=cfg.simulation,
                          context_slices=cfg.context_slices, channel_names=list(channel_names),
                          working_size=cfg.working_size, flips=None if sorted(flips) == sorted(FLIP_AXES) else flips,
                          training={"untrained": True, "note": "random weights: label slices by hand, then teach"})
    meta.normalization = {**meta.normalization, "n4": False}
    return save_checkpoint(path, net, meta)


def build_data(parts: list, arrays: dict, class_names, channel_names, cfg) -> TrainingData:
    """The training and validation slices of packed parts (``core.session.teaching.pack_cases``).

    Validation runs on the held-back slices, or on the training slices when none were
    held back; training items list every training slice at least
    ``MIN_TRAIN_ITEMS / n`` times.
    """
    def pick(key):
        chosen = [p for p in parts if p[key]]
        return ({p["id"]: arrays[p["image"]] for p in chosen}, {p["id"]: arrays[p["labels"]] for p in chosen},
                {p["id"]: list(p[key]) for p in chosen})

    images, labels, slices = pick("train")
    n = sum(len(v) for v in slices.values())
    if not n:
        raise ValueError("no slice to train on")
    repeat = max(1, math.ceil(MIN_TRAIN_ITEMS / n))
    common = SliceOptions(working_size=cfg.working_size, context_slices=cfg.context_slices, seed=cfg.seed,
                          pad_mode=cfg.pad_mode)
    train_ds = SliceDataset.from_arrays(images, labels, class_names,
                                        replace(common, crop_size=cfg.crop_size, augmenter=cfg.augmenter()),
                                        slices={k: v * repeat for k, v in slices.items()})
    held_back = any(p["val"] for p in parts)
    v_images, v_labels, v_slices = pick("val" if held_back else "train")
    val_ds = SliceDataset.from_arrays(v_images, v_labels, class_names, common, slices=v_slices)
    if cfg.crop_size is None:  # whole slices: one size for both sets
        both = [train_ds.largest_item_shape(), val_ds.largest_item_shape()]
        shape = (max(h for h, _ in both), max(w for _, w in both))
        train_ds.pad_to(shape)
        val_ds.pad_to(shape)
    cases = sorted({p["case"] for p in parts})
    what = f"{len(val_ds)} held back" if held_back else "validation on the training slices"
    return TrainingData(list(class_names), list(channel_names), train_ds, val_ds,
                        f"{n} labelled slice(s) of {len(cases)} image(s) ({what})")


def _dice_summary(val) -> dict | None:
    """``{clicks: mean Dice over the classes but the background}`` of a validation result."""
    if not val:
        return None
    out = {}
    for k, v in val.items():
        dice = np.asarray(v["dice"][1:], float)
        out[str(k)] = round(float(np.nanmean(dice)), 5) if np.isfinite(dice).any() else None
    return out


def validate_base(base, cfg, data: TrainingData) -> dict:
    """The base network's validation result on ``data.val`` (as :func:`train` validates)."""
    from napari_simseg.core.jobs.training import validate
    from napari_simseg.core.network.checkpoint import load_checkpoint
    from napari_simseg.core.network.devices import resolve_device

    device = resolve_device(cfg.device)
    net = load_checkpoint(base, expected_classes=data.class_names).model.to(device).eval()
    return validate(net, data.val, cfg, len(data.class_names), device, False)


def _config(spec: dict, workdir: Path, base_meta):
    from napari_simseg.core.engine.train_config import TrainConfig

    opts = teaching_options(spec["class_names"], spec["channel_names"], spec["shapes"], spec["max_minutes"],
                            spec["init"], base_meta, spec.get("layout"))
    opts.update(device=spec.get("device", "auto"), progress=False, num_workers=0,
                n4=bool((spec.get("normalization") or {}).get("n4", False)))
    opts.update(spec.get("options") or {})
    image = (spec.get("provenance") or {}).get("image")
    return TrainConfig(data=f"napari-simseg teach ({image or 'labelled slices'})", out=str(workdir / "run"),
                       init_from=spec["base"] if spec["init"] != "fresh" else None,
                       init_transfer=spec["init"] == "transfer", **opts)


def _record(spec: dict, meta, before, after) -> dict:
    """The provenance written into the new checkpoint's ``training["teach"]``."""
    def original(key):
        out: dict = {}
        for p in spec["parts"]:
            out.setdefault(p["case"], []).extend(z + p["first"] for z in p[key])
        return {k: sorted(v) for k, v in out.items() if v}

    return {
        "base": spec["base"], "init": spec["init"], "slices": original("train"), "held_back": original("val"),
        "validation": "held-back slices" if spec["held_back"] else "the training slices (none held back)",
        "minutes_budget": spec["max_minutes"], "minutes": round((time.time() - spec["started"]) / 60, 2),
        "before": before, "after": after, "best_epoch": meta.training.get("epoch"),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **(spec.get("provenance") or {}),
    }


def run_teaching(spec: dict, arrays: dict, emit, workdir) -> dict:
    """Teach as ``spec`` says (see ``core.session.teaching.start_teaching``); returns the ``done`` event."""
    from napari_simseg.core.jobs.training import train
    from napari_simseg.core.network.checkpoint import read_checkpoint_meta, update_checkpoint_meta

    workdir = Path(workdir)
    base_meta = read_checkpoint_meta(spec["base"]) if spec["base"] else None
    cfg = _config(spec, workdir, base_meta)
    data = build_data(spec["parts"], arrays, spec["class_names"], spec["channel_names"], cfg)
    emit({"event": "log", "text": f"teaching ({spec['init']}) on {data.description}"})
    before_val = validate_base(spec["base"], cfg, data) if spec["init"] == "finetune" else None
    before = _dice_summary(before_val)
    emit({"event": "before", "dice": before})
    if "max_minutes" not in (spec.get("options") or {}):
        used = time.time() - spec["started"]  # the process start and the base's validation count too
        cfg.max_minutes = max(0.1, (spec["max_minutes"] * 60 * (1 - RESERVE) - used) / 60)
    clicks = 0 if cfg.simulation == "auto" else int(cfg.val_clicks)
    emit({"event": "plan", "epochs": cfg.epochs, "max_minutes": cfg.max_minutes, "clicks": clicks})
    fg = spec["class_names"][1:]

    def on_epoch(row):
        dice = [row.get(f"val_dice_{clicks}clicks_{name}") for name in fg]
        dice = [d for d in dice if d is not None and np.isfinite(d)]
        emit({"event": "epoch", "epoch": row["epoch"], "epochs": cfg.epochs, "steps": row.get("steps"),
              "train_loss": row["train_loss"],
              "dice": round(float(np.mean(dice)), 5) if dice else None, "minutes": row.get("minutes")})

    best = train(cfg, log=lambda text: emit({"event": "log", "text": str(text)}), data=data, on_epoch=on_epoch)
    meta = read_checkpoint_meta(best)
    after = _dice_summary(meta.training.get("val"))
    record = _record(spec, meta, before, after)
    training = {**meta.training, "teach": record}
    if before_val is not None:
        training["teach_before_val"] = {str(k): v for k, v in before_val.items()}
    normalization = spec.get("normalization") or meta.normalization
    update_checkpoint_meta(best, spec["output"], training=training, normalization=normalization)
    return {"event": "done", "checkpoint": spec["output"], "before": before, "after": after, "summary": record}


def _clean(value):
    """JSON without NaN/inf (``null`` instead)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def main(workdir) -> int:
    """The process's work: read the spec and data in ``workdir``, teach, report; returns the exit code."""
    workdir = Path(workdir)
    progress = workdir / "progress.jsonl"

    def emit(doc: dict) -> None:
        with open(progress, "a", encoding="utf-8") as f:
            f.write(json.dumps(_clean(doc)) + "\n")

    try:
        spec = json.loads((workdir / "spec.json").read_text(encoding="utf-8"))
        emit({"event": "started", "pid": os.getpid()})
        _watch_parent(spec.get("parent_pid"))
        if spec.get("nice") and hasattr(os, "nice"):
            os.nice(int(spec["nice"]))  # the viewer comes first
        import torch

        torch.set_num_threads(max(1, int(spec.get("threads") or 1)))
        with np.load(workdir / "data.npz") as z:
            arrays = {k: z[k] for k in z.files}
        emit(run_teaching(spec, arrays, emit, workdir))
    except BaseException as exc:  # noqa: BLE001 - every failure is reported to the parent
        text = str(exc).strip().splitlines()
        emit({"event": "error", "message": text[0] if text else type(exc).__name__,
              "traceback": traceback.format_exc()})
        return 1
    return 0


def _watch_parent(pid) -> None:
    """End this process when the one that started it is gone (killed, crashed)."""
    if not pid:
        return

    def watch():
        while os.getppid() == pid:
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=watch, daemon=True, name="simseg-teach-parent").start()


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1]))
