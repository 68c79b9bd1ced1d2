"""pytest plugin (loaded by `-p` from pyproject's addopts): the repository root is a ComfyUI pack,
not a test package.

The root holds `__init__.py` because ComfyUI imports the pack from `custom_nodes/<any folder>/`.
pytest (8+) collects every folder with an `__init__.py` as a Package and imports that file, naming
it after the folder. Under a folder name that is not a Python identifier (`ComfyUI-DiffBody`, the
name the README clones into; `ComfyUI-DiffBody-main`, GitHub's zip) it falls back to importing it as
a top-level module `__init__`, whose relative imports then fail, and every test errors at setup. In
a folder that is an identifier it imported the whole pack a second time under that folder's name.

Tests import the pack as `comfyui_diffbody` (the editable install), so the root is collected as a
plain directory instead: nothing of the pack is imported by collection, whatever the folder is called.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_collect_directory(path: Path, parent: pytest.Collector):
    if path == parent.config.rootpath and (path / "__init__.py").is_file():
        return pytest.Dir.from_parent(parent, path=path)
    return None
