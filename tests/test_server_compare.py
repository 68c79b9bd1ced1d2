"""DiffBody Before/After through a real ComfyUI server: what its output gives the frontend extension
(js/diffbody_compare.js). tests/test_browser.py checks the view itself in Chromium."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from comfy_harness import execution_error

SMALL_WORKFLOW = Path(__file__).resolve().parent / "workflows" / "api" / "compare_small_api.json"


def small_compare_prompt() -> dict:
    """person.png blurred (before, 256 px, one image) against it upscaled x1.5 twice (after, 384 px)."""
    return json.loads(SMALL_WORKFLOW.read_text())


def test_pairs_only_no_stock_preview_list(comfy_server):
    prompt = small_compare_prompt()
    entry = comfy_server.run(prompt)
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    output = entry["outputs"]["5"]
    # An "images" list would make the frontend draw its own preview under the comparison.
    assert set(output) == {"diffbody_compare"}
    pairs = output["diffbody_compare"]
    assert len(pairs) == 2, "one pair per 'after' image; the single 'before' image is repeated"
    for pair in pairs:
        paths = {side: comfy_server.base_dir / f["type"] / f["subfolder"] / f["filename"] for side, f in pair.items()}
        assert {f["type"] for f in pair.values()} == {"temp"}
        before, after = (np.asarray(Image.open(paths[side])) for side in ("before", "after"))
        assert before.shape == after.shape == (384, 384, 3), "before is resized to after's size"
        assert np.abs(before.astype(int) - after.astype(int)).mean() > 1, "the two sides are the two inputs"


def test_batch_sizes_that_cannot_pair_are_refused(comfy_server):
    prompt = small_compare_prompt()
    # Two 'before' images against three 'after' images.
    prompt["6"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": 2}}
    prompt["4"]["inputs"]["amount"] = 3
    prompt["5"]["inputs"]["before"] = ["6", 0]
    entry = comfy_server.run(prompt)
    assert entry["status"]["status_str"] == "error"
    assert "2 'before' images for 3 'after' images" in execution_error(entry)["exception_message"]
