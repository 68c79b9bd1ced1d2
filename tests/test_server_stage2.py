"""Stage 2 through a real ComfyUI server on tiny weights, sampled by the stock KSampler.

Substitution: ComfyUI's checkpoint and CLIP-vision loaders recognise SDXL and ViT-H only at their real
sizes, so test-only nodes (tests/comfy_test_nodes) build the tiny SDXL MODEL natively from an
original-layout file (the same ComfyUI classes its checkpoint loader uses), and stand in for the VAE,
the SDXL text encoders and CLIP vision. The DiffBody loaders and apply nodes are the real ones.
"""

from __future__ import annotations

import numpy as np
import pytest

from comfy_harness import execution_error


def stage2_graph(*, strengths=(1.0, 0.8, 0.6, 0.4), strength: float = 1.0, adapter_weight: float = 0.8,
                 use_control: bool = True, use_adapter: bool = True, sampler: str = "euler",
                 scheduler: str = "normal", adapter: str = "ip-adapter-plus_sdxl_vit-h.safetensors",
                 width: int = 192, height: int = 128, stack_twice: bool = False) -> dict:
    graph = {
        "sdxl": {"class_type": "TestOnlyTinySDXLLoader", "inputs": {}},
        "positive": {"class_type": "TestOnlyTinySDXLTextEncode", "inputs": {"text": "a person, natural colours"}},
        "negative": {"class_type": "TestOnlyTinySDXLTextEncode", "inputs": {"text": "blurry"}},
        "image": {"class_type": "LoadImage", "inputs": {"image": "person.png"}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "sample": {"class_type": "KSampler",
                   "inputs": {"model": ["sdxl", 0], "seed": 7, "steps": 3, "cfg": 5.0, "sampler_name": sampler,
                              "scheduler": scheduler, "positive": ["positive", 0], "negative": ["negative", 0],
                              "latent_image": ["latent", 0], "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["sdxl", 1]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "s2"}},
    }
    if use_control:
        graph["controlnet"] = {"class_type": "DiffBodyMultiPriorControlNetLoader",
                               "inputs": {"controlnet_name": "diffbody_stage2_controlnet.safetensors", "dtype": "auto"}}
        applies = ["apply_cn"] + (["apply_cn_2"] if stack_twice else [])
        previous = (["positive", 0], ["negative", 0])
        for name in applies:
            graph[name] = {"class_type": "DiffBodyApplyMultiPriorControlNet",
                           "inputs": {"positive": previous[0], "negative": previous[1], "control_net": ["controlnet", 0],
                                      "image": ["image", 0], "pose": ["image", 0], "depth": ["image", 0],
                                      "normal": ["image", 0], "image_strength": strengths[0],
                                      "pose_strength": strengths[1], "depth_strength": strengths[2],
                                      "normal_strength": strengths[3], "strength": strength,
                                      "start_percent": 0.0, "end_percent": 1.0}}
            previous = ([name, 0], [name, 1])
        graph["sample"]["inputs"]["positive"], graph["sample"]["inputs"]["negative"] = previous
    if use_adapter:
        graph["adapter"] = {"class_type": "DiffBodyColourAdapterLoader",
                            "inputs": {"adapter_name": adapter, "auto_download": False}}
        graph["clip_vision"] = {"class_type": "TestOnlyTinyCLIPVisionLoader", "inputs": {}}
        graph["apply_adapter"] = {"class_type": "DiffBodyApplyColourAdapter",
                                  "inputs": {"model": ["sdxl", 0], "colour_adapter": ["adapter", 0],
                                             "clip_vision": ["clip_vision", 0], "image": ["image", 0],
                                             "weight": adapter_weight, "start_percent": 0.0, "end_percent": 1.0}}
        graph["sample"]["inputs"]["model"] = ["apply_adapter", 0]
    return graph


def test_stock_ksampler_with_controlnet_and_adapter_returns_the_requested_size(comfy_server):
    assert comfy_server.run_single_image(stage2_graph()).shape == (128, 192, 3)


def test_prior_strengths_zero_give_exactly_the_unconditioned_result(comfy_server):
    plain = comfy_server.run_single_image(stage2_graph(use_control=False, use_adapter=False))
    zero = comfy_server.run_single_image(stage2_graph(strengths=(0, 0, 0, 0), use_adapter=False))
    assert np.array_equal(plain, zero)
    controlled = comfy_server.run_single_image(stage2_graph(use_adapter=False))
    assert not np.array_equal(plain, controlled), "the tiny ControlNet must change the result"


def test_adapter_weight_zero_gives_exactly_the_unpatched_result(comfy_server):
    plain = comfy_server.run_single_image(stage2_graph(use_control=False, use_adapter=False))
    zero = comfy_server.run_single_image(stage2_graph(use_control=False, adapter_weight=0.0))
    assert np.array_equal(plain, zero)
    patched = comfy_server.run_single_image(stage2_graph(use_control=False))
    assert not np.array_equal(plain, patched), "the tiny adapter must change the result"


@pytest.mark.parametrize("sampler,scheduler", [("dpmpp_2m", "karras"), ("ddim", "ddim_uniform")])
def test_other_samplers_and_schedulers(comfy_server, sampler, scheduler):
    assert comfy_server.run_single_image(stage2_graph(sampler=sampler, scheduler=scheduler)).shape == (128, 192, 3)


def test_stacked_controlnets_add_up(comfy_server):
    once = comfy_server.run_single_image(stage2_graph(use_adapter=False))
    twice = comfy_server.run_single_image(stage2_graph(use_adapter=False, stack_twice=True))
    assert not np.array_equal(once, twice)


def test_fine_tuned_adapter_file_name_loads_too(comfy_server):
    comfy_server.run_single_image(stage2_graph(use_control=False, adapter="diffbody_colour_adapter.safetensors"))


def test_wrong_adapter_file_is_refused_clearly(comfy_server, tiny_models_dir):
    import shutil

    shutil.copy(tiny_models_dir / "diffbody" / "diffbody_stage2_controlnet.safetensors",
                tiny_models_dir / "ipadapter" / "not_an_adapter.safetensors")
    entry = comfy_server.run(stage2_graph(use_control=False, adapter="not_an_adapter.safetensors"), timeout=600)
    error = execution_error(entry)
    assert error is not None and error["node_id"] == "adapter"
    assert "not_an_adapter.safetensors" in error["exception_message"]
    assert comfy_server.alive()
