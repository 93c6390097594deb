"""A tiny training configuration and its phantom data set, shared by the training tests."""

from contextlib import nullcontext

import torch

from napari_simseg.core.engine.data_generation import StepContext, _simulate_and_forward
from napari_simseg.core.engine.train_config import TrainConfig

TINY = dict(encoder="resnet18", encoder_depth=3, decoder_channels=[16, 8, 8], batch_size=4,
            device="cpu", progress=False, val_clicks=1, val_batch_size=16)


def make_phantom_training_data(root):
    """Five small phantom volumes in the MSD layout under ``root``."""
    from napari_simseg.core.data.phantom import make_phantom_dataset

    make_phantom_dataset(root, n_volumes=5, seed=3, shape=(6, 40, 44))
    return root


def tiny_config(data, out, **kw) -> TrainConfig:
    """A TrainConfig of the tiny network on ``data``, writing to ``out``; ``kw`` overrides."""
    return TrainConfig(data=str(data), out=str(out), **{**TINY, **kw})


def simulate(net, batch, cfg: TrainConfig, n_classes: int, rng):
    """One batch's simulated rounds and training forward, ``net`` running both, on the CPU: (logits,
    targets, pixel weights of the loss or None)."""
    return _simulate_and_forward(StepContext(net, net, cfg, n_classes, torch.device("cpu"), nullcontext), batch, rng)
