"""Make ``docs/screenshot.png``: napari with the SimSeg widget after one round of clicks.

Run it under a display or Xvfb::

    xvfb-run -a python docs/make_screenshot.py

With the bundled demo model and hippocampus sample installed, it segments the
hippocampus sample with the demo model. Otherwise it uses the synthetic phantom and
``--checkpoint`` (a phantom-trained checkpoint); without one it falls back to an
untrained tiny network, which shows the interface but not meaningful labels.

The clicks imitate a user: on the slice with the most labelled tissue, one or two
clicks per class at the points deepest inside that class's reference region.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _untrained_checkpoint(class_names, folder: Path) -> Path:
    """A tiny random network, only to show the interface when no model is available."""
    from napari_simseg.core.interaction.memory import input_channels
    from napari_simseg.core.network.checkpoint import CheckpointMeta, save_checkpoint
    from napari_simseg.core.network.model import ModelConfig, build_model

    n = len(class_names)
    cfg = ModelConfig(
        in_channels=input_channels("sim", n, 3), n_classes=n, decoder="convlstm",
        encoder="resnet18", encoder_depth=3, decoder_channels=(32, 16, 8),
    )
    meta = CheckpointMeta(class_names=list(class_names), memory="sim", depth=3, click_radius=2, model=cfg.to_dict())
    return save_checkpoint(folder / "untrained.safetensors", build_model(cfg).eval(), meta)


def _user_clicks(reference: np.ndarray, n_classes: int, per_class: int = 2) -> list:
    """Clicks at the pixels deepest inside each class region of one slice, (class, y, x)."""
    from scipy import ndimage

    clicks = []
    for cls in range(n_classes):
        mask = reference == cls
        for _ in range(per_class):
            if not mask.any():
                break
            depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
            y, x = np.unravel_index(np.argmax(depth), depth.shape)
            clicks.append((cls, int(y), int(x)))
            yy, xx = np.ogrid[: mask.shape[0], : mask.shape[1]]
            far = max(2.0, depth[y, x])  # the next click lands elsewhere in the region
            mask = mask & ((yy - y) ** 2 + (xx - x) ** 2 > (2 * far) ** 2)
    return clicks


def _wait(app, condition, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        app.processEvents()
        if condition():
            return True
        time.sleep(0.02)
    return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "screenshot.png")
    parser.add_argument("--checkpoint", help="checkpoint for the phantom (default: untrained)")
    parser.add_argument("--sample", choices=("auto", "hippocampus", "phantom"), default="auto")
    parser.add_argument("--size", default="1400x860", help="window size WxH")
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_simseg._sample_data import hippocampus_available
    from napari_simseg.core.io.resources import DEMO_CHECKPOINT

    sample = args.sample
    if sample == "auto":
        sample = "hippocampus" if DEMO_CHECKPOINT.is_file() and hippocampus_available() else "phantom"

    viewer = napari.Viewer(title="napari-simseg")
    width, height = (int(v) for v in args.size.lower().split("x"))
    viewer.window.resize(width, height)
    layers = viewer.open_sample("napari-simseg", sample)
    image = next(lay for lay in layers if lay._type_string == "image")
    reference = next((lay for lay in layers if lay._type_string == "labels"), None)
    if reference is None:
        print("the sample has no reference labels to place clicks from", file=sys.stderr)
        return 1
    reference.visible = False  # show SimSeg's result, not the reference
    class_names = reference.metadata["class_names"]

    tmp = tempfile.TemporaryDirectory()
    if sample == "hippocampus":
        checkpoint = "demo"
    elif args.checkpoint:
        checkpoint = args.checkpoint
    else:
        print("warning: no phantom checkpoint given; using an untrained network", file=sys.stderr)
        from napari_simseg._llvm_guard import avoid_triton_llvm_clash

        avoid_triton_llvm_clash()  # torch is imported after the canvas exists
        checkpoint = _untrained_checkpoint(class_names, Path(tmp.name))

    _, widget = viewer.window.add_plugin_dock_widget("napari-simseg", "SimSeg")
    widget.image_combo.setCurrentText(image.name)
    widget.set_checkpoint(checkpoint)
    widget.overwrite_policy = "always"
    if not widget.start(wait=True):
        print(f"could not start: {widget.status_label.text()}", file=sys.stderr)
        return 1

    ref = np.asarray(reference.data)
    z = int(np.argmax((ref > 0).reshape(ref.shape[0], -1).sum(axis=1)))
    viewer.dims.set_current_step(0, z)
    viewer.reset_view()
    clicks = _user_clicks(ref[z], len(class_names))
    rounds = []
    widget.round_finished.connect(rounds.append)
    for cls, y, x in clicks:
        viewer.layers[f"{class_names[cls]} clicks"].add([z, y, x])
    app = QApplication.instance()
    if not _wait(app, lambda: rounds and widget.worker is None, timeout_s=300):
        print(f"no result: {widget.status_label.text()}", file=sys.stderr)
        return 1
    viewer.layers.selection.active = widget.session.labels_layer
    _wait(app, lambda: False, timeout_s=1.0)  # let the canvas draw

    shot = viewer.screenshot(canvas_only=False, flash=False)
    from PIL import Image

    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(shot)).save(args.out)
    print(f"{args.out}: {shot.shape[1]}x{shot.shape[0]}, {len(clicks)} clicks on slice {z}, "
          f"{widget.latency_label.text()}")
    viewer.close()
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
