"""Tiny stage-1 networks with random weights, written like the real files.

- `write_tiny_sd21_checkpoint(path)`: a tiny SD-2.1-style UNet (JointUNetConfig.tiny() sizes: linear
  transformer projections, cross-attention, a last level without attention) in the original LDM
  single-file layout of `v2-1_512-ema-pruned.safetensors` / `.ckpt`: UNet keys `model.diffusion_model.*`
  plus the DDPM schedule buffers (`betas`, `alphas_cumprod`, ...) such files carry at the top level. The
  real file also holds the VAE (`first_stage_model.*`) and text encoder (`cond_stage_model.*`); the tiny
  one does not, since loading the UNet ignores them. `.ckpt` paths get `torch.save({"state_dict": ...})`.
- `write_tiny_sd21_diffusers(folder)`: the same UNet as a diffusers folder (`unet/config.json`,
  `unet/diffusion_pytorch_model.safetensors`) plus `scheduler/scheduler_config.json` (SD 2.1-base's DDPM
  settings). The VAE, text encoder and tokenizer are not written here.
- `write_tiny_humansd(path)`: HumanSD's `humansd-v1.ckpt` layout: a Lightning-style
  `torch.save({"state_dict": {"model.diffusion_model.*": ...}, "epoch": 0, "global_step": 0})` whose UNet
  has an 8-channel conv_in (noisy latent, then pose latent). The real file's other entries are unknown
  here; only plain data is written, so it loads with weights_only=True.
- `write_tiny_stage1(unet_path, controlnet_path)`: DiffBody's own layout (models/stage1_weights.py) with
  branches that differ from each other and a NON-zero ControlNet, so it changes the UNet's output.
"""

from __future__ import annotations

import json
import os

import torch

# SD 2.1-base's scheduler (stabilityai/stable-diffusion-2-1-base, scheduler/scheduler_config.json, as DDPM).
SD21_SCHEDULER = {"_class_name": "DDPMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
                  "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}


def tiny_config():
    from ...models.joint_unet import JointUNetConfig

    return JointUNetConfig.tiny()


def build_tiny_sd_unet(*, in_channels: int = 4, seed: int = 0, config=None):
    """A diffusers UNet2DConditionModel of the tiny config with random weights (every tensor perturbed, so
    no weight is left at a default such as zero or one that would hide a wrong copy), eval mode."""
    from diffusers import UNet2DConditionModel

    config = config or tiny_config()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**config.to_diffusers_unet_config(in_channels=in_channels))
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return unet.eval()


def ldm_unet_state_dict(unet) -> dict[str, torch.Tensor]:
    """A diffusers UNet's weights under the original LDM `model.diffusion_model.*` keys."""
    from ...models.loading import LDM_UNET_PREFIX
    from ...models.unet_layout import diffusers_unet_to_ldm

    state = {k: v.detach().clone().contiguous() for k, v in unet.state_dict().items()}
    return {LDM_UNET_PREFIX + k: v for k, v in diffusers_unet_to_ldm(state, unet.config).items()}


def ddpm_schedule_buffers() -> dict[str, torch.Tensor]:
    """The top-level schedule buffers of an LDM checkpoint (SD's scaled-linear betas, 1000 steps)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    buffers = {"betas": betas, "alphas_cumprod": alphas_cumprod, "alphas_cumprod_prev": previous,
               "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
               "sqrt_one_minus_alphas_cumprod": (1 - alphas_cumprod).sqrt()}
    return {k: v.float() for k, v in buffers.items()}


def _write_ldm(state_dict: dict[str, torch.Tensor], path: str, *, lightning: bool) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.lower().endswith((".safetensors", ".sft")):
        from safetensors.torch import save_file

        save_file(state_dict, path)
    elif lightning:
        torch.save({"state_dict": state_dict, "epoch": 0, "global_step": 0}, path)
    else:
        torch.save({"state_dict": state_dict}, path)
    return path


def write_tiny_sd21_checkpoint(path: str, *, seed: int = 0) -> str:
    """A tiny SD 2.1-style UNet in the original single-file layout (.safetensors, or .ckpt); returns `path`.
    The same weights as `build_tiny_sd_unet(seed=seed)`."""
    state_dict = {**ldm_unet_state_dict(build_tiny_sd_unet(seed=seed)), **ddpm_schedule_buffers()}
    return _write_ldm(state_dict, path, lightning=False)


def write_tiny_sd21_diffusers(folder: str, *, seed: int = 0) -> str:
    """A tiny SD 2.1-style diffusers folder (unet/ and scheduler/); returns `folder`.
    The same UNet weights as `write_tiny_sd21_checkpoint(..., seed=seed)`."""
    unet = build_tiny_sd_unet(seed=seed)
    unet.save_pretrained(os.path.join(folder, "unet"), safe_serialization=True)
    os.makedirs(os.path.join(folder, "scheduler"), exist_ok=True)
    with open(os.path.join(folder, "scheduler", "scheduler_config.json"), "w", encoding="utf-8") as f:
        json.dump(SD21_SCHEDULER, f, indent=2)
    return folder


def write_tiny_humansd(path: str, *, seed: int = 1) -> str:
    """A tiny HumanSD checkpoint (8-channel conv_in, LDM keys, Lightning-style dict); returns `path`."""
    unet = build_tiny_sd_unet(in_channels=8, seed=seed)
    state_dict = {**ldm_unet_state_dict(unet), **ddpm_schedule_buffers()}
    return _write_ldm(state_dict, path, lightning=True)


def build_tiny_stage1(*, seed: int = 0):
    """(JointUNet, Stage1ControlNet) of the tiny config: the UNet initialised from a tiny SD UNet, then every
    weight perturbed independently (so the branches differ); the ControlNet from that UNet with its zero
    convs and c_r input conv set to random values (so it changes the output)."""
    from ...models.joint_unet import JointUNet
    from ...models.stage1_controlnet import Stage1ControlNet
    from ...models.stage1_weights import joint_state_dict_from_sd

    config = tiny_config()
    joint = joint_state_dict_from_sd(build_tiny_sd_unet(seed=seed).state_dict(), config)
    unet = JointUNet(config)
    unet.load_state_dict(joint, strict=True)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.02)
        controlnet = Stage1ControlNet.from_unet(unet)
        for conv in (controlnet.image_latent_in, controlnet.controlnet_mid_block, *controlnet.controlnet_down_blocks):
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.05)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.05)
    return unet.eval(), controlnet.eval()


def write_tiny_stage1(unet_path: str, controlnet_path: str, *, seed: int = 0) -> tuple[str, str]:
    """DiffBody's own stage-1 files (tiny UNet and non-zero ControlNet); returns the two paths."""
    from ...models.stage1_weights import save_stage1_controlnet, save_stage1_unet

    unet, controlnet = build_tiny_stage1(seed=seed)
    return save_stage1_unet(unet, unet_path), save_stage1_controlnet(controlnet, controlnet_path)
