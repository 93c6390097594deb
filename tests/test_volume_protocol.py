"""The volume protocol (simseg evaluate --protocol volume) on a tiny phantom with a tiny
random model: the mechanics, not the accuracy."""

import json

import numpy as np
import pytest

from napari_simseg.core.interaction.virtual_user import EvaluationUser
from napari_simseg.core.jobs.evaluation import evaluate, format_report, write_clicks_plot
from napari_simseg.core.jobs.volume_protocol import run_volume_protocol
from napari_simseg.core.network.predictor import Predictor
from napari_simseg.core.session.interactive import InteractiveSession


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory):
    from napari_simseg.core.data.phantom import make_phantom_dataset

    root = tmp_path_factory.mktemp("phantom_volume")
    make_phantom_dataset(root, n_volumes=2, seed=3, shape=(5, 40, 44), n_tumours=2)
    return root


@pytest.fixture
def phantom_checkpoint(make_checkpoint):
    return make_checkpoint(class_names=("background", "organ", "cavity", "tumour", "neighbour"))


def test_volume_protocol_schema_and_clicks(phantom_data, phantom_checkpoint, tmp_path):
    res = evaluate(phantom_checkpoint, phantom_data, clicks=[0, 1, 3], protocol="volume", device="cpu",
                   progress=False)
    assert res["protocol"] == "volume" and res["n_volumes"] == 2
    assert [r["clicks"] for r in res["results"]] == [0, 1, 3]
    per_volume = [r["clicks_per_volume"] for r in res["results"]]
    assert per_volume[0] == 0 and 0 < per_volume[1] <= per_volume[2] <= 3 * 5  # at most one click per class
    for case in res["volumes"]:
        counts = res["per_volume"][case]["clicks"]
        assert counts["0"] == 0 and counts["1"] <= counts["3"]
    for r in res["results"]:
        assert all(d is None or 0.0 <= d <= 1.0 for d in r["dice"].values())
    report = format_report(res)
    assert "volume protocol" in report and " 3 rounds" in report and "clicks/volume" in report
    json.dumps(res)
    per_slice = evaluate(phantom_checkpoint, phantom_data, clicks=[0, 1], device="cpu", progress=False)
    assert per_slice["protocol"] == "slice" and per_slice["results"][0]["clicks_per_volume"] == 0
    assert per_slice["results"][1]["clicks_per_volume"] > 0
    assert write_clicks_plot([per_slice, res], tmp_path / "c.png").is_file()


def test_each_step_corrects_the_worst_slice_and_propagates(phantom_checkpoint):
    from napari_simseg.core.data.phantom import make_phantom

    image, gt, _ = make_phantom(shape=(6, 40, 44), seed=1, n_tumours=2)
    session = InteractiveSession(image, Predictor(phantom_checkpoint, device="cpu"))
    seen = []

    def on_step(k, run):
        seen.append((k, run.outputs[-1].copy()))

    run = run_volume_protocol(session, gt, 3, on_step=on_step)
    assert len(run.outputs) == 4 and [k for k, _ in seen] == [0, 1, 2, 3]
    for k, z in enumerate(run.slices, 1):
        errors = (run.outputs[k - 1] != gt).sum((1, 2))
        assert z == int(np.argmax(errors))  # the worst slice of the step before
        assert session.n_rounds(z) >= 1 and not session.propagated.get(z)
    assert run.clicks == sorted(run.clicks)
    clicked = sum(len(e["clicks"]) for e in session.log if e["action"] == "clicks")
    assert run.clicks[-1] == clicked
    assert len(run.propagated) == 3 and all(n >= 0 for n in run.propagated)


def test_a_perfect_volume_takes_no_clicks(phantom_checkpoint):
    class Perfect(Predictor):
        def predict(self, inputs, state=None):
            arr = np.asarray(inputs)
            shape = (5, *arr.shape[-2:]) if arr.ndim == 3 else (arr.shape[0], 5, *arr.shape[-2:])
            out = np.zeros(shape, np.float32)
            out[..., 0, :, :] = 1
            return out, None

    session = InteractiveSession(np.random.default_rng(0).normal(size=(3, 20, 20)),
                                 Perfect(phantom_checkpoint, device="cpu"))
    run = run_volume_protocol(session, np.zeros((3, 20, 20), int), 2, user=EvaluationUser(5))
    assert run.clicks == [0, 0, 0] and run.slices == [-1, -1]
    with pytest.raises(ValueError, match="does not fit"):
        run_volume_protocol(session, np.zeros((2, 20, 20), int), 1)


def test_volume_protocol_refusals_and_cli(phantom_data, phantom_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="protocol must be"):
        evaluate(phantom_checkpoint, phantom_data, clicks=[0], protocol="3d", progress=False)
    with pytest.raises(ValueError, match="--protocol volume"):
        evaluate(phantom_checkpoint, phantom_data, clicks=[0], protocol="volume", method="random_walker",
                 progress=False)
    from napari_simseg.cli import main

    rc = main(
        [
            "evaluate",
            "--checkpoint",
            str(phantom_checkpoint),
            "--data",
            str(phantom_data),
            "--protocol",
            "volume",
            "--clicks",
            "0,1",
            "--device",
            "cpu",
            "--max-volumes",
            "1",
            "--json",
            str(tmp_path / "v.json"),
        ]
    )
    assert rc == 0
    doc = json.loads((tmp_path / "v.json").read_text())
    assert doc["protocol"] == "volume" and doc["n_volumes"] == 1
