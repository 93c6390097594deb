"""Files shipped inside the package: the demo model and sample volumes."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEMO_CHECKPOINT", "RESOURCES", "SAMPLE_DIR", "folder_hint", "peek_channel_names", "resolve_checkpoint"]

RESOURCES = Path(__file__).resolve().parents[2] / "resources"
DEMO_CHECKPOINT = RESOURCES / "demo_hippocampus.safetensors"
# sample volumes in the plain-folder layout: images/, labels/, classes.json, LICENSE.txt
SAMPLE_DIR = RESOURCES / "sample"


def resolve_checkpoint(name) -> Path:
    """Map ``"demo"`` to the bundled demo model; anything else is a path.

    Raises
    ------
    FileNotFoundError
        When the file does not exist, with what to do about it.
    """
    if str(name) == "demo":
        if not DEMO_CHECKPOINT.is_file():
            raise FileNotFoundError(
                f"the bundled demo model is missing ({DEMO_CHECKPOINT}); reinstall "
                "napari-simseg or pass --checkpoint PATH"
            )
        return DEMO_CHECKPOINT
    path = Path(name).expanduser()
    if path.is_dir():
        raise FileNotFoundError(f"checkpoint {path} is a folder, not a file; {folder_hint(path)}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def folder_hint(folder) -> str:
    """What to pass instead of a folder given as a checkpoint (its ``.safetensors`` files)."""
    found = sorted(p.name for p in Path(folder).glob("*.safetensors"))
    if not found:
        return "pass a .safetensors checkpoint file"
    shown = ", ".join(found[:4]) + (" ..." if len(found) > 4 else "")
    return f"pass one of the checkpoints in it ({shown}), e.g. {Path(folder) / found[0]}"


def peek_channel_names(checkpoint) -> list:
    """The image channels a checkpoint's network reads, from its header alone.

    Cheap and torch-free (the widget asks while the user picks a checkpoint); any
    problem with the file reads as one unnamed channel here and is reported, with its
    reason, when the checkpoint is loaded.
    """
    import json

    try:
        from safetensors import safe_open

        with safe_open(str(resolve_checkpoint(checkpoint)), framework="numpy") as f:
            names = json.loads((f.metadata() or {}).get("simseg", "{}")).get("channel_names")
    except Exception:  # noqa: BLE001 - reported at load, with the reason
        return ["image"]
    if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
        return names
    return ["image"]
