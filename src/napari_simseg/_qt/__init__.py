"""Qt widgets of napari-simseg (import napari/Qt; never imported by core)."""
