"""napari-simseg: interactive multi-class segmentation with a sequential interaction memory.

``import napari_simseg`` is cheap and imports neither napari, Qt nor torch; the names
below are loaded on first use::

    from napari_simseg import InteractiveSession   # core, numpy in / numpy out
    from napari_simseg import ViewerSession        # drive a napari viewer from its console
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily by __getattr__)
_LAZY = {
    "InteractiveSession": "napari_simseg.core.session.interactive",
    "RoundResult": "napari_simseg.core.session.interactive",
    "ImageError": "napari_simseg.core.session.interactive",
    "Predictor": "napari_simseg.core.network.predictor",
    "Click": "napari_simseg.core.interaction.clicks",
    "ViewerSession": "napari_simseg.annotator.viewer_session",
    "SimSegWidget": "napari_simseg._widget",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from napari_simseg._widget import SimSegWidget  # noqa: F401
    from napari_simseg.annotator.viewer_session import ViewerSession  # noqa: F401
    from napari_simseg.core.interaction.clicks import Click  # noqa: F401
    from napari_simseg.core.network.predictor import Predictor  # noqa: F401
    from napari_simseg.core.session.interactive import ImageError, InteractiveSession, RoundResult  # noqa: F401


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_simseg' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # cache: __getattr__ runs once per name
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
