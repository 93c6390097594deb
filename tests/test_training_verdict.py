"""A run that has not learnt says so (issue 34, point 3): classes below a validation Dice of
0.1 named with the budget the run would need, printed last and recorded in ``log.json``;
the progress bar counts the steps the time schedule really runs."""

from __future__ import annotations

import io
import json
import math
import types

import pytest

from napari_simseg.core.jobs import training_records
from napari_simseg.core.jobs.recipe import LEARNING_STEPS
from napari_simseg.core.jobs.training_records import WEAK_DICE, report_run
from training_helpers import make_phantom_training_data, tiny_config


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory):
    return make_phantom_training_data(tmp_path_factory.mktemp("phantom"))


def _finished_run(tmp_path, dice, rows, **cfg):
    """A run's folder with a best checkpoint whose validation scored ``dice`` at 3 clicks."""
    from conftest import tiny_meta_and_model
    from napari_simseg.core.network.checkpoint import save_checkpoint

    meta, model = tiny_meta_and_model(class_names=("background", "liver", "spleen", "pancreas"))
    meta.training = {"val": {"0": {"dice": [0.9, 0.0, 0.0, 0.0]}, "3": {"dice": dice}}}
    save_checkpoint(tmp_path / "best.safetensors", model, meta)
    options = {"simulation": "ddg", "val_clicks": 3, "data": "DATA", "time_schedule": False, **cfg}
    return types.SimpleNamespace(cfg=types.SimpleNamespace(**options), out=tmp_path,
                                 class_names=list(meta.class_names)), [dict(r) for r in rows]


def test_classes_not_learnt_are_named_with_the_budget_they_would_need(tmp_path):
    # 40 steps of 6 s in a 5-minute run (a tenth of it validating)
    rows = [{"epoch": k, "steps": 4, "train_seconds": 24.0, "minutes": 0.44 * k} for k in range(1, 11)]
    run, history = _finished_run(tmp_path, [0.95, 0.91, 0.0, 0.062], rows)
    lines = report_run(run, history, planned_steps=40)
    assert len(lines) == 2 and all(line.startswith("WARNING: ") for line in lines)
    assert "below 0.1 at 3 clicks for spleen (0.000), pancreas (0.062)" in lines[0] and "liver" not in lines[0]
    # the recipe's steps at 6.0 s each, 10 % more for validation (264 s in all for 240 s of
    # steps), an 8 % margin, rounded up to 5 minutes: about 2 hours
    needed = 5 * math.ceil(math.ceil(LEARNING_STEPS * 6.0 * (4.4 * 60 / 240) / 60 / 0.92) / 5)
    assert "made 40 optimisation steps (6.0 s each here)" in lines[1]
    assert f"--max-minutes {needed}" in lines[1] and 100 <= needed <= 150
    logged = json.loads((tmp_path / "log.json").read_text())
    assert logged[-1]["warnings"] == lines and "warnings" not in logged[0]
    assert logged[-1]["verdict"] == {"weak_classes": {"spleen": 0.0, "pancreas": 0.062}, "steps": 40,
                                     "planned_steps": 40, "seconds_per_step": 6.0, "minutes_needed": needed}
    assert "warnings" not in (tmp_path / "log.csv").read_text().splitlines()[0]


def test_enough_steps_point_at_the_labels_and_a_good_run_says_nothing(tmp_path):
    rows = [{"epoch": 1, "steps": 2000, "train_seconds": 600.0, "minutes": 10.5}]
    run, history = _finished_run(tmp_path, [0.95, 0.91, 0.05, 0.8], rows)
    lines = report_run(run, history)
    assert "for spleen (0.050)" in lines[0] and "more than the default recipe needed" in lines[1]
    assert "simseg check-data DATA" in lines[1]
    # every class learnt: no warning, and a resumed run's earlier warning is gone from log.json
    run, history = _finished_run(tmp_path, [0.95, 0.91, 0.5, 0.8], rows)
    history[-1]["warnings"] = ["WARNING: stale"]
    assert report_run(run, history) == []
    assert "warnings" not in json.loads((tmp_path / "log.json").read_text())[-1]
    # a class absent from the validation slices (no Dice) is not "not learnt"
    run, history = _finished_run(tmp_path, [0.95, 0.91, float("nan"), 0.8], rows)
    assert report_run(run, history) == []


def test_a_time_schedule_that_ran_far_fewer_steps_than_planned_says_so(tmp_path):
    rows = [{"epoch": k, "steps": 3, "train_seconds": 30.0, "minutes": 0.5 * k} for k in range(1, 3)]
    run, history = _finished_run(tmp_path, [0.95, 0.9, 0.8, 0.7], rows, time_schedule=True)
    lines = report_run(run, history, planned_steps=20)
    assert len(lines) == 1 and "let this run make 6 of the 20 optimisation steps it planned" in lines[0]


def test_the_command_prints_the_warning_last_on_stderr_with_rc_0(phantom_data, tmp_path, capsys, monkeypatch):
    """Through ``simseg train``: the warnings come after the epochs on stderr, the checkpoint's
    path stays the last line of stdout, the exit status is 0 (the checkpoint is whole)."""
    from napari_simseg.cli import main

    # every class counts as not learnt, whatever this tiny run reached
    monkeypatch.setattr(training_records, "WEAK_DICE", 1.01)
    out = tmp_path / "run"
    monkeypatch.chdir(phantom_data.parent)  # the data named relative to the working folder
    rc = main(["train", "--data", phantom_data.name, "--out", str(out), "--encoder", "resnet18",
               "--encoder-depth", "3", "--decoder-channels", "16,8,8", "--epochs", "1", "--steps-per-epoch", "2",
               "--batch-size", "4", "--device", "cpu", "--no-progress", "--val-clicks", "1"])
    captured = capsys.readouterr()
    assert rc == 0
    assert captured.out.strip().splitlines()[-1] == str(out / "best.safetensors")
    warnings = [line for line in captured.err.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 2 and "the network has not learnt them" in warnings[0]
    assert "made 2 optimisation steps" in warnings[1] and "--max-minutes" in warnings[1]
    assert json.loads((out / "log.json").read_text())[-1]["warnings"] == warnings
    assert WEAK_DICE == 0.1
    # the checkpoint records its data folder wherever evaluation later runs from
    from napari_simseg.core.network.checkpoint import read_checkpoint_meta

    assert read_checkpoint_meta(out / "best.safetensors").training["data"] == str(phantom_data.resolve())


def test_the_progress_bar_counts_the_steps_the_clock_runs(phantom_data, tmp_path, monkeypatch):
    """With a time schedule the planned steps times ten are only a bound: the bar's total is
    the plan's count, then what the epoch's clock holds, and the steps run when it ends."""
    import tqdm.auto

    from napari_simseg.core.jobs.training import TIME_SCHEDULE_HEADROOM, train

    bars = []

    class Recorder(tqdm.auto.tqdm):
        def __init__(self, *args, **kwargs):
            self.totals = [kwargs["total"]]
            super().__init__(*args, **{**kwargs, "file": io.StringIO()})
            bars.append(self)

        def refresh(self, *args, **kwargs):
            self.totals.append(self.total)
            return super().refresh(*args, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    cfg = tiny_config(phantom_data, tmp_path / "run", epochs=2, plan_steps=True, time_schedule=True,
                      max_minutes=0.4, progress=True, lr_schedule="onecycle")
    train(cfg.validate(), log=lambda m: None)
    rows = json.loads((tmp_path / "run" / "log.json").read_text())
    planned = cfg.steps_per_epoch // TIME_SCHEDULE_HEADROOM
    assert len(bars) == len(rows) == 2
    for bar, row in zip(bars, rows):
        assert bar.totals[0] == planned  # not the bound, ten times as many
        assert bar.totals[-1] == row["steps"] == bar.n  # the epoch ran what the bar counted
        assert max(bar.totals) <= cfg.steps_per_epoch
