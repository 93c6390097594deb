"""The package's layers, checked on its source: the import graph (imports inside
functions included) has no circle and no upward edge, no module imports another
module's private name, modules and functions stay short, argparse stays out of core,
and a click's path (the session) passes through no data, engine or job module.

The layers are the sub-packages of ``core`` (bottom to top in ``LAYERS``), each described by its
docstring; ``docs/architecture.md`` draws them. A new module goes into one of them.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = "napari_simseg"
ROOT = Path(__file__).resolve().parents[1] / "src" / PACKAGE

# bottom to top: a module may import from its own package (without a circle) and from the packages below
LAYERS = ["core.io", "core.imaging", "core.interaction", "core.network", "core.session", "core.data",
          "core.engine", "core.jobs", "app"]
APP_PACKAGE = "annotator"  # the napari adapter (viewer session, layers, jobs, teach, dialogs)


def _layer(module: str) -> str:
    """A module's layer: its sub-package of core, or ``app`` for the rest of the package."""
    for layer in LAYERS[:-1]:
        if module == layer or module.startswith(layer + "."):
            return layer
    return "app"


MAX_MODULE_LINES = 800
MAX_FUNCTION_LINES = 100
MAX_PARAMETERS = 8  # beyond it: an options dataclass
# signatures kept as they are: the console's ViewerSession(...) and load_case's reading switches
LONG_SIGNATURES = {"annotator.viewer_session.ViewerSession.__init__": 10,
                   "core.data.datasets.load_case": 9}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


@cache
def _modules() -> dict:
    """Module name (relative to the package, "" for the package) -> (path, ast)."""
    return {_module_name(p): (p, ast.parse(p.read_text(encoding="utf-8"), str(p)))
            for p in sorted(ROOT.rglob("*.py"))}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str | None:
    """The package-relative module an ``ImportFrom`` reads from (None: outside the package)."""
    if node.level == 0:
        name = node.module or ""
        if name != PACKAGE and not name.startswith(PACKAGE + "."):
            return None
        return name[len(PACKAGE) + 1:] if name != PACKAGE else ""
    base = module.split(".") if module else []
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    return ".".join([*base, *(node.module.split(".") if node.module else [])])


def _imports(module: str):
    """``(imported module, names taken from it)`` for every import in ``module``, function-level ones too."""
    path, tree = _modules()[module]
    known = _modules()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    out.append((alias.name[len(PACKAGE) + 1:] if alias.name != PACKAGE else "", []))
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path.name == "__init__.py", node)
            if target is None:
                continue
            names = []
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target else alias.name
                if sub in known:  # ``from . import datasets``: an import of that module
                    out.append((sub, []))
                else:
                    names.append(alias.name)
            if names or target in known:
                out.append((target, names))
    return out


def _graph() -> dict:
    return {m: sorted({t for t, _ in _imports(m) if t != m}) for m in _modules()}


def test_core_modules_live_in_a_layer_package():
    """``core/`` holds only its layer packages: a module dropped loose into it has no layer."""
    loose = sorted(m for m in _modules() if m.startswith("core.") and _layer(m) == "app")
    assert not loose, f"move these modules into a sub-package of core ({LAYERS[:-1]}): {loose}"
    present = {m for m in _modules() if m in LAYERS}
    assert present == set(LAYERS[:-1]), sorted(set(LAYERS[:-1]) - present)


def test_the_napari_adapter_is_one_package():
    """Viewer session, layers, jobs, teaching and dialogs live in ``annotator``; the top level
    holds only what the manifest and the command line name."""
    top = {m for m in _modules() if "." not in m and m != "core"}
    assert top == {"", "cli", "demo", "_widget", "_reader", "_writer", "_sample_data", "_llvm_guard",
                   APP_PACKAGE}, sorted(top)
    for name in ("viewer_session", "layers", "jobs", "teach", "dialogs"):
        assert f"{APP_PACKAGE}.{name}" in _modules()


def test_imports_only_go_down():
    level = {name: i for i, name in enumerate(LAYERS)}
    upward = [f"{m} ({_layer(m)}) imports {t} ({_layer(t)})"
              for m, targets in _graph().items() for t in targets if level[_layer(t)] > level[_layer(m)]]
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    graph = _graph()
    state: dict = {}
    stack: list = []
    circles = []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in graph.get(m, ()):
            if state.get(t) == "open":
                circles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m)
    assert not circles, "\n".join(circles)


def test_no_module_imports_another_modules_private_names():
    bad = []
    for m in _modules():
        for target, names in _imports(m):
            bad += [f"{m} imports {target}.{n}" for n in names if n.startswith("_") and target != m]
        # ``module._name`` on a module imported whole
        aliases = {}
        for node in ast.walk(_modules()[m][1]):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(m, _modules()[m][0].name == "__init__.py", node)
                for alias in node.names:
                    sub = f"{target}.{alias.name}" if target else alias.name
                    if target is not None and sub in _modules():
                        aliases[alias.asname or alias.name] = sub
        for node in ast.walk(_modules()[m][1]):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")):
                bad.append(f"{m} uses {aliases[node.value.id]}.{node.attr}")
    assert not bad, "\n".join(bad)


def test_modules_and_functions_stay_short():
    long = []
    for _m, (path, tree) in _modules().items():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_MODULE_LINES:
            long.append(f"{path.name}: {n} lines")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long.append(f"{path.name}:{node.lineno} {node.name}: {size} lines")
    assert not long, "\n".join(long)


def test_long_parameter_lists_become_options_objects():
    """Functions take at most MAX_PARAMETERS parameters (self and **fields not counted)."""
    long = []
    for module, (_path, tree) in _modules().items():
        scopes = [(node, module) for node in tree.body]
        for node, prefix in scopes:
            if isinstance(node, ast.ClassDef):
                scopes += [(child, f"{prefix}.{node.name}") for child in node.body]
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
                count = len(names) - (names[:1] in (["self"], ["cls"]))
                name = f"{prefix}.{node.name}"
                if count > LONG_SIGNATURES.get(name, MAX_PARAMETERS):
                    long.append(f"{name}: {count} parameters")
    assert not long, "\n".join(long)


def _imported_top_level(module: str) -> set:
    """Every top-level package (``argparse``, ``torch`` ...) a module imports, anywhere in it."""
    out = set()
    for node in ast.walk(_modules()[module][1]):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_no_argparse_and_no_gui_under_core():
    for m in _modules():
        if m == "core" or m.startswith("core."):
            used = _imported_top_level(m)
            assert "argparse" not in used, f"{m} imports argparse: parsers live in napari_simseg.cli"
            gui = used & {"napari", "qtpy", "magicgui", "PyQt6", "PyQt5", "PySide6", "vispy", "superqt"}
            assert not gui, f"{m} imports {gui}"


def test_widget_and_viewer_session_stay_in_their_lanes():
    assert "torch" not in _imported_top_level("_widget"), "the widget gets numpy from core, never torch"
    qt_free = ("viewer_session", "session_start", "jobs", "slice_jobs", "session_files", "layers", "labels_view",
               "click_layers", "teach", "shortcuts", "colors")
    for m in (f"{APP_PACKAGE}.{name}" for name in qt_free):
        assert m in _modules(), m
        assert not _imported_top_level(m) & {"qtpy", "PyQt6", "PyQt5", "PySide6", "superqt"}, f"{m} must stay Qt-free"


def test_the_adapter_package_says_what_it_holds():
    """``annotator/__init__``'s docstring names each of its modules."""
    doc = ast.get_docstring(_modules()[APP_PACKAGE][1]) or ""
    for m in _modules():
        if m.startswith(APP_PACKAGE + "."):
            assert f"``{m.rsplit('.', 1)[1]}``" in doc, f"{APP_PACKAGE}/__init__.py's docstring does not describe {m}"


def test_the_adapter_reaches_into_no_other_objects_privates():
    """In the napari adapter and the widget, ``x._name`` is only ever ``self._name`` or ``cls._name``:
    collaborators talk through public, narrow interfaces."""
    bad = []
    for m, (path, tree) in _modules().items():
        if m == "_widget" or m.startswith(APP_PACKAGE):
            for node in ast.walk(tree):
                if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                    bad.append(f"{path.name}:{node.lineno} .{node.attr}")
    assert not bad, "\n".join(bad)


def test_no_mixin_in_the_adapter():
    """The napari adapter's classes are composed, not mixed in: no class of it inherits from
    another class of the package (mixins reached into ViewerSession's privates)."""
    ours = {node.name for m, (_, tree) in _modules().items() for node in ast.walk(tree)
            if isinstance(node, ast.ClassDef)}
    mixed = [f"{m}.{node.name}({base.id})" for m, (_, tree) in _modules().items() if m.startswith(APP_PACKAGE)
             for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
             for base in node.bases if isinstance(base, ast.Name) and base.id in ours]
    assert not mixed, mixed


def _closure(module: str) -> set:
    graph, seen, todo = _graph(), set(), [module]
    while todo:
        m = todo.pop()
        for t in graph.get(m, ()):
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return seen


@pytest.mark.parametrize("start", ["core.session.interactive", "annotator.viewer_session"])
def test_a_click_passes_no_data_engine_or_job_module(start):
    """points -> widget -> ViewerSession -> session -> predictor -> decision, nothing else."""
    reached = {_layer(m) for m in _closure(start)}
    assert not reached & {"core.data", "core.engine", "core.jobs"}, sorted(_closure(start))
    assert {"core.network.predictor", "core.network.decision", "core.interaction.memory",
            "core.interaction.clicks"} <= _closure("core.session.interactive")


def test_the_viewer_process_never_imports_the_trainer():
    """Teaching trains in a process of its own: ``core.session.teaching`` starts
    ``core.jobs.teach_worker`` by module name, so the viewer's process (and its event loop)
    never loads the training stack."""
    reached = {_layer(m) for m in _closure("core.session.teaching")}
    assert not reached & {"core.data", "core.engine", "core.jobs"}, sorted(_closure("core.session.teaching"))
    assert "core.session.teaching" in _closure("annotator.viewer_session")


def test_each_layer_package_says_what_it_holds():
    """Every layer package's docstring names each of its modules, so ``help(package)`` is a map."""
    for layer in LAYERS[:-1]:
        doc = ast.get_docstring(_modules()[layer][1]) or ""
        for m in _modules():
            if m.startswith(layer + "."):
                name = m.rsplit(".", 1)[1]
                assert f"``{name}``" in doc, f"{layer}/__init__.py's docstring does not describe {name}"
