"""Class colours shared by the labels layer, the click layers and the sample data.

One palette everywhere, so a class's clicks have the colour its labels are drawn in.
Importable without napari (``labels_layer_kwargs`` imports it when called).
"""

from __future__ import annotations

import colorsys

import numpy as np

__all__ = ["BACKGROUND_CLICK_COLOR", "class_colors", "labels_color_dict", "labels_layer_kwargs"]

# Distinct, saturated colours that stay visible on grey MRI/CT (after Trubetskoy's
# "20 distinct colours", greys removed).
_PALETTE = (
    "#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#42d4f4",
    "#f032e6", "#bfef45", "#fabed4", "#469990", "#dcbeff", "#9a6324", "#fffac8",
    "#800000", "#aaffc3", "#808000", "#ffd8b1", "#000075",
)

#: The background label is transparent in the labels layer; its clicks still need a
#: colour that shows on a grey image.
BACKGROUND_CLICK_COLOR = "#ffffff"


def _hex_to_rgba(value: str) -> np.ndarray:
    value = value.lstrip("#")
    rgb = [int(value[i : i + 2], 16) / 255.0 for i in (0, 2, 4)]
    return np.array([*rgb, 1.0], dtype=np.float32)


def class_colors(n_classes: int) -> np.ndarray:
    """RGBA colours (``(n_classes, 4)`` float32 in 0..1) for class indices 0..n-1.

    Row 0 is the colour of background *clicks*; rows 1.. are the label colours of the
    foreground classes (the palette, then golden-ratio hues beyond it).
    """
    n = int(n_classes)
    out = np.zeros((max(n, 0), 4), dtype=np.float32)
    for i in range(n):
        if i == 0:
            out[i] = _hex_to_rgba(BACKGROUND_CLICK_COLOR)
        elif i - 1 < len(_PALETTE):
            out[i] = _hex_to_rgba(_PALETTE[i - 1])
        else:
            hue = (0.13 + 0.618034 * i) % 1.0
            out[i] = (*colorsys.hsv_to_rgb(hue, 0.75, 0.95), 1.0)
    return out


def labels_color_dict(n_classes: int) -> dict:
    """``{label: RGBA}`` for napari's ``DirectLabelColormap``: 0 and unknown transparent."""
    colors = class_colors(n_classes)
    out: dict = {None: np.zeros(4, dtype=np.float32), 0: np.zeros(4, dtype=np.float32)}
    for i in range(1, len(colors)):
        out[i] = colors[i]
    return out


def labels_layer_kwargs(class_names) -> dict:
    """Layer kwargs that show class names (features, status bar) and class colours.

    Napari's labels features table has one row per label value, the first row being
    the background.
    """
    from napari.utils.colormaps import DirectLabelColormap

    names = [str(n) for n in class_names]
    return {
        "features": {"index": np.arange(len(names)), "class_name": names},
        "colormap": DirectLabelColormap(color_dict=labels_color_dict(len(names))),
        "metadata": {"class_names": names},
    }
