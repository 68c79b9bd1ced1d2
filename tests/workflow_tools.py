"""Reading the bundled workflows, and running them on tiny weights.

ComfyUI's native loaders (CheckpointLoaderSimple, CLIPVisionLoader, ControlNetLoader, ...) recognise
models only at their real sizes, so they cannot load the tiny test files. Tests replace each such
node by a test-only stand-in (tests/comfy_test_nodes/) that takes the same inputs and returns the same
output types over the tiny models; every other node of the workflow runs as bundled.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS_DIR = REPO_ROOT / "workflows"
# API twins sit in a subfolder: ComfyUI's template browser lists workflows/*.json and cannot open API files.
API_DIR = WORKFLOWS_DIR / "api"

# native class_type -> test-only class_type with the same inputs and outputs (filled in as stand-ins exist)
TEST_SUBSTITUTES: dict[str, str] = {
    "CheckpointLoaderSimple": "TestOnlyCheckpointLoaderSimple",  # comfy_test_nodes/native_stand_ins.py
    "CLIPVisionLoader": "TestOnlyCLIPVisionLoader",  # comfy_test_nodes/native_stand_ins.py
    "ControlNetLoader": "TestOnlyControlNetLoader",  # comfy_test_nodes/union_stand_in.py
}


def with_test_stand_ins(api_prompt: dict) -> dict:
    """A copy of an API-format prompt with every native loader replaced by its test-only stand-in."""
    prompt = copy.deepcopy(api_prompt)
    for node in prompt.values():
        node["class_type"] = TEST_SUBSTITUTES.get(node["class_type"], node["class_type"])
    return prompt


def workflow_path(name: str) -> Path:
    """workflows/<name>.json (UI format) or workflows/api/<name>_api.json (API format)."""
    return (API_DIR if name.endswith("_api.json") else WORKFLOWS_DIR) / name


def load_workflow(name: str) -> dict:
    return json.loads(workflow_path(name).read_text())
