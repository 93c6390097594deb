"""The napari adapter: :class:`ViewerSession` (the console API, Qt-free), the layers it reads
and writes, its jobs, teaching from a viewer, and the widget's Qt pieces (dialogs, the
*Teach* panel, the image picker).

The dock widget itself is ``napari_simseg._widget`` (the manifest names it there).
``viewer_session``, ``layers``, ``jobs`` and ``teach`` never import Qt; ``dialogs``,
``teach_panel`` and ``image_picker`` are the widget's.
"""
