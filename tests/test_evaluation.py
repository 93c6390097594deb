import json

import numpy as np
import pytest

from napari_simseg.core.jobs.evaluation import evaluate, format_report, write_plot, write_table


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory):
    from napari_simseg.core.data.phantom import make_phantom_dataset

    root = tmp_path_factory.mktemp("phantom_eval")
    make_phantom_dataset(root, n_volumes=2, seed=5, shape=(4, 40, 44), n_tumours=2)
    return root


@pytest.fixture
def phantom_checkpoint(make_checkpoint):
    return make_checkpoint(class_names=("background", "organ", "cavity", "tumour", "neighbour"))


def test_schema_and_outputs(phantom_data, phantom_checkpoint, tmp_path):
    res = evaluate(phantom_checkpoint, phantom_data, clicks=[0, 1, 3], noc_clicks=4, device="cpu", progress=False)
    assert res["split"] == "all" and res["n_volumes"] == 2
    assert res["classes"] == ["background", "organ", "cavity", "tumour", "neighbour"]
    assert [r["clicks"] for r in res["results"]] == [0, 1, 3]
    for r in res["results"]:
        assert set(r["dice"]) == set(res["classes"]) == set(r["iou"])
        for d in r["dice"].values():
            assert d is None or 0.0 <= d <= 1.0
    assert res["latency_ms"]["mean"] > 0
    assert res["noc"]["max_clicks"] == 4
    for thr in ("0.85", "0.9", "0.95"):
        for c in res["classes"]:
            entry = res["noc"][thr][c]
            assert entry["n"] == 0 or 1 <= entry["mean"] <= 4
            assert 0 <= entry["failures"] <= entry["n"]
    # every round after the first of each slice is scored against the one before it
    rounds = res["rounds"]
    assert [r["round"] for r in rounds["per_round"]] == [1, 2, 3, 4]
    assert rounds["first_3"]["n"] == sum(r["n"] for r in rounds["per_round"][:3])
    assert rounds["all"]["n"] == sum(r["n"] for r in rounds["per_round"]) > 0
    for s in (rounds["all"], *rounds["per_round"]):
        if s["n"]:
            assert 0 <= s["worse"] <= 1 and s["removed"] <= 1 and 0 <= s["clicked_removed"] <= 1
    assert "made their slice worse" in format_report(res)
    json.dumps(res)  # serialisable
    table = write_table([res], tmp_path / "t.md")
    text = table.read_text()
    assert text.count("\n") == 2 + 3 and "organ IoU" in text
    png = write_plot([res], tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "NoC@85" in format_report(res)


def test_random_walker_improves_with_clicks(phantom_data):
    res = evaluate(method="random_walker", data=phantom_data, clicks=[1, 4], noc_clicks=0, progress=False)
    d1 = res["results"][0]["dice"]
    d4 = res["results"][1]["dice"]
    assert d4["organ"] > d1["organ"]
    assert d4["background"] > 0.9


def test_mismatched_classes_refused(phantom_data, tiny_checkpoint):
    from napari_simseg.core.network.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="trained for classes"):
        evaluate(tiny_checkpoint, phantom_data, progress=False)


def test_saved_split_is_used(phantom_data, phantom_checkpoint, tmp_path):
    from napari_simseg.core.data.datasets import discover_dataset
    from napari_simseg.core.data.splits import save_split

    ids = discover_dataset(phantom_data).case_ids
    (tmp_path / "elsewhere").mkdir()
    split_file = tmp_path / "elsewhere" / "split.json"
    save_split(split_file, {"train": ids[:1], "val": ids[1:], "test": []})
    res = evaluate(phantom_checkpoint, phantom_data, split_file=str(split_file), clicks=[0], noc_clicks=0,
                   device="cpu", progress=False)
    assert res["split"] == "val" and res["volumes"] == ids[1:]
    with pytest.raises(ValueError, match=f"the split file {split_file} has no 'test' volumes"):
        evaluate(phantom_checkpoint, phantom_data, split_file=str(split_file), split="test", clicks=[0],
                 noc_clicks=0, progress=False)
    with pytest.raises(ValueError, match="needs a saved split"):
        evaluate(phantom_checkpoint, phantom_data, split="test", clicks=[0], noc_clicks=0, progress=False)


def test_a_run_split_applies_only_to_its_own_data(phantom_data, phantom_checkpoint, tmp_path, capsys):
    """``evaluate --checkpoint RUN/best --data OTHER`` (issue 34, point 4): the split.json
    beside the checkpoint is the run's, so another folder is evaluated whole (said), even
    when its case names overlap the split's; the run's own data still gets the split."""
    from napari_simseg.cli import main
    from napari_simseg.core.data.datasets import discover_dataset
    from napari_simseg.core.data.phantom import make_phantom_dataset
    from napari_simseg.core.data.splits import save_split
    from napari_simseg.core.network.checkpoint import update_checkpoint_meta

    ids = discover_dataset(phantom_data).case_ids
    run = tmp_path / "run"
    best = update_checkpoint_meta(phantom_checkpoint, run / "best.safetensors", training={"data": str(phantom_data)})
    save_split(run / "split.json", {"train": ids[:1], "val": ids[1:], "test": []})
    other = tmp_path / "other"
    make_phantom_dataset(other, n_volumes=3, seed=9, shape=(4, 40, 44), n_tumours=1)
    other_ids = discover_dataset(other).case_ids
    assert set(ids) < set(other_ids)  # numbered alike: every name of the split is there too
    lines = []
    res = evaluate(best, other, clicks=[0], device="cpu", progress=False, log=lines.append)
    assert res["split"] == "all" and res["volumes"] == other_ids and res["split_file"] is None
    assert any(str(run / "split.json") in line and "every volume here is used" in line for line in lines), lines
    # the run's own data: its validation volume
    res = evaluate(best, phantom_data, clicks=[0], device="cpu", progress=False, log=lines.append)
    assert res["split"] == "val" and res["volumes"] == ids[1:] and res["split_file"] == str(run / "split.json")
    # told otherwise: the split's cases that are here
    res = evaluate(best, other, split_file=str(run / "split.json"), clicks=[0], device="cpu", progress=False)
    assert res["split"] == "val" and res["volumes"] == ids[1:]
    # the command line, as a user types it: rc 0, every volume
    assert main(["evaluate", "--checkpoint", str(best), "--data", str(other), "--clicks", "0", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "every volume here is used" in out and "3 volumes (all)" in out
    # a split asked for where none applies: the error says --split all
    with pytest.raises(ValueError, match=r"--split val needs a saved split .* use --split all"):
        evaluate(best, other, split="val", clicks=[0], device="cpu", progress=False, log=lambda m: None)


def test_split_errors_name_the_split_file_and_split_all(phantom_data, phantom_checkpoint, tmp_path):
    from napari_simseg.core.data.splits import save_split

    foreign = save_split(tmp_path / "foreign.json", {"train": ["x1"], "val": ["x2"], "test": []})
    with pytest.raises(ValueError, match=rf"split file {foreign} names none of the 2 cases .* --split all"):
        evaluate(phantom_checkpoint, phantom_data, split_file=str(foreign), clicks=[0], progress=False)
    ids = sorted(p.name.split(".")[0] for p in (phantom_data / "labelsTr").iterdir())
    own = save_split(tmp_path / "own.json", {"train": ids, "val": [], "test": []})
    with pytest.raises(ValueError, match=rf"the split file {own} has no 'val' volumes in .*; use --split all"):
        evaluate(phantom_checkpoint, phantom_data, split_file=str(own), split="val", clicks=[0], progress=False)


def test_cli_evaluate_writes_files(phantom_data, phantom_checkpoint, tmp_path, capsys):
    from napari_simseg.cli import main

    rc = main(["evaluate", "--checkpoint", str(phantom_checkpoint), "--data", str(phantom_data),
               "--clicks", "0,2", "--noc-clicks", "2", "--device", "cpu", "--json", str(tmp_path / "r.json"),
               "--plot", str(tmp_path / "r.png"), "--table", str(tmp_path / "r.md")])
    assert rc == 0
    assert json.loads((tmp_path / "r.json").read_text())["results"][1]["clicks"] == 2
    assert (tmp_path / "r.png").is_file() and (tmp_path / "r.md").is_file()
    assert "clicks" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
    from napari_simseg.cli import main

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"junk")
    assert main(["evaluate", "--checkpoint", str(bad), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("simseg evaluate:") and "\n" not in err


def test_honour_clicks_is_recorded_and_can_be_switched_off(phantom_data, phantom_checkpoint):
    on = evaluate(phantom_checkpoint, phantom_data, clicks=[0, 2], noc_clicks=0, device="cpu", progress=False)
    off = evaluate(
        phantom_checkpoint, phantom_data, clicks=[0, 2], noc_clicks=0, device="cpu", progress=False, honour_clicks=False
    )
    assert on["honour_clicks"] is True and off["honour_clicks"] is False
    assert on["results"][0] == off["results"][0]  # 0 clicks: nothing to honour
    assert "not honoured" in format_report(off) and "not honoured" not in format_report(on)


def test_flip_averaging_is_recorded_and_can_be_switched_off(phantom_data, phantom_checkpoint):
    on = evaluate(phantom_checkpoint, phantom_data, clicks=[0], noc_clicks=0, device="cpu", progress=False)
    off = evaluate(phantom_checkpoint, phantom_data, clicks=[0], noc_clicks=0, device="cpu", progress=False, tta=False)
    assert on["tta"] is True and off["tta"] is False
    assert "no flip averaging" in format_report(off) and "no flip averaging" not in format_report(on)
    rw = evaluate(None, phantom_data, clicks=[0, 1], method="random_walker", noc_clicks=0, progress=False)
    assert rw["tta"] is None and rw["honour_clicks"] is None


def test_per_volume_dice_and_its_standard_error_agree_with_the_means(phantom_data, phantom_checkpoint):
    res = evaluate(phantom_checkpoint, phantom_data, clicks=[0, 2], noc_clicks=0, device="cpu", progress=False)
    assert list(res["per_volume"]) == res["volumes"]
    for row in res["results"]:
        k = str(row["clicks"])
        for c in res["classes"]:
            values = [v["dice"][k][c] for v in res["per_volume"].values() if v["dice"][k][c] is not None]
            if not values:
                assert row["dice"][c] is None and row["dice_sem"][c] is None
                continue
            assert row["dice"][c] == pytest.approx(np.mean(values), abs=1e-4)
            if len(values) < 2:
                assert row["dice_sem"][c] is None  # one volume: no spread to estimate
            else:
                assert row["dice_sem"][c] == pytest.approx(np.std(values, ddof=1) / np.sqrt(len(values)), abs=1e-4)
    # the volumes differ, so some class has a non-zero spread: the check above is not vacuous
    assert any(s for row in res["results"] for s in row["dice_sem"].values())
