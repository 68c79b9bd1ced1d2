"""examples/api_client.py, the README's standard-library API client, run as a user runs it: a subprocess
against a real ComfyUI on tiny weights.

The client takes any API-format workflow; the test hands it the bundled diffbody_public_fast_api.json
prepared as tests/test_workflows.py runs it (native loaders swapped for the test stand-ins, steps 2),
and the repository's sample photo.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import numpy as np
from PIL import Image

from comfy_harness import REPO_ROOT
from test_workflows import runnable
from workflow_tools import load_workflow

CLIENT = REPO_ROOT / "examples" / "api_client.py"
PHOTO = REPO_ROOT / "assets" / "sample_person_lq.jpg"
WORKFLOW = "diffbody_public_fast_api.json"


def test_client_needs_only_the_standard_library():
    tree = ast.parse(CLIENT.read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert imported and sorted(imported - set(sys.stdlib_module_names) - {"__future__"}) == []


def run_client(server, workflow: dict, tmp_path) -> subprocess.CompletedProcess:
    path = tmp_path / "workflow_api.json"
    path.write_text(json.dumps(workflow))
    return subprocess.run([sys.executable, str(CLIENT), str(PHOTO), "--server", server.url, "--workflow", str(path),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=900)


def test_client_restores_a_photo_and_downloads_result_and_pair(comfy_server, tmp_path):
    workflow = runnable(load_workflow(WORKFLOW))
    done = run_client(comfy_server, workflow, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    # What came over the websocket: the queued run, its nodes by title, sampling steps.
    assert lines[0].startswith("queued ")
    assert "running Stage 0: SwinIR cleanup -> I_ir" in lines
    assert any(line.strip().startswith("step 2/2") for line in lines), done.stdout

    uploaded = comfy_server.base_dir / "input" / PHOTO.name
    assert uploaded.read_bytes() == PHOTO.read_bytes()
    saved = sorted(line[len("saved "):] for line in lines if line.startswith("saved "))
    pairs = [p for p in saved if p.endswith(("_before.png", "_after.png"))]
    results = [p for p in saved if p not in pairs]
    assert len(results) == 1 and len(pairs) == 2, saved
    [after] = [Image.open(p) for p in pairs if p.endswith("_after.png")]
    [before] = [Image.open(p) for p in pairs if p.endswith("_before.png")]
    result = Image.open(results[0])
    side = Image.open(PHOTO).size  # SwinIR's upscale is 1 in this workflow
    assert result.size == after.size == before.size == side
    # The pair's "after" is the saved result, and its "before" the uploaded photo (resized to it: same size);
    # 1 of 255 apart: Save Image truncates to uint8, the before/after previews round.
    def pixels(image):
        return np.asarray(image.convert("RGB"), dtype=float)

    assert np.abs(pixels(result) - pixels(after)).max() <= 1
    assert np.abs(pixels(before) - pixels(Image.open(PHOTO))).max() <= 1
    assert np.abs(pixels(result) - pixels(before)).mean() > 5, "the result is not the input"


def test_client_reports_a_refused_workflow_and_fails(comfy_server, tmp_path):
    """Unprepared, the bundled workflow's native loaders name real model files the tiny models folder lacks:
    ComfyUI queues only the outputs that passed validation and lists the others; the client says so,
    takes the partial run off the queue and exits non-zero, downloading nothing."""
    done = run_client(comfy_server, load_workflow(WORKFLOW), tmp_path)
    assert done.returncode != 0
    assert "the server refused nodes of the workflow" in done.stderr, done.stderr[-3000:]
    assert "sd_xl_base_1.0.safetensors" in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "out").exists()
