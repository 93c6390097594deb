"""The widget's keys, bound on SimSeg's own layers only (the image layer keeps napari's).

Ctrl-Z stays napari's paint undo on the labels layer, so round undo/redo also have Alt
bindings that work on every SimSeg layer. Qt-free.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["KEYS_REDO", "KEYS_UNDO", "KEY_PROPAGATE", "KEY_RUN", "bind_session_keys", "unbind_keys"]

KEYS_UNDO = ("Control-Z", "Alt-Z")
KEYS_REDO = ("Control-Shift-Z", "Alt-Shift-Z")
KEY_RUN = "Enter"
KEY_PROPAGATE = "Alt-P"  # P is napari's paint (labels) and add (points) mode


def _handler(action: Callable[[], None]):
    def handler(layer):
        action()

    return handler


def bind_session_keys(click_layers, labels_layer, actions: dict[str, Callable[[], None]], bound: list) -> None:
    """Bind ``actions`` (``undo``, ``redo``, ``run``, ``propagate``) on a session's layers,
    appending each layer bound to ``bound`` (what :func:`unbind_keys` releases)."""
    for layer in [*click_layers, labels_layer]:
        is_labels = layer is labels_layer
        for keys, name in ((KEYS_UNDO, "undo"), (KEYS_REDO, "redo")):
            for key in keys:
                if not (is_labels and key.startswith("Control")):
                    layer.bind_key(key, _handler(actions[name]), overwrite=True)
        layer.bind_key(KEY_RUN, _handler(actions["run"]), overwrite=True)
        layer.bind_key(KEY_PROPAGATE, _handler(actions["propagate"]), overwrite=True)
        bound.append(layer)


def unbind_keys(layers: list) -> None:
    """Release the SimSeg keys of ``layers`` and empty the list (in place: a closure may hold it)."""
    for layer in layers:
        for key in (*KEYS_UNDO, *KEYS_REDO, KEY_RUN, KEY_PROPAGATE):
            try:
                layer.bind_key(key, None)
            except (KeyError, ValueError, TypeError):
                pass
    del layers[:]
