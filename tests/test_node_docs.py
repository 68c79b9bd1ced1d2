"""Every node has a help page in js/docs/<NodeName>.md that names each of its inputs and outputs.

The ComfyUI frontend (1.32) fetches a custom node's help from /extensions/<pack folder>/docs/<NodeName>.md
(after trying docs/<NodeName>/<locale>.md), i.e. from docs/ inside WEB_DIRECTORY, and resolves a page's
relative image paths against /extensions/<pack folder>/docs/. tests/test_browser.py opens one page there.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from comfy_harness import REPO_ROOT

DOCS_DIR = REPO_ROOT / "js" / "docs"


def node_names(cls) -> tuple[list[str], list[str]]:
    """(input names, output names) as the server's /object_info gives them."""
    inputs = [name for section in cls.INPUT_TYPES().values() for name in section]
    outputs = list(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES)
    return inputs, outputs


def doc_problems(mappings: dict, docs_dir: Path) -> list[str]:
    """What is missing: pages, and input/output names a page does not mention as `name`."""
    problems = []
    for node, cls in mappings.items():
        page = docs_dir / f"{node}.md"
        if not page.is_file():
            problems.append(f"{node}: no {page.name}")
            continue
        text = page.read_text(encoding="utf-8")
        if not text.startswith(f"# {cls.DISPLAY_NAME}\n"):
            problems.append(f"{node}: the page does not start with '# {cls.DISPLAY_NAME}'")
        inputs, outputs = node_names(cls)
        for kind, names in (("input", inputs), ("output", outputs)):
            for name in names:
                if f"`{name}`" not in text:
                    problems.append(f"{node}: the page does not name the {kind} `{name}`")
        if "## Inputs" not in text or (outputs and "## Outputs" not in text):
            problems.append(f"{node}: the page lacks an Inputs or Outputs section")
    return problems


@pytest.fixture
def model_lists(monkeypatch):
    """The dropdown contents come from ComfyUI's folders; the names of the inputs do not."""
    from comfyui_diffbody.nodes import glue

    monkeypatch.setattr(glue, "list_files", lambda folder: ["a.ckpt"])
    monkeypatch.setattr(glue, "list_model_dirs", lambda folder: ["a"])


def test_docs_folder_is_inside_the_web_directory():
    import comfyui_diffbody

    assert (REPO_ROOT / comfyui_diffbody.WEB_DIRECTORY / "docs").resolve() == DOCS_DIR.resolve()
    # ComfyUI loads every .js file under WEB_DIRECTORY as a frontend extension: none may sit in docs/.
    assert list(DOCS_DIR.rglob("*.js")) == []


def test_every_node_has_a_page_naming_its_inputs_and_outputs(model_lists):
    from comfyui_diffbody import NODE_CLASS_MAPPINGS

    assert doc_problems(NODE_CLASS_MAPPINGS, DOCS_DIR) == []
    pages = {p.stem for p in DOCS_DIR.glob("*.md")}
    assert pages == set(NODE_CLASS_MAPPINGS), "a page for a node the pack does not register"


def test_a_planted_node_without_a_page_or_with_an_unnamed_input_fails(model_lists, tmp_path):
    from comfyui_diffbody import NODE_CLASS_MAPPINGS

    class DiffBodyPlanted:
        DISPLAY_NAME = "DiffBody Planted"
        RETURN_TYPES = ("IMAGE",)
        RETURN_NAMES = ("planted_out",)

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"planted_in": ("IMAGE", {})}}

    mappings = dict(NODE_CLASS_MAPPINGS, DiffBodyPlanted=DiffBodyPlanted)
    assert doc_problems(mappings, DOCS_DIR) == ["DiffBodyPlanted: no DiffBodyPlanted.md"]

    for page in DOCS_DIR.glob("*.md"):
        (tmp_path / page.name).write_text(page.read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "DiffBodyPlanted.md").write_text(
        "# DiffBody Planted\n\n## Inputs\n\n`planted_in`, and planted_out without its backticks\n\n## Outputs\n",
        encoding="utf-8")
    assert doc_problems(mappings, tmp_path) == ["DiffBodyPlanted: the page does not name the output `planted_out`"]


def test_every_picture_a_page_shows_exists():
    found = 0
    for page in DOCS_DIR.glob("*.md"):
        for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            assert not re.match(r"^(/|https?:)", target), f"{page.name}: {target} must be relative to docs/"
            assert (DOCS_DIR / target).is_file(), f"{page.name} shows {target}, which does not exist"
            found += 1
    assert found >= 3
