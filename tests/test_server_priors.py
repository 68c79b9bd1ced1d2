"""The depth & normal estimator node through a real ComfyUI server on tiny weights: both outputs saved,
odd inputs, and the message for a missing model folder."""

from __future__ import annotations

import numpy as np
from PIL import Image

from comfy_harness import execution_error
from comfyui_diffbody.testing.tiny import TINY_DEPTH_NAME, TINY_NORMALS_NAME


def priors_graph(image: str, *, depth_model: str = TINY_DEPTH_NAME, normal_source: str = TINY_NORMALS_NAME) -> dict:
    return {
        "load": {"class_type": "LoadImage", "inputs": {"image": image}},
        "priors": {"class_type": "DiffBodyDepthNormalEstimator",
                   "inputs": {"image": ["load", 0], "depth_model": depth_model, "normal_source": normal_source,
                              "marigold_steps": 2, "seed": 0, "auto_download": False}},
        "save_depth": {"class_type": "SaveImage", "inputs": {"images": ["priors", 0], "filename_prefix": "prior_depth"}},
        "save_normal": {"class_type": "SaveImage", "inputs": {"images": ["priors", 1], "filename_prefix": "prior_normal"}},
    }


def run_ok(server, graph):
    entry = server.run(graph, timeout=600)
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    return entry


def saved(server, entry, node: str) -> np.ndarray:
    [path] = server.output_files({"outputs": {node: entry["outputs"][node]}})
    return np.asarray(Image.open(path))


def test_marigold_normals_and_depth_are_saved_at_the_input_size(comfy_server):
    entry = run_ok(comfy_server, priors_graph("person.png"))
    depth, normal = saved(comfy_server, entry, "save_depth"), saved(comfy_server, entry, "save_normal")
    assert depth.shape == normal.shape == (256, 256, 3)
    assert (depth[..., 0] == depth[..., 1]).all() and (depth[..., 0] == depth[..., 2]).all()  # grey
    assert depth.min() == 0 and depth.max() == 255  # normalised to the full range
    assert normal.std() > 0


def test_normals_from_depth_on_a_17x9_rgba_image(comfy_server):
    entry = run_ok(comfy_server, priors_graph("tiny_rgba.png", normal_source="from depth"))
    depth, normal = saved(comfy_server, entry, "save_depth"), saved(comfy_server, entry, "save_normal")
    assert depth.shape == normal.shape == (9, 17, 3)
    assert comfy_server.alive()


def test_missing_depth_folder_names_folder_and_source(comfy_server):
    entry = comfy_server.run(priors_graph("person.png", depth_model="Depth-Anything-V2-Large-hf"), timeout=600)
    error = execution_error(entry)
    assert error is not None and error["node_id"] == "priors"
    message = error["exception_message"]
    assert "Depth-Anything-V2-Large-hf" in message and "diffbody/priors" in message
    assert "huggingface.co/depth-anything/Depth-Anything-V2-Large-hf" in message
    assert comfy_server.alive()
