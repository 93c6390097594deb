"""``simseg average``: one network whose weights are the mean of several checkpoints'."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from napari_simseg.core.network.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    CheckpointMeta,
    load_tensors,
    read_checkpoint_meta,
    write_tensors,
)

__all__ = ["average_checkpoints"]

# Header fields that must agree for two checkpoints' weights to be averaged: the same
# network reading the same input the same way. The architecture comes last: a different
# memory or context changes its input channels too, and the message should name the cause.
_AVERAGE_MUST_MATCH = ("class_names", "channel_names", "memory", "depth", "click_radius", "normalization",
                       "context_slices", "working_size", "flips", "neighbour_prior", "model")


def average_checkpoints(paths: Sequence, output, weights: Sequence[float] | None = None,
                        half: bool | None = None) -> Path:
    """Average the weights of several checkpoints of one network (a "model soup").

    Fine-tuning runs that start from the same checkpoint stay in one basin of the loss,
    so the average of their weights is a network in its own right, often better than
    each of them, at the cost of one network (Wortsman et al. 2022, "Model soups",
    uniform soup). Every floating-point tensor is the weighted mean of the inputs',
    computed in float32; this includes batch-norm running means and variances, which
    for runs this close is what re-estimating them would give up to noise. Integer
    buffers (batch-norm step counters, unused at inference) take the largest value.

    The result carries no decision offsets: offsets fitted to one network do not
    belong to another, so run ``simseg calibrate`` on the average (on training
    volumes) if the inputs were calibrated. Its ``training`` header records every
    input (path, weight, epoch, score, simulation, training config) under
    ``averaged_from``; ``config`` holds only what all inputs share and what using the
    network needs (the slicing axis). The training and validation volumes are kept
    when all inputs agree on them; otherwise they are left out with a warning, because
    a volume one input validated on may have been trained on by another.

    Parameters
    ----------
    paths : sequence of str or Path
        Two or more distinct checkpoints of the same architecture, classes, memory,
        click encoding, normalisation, context slices and slicing axis.
    output : str or Path
        Where to write the average (``.safetensors``, atomic write; nothing is written
        when the inputs are refused).
    weights : sequence of float, optional
        One positive weight per checkpoint (normalised to sum to 1); default uniform.
    half : bool, optional
        Store float16; default: float16 only if every input is float16.

    Returns
    -------
    Path
        ``output``.

    Raises
    ------
    CheckpointError
        Fewer than two or repeated inputs, bad weights, or inputs that are not the same
        network; the message names the field and the files.
    """
    paths = [Path(p) for p in paths]
    weights = _checked_weights(paths, weights)
    metas = [read_checkpoint_meta(p) for p in paths]
    _check_same_network(paths, metas)
    sums, all_half = _weighted_sums(paths, weights)
    store_half = all_half if half is None else bool(half)
    out_tensors = {}
    for key, value in sums.items():
        if value.is_floating_point():
            value = value.to(torch.float16 if store_half else torch.float32)
        out_tensors[key] = value.contiguous()
    meta = _averaged_meta(paths, weights, metas)
    meta.validate(str(output))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_tensors(output, out_tensors, meta)
    return output


def _checked_weights(paths: list, weights) -> list:
    """The weights normalised to sum 1, after checking the inputs are distinct."""
    if len(paths) < 2:
        raise CheckpointError(f"averaging needs at least 2 checkpoints, got {len(paths)}")
    seen = set()
    for p in paths:
        if p.resolve() in seen:
            raise CheckpointError(
                f"checkpoint {p} is given more than once; give it a larger --weights entry instead"
            )
        seen.add(p.resolve())
    if weights is None:
        weights = [1.0] * len(paths)
    try:
        weights = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise CheckpointError(f"averaging weights must be numbers, got {list(weights)!r}") from None
    if len(weights) != len(paths) or not all(np.isfinite(w) and w > 0 for w in weights):
        raise CheckpointError(
            f"averaging weights must be {len(paths)} positive numbers (one per checkpoint), "
            f"got {weights}"
        )
    total = sum(weights)
    return [w / total for w in weights]


def _check_same_network(paths: list, metas: list) -> None:
    first = metas[0]
    for path, meta in zip(paths[1:], metas[1:]):
        for name in _AVERAGE_MUST_MATCH:
            if getattr(meta, name) != getattr(first, name):
                raise CheckpointError(
                    f"cannot average {paths[0]} and {path}: their {name} fields do not match "
                    f"({getattr(first, name)!r} vs {getattr(meta, name)!r}); only checkpoints "
                    f"of the same network trained for the same input can be averaged"
                )
        if meta.axis != first.axis:
            raise CheckpointError(
                f"cannot average {paths[0]} and {path}: trained on slices along axis "
                f"{first.axis} and {meta.axis}"
            )


def _weighted_sums(paths: list, weights: list):
    """Float tensors' weighted sums in float32 (integers: the maximum); whether all were float16."""
    sums: dict = {}
    all_half = True
    for path, weight in zip(paths, weights):
        tensors = load_tensors(path)
        if sums and set(tensors) != set(sums):
            odd = sorted(set(tensors) ^ set(sums))
            raise CheckpointError(
                f"cannot average {paths[0]} and {path}: different tensors ({odd[:2]})")
        for key, value in tensors.items():
            if key in sums and (tuple(value.shape) != tuple(sums[key].shape)
                                or value.is_floating_point() != sums[key].is_floating_point()):
                raise CheckpointError(
                    f"cannot average {paths[0]} and {path}: tensor {key} is "
                    f"{sums[key].dtype} {tuple(sums[key].shape)} in one and "
                    f"{value.dtype} {tuple(value.shape)} in the other"
                )
            if value.is_floating_point():
                all_half &= value.dtype == torch.float16
                acc = value.to(torch.float32) * weight
                sums[key] = acc if key not in sums else sums[key] + acc
            else:
                sums[key] = value.clone() if key not in sums else torch.maximum(sums[key], value)
    return sums, all_half


def _averaged_meta(paths: list, weights: list, metas: list) -> CheckpointMeta:
    """The average's header: the first input's, no offsets, every input's provenance."""
    first = metas[0]
    meta = CheckpointMeta(**asdict(first))
    meta.decision_offsets = None
    meta.format_version = FORMAT_VERSION
    meta.training = {
        "config": {"axis": first.axis},
        "averaged_from": [
            {"path": str(p), "weight": w, "epoch": m.training.get("epoch"),
             "score": m.training.get("score"), "simulation": m.simulation,
             "data": m.training.get("data"), "config": m.training.get("config", {})}
            for p, w, m in zip(paths, weights, metas)
        ],
    }
    data = [m.training.get("data") for m in metas]
    if all(d == data[0] for d in data):
        meta.training["data"] = data[0]
    simulations = {m.simulation for m in metas}
    if len(simulations) > 1:
        meta.simulation = "+".join(sorted(simulations))
    for key in ("train_volumes", "val_volumes"):
        values = [m.training.get(key) for m in metas]
        if all(v == values[0] for v in values):
            if values[0] is not None:
                meta.training[key] = values[0]
        else:
            warnings.warn(
                f"the inputs list different {key}: the average records none, and a volume "
                f"one input validated on may have been trained on by another",
                UserWarning, stacklevel=3,
            )
    return meta
