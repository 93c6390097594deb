import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_simseg.core.jobs.training import TrainConfig, train
from training_helpers import make_phantom_training_data, simulate, tiny_config


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory):
    return make_phantom_training_data(tmp_path_factory.mktemp("phantom"))


_cfg = tiny_config


def test_train_writes_everything_and_returns_best(phantom_data, tmp_path):
    best = train(_cfg(phantom_data, tmp_path / "run", epochs=2, steps_per_epoch=2), log=lambda m: None)
    out = tmp_path / "run"
    assert best == out / "best.safetensors" and best.is_file()
    for name in ("last.safetensors", "train_state.pt", "split.json", "config.yaml", "log.csv", "log.json"):
        assert (out / name).is_file(), name
    history = json.loads((out / "log.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert "val_dice_1clicks_organ" in history[0] and "val_iou_0clicks_background" in history[0]
    split = json.loads((out / "split.json").read_text())
    assert not set(split["train"]) & set(split["val"])  # split by volume
    from napari_simseg.core.network.checkpoint import read_checkpoint_meta

    meta = read_checkpoint_meta(best)
    assert meta.memory == "sim" and meta.depth == 3 and meta.simulation == "ddg"
    assert meta.class_names[0] == "background"
    # the network pads as its training items were padded (edge, the default) and to their canvas
    assert meta.model["edge_padded_channels"] == [0] and len(meta.model["canvas"]) == 2
    assert all(v % 32 == 0 for v in meta.model["canvas"])


def test_resume_continues_exactly(phantom_data, tmp_path):
    from safetensors.torch import load_file

    # float16 checkpoints on purpose: resume must use the float32 training state
    straight = tmp_path / "straight"
    train(_cfg(phantom_data, straight, epochs=2, steps_per_epoch=2, half_checkpoint=True), log=lambda m: None)
    resumed = tmp_path / "resumed"
    train(_cfg(phantom_data, resumed, epochs=1, steps_per_epoch=2, half_checkpoint=True), log=lambda m: None)
    train(_cfg(phantom_data, resumed, epochs=2, steps_per_epoch=2, half_checkpoint=True, resume=True),
          log=lambda m: None)
    sa = torch.load(straight / "train_state.pt", weights_only=True)["model"]
    sb = torch.load(resumed / "train_state.pt", weights_only=True)["model"]
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)
    a = load_file(str(straight / "last.safetensors"))
    b = load_file(str(resumed / "last.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert len(json.loads((resumed / "log.json").read_text())) == 2


class _Spy(torch.nn.Module):
    """Wraps a network and records how each call ran."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.calls = []

    @property
    def recurrent(self):
        return self.net.recurrent

    def forward(self, x, state=None):
        self.calls.append({"grad": torch.is_grad_enabled(), "training": self.training,
                           "batch": x.shape[0], "state": state is not None, "x": x.detach().clone(),
                           "state_in": state})
        logits, out = self.net(x, state)
        self.calls[-1]["state_out"] = out
        return logits, out


def _batch(b=3):
    labels = np.zeros((b, 32, 32), np.int64)
    labels[:, 4:14, 4:14] = 1
    labels[:, 18:28, 16:30] = 2
    return {"image": torch.randn(b, 1, 32, 32), "labels": torch.from_numpy(labels)}


def _net(cfg, n=3):
    from napari_simseg.core.network.model import build_model

    torch.manual_seed(0)
    return _Spy(build_model(cfg.model_config(n)))


def test_ddg_runs_rounds_without_grad_then_one_training_step():

    cfg = _cfg("x", "y", memory="sim", depth=3, drop_fraction=0.0, drop_class=False, random_rounds=False)
    spy = _net(cfg)
    logits, _, _ = simulate(spy, _batch(), cfg, 3, np.random.default_rng(0))
    assert [c["grad"] for c in spy.calls] == [False, False, True]
    assert [c["training"] for c in spy.calls] == [False, False, True]
    assert all(c["batch"] == 3 for c in spy.calls)  # the whole batch at once
    assert [c["state"] for c in spy.calls] == [False, True, True]  # LSTM state flows
    assert logits.requires_grad
    final = spy.calls[-1]["x"]
    n = 3
    # the training input holds D states: clicks of all 3 rounds, probabilities of rounds 1-2
    assert final[:, 1 : 1 + n].sum() > 0  # first round's clicks (p = 1, nothing dropped)
    assert final[:, 1 + n : 1 + 2 * n].sum() > 0  # its probabilities
    assert final[:, -n:].abs().sum() == 0  # newest round's output not known yet


def test_ddg_cim_runs_t_rounds_and_merges_clicks():

    cfg = _cfg(
        "x", "y", memory="cim", decoder="plain", max_clicks=3, drop_fraction=0.0, drop_class=False, random_rounds=False
    )
    spy = _net(cfg)
    simulate(spy, _batch(), cfg, 3, np.random.default_rng(0))
    assert [c["grad"] for c in spy.calls] == [False, False, True]
    # CIM: the training input's click channels hold at least the first round's clicks
    assert (spy.calls[-1]["x"][:, 1:] >= spy.calls[0]["x"][:, 1:]).all()


def test_padding_is_ignored_by_loss_and_never_clicked():

    from napari_simseg.core.jobs.training import IGNORE_INDEX

    cfg = _cfg(
        "x", "y", memory="sim", depth=3, drop_fraction=0.0, drop_class=False, click_radius=0, random_rounds=False
    )
    spy = _net(cfg)
    batch = _batch(2)
    batch["crop"] = torch.tensor([[2, 30, 3, 29], [0, 32, 0, 20]])
    _, targets, _ = simulate(spy, batch, cfg, 3, np.random.default_rng(1))
    for i, (y0, y1, x0, x1) in enumerate(batch["crop"].tolist()):
        inside = torch.zeros(32, 32, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert (targets[i][~inside] == IGNORE_INDEX).all() and (targets[i][inside] >= 0).all()
        n = 3
        for call in spy.calls:
            clicks = call["x"][i, 1:].reshape(3, 2, n, 32, 32)[:, 0]  # click masks of every state
            assert clicks.sum() > 0 or call is spy.calls[0]
            assert clicks[..., ~inside].sum() == 0


def test_random_rounds_cover_every_round_count():

    cfg = _cfg("x", "y", memory="sim", depth=3, max_clicks=3)
    assert cfg.random_rounds  # the default
    rng = np.random.default_rng(0)
    counts = set()
    spy = _net(cfg)
    for _ in range(30):
        spy.calls.clear()
        simulate(spy, _batch(1), cfg, 3, rng)
        counts.add(len(spy.calls))
        assert spy.calls[-1]["grad"] and not any(c["grad"] for c in spy.calls[:-1])
    assert counts == {1, 2, 3}


def test_sdg_and_auto_never_run_the_model_before_the_step():

    for sim, memory in (("sdg", "none"), ("auto", "none")):
        cfg = _cfg("x", "y", memory=memory, decoder="plain", simulation=sim, drop_fraction=0.0, drop_class=False)
        spy = _net(cfg)
        simulate(spy, _batch(), cfg, 3, np.random.default_rng(0))
        assert len(spy.calls) == 1 and spy.calls[0]["grad"]
        clicks = spy.calls[0]["x"][:, 1:]
        assert (clicks.sum() > 0) == (sim == "sdg")


def test_bad_data_is_reported_by_file_name(tmp_path, phantom_data):
    import shutil

    from napari_simseg.core.data.datasets import DatasetError

    bad = tmp_path / "bad"
    shutil.copytree(phantom_data, bad)
    victim = sorted((bad / "labelsTr").glob("*.nii.gz"))[0]
    victim.write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=victim.name):
        train(_cfg(bad, tmp_path / "o", epochs=1, steps_per_epoch=1, val_fraction=0.5), log=lambda m: None)
    # skip: trains on the rest
    best = train(
        _cfg(bad, tmp_path / "o2", epochs=1, steps_per_epoch=1, on_error="skip", val_fraction=0.4), log=lambda m: None
    )
    assert best.is_file()


def test_cli_train_last_line_is_best_checkpoint(phantom_data, tmp_path, capsys):
    from napari_simseg.cli import main

    out = tmp_path / "cli"
    rc = main(
        [
            "train",
            "--config",
            str(Path(__file__).resolve().parents[1] / "training/configs/ddg_sim.yaml"),
            "--data",
            str(phantom_data),
            "--out",
            str(out),
            "--encoder",
            "resnet18",
            "--encoder-depth",
            "3",
            "--decoder-channels",
            "16,8,8",
            "--epochs",
            "1",
            "--steps-per-epoch",
            "1",
            "--device",
            "cpu",
            "--no-progress",
            "--val-clicks",
            "1",
        ]
    )
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == str(out / "best.safetensors")


def test_cli_train_rejects_unknown_config_keys(tmp_path, capsys):
    from napari_simseg.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("memory: sim\nlearning_rate: 0.1\n")
    assert main(["train", "--config", str(cfg), "--data", "x", "--out", "y"]) == 2
    assert "unknown training option(s): learning_rate" in capsys.readouterr().err


def _torchrun_train(data, out, *options):
    """``simseg train`` of a small network in two CPU processes under torchrun."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "napari_simseg.cli",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--encoder",
        "resnet18",
        "--encoder-depth",
        "3",
        "--decoder-channels",
        "16,8,8",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--no-progress",
        "--val-clicks",
        "1",
        *options,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_torchrun_two_cpu_processes(phantom_data, tmp_path):
    out = tmp_path / "ddp"
    proc = _torchrun_train(phantom_data, out, "--epochs", "1", "--steps-per-epoch", "2")
    assert (out / "best.safetensors").is_file()
    # only rank 0 printed the result line and wrote one log row
    assert proc.stdout.strip().splitlines()[-1] == str(out / "best.safetensors")
    assert proc.stdout.splitlines().count(str(out / "best.safetensors")) == 1
    assert proc.stdout.count("next: simseg calibrate") == 1
    assert len(json.loads((out / "log.json").read_text())) == 1


def test_every_rank_follows_rank_zeros_plan(tmp_path):
    # ranks that planned differently would schedule differently and deadlock in DDP
    script = tmp_path / "share.py"
    script.write_text(
        "import torch\n"
        "from napari_simseg.core.jobs.training_setup import Dist\n"
        "d = Dist(torch.device('cpu'))\n"
        "import sys, pathlib\n"
        "plan = d.share([10 + d.rank, 20 * (d.rank + 1)], torch.device('cpu'))\n"
        "pathlib.Path(sys.argv[1], f'rank{d.rank}.txt').write_text(str(plan))\n"
        "d.close()\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # one file per rank: the two ranks' stdout interleave
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == ["[10, 20]", "[10, 20]"]


def test_torchrun_with_a_planned_time_budget_finishes(phantom_data, tmp_path):
    out = tmp_path / "ddp_plan"
    proc = _torchrun_train(
        phantom_data, out, "--epochs", "2", "--max-minutes", "0.25", "--plan-steps", "--no-time-schedule"
    )
    rows = json.loads((out / "log.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
    assert proc.stdout.count("plan:") == 1  # planned and printed once, by rank 0


def test_a_single_process_keeps_its_own_plan():
    from napari_simseg.core.jobs.training_setup import Dist

    assert Dist(torch.device("cpu")).share([7, 3.0], torch.device("cpu")) == [7, 3]


def test_init_from_fine_tunes_and_checks_architecture(phantom_data, tmp_path):
    from napari_simseg.core.network.checkpoint import CheckpointError, load_checkpoint

    first = train(_cfg(phantom_data, tmp_path / "a", epochs=1, steps_per_epoch=1), log=lambda m: None)
    # lr 0: the fine-tuned network must equal its starting point
    second = train(
        _cfg(phantom_data, tmp_path / "b", epochs=1, steps_per_epoch=1, init_from=str(first), lr=0.0),
        log=lambda m: None,
    )
    a, b = load_checkpoint(first).model.state_dict(), load_checkpoint(second).model.state_dict()
    for k in a:
        if a[k].is_floating_point() and "running" not in k:
            torch.testing.assert_close(a[k], b[k], msg=k)
    with pytest.raises(CheckpointError, match="architecture"):
        train(
            _cfg(phantom_data, tmp_path / "c", epochs=1, steps_per_epoch=1, init_from=str(first), decoder="plain"),
            log=lambda m: None,
        )


def test_cosine_schedule_runs_from_lr_to_final_fraction():
    cfg = TrainConfig(data="d", out="o", lr=1e-3, epochs=5, lr_schedule="cosine", lr_final_fraction=0.1)
    lrs = [cfg.learning_rate(e) for e in range(5)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-4)
    assert lrs[2] == pytest.approx(0.5 * (1e-3 + 1e-4))  # half way down the half cosine
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    const = TrainConfig(data="d", out="o", lr=1e-3, epochs=5)
    assert [const.learning_rate(e) for e in range(5)] == [1e-3] * 5
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        TrainConfig(data="d", out="o", lr_schedule="step").validate()


def test_cosine_schedule_sets_the_optimizer_each_epoch_and_resumes(phantom_data, tmp_path):
    kw = dict(steps_per_epoch=1, lr=1e-3, lr_schedule="cosine", lr_final_fraction=0.5, epochs=3)
    train(_cfg(phantom_data, tmp_path / "s", **kw), log=lambda m: None)
    history = json.loads((tmp_path / "s" / "log.json").read_text())
    assert [round(h["lr"], 8) for h in history] == [1e-3, 7.5e-4, 5e-4]
    state = torch.load(tmp_path / "s" / "train_state.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(5e-4)
    # interrupted after epoch 1 and resumed: the same curve, the same weights
    train(_cfg(phantom_data, tmp_path / "r", **{**kw, "epochs": 1}), log=lambda m: None)
    train(_cfg(phantom_data, tmp_path / "r", **kw, resume=True), log=lambda m: None)
    resumed = torch.load(tmp_path / "r" / "train_state.pt", weights_only=True)["model"]
    for k, v in state["model"].items():
        torch.testing.assert_close(v, resumed[k], rtol=0, atol=0, msg=k)


def test_init_from_carries_weights_across_the_stem_stride(phantom_data, tmp_path):
    from napari_simseg.core.network.checkpoint import load_checkpoint

    first = train(_cfg(phantom_data, tmp_path / "a", epochs=1, steps_per_epoch=1), log=lambda m: None)
    second = train(
        _cfg(
            phantom_data,
            tmp_path / "b",
            epochs=1,
            steps_per_epoch=1,
            init_from=str(first),
            lr=0.0,
            encoder_stem_stride=1,
        ),
        log=lambda m: None,
    )
    a, b = load_checkpoint(first).model, load_checkpoint(second).model
    assert a.config.encoder_stem_stride == 2 and b.config.encoder_stem_stride == 1
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        if sa[k].is_floating_point() and "running" not in k:
            torch.testing.assert_close(sa[k], sb[k], msg=k)


def test_auto_fraction_trains_that_share_of_batches_on_the_empty_memory():

    cfg = _cfg(
        "x",
        "y",
        memory="sim",
        depth=3,
        max_clicks=3,
        drop_fraction=0.0,
        drop_class=False,
        random_rounds=False,
        auto_fraction=0.25,
    )
    spy = _net(cfg)
    rng = np.random.default_rng(5)
    automatic = 0
    for _ in range(80):
        spy.calls.clear()
        simulate(spy, _batch(2), cfg, 3, rng)
        if len(spy.calls) == 1:
            automatic += 1
            call = spy.calls[0]
            assert call["grad"] and not call["state"]  # one training forward, fresh state
            assert call["x"][:, 1:].abs().sum() == 0  # image only: no clicks, no probabilities
        else:
            assert len(spy.calls) == 3 and spy.calls[-1]["x"][:, 1:].abs().sum() > 0
    assert 8 <= automatic <= 35  # ~20 of 80 expected
    with pytest.raises(ValueError, match="auto_fraction"):
        _cfg("x", "y", auto_fraction=1.5).validate()


def test_auto_fraction_zero_keeps_the_random_stream():

    def inputs(**kw):
        cfg = _cfg("x", "y", memory="sim", depth=3, **kw)
        spy = _net(cfg)
        simulate(spy, _batch(2), cfg, 3, np.random.default_rng(9))
        return [c["x"] for c in spy.calls]

    a, b = inputs(), inputs(auto_fraction=0.0)
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_stop_after_epoch_ends_early_on_the_full_schedule(phantom_data, tmp_path):
    kw = dict(steps_per_epoch=1, lr=1e-3, lr_schedule="cosine", lr_final_fraction=0.0, epochs=5)
    train(_cfg(phantom_data, tmp_path / "s", stop_after_epoch=2, **kw), log=lambda m: None)
    history = json.loads((tmp_path / "s" / "log.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["lr"] == pytest.approx(1e-3 * 0.5 * (1 + np.cos(np.pi / 4)))  # epoch 2 of 5


def test_spatial_augmentation_options_are_checked():
    from napari_simseg.core.jobs.training import TrainConfig

    cfg = TrainConfig(data="d", out="o", aug_rotate_degrees=15, aug_scale=["0.9", 1.1]).validate()
    assert cfg.aug_scale == [0.9, 1.1]
    with pytest.raises(ValueError, match="aug_scale must be"):
        TrainConfig(data="d", out="o", aug_scale=[1.2, 0.8]).validate()
    with pytest.raises(ValueError, match="aug_rotate_degrees"):
        TrainConfig(data="d", out="o", aug_rotate_degrees=-5).validate()


def test_dice_loss_weight_adds_the_weighted_dice_term_to_the_first_step(phantom_data, tmp_path):
    kw = dict(epochs=1, steps_per_epoch=1, batch_size=2)
    train(_cfg(phantom_data, tmp_path / "focal", **kw), log=lambda m: None)
    train(_cfg(phantom_data, tmp_path / "dice", dice_loss_weight=0.5, **kw), log=lambda m: None)
    focal = json.loads((tmp_path / "focal" / "log.json").read_text())[0]["train_loss"]
    both = json.loads((tmp_path / "dice" / "log.json").read_text())[0]["train_loss"]
    # same seed, same weights, same batch: the first step differs by 0.5 * (a Dice loss in (0, 1])
    assert 0.0 < both - focal <= 0.5


def test_dice_loss_weight_is_checked():
    assert TrainConfig(data="d", out="o", dice_loss_weight=0.1).validate().dice_loss_weight == 0.1
    assert TrainConfig(data="d", out="o", dice_loss_weight="0.3").validate().dice_loss_weight == 0.3
    for bad in (-0.1, float("nan"), float("inf"), "heavy", None):
        with pytest.raises(ValueError, match="dice_loss_weight must be a number >= 0"):
            TrainConfig(data="d", out="o", dice_loss_weight=bad).validate()


def test_ema_decay_is_checked():
    assert TrainConfig(data="d", out="o", ema_decay="0.999").validate().ema_decay == 0.999
    assert TrainConfig(data="d", out="o").validate().ema_decay == 0.0  # the paper's recipe: off
    for bad in (1.0, -0.1, float("nan"), "slow", None):
        with pytest.raises(ValueError, match=r"ema_decay must be a number in \[0, 1\)"):
            TrainConfig(data="d", out="o", ema_decay=bad).validate()


def test_ema_checkpoints_hold_the_moving_average_and_resume_continues_it(phantom_data, tmp_path):
    from safetensors.torch import load_file

    decay = 0.75
    kw = dict(steps_per_epoch=1, lr=1e-2, ema_decay=decay)
    # straight: two epochs of one step; split: one epoch, then resumed for the second
    train(_cfg(phantom_data, tmp_path / "straight", epochs=2, **kw), log=lambda m: None)
    train(_cfg(phantom_data, tmp_path / "split", epochs=1, **kw), log=lambda m: None)
    first = torch.load(tmp_path / "split" / "train_state.pt", weights_only=True)
    # the first update copies the weights (the average of one set of weights)
    for k, v in first["model"].items():
        torch.testing.assert_close(first["ema"]["module." + k], v, rtol=0, atol=0, msg=k)
    train(_cfg(phantom_data, tmp_path / "split", epochs=2, resume=True, **kw), log=lambda m: None)
    second = torch.load(tmp_path / "split" / "train_state.pt", weights_only=True)
    straight = torch.load(tmp_path / "straight" / "train_state.pt", weights_only=True)
    saved = load_file(str(tmp_path / "split" / "last.safetensors"))
    moved = 0
    for k, w2 in second["model"].items():
        if not w2.is_floating_point():
            continue
        expected = decay * first["model"][k] + (1 - decay) * w2  # weights and batch-norm statistics
        torch.testing.assert_close(second["ema"]["module." + k], expected, msg=k)
        torch.testing.assert_close(saved[k], expected, msg=k)  # the checkpoint is the average
        torch.testing.assert_close(
            straight["ema"]["module." + k], second["ema"]["module." + k], rtol=0, atol=0, msg=k
        )  # resuming changes nothing
        moved += int(not torch.equal(w2, expected))
    assert moved > 10  # the raw weights moved away from the average: the test has teeth


def test_resume_with_ema_needs_a_state_that_has_one(phantom_data, tmp_path):
    train(_cfg(phantom_data, tmp_path / "r", epochs=1, steps_per_epoch=1), log=lambda m: None)
    with pytest.raises(ValueError, match="written without weight averaging"):
        train(
            _cfg(phantom_data, tmp_path / "r", epochs=2, steps_per_epoch=1, ema_decay=0.9, resume=True),
            log=lambda m: None,
        )


_REPO = Path(__file__).resolve().parents[1]
_CONFIGS = sorted([*(_REPO / "training/configs").rglob("*.yaml"), *(_REPO / "experiments/configs").rglob("*.yaml")])


def test_the_config_folders_hold_the_ablation_and_demo_configs():
    names = {p.relative_to(_REPO).as_posix() for p in _CONFIGS}
    for row in ("auto", "sdg_base", "ddg_cim", "ddg_sim", "ddg_sim_no_rules"):
        assert f"training/configs/{row}.yaml" in names
    assert "training/configs/demo/demo_hippocampus.yaml" in names


@pytest.mark.parametrize("config", _CONFIGS, ids=lambda p: p.relative_to(_REPO).as_posix())
def test_every_shipped_training_config_is_valid(config):
    import yaml

    values = yaml.safe_load(config.read_text())
    cfg = TrainConfig.from_dict({**values, "data": "d", "out": "o"}).validate()  # unknown keys raise here
    assert cfg.memory in ("none", "cim", "sim") and cfg.epochs >= 1


def test_train_axes_are_checked():
    assert TrainConfig(data="d", out="o", train_axes=[0, 1, 2]).validate().train_axes == [0, 1, 2]
    assert TrainConfig(data="d", out="o", axis=1, train_axes=[1, 2]).validate().train_axes == [1, 2]
    assert TrainConfig(data="d", out="o").validate().train_axes is None  # the slicing axis alone
    for bad in ([1, 2], [0, 0], [0, 3], [], [0, True], ["0", 1]):
        with pytest.raises(ValueError, match="train_axes must be distinct axes"):
            TrainConfig(data="d", out="o", train_axes=bad).validate()


def test_train_axes_train_on_every_axis_and_validate_on_one(phantom_data, tmp_path):
    messages = []
    train(_cfg(phantom_data, tmp_path / "m", epochs=1, steps_per_epoch=1, train_axes=[0, 1, 2]), log=messages.append)
    split = json.loads((tmp_path / "m" / "split.json").read_text())
    data_line = next(m for m in messages if m.startswith("data:"))
    # phantom volumes are (6, 40, 44): 6 + 40 + 44 training slices each, 6 validation slices each
    n_train, n_val = len(split["train"]), len(split["val"])
    assert f"{90 * n_train} / {6 * n_val} slices" in data_line
    history = json.loads((tmp_path / "m" / "log.json").read_text())
    assert np.isfinite(history[0]["train_loss"]) and "val_dice_1clicks_organ" in history[0]


def test_multi_axis_slices_joins_the_axes_of_the_same_cases(phantom_data):
    from napari_simseg.core.data import datasets, slices

    spec = datasets.discover_dataset(phantom_data)
    ids = spec.case_ids[:2]
    parts = [slices.SliceDataset(spec, ids, slices.SliceOptions(axis=a, target_shape=(48, 48), context_slices=1))
             for a in (0, 1, 2)]
    joined = slices.MultiAxisSlices(parts)
    assert len(joined) == 2 * (6 + 40 + 44) and joined.axes == [0, 1, 2] and joined.case_ids == ids
    item = joined[2 * 6 + 2 * 40]  # the first slice along axis 2
    assert item["image"].shape == (3, 48, 48) and item["labels"].shape == (48, 48)
    np.testing.assert_array_equal(item["labels"].numpy(), parts[2][0]["labels"].numpy())
    np.testing.assert_array_equal(joined.class_pixel_counts(), parts[0].class_pixel_counts())
    joined.set_epoch(3)
    assert [p.epoch for p in parts] == [3, 3, 3]
    with pytest.raises(ValueError, match="different axes"):
        slices.MultiAxisSlices([parts[0], parts[0]])
    other = slices.SliceDataset(spec, ids[:1], slices.SliceOptions(axis=1, target_shape=(48, 48), context_slices=1))
    with pytest.raises(ValueError, match="same cases"):
        slices.MultiAxisSlices([parts[0], other])


def test_along_views_the_loaded_volumes_along_another_axis(phantom_data):
    from napari_simseg.core.data import datasets, slices

    spec = datasets.discover_dataset(phantom_data)
    ids = spec.case_ids[:2]
    base = slices.SliceDataset(spec, ids, slices.SliceOptions(axis=0, target_shape=(48, 48), context_slices=1))
    for axis in (1, 2):
        read = slices.SliceDataset(spec, ids, slices.SliceOptions(axis=axis, target_shape=(48, 48), context_slices=1))
        viewed = base.along(axis)
        assert viewed.axis == axis and len(viewed) == len(read) and base.axis == 0 and len(base) == 12
        for i in (0, len(read) // 2, len(read) - 1):
            a, b = viewed[i], read[i]
            assert a["slice_index"] == b["slice_index"] and a["case_id"] == b["case_id"]
            np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
            np.testing.assert_array_equal(a["labels"].numpy(), b["labels"].numpy())
        assert np.shares_memory(viewed.images[ids[0]], base.images[ids[0]])


def test_mix_rounds_mixes_round_counts_within_a_batch():
    """mix_rounds: every item draws automatic or 1..t rounds; no-grad forwards run only on
    the items that go on; one training forward of the whole batch, each item's input
    holding its own number of states."""

    n, b = 3, 12
    cfg = _cfg(
        "x",
        "y",
        memory="sim",
        depth=3,
        max_clicks=3,
        drop_fraction=0.0,
        drop_class=False,
        decreasing_probability=False,
        auto_fraction=0.25,
        mix_rounds=True,
    )  # every round clicks
    spy = _net(cfg)
    logits, _, _ = simulate(spy, _batch(b), cfg, n, np.random.default_rng(3))
    assert logits.shape[0] == b and logits.requires_grad
    final = spy.calls[-1]
    assert final["grad"] and final["training"] and final["batch"] == b
    assert not any(c["grad"] for c in spy.calls[:-1])
    # the no-grad rounds shrink to the items still clicking
    sizes = [c["batch"] for c in spy.calls[:-1]]
    assert sizes == sorted(sizes, reverse=True) and all(s < b for s in sizes)
    states = final["x"][:, 1 : 1 + 2 * n * 3].reshape(b, 3, 2, n, 32, 32)
    clicked = states[:, :, 0].flatten(2).sum(-1) > 0  # (items, state slots): clicks present
    rounds = clicked.sum(1).tolist()
    assert {0, 1, 2, 3} <= set(rounds), rounds  # every kind of item in one batch
    for i, r in enumerate(rounds):
        if r == 0:  # automatic: image only
            assert final["x"][i, 1:].abs().sum() == 0
        else:  # the newest r slots hold clicks, the probabilities of all but the newest
            assert clicked[i, 3 - r :].all() and not clicked[i, : 3 - r].any()
            probs = states[i, :, 1].flatten(1).abs().sum(-1) > 0
            assert probs[3 - r : 2].all() and not probs[2] and not probs[: 3 - r].any()


def test_mix_rounds_gives_each_item_the_lstm_state_of_its_own_rounds():
    """An item's training forward continues the LSTM state of its own last no-grad round
    (zeros, read as no state, after one round or none)."""

    n, b = 3, 12
    cfg = _cfg(
        "x",
        "y",
        memory="sim",
        depth=3,
        max_clicks=3,
        drop_fraction=0.0,
        drop_class=False,
        decreasing_probability=False,
        auto_fraction=0.25,
        mix_rounds=True,
    )  # every round clicks
    spy = _net(cfg, n)
    simulate(spy, _batch(b), cfg, n, np.random.default_rng(3))
    final = spy.calls[-1]
    clicked = final["x"][:, 1 : 1 + 2 * n * 3].reshape(b, 3, 2, n, 32, 32)[:, :, 0].flatten(2).sum(-1) > 0
    rounds = clicked.sum(1).tolist()
    assert max(rounds) == 3 and final["state_in"] is not None
    rows = [[i for i in range(b) if rounds[i] > k + 1] for k in range(2)]  # who each no-grad call ran
    assert [c["batch"] for c in spy.calls[:-1]] == [len(r) for r in rows if r]
    for stage, (h, c) in enumerate(final["state_in"]):
        for i, r in enumerate(rounds):
            if r <= 1:
                assert h[i].abs().sum() == 0 and c[i].abs().sum() == 0
            else:
                call = spy.calls[r - 2]
                j = rows[r - 2].index(i)
                torch.testing.assert_close(h[i], call["state_out"][stage][0][j].float())
                torch.testing.assert_close(c[i], call["state_out"][stage][1][j].float())


def test_validation_takes_fewer_large_slices_per_call():
    from conftest import tiny_meta_and_model
    from napari_simseg.core.imaging.regions import TILE_BATCH_BYTES
    from napari_simseg.core.jobs.training_records import validation_batch

    _, net = tiny_meta_and_model()
    cfg = TrainConfig(data="-", out="-", val_batch_size=32)
    assert validation_batch(net, [{"image": torch.zeros(1, 64, 64)}], cfg, 3) == 32
    big = validation_batch(net, [{"image": torch.zeros(1, 1024, 1024)}], cfg, 3)
    per_slice = 4 * (0.5 * net.activation_floats_per_pixel() + net.config.in_channels + 6) * 1024 * 1024
    assert big == max(1, int(TILE_BATCH_BYTES // per_slice)) < 32
