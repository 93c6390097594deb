import numpy as np
import pytest
import torch

from napari_simseg.core.devices import resolve_device
from napari_simseg.core.predictor import Predictor


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is available"):
            resolve_device("cuda")


def test_single_and_batch_agree(tiny_checkpoint):
    p = Predictor(tiny_checkpoint, device="cpu")
    assert p.class_names == ["background", "a", "b"] and p.memory_kind == "sim" and p.depth == 3
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, p.in_channels, 24, 30)).astype(np.float32)
    batch, state = p.predict(x)
    assert batch.shape == (3, 3, 24, 30) and batch.dtype == np.float32
    np.testing.assert_allclose(batch.sum(1), 1, atol=1e-5)
    single, _ = p.predict(x[1])
    np.testing.assert_allclose(single, batch[1], atol=1e-5)
    assert state is not None and p.last_forward_ms > 0


def test_wrong_input_shape(tiny_checkpoint):
    p = Predictor(tiny_checkpoint, device="cpu")
    with pytest.raises(ValueError, match=f"C={p.in_channels}"):
        p.predict(np.zeros((2, 24, 30), np.float32))


def test_missing_checkpoint_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Predictor(tmp_path / "nope.safetensors")
