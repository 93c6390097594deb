"""The core stays GUI-free and ``import napari_simseg`` stays cheap."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

GUI_MODULES = ("napari", "qtpy", "magicgui", "PyQt6", "PyQt5", "PySide2", "PySide6", "vispy")


def _modules_after(code: str) -> set:
    script = textwrap.dedent(code) + textwrap.dedent(
        """
        import json, sys
        print(json.dumps(sorted(sys.modules)))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def _gui(modules: set) -> list:
    return sorted(m for m in modules if m.split(".")[0] in GUI_MODULES)


def test_core_and_its_submodules_import_no_gui():
    loaded = _modules_after(
        """
        import importlib, pkgutil
        import napari_simseg.core as core
        for info in pkgutil.walk_packages(core.__path__, "napari_simseg.core."):
            importlib.import_module(info.name)
        """
    )
    assert "napari_simseg.core.session.interactive" in loaded
    assert _gui(loaded) == []


def test_package_import_is_lazy():
    loaded = _modules_after("import napari_simseg")
    assert _gui(loaded) == []
    assert "torch" not in loaded


def test_lazy_exports_resolve():
    loaded = _modules_after(
        """
        from napari_simseg import InteractiveSession, Click
        assert InteractiveSession.__name__ == "InteractiveSession"
        """
    )
    assert _gui(loaded) == []
    _modules_after("from napari_simseg import ViewerSession, SimSegWidget")
