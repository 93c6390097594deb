"""A training run set up: its device and torchrun ranks, folder, data, network and optimiser.

:func:`set_up_run` is the first thing :func:`~napari_simseg.core.jobs.training.train` does:
it removes what killed writes left in the run's folder, reads the split and the training
and validation slices (or takes :class:`TrainingData` given in memory), builds the network
(initialised from a checkpoint with :func:`init_from`), the optimiser, the loss and the
checkpoint header, and checks that a training step fits in memory. The result is one
:class:`TrainingRun`, which the loop and :mod:`.training_records` work with.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from napari_simseg.core.data.datasets import discover_dataset, largest_slice_shape
from napari_simseg.core.data.slices import MultiAxisSlices, SliceDataset, SliceOptions, split_slice_sets
from napari_simseg.core.data.splits import cap_split, load_split, save_split, split_cases
from napari_simseg.core.engine.data_generation import StepContext
from napari_simseg.core.engine.train_config import IGNORE_INDEX, TrainConfig
from napari_simseg.core.io.atomic import process_running, remove_stale_temporaries
from napari_simseg.core.network.checkpoint import (
    FLIP_AXES,
    MAX_SIDE,
    CheckpointMeta,
    remove_killed_tensor_writes,
)
from napari_simseg.core.network.devices import autocast_for, check_memory, cpu_bf16_supported, resolve_device
from napari_simseg.core.network.model import build_model

__all__ = ["Dist", "TrainingData", "TrainingRun", "init_from", "remove_leftovers", "seed_everything", "set_up_run"]


# ---------------------------------------------------------------------- distributed
class Dist:
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


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


# ---------------------------------------------------------------------- the loop
@dataclass
class TrainingRun:
    """What a training run works with, once set up."""

    cfg: TrainConfig
    out: Path
    device: torch.device
    dist: Dist
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

    def step_context(self) -> StepContext:
        """What this run's training steps work with."""
        return StepContext(self.net, self.train_net, self.cfg, self.n_classes, self.device, self.autocast,
                           self.loss_fn, self.optimizer, self.scaler)


@dataclass
class TrainingData:
    """Training and validation slices given to :func:`train` instead of ``cfg.data``
    (e.g. the slices a user labelled in napari, see ``core.session.teaching``)."""

    class_names: list
    channel_names: list
    train: SliceDataset
    val: SliceDataset
    description: str = "data given in memory"


def _setup_device(cfg: TrainConfig):
    device = resolve_device(cfg.device)
    dist = Dist(device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    return device, dist


def _load_data(cfg: TrainConfig, out: Path, dist: Dist):
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
    train_axes = cfg.train_axes or [cfg.axis]
    pad_to = None
    if cfg.pad_to:
        pad_to = tuple(cfg.pad_to)
    elif cfg.working_size is None and cfg.crop_size is None:
        # one size that holds the slices along every training axis, read from the headers
        shapes = [largest_slice_shape(spec, axis=a) for a in train_axes]
        pad_to = (max(h for h, _ in shapes), max(w for _, w in shapes))
    shared = SliceOptions(axis=cfg.axis, n4=cfg.n4, working_size=cfg.working_size, target_shape=pad_to,
                          seed=cfg.seed, pad_mode=cfg.pad_mode, context_slices=cfg.context_slices)
    train_options = replace(shared, augmenter=cfg.augmenter(), crop_size=cfg.crop_size,
                            neighbour_prior=cfg.prior_fraction > 0)
    train_ds, val_ds, split, skipped = split_slice_sets(
        spec, split, on_error=cfg.on_error, split_seed=cfg.split_seed, train_options=train_options,
        val_options=shared, cache_dir=out / "cache")
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


def set_up_run(cfg: TrainConfig, log, data: TrainingData | None = None) -> TrainingRun:
    """Device, data, network, optimiser, loss and checkpoint header of a run."""
    from napari_simseg.core.engine.losses import FocalDiceLoss, FocalLoss, SoftDiceLoss, class_weights_from_counts

    started = time.time()
    cfg.validate()
    device, dist = _setup_device(cfg)
    out = Path(cfg.out)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        removed = remove_leftovers(out, started)
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

    seed_everything(cfg.seed)
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
        init_from(net, cfg.init_from, class_names, cfg.context_slices, transfer=cfg.init_transfer, log=log)
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
    return TrainingRun(cfg, out, device, dist, amp, class_names, train_ds, val_ds, net, train_net, ema, optimizer,
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


def remove_leftovers(out: Path, started: float) -> list:
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


def init_from(net, path, class_names, context_slices: int = 0, transfer: bool = False, log=print) -> None:
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

