"""The benchmark's figures are printed, never asserted; here only its shape and sanity."""

import json
from pathlib import Path

from napari_simseg.cli import main


def test_inference_benchmark_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["benchmark", "--device", "cpu", "--size", "64", "--encoder", "resnet18",
                 "--repeats", "2", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res) >= {"device", "size", "sim_ms", "unet_ms", "ratio", "session_overhead_ms"}
    assert res["device"] == "cpu" and res["size"] == 64
    for k in ("sim_ms", "unet_ms"):
        assert set(res[k]) == {"mean", "std", "median"} and res[k]["median"] > 0
    assert res["ratio"] > 0
    assert "ratio" in capsys.readouterr().out


def test_training_benchmark_json(tmp_path):
    out = tmp_path / "t.json"
    assert main(["benchmark", "--train", "--device", "cpu", "--size", "32", "--encoder", "resnet18",
                 "--batch-size", "2", "--repeats", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res) >= {"device", "ddg_step_ms", "sdg_step_ms", "ratio", "recipe"}
    assert res["ddg_step_ms"] > 0 and res["sdg_step_ms"] > 0
    # the default recipe for radiograph shapes, timed without data: working size 256, crops
    recipe = res["recipe"]
    assert recipe["working_size"] == 256 and recipe["item_shape"] == [160, 160]
    assert recipe["steps_per_second"] > 0 and "first_useful" not in recipe


def test_recipe_benchmark_times_the_recipe_and_stops_at_the_first_useful_checkpoint(tmp_path, capsys):
    from napari_simseg.core.data.phantom import make_phantom_dataset

    data = make_phantom_dataset(tmp_path / "data", n_volumes=4, seed=3, shape=(4, 40, 44), n_tumours=2)
    out = tmp_path / "r.json"
    # any checkpoint is "useful" at Dice 0: the run must stop after its first epoch, not use its budget
    assert main(["benchmark", "--train", "--recipe", "--data", str(data), "--device", "cpu", "--max-minutes", "2",
                 "--useful-dice", "0", "--out", str(tmp_path / "run"), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert Path(res["run"]) == tmp_path / "run"
    assert res["working_size"] is None and res["batch_size"] >= 4 and res["seconds_per_step"] > 0
    assert res["steps_per_second"] > 0
    assert res["first_useful"]["epoch"] == 1 and res["minutes_run"] < 2
    history = json.loads((Path(res["run"]) / "log.json").read_text())
    assert len(history) == 1 and history[0]["epoch"] == 1
    assert "first checkpoint with validation Dice >= 0.0" in capsys.readouterr().out


def test_recipe_benchmark_without_out_leaves_no_run_behind(tmp_path, monkeypatch):
    import tempfile

    from napari_simseg.core.data.phantom import make_phantom_dataset

    data = make_phantom_dataset(tmp_path / "data", n_volumes=4, seed=3, shape=(4, 40, 44), n_tumours=2)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "r.json"
    assert main(["benchmark", "--train", "--recipe", "--data", str(data), "--device", "cpu", "--max-minutes", "2",
                 "--useful-dice", "0", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["first_useful"]["epoch"] == 1 and res["run"] is None
    assert not any(p.name.startswith("simseg-bench-") for p in scratch.iterdir())
