"""Stage 1 through a real ComfyUI server on tiny weights.

Substitution: ComfyUI's SD 2.1 loaders only take real-size files, so the test-only nodes in
tests/comfy_test_nodes stand in for Load Checkpoint's VAE and CLIP Text Encode (same interfaces, tiny
SD 2.1 components). The DiffBody loader and sampler are the real nodes on tiny DiffBody-layout files.
"""

from __future__ import annotations

import time

import numpy as np
import requests
from PIL import Image

from comfy_harness import execution_error


def stage1_graph(image: str = "person.png", *, pose_source: str | None = None, unet: str = "diffbody_stage1_unet.safetensors",
                 steps: int = 3, scheduler: str = "ddim", size_mode: str = "bucket", seed: int = 0) -> dict:
    return {
        "load": {"class_type": "LoadImage", "inputs": {"image": image}},
        "load_pose_source": {"class_type": "LoadImage", "inputs": {"image": pose_source or image}},
        "pose": {"class_type": "DiffBodyPoseEstimator",
                 "inputs": {"image": ["load_pose_source", 0], "backend": "dwpose", "draw_hands": False,
                            "draw_face": False, "dwpose_detector": "yolox_l.onnx",
                            "dwpose_estimator": "dw-ll_ucoco_384.onnx", "openpose_model": "body_pose_model.pth",
                            "auto_download": False}},
        "stage1": {"class_type": "DiffBodyStage1Loader",
                   "inputs": {"unet_name": unet, "controlnet_name": "diffbody_stage1_controlnet.safetensors",
                              "dtype": "auto"}},
        "vae": {"class_type": "TestOnlyTinySD21VAELoader", "inputs": {}},
        "positive": {"class_type": "TestOnlyTinySD21TextEncode", "inputs": {"text": "a person in a white suit"}},
        "negative": {"class_type": "TestOnlyTinySD21TextEncode", "inputs": {"text": ""}},
        "sample": {"class_type": "DiffBodyStage1Sampler",
                   "inputs": {"stage1": ["stage1", 0], "vae": ["vae", 0], "positive": ["positive", 0],
                              "negative": ["negative", 0], "image": ["load", 0], "pose_image": ["pose", 0],
                              "seed": seed, "steps": steps, "scheduler": scheduler, "cfg": 4.0,
                              "control_strength": 1.0, "size_mode": size_mode}},
        "save_rgb": {"class_type": "SaveImage", "inputs": {"images": ["sample", 0], "filename_prefix": "s1_rgb"}},
        "save_depth": {"class_type": "SaveImage", "inputs": {"images": ["sample", 1], "filename_prefix": "s1_depth"}},
        "save_normal": {"class_type": "SaveImage", "inputs": {"images": ["sample", 2], "filename_prefix": "s1_normal"}},
    }


def saved(server, entry, node):
    [path] = server.output_files({"outputs": {node: entry["outputs"][node]}})
    return Image.open(path)


def test_loader_and_sampler_return_three_images_of_the_input_size(comfy_server):
    entry = comfy_server.run(stage1_graph(), timeout=600)
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    for node in ("save_rgb", "save_depth", "save_normal"):
        assert saved(comfy_server, entry, node).size == (256, 256), node


def test_native_size_mode_and_dpmpp_on_a_non_square_image(comfy_server):
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (72, 136, 3), dtype=np.uint8)).save(
        comfy_server.base_dir / "input" / "wide_small.png")
    entry = comfy_server.run(stage1_graph("wide_small.png", size_mode="native", scheduler="dpmpp_2m"), timeout=600)
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    assert saved(comfy_server, entry, "save_depth").size == (136, 72)


def test_cancel_mid_run_stops_it_and_the_server_keeps_serving(comfy_server):
    # Same graph as above but for the step count: the stage-0 nodes are cached, sampling starts at once.
    comfy_server.run(stage1_graph(steps=2), timeout=600)
    prompt_id = comfy_server.queue(stage1_graph(steps=600, scheduler="ddpm"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        running = requests.get(f"{comfy_server.url}/queue", timeout=10).json()["queue_running"]
        if any(item[1] == prompt_id for item in running):
            break
        time.sleep(0.2)
    time.sleep(3)  # well into the 600 steps
    comfy_server.interrupt()
    entry = comfy_server.wait(prompt_id, timeout=60)
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, "".join((execution_error(entry) or {}).get("traceback", []))[-1500:] + str((execution_error(entry) or {}).get("exception_message"))
    assert comfy_server.alive()
    assert comfy_server.run(stage1_graph(steps=2, seed=5), timeout=600)["status"]["status_str"] == "success"


def test_wrong_weights_file_is_refused_clearly(comfy_server, tiny_models_dir):
    from comfyui_diffbody.testing.tiny.stage1 import write_tiny_sd21_checkpoint

    write_tiny_sd21_checkpoint(str(tiny_models_dir / "diffbody" / "some_sd21_checkpoint.safetensors"))
    entry = comfy_server.run(stage1_graph(unet="some_sd21_checkpoint.safetensors"), timeout=600)
    error = execution_error(entry)
    assert error is not None and error["node_id"] == "stage1"
    assert "some_sd21_checkpoint.safetensors" in error["exception_message"]
    assert "stage" in error["exception_message"].lower()
    assert comfy_server.alive()


def test_pose_of_another_size_is_a_clear_error(comfy_server):
    Image.fromarray(np.zeros((64, 96, 3), np.uint8)).save(comfy_server.base_dir / "input" / "other_size.png")
    entry = comfy_server.run(stage1_graph(pose_source="other_size.png"), timeout=600)
    error = execution_error(entry)
    assert error is not None and error["node_id"] == "sample"
    assert "256" in error["exception_message"] and "96" in error["exception_message"]
    assert comfy_server.alive()


def test_one_channel_image_is_sampled(comfy_server):
    Image.fromarray(np.full((64, 64), 90, np.uint8), mode="L").save(comfy_server.base_dir / "input" / "grey64.png")
    entry = comfy_server.run(stage1_graph("grey64.png", size_mode="native"), timeout=600)
    assert entry["status"]["status_str"] == "success", execution_error(entry)
