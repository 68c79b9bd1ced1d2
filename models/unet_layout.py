"""The layout of Stable Diffusion UNets (SD 2.1, SDXL): SDXL 1.0's config, the original (LDM) <-> diffusers
key map, and where the cross-attentions are.

- `SDXL_UNET_CONFIG`: diffusers' config of SDXL 1.0 base's UNet, the default layout everywhere.
- `ldm_unet_to_diffusers` / `diffusers_unet_to_ldm`: the UNet's keys in the original single-file layout
  (LDM, ComfyUI, A1111: `input_blocks.*`, `middle_block.*`, `output_blocks.*`) and in diffusers' layout.
  The first uses diffusers' own converter; the second is its inverse, for SD 2.1- and SDXL-layout UNets.
- `cross_attention_layers` and its views: every attn2 in diffusers' `unet.attn_processors` order, with
  its ComfyUI location, for the colour adapter (one ip layer per attn2) and ComfyUI's attn2 patches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from .errors import WrongModelFile
from .loading import LDM_UNET_PREFIX

if TYPE_CHECKING:
    import torch

# diffusers' UNet config of stabilityai/stable-diffusion-xl-base-1.0 (unet/config.json): used to convert a
# single original-layout SDXL file without asking the hub, and as the default layout everywhere.
SDXL_UNET_CONFIG: dict[str, Any] = {
    "act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
    "center_input_sample": False, "class_embed_type": None, "class_embeddings_concat": False,
    "conv_in_kernel": 3, "conv_out_kernel": 3, "cross_attention_dim": 2048, "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": False, "encoder_hid_dim": None,
    "encoder_hid_dim_type": None, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
    "layers_per_block": 2, "mid_block_only_cross_attention": None, "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05, "norm_num_groups": 32,
    "num_attention_heads": None, "num_class_embeds": None, "only_cross_attention": False, "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816, "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False, "resnet_time_scale_shift": "default", "sample_size": 128,
    "time_cond_proj_dim": None, "time_embedding_act_fn": None, "time_embedding_dim": None,
    "time_embedding_type": "positional", "timestep_post_act": None, "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "upcast_attention": None,
    "use_linear_projection": True,
}


# -- original (LDM) <-> diffusers keys ----------------------------------------------------------------

def ldm_unet_to_diffusers(ldm_state_dict: Mapping[str, torch.Tensor],
                          unet_config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Original (LDM) UNet keys, without the `model.diffusion_model.` prefix -> diffusers keys, using
    diffusers' own single-file converter."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    if not ldm_state_dict:
        raise WrongModelFile(f"DiffBody: no '{LDM_UNET_PREFIX}*' UNet weights found: not an SDXL checkpoint.")
    prefixed = {LDM_UNET_PREFIX + k: v for k, v in ldm_state_dict.items()}
    try:
        return convert_ldm_unet_checkpoint(prefixed, dict(unet_config))
    except (KeyError, IndexError) as e:
        raise WrongModelFile(f"DiffBody: the checkpoint's UNet does not have the SDXL layout ({e!r}).") from e


_RESNET_TO_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                  "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_BASIC_TO_LDM = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                 "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
                 "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def diffusers_unet_to_ldm(state_dict: Mapping[str, torch.Tensor],
                          unet_config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """diffusers UNet keys -> original (LDM/ComfyUI) keys without prefix, for SDXL-layout UNets (the
    inverse of `ldm_unet_to_diffusers`; the tests check the round trip through diffusers' converter)."""
    lpb = unet_config["layers_per_block"]
    has_attention = ["CrossAttn" in kind for kind in unet_config["up_block_types"]]
    out = {}
    for key, value in state_dict.items():
        out[_ldm_key(key, lpb, has_attention)] = value
    return out


def _ldm_key(key: str, lpb: int, up_has_attention: list[bool]) -> str:
    for prefix, ldm in _BASIC_TO_LDM.items():
        if key.startswith(prefix + "."):
            return ldm + key[len(prefix):]
    parts = key.split(".")
    if parts[0] == "down_blocks":
        level, kind = int(parts[1]), parts[2]
        if kind == "downsamplers":  # down_blocks.i.downsamplers.0.conv.* -> input_blocks.n.0.op.*
            return f"input_blocks.{1 + level * (lpb + 1) + lpb}.0.op." + ".".join(parts[5:])
        number = 1 + level * (lpb + 1) + int(parts[3])
        return _block_key(f"input_blocks.{number}", kind, parts[4:])
    if parts[0] == "up_blocks":
        level, kind = int(parts[1]), parts[2]
        if kind == "upsamplers":  # the upsampler follows the resnet (and the attention, if any)
            slot = 2 if up_has_attention[level] else 1
            return f"output_blocks.{level * (lpb + 1) + lpb}.{slot}.conv." + ".".join(parts[5:])
        return _block_key(f"output_blocks.{level * (lpb + 1) + int(parts[3])}", kind, parts[4:])
    if parts[0] == "mid_block":
        kind, index = parts[1], int(parts[2])
        slot = 1 if kind == "attentions" else 2 * index
        return _block_key(f"middle_block.{slot}", "mid_" + kind, parts[3:])
    raise ValueError(f"unexpected diffusers UNet key {key!r}")


def _block_key(block: str, kind: str, rest: list[str]) -> str:
    if kind in ("resnets", "mid_resnets"):
        return f"{block}{'' if kind == 'mid_resnets' else '.0'}.{_RESNET_TO_LDM[rest[0]]}." + ".".join(rest[1:])
    if kind == "attentions":
        return f"{block}.1." + ".".join(rest)
    if kind == "mid_attentions":
        return f"{block}." + ".".join(rest)
    raise ValueError(f"unexpected block part {kind!r}")


# -- where the cross-attentions are ---------------------------------------------------------------------

@dataclass(frozen=True)
class CrossAttentionLayer:
    """One attn2 of an SDXL-layout UNet, in diffusers' attn_processors order."""

    processor_name: str          # e.g. "down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor"
    processor_index: int         # k in "ip_adapter.{k}": its position among all attention processors
    hidden_size: int             # channels at that layer (query width)
    heads: int
    comfy_location: tuple[str, int, int]  # ("input"|"middle"|"output", block number, transformer index)


def cross_attention_layers(unet_config: Mapping[str, Any] | None = None) -> list[CrossAttentionLayer]:
    """Every attn2 of the UNet described by `unet_config` (diffusers config, or ComfyUI's UNetModel config
    with model_channels/channel_mult/transformer_depth...; default SDXL 1.0), in diffusers'
    attn_processors order."""
    levels = _layout(SDXL_UNET_CONFIG if unet_config is None else unet_config)
    layers: list[CrossAttentionLayer] = []
    # ComfyUI's input block 0 is conv_in; each down level ends with the downsampler's own input block
    # (absent after the last level: irrelevant). Output blocks have no such extra block.
    _add_level_layers(layers, levels.down, "down_blocks", "input", first_number=1, blocks_after_level=1)
    _add_level_layers(layers, levels.up, "up_blocks", "output", first_number=0, blocks_after_level=0)
    for t in range(levels.mid.depths[0]):
        layers.append(_layer("mid_block.attentions.0", t, levels.mid, len(layers), ("middle", 0, t)))
    return layers


def _add_level_layers(layers: list[CrossAttentionLayer], levels: list["_Level"], diffusers_prefix: str,
                      comfy_block: str, first_number: int, blocks_after_level: int) -> None:
    """Append the attn2 layers of the down (or up) levels, numbering ComfyUI's blocks from `first_number`."""
    number = first_number
    for x, level in enumerate(levels):
        for i, depth in enumerate(level.depths):
            for t in range(depth):
                location = (comfy_block, number, t)
                layers.append(_layer(f"{diffusers_prefix}.{x}.attentions.{i}", t, level, len(layers), location))
            number += 1
        number += blocks_after_level


def attention_processor_names(unet_config: Mapping[str, Any] | None = None) -> list[str]:
    """All attention processor names (attn1 and attn2) in diffusers' `unet.attn_processors` order."""
    names = []
    for layer in cross_attention_layers(unet_config):
        names += [layer.processor_name.replace(".attn2.", ".attn1."), layer.processor_name]
    return names


def comfy_attn2_locations(unet_config: Mapping[str, Any] | None = None) -> list[tuple[str, int, int]]:
    """ComfyUI's (block_name, number, transformer_index) for each adapter layer, in layer-index order:
    the arguments of `ModelPatcher.set_model_attn2_replace(fn, block_name, number, transformer_index)`."""
    return [layer.comfy_location for layer in cross_attention_layers(unet_config)]


def cross_attention_dim(unet_config: Mapping[str, Any] | None = None) -> int:
    """The width of the UNet's text context (diffusers `cross_attention_dim`, ComfyUI `context_dim`)."""
    config = SDXL_UNET_CONFIG if unet_config is None else unet_config
    return config["cross_attention_dim"] if "cross_attention_dim" in config else config["context_dim"]


def _layer(prefix: str, t: int, level: "_Level", count: int, location: tuple[str, int, int]) -> CrossAttentionLayer:
    return CrossAttentionLayer(f"{prefix}.transformer_blocks.{t}.attn2.processor", 2 * count + 1,
                               level.channels, level.heads, location)


@dataclass
class _Level:
    channels: int
    heads: int
    depths: list[int]  # transformer blocks per resnet of the level (0 = no attention)


@dataclass
class _Layout:
    down: list[_Level]
    up: list[_Level]
    mid: _Level


def _layout(config: Mapping[str, Any]) -> _Layout:
    if "down_block_types" in config:
        return _layout_from_diffusers(config)
    if "model_channels" in config and "transformer_depth" in config:
        return _layout_from_comfy(config)
    raise ValueError("unet_config must be a diffusers UNet2DConditionModel config or a ComfyUI UNetModel config")


def _layout_from_diffusers(config: Mapping[str, Any]) -> _Layout:
    channels = list(config["block_out_channels"])
    n = len(channels)
    heads = config.get("num_attention_heads") or config["attention_head_dim"]
    heads = [heads] * n if isinstance(heads, int) else list(heads)
    depth = config.get("transformer_layers_per_block", 1)
    depth = [depth] * n if isinstance(depth, int) else list(depth)
    if any(not isinstance(d, int) for d in depth):
        raise ValueError("per-resnet transformer_layers_per_block lists are not supported")
    lpb = config["layers_per_block"]
    if not isinstance(lpb, int):
        raise ValueError("per-level layers_per_block is not supported")
    up_depth = config.get("reverse_transformer_layers_per_block") or list(reversed(depth))
    down = [_Level(channels[i], heads[i], [depth[i] if "CrossAttn" in kind else 0] * lpb)
            for i, kind in enumerate(config["down_block_types"])]
    up = [_Level(list(reversed(channels))[i], list(reversed(heads))[i],
                 [up_depth[i] if "CrossAttn" in kind else 0] * (lpb + 1))
          for i, kind in enumerate(config["up_block_types"])]
    has_mid_attn = config.get("mid_block_type", "UNetMidBlock2DCrossAttn") == "UNetMidBlock2DCrossAttn"
    mid = _Level(channels[-1], heads[-1], [depth[-1] if has_mid_attn else 0])
    return _Layout(down, up, mid)


def _layout_from_comfy(config: Mapping[str, Any]) -> _Layout:
    mult = list(config["channel_mult"])
    channels = [config["model_channels"] * m for m in mult]
    res = config.get("num_res_blocks", 2)
    res = [res] * len(mult) if isinstance(res, int) else list(res)
    depth_in = list(config["transformer_depth"])
    depth_out = list(config["transformer_depth_output"])

    def heads(ch: int) -> int:
        head_channels = config.get("num_head_channels", 64)
        return ch // head_channels if head_channels != -1 else config["num_heads"]

    down = []
    for level, ch in enumerate(channels):
        down.append(_Level(ch, heads(ch), [depth_in.pop(0) for _ in range(res[level])]))
    up = []
    for level in reversed(range(len(channels))):
        # ComfyUI builds output blocks deepest first, popping transformer_depth_output from its end
        up.append(_Level(channels[level], heads(channels[level]), [depth_out.pop() for _ in range(res[level] + 1)]))
    mid_depth = config.get("transformer_depth_middle", 1)
    return _Layout(down, up, _Level(channels[-1], heads(channels[-1]), [max(mid_depth, 0)]))
