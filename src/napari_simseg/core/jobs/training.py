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

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from napari_simseg.core.engine.data_generation import StepContext, training_step
from napari_simseg.core.engine.train_config import IGNORE_INDEX, SIMULATIONS, TrainConfig
from napari_simseg.core.io.atomic import atomic_write_text
from napari_simseg.core.jobs.training_records import (
    check_resume_options,
    end_epoch,
    report_run,
    resume_state,
    validate,
)
from napari_simseg.core.jobs.training_setup import TrainingData, TrainingRun, seed_everything, set_up_run

__all__ = ["IGNORE_INDEX", "SIMULATIONS", "TrainConfig", "TrainingData", "train", "training_step", "validate"]

VAL_SHARE = 0.10  # of a planned run's budget, at most, for its validation passes
VAL_MIN_ITEMS = 16  # slices a planned validation pass keeps at least
VAL_PROBE_ITEMS = 8  # validation slices timed by the plan
#: With ``time_schedule`` the clock ends each epoch; the planned steps per epoch times this
#: are only a bound, for a machine much faster than when it was timed.
TIME_SCHEDULE_HEADROOM = 10


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
        check_resume_options(cfg)
    run = set_up_run(cfg, log, data)
    start_epoch, best, history = resume_state(run)
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
    out_of_time = False
    for epoch in range(start_epoch, last_epoch):
        t_epoch = time.monotonic()
        losses, lr, out_of_time = _train_epoch(run, epoch, sampler, t_start)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": float(np.mean(losses)) if losses else float("nan"),
               "steps": len(losses), "train_seconds": round(time.monotonic() - t_epoch, 2)}
        asked_to_stop = False
        if dist.main:
            best = end_epoch(run, epoch, row, history, best, out_of_time, t_start)
            asked_to_stop = on_epoch is not None and bool(on_epoch(dict(row)))
        dist.barrier()
        if out_of_time or asked_to_stop:
            if dist.main and out_of_time:
                log(f"stopping: --max-minutes {cfg.max_minutes} reached")
            break
    if dist.main and history:
        for line in report_run(run, history, planned_steps=_planned_steps(cfg), out_of_time=out_of_time):
            log(line)  # the run's verdict, last before the checkpoint's path (also in log.json)
    dist.close()
    return run.out / "best.safetensors"


def _planned_steps(cfg: TrainConfig) -> int | None:
    """The optimisation steps the run planned in all (``None`` when an epoch is the whole set)."""
    if cfg.steps_per_epoch is None:
        return None
    per_epoch = cfg.steps_per_epoch // (TIME_SCHEDULE_HEADROOM if cfg.time_schedule else 1)
    return max(1, per_epoch) * cfg.epochs


def _train_epoch(run: TrainingRun, epoch: int, sampler, t_start: float):
    """One epoch of optimisation steps; returns ``(losses, lr, stopped by max_minutes)``."""
    cfg, dist = run.cfg, run.dist
    # per-epoch seeds: a resumed run repeats exactly what the uninterrupted one does
    epoch_seed = cfg.seed * 100003 + epoch * 7919 + dist.rank
    seed_everything(epoch_seed)
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
    # time_schedule: the run follows the clock when it is slower than planned (a busy
    # machine): epoch k ends by k / epochs of the budget and the schedule keeps pace
    clock = cfg.max_minutes * 60 * 0.92 / cfg.epochs if cfg.time_schedule and cfg.max_minutes else None
    bar = None
    if dist.main and cfg.progress:
        from tqdm.auto import tqdm

        # the steps the epoch will run: the plan's (not the bound a time schedule gives a fast machine)
        expected = steps if clock is None else max(1, min(steps, steps // TIME_SCHEDULE_HEADROOM))
        bar = tqdm(total=expected, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True)
    losses, stopped = [], False
    context = run.step_context()
    t_epoch = time.monotonic()
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
        loss = training_step(context, batch, rng)
        if run.ema is not None:
            run.ema.update_parameters(run.net)
        losses.append(float(loss.detach()))
        if bar is not None:
            if clock is not None:  # the clock ends the epoch: the steps its time left holds at this pace
                _follow_the_clock(bar, step + 1, steps, t_epoch, t_start + (epoch + 1 - run.start_epoch) * clock)
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        if cfg.max_minutes is not None and _over_time(run, t_start, cfg.max_minutes * 60):
            stopped = True
            break
        if clock is not None and _over_time(run, t_start, (epoch + 1 - run.start_epoch) * clock):
            break  # this epoch's share of the clock is used up
    if bar is not None:
        if clock is not None:  # the clock ended the epoch: what it ran is the whole of it
            bar.total = bar.n
            bar.refresh()
        bar.close()
    return losses, lr, stopped


def _follow_the_clock(bar, done: int, bound: int, t_epoch: float, epoch_end: float) -> None:
    """Set the bar's total to the steps the epoch will have run when its clock ends:
    ``done`` plus the steps the time left holds at the pace so far (at most ``bound``)."""
    now = time.monotonic()
    per_step = (now - t_epoch) / done
    total = done + max(0, round((epoch_end - now) / max(per_step, 1e-6)))
    total = int(min(bound, max(done, total)))
    if total != bar.total:
        bar.total = total
        bar.refresh()


def _over_time(run: TrainingRun, t_start: float, seconds: float) -> bool:
    """Whether ``seconds`` have passed since ``t_start`` (on every rank at once)."""
    over = torch.tensor(float(time.monotonic() - t_start > seconds))
    if run.dist.enabled:  # every rank must stop at the same step, or DDP deadlocks
        over = over.to(run.device)
        torch.distributed.all_reduce(over, op=torch.distributed.ReduceOp.MAX)
    return bool(over.item())


def _plan_steps(run: TrainingRun) -> None:
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
    context = StepContext(net, net, cfg, run.n_classes, run.device, run.autocast, run.loss_fn, optimizer, run.scaler)
    times = []
    for i, batch in enumerate(loader):
        t0 = time.perf_counter()
        training_step(context, batch, rng)
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
        cfg.steps_per_epoch *= TIME_SCHEDULE_HEADROOM
    cfg.val_max_slices = val_slices
    cfg.plan_steps = False
    if run.dist.main:
        ended = " (the clock ends each epoch)" if cfg.time_schedule else ""
        run.log(f"plan: {step_s:.2f} s per step, ~{val_s:.0f} s per validation on {len(run.val_ds)} slices: "
                f"{cfg.epochs} epochs of ~{planned} steps{ended} fill --max-minutes {cfg.max_minutes}")

