"""Several image channels through the whole pipeline: train (DDG rounds and the
validation's evaluation-user rounds), evaluate, calibrate and a session round.

A validation pass that read a C-channel slice as one channel with neighbours
refused 2 or 4 channels and silently misread 3; these tests train on 2 and 3 channels,
with and without context slices."""

import numpy as np
import pytest
import torch

from layout_builders import make_msd4d_dataset, make_nnunet_dataset
from napari_simseg.core.interaction.memory import input_channels
from napari_simseg.core.jobs.calibration import calibrate
from napari_simseg.core.jobs.evaluation import evaluate
from napari_simseg.core.jobs.training import train
from napari_simseg.core.network.checkpoint import load_checkpoint
from napari_simseg.core.session.interactive import InteractiveSession
from training_helpers import tiny_config


@pytest.mark.parametrize("context_slices", [0, 1])
def test_three_modalities_train_evaluate_calibrate_and_click(tmp_path, context_slices):
    modalities = ("FLAIR", "T1w", "T2w")
    data = make_msd4d_dataset(tmp_path / "brats", n=4, shape=(6, 24, 28), modalities=modalities)
    cfg = tiny_config(data, tmp_path / "run", epochs=1, steps_per_epoch=2, batch_size=2, context_slices=context_slices,
                      val_fraction=0.25, val_clicks=1, mix_rounds=True, auto_fraction=0.25)
    best = train(cfg.validate(), log=lambda m: None)
    ck = load_checkpoint(best)
    meta = ck.meta
    assert tuple(meta.channel_names) == modalities and meta.context_slices == context_slices
    assert ck.model.config.in_channels == input_channels("sim", 2, 3, context_slices, 3)

    result = evaluate(best, data, split="val", split_file=str(tmp_path / "run" / "split.json"), clicks=(0, 1),
                      device="cpu", progress=False, log=lambda m: None)
    assert result["n_volumes"] == 1
    assert [r["clicks"] for r in result["results"]] == [0, 1]
    assert all(0.0 <= r["dice"]["tumour"] <= 1.0 for r in result["results"])

    calibrated = calibrate(best, data, tmp_path / "cal.safetensors", split="train",
                           split_file=str(tmp_path / "run" / "split.json"), max_volumes=2, rounds=1, sweeps=1,
                           device="cpu", progress=False, log=lambda m: None)
    assert len(calibrated["offsets"]) == 2

    image = np.random.default_rng(0).normal(size=(3, 6, 24, 28)).astype(np.float32)
    session = InteractiveSession(image, best, device="cpu", channel_axis=0)
    res = session.add_clicks(3, [(1, 12, 14)])
    assert res.labels.shape == (24, 28) and res.labels[12, 14] == 1


def test_two_channel_pictures_train_with_their_validation_rounds(tmp_path):
    data = make_nnunet_dataset(tmp_path / "nn", n=4, ending=".png", shape=(32, 40), channels=("T1", "T2"))
    cfg = tiny_config(data, tmp_path / "run", epochs=1, steps_per_epoch=2, batch_size=2, val_fraction=0.25,
                      val_clicks=2)
    best = train(cfg.validate(), log=lambda m: None)
    meta = load_checkpoint(best).meta
    assert tuple(meta.channel_names) == ("T1", "T2")
    import json

    row = json.loads((tmp_path / "run" / "log.json").read_text())[0]
    # the validation ran its evaluation-user rounds on two-channel slices
    assert 0.0 <= row["val_dice_2clicks_core"] <= 1.0 and 0.0 <= row["val_dice_0clicks_edema"] <= 1.0


class _InputRecorder(torch.nn.Module):
    """A stand-in network that records its inputs and predicts class 0 everywhere."""

    recurrent = False

    def __init__(self, n_classes):
        super().__init__()
        self.n_classes, self.inputs = n_classes, []

    def forward(self, x, state=None):
        self.inputs.append(x.detach().clone())
        return torch.zeros(x.shape[0], self.n_classes, *x.shape[-2:]), None


@pytest.mark.parametrize("channels, context_slices", [(3, 0), (3, 1), (2, 1)])
def test_validation_feeds_every_channel_where_the_session_does(channels, context_slices):
    from napari_simseg.core.engine.train_config import TrainConfig
    from napari_simseg.core.jobs.training import validate

    n, h, w = 3, 16, 20
    stack = torch.randn(2, channels * (1 + 2 * context_slices), h, w)
    labels = np.zeros((2, h, w), np.int64)
    labels[:, 4:9, 5:12], labels[:, 10:14, 3:8] = 1, 2
    items = [{"image": stack[i], "labels": torch.from_numpy(labels[i]), "crop": torch.tensor([0, h, 0, w])}
             for i in range(2)]
    cfg = TrainConfig(data="-", out="-", memory="sim", depth=3, context_slices=context_slices, val_clicks=1,
                      val_batch_size=2)
    net = _InputRecorder(n)
    validate(net, items, cfg, n, torch.device("cpu"), amp=False)
    expected = input_channels("sim", n, 3, context_slices, channels)
    for x in net.inputs:
        assert x.shape[1] == expected
        # the slice's own channels first, its neighbours' last, as core.interaction.memory lays them out
        assert torch.equal(x[:, :channels], stack[:, :channels])
        if context_slices:
            assert torch.equal(x[:, expected - 2 * context_slices * channels:], stack[:, channels:])
    # the round with clicks put them right after the image channels
    assert net.inputs[1][:, channels:channels + 2 * n * 3].abs().sum() > 0
