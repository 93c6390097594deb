"""The benchmark's figures are printed, never asserted; here only its shape and sanity."""

import json

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
    assert set(res) >= {"device", "ddg_step_ms", "sdg_step_ms", "ratio"}
    assert res["ddg_step_ms"] > 0 and res["sdg_step_ms"] > 0
