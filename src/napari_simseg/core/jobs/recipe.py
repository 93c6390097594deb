"""The default training recipe: what ``simseg train --data DIR --out OUT`` does without a config.

The paper's configuration (ResNet34, 75 epochs at a learning rate of 5e-5, focal
loss; ``training/configs/ddg_sim.yaml``) is a GPU recipe: on a 2-core CPU it does a
few steps in the minutes a user waits and learns next to nothing. This recipe is
chosen to learn a new task in about 20 CPU minutes, from the data alone:

* **Working resolution.** Slices whose longest side exceeds 256 pixels are shrunk to
  256 (``working_size``); smaller ones keep their resolution. Labels, evaluation and
  the widget stay at the image's own resolution (probabilities are resampled back).
  With a budget of at most 12 minutes the working size is 128 instead, with the crops
  and batch of the 256 rule (a 160-pixel crop then holds a whole slice, edge-padded): in
  10 minutes on the 2D TotalSegmentator MR set, 256 left the small structures unlearnt
  (aorta 0.05, left kidney 0.01, spleen 0.23 at 3 clicks) where this learnt them all
  (0.90 or more), and whole 128-pixel slices in batches of 8 learnt the aorta only to
  0.12 (``docs/results/README.md``). Teaching (``core.jobs.teach_worker``) keeps the 256 rule.
* **Network.** ResNet18 encoder, decoder channels 128-64-32-16-16 with the ConvLSTM
  decoder (the paper's system at a third of the compute); for small slices (longest
  side at most 96 pixels) the encoder's first convolution keeps full resolution
  (``encoder_stem_stride 1``), which thin structures of a few pixels need.
* **Batch and crops.** About 8 x 128 x 128 pixels per batch: small slices come many at
  a time (up to 32), slices larger than 160 pixels are trained as 160-pixel crops
  centred on a structure two times in three (detail at the cost of context).
* **Optimisation.** Adam at 1e-3 with a one-cycle schedule (5 % warm-up, cosine to
  1 %) sized to ``--max-minutes`` (20 by default) on this machine: the first steps are
  timed and ``steps_per_epoch`` set so that 10 epochs and their validation fill the
  budget (``plan_steps``); on a machine busier than when it was timed, the epochs and
  the schedule follow the clock instead (``time_schedule``), so the run still ends at
  the budget with its learning rate annealed. Cross-entropy plus a soft Dice term (weight 1), no class
  weights: Dice balances the classes without the over-segmentation class weights
  cause.
* **Augmentation.** Rotations up to 10 degrees, zoom 0.9-1.1, brightness, gamma, blur
  and sharpening, and both flips (which also turns on flip averaging at inference,
  worth a few Dice points) unless a class name says left or right (``left lung``,
  ``kidney_R``...): a flip would swap such classes, and averaging over flips would
  then mix them (the checkpoint records the flips it was trained with).
* **Interaction (DDG-SIM).** The SIM of depth 3 and the paper's virtual user with
  1-3 rounds of clicks, but every class gets a corrective click in every round (rule 2
  off: the paper's decreasing click probability makes a third round of clicks rare in
  training, and the network then gets worse at the third round of a real user) and
  30 % of the clicks are dropped (the paper drops 80 %); a quarter of the items have
  no clicks, so the network also segments on its own. The number of rounds (0-3) is
  drawn per item, so every batch mixes them (``mix_rounds``): drawn per batch, batch
  normalisation learns running statistics that fit no single kind of input, and the
  automatic and first-round results swing from epoch to epoch (on the 2D CT set:
  liver 0.56-0.95 Dice at 0 clicks between epochs).
* **CPU speed.** The network runs channels-last, and in bfloat16 autocast where the CPU
  has native bfloat16 (AVX512-BF16 or AMX; ``amp``), else in float32: 2-3 times the
  steps of float32 in the plain layout on this 2-core machine.
* **3D data.** Slices along the first axis, with one neighbour on each side as
  context (2.5D). Slices without any structure are kept to a third of the training
  items at most (a tumour in a brain or an organ in a CT fills few slices; the rest
  would take most of the steps).
* **Large sets.** The trainer holds the preprocessed cases in memory: a set larger
  than 4 GB at the working size (hundreds of multi-modal MRI volumes) is read only in
  part: as many cases as fit, a seeded random subset of the split (``max_volumes``),
  which also keeps the reading inside the budget.
* **Validation.** 20 % of the cases; at most 256 slices per validation pass, and no
  more than its passes take a tenth of the budget (one pass is timed before the run;
  at least 16 slices are kept, evenly spread over the cases).

``simseg check-data DIR`` prints the working resolution and the estimated seconds
per step this recipe would use.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

import numpy as np

from napari_simseg.core.imaging.preprocessing import round_up, working_scale, working_shape

__all__ = ["ARRAY_BYTES", "LEARNING_STEPS", "MAX_EMPTY_FRACTION", "RECIPE_NAME", "case_bytes", "case_shapes",
           "default_recipe", "describe_recipe", "estimate_step_seconds", "item_shape", "lateral_classes",
           "max_cases_in_memory", "working_slice_shape"]

RECIPE_NAME = "cpu-fast-v2"
WORKING_SIZE = 256  # longest slice side the network works at
SHORT_BUDGET_MINUTES = 12.0  # at most this budget: the coarser working size below
SHORT_BUDGET_WORKING_SIZE = 128
CROP_SIZE = 160  # training crops of larger slices
SMALL_SLICE = 96  # at most this longest side: full-resolution encoder stem
PIXELS_PER_BATCH = 8 * 128 * 128
ARRAY_BYTES = 4 * 2**30  # preprocessed cases held in memory for training and validation, at most
MAX_EMPTY_FRACTION = 1 / 3  # volumes: training slices without a structure, at most this share
#: Optimisation steps the recipe took before every class of its reference runs passed a
#: validation Dice of 0.6 at 3 clicks (docs/results/recipe_*_log.json: MR 2D 574, MRI
#: phantom 1106, radiographs within the first epoch): what a run's budget should hold at least.
LEARNING_STEPS = 1100
# a class name that says left or right: "left lung", "kidney_R", "Lt. clavicle", "lung-rechts"
_LATERAL = re.compile(r"(^|[^a-z])(left|right|l|r|lt|rt|links|rechts|gauche|droite|sin|dex)([^a-z]|$)")


def lateral_classes(class_names: Sequence[str]) -> list[str]:
    """The class names that say left or right (flips would swap such classes)."""
    return [n for n in class_names if _LATERAL.search(str(n).lower().replace("_", " "))]


def working_slice_shape(shapes: Sequence[Sequence[int]], working_size: int | None) -> tuple[int, int]:
    """The largest ``(h, w)`` of the slices (along the first axis) at the working resolution."""
    hs, ws = [], []
    for shape in shapes:
        h, w = working_shape(shape[-2:], working_scale(shape[-2:], working_size))
        hs.append(h)
        ws.append(w)
    return max(hs), max(ws)


def case_shapes(spec, max_cases: int = 64) -> list[tuple]:
    """The label-grid shapes of up to ``max_cases`` cases (evenly spread), from file headers."""
    from napari_simseg.core.io.images import ImageReadError, read_image_info

    cases = list(spec.cases)
    if len(cases) > max_cases:
        cases = [cases[i] for i in np.linspace(0, len(cases) - 1, max_cases).round().astype(int)]
    shapes = []
    for case in cases:
        if case.label_grid_path is None:
            continue  # no labels at all: reported when the case is read
        try:
            shapes.append(tuple(read_image_info(case.label_grid_path).shape))
        except ImageReadError:
            continue  # reported when the case is read
    return shapes


def describe_recipe(options: dict) -> str:
    """The recipe's choices in a few lines, as ``simseg train`` prints them first."""
    size = options["working_size"]
    lines = [
        f"recipe {RECIPE_NAME} (no --config): {options['encoder']} U-Net with a ConvLSTM decoder, "
        f"SIM depth {options['depth']}, DDG with {options['max_clicks']} rounds",
        f"  working size {size or 'the slices own'}, "
        + (f"{options['crop_size']}-pixel crops, " if options["crop_size"] else "whole slices, ")
        + f"batch {options['batch_size']}, context slices {options['context_slices']}, "
        f"stem stride {options['encoder_stem_stride']}",
        f"  Adam {options['lr']:g} {options['lr_schedule']} over {options['epochs']} epochs sized to "
        f"{options['max_minutes']:g} minutes; cross-entropy + Dice; "
        + (f"flips {'+'.join(options['aug_flips'])}" if options["aug_flips"] else "no flips (left/right classes)")
        + f", rotations {options['aug_rotate_degrees']:g} deg, zoom {options['aug_scale']}",
        "  (the paper's GPU configuration: --config training/configs/ddg_sim.yaml)",
    ]
    if options.get("max_volumes"):
        lines.insert(-1, f"  {options['max_volumes']} cases read (what {ARRAY_BYTES / 2**30:g} GB holds at the working "
                     "size; --max-volumes to change)")
    if options.get("max_empty_fraction") is not None:
        lines.insert(-1, f"  slices without a structure at most {options['max_empty_fraction']:.0%} of the training "
                     "items")
    return "\n".join(lines)


def item_shape(options: dict, shapes: Sequence[Sequence[int]]) -> tuple[int, int]:
    """The padded ``(H, W)`` of one training item under ``options`` (a crop, or the largest
    slice at the working resolution, rounded up to 32), as the slice dataset pads it."""
    crop = options.get("crop_size")
    working = working_slice_shape(shapes, options.get("working_size"))
    return tuple(round_up(v, 32) for v in ((crop, crop) if crop else working))


def case_bytes(shapes: Sequence[Sequence[int]], n_channels: int, working_size: int | None) -> float:
    """Mean bytes of one preprocessed case in memory (float32 channels and uint8 labels at
    the working resolution) over ``shapes``."""
    sizes = []
    for shape in shapes:
        h, w = working_shape(shape[-2:], working_scale(shape[-2:], working_size))
        depth = shape[0] if len(shape) == 3 else 1
        sizes.append(depth * h * w * (4 * int(n_channels) + 1))
    return float(np.mean(sizes))


def max_cases_in_memory(shapes: Sequence[Sequence[int]], n_cases: int, n_channels: int,
                        working_size: int | None) -> int | None:
    """How many cases (training and validation together) the recipe reads, ``None`` for all:
    as many as :data:`ARRAY_BYTES` holds, at least 10. Reading takes time too: a set of
    hundreds of large volumes would spend the budget (and the memory) before a step."""
    per_case = case_bytes(shapes, n_channels, working_size)
    cap = max(10, int(ARRAY_BYTES // per_case))
    return cap if n_cases > cap else None


def default_recipe(shapes: Sequence[Sequence[int]], class_names: Sequence[str],
                   channel_names: Sequence[str] = ("image",), max_minutes: float = 20.0,
                   n_cases: int | None = None, *, budget_working_size: bool = True) -> dict:
    """The training options of the default recipe for a data set (see the module docstring).

    Parameters
    ----------
    shapes : sequence of shape tuples
        The image shapes of (some of) the cases on the label grid: ``(H, W)`` for 2D
        images, ``(Z, H, W)`` for volumes.
    class_names, channel_names : sequence of str
        The data set's classes (background included) and image channels.
    max_minutes : float
        The training budget the schedule is sized to.
    n_cases : int, optional
        How many cases the data set has (default: ``len(shapes)``); a set too large for
        :data:`ARRAY_BYTES` gets ``max_volumes``.
    budget_working_size : bool
        Whether a budget of at most :data:`SHORT_BUDGET_MINUTES` takes the coarser
        :data:`SHORT_BUDGET_WORKING_SIZE` (else always :data:`WORKING_SIZE`).

    Returns
    -------
    dict
        :class:`~napari_simseg.core.engine.train_config.TrainConfig` fields (without ``data``
        and ``out``).
    """
    shapes = [tuple(int(v) for v in s) for s in shapes]
    if not shapes:
        raise ValueError("default_recipe needs the shape of at least one case")
    longest = max(max(s[-2:]) for s in shapes)
    working_size = WORKING_SIZE if longest > WORKING_SIZE else None
    h, w = working_slice_shape(shapes, working_size)
    crop = CROP_SIZE if max(h, w) > CROP_SIZE else None
    item = item_shape({"crop_size": crop, "working_size": working_size}, shapes)
    stem_stride = 1 if max(h, w) <= SMALL_SLICE else 2
    # a full-resolution stem makes every encoder stage 4x the pixels
    batch = int(np.clip(round(PIXELS_PER_BATCH / (item[0] * item[1] * (4 if stem_stride == 1 else 1))), 4, 32))
    if budget_working_size and float(max_minutes) <= SHORT_BUDGET_MINUTES and longest > SHORT_BUDGET_WORKING_SIZE:
        # the same items and batch, at coarser pixels: a crop then holds a whole slice (edge-padded)
        working_size = SHORT_BUDGET_WORKING_SIZE
    volumes = any(len(s) == 3 and s[0] > 1 for s in shapes)
    n_cases = len(shapes) if n_cases is None else int(n_cases)
    return {
        "memory": "sim", "depth": 3, "decoder": "convlstm", "simulation": "ddg",
        "encoder": "resnet18", "encoder_depth": 5, "decoder_channels": [128, 64, 32, 16, 16],
        "encoder_stem_stride": stem_stride,
        "click_radius": 2, "max_clicks": 3, "random_rounds": True, "drop_fraction": 0.3,
        "decreasing_probability": False, "auto_fraction": 0.25, "mix_rounds": True,
        "axis": 0, "context_slices": 1 if volumes else 0,
        "working_size": working_size, "crop_size": crop,
        "augment": True, "aug_flips": [] if lateral_classes(class_names) else ["vertical", "horizontal"],
        "aug_rotate_degrees": 10.0, "aug_scale": [0.9, 1.1],
        "epochs": 10, "batch_size": batch, "lr": 1e-3, "lr_schedule": "onecycle", "lr_final_fraction": 0.01,
        "focal_gamma": 0.0, "class_weighting": "uniform", "dice_loss_weight": 1.0,
        "max_minutes": float(max_minutes), "plan_steps": True, "time_schedule": True,
        "val_fraction": 0.2, "val_clicks": 3, "val_batch_size": 32, "val_max_slices": 256,
        "max_volumes": max_cases_in_memory(shapes, n_cases, len(channel_names), working_size),
        "max_empty_fraction": MAX_EMPTY_FRACTION if volumes else None,
    }


def estimate_step_seconds(options: dict, n_classes: int, n_channels: int, item_shape: Sequence[int],
                          repeats: int = 3, device: str = "cpu") -> float:
    """Median seconds of one training step with ``options`` on random data of
    ``item_shape`` (the padded item), DDG rounds included, on this machine.

    Nothing is read or written: a network is built from the options, and a few steps
    of the real training step run on a random batch.
    """
    import torch
    from scipy import ndimage

    from napari_simseg.core.engine.data_generation import StepContext, training_step
    from napari_simseg.core.engine.losses import FocalDiceLoss, FocalLoss, SoftDiceLoss
    from napari_simseg.core.engine.train_config import IGNORE_INDEX, TrainConfig
    from napari_simseg.core.network.devices import autocast_for, cpu_bf16_supported, resolve_device
    from napari_simseg.core.network.model import build_model

    cfg = TrainConfig(data="-", out="-", **{k: v for k, v in options.items() if k not in ("data", "out")})
    cfg.random_rounds, cfg.auto_fraction = False, 0.0  # time the worst case: every round on every item
    dev = resolve_device(device)
    torch.manual_seed(0)
    net = build_model(cfg.model_config(n_classes, n_channels)).to(dev)
    if dev.type == "cpu":  # as the trainer runs it
        net.to(memory_format=torch.channels_last)
    amp = bool(cfg.amp) and (dev.type == "cuda" or (dev.type == "cpu" and cpu_bf16_supported()))
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and dev.type == "cuda")
    loss_fn = FocalLoss(None, gamma=cfg.focal_gamma, ignore_index=IGNORE_INDEX)
    if cfg.dice_loss_weight > 0:
        loss_fn = FocalDiceLoss(loss_fn, SoftDiceLoss(ignore_index=IGNORE_INDEX), cfg.dice_loss_weight)
    rng = np.random.default_rng(0)
    h, w = (int(v) for v in item_shape)
    b = cfg.batch_size
    # a few smooth regions per class, as anatomy has (noise labels would give the virtual
    # user thousands of one-pixel components to click)
    field = ndimage.gaussian_filter(rng.standard_normal((b, h, w)), (0, h / 10, w / 10))
    edges = np.quantile(field, np.linspace(0, 1, n_classes + 1)[1:-1])
    labels = torch.from_numpy(np.digitize(field, edges).astype(np.int64))
    batch = {"image": torch.randn(b, n_channels * (1 + 2 * cfg.context_slices), h, w), "labels": labels,
             "crop": torch.tensor([[0, h, 0, w]] * b)}
    context = StepContext(net, net, cfg, n_classes, dev, lambda: autocast_for(dev, amp), loss_fn, optimizer, scaler)
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        training_step(context, batch, rng)
        if i:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))
