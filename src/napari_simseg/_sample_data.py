"""Sample data: a real hippocampus MRI crop (bundled) and a synthetic phantom."""

from __future__ import annotations

import numpy as np

from ._colors import labels_layer_kwargs
from ._reader import layer_data_from_volume
from .core.io import Volume, read_image
from .core.resources import DEMO_CHECKPOINT, RESOURCES

__all__ = [
    "HIPPOCAMPUS_CLASSES",
    "HIPPOCAMPUS_IMAGE",
    "HIPPOCAMPUS_LABEL_CANDIDATES",
    "hippocampus_sample",
    "phantom_sample",
]

HIPPOCAMPUS_IMAGE = RESOURCES / "hippocampus_sample.nii.gz"
#: Accepted names of the sample's label file, first found wins.
HIPPOCAMPUS_LABEL_CANDIDATES = tuple(
    RESOURCES / f"hippocampus_sample_{suffix}.nii.gz" for suffix in ("labels", "label", "seg")
)
HIPPOCAMPUS_LICENSE = RESOURCES / "LICENSE-hippocampus.txt"
#: The Medical Segmentation Decathlon's names (Task04 dataset.json).
HIPPOCAMPUS_CLASSES = ("background", "Anterior", "Posterior")


def _with_classes(layer_tuple: tuple, class_names) -> tuple:
    data, kwargs, kind = layer_tuple
    extra = labels_layer_kwargs(class_names)
    kwargs = {**kwargs, "features": extra["features"], "colormap": extra["colormap"]}
    kwargs["metadata"] = {**kwargs.get("metadata", {}), **extra["metadata"]}
    return data, kwargs, kind


def _hippocampus_classes() -> list:
    if DEMO_CHECKPOINT.is_file():
        try:  # the demo model knows the names it was trained with
            from .core.checkpoint import read_checkpoint_meta

            return list(read_checkpoint_meta(DEMO_CHECKPOINT).class_names)
        except Exception:  # noqa: BLE001 - fall back to the data set's own names
            pass
    return list(HIPPOCAMPUS_CLASSES)


def hippocampus_sample() -> list:
    """The bundled hippocampus MRI crop (MSD Task04, CC-BY-SA 4.0) and its labels.

    Raises
    ------
    FileNotFoundError
        When this installation does not ship the sample.
    """
    if not HIPPOCAMPUS_IMAGE.is_file():
        raise FileNotFoundError(
            f"the hippocampus sample is not installed ({HIPPOCAMPUS_IMAGE} is missing); "
            "reinstall napari-simseg or use the 'phantom' sample"
        )
    image = read_image(HIPPOCAMPUS_IMAGE)
    layers = [layer_data_from_volume(image, "hippocampus", "image")]
    layers[0][1]["metadata"]["license"] = (
        "Medical Segmentation Decathlon Task04 (Vanderbilt University Medical Center), "
        f"CC-BY-SA 4.0; see {HIPPOCAMPUS_LICENSE.name}"
    )
    label_file = next((p for p in HIPPOCAMPUS_LABEL_CANDIDATES if p.is_file()), None)
    if label_file is not None:
        labels = read_image(label_file)
        tup = layer_data_from_volume(labels, "hippocampus labels", "labels")
        layers.append(_with_classes(tup, _hippocampus_classes()))
    return layers


def phantom_sample(shape=(24, 128, 128), seed: int = 0) -> list:
    """A synthetic pelvis-like MRI phantom with its five-class labels.

    Parameters
    ----------
    shape : (Z, H, W)
        Phantom size.
    seed : int
        Same seed, same phantom.
    """
    from .core.phantom import make_phantom, phantom_spacing

    image, labels, class_names = make_phantom(shape, seed=seed)
    spacing = phantom_spacing(image.shape)
    origin = tuple(-(n - 1) * s / 2 for n, s in zip(image.shape, spacing))
    img = layer_data_from_volume(Volume(image, spacing, origin), "phantom", "image")
    lab = layer_data_from_volume(Volume(labels, spacing, origin), "phantom labels", "labels")
    lab = _with_classes(lab, class_names)
    lab[1]["opacity"] = 0.5
    return [img, lab]
