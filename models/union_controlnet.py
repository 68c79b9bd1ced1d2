"""ControlNet-Union SDXL (xinsir/controlnet-union-sdxl-1.0), the public-weights stand-in for DiffBody's
multi-prior ControlNet: its control types, its config and its file.

xinsir publishes diffusers-layout safetensors: `diffusion_pytorch_model.safetensors` (config.json, 6
control types) and `diffusion_pytorch_model_promax.safetensors` (config_promax.json, 8 types: adds
tile and repaint). DiffBody's cleaned-image prior is applied as *tile*, so the public-weights mode needs
the promax file; the catalogue names it `controlnet-union-sdxl-1.0.safetensors` in models/controlnet/.
ComfyUI's Load ControlNet Model reads that single file (it recognises the union by its
`control_add_embedding` keys); `load_union_controlnet` reads the same file into diffusers'
ControlNetUnionModel with the config below, so no config file is needed beside it.

Control types (xinsir's numbering; ComfyUI's UNION_CONTROLNET_TYPES and diffusers' `control_mode` use
the same indices into `task_embedding`): openpose 0, depth 1, normal 4, tile 6.

No torch at import time: the ComfyUI nodes import UNION_TYPES from here.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Mapping

from .errors import MissingModelFile, WrongModelFile
from .loading import check_state_dict, read_safetensors

if TYPE_CHECKING:
    import torch

UNION_FILENAME = "controlnet-union-sdxl-1.0.safetensors"
# DiffBody prior -> union control type.
UNION_TYPES = {"image": 6, "pose": 0, "depth": 1, "normal": 4}
UNION_TYPE_NAMES = {0: "openpose", 1: "depth", 2: "hed/pidi/scribble/ted", 3: "canny/lineart/anime_lineart/mlsd",
                    4: "normal", 5: "segment", 6: "tile", 7: "repaint"}

# ControlNetUnionModel arguments of xinsir's config_promax.json (SDXL base: 320/640/1280 channels,
# transformer depths 1/2/10, 64-wide heads, context 2048, pooled 1280 + 6 * 256 time ids). The control-type
# count is read from the file (task_embedding), so the 6-type file loads too and is refused only for tile.
UNION_SDXL_CONFIG: dict[str, Any] = dict(
    in_channels=4, conditioning_channels=3, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    block_out_channels=(320, 640, 1280), layers_per_block=2, attention_head_dim=(5, 10, 20),
    transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    conditioning_embedding_out_channels=(16, 32, 96, 256), norm_num_groups=32, norm_eps=1e-5,
    num_trans_channel=320, num_trans_head=8, num_trans_layer=1, num_proj_channel=320,
)
UNION_MARKER_KEYS = ("control_add_embedding.linear_1.weight", "task_embedding")


def check_union_types(num_control_type: int, priors, source: str = "the ControlNet-Union file") -> None:
    """Refuse a prior whose control type the file lacks (the 6-type file has no tile)."""
    for name in priors:
        kind = UNION_TYPES[name]
        if kind >= num_control_type:
            raise WrongModelFile(
                f"DiffBody: {source} knows {num_control_type} control types, so it cannot apply the '{name}' prior "
                f"as '{UNION_TYPE_NAMES[kind]}' (type {kind}). Use the ProMax file "
                "(xinsir/controlnet-union-sdxl-1.0 diffusion_pytorch_model_promax.safetensors, saved as "
                f"{UNION_FILENAME}), or set that prior's strength to 0.")


def load_union_controlnet(path: str, *, device: "torch.device | str" = "cpu", dtype: "torch.dtype | None" = None,
                          config: Mapping[str, Any] | None = None):
    """diffusers ControlNetUnionModel from xinsir's single safetensors file (or a diffusers folder with its
    config.json), strict, eval mode. `config`: the ControlNetUnionModel arguments (default: SDXL's, as
    UNION_SDXL_CONFIG; tests pass the tiny one); the control-type count always comes from the file.
    `dtype` None keeps float32."""
    import torch
    from diffusers import ControlNetUnionModel

    if os.path.isdir(path):
        model = ControlNetUnionModel.from_pretrained(path, local_files_only=True, use_safetensors=True,
                                                     torch_dtype=dtype or torch.float32)
        return model.to(device).eval()
    if not os.path.isfile(path):
        raise MissingModelFile(f"DiffBody: ControlNet-Union file '{path}' does not exist.")
    name = os.path.basename(path)
    state_dict = read_safetensors(path)
    if not all(key in state_dict for key in UNION_MARKER_KEYS):
        kind = ("DiffBody's own multi-prior ControlNet (load it with 'DiffBody Multi-Prior ControlNet Loader')"
                if any(".extractors." in k for k in state_dict) else
                "a single-type ControlNet" if "controlnet_cond_embedding.conv_in.weight" in state_dict else
                "not a diffusers-layout ControlNet")
        raise WrongModelFile(f"DiffBody: '{name}' is {kind}; the public-weights mode needs ControlNet-Union SDXL "
                             "(xinsir/controlnet-union-sdxl-1.0, diffusion_pytorch_model_promax.safetensors).")
    arguments = dict(UNION_SDXL_CONFIG if config is None else config)
    arguments["num_control_type"] = int(state_dict["task_embedding"].shape[0])
    with torch.device("meta"):  # shapes first: a wrong file fails before SDXL's ControlNet is allocated
        probe = ControlNetUnionModel(**arguments)
    check_state_dict(probe.state_dict(), state_dict, name=name, path=path,
                     expected="ControlNet-Union SDXL of the configured size (SDXL base's unless a config is given), "
                              "not a ControlNet-Union file of another size")
    model = ControlNetUnionModel(**arguments)
    model.load_state_dict(state_dict, strict=True)
    if dtype is not None and dtype != torch.float32:
        model = model.to(dtype=dtype)
    return model.to(device).eval()
