"""Per-class decision offsets: deciding labels, fitting them, storing them, using them."""

import json
from dataclasses import replace

import numpy as np
import pytest

from napari_simseg.core.jobs.calibration import fit_decision_offsets, score_offsets
from napari_simseg.core.network.decision import decide_labels


def test_decide_labels_zero_offsets_is_argmax_and_offsets_shift_the_decision():
    p = np.array([[0.5, 0.3], [0.3, 0.3], [0.2, 0.4]], np.float32)[:, :, None]  # (N=3, 2, 1)
    np.testing.assert_array_equal(decide_labels(p), p.argmax(0))
    np.testing.assert_array_equal(decide_labels(p, [0, 0, 0]), p.argmax(0))
    # class 1 gains: log 0.3 + 0.6 > log 0.5 at the first pixel
    assert decide_labels(p, [0, 0.6, 0])[0, 0] == 1
    # class 2 loses the second pixel to class 1 or 0
    assert decide_labels(p, [0, 0, -1.0])[1, 0] != 2
    with pytest.raises(ValueError, match="2 decision offsets for 3 classes"):
        decide_labels(p, [0, 1])


def _synthetic_volumes(bias, n_volumes=4, seed=0):
    """Volumes whose 'network' log-probabilities carry a known per-class bias."""
    rng = np.random.default_rng(seed)
    n = len(bias)
    vols = []
    for _ in range(n_volumes):
        gt = np.zeros((3, 40, 40), np.uint8)
        gt[:, 8:24, 8:30] = 1
        gt[:, 20:34, 14:26] = 2
        evidence = 2.0 * np.eye(n, dtype=np.float32)[gt].transpose(0, 3, 1, 2)  # (S, N, H, W)
        rounds = []
        for _r in range(2):
            z = evidence + rng.normal(0, 0.7, evidence.shape).astype(np.float32)
            z += np.asarray(bias, np.float32)[None, :, None, None]
            z -= z.max(1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(1, keepdims=True))
            rounds.append(logp.astype(np.float16))
        vols.append({"gt": gt, "logp": np.stack(rounds),
                     "clicked": [np.zeros((0, 4), np.int64), np.array([[0, 15, 15, 1]])]})
    return vols


def test_fit_recovers_a_known_bias():
    """A bias added to the logits shifts the fitted offsets by exactly minus that bias."""
    bias = np.array([0.0, 0.5, -0.3])
    ref, _, ref_after = fit_decision_offsets(_synthetic_volumes([0, 0, 0]), 3, rounds=(0, 1))
    vols = _synthetic_volumes(bias)  # same noise, biased
    offsets, before, after = fit_decision_offsets(vols, 3, rounds=(0, 1))
    assert offsets[0] == 0.0
    np.testing.assert_allclose(offsets, np.asarray(ref) - bias, atol=0.11)
    assert after == pytest.approx(ref_after, abs=1e-3)
    assert after > before + 0.02
    assert score_offsets(vols, offsets, 3, (0, 1)) == pytest.approx(after)


def test_honoured_clicks_count_in_the_objective():
    vols = _synthetic_volumes([0.0, 0.0, 0.0], seed=2)
    for v in vols:
        v["logp"][1][:, 1] = -20.0  # the network never says class 1 ...
        v["clicked"][1] = np.array([[0, 10, 10, 1]])  # ... but one pixel was clicked as 1
    with_click = score_offsets(vols, [0, 0, 0], 3, (1,))
    for v in vols:
        v["clicked"][1] = np.zeros((0, 4), np.int64)
    without = score_offsets(vols, [0, 0, 0], 3, (1,))
    assert with_click > without


def test_checkpoint_stores_offsets_with_format_3(tmp_path):
    from safetensors import safe_open

    from conftest import tiny_meta_and_model
    from napari_simseg.core.network.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint

    meta, model = tiny_meta_and_model()
    plain = save_checkpoint(tmp_path / "plain.safetensors", model, meta)
    meta.decision_offsets = [0.0, -0.2, -0.4]
    calibrated = save_checkpoint(tmp_path / "cal.safetensors", model, meta)

    def header(path):
        with safe_open(str(path), framework="pt") as f:
            return json.loads(f.metadata()["simseg"])

    assert "decision_offsets" not in header(plain) and header(plain)["format_version"] == 1
    assert header(calibrated)["format_version"] == 3
    assert read_checkpoint_meta(plain).decision_offsets is None
    assert load_checkpoint(calibrated).meta.decision_offsets == [0.0, -0.2, -0.4]


@pytest.mark.parametrize("bad", [[0.0, 1.0], [0.0, float("nan"), 0.0], ["a", 0, 0], 0.5])
def test_bad_offsets_are_refused_with_an_actionable_message(tmp_path, bad):
    from conftest import tiny_meta_and_model
    from napari_simseg.core.network.checkpoint import CheckpointError, save_checkpoint

    meta, model = tiny_meta_and_model()
    meta.decision_offsets = bad
    with pytest.raises(CheckpointError, match="decision_offsets must be 3 finite numbers.*simseg calibrate"):
        save_checkpoint(tmp_path / "bad.safetensors", model, meta)


def test_update_checkpoint_meta_copies_tensors_bit_for_bit(tmp_path):
    from safetensors.torch import load_file

    from conftest import tiny_meta_and_model
    from napari_simseg.core.network.checkpoint import (
        CheckpointError,
        read_checkpoint_meta,
        save_checkpoint,
        update_checkpoint_meta,
    )

    meta, model = tiny_meta_and_model()
    src = save_checkpoint(tmp_path / "half.safetensors", model, meta, half=True)
    out = update_checkpoint_meta(src, tmp_path / "out.safetensors", decision_offsets=[0, -0.1, 0.3])
    a, b = load_file(str(src)), load_file(str(out))
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and bool((a[k] == b[k]).all()), k
    assert read_checkpoint_meta(out).decision_offsets == [0, -0.1, 0.3]
    assert read_checkpoint_meta(src).decision_offsets is None  # the source is untouched
    update_checkpoint_meta(out, out, decision_offsets=None)  # in place
    assert read_checkpoint_meta(out).decision_offsets is None
    with pytest.raises(CheckpointError):
        update_checkpoint_meta(src, tmp_path / "x.safetensors", decision_offsets=[1.0])
    with pytest.raises(ValueError, match="unknown checkpoint fields"):
        update_checkpoint_meta(src, tmp_path / "x.safetensors", colour="red")
    assert not (tmp_path / "x.safetensors").exists()


def test_evaluation_rounds_use_offsets_for_labels_not_memory():
    import torch

    from conftest import tiny_meta_and_model
    from napari_simseg.core.engine.rounds import RoundSettings, run_rounds
    from napari_simseg.core.interaction.virtual_user import EvaluationUser

    meta, model = tiny_meta_and_model(memory="sim", depth=2)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.normal(size=(2, 1, 32, 32)).astype(np.float32))
    gts = np.zeros((2, 32, 32), np.int64)
    gts[:, 8:20, 8:20] = 1
    gts[:, 20:28, 4:12] = 2
    user = EvaluationUser(3)
    args = (model, images, gts, 2, user.next_round_batch)
    base = RoundSettings("sim", depth=2, n_classes=3, click_radius=1)
    plain = run_rounds(*args, base)
    zero = run_rounds(*args, replace(base, decision_offsets=[0, 0, 0]))
    for a, b in zip(plain, zero):
        np.testing.assert_array_equal(a, b)
    banned = run_rounds(*args, replace(base, decision_offsets=[0, -1e6, 0]))
    assert all(not (lab == 1).any() for lab in banned)  # clicks not honoured: class 1 never wins
    honoured = run_rounds(*args, replace(base, decision_offsets=[0, -1e6, 0], honour=True))
    assert any((lab == 1).any() for lab in honoured[1:])  # ... except where it was clicked
    with pytest.raises(ValueError, match="2 decision offsets for 3 classes"):
        run_rounds(*args, replace(base, decision_offsets=[0, 1]))


def test_session_decides_with_the_checkpoint_offsets(tmp_path, small_volume):
    from conftest import tiny_meta_and_model
    from napari_simseg.core.network.checkpoint import save_checkpoint
    from napari_simseg.core.session.interactive import InteractiveSession

    meta, model = tiny_meta_and_model()
    meta.decision_offsets = [0.0, 5.0, -5.0]
    path = save_checkpoint(tmp_path / "cal.safetensors", model, meta)
    on = InteractiveSession(small_volume, path, device="cpu")
    off = InteractiveSession(small_volume, path, device="cpu", decision_offsets=False)
    assert on.offsets == [0.0, 5.0, -5.0] and off.offsets is None
    for s in (on, off):
        s.add_clicks(1, [(1, 15, 20), (0, 2, 2)])
    mem_on, mem_off = on._memories[1].last.probabilities, off._memories[1].last.probabilities
    np.testing.assert_allclose(mem_on, mem_off, atol=1e-5)  # the memory keeps raw probabilities
    expected = decide_labels(mem_on, [0.0, 5.0, -5.0]).astype(np.uint8)
    expected[15, 20], expected[2, 2] = 1, 0
    np.testing.assert_array_equal(on.get_labels()[1], expected)
    plain = mem_off.argmax(0).astype(np.uint8)
    plain[15, 20], plain[2, 2] = 1, 0
    np.testing.assert_array_equal(off.get_labels()[1], plain)
    assert not (on.get_labels()[1] == 2).any()  # -5 in log space: class 2 loses everywhere


def test_evaluate_records_offsets_and_can_switch_them_off(tmp_path):
    from conftest import tiny_meta_and_model
    from napari_simseg.core.data.phantom import make_phantom_dataset
    from napari_simseg.core.jobs.evaluation import evaluate, format_report
    from napari_simseg.core.network.checkpoint import save_checkpoint

    data = make_phantom_dataset(tmp_path / "ph", n_volumes=1, seed=3, shape=(4, 36, 40), n_tumours=1)
    names = ("background", "organ", "cavity", "tumour", "neighbour")
    meta, model = tiny_meta_and_model(class_names=names)
    meta.decision_offsets = [0.0, 0.0, -1e6, 0.0, 0.0]
    path = save_checkpoint(tmp_path / "cal.safetensors", model, meta)
    on = evaluate(path, data, clicks=[0], noc_clicks=0, device="cpu", progress=False, honour_clicks=False)
    off = evaluate(path, data, clicks=[0], noc_clicks=0, device="cpu", progress=False,
                   decision_offsets=False)
    assert on["decision_offsets"] == meta.decision_offsets and off["decision_offsets"] is None
    assert "decision offsets" in format_report(on) and "decision offsets" not in format_report(off)
    # class "cavity" can never win with -1e6: its Dice is 0 wherever the ground truth has it
    assert on["results"][0]["dice"]["cavity"] in (0.0, None)


def test_calibrate_end_to_end_writes_a_checkpoint_that_evaluate_uses(tmp_path, capsys):
    from safetensors.torch import load_file

    from conftest import tiny_meta_and_model
    from napari_simseg.cli import main
    from napari_simseg.core.data.phantom import make_phantom_dataset
    from napari_simseg.core.network.checkpoint import read_checkpoint_meta, save_checkpoint

    data = make_phantom_dataset(tmp_path / "ph", n_volumes=2, seed=4, shape=(4, 36, 40), n_tumours=1)
    names = ("background", "organ", "cavity", "tumour", "neighbour")
    meta, model = tiny_meta_and_model(class_names=names)
    src = save_checkpoint(tmp_path / "net.safetensors", model, meta)
    out = tmp_path / "calibrated.safetensors"
    assert main(["calibrate", "--checkpoint", str(src), "--data", str(data), "--output", str(out),
                 "--split", "all", "--rounds", "1", "--no-tta", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed.strip().splitlines()[-1])
    cal = read_checkpoint_meta(out)
    assert cal.decision_offsets == summary["offsets"] and len(cal.decision_offsets) == 5
    assert cal.decision_offsets[0] == 0.0
    assert summary["dice_after"] >= summary["dice_before"]
    record = cal.training["calibration"]
    assert record["split"] == "all" and record["volumes"] == 2 and record["rounds"] == [0, 1]
    a, b = load_file(str(src)), load_file(str(out))
    assert all(bool((a[k] == b[k]).all()) for k in a)
    assert "decision offsets:" in printed


def test_calibrate_without_a_saved_split_is_a_one_line_error(tmp_path, capsys):
    from conftest import tiny_meta_and_model
    from napari_simseg.cli import main
    from napari_simseg.core.data.phantom import make_phantom_dataset
    from napari_simseg.core.network.checkpoint import save_checkpoint

    data = make_phantom_dataset(tmp_path / "ph", n_volumes=1, seed=4, shape=(4, 36, 40), n_tumours=1)
    meta, model = tiny_meta_and_model(class_names=("background", "organ", "cavity", "tumour", "neighbour"))
    src = save_checkpoint(tmp_path / "net.safetensors", model, meta)
    out = tmp_path / "calibrated.safetensors"
    assert main(["calibrate", "--checkpoint", str(src), "--data", str(data), "--output", str(out),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("simseg calibrate:") and "needs a saved split" in err and "\n" not in err
    assert not out.exists()


def test_calibrate_chooses_the_network_rounds_that_evaluate_and_the_session_then_use(tmp_path, capsys, monkeypatch):
    """``--no-offsets`` keeps the offsets and only chooses; the choice (both scores, the
    split) is stored in the header, and evaluate and the session read it unless told otherwise.
    The rule: the network's own rounds only when they beat refining every round by more than
    the margin."""
    from conftest import tiny_meta_and_model
    from napari_simseg.cli import main
    from napari_simseg.core.data.phantom import make_phantom_dataset
    from napari_simseg.core.interaction.refinement import Refinement
    from napari_simseg.core.jobs import calibration, evaluation
    from napari_simseg.core.network.checkpoint import read_checkpoint_meta, save_checkpoint, update_checkpoint_meta
    from napari_simseg.core.session.interactive import InteractiveSession

    data = make_phantom_dataset(tmp_path / "ph", n_volumes=2, seed=4, shape=(4, 36, 40), n_tumours=1)
    names = ("background", "organ", "cavity", "tumour", "neighbour")
    meta, model = tiny_meta_and_model(class_names=names)
    meta.simulation, meta.training = "ddg", {"config": {"max_clicks": 2}}
    src = save_checkpoint(tmp_path / "net.safetensors", model, meta)
    out = tmp_path / "chosen.safetensors"
    assert main(["calibrate", "--checkpoint", str(src), "--data", str(data), "--output", str(out), "--split", "all",
                 "--no-offsets", "--choice-rounds", "2", "--choice-slices", "4", "--no-tta", "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    chosen = read_checkpoint_meta(out)
    record = chosen.training["refinement"]
    assert chosen.decision_offsets is None and "calibration" not in chosen.training  # no fit asked for
    assert record["network_rounds"] in (0, 2) and set(record["scores"]) == {"0", "2"}
    assert record["volumes"] == 1 and record["rounds"] == 2 and summary["network_rounds"] == record
    expected = 2 if record["scores"]["2"] > record["scores"]["0"] + calibration.CHOICE_MARGIN else 0
    assert record["network_rounds"] == expected

    training = dict(chosen.training, refinement=dict(record, network_rounds=2))
    forced = update_checkpoint_meta(out, tmp_path / "forced.safetensors", training=training)
    result = evaluation.evaluate(forced, data, clicks=[0, 1], device="cpu", progress=False, tta=False)
    assert result["refinement"]["network_rounds"] == 2
    assert "the network's own labels in rounds 1-2" in evaluation.format_report(result)
    asked = evaluation.evaluate(forced, data, clicks=[0, 1], device="cpu", progress=False, tta=False,
                                refinement=Refinement(network_rounds=0))
    assert asked["refinement"]["network_rounds"] == 0
    plain = evaluation.evaluate(forced, data, clicks=[0, 1], device="cpu", progress=False, tta=False,
                                refinement=Refinement(locality="none", follow_clicks=False, min_lead=0.0, zoom=1.0))
    assert plain["refinement"]["network_rounds"] == 0  # no refinement: every round is the network's anyway
    assert "the network's own labels" not in evaluation.format_report(plain)
    # a slice budget stops after the volume that reaches it (4 slices per volume here)
    assert [evaluation.evaluate(forced, data, clicks=[0], device="cpu", progress=False, tta=False,
                                max_slices=m)["n_volumes"] for m in (3, 4, 5)] == [1, 1, 2]
    volume = np.random.default_rng(0).normal(size=(4, 36, 40)).astype(np.float32)
    assert InteractiveSession(volume, forced, device="cpu").refinement.network_rounds == 2

    # the rule, on made-up scores: the network's rounds must win by more than the margin
    def fake_evaluate(checkpoint, data, refinement, **kw):
        dice = 0.80 + (made_up["gain"] if refinement.network_rounds else 0.0)
        return {"classes": ["bg", "a"], "split": "train", "n_volumes": 3,
                "results": [{"clicks": k, "dice": {"bg": 0.99, "a": dice}} for k in (1, 2)]}

    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    made_up = {}
    for made_up["gain"], rounds in ((0.01, 2), (calibration.CHOICE_MARGIN / 2, 0), (-0.01, 0)):
        assert calibration.choose_network_rounds(forced, data, choice_rounds=2, log=lambda *a: None
                                                 )["network_rounds"] == rounds
    assert calibration.choose_network_rounds(forced, data, choice_rounds=0) is None
    made_up["gain"] = 0.01
    assert calibration.choose_network_rounds(src, data, choice_rounds=2, log=lambda *a: None)["network_rounds"] == 2
    bare = update_checkpoint_meta(src, tmp_path / "bare.safetensors", training={})  # e.g. a weight average
    assert calibration.choose_network_rounds(bare, data, choice_rounds=2, log=lambda *a: None)["network_rounds"] == 3
    plain = update_checkpoint_meta(src, tmp_path / "sdg.safetensors", simulation="sdg")
    assert calibration.choose_network_rounds(plain, data, choice_rounds=2) is None  # no rounds of its own output


def test_the_choice_uses_the_split_found_for_the_source_checkpoint_and_refuses_to_do_nothing(tmp_path, capsys):
    """An output in another folder still chooses on the split saved beside the source
    checkpoint (found before anything is written); with nothing to fit or choose, calibrate
    says so and writes nothing; the trained rounds follow ``ddg_rounds``, else ``max_clicks``."""
    from types import SimpleNamespace

    from conftest import tiny_meta_and_model
    from napari_simseg.cli import main
    from napari_simseg.core.data.phantom import make_phantom_dataset
    from napari_simseg.core.data.splits import save_split
    from napari_simseg.core.jobs.calibration import trained_rounds
    from napari_simseg.core.network.checkpoint import read_checkpoint_meta, save_checkpoint

    data = make_phantom_dataset(tmp_path / "ph", n_volumes=2, seed=4, shape=(4, 36, 40), n_tumours=1)
    names = ("background", "organ", "cavity", "tumour", "neighbour")
    meta, model = tiny_meta_and_model(class_names=names)
    meta.simulation, meta.training = "ddg", {"config": {"max_clicks": 2}}
    run = tmp_path / "run"
    run.mkdir()
    src = save_checkpoint(run / "best.safetensors", model, meta)
    cases = sorted(p.name.split(".")[0] for p in (data / "imagesTr").iterdir())
    save_split(run / "split.json", {"train": cases[:1], "val": cases[1:], "test": []})
    out = tmp_path / "elsewhere" / "chosen.safetensors"
    assert main(["calibrate", "--checkpoint", str(src), "--data", str(data), "--output", str(out), "--no-offsets",
                 "--choice-rounds", "1", "--no-tta", "--device", "cpu"]) == 0
    record = read_checkpoint_meta(out).training["refinement"]
    assert record["split"] == "train" and record["volumes"] == 1
    assert sorted(p.name for p in out.parent.iterdir()) == ["chosen.safetensors"]  # nothing staged left behind

    sdg = save_checkpoint(run / "sdg.safetensors", model, replace_meta(meta, simulation="sdg"))
    nothing = tmp_path / "nothing.safetensors"
    assert main(["calibrate", "--checkpoint", str(sdg), "--data", str(data), "--output", str(nothing),
                 "--no-offsets", "--device", "cpu"]) == 2
    assert "nothing to do" in capsys.readouterr().err and not nothing.exists()
    with pytest.raises(ValueError, match="max_slices"):
        from napari_simseg.core.jobs.evaluation import evaluate

        evaluate(src, data, clicks=[0], device="cpu", progress=False, max_slices=0)

    def header(simulation, config):
        return SimpleNamespace(simulation=simulation, training={"config": config})

    assert trained_rounds(header("ddg", {"max_clicks": 3, "ddg_rounds": 5})) == 5
    assert trained_rounds(header("ddg", {"max_clicks": 2, "ddg_rounds": None})) == 2
    assert trained_rounds(header("ddg", {})) == 3 and trained_rounds(header("sdg", {"max_clicks": 3})) == 0


def replace_meta(meta, **changes):
    import copy

    new = copy.deepcopy(meta)
    for key, value in changes.items():
        setattr(new, key, value)
    return new
