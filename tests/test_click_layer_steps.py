"""Start's click layers as GUI steps (``click_layer_steps``): each new layer is added hidden
and shown one step later, so napari's add and its first draw fall in different event-loop
turns; none stays hidden, whenever the steps stop."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui

CLASSES = ("background", "liver", "spleen")


@pytest.fixture
def image_layer(viewer):
    return viewer.add_image(np.zeros((4, 30, 40), np.float32), name="ct")


def test_each_new_layer_is_added_hidden_and_shown_the_step_after(viewer, image_layer):
    from napari_simseg.annotator.click_layers import click_layer_model, click_layer_steps

    models = [click_layer_model(image_layer, CLASSES, i) for i in range(len(CLASSES))]
    made = []
    seen = []  # (name, visible) at each step
    for name in click_layer_steps(viewer, image_layer, CLASSES, models, made):
        seen.append((name, viewer.layers[name].visible))
    expected = [(f"{c} clicks", shown) for c in CLASSES for shown in (False, True)]
    assert seen == expected
    assert [layer.name for layer in made] == [f"{c} clicks" for c in CLASSES]
    assert all(layer.visible for layer in made)
    assert all(layer is model for layer, model in zip(made, models))


def test_steps_stopped_after_an_add_leave_no_layer_hidden(viewer, image_layer):
    from napari_simseg.annotator.click_layers import click_layer_steps

    made = []
    steps = click_layer_steps(viewer, image_layer, CLASSES, None, made)
    next(steps)
    next(steps)
    next(steps)  # the second layer is in, hidden
    assert [layer.visible for layer in made] == [True, False]
    steps.close()  # e.g. the widget closed while Start ran its steps
    assert [layer.visible for layer in made] == [True, True]
    assert "spleen clicks" not in viewer.layers


def test_a_reused_layer_keeps_the_users_visibility(viewer, image_layer):
    from napari_simseg.annotator.click_layers import click_layer_steps

    old = viewer.add_points(np.array([[1.0, 5.0, 5.0]]), ndim=3, name="liver clicks", visible=False)
    made = []
    names = list(click_layer_steps(viewer, image_layer, CLASSES, None, made))
    assert names == ["background clicks", "background clicks", "liver clicks", "spleen clicks", "spleen clicks"]
    assert made[1] is old and len(old.data) == 0  # emptied, reused, one step
    assert not old.visible  # the user hid it: still hidden
    assert made[0].visible and made[2].visible
