"""The bundled demo: model file, sample, `simseg demo` headless and in napari."""

import pytest

from napari_simseg.core.io.resources import DEMO_CHECKPOINT, SAMPLE_DIR


def test_bundled_demo_model_is_small_and_self_describing():
    from napari_simseg.core.network.checkpoint import load_checkpoint

    assert DEMO_CHECKPOINT.stat().st_size <= 30 * 1024 * 1024
    ck = load_checkpoint(DEMO_CHECKPOINT)
    assert ck.meta.class_names == ["background", "Anterior", "Posterior"]
    assert (ck.meta.memory, ck.meta.depth, ck.meta.simulation) == ("sim", 3, "ddg")
    assert ck.model.config.decoder == "convlstm"


def test_sample_is_in_the_demo_models_validation_split():
    from napari_simseg.core.data.datasets import discover_dataset
    from napari_simseg.core.network.checkpoint import read_checkpoint_meta

    meta = read_checkpoint_meta(DEMO_CHECKPOINT)
    val = set(meta.training["val_volumes"])
    train = set(meta.training["train_volumes"])
    ids = discover_dataset(SAMPLE_DIR).case_ids
    assert ids and set(ids) <= val and not set(ids) & train


def test_demo_headless_prints_dice_against_clicks(capsys):
    from napari_simseg.cli import main

    assert main(["demo", "--headless", "--device", "cpu", "--clicks", "0,3"]) == 0
    out = capsys.readouterr().out
    assert "Anterior" in out and "Posterior" in out
    rows = [line for line in out.splitlines() if "clicks" in line and line.strip()[0].isdigit()]
    assert len(rows) == 2
    header = next(line for line in out.splitlines() if line.startswith("Dice"))
    n_classes = len(header.split()) - 1
    cells = rows[1].split()
    assert cells[:2] == ["3", "clicks"]
    dice3 = [float(v) for v in cells[2 : 2 + n_classes]]
    assert float(cells[2 + n_classes]) > 0  # clicks per volume, after the Dice columns
    assert all(d > 0.5 for d in dice3)  # a trained model, not a random one


@pytest.mark.gui
def test_demo_gui_opens_sample_model_and_widget(make_napari_viewer, monkeypatch):
    import napari

    from napari_simseg import demo

    viewer = make_napari_viewer()
    monkeypatch.setattr(napari, "Viewer", lambda *a, **k: viewer)
    monkeypatch.setattr(napari, "run", lambda *a, **k: None)
    demo.run_gui(checkpoint="demo", device="cpu")
    names = [layer.name for layer in viewer.layers]
    assert any(n.startswith("hippocampus") for n in names)
    assert "SimSeg labels" in names and "Anterior clicks" in names


def test_evaluating_the_bundled_model_names_its_row_demo():
    from napari_simseg.core.jobs.evaluation import evaluate

    res = evaluate("demo", SAMPLE_DIR, split="all", clicks=[0], noc_clicks=0, max_volumes=1,
                   device="cpu", progress=False, tta=False)
    assert res["name"] == "demo"  # not the package folder the file happens to live in
    assert list(res["per_volume"]) == res["volumes"] and res["n_volumes"] == 1
