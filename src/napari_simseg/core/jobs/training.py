"""The headless trainer: DDG / SDG / automatic training of a SimSeg network.

Dynamic Data Generation, as implemented (paper section 4.2, our reading)
------------------------------------------------------------------------
For every batch, and anew every time a sample is seen, the training virtual user
(:class:`~napari_simseg.core.interaction.virtual_user.TrainingVirtualUser`, rules 1-4) runs
``t = max_clicks`` rounds (the paper's "maximum number of training interactions",
equal to the SIM depth ``D = 3`` in its setting; ``ddg_rounds`` overrides it) on the
whole batch at once. In round ``k`` it clicks on the ground truth against
the network's output of round ``k - 1`` (round 1: initial clicks in every component),
the clicks are pushed into the interaction memory, and the network runs with fixed
weights (eval mode, no-grad) to produce round ``k``'s probabilities for the next round.
The forward passes of rounds ``1 .. t-1`` are those no-grad rounds; round ``t``'s
forward is the training step itself, on the memory holding all its states, so the
network is trained on exactly the input it gets in round ``t`` at test time. The
ConvLSTM state flows through the rounds (detached); ``random_rounds`` draws the number
of rounds per batch in ``1..t``. ``auto_fraction`` (default 0, the paper's DDG) trains
that share of batches on the automatic input (empty memory, one forward), for a model
that must also segment with no clicks while ``drop_fraction`` is lowered so that it
sees several clicks per class. ``mix_rounds`` draws both per item instead of per batch:
batch normalisation then normalises every training batch with the statistics of a mix
of automatic, one-round and later-round inputs, the mix its running statistics hold at
test time (per batch, an automatic batch is normalised with its own statistics in
training and with the mix's at test time, and the automatic and first-round results
swing from epoch to epoch). ``corrective_start_fraction`` (with ``mix_rounds``) lets
that share of the items with rounds start with clicks that correct their automatic
result, as a user of the session does, instead of round 1's clicks in every component
(:func:`~napari_simseg.core.engine.data_generation.training_step`). Padded pixels are ignored
by the loss and never clicked (the user sees each slice's real extent only).

Weight averaging: ``ema_decay > 0`` keeps an exponential moving average of the
weights (and of the batch-norm statistics), updated after every optimisation step
(:class:`torch.optim.swa_utils.AveragedModel`). Validation and the saved checkpoints
use the averaged network; the virtual user of DDG keeps running the network being
optimised, whose weights are "the model" of the paper's data generation. 0 (the
default, the paper's recipe) saves the optimised weights themselves.

Multi-planar training: ``train_axes`` (e.g. ``[0, 1, 2]``) trains on the slices of every
training volume along each listed axis (:class:`~napari_simseg.core.data.slices.MultiAxisSlices`),
padded to one shape that holds them all; validation and the checkpoint use ``axis`` only,
so the network is used exactly as one trained on ``axis`` alone. ``None`` (the default)
is ``[axis]``.

Resume: ``train_state.pt`` (float32 weights, optimiser, history) is written after every
epoch, and each epoch's random streams derive from ``(seed, epoch)``, so a run killed at
any point and resumed gives the same weights as one that was never interrupted. A run
stopped by ``max_minutes`` mid-epoch resumes by redoing that epoch from the weights it
stopped with.

SDG: one round of clicks sampled once from the ground truth with no model in the loop.
Auto: no clicks at all (a plain automatic U-Net trained through the same code).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from napari_simseg.core.data.augmentation import Augmenter
from napari_simseg.core.data.datasets import discover_dataset, largest_slice_shape
from napari_simseg.core.data.slices import MultiAxisSlices, SliceDataset, split_slice_sets
from napari_simseg.core.data.splits import cap_split, load_split, save_split, split_cases
from napari_simseg.core.engine.data_generation import training_step
from napari_simseg.core.engine.rounds import RoundSettings, cropped_clicker, run_rounds
from napari_simseg.core.engine.train_config import IGNORE_INDEX, SIMULATIONS, TrainConfig
from napari_simseg.core.imaging.regions import TILE_BATCH_BYTES
from napari_simseg.core.io.atomic import atomic_path, atomic_write_text, process_running, remove_stale_temporaries
from napari_simseg.core.network.checkpoint import (
    FLIP_AXES,
    MAX_SIDE,
    CheckpointMeta,
    remove_killed_tensor_writes,
    save_checkpoint,
)
from napari_simseg.core.network.devices import autocast_for, check_memory, cpu_bf16_supported, resolve_device
from napari_simseg.core.network.model import build_model

__all__ = ["SIMULATIONS", "TrainConfig", "train", "training_step", "validate"]

VAL_SHARE = 0.10  # of a planned run's budget, at most, for its validation passes
VAL_MIN_ITEMS = 16  # slices a planned validation pass keeps at least
VAL_PROBE_ITEMS = 8  # validation slices timed by the plan

# ---------------------------------------------------------------------- distributed
class _Dist:
    """torchrun awareness: rank, world size, and rank-0-only side effects."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        if self.enabled and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend=backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.enabled:
            torch.distributed.barrier()

    def close(self):
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def share(self, values, device) -> list[int]:
        """Rank 0's ``values`` (integers) on every rank; ``values`` unchanged when alone."""
        if not self.enabled:
            return [int(v) for v in values]
        tensor = torch.tensor([int(v) for v in values], dtype=torch.long, device=device)
        torch.distributed.broadcast(tensor, src=0)
        return [int(v) for v in tensor.tolist()]


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


# ---------------------------------------------------------------------- validation
def validate(net, dataset, cfg: TrainConfig, n_classes, device, amp) -> dict:
    """Dice and IoU per class on the validation slices, pooled over all of them,
    at 0 clicks and at ``val_clicks`` evaluation-user clicks per class."""
    from napari_simseg.core.imaging.metrics import confusion_counts, dice_iou_from_confusion
    from napari_simseg.core.interaction.virtual_user import EvaluationUser

    rounds = 0 if cfg.simulation == "auto" else max(0, int(cfg.val_clicks))
    user = EvaluationUser(n_classes)
    conf = {0: np.zeros((n_classes, n_classes), np.int64), rounds: np.zeros((n_classes, n_classes), np.int64)}
    loader = torch.utils.data.DataLoader(dataset, batch_size=_val_batch(net, dataset, cfg, n_classes), shuffle=False)
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


def _val_batch(net, dataset, cfg: TrainConfig, n_classes: int) -> int:
    """``val_batch_size``, or fewer slices where a call on that many would take more than
    the automatic mode's memory budget (large multi-channel slices)."""
    module = getattr(net, "module", net)  # an averaged (EMA) or distributed wrapper: its network
    estimate = getattr(module, "activation_floats_per_pixel", None)
    if estimate is None or not len(dataset):
        return int(cfg.val_batch_size)
    h, w = dataset[0]["image"].shape[-2:]
    per_slice = 4 * (0.5 * estimate() + module.config.in_channels + 2 * n_classes) * h * w
    return max(1, min(int(cfg.val_batch_size), int(TILE_BATCH_BYTES // per_slice)))


def _score(val: dict, rounds: int) -> float:
    dice = np.asarray(val[rounds]["dice"][1:], float)
    return float(np.nanmean(dice)) if np.isfinite(dice).any() else 0.0


# ---------------------------------------------------------------------- the loop
@dataclass
class _Run:
    """What a training run works with, once set up."""

    cfg: TrainConfig
    out: Path
    device: torch.device
    dist: _Dist
    amp: bool
    class_names: list
    train_ds: object
    val_ds: SliceDataset
    net: torch.nn.Module
    train_net: torch.nn.Module
    ema: object
    optimizer: torch.optim.Optimizer
    scaler: object
    loss_fn: torch.nn.Module
    meta: CheckpointMeta
    log: object
    start_epoch: int = 0

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def autocast(self):
        return autocast_for(self.device, self.amp)


def _setup_device(cfg: TrainConfig):
    device = resolve_device(cfg.device)
    dist = _Dist(device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    return device, dist


def _load_data(cfg: TrainConfig, out: Path, dist: _Dist):
    """The split (written to ``out/split.json``) and the training and validation slices.

    Returns
    -------
    class_names, channel_names, train_ds, val_ds, summary
        ``summary`` is the first half of the run's "data:" line.
    """
    spec = discover_dataset(cfg.data)
    class_names = list(spec.class_names)
    ids = [c.case_id for c in spec.cases]
    split_path = out / "split.json"
    if cfg.resume and split_path.is_file():
        split = load_split(split_path)
    else:
        split = split_cases(ids, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
        if cfg.max_volumes:
            split = cap_split(split, cfg.max_volumes, cfg.split_seed)
    augmenter = None
    if cfg.augment:
        augmenter = Augmenter(rotate_degrees=cfg.aug_rotate_degrees,
                              scale=None if cfg.aug_scale is None else tuple(cfg.aug_scale),
                              flip_vertical="vertical" in cfg.aug_flips,
                              flip_horizontal="horizontal" in cfg.aug_flips)
    common = dict(n4=cfg.n4, cache_dir=out / "cache",
                  context_slices=cfg.context_slices, working_size=cfg.working_size)
    train_axes = cfg.train_axes or [cfg.axis]
    pad_to = None
    if cfg.pad_to:
        pad_to = tuple(cfg.pad_to)
    elif cfg.working_size is None and cfg.crop_size is None:
        # one size that holds the slices along every training axis, read from the headers
        shapes = [largest_slice_shape(spec, axis=a) for a in train_axes]
        pad_to = (max(h for h, _ in shapes), max(w for _, w in shapes))
    shared = dict(axis=cfg.axis, target_shape=pad_to, seed=cfg.seed, pad_mode=cfg.pad_mode, **common)
    train_ds, val_ds, split, skipped = split_slice_sets(
        spec, split, on_error=cfg.on_error, split_seed=cfg.split_seed,
        train_options=dict(shared, augmenter=augmenter, crop_size=cfg.crop_size,
                           neighbour_prior=cfg.prior_fraction > 0),
        val_options=shared)
    if dist.main and not (cfg.resume and split_path.is_file()):
        save_split(split_path, split)
    if pad_to is None:  # slices at the working size: the sets' own largest, train and val alike
        if cfg.crop_size is None:
            both = [train_ds.largest_item_shape(), val_ds.largest_item_shape()]
            train_ds.pad_to((max(h for h, _ in both), max(w for _, w in both)))
            val_ds.pad_to(train_ds.target_shape)
        pad_to = train_ds.target_shape
    if cfg.val_max_slices:
        val_ds.subsample(cfg.val_max_slices)
    empty_note = ""
    if cfg.max_empty_fraction is not None:
        dropped = train_ds.limit_empty_slices(cfg.max_empty_fraction)
        empty_note = f" ({dropped} training slices without a structure left out)" if dropped else ""
    channel_names = list(getattr(spec, "channel_names", None) or ["image"])
    if train_ds.n_channels != len(channel_names):
        raise ValueError(f"the data set names {len(channel_names)} channel(s) {channel_names} but its images "
                         f"have {train_ds.n_channels}")
    if len(train_axes) > 1:  # the volumes read once, viewed along every axis
        train_ds = MultiAxisSlices([train_ds if a == cfg.axis else train_ds.along(a) for a in train_axes])
    # the volumes actually used: with on_error="skip", the split's minus the unusable ones
    summary = (f"data: {len(train_ds.case_ids)} train / {len(val_ds.case_ids)} val volumes"
               + (f" ({len(skipped)} skipped: {', '.join(skipped[:5])}{' ...' * (len(skipped) > 5)})"
                  if skipped else "")
               + f", {len(train_ds)} / {len(val_ds)} slices{empty_note}, padded to {pad_to[0]}x{pad_to[1]}, "
               f"classes {class_names}")
    return class_names, channel_names, train_ds, val_ds, summary


@dataclass
class TrainingData:
    """Training and validation slices given to :func:`train` instead of ``cfg.data``
    (e.g. the slices a user labelled in napari, see ``core.session.teaching``)."""

    class_names: list
    channel_names: list
    train: SliceDataset
    val: SliceDataset
    description: str = "data given in memory"


def _setup(cfg: TrainConfig, log, data: TrainingData | None = None) -> _Run:
    """Device, data, network, optimiser, loss and checkpoint header of a run."""
    from napari_simseg.core.engine.losses import FocalDiceLoss, FocalLoss, SoftDiceLoss, class_weights_from_counts

    started = time.time()
    cfg.validate()
    device, dist = _setup_device(cfg)
    out = Path(cfg.out)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        removed = _remove_leftovers(out, started)
        if removed:
            log(f"removed {len(removed)} temporary file(s) a killed run left in {out}")
    dist.barrier()
    # mixed precision: float16 with a gradient scaler on CUDA, bfloat16 on a CPU that has it
    amp = bool(cfg.amp) and (device.type == "cuda" or (device.type == "cpu" and cpu_bf16_supported()))
    if data is None:
        class_names, channel_names, train_ds, val_ds, summary = _load_data(cfg, out, dist)
    else:
        class_names, channel_names, train_ds, val_ds = data.class_names, data.channel_names, data.train, data.val
        summary = (f"data: {data.description}, {len(train_ds)} / {len(val_ds)} slices, padded to "
                   f"{train_ds.target_shape[0]}x{train_ds.target_shape[1]}, classes {class_names}")
        if cfg.prior_fraction > 0 and not getattr(train_ds, "neighbour_prior", False):
            # the checkpoint would say neighbour_prior while the network never saw one
            raise ValueError("prior_fraction needs training slices with their neighbours' labels; "
                             "these slices have none (use prior_fraction 0)")
    n_classes = len(class_names)
    if cfg.class_weighting == "uniform":
        weights = torch.ones(n_classes)
    else:
        weights = class_weights_from_counts(train_ds.class_pixel_counts(), method=cfg.class_weighting)
    if dist.main:
        log(f"{summary}, weights {np.round(weights.numpy(), 3).tolist()}")

    _seed_everything(cfg.seed)
    model_config = cfg.model_config(n_classes, len(channel_names))
    canvas = getattr(train_ds, "target_shape", None) or train_ds.parts[0].target_shape  # MultiAxisSlices: its parts'
    model_config.canvas = tuple(int(v) for v in canvas)  # smaller inputs are padded to it
    if max(model_config.canvas) > MAX_SIDE:  # refused now, not by the first checkpoint's save
        raise ValueError(f"training items of {canvas[0]}x{canvas[1]} pixels exceed the largest canvas a checkpoint "
                         f"holds ({MAX_SIDE} a side); train at a working size (--working-size) or on crops "
                         f"(--crop-size)")
    if cfg.resume:
        model_config.encoder_weights = None  # the training state holds every weight
    net = build_model(model_config).to(device)
    if device.type == "cpu":
        net.to(memory_format=torch.channels_last)  # about 1.8x faster CPU steps (the ConvLSTM's concatenations)
    _check_training_memory(net, cfg, device, train_ds)
    if cfg.init_from and not cfg.resume:
        _init_from(net, cfg.init_from, class_names, cfg.context_slices, transfer=cfg.init_transfer, log=log)
        if dist.main:
            log(f"initialised from {cfg.init_from}")
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")
    loss_fn = FocalLoss(weights.to(device), gamma=cfg.focal_gamma, ignore_index=IGNORE_INDEX)
    if cfg.dice_loss_weight > 0:
        loss_fn = FocalDiceLoss(loss_fn, SoftDiceLoss(ignore_index=IGNORE_INDEX), cfg.dice_loss_weight)
    # AveragedModel copies the weights on its first update: the average starts after step 1
    ema = None
    if cfg.ema_decay > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    train_net = net
    if dist.enabled:
        train_net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    meta = CheckpointMeta(
        class_names=class_names,
        memory=cfg.memory,
        depth=cfg.effective_depth,
        click_radius=cfg.click_radius,
        model=net.config.to_dict(),
        simulation=cfg.simulation,
        context_slices=cfg.context_slices,
        channel_names=channel_names,
        working_size=cfg.working_size,
        flips=_trained_flips(cfg),
        neighbour_prior=cfg.prior_fraction > 0,
    )
    meta.normalization = {**meta.normalization, "n4": bool(cfg.n4)}
    return _Run(cfg, out, device, dist, amp, class_names, train_ds, val_ds, net, train_net, ema, optimizer,
                scaler, loss_fn, meta, log)


def _check_training_memory(net, cfg: TrainConfig, device, train_ds) -> None:
    """Refuse a run whose training step would not fit in memory, before the first step.

    A step keeps every layer's output for the backward pass and as much again for the
    gradients: about twice the sum of the layers' outputs, per item.
    """
    parts = getattr(train_ds, "parts", [train_ds])
    h, w = parts[0].target_shape
    need = int(2 * 4 * net.activation_floats_per_pixel() * cfg.batch_size * h * w)
    check_memory(device, need, f"a training step of {cfg.batch_size} x {h}x{w} pixels",
                 "lower --batch-size, or train on crops (--crop-size) or at a working size (--working-size)")


#: Options a resumed run must share with the run it continues: they change the network or the data.
RESUME_FIXED = ("data", "memory", "depth", "decoder", "encoder", "encoder_depth", "decoder_channels",
                "lstm_kernel_size", "lstm_separable", "encoder_stem_stride", "context_slices", "axis",
                "train_axes", "pad_to", "n4", "on_error", "val_fraction", "test_fraction", "split_seed",
                "max_volumes", "working_size", "crop_size")


def _check_resume_options(cfg: TrainConfig) -> None:
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


def _remove_leftovers(out: Path, started: float) -> list:
    """The temporary files of killed writes in a run's folder (and its cache), removed.

    Besides :func:`~napari_simseg.core.io.atomic.remove_stale_temporaries`' own files:
    names older versions used (``train_state.pt.tmp``, ``.tmp-*.safetensors``, and
    safetensors' ``.tmpXXXXXX`` from before ``started``) and the cache's
    ``<name>.<pid>.tmp.np[yz]`` of a process that is gone.
    """
    removed = remove_stale_temporaries(out) + remove_stale_temporaries(out / "cache")
    removed += remove_killed_tensor_writes(out, older_than=started)
    legacy = [*out.glob("train_state.pt.tmp"), *out.glob(".tmp-*.safetensors")]
    for path in (out / "cache").glob("*.tmp.np[yz]"):
        pid = path.name.rsplit(".", 3)[-3]
        if pid.isdigit() and not process_running(int(pid)):
            legacy.append(path)
    for path in legacy:
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def _trained_flips(cfg: TrainConfig):
    """The flips recorded in the checkpoint (None: both, the paper's augmentation)."""
    flips = list(cfg.aug_flips) if cfg.augment else []
    return None if sorted(flips) == sorted(FLIP_AXES) else flips


def _resume(run: _Run):
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


def _train_epoch(run: _Run, epoch: int, sampler, t_start: float):
    """One epoch of optimisation steps; returns ``(losses, lr, stopped by max_minutes)``."""
    cfg, dist = run.cfg, run.dist
    # per-epoch seeds: a resumed run repeats exactly what the uninterrupted one does
    epoch_seed = cfg.seed * 100003 + epoch * 7919 + dist.rank
    _seed_everything(epoch_seed)
    rng = np.random.default_rng(epoch_seed)
    run.train_ds.set_epoch(epoch)
    lr = cfg.learning_rate(epoch)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    generator = torch.Generator().manual_seed(epoch_seed)
    if sampler is not None:
        sampler.set_epoch(epoch)
    elif cfg.steps_per_epoch is not None and cfg.steps_per_epoch * cfg.batch_size > len(run.train_ds):
        # an "epoch" of more items than the set: whole shuffled passes, one after the other
        sampler = torch.utils.data.RandomSampler(run.train_ds, num_samples=cfg.steps_per_epoch * cfg.batch_size,
                                                 generator=generator)
    loader = torch.utils.data.DataLoader(
        run.train_ds,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=generator,
        num_workers=cfg.num_workers,
        drop_last=len(run.train_ds) >= cfg.batch_size * max(1, dist.world),
    )
    steps = len(loader) if cfg.steps_per_epoch is None else min(len(loader), cfg.steps_per_epoch)
    bar = None
    if dist.main and cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True)
    losses, stopped = [], False
    # time_schedule: the run follows the clock when it is slower than planned (a busy
    # machine): epoch k ends by k / epochs of the budget and the schedule keeps pace
    clock = cfg.max_minutes * 60 * 0.92 / cfg.epochs if cfg.time_schedule and cfg.max_minutes else None
    for step, batch in enumerate(loader):
        if step >= steps:
            break
        if cfg.lr_schedule == "onecycle":
            progress = step / steps
            if clock is not None:
                progress = max(progress, (time.monotonic() - t_start) / clock + run.start_epoch - epoch)
            lr = cfg.learning_rate(epoch, min(progress, 1.0))
            for group in run.optimizer.param_groups:
                group["lr"] = lr
        loss = training_step(run.net, run.train_net, batch, cfg, run.n_classes, rng, run.device, run.autocast,
                             run.loss_fn, run.optimizer, run.scaler)
        if run.ema is not None:
            run.ema.update_parameters(run.net)
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        if cfg.max_minutes is not None and _over_time(run, t_start, cfg.max_minutes * 60):
            stopped = True
            break
        if clock is not None and _over_time(run, t_start, (epoch + 1 - run.start_epoch) * clock):
            break  # this epoch's share of the clock is used up
    if bar is not None:
        bar.close()
    return losses, lr, stopped


def _over_time(run: _Run, t_start: float, seconds: float) -> bool:
    """Whether ``seconds`` have passed since ``t_start`` (on every rank at once)."""
    over = torch.tensor(float(time.monotonic() - t_start > seconds))
    if run.dist.enabled:  # every rank must stop at the same step, or DDP deadlocks
        over = over.to(run.device)
        torch.distributed.all_reduce(over, op=torch.distributed.ReduceOp.MAX)
    return bool(over.item())


def _end_epoch(run: _Run, epoch: int, row: dict, history: list, best: float, stopped: bool, t_start: float):
    """Validate, save ``last``/``best``/``train_state.pt`` and the logs; returns the best score."""
    cfg, class_names = run.cfg, run.class_names
    val_rounds = 0 if cfg.simulation == "auto" else max(0, int(cfg.val_clicks))
    best_path = run.out / "best.safetensors"
    # the network that is validated and saved: the averaged one when averaging
    saved_net = run.net if run.ema is None else run.ema.module
    val = validate(saved_net, run.val_ds, cfg, run.n_classes, run.device, run.amp)
    score = _score(val, val_rounds)
    for k, v in val.items():
        for metric in ("dice", "iou"):
            for name, value in zip(class_names, v[metric]):
                row[f"val_{metric}_{k}clicks_{name}"] = round(float(value), 5)
    row["score"] = round(score, 5)
    row["minutes"] = round((time.monotonic() - t_start) / 60, 2)
    history.append(row)
    run.meta.training = {
        "epoch": epoch + 1, "score": score, "val": val, "data": str(cfg.data),
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
    _write_logs(run.out, history)
    dice_txt = ", ".join(f"{n}={d:.3f}" for n, d in zip(class_names, val[val_rounds]["dice"]))
    run.log(f"epoch {epoch + 1}: loss {row['train_loss']:.4f}, val Dice (pooled) @{val_rounds} clicks: {dice_txt} "
            f"({row['train_seconds']:.0f}s train)")
    return best


def train(cfg: TrainConfig, log=print, data: TrainingData | None = None, on_epoch=None) -> Path:
    """Train a network; returns the path of the best checkpoint.

    Writes into ``cfg.out``: ``config.yaml``, ``split.json``, ``best.safetensors``,
    ``last.safetensors``, ``train_state.pt`` (for ``resume``), ``log.csv`` and
    ``log.json``.

    Parameters
    ----------
    data : TrainingData, optional
        Slices to train on instead of reading ``cfg.data``.
    on_epoch : callable, optional
        ``on_epoch(row)`` after each epoch's validation, with that epoch's ``log.json`` row;
        returning True ends the run there (e.g. once a benchmark has what it measures).
    """
    import yaml

    if cfg.resume:
        _check_resume_options(cfg)
    run = _setup(cfg, log, data)
    start_epoch, best, history = _resume(run)
    run.start_epoch = start_epoch
    dist = run.dist
    if cfg.plan_steps:
        _plan_steps(run)
    if dist.main:
        cfg_doc = {k: v for k, v in asdict(cfg).items()}
        atomic_write_text(run.out / "config.yaml", yaml.safe_dump(cfg_doc, sort_keys=False))
    sampler = None
    if dist.enabled:
        sampler = torch.utils.data.distributed.DistributedSampler(run.train_ds, shuffle=True, seed=cfg.seed)
    t_start = time.monotonic()
    # stop_after_epoch ends the run early while the lr schedule still spans ``epochs``
    last_epoch = cfg.epochs if cfg.stop_after_epoch is None else min(cfg.epochs, cfg.stop_after_epoch)
    for epoch in range(start_epoch, last_epoch):
        t_epoch = time.monotonic()
        losses, lr, stopped = _train_epoch(run, epoch, sampler, t_start)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": float(np.mean(losses)) if losses else float("nan"),
               "steps": len(losses), "train_seconds": round(time.monotonic() - t_epoch, 2)}
        if dist.main:
            best = _end_epoch(run, epoch, row, history, best, stopped, t_start)
            if on_epoch is not None and on_epoch(dict(row)):
                stopped = True
        dist.barrier()
        if stopped:
            if dist.main:
                log(f"stopping: --max-minutes {cfg.max_minutes} reached")
            break
    dist.close()
    return run.out / "best.safetensors"


def _plan_steps(run: _Run) -> None:
    """Size ``steps_per_epoch`` so that ``epochs`` epochs, validation included, fill
    ``max_minutes`` on this machine (timed on a throw-away copy of the network).

    The result replaces ``plan_steps`` in the config (and so in ``config.yaml``): a
    resumed run follows the same plan.
    """
    import copy

    cfg = run.cfg
    net = copy.deepcopy(run.net)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    loader = torch.utils.data.DataLoader(run.train_ds, batch_size=cfg.batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(cfg.seed))
    rng = np.random.default_rng(cfg.seed + 1)
    times = []
    for i, batch in enumerate(loader):
        t0 = time.perf_counter()
        training_step(net, net, batch, cfg, run.n_classes, rng, run.device, run.autocast, run.loss_fn,
                      optimizer, run.scaler)
        times.append(time.perf_counter() - t0)
        if i >= 3:
            break
    step_s = float(np.median(times[1:] if len(times) > 1 else times))
    # a validation item timed as validation runs it (rounds and virtual user), after a warm-up
    probe = torch.utils.data.Subset(run.val_ds, range(min(len(run.val_ds), VAL_PROBE_ITEMS)))
    item_s = 0.0
    if len(probe):
        validate(net, probe, cfg, run.n_classes, run.device, run.amp)
        t0 = time.perf_counter()
        validate(net, probe, cfg, run.n_classes, run.device, run.amp)
        item_s = (time.perf_counter() - t0) / len(probe)
    budget = cfg.max_minutes * 60 * 0.92  # a margin for the last checkpoint and the clock's noise
    # validation takes at most VAL_SHARE of the budget: fewer slices when it would take more
    max_items = max(VAL_MIN_ITEMS, int(VAL_SHARE * budget / cfg.epochs / max(item_s, 1e-6)))
    if len(run.val_ds) > max_items:
        run.val_ds.subsample(max_items)
    val_s = item_s * len(run.val_ds)
    total = max(cfg.epochs, int((budget - cfg.epochs * val_s) / step_s))
    planned = max(1, total // cfg.epochs)
    # every rank follows rank 0's plan: ranks that timed differently would step (and
    # schedule the learning rate) differently, and DDP would wait forever on the one
    # whose epoch ended first
    planned, val_slices = run.dist.share([planned, min(len(run.val_ds), cfg.val_max_slices or len(run.val_ds))],
                                         run.device)
    cfg.steps_per_epoch = planned
    if cfg.time_schedule:
        # the clock ends the epochs (the timing above may be off on a busy machine): the
        # step count is only a bound for a machine much faster than measured
        cfg.steps_per_epoch *= 10
    cfg.val_max_slices = val_slices
    cfg.plan_steps = False
    if run.dist.main:
        ended = " (the clock ends each epoch)" if cfg.time_schedule else ""
        run.log(f"plan: {step_s:.2f} s per step, ~{val_s:.0f} s per validation on {len(run.val_ds)} slices: "
                f"{cfg.epochs} epochs of ~{planned} steps{ended} fill --max-minutes {cfg.max_minutes}")


def _init_from(net, path, class_names, context_slices: int = 0, transfer: bool = False, log=print) -> None:
    """Start from a checkpoint's weights (fine-tuning); it must have this architecture
    up to options that change no parameter (``encoder_stem_stride``).

    A checkpoint with fewer neighbouring slices (``context_slices``) than this run is
    accepted too: the first convolution gets zero weights for the extra input channels,
    which the memory layout appends last, so the new network starts out computing
    exactly what the old one did.

    ``transfer``: a checkpoint of other classes or channels (a model of another task):
    every tensor of the same name and shape is copied (the encoder and decoder), the
    rest keeps its fresh initialisation (the class head, and the first convolution
    whose input channels differ).
    """
    from napari_simseg.core.io.resources import resolve_checkpoint
    from napari_simseg.core.network.checkpoint import CheckpointError, load_checkpoint

    if transfer:
        ck = load_checkpoint(resolve_checkpoint(path))
        own, theirs = net.state_dict(), ck.model.state_dict()
        kept = {k: v for k, v in theirs.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
        if not kept:
            raise CheckpointError(f"--init-from {path}: no tensor fits this network; use the same encoder")
        net.load_state_dict({**own, **kept})
        log(f"transferred {len(kept)} of {len(own)} tensors from {path} (the rest starts fresh)")
        return
    try:
        ck = load_checkpoint(resolve_checkpoint(path), expected_classes=class_names)
    except CheckpointError as exc:
        if "trained for classes" not in str(exc):
            raise
        raise CheckpointError(f"--init-from {exc}; or start from its encoder and decoder with --init-transfer "
                              f"(the class-dependent layers start fresh)") from None
    old_ctx = int(ck.meta.context_slices)
    extra = 2 * (int(context_slices) - old_ctx) * ck.meta.n_channels
    # options that change no parameter shape may differ between the two networks
    same_weights = {"encoder_weights": ck.model.config.encoder_weights,
                    "encoder_stem_stride": ck.model.config.encoder_stem_stride}
    if extra >= 0:
        same_weights["in_channels"] = net.config.in_channels - extra
    def weights_layout(config) -> dict:  # how inputs are padded changes no parameter
        return {k: v for k, v in config.to_dict().items() if k not in ("edge_padded_channels", "canvas")}

    if extra < 0 or weights_layout(ck.model.config) != {**weights_layout(net.config), **same_weights}:
        raise CheckpointError(
            f"--init-from {path}: its architecture {ck.model.config.to_dict()} (context_slices "
            f"{old_ctx}) differs from this run's {net.config.to_dict()} (context_slices "
            f"{context_slices}); use the same memory, depth, encoder and decoder options "
            f"(or --init-transfer for a model of another task)"
        )
    state = ck.model.state_dict()
    if extra:
        own = net.state_dict()
        widened = [k for k, v in state.items() if v.ndim == 4 and own[k].shape[1] == v.shape[1] + extra]
        if len(widened) != 1:
            raise CheckpointError(f"--init-from {path}: cannot find the first convolution to widen ({widened})")
        w = state[widened[0]]
        state[widened[0]] = torch.cat([w, w.new_zeros(w.shape[0], extra, *w.shape[2:])], dim=1)
    net.load_state_dict(state)


def _write_logs(out: Path, history: list) -> None:
    atomic_write_text(out / "log.json", json.dumps(history, indent=1))
    keys = []
    for row in history:
        keys += [k for k in row if k not in keys]
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    with atomic_path(out / "log.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        f.write(text.getvalue())
