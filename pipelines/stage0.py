"""Stage 0 of DiffBody as one call: I_ir = SwinIR(I_LQ), I_pose = Pose(I_ir), p = LLaVA(I_ir).

Used by the command line and evaluation; the ComfyUI nodes run the same three steps as separate
nodes. Models are passed in already loaded, so callers decide about devices and caching.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .presets import MODE_DEFAULTS
from .prompts import DEFAULT_CAPTION_PROMPT


@dataclass
class Stage0Options:
    upscale: float = 1.0
    tile_size: int = 512
    tile_stride: int = 256
    draw_hands: bool = False
    draw_face: bool = False
    xinsir_sticks: bool = MODE_DEFAULTS["diffbody"].xinsir_sticks  # the skeleton as xinsir's ControlNets expect it
    caption_prompt: str = DEFAULT_CAPTION_PROMPT
    max_new_tokens: int = 77
    seed: int = 0


@dataclass
class Stage0Output:
    cleaned: torch.Tensor  # (B,3,H',W') I_ir, H' = H * upscale
    pose_images: torch.Tensor  # (B,3,H',W') I_pose
    keypoints: list[dict]  # one POSE_KEYPOINT frame per image
    captions: list[str] = field(default_factory=list)  # empty when no captioner was given


def run_stage0(images: torch.Tensor, *, swinir, pose_estimator, captioner=None,
               options: Stage0Options | None = None, device=None) -> Stage0Output:
    """(B,3,H,W) float 0..1 degraded images -> the stage-0 outputs."""
    from .cleanup import clean_images
    from .pose.backends import estimate_and_draw

    options = options or Stage0Options()
    cleaned = clean_images(swinir, images, upscale=options.upscale, tile_size=options.tile_size,
                           tile_stride=options.tile_stride, device=device)
    pose_images, frames = estimate_and_draw(pose_estimator, cleaned, hands=options.draw_hands,
                                            face=options.draw_face, xinsir_sticks=options.xinsir_sticks)
    captions = []
    if captioner is not None:
        captions = captioner.caption(cleaned, prompt=options.caption_prompt, max_new_tokens=options.max_new_tokens,
                                     seed=options.seed, device=device)
    return Stage0Output(cleaned, pose_images, frames, captions)
