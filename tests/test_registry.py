"""The pack as the Comfy Registry and users' environments get it: pyproject's [tool.comfy] (Models pinned to the
catalogue), comfy-cli's `comfy node validate` and the packed archive (offline), and the dependencies a ComfyUI
environment is not made to install (ONNX Runtime's two builds, accelerate)."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

from comfy_harness import REPO_ROOT

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
ARCHIVE_LEFT_OUT = ("tests/", "bench/", ".ci/", "scripts/", "testing/realsize/", "requirements-dev.txt")


def registry_models_script():
    spec = importlib.util.spec_from_file_location("registry_models", REPO_ROOT / "scripts" / "registry_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def requirement_lines(name: str) -> list[str]:
    lines = (REPO_ROOT / name).read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


# ---- pyproject.toml -------------------------------------------------------------------------------------------

def test_pyproject_models_are_the_catalogue():
    from comfyui_diffbody.models.files import KNOWN_FILES, registry_models

    models = PYPROJECT["tool"]["comfy"]["Models"]
    assert models == registry_models(), "pyproject's Models differ from models/files.py: run scripts/registry_models.py"
    assert len(models) == sum(f.downloadable for f in KNOWN_FILES.values())
    for entry in models:
        assert set(entry) == {"location", "model_url"}
        assert entry["location"].startswith("/")
        assert entry["model_url"].startswith(("https://huggingface.co/", "https://download.pytorch.org/"))


def test_models_check_fails_when_the_catalogue_changes():
    """The generator's --check is a wire between the two: a catalogue without one file no longer matches."""
    from comfyui_diffbody.models.files import registry_models

    script = registry_models_script()
    text = (REPO_ROOT / "pyproject.toml").read_text()
    assert script.with_models(text, registry_models()) == text
    fewer = registry_models()[1:]
    changed = script.with_models(text, fewer)
    assert changed != text
    assert tomllib.loads(changed)["tool"]["comfy"]["Models"] == fewer


def test_tool_comfy_is_complete():
    project, comfy = PYPROJECT["project"], PYPROJECT["tool"]["comfy"]
    # The registry's naming advice: no "ComfyUI" in the node id; the import name stays comfyui_diffbody.
    assert "comfy" not in project["name"].lower()
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"comfyui_diffbody": "."}
    assert project["license"] == {"text": "Apache-2.0"}
    assert (REPO_ROOT / "LICENSE").read_text().split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    repository = project["urls"]["Repository"].removeprefix("https://github.com/")
    assert comfy["Icon"] == f"https://raw.githubusercontent.com/{repository}/main/assets/icon.svg"
    assert (REPO_ROOT / "assets" / "icon.svg").read_text().startswith("<svg ")
    assert comfy["web"] == "js" and (REPO_ROOT / "js").is_dir()
    assert comfy["requires-comfyui"].startswith(">=")
    assert project["dependencies"] == requirement_lines("requirements.txt")


def test_requirements_leave_onnxruntime_and_accelerate_to_the_user_but_not_to_the_tests():
    users = " ".join(requirement_lines("requirements.txt") + PYPROJECT["project"]["dependencies"])
    assert "onnxruntime" not in users and "accelerate" not in users
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert extras["dwpose"] == ["onnxruntime>=1.17"] and extras["dwpose-gpu"] == ["onnxruntime-gpu>=1.17"]
    assert extras["training"] == ["accelerate>=0.34"]
    dev = requirement_lines("requirements-dev.txt")
    assert "onnxruntime>=1.17" in dev and "accelerate>=0.34" in dev and any(r.startswith("comfy-cli") for r in dev)


# ---- comfy-cli on a copy of the checkout -----------------------------------------------------------------------

def comfy_cli_or_skip() -> None:
    if importlib.util.find_spec("comfy_cli") is None:
        reason = "comfy-cli is not installed (requirements-dev.txt)"
        if os.environ.get("CI"):
            pytest.fail(f"the registry checks must run in CI: {reason}")
        pytest.skip(reason)


def tracked_copy(dest):
    """The checkout's git-tracked files (as they are in the work tree) in a fresh git repository: what
    `comfy node pack` packs, without this checkout's untracked or ignored files."""
    listed = subprocess.run(["git", "-C", str(REPO_ROOT), "ls-files", "-z"], capture_output=True, check=True)
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = REPO_ROOT / name
        if source.exists() or source.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name, follow_symlinks=False)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)


def comfy(args: list[str], cwd, home) -> str:
    """`comfy <args>` in a network namespace of its own (no network at all) with telemetry off and a throwaway
    home for its config; its output, after checking it exited 0."""
    env = {**os.environ, "HOME": str(home), "DO_NOT_TRACK": "1", "COMFY_NO_TELEMETRY": "1"}
    command = ["unshare", "--map-root-user", "--net", sys.executable, "-m", "comfy_cli", "--skip-prompt", *args]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(args)} failed ({done.returncode}):\n{output}"
    return output


@pytest.mark.registry
def test_comfy_node_validate_and_the_packed_archive(tmp_path):
    comfy_cli_or_skip()
    from comfyui_diffbody.models.files import registry_models

    tree, home = tmp_path / "ComfyUI-DiffBody", tmp_path / "home"
    tree.mkdir()
    home.mkdir()
    tracked_copy(tree)
    # validate's security check runs `python -m ruff` and reads only its stdout: without ruff it would pass.
    subprocess.run([sys.executable, "-m", "ruff", "--version"], capture_output=True, check=True)
    validated = comfy(["node", "validate"], tree, home)
    assert "validation checks passed" in validated and "Warning" not in validated, validated
    comfy(["node", "pack"], tree, home)
    with zipfile.ZipFile(tree / "node.zip") as archive:
        names = set(archive.namelist())
        packed_pyproject = tomllib.loads(archive.read("pyproject.toml").decode())
    for needed in ("LICENSE", "assets/icon.svg", "pyproject.toml", "requirements.txt", "README.md", "__init__.py",
                   "nodes/glue.py", "js/diffbody.js", "workflows/diffbody_public.json", "testing/tiny/__init__.py"):
        assert needed in names, needed
    assert not [n for n in names if n.startswith(ARCHIVE_LEFT_OUT)]
    assert packed_pyproject["tool"]["comfy"]["Models"] == registry_models()


def test_comfyignore_is_what_the_check_leaves_out():
    """The archive check above and .comfyignore name the same development-only paths."""
    lines = [line.strip() for line in (REPO_ROOT / ".comfyignore").read_text().splitlines()]
    patterns = {line for line in lines if line and not line.startswith("#")}
    assert set(ARCHIVE_LEFT_OUT) <= patterns


# ---- what a ComfyUI environment may lack -----------------------------------------------------------------------

def test_missing_onnxruntime_names_both_builds(monkeypatch):
    from comfyui_diffbody.models.errors import MissingDependency
    from comfyui_diffbody.pipelines.pose import dwpose

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if neither build were installed
    for call in (lambda: dwpose.onnx_providers("cpu"), lambda: dwpose.open_session("any.onnx", ["CPUExecutionProvider"])):
        with pytest.raises(MissingDependency, match="onnxruntime-gpu") as caught:
            call()
        assert "pip install onnxruntime`" in str(caught.value)


@pytest.mark.parametrize("both", [True, False])
def test_both_onnxruntime_builds_are_reported(both, monkeypatch, caplog):
    import onnxruntime

    from comfyui_diffbody.models import onnx_runtime
    from comfyui_diffbody.pipelines.pose import dwpose

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(onnx_runtime, "installed", lambda name: both or name == "onnxruntime")
    with caplog.at_level(logging.WARNING, logger=onnx_runtime.log.name):
        assert dwpose.onnx_providers("cuda") == ["CPUExecutionProvider"]
    assert (onnx_runtime.BOTH_ONNXRUNTIMES_HINT in caplog.text) == both
    assert ("install onnxruntime-gpu instead of onnxruntime" in caplog.text) != both


def test_missing_accelerate_names_the_extra(monkeypatch, capsys):
    from comfyui_diffbody import cli
    from comfyui_diffbody.models.errors import MissingDependency
    from comfyui_diffbody.training.loop import TrainConfig, make_accelerator, require_accelerate

    require_accelerate("training")  # installed here: nothing to say
    monkeypatch.setitem(sys.modules, "accelerate", None)
    with pytest.raises(MissingDependency, match=r"training needs Hugging Face accelerate.*extra `training`"):
        make_accelerator(TrainConfig(output_dir="unused", max_steps=1, learning_rate=1e-5, train_batch_size=1))
    with pytest.raises(SystemExit) as exited:
        cli.require_accelerate()
    assert exited.value.code == 2
    assert "the command line's restore" in capsys.readouterr().err
