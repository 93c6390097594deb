"""Neighbour priors: training items carry a neighbouring slice's labels as a SIM state,
and propagation with a network trained that way starts each slice's memory with the
labels of the slice before it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_simseg.core.data.augmentation import Augmenter
from napari_simseg.core.data.slices import SliceDataset, SliceOptions
from napari_simseg.core.engine.train_config import TrainConfig
from napari_simseg.core.interaction.memory import prior_probabilities
from napari_simseg.core.network.checkpoint import read_checkpoint_meta
from napari_simseg.core.network.predictor import Predictor
from napari_simseg.core.session.interactive import InteractiveSession, load_log, replay_log
from napari_simseg.core.session.propagation import SeedRule
from training_helpers import simulate


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory):
    from napari_simseg.core.data.phantom import make_phantom_dataset

    root = tmp_path_factory.mktemp("phantom_prior")
    make_phantom_dataset(root, n_volumes=2, seed=3, shape=(4, 40, 44), n_tumours=2)
    return root


def test_prior_probabilities_are_smoothed_indicators_that_sum_to_one():
    labels = np.zeros((9, 9), np.uint8)
    labels[2:7, 2:7] = 1
    maps = prior_probabilities(labels, 3)
    assert maps.shape == (3, 9, 9) and maps.dtype == np.float32
    np.testing.assert_allclose(maps.sum(0), 1.0, rtol=1e-6)
    assert maps[1, 4, 4] == 1.0 and maps[0, 0, 0] == 1.0  # deep inside: certain
    assert 0 < maps[1, 2, 2] < 1 and maps[2].max() == 0  # the boundary is a band; an absent class is 0
    with pytest.raises(ValueError, match="2D"):
        prior_probabilities(labels[None], 3)


def test_augmenter_moves_stacked_label_maps_together():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, 24, 24)).astype(np.float32)
    labels = np.zeros((24, 24), np.uint8)
    labels[3:10, 5:20] = 1
    other = np.zeros_like(labels)
    other[12:20, 2:9] = 2
    aug = Augmenter(p=1.0, rotate_degrees=20, scale=(0.9, 1.1))
    img1, lab1 = aug(image, labels, np.random.default_rng(5))
    img2, lab2 = aug(image, np.stack([labels, other]), np.random.default_rng(5))
    np.testing.assert_array_equal(img1, img2)
    np.testing.assert_array_equal(lab2[0], lab1)
    _, other_alone = aug(image, other, np.random.default_rng(5))
    np.testing.assert_array_equal(lab2[1], other_alone)


def test_dataset_items_carry_a_neighbours_labels_as_prior(phantom_data):
    from napari_simseg.core.data.datasets import discover_dataset

    spec = discover_dataset(phantom_data)
    ds = SliceDataset(spec, options=SliceOptions(neighbour_prior=True))
    plain = SliceDataset(spec)
    seen_sides = set()
    for i in range(len(ds)):
        item, ref = ds[i], plain[i]
        torch.testing.assert_close(item["image"], ref["image"])  # the item itself is unchanged
        torch.testing.assert_close(item["labels"], ref["labels"])
        case, k = ds.index[i]
        labels = ds.labels[case]
        y0, y1, x0, x1 = item["crop"].tolist()
        prior = item["prior"].numpy()[:, y0:y1, x0:x1]
        matches = [j for j in (k - 1, k + 1) if 0 <= j < labels.shape[0]
                   and np.array_equal(prior, prior_probabilities(labels[j], ds.n_classes))]
        assert bool(item["has_prior"]) and matches, (case, k)
        seen_sides.update(j - k for j in matches)
    assert seen_sides == {-1, 1}  # both sides are drawn


def test_a_single_slice_has_no_prior(tmp_path):
    from napari_simseg.core.data.datasets import discover_dataset
    from napari_simseg.core.io.images import write_image

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(2):
        image = np.random.default_rng(i).normal(size=(32, 32)).astype(np.float32)
        labels = np.zeros((32, 32), np.uint8)
        labels[8:20, 8:20] = 1
        write_image(tmp_path / "images" / f"c{i}.nii.gz", image)
        write_image(tmp_path / "labels" / f"c{i}.nii.gz", labels)
    ds = SliceDataset(discover_dataset(tmp_path), options=SliceOptions(neighbour_prior=True))
    for i in range(len(ds)):
        assert not bool(ds[i]["has_prior"]) and ds[i]["prior"].abs().sum() == 0


def _spy_net(n=3):
    from conftest import tiny_meta_and_model
    from test_training import _Spy

    return _Spy(tiny_meta_and_model()[1])


def test_training_items_with_a_prior_start_from_it():
    n, b = 3, 16
    labels = np.zeros((b, 32, 32), np.int64)
    labels[:, 4:14, 4:14] = 1
    labels[:, 18:28, 16:30] = 2
    neighbour = np.roll(labels, 2, axis=1)
    prior = torch.from_numpy(np.stack([prior_probabilities(lab, n) for lab in neighbour]))
    has = torch.ones(b, dtype=torch.bool)
    has[0] = False  # no neighbour: never a prior
    batch = {"image": torch.randn(b, 1, 32, 32), "labels": torch.from_numpy(labels), "prior": prior,
             "has_prior": has}
    cfg = TrainConfig(data="x", out="y", memory="sim", depth=3, max_clicks=3, drop_fraction=0.0, drop_class=False,
                      decreasing_probability=False, auto_fraction=0.25, mix_rounds=True,
                      prior_fraction=0.5).validate()
    spy = _spy_net()
    simulate(spy, batch, cfg, n, np.random.default_rng(2))
    x = spy.calls[-1]["x"][:, 1:1 + 2 * n * 3].reshape(b, 3, 2, n, 32, 32)
    with_prior = 0
    for i in range(b):
        clicked = (x[i, :, 0].flatten(1).sum(-1) > 0).tolist()
        r = sum(clicked)
        first = 3 - r  # the oldest state of this item's own rounds
        is_prior = first >= 1 and torch.allclose(x[i, first - 1, 1], prior[i]) and x[i, first - 1, 0].sum() == 0
        if is_prior:
            with_prior += 1
            assert r >= 1 and i != 0  # a prior always has a round on top; never without a neighbour
        else:  # no prior: nothing before its rounds
            assert x[i, :first].abs().sum() == 0
    assert 2 <= with_prior <= 14
    with pytest.raises(ValueError, match="prior_fraction needs"):
        TrainConfig(data="x", out="y", prior_fraction=0.3).validate()  # the paper's per-batch DDG


def _prior_session(make_checkpoint, volume, prior=True):
    path = make_checkpoint(neighbour_prior=prior)
    assert read_checkpoint_meta(path).neighbour_prior is prior
    return InteractiveSession(volume, Predictor(path, device="cpu"))


def test_propagated_slices_start_from_the_labels_of_the_slice_before(make_checkpoint, volume):
    s = _prior_session(make_checkpoint, volume)
    s.predict_auto(batch_size=2)
    s.add_clicks(2, [(1, 15, 20), (2, 30, 40), (0, 2, 2)])
    record = s.propagate(2, rule=SeedRule(min_area=1))
    assert record.slices, "nothing was propagated"
    for z in record.slices:
        mem = s.memory(z)
        assert mem.n_rounds == 2 and mem.rounds[0].meta.get("prior")
        before = z - 1 if z > 2 else z + 1
        np.testing.assert_array_equal(mem.rounds[0].probabilities, prior_probabilities(s.labels[before], 3))
        assert mem.rounds[0].clicks.sum() == 0
    assert not s.is_user_edited(record.slices[0]) and s.user_clicks(record.slices[0]) == []
    # a network trained without priors: one seeded round, as before
    plain = _prior_session(make_checkpoint, volume, prior=False)
    plain.predict_auto(batch_size=2)
    plain.add_clicks(2, [(1, 15, 20), (2, 30, 40), (0, 2, 2)])
    for z in plain.propagate(2, rule=SeedRule(min_area=1)).slices:
        assert plain.memory(z).n_rounds == 1


def test_a_painted_source_is_logged_and_replayed_as_its_prior(tmp_path, make_checkpoint, volume):
    s = _prior_session(make_checkpoint, volume)
    s.predict_auto(batch_size=2)
    painted = np.zeros(volume.shape[1:], np.uint8)
    painted[10:25, 12:30] = 1
    record = s.propagate(2, labels=painted, rule=SeedRule(min_area=1))
    assert record.slices
    first = min(record.slices, key=lambda z: abs(z - 2))
    np.testing.assert_array_equal(s.memory(first).rounds[0].probabilities, prior_probabilities(painted, 3))
    path = s.save_log(tmp_path / "log.json")
    event = [e for e in load_log(path)["events"] if e["action"] == "propagate"][0]
    np.testing.assert_array_equal(np.asarray(event["source_labels"]), painted)
    fresh = _prior_session(make_checkpoint, volume)
    replay_log(fresh, path)
    np.testing.assert_array_equal(fresh.get_labels(), s.get_labels())
    for z in record.slices:
        np.testing.assert_array_equal(fresh.memory(z).last.probabilities, s.memory(z).last.probabilities)


def test_priors_asked_of_slices_without_neighbour_labels_are_refused(tmp_path):
    from napari_simseg.core.data.slices import SliceDataset
    from napari_simseg.core.jobs.training import TrainingData, train
    from training_helpers import tiny_config

    rng = np.random.default_rng(0)
    images = {"a": rng.normal(size=(1, 3, 32, 32)).astype(np.float32)}
    labels = {"a": np.zeros((3, 32, 32), np.int64)}
    labels["a"][:, 8:20, 8:20] = 1
    ds = SliceDataset.from_arrays(images, labels, ["background", "organ"])
    data = TrainingData(["background", "organ"], ["image"], ds, ds)
    cfg = tiny_config("-", tmp_path / "run", epochs=1, steps_per_epoch=1, mix_rounds=True, prior_fraction=0.5)
    with pytest.raises(ValueError, match="prior_fraction needs training slices"):
        train(cfg.validate(), log=lambda m: None, data=data)
    assert not (tmp_path / "run" / "best.safetensors").exists()
