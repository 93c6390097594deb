"""Non-GUI core of napari-simseg: memories, clicks, virtual user, model, training, evaluation.

This package never imports napari, Qt or magicgui.
"""

from .clicks import Click, ClickError, encode_clicks

__all__ = ["Click", "ClickError", "encode_clicks"]
