"""DiffBody stage 1: joint sampling of the depth, normal and RGB latents, and the pipeline around it.

Paper section 3.2: three branches, each with its own independently drawn Gaussian noise, denoised
together by the joint UNet at ONE shared timestep; the pose latent c_p is concatenated to every
branch's noisy latent; the caption c_t conditions through cross-attention; the ControlNet brings in
c_r = E(I_ir). Inference in the paper: DDPM, 200 steps.

Schedulers (pipelines/sampling.py) on SD 2.1-base's training schedule (its scheduler_config.json): 1000
steps, betas "scaled_linear" from 0.00085 to 0.012, epsilon prediction, steps_offset 1, timestep_spacing
"leading". Stage 1 offers:
- "ddpm": the paper's sampler; 200 steps by default (the paper's setting). Stochastic: each step adds
  fresh noise, drawn from the seeded per-item generators.
- "ddim" (eta 0, deterministic), "dpmpp_2m" (DPM-Solver++ 2M) and "dpmpp_2m_karras" (on Karras sigmas) for
  20-50 steps.

One scheduler instance steps all three branches as one stacked (B, 3, 4, h, w) tensor. That is exact
only because each of these updates is element-wise with coefficients that depend on the timestep
alone: DDIM is stateless; DPM-Solver++ 2M keeps the previous model outputs as whole tensors (so each
element keeps its own history, provided the instance is stepped ONCE per timestep with the same
layout - stepping the branches one by one through one instance would advance its step counter three
times and mix their histories); DDPM draws its step noise for the whole tensor, so every branch (and
item) gets its own independent noise. A scheduler whose step mixed elements would need one copy per
branch; `tests/test_stage1_sampler.py` checks the stacked step against per-branch copies (DDIM and
DPM-Solver++; DDPM's update is likewise element-wise, plus noise drawn for the whole tensor).

Seeds, the timestep guard for step counts near 1000 and the order of the guidance halves:
pipelines/sampling.py, shared with stage 2.

Guidance: classifier-free guidance on the caption only (pose, image latent and ControlNet are the
same in both halves, as HumanSD does for the pose). Default scale 7.5: the paper does not state one; 7.5
is Stable Diffusion's usual default (diffusers' SD pipelines) and sits between SD 2's reference script (9)
and lighter restoration settings.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

import torch
from torch import nn

from ..models.errors import DiffBodyError
from ..models.joint_unet import BRANCHES
from ..models.sd21_components import LatentCodec, TextEncoder
from .buckets import plan_resize
from . import sampling
from .image import BadImage, check_bchw
from .sampling import check_scheduler, guidance_batch, guided, initial_noise, item_generators, scheduler_step

if TYPE_CHECKING:
    from ..models.joint_unet import JointUNet
    from ..models.stage1_controlnet import Stage1ControlNet

ProgressFn = Callable[[int, int], None]

SCHEDULERS = ("ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_karras")
DEFAULT_STEPS = {"ddpm": 200, "ddim": 50, "dpmpp_2m": 25, "dpmpp_2m_karras": 25}
DEFAULT_CFG = 7.5
MAX_STEPS = 1000

# stabilityai/stable-diffusion-2-1-base, scheduler/scheduler_config.json (a PNDMScheduler there).
SD21_TRAINING_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", prediction_type="epsilon", steps_offset=1,
                              timestep_spacing="leading")


class ImageSizeMismatch(BadImage):
    """The pose image and the cleaned image differ in size or batch."""


class CaptionCountMismatch(DiffBodyError, ValueError):
    """Not exactly one caption per image."""


class ComponentMismatch(DiffBodyError):
    """Two components that must fit together do not (e.g. text encoder width vs UNet context width)."""


def make_scheduler(name: str, **overrides):
    """A fresh scheduler `name` (one of stage 1's SCHEDULERS) on SD 2.1-base's training schedule."""
    return sampling.make_scheduler(name, SD21_TRAINING_SCHEDULE, choices=SCHEDULERS, **overrides)


def scheduler_for_steps(name: str, steps: int, device=None):
    """Stage 1's scheduler `name` set for `steps`, kept inside the training schedule (sampling.py)."""
    return sampling.scheduler_for_steps(name, steps, SD21_TRAINING_SCHEDULE, choices=SCHEDULERS, device=device)


def sample_joint(
    unet: "JointUNet",
    *,
    pose_latent: torch.Tensor,
    context: torch.Tensor,
    uncond_context: torch.Tensor | None = None,
    image_latent: torch.Tensor | None = None,
    controlnet: "Stage1ControlNet | None" = None,
    control_scale: float = 1.0,
    steps: int,
    scheduler: str = "ddpm",
    cfg: float = DEFAULT_CFG,
    seed: int = 0,
    progress: ProgressFn | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Sample the joint (B, 3, C, h, w) depth/normal/RGB latents (branch axis in BRANCHES order).

    pose_latent: (B, C, h, w) c_p. context / uncond_context: (B, L, D) caption and negative-prompt features
    (uncond_context is needed unless cfg == 1; its L may differ, e.g. 77 vs 154 tokens). image_latent:
    (B, C, h, w) c_r for the ControlNet (both or neither). Runs where the UNet is, in `dtype` (default: the
    UNet's); the latents themselves are kept and stepped in float32 and returned as float32 on the UNet's
    device. progress(done, total) is called after every step; an exception raised in it stops sampling and
    propagates.
    """
    _check_sampling_args(pose_latent, context, uncond_context, image_latent, controlnet, steps, cfg)
    device = next(unet.parameters()).device
    dtype = dtype or next(unet.parameters()).dtype
    sampler = scheduler_for_steps(scheduler, steps, device)
    generators = item_generators(seed, pose_latent.shape[0])
    shape = (pose_latent.shape[0], len(BRANCHES), *pose_latent.shape[1:])
    latents = initial_noise(generators, shape).to(device) * sampler.init_noise_sigma

    guidance = cfg != 1.0
    doubled = (lambda x: torch.cat([x, x])) if guidance else (lambda x: x)
    pose_in = doubled(pose_latent.to(device, dtype))
    context_in = guidance_batch(*_same_length(uncond_context, context)) if guidance else context
    context_in = context_in.to(device, dtype)
    image_in = doubled(image_latent.to(device, dtype)) if image_latent is not None else None

    total = len(sampler.timesteps)
    with torch.no_grad(), _eval_mode(unet, controlnet):
        for done, t in enumerate(sampler.timesteps, start=1):
            noisy = doubled(sampler.scale_model_input(latents, t)).to(dtype)
            timestep = t.expand(noisy.shape[0])
            control = None
            if controlnet is not None:
                control = controlnet(noisy, pose_in, timestep, context_in, image_in, scale=control_scale)
            eps = unet(noisy, pose_in, timestep, context_in, control=control).float()
            if guidance:
                eps = guided(eps, cfg)
            latents = scheduler_step(sampler, eps, t, latents, generators)
            if progress is not None:
                progress(done, total)
    return latents


def _check_sampling_args(pose_latent, context, uncond_context, image_latent, controlnet, steps, cfg) -> None:
    if pose_latent.ndim != 4:
        raise ValueError(f"pose_latent must be (B, C, h, w), got {tuple(pose_latent.shape)}")
    batch = pose_latent.shape[0]
    if context.ndim != 3 or context.shape[0] != batch:
        raise ValueError(f"context must be (B={batch}, L, D), got {tuple(context.shape)}")
    if cfg != 1.0:
        if uncond_context is None:
            raise ValueError("classifier-free guidance (cfg != 1) needs uncond_context")
        if uncond_context.shape[0] != batch or uncond_context.shape[2] != context.shape[2]:
            raise ValueError(f"uncond_context {tuple(uncond_context.shape)} must be (B={batch}, L, "
                             f"{context.shape[2]}) like context {tuple(context.shape)}")
    if (image_latent is None) != (controlnet is None):
        raise ValueError("image_latent and controlnet go together: pass both or neither")
    if image_latent is not None and tuple(image_latent.shape) != tuple(pose_latent.shape):
        raise ValueError(f"image_latent {tuple(image_latent.shape)} must match pose_latent {tuple(pose_latent.shape)}")
    if not 1 <= int(steps) <= MAX_STEPS or int(steps) != steps:
        raise ValueError(f"steps must be a whole number from 1 to {MAX_STEPS}, got {steps}")


def _same_length(*contexts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Bring caption and negative contexts of different token counts (long prompts: 77 per chunk) to their
    least common multiple by repeating each whole; repeating every key and value k times leaves attention's
    output unchanged, so this is exact (ComfyUI batches conditionings the same way)."""
    length = math.lcm(*(c.shape[1] for c in contexts))
    return tuple(c.repeat(1, length // c.shape[1], 1) for c in contexts)


@contextlib.contextmanager
def _eval_mode(*modules: nn.Module | None) -> Iterator[None]:
    """Sample with dropout off (training previews call us mid-training) and restore each module's mode."""
    present = [m for m in modules if m is not None]
    modes = [m.training for m in present]
    for m in present:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(present, modes):
            m.train(mode)


@dataclass(frozen=True)
class Stage1Output:
    """Stage-1 results, each (B, 3, H, W) float32 in 0..1 on the CPU at the input's size."""

    rgb: torch.Tensor
    depth: torch.Tensor
    normal: torch.Tensor


class Stage1Pipeline:
    """I_ir, I_pose and captions -> I_res, I_depth, I_normal (paper section 3.2).

    unet: the joint UNet; controlnet: the stage-1 ControlNet, or None to sample from pose and caption
    alone (the network after the first training phase, eq. 1); vae: a LatentCodec (pose and image are
    encoded, and all three branches decoded, by it: depth and normal come back as 3-channel images);
    text_encoder: a TextEncoder giving the UNet's context width.
    """

    def __init__(self, unet: "JointUNet", controlnet: "Stage1ControlNet | None", vae: LatentCodec,
                 text_encoder: TextEncoder):
        self.unet = unet
        self.controlnet = controlnet
        self.vae = vae
        self.text_encoder = text_encoder

    def __call__(
        self,
        image_ir: torch.Tensor,
        pose_image: torch.Tensor,
        captions: list[str],
        negative: str = "",
        *,
        steps: int | None = None,
        scheduler: str = "ddpm",
        cfg: float = DEFAULT_CFG,
        seed: int = 0,
        control_scale: float = 1.0,
        size_mode: str = "bucket",
        progress: ProgressFn | None = None,
    ) -> Stage1Output:
        """image_ir, pose_image: (B, 3, H, W) float in 0..1 of the same size (pose: skeleton on black).
        captions: one per image. steps: default DEFAULT_STEPS[scheduler] (DDPM: the paper's 200).
        size_mode: "bucket" or "native" (see pipelines/buckets.py). progress(done, total) per step."""
        validate_stage1_inputs(image_ir, pose_image, captions)
        check_scheduler(scheduler, SCHEDULERS)
        plan = plan_resize(*image_ir.shape[-2:], mode=size_mode)
        pose_latent = self._encode(plan.to_canvas(pose_image.clamp(0, 1), fill="black"))
        image_latent = None
        if self.controlnet is not None:
            image_latent = self._encode(plan.to_canvas(image_ir.clamp(0, 1), fill="edge"))
        context = self._text(list(captions))
        uncond = self._text([negative] * len(captions)) if cfg != 1.0 else None
        latents = sample_joint(
            self.unet, pose_latent=pose_latent, context=context, uncond_context=uncond, image_latent=image_latent,
            controlnet=self.controlnet, control_scale=control_scale,
            steps=DEFAULT_STEPS[scheduler] if steps is None else steps, scheduler=scheduler, cfg=cfg, seed=seed,
            progress=progress)
        decoded = {name: plan.from_canvas(self._decode(latents[:, i])) for i, name in enumerate(BRANCHES)}
        return Stage1Output(rgb=decoded["rgb"], depth=decoded["depth"], normal=decoded["normal"])

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        # One image at a time: VAE memory at 1024x512 is the peak of the whole stage on small cards.
        return torch.cat([self.vae.encode(images[i:i + 1]) for i in range(images.shape[0])])

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.vae.decode(latents[i:i + 1]).float().cpu() for i in range(latents.shape[0])])

    def _text(self, prompts: list[str]) -> torch.Tensor:
        context = self.text_encoder.encode(prompts)
        expected = getattr(getattr(self.unet, "config", None), "cross_attention_dim", None)
        if expected is not None and context.shape[-1] != expected:
            raise ComponentMismatch(f"the text encoder gives {context.shape[-1]}-wide features but the stage-1 UNet "
                                    f"expects {expected} (Stable Diffusion 2.1's OpenCLIP ViT-H text encoder gives "
                                    f"1024)")
        return context


def validate_stage1_inputs(image_ir: torch.Tensor, pose_image: torch.Tensor, captions: list[str]) -> None:
    """Raise a DiffBodyError subclass naming the problem unless both images are (B, 3, H, W) float tensors of
    one size and there is one caption per image."""
    for name, images in (("cleaned image", image_ir), ("pose image", pose_image)):
        check_bchw(images, f"the {name}")
    if image_ir.shape != pose_image.shape:
        raise ImageSizeMismatch(
            f"the pose image ({_describe(pose_image)}) must match the cleaned image ({_describe(image_ir)}); "
            "draw the pose on the cleaned image's size")
    if isinstance(captions, str) or len(captions) != image_ir.shape[0]:
        got = "a single string" if isinstance(captions, str) else f"{len(captions)} captions"
        raise CaptionCountMismatch(f"expected a list of {image_ir.shape[0]} captions (one per image), got {got}")


def _describe(images: torch.Tensor) -> str:
    batch, _, height, width = images.shape
    return f"{batch} x {width}x{height} px"
