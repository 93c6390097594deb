"""The widget's choice of image: one layer, or one layer per channel for a multi-channel network.

A network trained on several channels (``T1``, ``T2``, ``FLAIR``...) records their names
in its checkpoint. When the chosen checkpoint has more than one, the picker shows one
layer box per channel, preselecting the image layer named after it; a single layer
holding every channel along its first axis can be chosen in the *Image* box instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from qtpy.QtWidgets import QComboBox, QFormLayout, QLabel, QWidget

from napari_simseg.annotator.layers import match_channel_layers

__all__ = ["ImagePicker"]

_FROM_IMAGE = "(channels of the Image layer)"


class ImagePicker(QWidget):
    """Image layer boxes: *Image*, and one per channel when the network reads several.

    Parameters
    ----------
    viewer : napari.Viewer
    """

    def __init__(self, viewer, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.channel_names: list = ["image"]
        self.form = QFormLayout(self)
        self.form.setContentsMargins(0, 0, 0, 0)
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("Image layer to segment (2D or 3D; or with the channels along its first axis; "
                                    "an RGB layer for a network trained on colour pictures)")
        self.form.addRow("Image", self.image_combo)
        self.channel_combos: list[QComboBox] = []
        self._channel_labels: list[QLabel] = []

    def _image_names(self) -> list:
        from napari.layers import Image

        return [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]

    def refresh(self) -> None:
        """List the viewer's image layers again, keeping the choices that still exist."""
        from napari.layers import Image

        names = self._image_names()
        current = self.image_combo.currentText()
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        elif names:
            active = self.viewer.layers.selection.active
            self.image_combo.setCurrentText(active.name if isinstance(active, Image) else names[-1])
        self.image_combo.blockSignals(False)
        for combo in self.channel_combos:
            chosen = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems([_FROM_IMAGE, *names])
            combo.setCurrentText(chosen if chosen in names else _FROM_IMAGE)
            combo.blockSignals(False)

    def set_channels(self, names: Sequence[str]) -> None:
        """Show one box per channel (none for a single-channel network), preselecting by name."""
        names = list(names) or ["image"]
        if names == self.channel_names and len(self.channel_combos) == (len(names) if len(names) > 1 else 0):
            return
        for combo in self.channel_combos:
            self.form.removeRow(combo)
        self.channel_combos, self._channel_labels = [], []
        self.channel_names = names
        if len(names) == 1:
            return
        image_names = self._image_names()
        for name, layer in zip(names, match_channel_layers(self.viewer, names)):
            combo = QComboBox()
            combo.addItems([_FROM_IMAGE, *image_names])
            combo.setCurrentText(layer.name if layer is not None else _FROM_IMAGE)
            combo.setToolTip(f"Image layer of the channel '{name}'")
            label = QLabel(f"  {name}")
            self.form.addRow(label, combo)
            self.channel_combos.append(combo)
            self._channel_labels.append(label)

    def select(self, layer) -> bool:
        """Choose ``layer`` (or its name) in the *Image* box; returns whether it is listed there
        (only image layers are)."""
        name = getattr(layer, "name", str(layer))
        if self.image_combo.findText(name) < 0:
            return False
        self.image_combo.setCurrentText(name)
        return True

    def image_layer(self):
        """The layer chosen in the *Image* box, or None."""
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def selection(self):
        """What to segment: the *Image* layer for one channel, or when every channel box
        names a layer, one layer per channel (else the *Image* layer, whose first axis
        must then hold the channels)."""
        if len(self.channel_names) == 1:
            return self.image_layer()
        chosen = [combo.currentText() for combo in self.channel_combos]
        if all(name in self.viewer.layers for name in chosen):
            return [self.viewer.layers[name] for name in chosen]
        return self.image_layer()

    def channel_axis(self):
        """0 when the *Image* layer is to hold every channel along its first axis, else None."""
        chosen = self.selection()
        if isinstance(chosen, list) or len(self.channel_names) == 1 or chosen is None:
            return None
        return 0 if np.ndim(chosen.data) == 4 else None
