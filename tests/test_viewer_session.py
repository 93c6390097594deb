"""ViewerSession: the console API, synchronous, on a real (hidden) napari viewer."""

from __future__ import annotations

import numpy as np
import pytest

# Load torch's native stack (and triton, if installed) before the first canvas: the
# tiny checkpoints are built in the test process, and triton loaded after Mesa's
# LLVM crashes it (the plugin itself guards against this, see napari_simseg._llvm_guard).
import segmentation_models_pytorch  # noqa: F401, E402

pytestmark = pytest.mark.gui

CLASSES = ("background", "a", "b")


@pytest.fixture
def image3d():
    rng = np.random.default_rng(0)
    vol = rng.normal(100, 20, size=(5, 40, 48)).astype(np.float32)
    vol[:, 10:25, 12:30] += 80
    return vol


@pytest.fixture
def session(viewer, image3d, make_checkpoint):
    from napari_simseg import ViewerSession

    viewer.add_image(image3d, name="mri", scale=(3.0, 1.5, 1.5), translate=(10.0, -5.0, 2.0))
    ckpt = make_checkpoint(class_names=CLASSES, seed=1)  # seed 1 labels every pixel 1
    return ViewerSession(viewer, "mri", checkpoint=ckpt, device="cpu", overwrite_policy="always")


def test_layers_created_with_image_geometry(viewer, session):
    from napari.utils.colormaps.standardize_color import transform_color

    lab = viewer.layers["SimSeg labels"]
    assert lab.data.shape == (5, 40, 48)
    np.testing.assert_allclose(lab.scale, (3.0, 1.5, 1.5))
    np.testing.assert_allclose(lab.translate, (10.0, -5.0, 2.0))
    assert lab.metadata["class_names"] == list(CLASSES)
    for i, name in enumerate(CLASSES):
        pts = viewer.layers[f"{name} clicks"]
        assert pts.ndim == 3
        np.testing.assert_allclose(pts.scale, (3.0, 1.5, 1.5))
        assert pts.metadata["simseg"]["class_index"] == i
    # click colours are the label colours (background clicks get a visible colour)
    cmap = lab.colormap
    for i in (1, 2):
        pts = viewer.layers[f"{CLASSES[i]} clicks"]
        face = transform_color(pts.current_face_color)[0]
        np.testing.assert_allclose(face, np.ravel(cmap.map(i)), atol=1e-3)


def test_add_clicks_changes_only_that_slice_and_undo_redo(viewer, session):
    lab = viewer.layers["SimSeg labels"]
    before = lab.data.copy()
    result = session.add_clicks(2, [(1, 15, 20), (2, 30, 40), (0, 5, 5)])
    assert result.round == 1 and result.slice_index == 2
    after = lab.data.copy()
    np.testing.assert_array_equal(after[2], result.labels)
    want = np.ones_like(after[2])  # the test network says class 1; clicked pixels show their class
    want[30, 40], want[5, 5] = 2, 0
    np.testing.assert_array_equal(after[2], want)
    for z in (0, 1, 3, 4):
        np.testing.assert_array_equal(after[z], before[z])
    assert len(viewer.layers["a clicks"].data) == 1
    np.testing.assert_allclose(viewer.layers["a clicks"].data[0], (2, 15, 20))

    session.add_clicks(2, [(2, 10, 10)])
    assert session.session.n_rounds(2) == 2
    session.undo(2)
    np.testing.assert_array_equal(lab.data[2], result.labels)
    assert len(viewer.layers["b clicks"].data) == 1  # the second round's click went
    session.redo(2)
    assert len(viewer.layers["b clicks"].data) == 2
    session.undo(2)
    session.undo(2)
    np.testing.assert_array_equal(lab.data, before)
    assert sum(len(viewer.layers[f"{n} clicks"].data) for n in CLASSES) == 0
    with pytest.raises(RuntimeError, match="nothing to undo"):
        session.undo(2)


def test_run_uses_pending_points_of_current_slice(viewer, session):
    viewer.dims.set_current_step(0, 3)
    assert session.current_slice() == 3
    viewer.layers["a clicks"].add([3, 20, 20])
    viewer.layers["b clicks"].add([1, 20, 20])  # another slice: not in this round
    assert session.pending_slices() == [3, 1]
    result = session.run()
    assert result.slice_index == 3
    assert session.pending_slices() == [1]
    assert session.run() is None  # nothing new on slice 3


def test_bad_click_changes_nothing(viewer, session):
    from napari_simseg.core.interaction.clicks import ClickError

    lab = viewer.layers["SimSeg labels"].data.copy()
    with pytest.raises(ClickError):
        session.add_clicks(1, [(1, 100, 5)])
    with pytest.raises(ClickError):
        session.add_clicks(1, [(7, 5, 5)])
    np.testing.assert_array_equal(viewer.layers["SimSeg labels"].data, lab)
    assert len(viewer.layers["a clicks"].data) == 0


def test_hand_edited_slice_policy(viewer, session):
    lab = viewer.layers["SimSeg labels"]
    lab.data[1, :5, :5] = 2  # a hand edit
    assert session.is_hand_edited(1)
    session.overwrite_policy = "never"
    session.add_clicks(1, [(1, 20, 20)])
    assert (lab.data[1, :5, :5] == 2).all()
    assert 1 in session.hand_edited
    asked = []
    session.overwrite_policy = "ask"
    session.confirm = lambda slices: asked.append(slices) or True
    session.add_clicks(1, [(2, 30, 30)])
    assert asked == [[1]]
    np.testing.assert_array_equal(lab.data[1], session.session.labels[1])
    assert not session.is_hand_edited(1)


def test_auto_reset_and_2d(viewer, make_checkpoint):
    from napari_simseg import ViewerSession

    rng = np.random.default_rng(1)
    viewer.add_image(rng.normal(size=(32, 36)).astype(np.float32), name="slice")
    vs = ViewerSession(viewer, "slice", checkpoint=make_checkpoint(class_names=CLASSES), device="cpu")
    assert vs.is_2d and vs.current_slice() == 0
    msg = vs.auto()
    assert "done" in msg
    auto = vs.labels
    assert auto.shape == (32, 36)
    vs.add_clicks(None, [(1, 10, 10)])
    assert viewer.layers["a clicks"].data.shape == (1, 2)
    with pytest.raises(RuntimeError, match="clicks"):
        vs.auto()  # the only slice has clicks
    vs.reset()
    assert len(viewer.layers["a clicks"].data) == 0
    assert (vs.labels == 0).all()


def test_save_and_load_restore_memories(viewer, session, tmp_path):
    session.add_clicks(1, [(1, 15, 20), (0, 2, 2)])
    session.add_clicks(1, [(2, 30, 30)])
    session.add_clicks(3, [(2, 20, 25)])
    session.undo(3)
    shown = session.labels
    labels_path, log_path = session.save(tmp_path / "case.nii.gz")
    assert log_path == tmp_path / "case.simseg.json"

    session.reset(1)
    assert (session.labels[1] == 0).all()
    from dataclasses import replace

    own = replace(session.session.refinement, min_lead=1.0)  # set from the console since the save
    session.session.refinement = own
    msg = session.load(labels_path)
    assert "replayed" in msg
    np.testing.assert_array_equal(session.labels, shown)  # the rounds replay with their own settings
    assert session.session.refinement == own  # the session's settings survive a Load
    assert session.session.n_rounds(1) == 2
    assert len(viewer.layers["a clicks"].data) == 1
    assert len(viewer.layers["b clicks"].data) == 1  # slice 3's round was undone
    session.redo(3)  # the undone round comes back from the replayed memory
    assert len(viewer.layers["b clicks"].data) == 2
    session.undo(1)
    assert len(viewer.layers["b clicks"].data) == 1


def test_refuses_bad_layers_without_changes(viewer, make_checkpoint):
    from napari_simseg import ViewerSession
    from napari_simseg.core.network.checkpoint import CheckpointError
    from napari_simseg.core.session.interactive import ImageError

    ckpt = make_checkpoint(class_names=CLASSES)
    with pytest.raises(ImageError, match="no image layer"):
        ViewerSession(viewer, checkpoint=ckpt)
    colour = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)  # true colour
    viewer.add_image(colour, name="rgb", rgb=True)
    with pytest.raises(ImageError, match="true-colour RGB.*reads one channel"):
        ViewerSession(viewer, "rgb", checkpoint=ckpt)
    viewer.add_image(np.zeros((2, 3, 16, 16), np.float32), name="4d")
    with pytest.raises(ImageError, match="4 dimensions"):
        ViewerSession(viewer, "4d", checkpoint=ckpt)
    viewer.add_image(np.random.default_rng(0).normal(size=(3, 16, 16)), name="ok")
    viewer.add_labels(np.zeros((3, 16, 16), np.uint8), name="SimSeg labels",
                      metadata={"class_names": ["background", "x"]})
    names = [layer.name for layer in viewer.layers]
    with pytest.raises(CheckpointError, match="trained for classes"):
        ViewerSession(viewer, "ok", checkpoint=ckpt)
    assert [layer.name for layer in viewer.layers] == names


def test_prepare_round_picks_the_slice_and_run_keeps_the_current_one(viewer, session):
    viewer.dims.set_current_step(0, 3)
    viewer.layers["a clicks"].add([1, 20, 20])
    assert session.run() is None  # run(): the current slice only
    job = session.prepare_round()  # the widget's path: the first slice with new clicks
    assert job.slice == 1
    assert job.finish(job.compute()).slice_index == 1
    assert session.pending_points() == {}
    viewer.layers["a clicks"].add([[0, 5, 5], [3, 5, 5]])
    job = session.prepare_round()
    assert job.slice == 3  # the current slice comes first
    job.finish(job.compute())
    job = session.prepare_round()
    assert job.slice == 0
    job.finish(job.compute())
    assert session.prepare_round() is None


def test_ask_without_confirm_keeps_hand_edits(viewer, image3d, make_checkpoint):
    from napari_simseg import ViewerSession

    viewer.add_image(image3d, name="mri")
    vs = ViewerSession(viewer, "mri", checkpoint=make_checkpoint(class_names=CLASSES, seed=1), device="cpu")
    assert vs.overwrite_policy == "ask" and vs.confirm is None
    lab = viewer.layers["SimSeg labels"]
    lab.data[1, :5, :5] = 2
    lab.data[0, 0, 0] = 1
    vs.add_clicks(1, [(1, 20, 20)])
    assert not vs.last_round_shown
    assert (lab.data[1, :5, :5] == 2).all() and lab.data[1, 20, 20] == 0
    assert "1 hand-edited kept" in vs.auto()
    assert lab.data[0, 0, 0] == 1 and (lab.data[0] == 0).any()  # slice 0 kept as painted
    assert (lab.data[2:] == 1).all()
    assert vs.hand_edited == {0, 1}


def test_image_layer_pixels_are_checked_by_core(viewer):
    from napari_simseg.annotator.layers import check_image_layer
    from napari_simseg.core.imaging.preprocessing import ImageError

    image = np.ones((3, 16, 16), np.float32)
    image[1, 2, 2] = np.nan
    layer = viewer.add_image(image, name="holes")
    with pytest.raises(ImageError, match="'holes': image contains NaN"):
        check_image_layer(layer)
