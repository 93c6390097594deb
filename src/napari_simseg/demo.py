"""``simseg demo``: the bundled sample and model, in napari or headless."""

from __future__ import annotations

import sys

from napari_simseg.core.io.resources import SAMPLE_DIR

__all__ = ["run_demo"]


def _sample_paths():
    images = sorted((SAMPLE_DIR / "images").glob("*.nii.gz"))
    if not images:
        raise FileNotFoundError(
            f"the bundled sample volumes are missing ({SAMPLE_DIR}); reinstall napari-simseg"
        )
    return images


def run_headless(checkpoint: str = "demo", device: str = "auto", clicks=(0, 1, 2, 3), log=print) -> dict:
    """Run the evaluation virtual user on the bundled sample(s); print Dice per class."""
    from napari_simseg.core.jobs.evaluation import evaluate, format_report

    _sample_paths()
    result = evaluate(
        checkpoint=checkpoint, data=SAMPLE_DIR, split="all", clicks=clicks, device=device,
        noc_clicks=0, name="demo", progress=False,
    )
    log(format_report(result))
    return result


def run_gui(checkpoint: str = "demo", device: str = "auto") -> None:
    """Open napari with the first sample volume, the demo model and the SimSeg widget."""
    import napari

    from napari_simseg._reader import get_reader

    image_path = _sample_paths()[0]
    viewer = napari.Viewer(title="napari-simseg demo")
    for data, kwargs, layer_type in get_reader(str(image_path))(str(image_path)):
        kwargs = dict(kwargs)
        kwargs.setdefault("name", image_path.name.split(".")[0])
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    _, widget = viewer.window.add_plugin_dock_widget("napari-simseg", "SimSeg")
    if hasattr(widget, "configure"):
        widget.configure(checkpoint=checkpoint, device=device, start=True)
    napari.run()


def run_demo(args) -> int:
    clicks = [int(k) for k in str(getattr(args, "clicks", "0,1,2,3")).split(",") if k.strip()]
    if args.headless:
        run_headless(args.checkpoint, args.device, clicks)
        return 0
    try:
        import napari  # noqa: F401
    except ImportError:
        print("simseg demo: napari is not installed; use --headless or pip install 'napari[pyqt6]'",
              file=sys.stderr)
        return 2
    run_gui(args.checkpoint, args.device)
    return 0
