"""Which tensor reaches which input in the bundled `diffbody_full` workflow, run by a real ComfyUI server on
tiny weights (issue 14).

The hooks run inside the server: the test-only nodes of tests/comfy_test_nodes/wiring_probe.py record the
networks' inputs (the stage-1 ControlNet's image latent with the stage-1 VAE encodes it came from, each
multi-prior extractor's image, the CLIP vision encoder's pixels and penultimate states, the colour
adapter's resampler features, the captioner's vision-tower pixels, the text each CLIP tokenises) and write
them to a file. The test puts the probe between Load Image and SwinIR cleanup and its end after the final
VAE Decode, adds previews of I_ir, I_pose and p, and otherwise runs the bundled workflow with the test
stand-ins for ComfyUI's native loaders, 2 steps, no upscale, stage 1 in native size mode (stage 2 on its canvas's
512x512 bucket), on a 64x64 photo
(all values, no link changed). Expected tensors come from the previews (8-bit PNGs), compared with the
tolerances of tests/wiring_checks.py. The negative test rewires the workflow JSON on purpose and checks that
every crossed wire, and only those, is named.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from comfy_harness import execution_error
from wiring_checks import (IMAGE_ATOL, IMAGES, PRIOR_SOURCES, check_captioner_and_prompts, check_colour_adapter,
                           check_rows, matches, read_png)
from workflow_tools import load_workflow, with_test_stand_ins

INPUT_NAME = "wiring_person.png"
INPUT_SIDE = 64
PROBE, PROBE_END = "900", "901"
# node ids of diffbody_full_api.json: where each saved tensor and caption shows
IMAGE_PREVIEWS = {"I_ir": "902", "I_pose": "903", "I_res": "15", "I_depth": "16", "I_normal": "17"}
CAPTION_PREVIEWS = {"p": "904", "p'": "21"}
CAPTIONERS = ("5", "20")  # the LLaVA Caption nodes of p and p', which ComfyUI may run in either order


def wiring_prompt(record_path) -> dict:
    prompt = with_test_stand_ins(load_workflow("diffbody_full_api.json"))
    by_class = {}
    for node_id, node in prompt.items():
        by_class.setdefault(node["class_type"], []).append(node_id)
        if isinstance(node["inputs"].get("steps"), int):
            node["inputs"]["steps"] = 2
    prompt["1"]["inputs"]["image"] = INPUT_NAME
    assert prompt["3"]["class_type"] == "DiffBodySwinIRCleanup" and prompt["3"]["inputs"]["image"] == ["1", 0]
    prompt["3"]["inputs"].update(image=[PROBE, 0], upscale=1.0)
    assert prompt["14"]["class_type"] == "DiffBodyStage1Sampler"
    prompt["14"]["inputs"]["size_mode"] = "native"
    assert prompt["41"]["class_type"] == "VAEDecode" and prompt["44"]["class_type"] == "DiffBodyStage2Canvas"
    assert prompt["34"]["inputs"]["image"] == ["44", 0] and prompt["37"]["inputs"]["image"] == ["44", 4]
    assert [prompt[n]["inputs"].get("images") for n in ("15", "16", "17")] == [["14", 0], ["14", 1], ["14", 2]]
    assert prompt["21"]["inputs"]["source"] == ["20", 0] and prompt["20"]["inputs"]["image"] == ["14", 0]
    prompt.update({
        PROBE: {"class_type": "TestOnlyWiringProbe", "inputs": {"image": ["1", 0], "record_path": str(record_path)}},
        PROBE_END: {"class_type": "TestOnlyWiringProbeEnd", "inputs": {"image": ["41", 0]}},
        "902": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
        "903": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
        "904": {"class_type": "PreviewAny", "inputs": {"source": ["5", 0]}},
    })
    return prompt


def run_workflow(server, tmp_path, rewire=None) -> tuple[dict, dict]:
    """(records, saved): what reached each input, and the previewed tensors (3,H,W) and captions."""
    from skimage import data  # the person photo of tests/conftest.py

    Image.fromarray(data.astronaut()).resize((INPUT_SIDE, INPUT_SIDE), Image.BICUBIC).save(
        server.base_dir / "input" / INPUT_NAME)
    record_path = tmp_path / "wiring_records.pt"
    prompt = wiring_prompt(record_path)
    if rewire is not None:
        rewire(prompt)
    entry = server.run(prompt, timeout=600)
    assert entry["status"]["status_str"] == "success", (execution_error(entry) or {}).get("exception_message")
    saved = {}
    for name, node_id in IMAGE_PREVIEWS.items():
        [path] = server.output_files({"outputs": {node_id: entry["outputs"][node_id]}})
        saved[name] = read_png(path)
    for name, node_id in CAPTION_PREVIEWS.items():
        [saved[name]] = entry["outputs"][node_id]["text"]
    return torch.load(record_path, weights_only=True), saved


@torch.no_grad()
def server_wiring_problems(records: dict, saved: dict, llava_processor) -> list[str]:
    from comfyui_diffbody.pipelines.buckets import STAGE2_FILLS, plan_resize
    from comfyui_diffbody.pipelines.clip_image import clip_pixels

    problems = []
    plan = plan_resize(*saved["I_ir"].shape[-2:], mode="native")
    _check_stage1_control(problems, records, {name: plan.to_canvas(saved[name][None], fill="edge")
                                              for name in IMAGES})
    # Stage 2 samples on DiffBody Stage 2 Canvas's bucket: the priors reach the extractors on that canvas, each
    # padded as its role says, and the colour adapter's CLIP sees the colour source's canvas.
    canvas = plan_resize(*saved["I_ir"].shape[-2:], mode="bucket")

    def on_canvas(role: str) -> dict:
        return {name: canvas.to_canvas(saved[name][None], fill=STAGE2_FILLS[role]) for name in IMAGES}

    for prior, source in PRIOR_SOURCES.items():
        check_rows(problems, f"stage-2 {prior} extractor", records.get(f"stage-2 {prior} extractor", []), source,
                   on_canvas(prior), IMAGE_ATOL)
    clip_calls = records.get("CLIP vision pixels", [])
    size = clip_calls[0].shape[-1] if clip_calls else 0
    check_colour_adapter(problems, records, {name: clip_pixels(image, size)
                                             for name, image in on_canvas("colour").items()})
    by_node = dict(zip(records.get("captioner nodes", []), records.get("captioner pixels", [])))
    check_captioner_and_prompts(problems, {**records, "captioner pixels": [by_node[n] for n in CAPTIONERS
                                                                           if n in by_node]}, saved, llava_processor)
    return problems


def _check_stage1_control(problems: list, records: dict, canvases: dict) -> None:
    """The ControlNet's c_r is the stage-1 VAE's latent of I_ir's canvas: the encode whose pixels are I_ir's."""
    pixels, latents = records.get("stage-1 VAE encode pixels", []), records.get("stage-1 VAE encode latents", [])
    encoded = {}
    for image, latent in zip(pixels, latents):
        for name in IMAGES:
            if name not in encoded and matches(image, canvases[name], IMAGE_ATOL):
                encoded[name] = latent
    if "I_ir" not in encoded:
        problems.append(f"stage-1 ControlNet image latent: I_ir was never encoded (encoded: {sorted(encoded)})")
        return
    check_rows(problems, "stage-1 ControlNet image latent", records.get("stage-1 ControlNet image latent", []),
               "I_ir", encoded, 1e-5)


@pytest.fixture(scope="module")
def llava_processor(tiny_models_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_models_dir / "LLM" / "llava-1.5-7b-hf", local_files_only=True)


def test_diffbody_full_wires_every_input_as_the_paper_says(comfy_server, tmp_path, llava_processor):
    records, saved = run_workflow(comfy_server, tmp_path)
    assert saved["p"] != saved["p'"]  # else p and p' could not be told apart at the text encoders
    problems = server_wiring_problems(records, saved, llava_processor)
    assert not problems, "\n".join(problems)


def _rewire_every_wire(prompt: dict) -> None:
    """Stage 1: I_pose as its image, a prompt that is not p. Stage 2: I_res to the image prior, I_ir to the
    pose prior, depth and normal swapped, I_ir to the colour adapter, p instead of p'."""
    prompt["14"]["inputs"]["image"] = ["4", 0]
    prompt["11"]["inputs"]["text"] = "not the caption"
    prompt["44"]["inputs"].update(image=["14", 0], pose=["3", 0], depth=["14", 2], normal=["14", 1], colour=["3", 0])
    prompt["31"]["inputs"]["text"] = ["5", 0]


def _caption_wrong_images(prompt: dict) -> None:
    """p = caption(I_LQ) instead of caption(I_ir), p' = caption(I_ir) instead of caption(I_res)."""
    prompt["5"]["inputs"]["image"] = [PROBE, 0]  # Load Image's output through the probe, so it runs after it
    prompt["20"]["inputs"]["image"] = ["3", 0]


REWIRED = {
    _rewire_every_wire: {"stage-1 ControlNet image latent", "stage-1 text encoder", "stage-2 image extractor",
                         "stage-2 pose extractor", "stage-2 depth extractor", "stage-2 normal extractor",
                         "CLIP vision pixels", "colour adapter resampler features", "stage-2 text encoders"},
    _caption_wrong_images: {"captioner input for p", "captioner input for p'"},
}


@pytest.mark.parametrize("rewire", list(REWIRED), ids=lambda f: f.__name__.strip("_"))
def test_the_detector_names_every_wire_the_workflow_crosses(comfy_server, tmp_path, llava_processor, rewire):
    records, saved = run_workflow(comfy_server, tmp_path, rewire)
    problems = server_wiring_problems(records, saved, llava_processor)
    print("\n".join(problems))
    assert {line.split(":")[0] for line in problems} == REWIRED[rewire], problems
