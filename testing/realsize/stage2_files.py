"""The public stage-2 side files at real size, in their public layouts:

- `controlnet-union-sdxl-1.0.safetensors`: xinsir's ControlNet-Union SDXL ProMax (diffusers keys of
  ControlNetUnionModel, 8 control types), the catalogue's name for diffusion_pytorch_model_promax.safetensors;
- `CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors`: IP-Adapter's image encoder (h94/IP-Adapter
  models/image_encoder/model.safetensors, transformers' CLIPVisionModelWithProjection keys), under the name
  the README tells users to give it;
- `ip-adapter-plus_sdxl_vit-h.safetensors`: IP-Adapter Plus XL (image_proj.* and ip_adapter.{k}.* for SDXL's
  70 cross-attentions).
"""

from __future__ import annotations

import torch

from .weights import spec_of

UNION_PROMAX_CONTROL_TYPES = 8
CLIP_VISION_FILE = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"


def union_promax_spec() -> dict[str, torch.Tensor]:
    from diffusers import ControlNetUnionModel

    from ...models.union_controlnet import UNION_SDXL_CONFIG

    with torch.device("meta"):
        model = ControlNetUnionModel(**UNION_SDXL_CONFIG, num_control_type=UNION_PROMAX_CONTROL_TYPES)
    return spec_of(model)


def clip_vit_h_spec() -> dict[str, torch.Tensor]:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from ...models.sdxl_components import CLIP_VIT_H_CONFIG

    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_VIT_H_CONFIG))
    return spec_of(model)


def meta_ip_adapter_plus_xl():
    """IP-Adapter Plus XL as the pack's ColourAdapter, on the meta device (networks.module_from_spec fills it)."""
    from ...models.colour_adapter import ColourAdapter, ColourAdapterConfig

    with torch.device("meta"):
        return ColourAdapter(ColourAdapterConfig.plus_xl())


def ip_adapter_plus_xl_spec() -> dict[str, torch.Tensor]:
    return spec_of(meta_ip_adapter_plus_xl())
