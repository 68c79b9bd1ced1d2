"""Public-weights stage 2 through a real ComfyUI server: ControlNet-Union SDXL applied by 'DiffBody Apply
Multi-Prior ControlNet' (union mode: each prior as its control type), IP-Adapter Plus XL through the
colour adapter nodes, the stock KSampler.

Substitution: ComfyUI's ControlNetLoader cannot read the tiny union file (its detection knows real SDXL
sizes only), so TestOnlyControlNetLoader (tests/comfy_test_nodes/union_stand_in.py) returns ComfyUI's own
union ControlNet over it; the tiny SDXL and CLIP vision come from the stand-ins of tests/test_server_stage2.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from comfy_harness import execution_error

PRIOR_NAMES = ("image", "pose", "depth", "normal")


def union_graph(strengths=(1.0, 0.8, 0.6, 0.4), *, use_control: bool = True, adapter_weight: float = 0.8,
                controlnet: str = "controlnet-union-sdxl-1.0.safetensors") -> dict:
    graph = {
        "sdxl": {"class_type": "TestOnlyTinySDXLLoader", "inputs": {}},
        "positive": {"class_type": "TestOnlyTinySDXLTextEncode", "inputs": {"text": "a person, natural colours"}},
        "negative": {"class_type": "TestOnlyTinySDXLTextEncode", "inputs": {"text": "blurry"}},
        "image": {"class_type": "LoadImage", "inputs": {"image": "person.png"}},
        "flipped": {"class_type": "ImageFlip", "inputs": {"image": ["image", 0], "flip_method": "x-axis: vertically"}},
        "adapter": {"class_type": "DiffBodyColourAdapterLoader",
                    "inputs": {"adapter_name": "ip-adapter-plus_sdxl_vit-h.safetensors", "auto_download": False}},
        "clip_vision": {"class_type": "TestOnlyTinyCLIPVisionLoader", "inputs": {}},
        "apply_adapter": {"class_type": "DiffBodyApplyColourAdapter",
                          "inputs": {"model": ["sdxl", 0], "colour_adapter": ["adapter", 0],
                                     "clip_vision": ["clip_vision", 0], "image": ["image", 0],
                                     "weight": adapter_weight, "start_percent": 0.0, "end_percent": 1.0}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "sample": {"class_type": "KSampler",
                   "inputs": {"model": ["apply_adapter", 0], "seed": 7, "steps": 3, "cfg": 5.0,
                              "sampler_name": "euler", "scheduler": "normal", "positive": ["positive", 0],
                              "negative": ["negative", 0], "latent_image": ["latent", 0], "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["sdxl", 1]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "union"}},
    }
    if use_control:
        graph["controlnet"] = {"class_type": "TestOnlyControlNetLoader", "inputs": {"control_net_name": controlnet}}
        # four different images, so that a prior applied as the wrong one would change the result
        graph["apply_cn"] = {"class_type": "DiffBodyApplyMultiPriorControlNet",
                             "inputs": {"positive": ["positive", 0], "negative": ["negative", 0],
                                        "control_net": ["controlnet", 0], "image": ["image", 0],
                                        "pose": ["flipped", 0], "depth": ["image", 0], "normal": ["flipped", 0],
                                        **{f"{name}_strength": value for name, value in zip(PRIOR_NAMES, strengths)},
                                        "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
        graph["sample"]["inputs"]["positive"], graph["sample"]["inputs"]["negative"] = ["apply_cn", 0], ["apply_cn", 1]
    return graph


def test_union_mode_with_the_stock_ksampler(comfy_server):
    plain = comfy_server.run_single_image(union_graph(use_control=False))
    assert plain.shape == (128, 128, 3)
    zero = comfy_server.run_single_image(union_graph((0.0, 0.0, 0.0, 0.0)))
    assert np.array_equal(plain, zero)
    results = {}
    for index, name in enumerate(PRIOR_NAMES):
        strengths = [0.0] * 4
        strengths[index] = 1.0
        results[name] = comfy_server.run_single_image(union_graph(tuple(strengths)))
        assert not np.array_equal(plain, results[name]), name
    # image and depth get the same picture, pose and normal the flipped one: only the control type differs
    assert not np.array_equal(results["image"], results["depth"])
    assert not np.array_equal(results["pose"], results["normal"])
    assert not np.array_equal(comfy_server.run_single_image(union_graph()), plain)


@pytest.fixture()
def six_type_union(tiny_models_dir):
    from comfyui_diffbody.testing.tiny.union import write_tiny_union_controlnet

    name = "controlnet-union-six-types.safetensors"
    write_tiny_union_controlnet(str(tiny_models_dir / "controlnet" / name), num_control_type=6)
    return name


def test_six_type_union_refuses_tile_clearly(comfy_server, six_type_union):
    entry = comfy_server.run(union_graph((1.0, 1.0, 0.0, 0.0), controlnet=six_type_union), timeout=600)
    error = execution_error(entry)
    assert error is not None and "ProMax" in error["exception_message"]
    assert comfy_server.alive()
    comfy_server.run_single_image(union_graph((0.0, 1.0, 1.0, 1.0), controlnet=six_type_union))  # no tile: runs
