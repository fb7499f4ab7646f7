"""The package's layout as the house rules have it: imports go only downwards between its subpackages (ui → views →
serve → training → metrics → io, runtime, lab → models, diffusion → checks, image → text), no module imports itself
back through others, and no module, nor app.py or train.py, is over 500 lines. Read from the source with ``ast``,
function-level imports included, so nothing is imported."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 500
# each subpackage (or top-level module) of ddpm_app and the rank it may import below; the entry points are on top
RANKS = {
    "text": 0, "fonts": 0, "numbers": 0, "assets": 0,
    "checks": 1, "image": 1,
    "pictures": 2,
    "diffusion": 3, "models": 3,
    "io": 4, "runtime": 4, "lab": 4,
    "metrics": 5,
    "training": 6,
    "serve": 7,
    "views": 8,
    "ui": 9,
    "cli": 10,
    "app": 11, "train": 11,
    "ddpm_app": 12,  # the package's own __init__
}


def modules(root: Path) -> dict[str, Path]:
    """Every module of ddpm_app under ``root`` by dotted name (a package by its own name), and the entry points."""
    found = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
             for p in sorted((root / "ddpm_app").rglob("*.py"))}
    return found | {name: root / f"{name}.py" for name in ("app", "train") if (root / f"{name}.py").is_file()}


def import_graph(root: Path) -> dict[str, set[str]]:
    """module → the modules of ddpm_app it imports (``from ddpm_app.x import y`` counts as ddpm_app.x.y when that is a
    module, else ddpm_app.x)."""
    found = modules(root)

    def known(name: str) -> str:
        while name and name not in found:  # "": a name of no module here
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for name, path in found.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level − 1
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                if base.split(".")[0] == "ddpm_app":
                    targets |= {known(f"{base}.{alias.name}") for alias in node.names}
            elif isinstance(node, ast.Import):
                targets |= {known(alias.name) for alias in node.names if alias.name.split(".")[0] == "ddpm_app"}
        graph[name] = targets - {name, "ddpm_app", ""}
    return graph


def layer(module: str) -> str:
    """The subpackage (or top-level module) of ddpm_app a module belongs to: ddpm_app.serve.worker → serve."""
    parts = module.split(".")
    return parts[1] if parts[0] == "ddpm_app" and len(parts) > 1 else parts[0]


def problems(root: Path) -> list[str]:
    """What breaks the layout under ``root``: an import cycle, an import upwards, a module over MAX_LINES lines."""
    graph = import_graph(root)
    found = []
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        found.append(f"import cycle: {' → '.join(e.args[1])}")
    for module, imported in sorted(graph.items()):
        for target in sorted(imported):
            a, b = layer(module), layer(target)
            if a != b and RANKS[a] <= RANKS[b]:
                found.append(f"{module} imports {target}: {a} is not above {b}")
    for module, path in modules(root).items():
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            found.append(f"{path.relative_to(root)}: {lines} lines")
    return found


def test_imports_go_downwards_without_cycles_and_modules_stay_short():
    graph = import_graph(ROOT)
    assert len(graph) > 80 and sum(map(len, graph.values())) > 300  # the reader finds the package and its imports
    assert {layer(m) for m in graph} <= set(RANKS)  # a new subpackage gets a rank here
    assert problems(ROOT) == []


@pytest.mark.parametrize("files, expected", [
    ({"ddpm_app/serve/a.py": "from ddpm_app.serve import b", "ddpm_app/serve/b.py": "import ddpm_app.serve.a"},
     "import cycle"),
    ({"ddpm_app/diffusion/a.py": "def f():\n    from ddpm_app.ui.page import build\n", "ddpm_app/ui/page.py": ""},
     "ddpm_app.diffusion.a imports ddpm_app.ui.page: diffusion is not above ui"),
    ({"ddpm_app/serve/a.py": "x = 1\n" * (MAX_LINES + 1)}, f"ddpm_app/serve/a.py: {MAX_LINES + 1} lines"),
])
def test_the_check_finds_a_cycle_an_upward_import_and_a_long_module(tmp_path, files, expected):
    for name, source in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(source)
    assert any(p.startswith(expected) for p in problems(tmp_path)), problems(tmp_path)
