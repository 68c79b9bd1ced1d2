"""What the two stage-1 training phases share: frozen SD 2.1 parts, latents, noising, eq. 1/2's loss, previews.

The objective (paper eqs. 1 and 2): the depth, normal and RGB latents are noised with three
independently drawn Gaussian noises at ONE timestep per sample (uniform over SD 2.1's 1000 training
steps, its scaled-linear schedule), the pose latent c_p is concatenated to each (inside JointUNet), and
the loss is the SUM over the three branches of the mean squared error between each branch's noise and
its prediction. The depth map (grey) goes through the VAE as a three-channel image, as stage 1 later
decodes it; the normal map as its RGB encoding.

Captions: replaced by the empty prompt with probability `caption_dropout` (default 0.1). Neither the
paper nor HumanSD's description states a rate; some dropout is needed because the stage-1 sampler uses
classifier-free guidance against the empty prompt, and 0.1 is Stable Diffusion's usual fine-tuning
value.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Sequence

import torch

from ..models.joint_unet import BRANCHES
from ..models.sd21_components import SD21Components
from .loop import add_phase_arguments

BRANCH_SOURCES = {"depth": "depth", "normal": "normal", "rgb": "image"}  # branch -> dataset field
PAPER_LEARNING_RATE = 1e-5  # section 4.2, both stage-1 phases
PAPER_BATCH_PER_GPU = 8  # 64 in total on the paper's 8 GPUs
PAPER_STEPS = 100_000


def add_stage1_arguments(parser: argparse.ArgumentParser) -> None:
    """Data, SD 2.1 parts, caption dropout and preview settings, common to both stage-1 phases."""
    add_phase_arguments(parser, validation_schedulers=("ddim", "dpmpp_2m", "ddpm"), validation_scheduler="ddim",
                        validation_cfg=4.0)
    parser.add_argument("--pretrained_sd21", required=True,
                        help="Stable Diffusion 2.1-base diffusers folder: its VAE and text encoder are used frozen")


def load_frozen_sd21(folder: str) -> SD21Components:
    """The SD 2.1-base VAE and text encoder (CPU, float32; run_training moves and casts them)."""
    from ..models.sd21_components import load_sd21_components

    return load_sd21_components(folder)


def frozen_modules(components: SD21Components) -> list[torch.nn.Module]:
    return [components.vae.vae, components.text_encoder.text_encoder]


def training_schedule():
    """SD 2.1-base's DDPM training schedule (the one the stage-1 sampler inverts)."""
    from ..pipelines.stage1 import make_scheduler

    return make_scheduler("ddpm")


@torch.no_grad()
def encode(components: SD21Components, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in 0..1 -> scaled float32 VAE latents (B, 4, H/8, W/8)."""
    return components.vae.encode(images)


@torch.no_grad()
def encode_captions(components: SD21Components, captions: Sequence[str], dropout: float,
                    generator: torch.Generator | None) -> torch.Tensor:
    """Text features (B, 77, D), each caption replaced by "" with probability `dropout` (drawn from `generator`)."""
    captions = list(captions)
    if dropout > 0:
        draws = torch.rand(len(captions), generator=generator, device=generator.device).tolist()
        captions = ["" if d < dropout else c for c, d in zip(captions, draws)]
    return components.text_encoder.encode(captions)


@dataclass
class Stage1Inputs:
    """One batch made ready for the joint UNet."""

    noisy: torch.Tensor  # (B, 3, 4, h, w), branch axis in BRANCHES order
    noise: torch.Tensor  # the same shape: eps_d, eps_n, eps_i
    timesteps: torch.Tensor  # (B,) long
    pose_latent: torch.Tensor  # (B, 4, h, w)
    context: torch.Tensor  # (B, 77, D)


def prepare_inputs(batch: dict, components: SD21Components, schedule, caption_dropout: float) -> Stage1Inputs:
    """Encode the batch's depth/normal/RGB targets and pose, draw noise and timesteps from batch["generator"]
    (one generator for the batch, or a list with one per item: see shared.fix_batch_randomness)."""
    generators = batch["generator"]
    per_item = generators if isinstance(generators, list) else None
    targets = torch.stack([encode(components, batch[BRANCH_SOURCES[b]]) for b in BRANCHES], dim=1)
    pose_latent = encode(components, batch["pose"])
    device, batch_size = targets.device, targets.shape[0]
    if per_item is None:
        context = encode_captions(components, batch["caption"], caption_dropout, generators)
        noise = torch.randn(targets.shape, generator=generators, device=generators.device).to(device)
        timesteps = torch.randint(0, schedule.config.num_train_timesteps, (batch_size,), generator=generators,
                                  device=generators.device).to(device)
    else:
        context = torch.cat([encode_captions(components, [c], caption_dropout, g)
                             for c, g in zip(batch["caption"], per_item)])
        noise = torch.cat([torch.randn((1, *targets.shape[1:]), generator=g, device=g.device) for g in per_item])
        timesteps = torch.cat([torch.randint(0, schedule.config.num_train_timesteps, (1,), generator=g,
                                             device=g.device) for g in per_item])
        noise, timesteps = noise.to(device), timesteps.to(device)
    noisy = schedule.add_noise(targets, noise, timesteps)  # one timestep per sample, for all three branches
    return Stage1Inputs(noisy, noise, timesteps, pose_latent, context)


def joint_loss(prediction: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 1 / 2: the sum over branches of each branch's mean squared noise error, and each term."""
    terms = ((prediction.float() - noise.float()) ** 2).mean(dim=(0, 2, 3, 4))
    return terms.sum(), {f"loss_{b}": float(terms[i].detach()) for i, b in enumerate(BRANCHES)}


# ---- previews ------------------------------------------------------------------------------------------

def validation_items(dataset, count: int) -> list[dict]:
    """The first `count` items, preferring one per bucket size so every size is previewed."""
    if count <= 0:
        return []
    chosen, sizes = [], set()
    for index in range(len(dataset)):
        size = dataset.bucket_sizes[index] if hasattr(dataset, "bucket_sizes") else None
        if size not in sizes:
            chosen.append(index)
            sizes.add(size)
        if len(chosen) == count:
            break
    for index in range(len(dataset)):
        if len(chosen) == count:
            break
        if index not in chosen:
            chosen.append(index)
    return [dataset[i] for i in chosen]


def save_preview_row(images: Sequence[torch.Tensor], path: str) -> str:
    """Write (3, H, W) images in 0..1, side by side, as one PNG."""
    import numpy as np
    from PIL import Image

    row = torch.cat([image.detach().float().cpu().clamp(0, 1) for image in images], dim=-1)
    Image.fromarray((row.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    return path


def sample_previews(unet, controlnet, components: SD21Components, items: list[dict], image_ir: list[torch.Tensor],
                    folder: str, step: int, args: argparse.Namespace) -> list[str]:
    """Sample each item with pipelines/stage1.py and write `step-<step>_<id>.png`:
    [input I_ir, pose, sampled RGB, depth, normal, ground-truth photo]."""
    from ..pipelines.stage1 import Stage1Pipeline

    pipeline = Stage1Pipeline(unet, controlnet, components.vae, components.text_encoder)
    written = []
    for item, ir in zip(items, image_ir):
        out = pipeline(ir[None], item["pose"][None], [item["caption"]], steps=args.validation_sampler_steps,
                       scheduler=args.validation_scheduler, cfg=args.validation_cfg, seed=0, size_mode="native")
        row = [ir, item["pose"], out.rgb[0], out.depth[0], out.normal[0], item["image"]]
        written.append(save_preview_row(row, os.path.join(folder, f"step-{step:06d}_{item['id']}.png")))
    return written
