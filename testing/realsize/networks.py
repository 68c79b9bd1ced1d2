"""The real-size networks in memory, on any device, without writing a file (the GPU suite, bench/gpu_suite.py):
the same specs the files are written from (checkpoints.py, stage2_files.py), materialised by
`weights.materialise`, so a network here holds the values its file would hold, cast to the dtype asked for.

- `sdxl_unet_state_dict`: the UNet of sd_xl_base_1.0.safetensors, under the checkpoint's own keys
  (`model.diffusion_model.*`), what ComfyUI's loaders read from the file.
- `sdxl_diffusers_unet`: the same values as diffusers' UNet2DConditionModel (the tensors are shared, not copied).
- `module_from_spec`: any module built on the meta device, given its spec's values (IP-Adapter Plus XL, CLIP ViT-H).
"""

from __future__ import annotations

from typing import Mapping

import torch

from ...models.loading import LDM_UNET_PREFIX
from .weights import Spec, iter_tensors, spec_of


def materialise_as(spec: Spec, *, device, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    """`weights.materialise`, floating tensors cast to `dtype` one at a time (a bf16 network from the fp16 spec)."""
    return {key: value.to(dtype) if value.is_floating_point() else value
            for key, value in iter_tensors(spec, seed=seed, device=device)}


def sdxl_unet_state_dict(comfyui_dir: str, *, device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """sd_xl_base_1.0.safetensors' UNet tensors (`model.diffusion_model.*` keys) on `device` in `dtype`."""
    from .checkpoints import sdxl_checkpoint_spec

    spec = {k: v for k, v in sdxl_checkpoint_spec(comfyui_dir).items() if k.startswith(LDM_UNET_PREFIX)}
    return materialise_as(spec, device=device, dtype=dtype)


def sdxl_diffusers_unet(ldm_state_dict: Mapping[str, torch.Tensor], unet_config: Mapping | None = None):
    """diffusers' UNet2DConditionModel holding the tensors of a `model.diffusion_model.*` state dict (shared)."""
    from diffusers import UNet2DConditionModel

    from ...models.unet_layout import SDXL_UNET_CONFIG, ldm_unet_to_diffusers

    config = dict(unet_config or SDXL_UNET_CONFIG)
    ldm = {k[len(LDM_UNET_PREFIX):]: v for k, v in ldm_state_dict.items() if k.startswith(LDM_UNET_PREFIX)}
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    unet.load_state_dict(ldm_unet_to_diffusers(ldm, config), strict=True, assign=True)
    return unet.eval()


def module_from_spec(meta_module: torch.nn.Module, *, device, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    """A module built on the meta device, given the values its file would hold, on `device` in `dtype`."""
    meta_module.load_state_dict(materialise_as(spec_of(meta_module), device=device, dtype=dtype, seed=seed),
                                strict=True, assign=True)
    return meta_module.eval()
