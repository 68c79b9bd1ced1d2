"""A tiny ControlNet-Union SDXL with random weights, in xinsir's file layout (diffusers keys, one flat
safetensors file, 8 control types as in the ProMax file), fitting the tiny SDXL UNet.

Its condition-embedding widths (16, 32, 96, 256), its one 8-head condition transformer layer and the
control-type embedding width 256 are xinsir's (ComfyUI hard-codes them); the transformer width follows the
UNet's first level (32 here, 320 at SDXL size), as both hosts require.
"""

from __future__ import annotations

import os

import torch

from .stage2 import _randomise_zeros, build_tiny_sdxl_unet, tiny_sdxl_unet_config

NUM_CONTROL_TYPES = 8  # the ProMax file's count: tile (6) and repaint (7) included


def tiny_union_config(num_control_type: int = NUM_CONTROL_TYPES) -> dict:
    """ControlNetUnionModel arguments of the tiny union (what `load_union_controlnet(config=)` takes)."""
    unet = tiny_sdxl_unet_config()
    width = unet["block_out_channels"][0]
    return dict(
        in_channels=unet["in_channels"], conditioning_channels=3, flip_sin_to_cos=True, freq_shift=0,
        down_block_types=tuple(unet["down_block_types"]), block_out_channels=tuple(unet["block_out_channels"]),
        layers_per_block=unet["layers_per_block"], attention_head_dim=tuple(unet["attention_head_dim"]),
        transformer_layers_per_block=tuple(unet["transformer_layers_per_block"]),
        cross_attention_dim=unet["cross_attention_dim"], use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=unet["addition_time_embed_dim"],
        projection_class_embeddings_input_dim=unet["projection_class_embeddings_input_dim"],
        conditioning_embedding_out_channels=(16, 32, 96, 256), norm_num_groups=unet["norm_num_groups"],
        norm_eps=1e-5, num_trans_channel=width, num_trans_head=8, num_trans_layer=1, num_proj_channel=width,
        num_control_type=num_control_type)


def build_tiny_union_controlnet(seed: int = 0, num_control_type: int = NUM_CONTROL_TYPES):
    """The tiny union: encoder copied from the tiny SDXL UNet (as ControlNetUnionModel.from_unet does), its
    zero-initialised layers randomised (as after training) so every control type changes the output."""
    from diffusers import ControlNetUnionModel

    unet = build_tiny_sdxl_unet(seed)
    torch.manual_seed(seed + 9)
    model = ControlNetUnionModel(**tiny_union_config(num_control_type))
    for name in ("conv_in", "time_embedding", "add_embedding", "down_blocks", "mid_block"):
        getattr(model, name).load_state_dict(getattr(unet, name).state_dict())
    _randomise_zeros(model, seed + 10)
    return model.eval()


def write_tiny_union_controlnet(path: str, *, seed: int = 0, num_control_type: int = NUM_CONTROL_TYPES) -> str:
    """xinsir's layout: the ControlNetUnionModel state dict under diffusers names, one safetensors file."""
    from safetensors.torch import save_file

    model = build_tiny_union_controlnet(seed, num_control_type)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, path)
    return path
