"""The two single-file checkpoints users put in ComfyUI/models/checkpoints, at real size:

- `sd_xl_base_1.0.safetensors`: SDXL 1.0 base (UNet, CLIP-L, OpenCLIP bigG, VAE);
- `v2-1_512-ema-pruned.safetensors`: SD 2.1-base (UNet, OpenCLIP-H text encoder, VAE, DDPM schedule).

Each is laid out the way ComfyUI saves a checkpoint (`comfy.sd.save_checkpoint`): the networks are built on
the meta device with the public configs (diffusers' UNet and VAE; ComfyUI's own CLIP text models, whose
configs are the public ones), renamed to ComfyUI's internal keys (the pack's UNet converter, ComfyUI's
diffusers VAE converter) and passed through the model class's `process_*_state_dict_for_saving`, as
`BaseModel.state_dict_for_saving` does. The values come from `weights.random_tensor`.
Needs ComfyUI importable (`comfyui_dir` is put on sys.path).
"""

from __future__ import annotations

import sys

import torch

from .weights import meta_spec, spec_of

SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
SD21_CHECKPOINT = "v2-1_512-ema-pruned.safetensors"


def comfy_modules(comfyui_dir: str):
    """(comfy.supported_models, comfy.diffusers_convert) from the ComfyUI install at `comfyui_dir`."""
    if comfyui_dir not in sys.path:
        sys.path.insert(0, comfyui_dir)
    import comfy.cli_args

    if not torch.cuda.is_available():  # model_management asks CUDA for its device at import
        comfy.cli_args.args.cpu = True
    import comfy.diffusers_convert
    import comfy.supported_models

    return comfy.supported_models, comfy.diffusers_convert


def _meta_unet_and_vae(unet_config: dict, vae_config: dict):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**unet_config), AutoencoderKL(**vae_config)


def _unet_and_vae_spec(model_config, convert, unet_config: dict, vae_config: dict) -> dict[str, torch.Tensor]:
    from ...models.unet_layout import diffusers_unet_to_ldm

    unet, vae = _meta_unet_and_vae(unet_config, vae_config)
    spec = model_config.process_unet_state_dict_for_saving(diffusers_unet_to_ldm(spec_of(unet), unet_config))
    spec.update(model_config.process_vae_state_dict_for_saving(convert.convert_vae_state_dict(spec_of(vae))))
    return spec


def sdxl_checkpoint_spec(comfyui_dir: str) -> dict[str, torch.Tensor]:
    """SDXL 1.0 base as one ComfyUI-saved checkpoint."""
    from ...models.single_file import SDXL_VAE_CONFIG
    from ...models.unet_layout import SDXL_UNET_CONFIG

    models, convert = comfy_modules(comfyui_dir)
    import comfy.sdxl_clip

    model_config = models.SDXL(dict(models.SDXL.unet_config))
    spec = _unet_and_vae_spec(model_config, convert, dict(SDXL_UNET_CONFIG), SDXL_VAE_CONFIG)
    clip = comfy.sdxl_clip.SDXLClipModel(device="meta")
    spec.update(meta_spec(model_config.process_clip_state_dict_for_saving(clip.state_dict())))
    return spec


def sd21_checkpoint_spec(comfyui_dir: str) -> dict[str, torch.Tensor]:
    """SD 2.1-base as one ComfyUI-saved checkpoint, plus the DDPM schedule buffers the original
    v2-1_512-ema-pruned file carries at its top level."""
    from ...models.joint_unet import JointUNetConfig
    from ...models.single_file import SD21_VAE_CONFIG
    from ..tiny.stage1 import ddpm_schedule_buffers

    models, convert = comfy_modules(comfyui_dir)
    import comfy.text_encoders.sd2_clip

    model_config = models.SD20(dict(models.SD20.unet_config))
    spec = _unet_and_vae_spec(model_config, convert, JointUNetConfig().to_diffusers_unet_config(), SD21_VAE_CONFIG)
    clip = comfy.text_encoders.sd2_clip.SD2ClipModel(device="meta")
    spec.update(meta_spec(model_config.process_clip_state_dict_for_saving(clip.state_dict())))
    spec.update(ddpm_schedule_buffers())
    return spec
