"""Dynamic and static data generation: one training batch's simulated rounds and step.

The trainer (:mod:`napari_simseg.core.jobs.training`) calls :func:`training_step` once per
batch; its module docstring gives our reading of the paper's DDG. Here the virtual user
fills each item's interaction memory (DDG: rounds of clicks against the network's own
output with fixed weights; SDG: one round of clicks sampled from the ground truth; auto:
none), and the last round's forward, with grad, is the training forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from napari_simseg.core.engine.rounds import BatchMemory, encode_click_batch
from napari_simseg.core.engine.train_config import IGNORE_INDEX, TrainConfig
from napari_simseg.core.imaging.metrics import clicked_regions
from napari_simseg.core.interaction.clicks import shift_clicks

__all__ = ["StepContext", "training_step"]


@dataclass
class StepContext:
    """What every training step of a run works with.

    Attributes
    ----------
    net : torch.nn.Module
        The network the virtual user's rounds run (fixed weights, eval mode): "the model"
        of the paper's data generation.
    train_net : torch.nn.Module
        The network the step optimises: ``net`` itself, or its distributed wrapper.
    cfg : TrainConfig
    n_classes : int
    device : torch.device
    autocast : callable
        A fresh mixed-precision context per call (``TrainingRun.autocast``).
    loss_fn, optimizer, scaler
        The loss, the optimiser and the gradient scaler of the step (``None`` where only
        the simulated rounds and the forward are run).
    """

    net: torch.nn.Module
    train_net: torch.nn.Module
    cfg: TrainConfig
    n_classes: int
    device: torch.device
    autocast: Callable
    loss_fn: torch.nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    scaler: object = None


def _simulate_and_forward(ctx: StepContext, batch, rng):
    """Fill the memory as the virtual user would, then the training forward.

    Returns the logits of the training forward (with grad), the targets and the pixel
    weights of the loss (:func:`_clicked_region_weights`; None when off).
    """
    from napari_simseg.core.interaction.virtual_user import TrainingVirtualUser, sdg_clicks

    net, train_net, cfg, n_classes, device, autocast = (ctx.net, ctx.train_net, ctx.cfg, ctx.n_classes, ctx.device,
                                                        ctx.autocast)

    images = batch["image"].to(device, non_blocking=True)
    gts = batch["labels"].numpy()
    shape = tuple(images.shape[-2:])
    crops = batch["crop"].tolist() if "crop" in batch else [(0, shape[0], 0, shape[1])] * len(gts)
    # padding is no anatomy: the loss ignores it and the virtual user never clicks there
    targets = batch["labels"].clone()
    for i, (y0, y1, x0, x1) in enumerate(crops):
        pad = torch.ones(shape, dtype=torch.bool)
        pad[y0:y1, x0:x1] = False
        targets[i][pad] = IGNORE_INDEX
    targets = targets.to(device, non_blocking=True)
    memory = BatchMemory(cfg.memory, n_classes, cfg.effective_depth, images,
                         image_channels=images.shape[1] // (1 + 2 * cfg.context_slices))
    state, weights = None, None
    if cfg.simulation == "ddg" and cfg.mix_rounds:
        return _simulate_mixed(ctx, images, gts, targets, crops, rng, batch.get("prior"), batch.get("has_prior"))
    # auto_fraction: some batches get the automatic (0-click) input; drawn only when on,
    # so runs without it keep their random streams
    automatic = cfg.simulation == "auto" or (cfg.auto_fraction > 0 and rng.random() < cfg.auto_fraction)
    if automatic:
        pass  # empty memory: image + zeros
    elif cfg.simulation == "sdg":
        clicks = [shift_clicks(sdg_clicks(gts[i, y0:y1, x0:x1], n_classes, cfg.ddg_config(), rng), y0, x0)
                  for i, (y0, y1, x0, x1) in enumerate(crops)]
        memory.push(encode_click_batch(clicks, n_classes, shape, cfg.click_radius, device))
    else:
        rounds = cfg.ddg_rounds or cfg.max_clicks
        if cfg.random_rounds:
            rounds = int(rng.integers(1, rounds + 1))
        users = [TrainingVirtualUser(n_classes, cfg.ddg_config(), rng) for _ in crops]
        for user, (y0, y1, x0, x1), gt in zip(users, crops, gts):
            user.start(gt[y0:y1, x0:x1])
        previous = None
        for k in range(rounds):
            clicks = [
                shift_clicks(user.next_round(None if previous is None else previous[i, y0:y1, x0:x1]), y0, x0)
                for i, (user, (y0, y1, x0, x1)) in enumerate(zip(users, crops))
            ]
            memory.push(encode_click_batch(clicks, n_classes, shape, cfg.click_radius, device))
            if k == rounds - 1:
                befores = [None] * len(gts) if previous is None else list(previous)
                weights = _clicked_region_weights(cfg, gts, befores, clicks, device)
                break  # the last round's forward is the training step
            net.eval()
            with torch.no_grad(), autocast():
                logits, state = net(memory.network_input(), state)
            probs = torch.softmax(logits.float(), 1)
            memory.set_probabilities(probs)
            previous = probs.argmax(1).cpu().numpy()
        if state is not None:
            state = tuple((h.detach().float(), c.detach().float()) for h, c in state)
    train_net.train()
    with autocast():
        logits, _ = train_net(memory.network_input(), state)
    return logits, targets, weights


def _clicked_region_weights(cfg: TrainConfig, gts: np.ndarray, befores: list, clicks: list, device):
    """The loss's pixel weights with ``clicked_region_weight`` ``w`` on (else None): ``1 + w`` on
    the mislabelled regions the last round's clicks of each item point at (as the evaluation's
    per-round figures define them: the click's class missed there, connected to the click),
    1 elsewhere. Items whose last round corrected nothing shown (``befores[i]`` None: a
    first round on an empty memory, whose clicks mark whole structures) keep 1 everywhere.
    """
    if cfg.clicked_region_weight <= 0:
        return None
    weights = np.ones(gts.shape, np.float32)
    for i, (before, item_clicks) in enumerate(zip(befores, clicks)):
        if before is not None and item_clicks:
            weights[i] += cfg.clicked_region_weight * clicked_regions(before, gts[i], item_clicks)
    return torch.from_numpy(weights).to(device)


def _simulate_mixed(ctx: StepContext, images, gts, targets, crops, rng, prior=None, has_prior=None):
    """DDG with the round count drawn per item (``mix_rounds``): one batch holds automatic
    items and items after 1..t rounds, so batch normalisation sees in training the mixture
    of inputs whose running statistics it uses at test time.

    Each item draws automatic (``auto_fraction``) or its number of rounds ``r`` in
    ``1..t`` (``t`` with ``random_rounds`` off). Round ``k``'s no-grad forward runs only on
    the items that go on to round ``k + 1``; an item's training input is the memory after
    its own last round's clicks, with the LSTM state of the rounds before it (zeros, which
    the cell reads exactly as no state, for one round or none).

    Neighbour priors (``prior_fraction``): that share of the items that have a neighbour
    (``prior``, ``has_prior`` from the dataset) get, before their rounds, one state
    without clicks whose probabilities are a neighbouring slice's labels
    (:func:`~napari_simseg.core.interaction.memory.prior_probabilities`), as a propagated slice's
    memory starts in the session; the other items get an empty state there, which reads
    exactly as no state. An item with a prior has at least one round on top of it (in the
    session the newest state never has probabilities yet).

    Corrective starts (``corrective_start_fraction``): that share of the items with rounds
    and no prior get their first clicks as corrections of their automatic result (a
    no-grad forward on the image alone), as the first round of a user of the session and
    of the evaluation user does; step a)'s one click per component is what the others
    get. The automatic result is not a memory state and leaves no LSTM state, as in the
    session, where the automatic labels are shown but not remembered.
    """
    from napari_simseg.core.interaction.virtual_user import TrainingVirtualUser

    net, train_net, cfg, n_classes, device, autocast = (ctx.net, ctx.train_net, ctx.cfg, ctx.n_classes, ctx.device,
                                                        ctx.autocast)
    b = len(gts)
    t = cfg.ddg_rounds or cfg.max_clicks
    automatic = rng.random(b) < cfg.auto_fraction
    drawn = rng.integers(1, t + 1, size=b) if cfg.random_rounds else np.full(b, t)
    rounds = np.where(automatic, 0, drawn)
    memory = BatchMemory(cfg.memory, n_classes, cfg.effective_depth, images,
                         image_channels=images.shape[1] // (1 + 2 * cfg.context_slices))
    previous = [None] * b
    with_prior = np.zeros(b, bool)
    if cfg.prior_fraction > 0 and prior is not None:
        with_prior = (rng.random(b) < cfg.prior_fraction) & has_prior.numpy().astype(bool)
        # at least one round on top: in the session the newest state never has probabilities yet
        rounds = np.where(with_prior, np.maximum(rounds, 1), rounds)
        if with_prior.any():
            keep = torch.from_numpy(with_prior).to(device)[:, None, None, None]
            maps = prior.to(device, images.dtype) * keep
            memory.push(torch.zeros_like(maps))
            memory.set_probabilities(maps)
            shown = maps.argmax(1).cpu().numpy()
            previous = [shown[i] if with_prior[i] else None for i in range(b)]
    x = memory.network_input()  # the automatic items' input: image (and prior) only
    correct_first = np.zeros(b, bool)
    if cfg.corrective_start_fraction > 0:  # drawn only when on: runs without it keep their random streams
        correct_first = (rng.random(b) < cfg.corrective_start_fraction) & (rounds > 0) & ~with_prior
        _automatic_results(net, x, correct_first, previous, device, autocast)
    users = [None] * b
    for i in np.flatnonzero(rounds):
        y0, y1, x0, x1 = crops[i]
        users[i] = TrainingVirtualUser(n_classes, cfg.ddg_config(), rng)
        users[i].start(gts[i, y0:y1, x0:x1])
    state = None  # (h, c) per decoder stage, whole batch, once a forward has run
    befores, last_clicks = [None] * b, [[] for _ in range(b)]  # each item's last round: what it corrected
    for k in range(int(rounds.max(initial=0))):
        clicks = []
        for i in range(b):
            y0, y1, x0, x1 = crops[i]
            prev = None if previous[i] is None else previous[i][y0:y1, x0:x1]
            clicks.append(shift_clicks(users[i].next_round(prev, bool(correct_first[i])), y0, x0)
                          if rounds[i] > k else [])
            if rounds[i] == k + 1:
                befores[i], last_clicks[i] = previous[i], clicks[i]
        memory.push(encode_click_batch(clicks, n_classes, tuple(images.shape[-2:]), cfg.click_radius, device))
        now = memory.network_input()
        last = torch.from_numpy(rounds == k + 1).to(device)
        x = torch.where(last[:, None, None, None], now, x)
        going_on = np.flatnonzero(rounds > k + 1)
        if not going_on.size:
            break
        rows = torch.from_numpy(going_on).to(device)
        net.eval()
        with torch.no_grad(), autocast():
            sub_state = None if state is None else tuple((h[rows], c[rows]) for h, c in state)
            logits, new_state = net(now[rows], sub_state)
        probs = torch.zeros(b, n_classes, *images.shape[-2:], device=device, dtype=images.dtype)
        probs[rows] = torch.softmax(logits.float(), 1).to(images.dtype)
        memory.set_probabilities(probs)
        if new_state is not None:
            if state is None:
                state = tuple((h.new_zeros(b, *h.shape[1:]).float(), c.new_zeros(b, *c.shape[1:]).float())
                              for h, c in new_state)
            # rows that stop here keep the state of the rounds they had: they read it next
            state = tuple((h.index_copy(0, rows, nh.detach().float()), c.index_copy(0, rows, nc.detach().float()))
                          for (h, c), (nh, nc) in zip(state, new_state))
        labels = probs.argmax(1).cpu().numpy()
        for i in going_on:
            previous[i] = labels[i]
    train_net.train()
    with autocast():
        logits, _ = train_net(x, state)
    return logits, targets, _clicked_region_weights(cfg, gts, befores, last_clicks, device)


def _automatic_results(net, x, rows: np.ndarray, previous: list, device, autocast) -> None:
    """Put the automatic labels of the items ``rows`` (boolean) in ``previous``: what
    their first clicks correct. ``x`` is the automatic input; no memory state is kept."""
    firsts = np.flatnonzero(rows)
    if not firsts.size:
        return
    net.eval()
    with torch.no_grad(), autocast():
        logits, _ = net(x[torch.from_numpy(firsts).to(device)], None)
    shown = logits.argmax(1).cpu().numpy()
    for j, i in enumerate(firsts):
        previous[i] = shown[j]


def training_step(ctx: StepContext, batch, rng: np.random.Generator):
    """One optimisation step: simulated rounds, forward, loss (focal [+ Dice]), (scaled) backward.

    Returns the loss (a tensor).
    """
    logits, targets, weights = _simulate_and_forward(ctx, batch, rng)
    loss = ctx.loss_fn(logits.float(), targets, weights)
    ctx.optimizer.zero_grad(set_to_none=True)
    ctx.scaler.scale(loss).backward()
    ctx.scaler.step(ctx.optimizer)
    ctx.scaler.update()
    return loss
