"""Sample data: a real hippocampus MRI crop (bundled) and a synthetic phantom."""

from __future__ import annotations

from napari_simseg._reader import layer_data_from_volume
from napari_simseg.annotator.colors import labels_layer_kwargs
from napari_simseg.core.io.images import Volume, read_image
from napari_simseg.core.io.resources import SAMPLE_DIR

__all__ = [
    "HIPPOCAMPUS_CLASSES",
    "SAMPLE_DIR",
    "hippocampus_available",
    "hippocampus_sample",
    "phantom_sample",
]

# SAMPLE_DIR holds the bundled volumes in core.data.datasets' plain-folder layout: images/,
# labels/ (same file names), classes.json and LICENSE.txt.
#: The Medical Segmentation Decathlon's names (Task04 dataset.json).
HIPPOCAMPUS_CLASSES = ("background", "Anterior", "Posterior")
_LICENSE_NOTE = (
    "Medical Segmentation Decathlon Task04 (Vanderbilt University Medical Center), CC-BY-SA 4.0"
)


def _with_classes(layer_tuple: tuple, class_names) -> tuple:
    data, kwargs, kind = layer_tuple
    extra = labels_layer_kwargs(class_names)
    kwargs = {**kwargs, "features": extra["features"], "colormap": extra["colormap"]}
    kwargs["metadata"] = {**kwargs.get("metadata", {}), **extra["metadata"]}
    return data, kwargs, kind


def _sample_case():
    """(image path, label path or None, class names, licence file) of the bundled sample."""
    images = SAMPLE_DIR / "images"
    if images.is_dir() and any(p for p in images.iterdir() if not p.name.startswith(".")):
        from napari_simseg.core.data.datasets import discover_dataset

        spec = discover_dataset(SAMPLE_DIR)
        if spec.cases:
            hippo = [c for c in spec.cases if "hippocampus" in c.case_id.lower()]
            case = (hippo or spec.cases)[0]
            return case.image_path, case.label_path, list(spec.class_names), SAMPLE_DIR / "LICENSE.txt"
    return None


def hippocampus_available() -> bool:
    """Whether this installation ships the hippocampus sample."""
    images = SAMPLE_DIR / "images"
    has_folder = images.is_dir() and any(not p.name.startswith(".") for p in images.iterdir())
    return has_folder


def hippocampus_sample() -> list:
    """The bundled hippocampus MRI crop (MSD Task04, CC-BY-SA 4.0) and its labels.

    Raises
    ------
    FileNotFoundError
        When this installation does not ship the sample.
    """
    found = _sample_case() if hippocampus_available() else None
    if found is None:
        raise FileNotFoundError(
            f"the hippocampus sample is not installed ({SAMPLE_DIR / 'images'} is missing or "
            "empty); reinstall napari-simseg or use the 'phantom' sample"
        )
    image_path, label_path, class_names, license_file = found
    name = image_path.name.split(".")[0]
    image = layer_data_from_volume(read_image(image_path), name, "image")
    image[1]["metadata"]["license"] = f"{_LICENSE_NOTE}; see {license_file.name}"
    layers = [image]
    if label_path is not None and label_path.exists():
        tup = layer_data_from_volume(read_image(label_path), f"{name} labels", "labels")
        layers.append(_with_classes(tup, class_names))
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
    from napari_simseg.core.data.phantom import make_phantom, phantom_spacing

    image, labels, class_names = make_phantom(shape, seed=seed)
    spacing = phantom_spacing(image.shape)
    origin = tuple(-(n - 1) * s / 2 for n, s in zip(image.shape, spacing))
    img = layer_data_from_volume(Volume(image, spacing, origin), "phantom", "image")
    lab = layer_data_from_volume(Volume(labels, spacing, origin), "phantom labels", "labels")
    lab = _with_classes(lab, class_names)
    lab[1]["opacity"] = 0.5
    return [img, lab]
