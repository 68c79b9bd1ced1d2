"""The wiring detector shared by tests/test_wiring.py (CLI pipeline, in-process) and
tests/test_server_wiring.py (the diffbody_full workflow in the server): given what the recorder saw at each
network's input and independently computed candidates, the list of crossed or dead wires.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# comfy_test_nodes/__init__ imports ComfyUI: load the recorder (plain PyTorch) from its file.
_spec = importlib.util.spec_from_file_location("wiring_recorder",
                                               Path(__file__).parent / "comfy_test_nodes" / "wiring_recorder.py")
wiring_recorder = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wiring_recorder)
matches = wiring_recorder.matches

IMAGES = ("I_ir", "I_pose", "I_res", "I_depth", "I_normal")
PRIOR_SOURCES = {"image": "I_ir", "pose": "I_pose", "depth": "I_depth", "normal": "I_normal"}
# The saved PNGs round (the CLI) or truncate (ComfyUI's previews) to 8 bits: under 1/255 per pixel, and
# a bilinear resize or the canvas padding keeps that bound. The colour adapter's CLIP preprocessing rounds
# to 8 bits again (a level or two off) and divides by CLIP's std (~0.26); LLaVA's processor also resizes
# bicubically, whose overshoot can enlarge a difference. Wrong images differ by far more (tenths to units).
IMAGE_ATOL = 1.5 / 255
CLIP_ATOL = 3 / 255 / 0.26
LLAVA_ATOL = 4 / 255 / 0.26


def read_png(path: Path) -> torch.Tensor:
    """(3, H, W) float in 0..1."""
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255.0


def which(arrived: torch.Tensor, candidates: dict, atol: float) -> list[str]:
    return [name for name, tensor in candidates.items() if matches(arrived, tensor, atol)]


def check_rows(problems: list, wire: str, calls: list, expected: str, candidates: dict, atol: float,
               allowed_extra: dict | None = None) -> None:
    """Every row (batch item) of every recorded call is `expected` (or one of allowed_extra), and
    `expected` arrived at least once."""
    if not calls:
        problems.append(f"{wire}: never ran")
        return
    seen = set()
    for index, call in enumerate(calls):
        for row in call:
            hits = which(row[None], {**candidates, **(allowed_extra or {})}, atol)
            seen.update(hits)
            if expected not in hits and not set(hits) & set(allowed_extra or {}):
                closest = min(candidates, key=lambda n: float((row[None] - candidates[n]).abs().max())
                              if row[None].shape == candidates[n].shape else float("inf"))
                problems.append(f"{wire}: call {index} got {hits or 'an unknown tensor'} instead of {expected} "
                                f"(closest: {closest}; {wiring_recorder.describe(row[None], candidates[expected])})")
                return
    if expected not in seen:
        problems.append(f"{wire}: {expected} never arrived")


def check_colour_adapter(problems: list, records: dict, clip_inputs: dict) -> None:
    """CLIP's pixels are I_res's (and the all-zero unconditional input), and the resampler receives the
    penultimate states CLIP computed from exactly those pixels."""
    zero = {"zeros (unconditional)": torch.zeros_like(clip_inputs["I_res"])}
    pixels = records.get("CLIP vision pixels", [])
    check_rows(problems, "CLIP vision pixels", pixels, "I_res", clip_inputs, CLIP_ATOL, allowed_extra=zero)
    states = records.get("CLIP vision penultimate states", [])
    from_ires = [s for p, s in zip(pixels, states) if matches(p, clip_inputs["I_res"], CLIP_ATOL)]
    features = records.get("colour adapter resampler features", [])
    if not features:
        problems.append("colour adapter resampler features: never ran")
    elif not from_ires or not all(any(matches(f, s, 1e-6) for s in states) for f in features) \
            or not any(matches(f, from_ires[0], 1e-6) for f in features):
        problems.append("colour adapter resampler features: not CLIP's penultimate states of I_res")


def check_captioner_and_prompts(problems: list, records: dict, saved: dict, llava_processor) -> None:
    """LLaVA sees I_ir for p and I_res for p' (its first and second image), and each stage encodes its own
    caption (check_prompts)."""
    from comfyui_diffbody.pipelines.caption import DEFAULT_PROMPT, _model_inputs, conversation_text

    text = conversation_text(llava_processor, DEFAULT_PROMPT)
    llava_pixels = {name: _model_inputs(llava_processor, saved[name], text, torch.device("cpu"),
                                        torch.float32)["pixel_values"] for name in IMAGES}
    calls = records.get("captioner pixels", [])
    check_rows(problems, "captioner input for p", calls[:1], "I_ir", llava_pixels, LLAVA_ATOL)
    check_rows(problems, "captioner input for p'", calls[1:], "I_res", llava_pixels, LLAVA_ATOL)
    check_prompts(problems, records, saved)


def check_prompts(problems: list, records: dict, saved: dict) -> None:
    """p -> stage 1's text encoder, p' -> stage 2's (the other prompts encoded are the empty negative)."""
    for wire, expected, other in (("stage-1 text encoder", "p", "p'"), ("stage-2 text encoders", "p'", "p")):
        prompts = records.get(wire, [])
        if [saved[expected]] not in prompts or any(batch not in ([saved[expected]], [""]) for batch in prompts):
            problems.append(f"{wire}: got {prompts} instead of {expected} = {saved[expected]!r}"
                            + (f" (that is {other})" if [saved[other]] in prompts else ""))
