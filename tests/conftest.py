"""Shared fixtures: tiny random-initialised models and checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# Load torch (and smp) before any napari canvas exists: with Mesa's LLVM-based OpenGL
# already in the process, torch's optional triton import can crash it (see
# napari_simseg/_llvm_guard.py). Tests that build models after a viewer are then safe.
import segmentation_models_pytorch  # noqa: F401,E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HIPPOCAMPUS = SHARED_DATA / "Task04_Hippocampus"
NO_SHARED_DATA = (
    "../shared/data is not present: it exists only on the project's development and CI "
    "machines (a user's clone has no ../shared)"
)

TINY_MODEL = dict(encoder="resnet18", encoder_depth=3, decoder_channels=(32, 16, 8))


def tiny_meta_and_model(memory="sim", depth=3, class_names=("background", "a", "b"), decoder="convlstm", radius=2,
                        seed=0, context_slices=0, neighbour_prior=False):
    import torch

    from napari_simseg.core.interaction.memory import input_channels
    from napari_simseg.core.network.checkpoint import CheckpointMeta
    from napari_simseg.core.network.model import ModelConfig, build_model

    torch.manual_seed(seed)
    n = len(class_names)
    cfg = ModelConfig(
        in_channels=input_channels(memory, n, depth, context_slices), n_classes=n, decoder=decoder, **TINY_MODEL
    )
    model = build_model(cfg).eval()
    meta = CheckpointMeta(
        class_names=list(class_names),
        memory=memory,
        depth=depth if memory == "sim" else 1,
        click_radius=radius,
        model=cfg.to_dict(),
        context_slices=context_slices,
        neighbour_prior=neighbour_prior,
    )
    return meta, model


@pytest.fixture(autouse=True)
def _recovery_store_in_tmp(tmp_path_factory, monkeypatch):
    """Sessions autosave into a folder of the test's own, never the user's cache."""
    monkeypatch.setenv("SIMSEG_RECOVERY_DIR", str(tmp_path_factory.mktemp("recovery")))


@pytest.fixture
def make_checkpoint(tmp_path):
    """Factory: write a tiny random checkpoint and return its path."""
    from napari_simseg.core.network.checkpoint import save_checkpoint

    counter = {"n": 0}

    def _make(**kwargs):
        meta, model = tiny_meta_and_model(**kwargs)
        counter["n"] += 1
        return save_checkpoint(tmp_path / f"tiny{counter['n']}.safetensors", model, meta)

    return _make


@pytest.fixture
def tiny_checkpoint(make_checkpoint):
    return make_checkpoint()


def _blob_volume(depth: int) -> np.ndarray:
    """Noise with one bright box on every slice: ``(depth, 40, 48)`` float32."""
    rng = np.random.default_rng(0)
    vol = rng.normal(100, 20, size=(depth, 40, 48)).astype(np.float32)
    vol[:, 10:25, 12:30] += 80
    return vol


@pytest.fixture
def small_volume():
    return _blob_volume(4)


@pytest.fixture
def volume():
    return _blob_volume(5)


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()
