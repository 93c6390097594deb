"""Teaching (learn while annotating), core side: which slices count as labelled, the
held-back split, the packed data, the teaching recipe, and a teaching process on a tiny
network that finishes (and the session switching to its checkpoint) or is cancelled."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_simseg.core.session.teaching import (
    TeachCase,
    TeachTask,
    accepted_slices,
    init_kind,
    layout_of,
    pack_cases,
    split_held_back,
    start_teaching,
)

CLASSES = ("background", "a", "b")
# a teaching run of a few steps: the process, the trainer and the files, not the learning
QUICK = dict(epochs=2, steps_per_epoch=2, plan_steps=False, time_schedule=False, val_clicks=1, batch_size=4,
             val_batch_size=8)


def _volume(z=8):
    rng = np.random.default_rng(0)
    vol = rng.normal(100, 20, size=(z, 40, 48)).astype(np.float32)
    vol[:, 10:25, 12:30] += 80
    gt = np.zeros((z, 40, 48), np.uint8)
    gt[:, 10:25, 12:30] = 1
    gt[:, 30:36, 5:10] = 2
    return vol, gt


@pytest.fixture
def session(make_checkpoint):
    from napari_simseg.core.session.interactive import InteractiveSession

    vol, _ = _volume()
    return InteractiveSession(vol, str(make_checkpoint(class_names=CLASSES, context_slices=1)), device="cpu")


def test_accepted_slices_are_clicked_kept_propagated_and_hand_set(session):
    _, gt = _volume()
    session.set_labels(0, gt[0])  # painted by hand
    session.add_clicks(2, [(1, 15, 20)])  # clicked
    session.seeded_round(3, [(1, 15, 20)], source=2)  # a propagated (kept) slice
    session.predict_auto(5)  # automatic only: nobody checked it
    session.add_clicks(6, [(1, 15, 20)])
    session.undo(6)  # its only round undone: shows nothing of the user's
    assert accepted_slices(session) == [0, 2, 3]
    assert accepted_slices(session, painted=[7]) == [0, 2, 3, 7]  # painted in a viewer
    assert accepted_slices(session, mode="edited") == [0, 2]  # without the propagated slice
    session.undo(3)  # the propagation undone: no longer accepted
    assert accepted_slices(session) == [0, 2]
    with pytest.raises(ValueError, match="accepted"):
        accepted_slices(session, mode="all")


def _case(cid, slices, z=8):
    vol, gt = _volume(z)
    return TeachCase(cid, vol[None], gt, list(slices))


def test_held_back_slices_are_a_fifth_evenly_spread_and_only_with_enough_units():
    split = split_held_back([_case("v", range(10), z=10)])
    assert split.held_back == {"v": [2, 7]} and split.train["v"] == [0, 1, 3, 4, 5, 6, 8, 9]
    assert split.validation == split.held_back
    few = split_held_back([_case("v", [1, 4, 6])])
    assert few.held_back == {} and few.validation == few.train == {"v": [1, 4, 6]}
    # several images: whole images are held back
    cases = [_case(f"c{i}", [0, 3]) for i in range(6)]
    split = split_held_back(cases)
    assert list(split.held_back) == ["c3"] and split.held_back["c3"] == [0, 3]
    assert sorted(split.train) == ["c0", "c1", "c2", "c4", "c5"]
    assert split_held_back([_case("a", [1]), _case("b", []), _case("c", [2])]).train == {"a": [1], "c": [2]}


def test_packed_data_holds_the_labelled_slices_with_their_context_and_nothing_else():
    case = _case("v", [1, 2, 6], z=10)
    case.labels[4] = 2  # an unaccepted slice's labels must not travel
    split = split_held_back([case])  # 3 slices: nothing held back
    arrays, parts = pack_cases([case], split, context=1)
    assert [(p["id"], p["first"], p["train"]) for p in parts] == [("v@0", 0, [1, 2]), ("v@5", 5, [1])]
    assert arrays["image0"].shape == (1, 4, 40, 48) and arrays["image1"].shape == (1, 3, 40, 48)
    np.testing.assert_array_equal(arrays["image0"], case.image[:, 0:4])
    np.testing.assert_array_equal(arrays["labels0"][1], case.labels[1])
    assert not arrays["labels0"][0].any() and not arrays["labels0"][3].any()  # slices 0 and 3: context only
    assert arrays["labels0"].dtype == np.uint8


def test_the_teaching_recipe_keeps_what_the_session_needs(make_checkpoint):
    from napari_simseg.core.io.resources import DEMO_CHECKPOINT
    from napari_simseg.core.jobs.teach_worker import FINE_TUNE_LR, teaching_options
    from napari_simseg.core.network.checkpoint import read_checkpoint_meta

    base = read_checkpoint_meta(make_checkpoint(class_names=CLASSES, context_slices=2, radius=1))
    shapes = [(8, 40, 48)]
    assert init_kind(base, CLASSES, ["image"]) == "finetune"
    opts = teaching_options(CLASSES, ["image"], shapes, 3.0, "finetune", base)
    assert opts["lr"] == FINE_TUNE_LR and opts["context_slices"] == 2 and opts["click_radius"] == 1
    assert opts["decoder_channels"] == list(base.model["decoder_channels"]) and opts["encoder_depth"] == 3
    # a fresh network keeps a session's memory layout, with the recipe's network and rate
    layout = layout_of(base)
    fresh = teaching_options(CLASSES, ["image"], shapes, 3.0, "fresh", None, layout)
    assert fresh["context_slices"] == 2 and fresh["lr"] == 1e-3 and fresh["encoder_depth"] == 5
    # transfer from the bundled model (other classes): its encoder and decoder, this data's resolution
    demo = read_checkpoint_meta(DEMO_CHECKPOINT)
    assert init_kind(demo, ("background", "liver"), ["image"]) == "transfer"
    big = teaching_options(("background", "liver"), ["image"], [(244, 202)], 3.0, "transfer", demo)
    assert big["decoder_channels"] == list(demo.model["decoder_channels"]) and big["context_slices"] == 0
    assert big["crop_size"] == 160 and big["encoder_stem_stride"] == 2 and big["lr"] == 1e-3


def test_a_user_with_no_model_starts_from_an_untrained_checkpoint(tmp_path):
    from napari_simseg.core.jobs.teach_worker import new_checkpoint, teaching_options
    from napari_simseg.core.network.checkpoint import read_checkpoint_meta
    from napari_simseg.core.session.interactive import InteractiveSession

    vol, gt = _volume()
    path = new_checkpoint(tmp_path / "liver.untrained.safetensors", ["background", "liver"], vol.shape)
    meta = read_checkpoint_meta(path)
    assert meta.class_names == ["background", "liver"] and meta.context_slices == 1 and meta.training["untrained"]
    session = InteractiveSession(vol, str(path), device="cpu")
    session.set_labels(3, (gt[3] == 1).astype(np.uint8))
    assert accepted_slices(session) == [3]
    # teaching from a fresh network keeps this checkpoint's memory layout: the session can switch
    opts = teaching_options(["background", "liver"], ["image"], [vol.shape], 3.0, "fresh", None, layout_of(meta))
    assert {k: opts[k] for k in ("memory", "depth", "context_slices", "working_size", "click_radius")} == \
        layout_of(meta)


def test_fine_tuning_a_base_of_another_memory_layout_is_refused(session, make_checkpoint, tmp_path):
    other = make_checkpoint(class_names=CLASSES, context_slices=0)
    _, gt = _volume()
    with pytest.raises(ValueError, match="memories differently"):
        start_teaching(TeachTask([TeachCase("v", session.volume, gt, [1, 2])], CLASSES, ["image"], str(other), 1.0,
                                 tmp_path / "x.safetensors", layout=layout_of(session.predictor.meta)))
    with pytest.raises(ValueError, match="nothing to teach"):
        start_teaching(TeachTask([TeachCase("v", session.volume, gt, [])], CLASSES, ["image"], None, 1.0,
                                 tmp_path / "x.safetensors"))


def test_teaching_from_a_fresh_network_finishes_and_the_session_switches_keeping_its_memory(session, tmp_path):
    from napari_simseg.core.network.checkpoint import read_checkpoint_meta
    from napari_simseg.core.network.predictor import Predictor

    _, gt = _volume()
    for z in (0, 3, 5, 6, 7):
        session.set_labels(z, gt[z])
    session.add_clicks(2, [(1, 15, 20), (2, 33, 7)])
    labels_before = session.labels.copy()
    chosen = accepted_slices(session)
    assert chosen == [0, 2, 3, 5, 6, 7]
    out = tmp_path / "taught.safetensors"
    t0 = time.monotonic()
    job = start_teaching(TeachTask([TeachCase("vol", session.volume, session.labels, chosen)], CLASSES, ["image"],
                                   None, 1.0, out, layout=layout_of(session.predictor.meta),
                                   normalization=dict(session.predictor.meta.normalization),
                                   options={**QUICK, "encoder_depth": 3, "decoder_channels": [16, 8, 8]},
                                   provenance={"image": "vol.nii.gz"}, threads=1, nice=0))
    assert time.monotonic() - t0 < 0.25  # returns at once
    assert job.state["status"] in ("preparing", "running")
    path = job.result(timeout=300)
    assert path == out and out.is_file()
    st = job.state
    assert st["status"] == "done" and st["epoch"] == 2 and st["before"] is None  # nothing to compare from scratch
    assert set(st["after"]) == {"0", "1"}
    teach = read_checkpoint_meta(out).training["teach"]
    assert teach["base"] is None and teach["init"] == "fresh" and teach["image"] == "vol.nii.gz"
    assert teach["slices"] == {"vol": [0, 2, 3, 6, 7]} and teach["held_back"] == {"vol": [5]}
    assert teach["minutes_budget"] == 1.0 and teach["minutes"] > 0
    assert not job.workdir.exists()  # temporaries gone
    # the session runs the new network, keeping every slice's labels and memory
    session.set_predictor(Predictor(out, device="cpu"))
    assert session.predictor.checkpoint.path == str(out)
    np.testing.assert_array_equal(session.labels, labels_before)
    assert session.n_rounds(2) == 1 and all(s.payload is None for s in session.memory(2).rounds)
    assert session.add_clicks(2, [(1, 18, 22)]).round == 2
    deadline = time.monotonic() + 30
    while job.alive and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not job.alive


def test_cancel_stops_the_process_and_removes_its_temporaries(session, tmp_path):
    _, gt = _volume()
    out = tmp_path / "never.safetensors"
    job = start_teaching(TeachTask([TeachCase("vol", session.volume, gt, [1, 2, 3])], CLASSES, ["image"],
                                   session.predictor.checkpoint.path, 30.0, out, threads=1, nice=0))
    deadline = time.monotonic() + 120
    while not job.alive and time.monotonic() < deadline:
        assert job.poll()["status"] in ("preparing", "running"), job.state["message"]
        time.sleep(0.1)
    assert job.alive
    assert job.cancel()
    assert job.state["status"] == "cancelled" and job.done() and not job.alive
    assert not job.workdir.exists() and not out.exists()
    assert not job.cancel()  # once is enough
    with pytest.raises(RuntimeError, match="cancelled"):
        job.result()
