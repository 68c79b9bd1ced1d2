"""Real-size stage-0 and prior fixtures (testing/realsize/stage0.py) through the pack's own loaders, the
code the nodes use: LLaVA 1.5 7B at its real widths (one decoder layer) through the captioner, Depth
Anything V2 Small and Marigold normals v1.1 at their real configs through the depth & normal estimator,
each run once on a small image on the CPU; and the full LLaVA config built on the meta device.

Marked `realsize` (deselect with -m "not realsize"). It writes about 3.6 GB into the test's tmp folder,
takes a few minutes on two cores and peaks near 8 GB of memory (Marigold loads in float32 on the CPU, as
the node does); each step prints its time and the process's peak memory (run with -s to see them).
"""

from __future__ import annotations

import json
import os
import resource
import time

import pytest
import torch

from comfyui_diffbody.pipelines.caption import LlavaCaptioner
from comfyui_diffbody.pipelines.depth_normal import load_depth_normal_estimator
from comfyui_diffbody.testing.realsize.stage0 import (
    DEPTH_SMALL_FILE_BYTES,
    LLAVA_7B_PARAMETERS,
    MARIGOLD_STEPS,
    llava_parameter_count,
    write_realsize_depth_anything_small,
    write_realsize_llava,
    write_realsize_marigold_normals,
)

pytestmark = pytest.mark.realsize

HEIGHT, WIDTH = 96, 128
MARIGOLD_TEST_RESOLUTION = 128  # the pipeline's working size in model_index.json (the real one is 768)


_figures = []


@pytest.fixture(autouse=True)
def _report_timings(report_figure):
    """What `_timed` measured during a test goes to the run's summary."""
    yield
    for line in _figures:
        report_figure(line)
    _figures.clear()


def _timed(label: str, work):
    start = time.perf_counter()
    result = work()
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kilobytes on Linux
    _figures.append(f"[realsize] {label}: {time.perf_counter() - start:.1f} s, process peak RSS {peak_gb:.2f} GB")
    print(_figures[-1])
    return result


def _image() -> torch.Tensor:
    return torch.rand(1, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(0))


def _read_json(*parts: str) -> dict:
    with open(os.path.join(*parts), encoding="utf-8") as f:
        return json.load(f)


def test_full_llava_config_builds_on_meta_with_its_7b_parameters():
    assert _timed("LLaVA 7B on meta", llava_parameter_count) == LLAVA_7B_PARAMETERS


def test_llava_at_real_width_captions_through_the_captioner(tmp_path):
    folder = _timed("write LLaVA (1 layer)", lambda: write_realsize_llava(str(tmp_path / "llava-1.5-7b-hf")))
    config = _read_json(folder, "config.json")
    assert (config["text_config"]["hidden_size"], config["text_config"]["vocab_size"]) == (4096, 32064)
    assert (config["vision_config"]["hidden_size"], config["vision_config"]["image_size"]) == (1024, 336)
    assert config["image_token_index"] == 32000 and config["vision_config"]["num_hidden_layers"] == 2
    captioner = _timed("load LLaVA", lambda: LlavaCaptioner.load(folder))
    assert captioner.processor.tokenizer.convert_tokens_to_ids("<image>") == 32000
    seen = {"image": [], "logits": []}
    projector = next(m for name, m in captioner.model.named_modules() if name.endswith("multi_modal_projector"))
    hooks = [projector.register_forward_hook(
                 lambda module, args, out: seen["image"].append(out)),
             captioner.model.get_output_embeddings().register_forward_hook(
                 lambda module, args, out: seen["logits"].append(out))]
    try:
        captions = _timed("caption 96x128 (3 tokens)", lambda: captioner.caption(_image(), max_new_tokens=3))
    finally:
        for hook in hooks:
            hook.remove()
    assert len(captions) == 1 and isinstance(captions[0], str)
    (image_features,) = seen["image"]  # 24 x 24 patches of the 336 px crop, CLS dropped
    assert image_features.shape == (1, 576, 4096) and torch.isfinite(image_features).all()
    assert 1 <= len(seen["logits"]) <= 3
    assert all(out.shape[-1] == 32064 and torch.isfinite(out).all() for out in seen["logits"])


@pytest.fixture(scope="module")
def prior_dirs(tmp_path_factory):
    from comfy_harness import comfyui_dir

    root = tmp_path_factory.mktemp("priors")
    depth = _timed("write Depth Anything V2 Small", lambda: write_realsize_depth_anything_small(
        str(root / "Depth-Anything-V2-Small-hf")))
    normals = _timed("write Marigold normals v1.1", lambda: write_realsize_marigold_normals(
        str(root / "marigold-normals-v1-1"), comfyui_dir=str(comfyui_dir()),
        processing_resolution=MARIGOLD_TEST_RESOLUTION))
    return depth, normals


def test_prior_folders_have_the_real_sizes(prior_dirs):
    depth, normals = prior_dirs
    # Same parameter counts as the public files (sizes on their Hugging Face pages).
    assert abs(os.path.getsize(os.path.join(depth, "model.safetensors")) - DEPTH_SMALL_FILE_BYTES) < 0.1e6
    config = _read_json(depth, "config.json")
    assert (config["backbone_config"]["out_indices"], config["neck_hidden_sizes"], config["fusion_hidden_size"]) == \
        ([3, 6, 9, 12], [48, 96, 192, 384], 64)
    sizes = {part: os.path.getsize(os.path.join(normals, part, name)) for part, name in (
        ("unet", "diffusion_pytorch_model.safetensors"), ("vae", "diffusion_pytorch_model.safetensors"),
        ("text_encoder", "model.safetensors"))}
    assert (round(sizes["unet"] / 1e9, 2), round(sizes["vae"] / 1e6), round(sizes["text_encoder"] / 1e6)) == \
        (1.73, 167, 681)  # float16: marigold-normals unet 1.73 GB, vae 167 MB, SD 2 text encoder 681 MB
    index = _read_json(normals, "model_index.json")
    assert (index["default_denoising_steps"], index["prediction_type"], index["use_full_z_range"]) == \
        (MARIGOLD_STEPS, "normals", True)
    assert _read_json(normals, "unet", "config.json")["in_channels"] == 8
    assert len(_read_json(normals, "tokenizer", "vocab.json")) == 49408  # CLIP's BPE, copied from ComfyUI


def test_depth_and_marigold_normals_estimate_through_the_pack_loader(prior_dirs):
    depth_dir, normals_dir = prior_dirs
    estimator = _timed("load depth + normals (float32)", lambda: load_depth_normal_estimator(
        depth_dir, normals_dir, normal_steps=1))
    pixels = estimator.depth.processor(images=list(_image()), return_tensors="pt", do_rescale=False,
                                       input_data_format="channels_first")["pixel_values"]
    assert max(pixels.shape[-2:]) == 518 and all(side % 14 == 0 for side in pixels.shape[-2:])
    depth, normal = _timed("estimate 96x128 (Marigold: 1 step)", lambda: estimator.estimate(_image()))
    for result in (depth, normal):
        assert result.shape == (1, 3, HEIGHT, WIDTH) and torch.isfinite(result).all()
        assert result.min() >= 0 and result.max() <= 1
    assert torch.allclose((normal * 2 - 1).norm(dim=1), torch.ones(1, HEIGHT, WIDTH), atol=0.02)
