"""The house's structure (/work/shared/docs/architecture.md), checked on the source with `ast`.

(a) No function or method outside tests/ is longer than 80 lines.
(b) Floors: models (1) <- pipelines (2) <- nodes, testing (3) <- training (4) <- evaluation (5) <- the entry
    points cli.py and __main__.py (6). A module imports only from its own floor or lower ones (relative and
    `comfyui_diffbody.` imports, those inside functions included); the root __init__.py is ComfyUI's entry
    into nodes/ (floor 3). scripts/, bench/ and examples/ are outside the package and may import anything. Only nodes/
    imports ComfyUI (comfy, comfy_extras, folder_paths, nodes, server, ...).
(c) No import circle among the package's modules (module-level imports, those under `if TYPE_CHECKING:`
    included: a circle the type checker needs is still two modules that cannot be understood apart;
    imports inside functions are not counted).

Each check is also run on a planted violation (a small fake package in tmp_path), so it is known to fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "comfyui_diffbody"
MAX_FUNCTION_LINES = 80
FLOORS = {"models": 1, "pipelines": 2, "nodes": 3, "testing": 3, "training": 4, "evaluation": 5,
          "cli": 6, "__main__": 6, "__init__": 3}
OUTSIDE_PACKAGE = ("tests", "scripts", "bench", "examples")
COMFYUI_MODULES = frozenset({"comfy", "comfy_extras", "comfy_execution", "comfy_api", "comfy_config", "folder_paths",
                             "nodes", "server", "execution", "latent_preview", "node_helpers", "app"})


# -- reading the source ------------------------------------------------------------------------------------

def python_files(root: Path, skip: tuple[str, ...] = ()) -> list[Path]:
    """Every .py file below `root` outside hidden folders, caches and the top-level folders in `skip`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if parts[0] in skip or any(p.startswith(".") or p == "__pycache__" or p.endswith("venv") for p in parts):
            continue
        found.append(path)
    return found


def package_modules(root: Path) -> dict[str, Path]:
    """Dotted module name inside the package ("nodes.glue", "nodes" for nodes/__init__.py, "__init__" for
    the root's) -> its file."""
    modules = {}
    for path in python_files(root, skip=OUTSIDE_PACKAGE):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if len(parts) > 1 and parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def is_package(name: str, modules: dict[str, Path]) -> bool:
    return name == "__init__" or modules[name].name == "__init__.py"


def imports(name: str, modules: dict[str, Path], *, module_level: bool = False) -> list[tuple[int, str, bool]]:
    """(line, imported module, is it ours) for every import in module `name`: ours as a dotted name inside
    the package, foreign ones as written. module_level: only those outside functions and methods."""
    tree = ast.parse(modules[name].read_text(encoding="utf-8"))
    package = [] if name == "__init__" else name.split(".") if is_package(name, modules) else name.split(".")[:-1]
    found = []
    for node in (_module_level_nodes(tree.body) if module_level else ast.walk(tree)):
        if isinstance(node, ast.Import):
            found += [_classify(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and not _classify(node.lineno, node.module)[2]:
            found.append(_classify(node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:  # from comfyui_diffbody.x import y
                module = _classify(node.lineno, node.module)[1]
                base = [] if module == "__init__" else module.split(".")
            else:
                base = package[:len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            for alias in node.names:  # `from . import glue` imports the module nodes.glue
                submodule = ".".join(base + [alias.name])
                found.append((node.lineno, submodule if submodule in modules else ".".join(base) or "__init__", True))
    return found


def _classify(line: int, module: str) -> tuple[int, str, bool]:
    if module == PACKAGE or module.startswith(PACKAGE + "."):
        return line, module[len(PACKAGE) + 1:] or "__init__", True
    return line, module, False


def _module_level_nodes(body: list[ast.stmt]):
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if isinstance(node, ast.ClassDef):  # a class body is module level; its methods are not
                yield from _module_level_nodes(node.body)
            continue
        yield node
        for field in ("body", "orelse", "finalbody", "handlers"):
            yield from _module_level_nodes(getattr(node, field, []))


# -- the checks (each returns its offenders, empty when the rule holds) --------------------------------------

def long_functions(root: Path, skip: tuple[str, ...] = ("tests",)) -> list[str]:
    offenders = []
    for path in python_files(root, skip=skip):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    offenders.append(f"{path.relative_to(root).as_posix()}:{node.lineno} {node.name} ({length} lines)")
    return offenders


def floor_of(name: str) -> int | None:
    return FLOORS.get(name.split(".")[0])


def floor_violations(root: Path) -> list[str]:
    modules = package_modules(root)
    offenders = [f"{name}: not on any floor (add its folder to FLOORS)" for name in modules if floor_of(name) is None]
    for name in modules:
        floor = floor_of(name)
        for line, target, ours in imports(name, modules):
            target_floor = floor_of(target)
            if ours and floor is not None and target_floor is not None and target_floor > floor:
                offenders.append(f"{modules[name].relative_to(root).as_posix()}:{line} imports {target} "
                                 f"(floor {target_floor}) from floor {floor}")
    return offenders


# Who may import ComfyUI besides nodes/, and why.
COMFYUI_IMPORTERS = {
    # the real-size factory writes SDXL and SD 2.1 checkpoints with ComfyUI's own save code
    # (model_config.process_*_state_dict_for_saving), so the files are laid out as ComfyUI writes them
    "testing.realsize.checkpoints": "saves checkpoints the way ComfyUI does",
}


def comfyui_imports(root: Path) -> list[str]:
    modules = package_modules(root)
    return [f"{modules[name].relative_to(root).as_posix()}:{line} imports {target}"
            for name in modules if name.split(".")[0] != "nodes" and name not in COMFYUI_IMPORTERS
            for line, target, ours in imports(name, modules) if not ours and target.split(".")[0] in COMFYUI_MODULES]


def import_circles(root: Path) -> list[str]:
    """Strongly connected components of more than one module in the graph of module-level imports."""
    modules = package_modules(root)
    graph = {name: sorted({t for _, t, ours in imports(name, modules, module_level=True) if ours and t in modules})
             for name in modules}
    return sorted(" <-> ".join(sorted(component)) for component in _strongly_connected(graph) if len(component) > 1)


def _strongly_connected(graph: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(component)

    for node in graph:
        if node not in index:
            visit(node)
    return components


# -- the repository ----------------------------------------------------------------------------------------

def test_no_function_outside_tests_is_longer_than_80_lines():
    assert long_functions(REPO_ROOT) == []


def test_every_import_comes_from_the_same_floor_or_below():
    assert floor_violations(REPO_ROOT) == []


def test_only_nodes_import_comfyui():
    assert comfyui_imports(REPO_ROOT) == []


def test_no_import_circles():
    assert import_circles(REPO_ROOT) == []


def test_the_checks_see_the_whole_package():
    modules = package_modules(REPO_ROOT)
    assert {"__init__", "__main__", "cli", "models.files", "nodes.glue", "pipelines.pose.backends",
            "training.loop", "testing.tiny"} <= set(modules)
    assert not any(name.split(".")[0] in OUTSIDE_PACKAGE for name in modules)


# -- planted violations: each check fails when it should ------------------------------------------------------

def plant(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


CLEAN_PACKAGE = {
    "__init__.py": "from .nodes import stage\n",
    "__main__.py": "from .cli import main\n",
    "cli.py": "from .pipelines import run\n\n\ndef main():\n    from .training import phase\n",
    "models/__init__.py": "",
    "models/net.py": "import torch\n",
    "pipelines/__init__.py": "",
    "pipelines/run.py": "from ..models.net import torch\n",
    "nodes/__init__.py": "from . import stage\n",
    "nodes/stage.py": "import folder_paths\nfrom . import glue\n",
    "nodes/glue.py": "def progress():\n    import comfy.utils\n",
    "training/__init__.py": "",
    "training/phase.py": "from comfyui_diffbody.testing import tiny\nfrom ..pipelines.run import torch\n",
    "testing/__init__.py": "",
    "testing/tiny.py": "from ..models import net\n",
    "tests/test_x.py": "from comfyui_diffbody.cli import main\n",
    "scripts/tool.py": "import folder_paths\nfrom comfyui_diffbody.cli import main\n",
}


def test_a_clean_fake_package_passes_every_check(tmp_path):
    root = plant(tmp_path, CLEAN_PACKAGE)
    assert long_functions(root) == floor_violations(root) == comfyui_imports(root) == import_circles(root) == []


def test_a_long_function_is_listed(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    root = plant(tmp_path, {**CLEAN_PACKAGE, "pipelines/run.py": f"def run():\n{body}",
                            "tests/test_long.py": f"def test_long():\n{body}"})
    assert long_functions(root) == [f"pipelines/run.py:1 run ({MAX_FUNCTION_LINES + 1} lines)"]


@pytest.mark.parametrize("path, text, expected", [
    ("models/net.py", "def f():\n    from ..pipelines import run\n", "models/net.py:2 imports pipelines.run"),
    ("pipelines/run.py", "from comfyui_diffbody.nodes.glue import progress\n", "pipelines/run.py:1 imports nodes.glue"),
    ("training/phase.py", "from ..cli import main\n", "training/phase.py:1 imports cli (floor 6)"),
    ("testing/tiny.py", "from ..training.phase import x\n", "testing/tiny.py:1 imports training.phase"),
    ("extra.py", "", "extra: not on any floor"),
    ("extra/thing.py", "", "extra.thing: not on any floor"),
])
def test_an_import_from_a_higher_floor_is_listed(tmp_path, path, text, expected):
    root = plant(tmp_path, {**CLEAN_PACKAGE, path: text})
    offenders = floor_violations(root)
    assert len(offenders) == 1 and offenders[0].startswith(expected), offenders


@pytest.mark.parametrize("path, text", [
    ("models/net.py", "def f():\n    import comfy.model_management\n"),
    ("pipelines/run.py", "from folder_paths import models_dir\n"),
    ("training/phase.py", "import comfy_extras.nodes_upscale_model\n"),
    ("__init__.py", "import server\n"),
])
def test_a_comfyui_import_outside_nodes_is_listed(tmp_path, path, text):
    root = plant(tmp_path, {**CLEAN_PACKAGE, path: text})
    assert len(comfyui_imports(root)) == 1


def test_an_import_circle_is_named(tmp_path):
    root = plant(tmp_path, {**CLEAN_PACKAGE,
                            "models/a.py": "from .b import x\n",
                            "models/b.py": "from comfyui_diffbody.models import c\n",
                            "models/c.py": "from . import a\n",
                            # an import inside a function closes no circle; one for the type checker does
                            "models/d.py": "def f():\n    from . import e\n",
                            "models/e.py": "from . import d\n",
                            "models/f.py": "from .g import x\n",
                            "models/g.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .f import y\n"})
    assert import_circles(root) == ["models.a <-> models.b <-> models.c", "models.f <-> models.g"]
