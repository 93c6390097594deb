import numpy as np
import pytest
import torch

from napari_simseg.core.network.devices import resolve_device
from napari_simseg.core.network.predictor import Predictor


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


def test_batch_for_bounds_the_inputs_of_one_call_by_memory(tiny_checkpoint):
    p = Predictor(tiny_checkpoint, device="cpu")
    one = p.required_bytes(1, 128, 128)
    assert p.required_bytes(4, 128, 128) == pytest.approx(4 * one, rel=1e-6)  # views in one call
    assert p.batch_for(64, 128, 128, budget=3 * one + 1) == 3
    assert p.batch_for(2, 128, 128, budget=3 * one + 1) == 2  # never more than asked
    assert p.batch_for(64, 128, 128, budget=one // 2) == 1  # one input at least
    assert p.batch_for(64, 16, 16) == 64  # small slices: the whole request
    # large batches run their flipped views one at a time: more inputs fit the budget
    big = p.required_bytes(8, 512, 512)
    assert big < 8 * p.required_bytes(1, 256, 256) * 4 / 2
    n = p.batch_for(64, 512, 512, budget=big)
    assert n >= 8 and p.required_bytes(n, 512, 512) <= big < p.required_bytes(n + 1, 512, 512)


def test_evaluation_gives_the_same_results_in_memory_bounded_batches(make_checkpoint, tmp_path, monkeypatch):
    from napari_simseg.core.data.phantom import make_phantom_dataset
    from napari_simseg.core.jobs import evaluation

    data = make_phantom_dataset(tmp_path / "data", n_volumes=1, seed=3, shape=(6, 40, 44))
    checkpoint = make_checkpoint(class_names=("background", "organ", "cavity", "tumour", "neighbour"))

    asked = []

    def run(budget):
        def batch_for(self, requested, h, w, budget=budget):
            asked.append((requested, h, w))
            return max(1, min(requested, budget))

        monkeypatch.setattr(Predictor, "batch_for", batch_for)
        return evaluation.evaluate(checkpoint, data, split="all", clicks=(0, 1), device="cpu",
                                   max_volumes=1, progress=False, log=lambda m: None)

    whole, two_at_a_time = run(64), run(2)
    # float32 convolutions may round differently per batch size on some CPUs: a pixel or two
    assert whole["results"][1]["dice"] == pytest.approx(two_at_a_time["results"][1]["dice"], abs=2e-3)
    assert whole["results"][1]["clicks_per_volume"] == two_at_a_time["results"][1]["clicks_per_volume"]
    assert asked and all(r == 64 for r, _, _ in asked)  # the evaluation asked for its batch of slices


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(False, False, False), (True, False, True),
                                                        (False, True, True)])
def test_bfloat16_only_where_the_cpu_has_it_natively(monkeypatch, avx512_bf16, amx, expected):
    """oneDNN reports bfloat16 support on any AVX512 CPU (emulated there, slower):
    the autocast decision reads the CPU's own bfloat16 and AMX flags."""
    from napari_simseg.core.network import devices

    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert devices.cpu_bf16_supported() is expected
    autocast = devices.autocast_for(torch.device("cpu"), amp=True)
    assert isinstance(autocast, torch.autocast) is expected
