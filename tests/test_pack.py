"""The pack as ComfyUI sees it, without a server: registration, naming, cheap import, any folder name."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from comfy_harness import REPO_ROOT

HEAVY_MODULES = ("torch", "diffusers", "transformers", "onnxruntime", "spandrel", "cv2", "huggingface_hub")


def load_pack_like_comfyui(folder_name: str, tmp_path):
    """Import the repo from custom_nodes/<folder_name> exactly as ComfyUI's loader does."""
    link = tmp_path / folder_name
    link.symlink_to(REPO_ROOT, target_is_directory=True)
    module_name = str(link).replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(module_name, link / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def test_import_loads_no_heavy_module():
    code = ("import json, sys, comfyui_diffbody; "
            f"print(json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


@pytest.mark.parametrize("folder", ["ComfyUI-DiffBody", "comfyui-diffbody", "ComfyUI-DiffBody-main", "comfyui_diffbody"])
def test_pack_loads_under_any_folder_name(folder, tmp_path):
    import comfyui_diffbody

    module = load_pack_like_comfyui(folder, tmp_path)
    assert sorted(module.NODE_CLASS_MAPPINGS) == sorted(comfyui_diffbody.NODE_CLASS_MAPPINGS)
    assert module.WEB_DIRECTORY == "./js"


def test_every_node_is_prefixed_and_documented():
    from comfyui_diffbody import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    assert NODE_CLASS_MAPPINGS, "the pack registers no node"
    for name, cls in NODE_CLASS_MAPPINGS.items():
        assert name.startswith("DiffBody"), name
        assert NODE_DISPLAY_NAME_MAPPINGS[name].startswith("DiffBody "), name
        assert cls.CATEGORY.startswith("DiffBody/"), name
        assert len(cls.DESCRIPTION) > 40, name
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES), name
        assert callable(getattr(cls, cls.FUNCTION)), name


def test_every_input_has_a_tooltip(monkeypatch):
    from comfyui_diffbody import NODE_CLASS_MAPPINGS
    from comfyui_diffbody.nodes import glue

    # The dropdown contents come from ComfyUI's folders; their structure does not.
    monkeypatch.setattr(glue, "list_files", lambda folder: ["a.ckpt"])
    monkeypatch.setattr(glue, "list_model_dirs", lambda folder: ["a"])
    for name, cls in NODE_CLASS_MAPPINGS.items():
        for section in cls.INPUT_TYPES().values():
            for input_name, spec in section.items():
                assert len(spec) == 2 and spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"


@pytest.mark.parametrize("folder", ["ComfyUI-DiffBody", "ComfyUI-DiffBody-main", "ComfyUI DiffBody v1.2"])
def test_test_command_runs_in_any_clone_folder(folder, tmp_path):
    """The README clones into `ComfyUI-DiffBody`, which is no Python identifier: pytest must not try
    to import the repository root as a package named after its folder (testing/pytest_plugin.py)."""
    clone = tmp_path / folder
    shutil.copytree(REPO_ROOT, clone, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", ".pytest_cache", "*.egg-info", "test-artifacts", "diffbody-output"))
    # `comfyui_diffbody` must resolve to the copy (not this checkout's editable install), so the copy's
    # own pytest configuration and plugin are what is tested.
    site = tmp_path / "site"
    site.mkdir()
    (site / "comfyui_diffbody").symlink_to(clone, target_is_directory=True)
    env = dict(os.environ, PYTHONPATH=str(site))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_image.py"],
                         cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and "error" not in run.stdout.lower(), run.stdout[-3000:]
