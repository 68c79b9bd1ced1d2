"""Which tensor reaches which input in the command line's pipeline (issue 14).

`restore --tiny` runs in-process (cli.main, as a user runs it) with forward pre-hooks on the networks'
INPUTS, installed by wrapping the loaders restore_images calls: the stage-1 ControlNet's image latent c_r,
each stage-2 prior extractor's image, the CLIP vision encoder's pixels, the colour adapter's resampler
features, the text encoders' prompts and the captioner's vision-tower pixels. Outputs prove nothing here:
the ControlNets are zero-initialised and the tiny captioner's text need not depend on its image.

What arrived is compared with tensors computed independently from what the CLI saved (the *_ir, *_pose,
*_stage1, *_depth, *_normal PNGs and the caption files), through the same canvas resize, with a tolerance
that covers the PNGs' 8-bit rounding. Every comparison also knows the wrong candidates: a crossed wire is
reported as "got X instead of Y". The negative tests cross each wire on purpose (monkeypatching the
pipeline) and check that the detector names it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from PIL import Image

from comfy_harness import REPO_ROOT
from wiring_checks import (IMAGE_ATOL, IMAGES, PRIOR_SOURCES, check_captioner_and_prompts, check_colour_adapter,
                           check_rows, read_png, wiring_recorder)

WiringRecorder = wiring_recorder.WiringRecorder

SAMPLE = REPO_ROOT / "assets" / "sample_person_lq.jpg"
INPUT_SIDE = 64  # the sample photo, made smaller: stage 2 on the CPU dominates the run
PRIOR_FILLS = {"image": "edge", "pose": "black", "depth": "edge", "normal": "edge"}
LATENT_ATOL = 0.05  # the stage-1 VAE's latent of an image that differs by 8-bit rounding


def _install_recorder(monkeypatch, recorder: WiringRecorder, kept: dict) -> None:
    """Wrap the loaders restore_images imports at call time, so every network it loads is watched."""
    from comfyui_diffbody.models import colour_adapter, sd21_components, sdxl_components, stage1_weights, stage2_weights
    from comfyui_diffbody.pipelines import caption

    def wrap(module, name, watch):
        original = getattr(module, name)

        def loading(*args, **kwargs):
            loaded = original(*args, **kwargs)
            watch(loaded)
            return loaded

        monkeypatch.setattr(module, name, loading)

    def sd21(components):
        kept["sd21_vae"] = components.vae
        recorder.watch_text(components.text_encoder, "stage-1 text encoder")

    def multiprior(controlnet):
        for prior, extractor in controlnet.controlnet_cond_embedding.extractors.items():
            recorder.watch(extractor, f"stage-2 {prior} extractor", "image")

    def sdxl(parts):
        recorder.watch_text(parts[2], "stage-2 text encoders")

    def clip_vision(encoder):
        kept["clip_vision"] = encoder
        recorder.watch(encoder, "CLIP vision pixels", "pixel_values")
        recorder.watch_output(encoder, "CLIP vision penultimate states", lambda out: out.hidden_states[-2])

    def captioner(loaded):
        kept["captioner"] = loaded
        towers = [module for name, module in loaded.model.named_modules() if name.split(".")[-1] == "vision_tower"]
        assert len(towers) == 1, "the captioner has no single vision tower to watch"
        recorder.watch(towers[0], "captioner pixels", "pixel_values")

    wrap(sd21_components, "load_sd21_components", sd21)
    wrap(stage1_weights, "load_stage1_controlnet",
         lambda net: recorder.watch(net, "stage-1 ControlNet image latent", "image_latent"))
    wrap(stage2_weights, "load_multiprior", multiprior)
    wrap(colour_adapter, "load_colour_adapter",
         lambda adapter: recorder.watch(adapter.image_proj, "colour adapter resampler features", "features"))
    wrap(sdxl_components, "load_sdxl_parts", sdxl)
    wrap(sdxl_components, "load_clip_vision", clip_vision)
    original_load = caption.LlavaCaptioner.load.__func__

    def load_captioner(cls, *args, **kwargs):
        loaded = original_load(cls, *args, **kwargs)
        captioner(loaded)
        return loaded

    monkeypatch.setattr(caption.LlavaCaptioner, "load", classmethod(load_captioner))


@dataclasses.dataclass
class WiringRun:
    records: dict
    kept: dict
    saved: dict  # what the CLI wrote: images (3,H,W) and the two captions


def run_restore(tmp_path: Path, monkeypatch, crossing=None) -> WiringRun:
    """`restore --tiny` in-process with the recorder installed; `crossing(monkeypatch)` may cross a wire first."""
    from comfyui_diffbody import cli

    recorder, kept = WiringRecorder(), {}
    _install_recorder(monkeypatch, recorder, kept)
    if crossing is not None:
        crossing(monkeypatch)
    out, source = tmp_path / "out", tmp_path / "person.png"
    Image.open(SAMPLE).resize((INPUT_SIDE, INPUT_SIDE), Image.BICUBIC).save(source)
    try:
        assert cli.main(["restore", str(source), "--tiny", "--size-mode", "native", "--out", str(out)]) == 0
    finally:
        recorder.remove()
    stem = out / source.stem
    saved = {name: read_png(Path(f"{stem}_{suffix}.png")) for name, suffix in
             (("I_ir", "ir"), ("I_pose", "pose"), ("I_res", "stage1"), ("I_depth", "depth"), ("I_normal", "normal"))}
    saved["p"] = Path(f"{stem}_caption.txt").read_text().rstrip("\n")
    saved["p'"] = Path(f"{stem}_recaption.txt").read_text().rstrip("\n")
    return WiringRun(recorder.records, kept, saved)


# -- the detector --------------------------------------------------------------------------------------

@torch.no_grad()
def wiring_problems(run: WiringRun) -> list[str]:
    """Every crossed or dead wire of one recorded run, as readable lines (empty: all wired as the paper says)."""
    from comfyui_diffbody.pipelines.buckets import plan_resize
    from comfyui_diffbody.pipelines.clip_image import clip_pixels

    saved, records, problems = run.saved, run.records, []
    plan = plan_resize(*saved["I_ir"].shape[-2:], mode="native")

    def canvases(fill):
        return {name: plan.to_canvas(saved[name][None], fill=fill) for name in IMAGES}

    # I_ir -> the stage-1 ControlNet (its input is c_r, the stage-1 VAE's latent of I_ir's canvas)
    latents = {name: run.kept["sd21_vae"].encode(image).float() for name, image in canvases("edge").items()}
    check_rows(problems, "stage-1 ControlNet image latent", records.get("stage-1 ControlNet image latent", []),
               "I_ir", latents, LATENT_ATOL)
    # I_ir, I_pose, I_depth, I_normal -> their own extractors of the multi-prior ControlNet
    for prior, source in PRIOR_SOURCES.items():
        check_rows(problems, f"stage-2 {prior} extractor", records.get(f"stage-2 {prior} extractor", []), source,
                   canvases(PRIOR_FILLS[prior]), IMAGE_ATOL)
    check_colour_adapter(problems, records, {name: clip_pixels(image, run.kept["clip_vision"].config.image_size)
                                             for name, image in canvases("edge").items()})
    # p' = caption(I_res): the captioner's second image is I_res (the first, for p, is I_ir)
    check_captioner_and_prompts(problems, records, saved, run.kept["captioner"].processor)
    return problems


def test_the_cli_pipeline_wires_every_input_as_the_paper_says(tmp_path, monkeypatch):
    run = run_restore(tmp_path, monkeypatch)
    assert run.saved["p"] != run.saved["p'"]  # else p and p' could not be told apart at the text encoders
    problems = wiring_problems(run)
    assert not problems, "\n".join(problems)


# -- crossed on purpose: the detector must name every crossed wire, and only those -------------------------

def _cross_everything_after_stage0(monkeypatch):
    """Stage 1: I_pose as I_ir and a caption that is not p. Stage 2: I_res to the image prior, I_ir to the
    pose prior, depth and normal swapped, I_ir to the colour adapter, p instead of p'."""
    from comfyui_diffbody.pipelines import restore, stage1

    call_stage1 = stage1.Stage1Pipeline.__call__

    def crossed_stage1(self, image_ir, pose_image, captions, *args, **kwargs):
        return call_stage1(self, pose_image, pose_image, [c + " (not p)" for c in captions], *args, **kwargs)

    restore_one, settings = restore._restore_one, restore._stage2_settings

    def crossed_stage2(pipeline, result, *args, **kwargs):
        crossed = dataclasses.replace(result, cleaned=result.stage1, pose_image=result.cleaned, depth=result.normal,
                                      normal=result.depth, stage1=result.cleaned)
        return restore_one(pipeline, crossed, *args, **kwargs)

    monkeypatch.setattr(stage1.Stage1Pipeline, "__call__", crossed_stage1)
    monkeypatch.setattr(restore, "_restore_one", crossed_stage2)
    monkeypatch.setattr(restore, "_stage2_settings", lambda result, *args: dataclasses.replace(
        settings(result, *args), prompt=result.caption))


def _caption_wrong_images(monkeypatch):
    """p = caption(I_LQ) instead of caption(I_ir), and p' = caption(I_ir) instead of caption(I_res)."""
    from comfyui_diffbody.pipelines import restore

    run_stage0, recaption = restore.run_stage0, restore._recaption

    class CaptionsTheInput:
        def __init__(self, captioner, degraded):
            self.captioner, self.degraded = captioner, degraded

        def caption(self, images, **kwargs):
            return self.captioner.caption(self.degraded, **kwargs)

    def stage0_captioning_lq(image, *, captioner=None, **kwargs):
        return run_stage0(image, captioner=CaptionsTheInput(captioner, image), **kwargs)

    def recaption_ir(results, *args, **kwargs):
        copies = [dataclasses.replace(r, stage1=r.cleaned) for r in results]
        recaption(copies, *args, **kwargs)
        for result, copy in zip(results, copies):
            result.recaption = copy.recaption

    monkeypatch.setattr(restore, "run_stage0", stage0_captioning_lq)
    monkeypatch.setattr(restore, "_recaption", recaption_ir)


CROSSED_WIRES = {
    _cross_everything_after_stage0: {"stage-1 ControlNet image latent", "stage-1 text encoder",
                                     "stage-2 image extractor", "stage-2 pose extractor", "stage-2 depth extractor",
                                     "stage-2 normal extractor", "CLIP vision pixels",
                                     "colour adapter resampler features", "stage-2 text encoders"},
    _caption_wrong_images: {"captioner input for p", "captioner input for p'"},
}


@pytest.mark.parametrize("crossing", list(CROSSED_WIRES), ids=lambda f: f.__name__.strip("_"))
def test_the_detector_names_every_wire_crossed_on_purpose(tmp_path, monkeypatch, crossing):
    problems = wiring_problems(run_restore(tmp_path, monkeypatch, crossing))
    print("\n".join(problems))
    assert {line.split(":")[0] for line in problems} == CROSSED_WIRES[crossing], problems
