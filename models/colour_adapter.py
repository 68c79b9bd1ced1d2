"""DiffBody stage 2's colour adapter: IP-Adapter Plus XL's layout, initialised from its public weights.

The CLIP ViT-H image features of I_res (penultimate hidden states, (B,257,1280)) go through a Perceiver
resampler (`image_proj`) to 16 tokens of width 2048; every cross-attention (attn2) of the SDXL UNet gets
its own bias-free `to_k_ip` / `to_v_ip` projecting those tokens, and the attention of the layer's query
over them is added, scaled by a weight, to attn2's attention output BEFORE attn2's output projection
(`to_out`) - as IP-Adapter's processor does and as ComfyUI's attn2 replace patch sees it.

The module's own state dict IS the file layout: `image_proj.*` and `ip_adapter.{k}.to_{k,v}_ip.weight`,
where k is the position of that attn2 among ALL the diffusers UNet's attention processors
(`unet.attn_processors` order: attn1 then attn2 of every transformer block; blocks in down_blocks.*,
up_blocks.*, mid_block order - mid LAST). For SDXL that is k = 1, 3, ..., 139. `ip_layers[i]` is the
i-th attn2 in that order; `layer_names()[i]` its diffusers processor name and
`comfy_attn2_locations(unet_config)[i]` (models/unet_layout.py) its ComfyUI (block name, block number,
transformer index).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .errors import MissingModelFile, WrongModelFile
from .loading import SAFETENSORS_EXTENSIONS, PackConfig, check_state_dict, read_safetensors_header, read_weights
from .unet_layout import SDXL_UNET_CONFIG, cross_attention_dim, cross_attention_layers

IP_ADAPTER_DIM_HEAD = 64  # IP-Adapter's Resampler always uses 64-wide heads; the file cannot tell
EXPECTED = ("an IP-Adapter Plus file for SDXL in its public layout (like ip-adapter-plus_sdxl_vit-h.safetensors: "
            "keys 'image_proj.latents', 'image_proj.layers.N...', 'ip_adapter.K.to_k_ip.weight'), "
            "or DiffBody's fine-tuned colour adapter saved in the same layout")


# -- the network --------------------------------------------------------------------------------------

@dataclass
class ColourAdapterConfig(PackConfig):
    """Resampler sizes and the UNet cross-attention layers the adapter plugs into."""

    dim: int = 1280
    depth: int = 4
    dim_head: int = 64
    heads: int = 20
    num_queries: int = 16
    embedding_dim: int = 1280   # CLIP image features' width (ViT-H: 1280)
    output_dim: int = 2048      # the UNet's cross-attention width
    ff_mult: int = 4
    layer_names: tuple[str, ...] = ()       # diffusers processor name of each ip layer
    layer_indices: tuple[int, ...] = ()     # k of "ip_adapter.{k}" for each ip layer
    layer_hidden_sizes: tuple[int, ...] = ()

    @classmethod
    def for_unet(cls, unet_config: Mapping[str, Any] | None = None, **sizes) -> "ColourAdapterConfig":
        layers = cross_attention_layers(unet_config)
        return cls(layer_names=tuple(l.processor_name for l in layers),
                   layer_indices=tuple(l.processor_index for l in layers),
                   layer_hidden_sizes=tuple(l.hidden_size for l in layers), **sizes)

    @classmethod
    def plus_xl(cls) -> "ColourAdapterConfig":
        """IP-Adapter Plus XL (ViT-H) on SDXL 1.0: 70 ip layers."""
        return cls.for_unet(SDXL_UNET_CONFIG)

    @classmethod
    def tiny(cls, unet_config: Mapping[str, Any]) -> "ColourAdapterConfig":
        """Tiny sizes on a tiny UNet (diffusers' converter assumes depth 4, ff_mult 4 and 64-wide heads,
        so those stay); embedding_dim 32 = the tiny CLIP vision width."""
        return cls.for_unet(unet_config, dim=64, depth=4, dim_head=64, heads=2, num_queries=4, embedding_dim=32,
                            output_dim=cross_attention_dim(unet_config), ff_mult=4)


class PerceiverAttention(nn.Module):
    """Latents attend to cat(image features, latents); IP-Adapter's key names (norm1, norm2, to_q, to_kv, to_out)."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        self.dim_head, self.heads = dim_head, heads
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        features, latents = self.norm1(features), self.norm2(latents)
        batch, length, _ = latents.shape
        q = _split_heads(self.to_q(latents), self.heads)
        k, v = self.to_kv(torch.cat([features, latents], dim=-2)).chunk(2, dim=-1)
        k, v = _split_heads(k, self.heads), _split_heads(v, self.heads)
        # IP-Adapter scales q and k by dim_head ** -0.25 each and takes the softmax in float32
        scale = 1 / math.sqrt(math.sqrt(self.dim_head))
        weight = torch.softmax(((q * scale) @ (k * scale).transpose(-2, -1)).float(), dim=-1).to(q.dtype)
        out = (weight @ v).permute(0, 2, 1, 3).reshape(batch, length, -1)
        return self.to_out(out)


def _feed_forward(dim: int, mult: int) -> nn.Sequential:
    """Keys `0` (LayerNorm), `1`, `3` (bias-free Linears) as in IP-Adapter's FeedForward."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                         nn.Linear(dim * mult, dim, bias=False))


class Resampler(nn.Module):
    """IP-Adapter Plus's Perceiver resampler: (B, N, embedding_dim) -> (B, num_queries, output_dim)."""

    def __init__(self, config: ColourAdapterConfig):
        super().__init__()
        c = config
        self.latents = nn.Parameter(torch.randn(1, c.num_queries, c.dim) / c.dim ** 0.5)
        self.proj_in = nn.Linear(c.embedding_dim, c.dim)
        self.proj_out = nn.Linear(c.dim, c.output_dim)
        self.norm_out = nn.LayerNorm(c.output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(c.dim, c.dim_head, c.heads), _feed_forward(c.dim, c.ff_mult)])
            for _ in range(c.depth))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        latents = self.latents.repeat(features.shape[0], 1, 1)
        features = self.proj_in(features)
        for attention, feed_forward in self.layers:
            latents = attention(features, latents) + latents
            latents = feed_forward(latents) + latents
        return self.norm_out(self.proj_out(latents))


class IPLayer(nn.Module):
    def __init__(self, hidden_size: int, cross_attention_dim: int):
        super().__init__()
        self.to_k_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)


class ColourAdapter(nn.Module):
    """image_proj (Resampler) + one (to_k_ip, to_v_ip) per UNet cross-attention."""

    def __init__(self, config: ColourAdapterConfig):
        super().__init__()
        if not (len(config.layer_names) == len(config.layer_indices) == len(config.layer_hidden_sizes) > 0):
            raise ValueError("ColourAdapterConfig needs one name, index and hidden size per ip layer "
                             "(build it with ColourAdapterConfig.for_unet)")
        self.config = config
        self.image_proj = Resampler(config)
        # Keyed by k so that state_dict() is exactly the public file layout ("ip_adapter.{k}.to_k_ip.weight").
        self.ip_adapter = nn.ModuleDict({str(k): IPLayer(size, config.output_dim)
                                         for k, size in zip(config.layer_indices, config.layer_hidden_sizes)})

    @property
    def ip_layers(self) -> list[IPLayer]:
        return list(self.ip_adapter.values())

    def layer_names(self) -> list[str]:
        return list(self.config.layer_names)

    def project(self, clip_image_features: torch.Tensor) -> torch.Tensor:
        """(B, 257, embedding_dim) penultimate CLIP hidden states -> ip tokens (B, num_queries, output_dim)."""
        if clip_image_features.ndim != 3 or clip_image_features.shape[-1] != self.config.embedding_dim:
            raise ValueError(f"expected CLIP image features (B, tokens, {self.config.embedding_dim}), "
                             f"got {tuple(clip_image_features.shape)}")
        weight = self.image_proj.proj_in.weight
        return self.image_proj(clip_image_features.to(device=weight.device, dtype=weight.dtype))

    def ip_attention(self, layer_index: int, query: torch.Tensor, ip_tokens: torch.Tensor, heads: int) -> torch.Tensor:
        """The attention of `query` over this layer's projected ip tokens, to ADD (times a weight) to attn2's
        attention output before attn2's `to_out`.

        layer_index: position in `ip_layers` / `layer_names()` (not k). query: (B, heads, Lq, dim_head), or
        (B, Lq, heads*dim_head) as ComfyUI's attn2 replace patch receives it (already through to_q).
        ip_tokens: (B, num_queries, output_dim) or (1, ...) for every batch item. Returns query's layout
        and dtype."""
        flat = query.ndim == 3
        q = _split_heads(query, heads) if flat else query
        if q.shape[0] != ip_tokens.shape[0]:
            if ip_tokens.shape[0] != 1:
                raise ValueError(f"ip_tokens batch {ip_tokens.shape[0]} does not match the query batch {q.shape[0]}")
            ip_tokens = ip_tokens.expand(q.shape[0], -1, -1)
        k, v = (_split_heads(x, heads) for x in self.ip_keys_values(layer_index, ip_tokens))
        dtype = self.ip_layers[layer_index].to_k_ip.weight.dtype
        out = F.scaled_dot_product_attention(q.to(dtype), k, v, dropout_p=0.0, is_causal=False)
        out = out.to(query.dtype)
        return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1) if flat else out

    def ip_keys_values(self, layer_index: int, ip_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's keys and values of the ip tokens, (B, num_queries, heads*dim_head) each, in the
        weights' dtype: constant for one image, so ComfyUI's patch computes them once per image."""
        layer = self.ip_layers[layer_index]
        weight = layer.to_k_ip.weight
        tokens = ip_tokens.to(device=weight.device, dtype=weight.dtype)
        return layer.to_k_ip(tokens), layer.to_v_ip(tokens)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, heads*d) -> (B, heads, L, d)."""
    batch, length, width = x.shape
    if width % heads:
        raise ValueError(f"width {width} is not divisible by {heads} heads")
    return x.view(batch, length, heads, width // heads).transpose(1, 2)


# -- files --------------------------------------------------------------------------------------------

def infer_config(state_dict: Mapping[str, torch.Tensor], unet_config: Mapping[str, Any] | None = None,
                 source: str = "this file") -> ColourAdapterConfig:
    """The config of an IP-Adapter Plus layout state dict, checked against the UNet layout (default SDXL).
    Raises WrongModelFile with the reason when the layout is not IP-Adapter Plus for that UNet."""
    _check_is_ip_adapter_plus(state_dict, source)
    latents = state_dict["image_proj.latents"]
    if latents.ndim != 3 or latents.shape[0] != 1:
        raise WrongModelFile(f"DiffBody: {source}: image_proj.latents has shape {tuple(latents.shape)}, "
                             f"expected (1, num_queries, dim). Expected {EXPECTED}.")
    dim = latents.shape[2]
    depth = len({k.split(".")[2] for k in state_dict if k.startswith("image_proj.layers.")})
    inner = state_dict["image_proj.layers.0.0.to_q.weight"].shape[0]
    target = ColourAdapterConfig.for_unet(
        unet_config, dim=dim, depth=depth, dim_head=IP_ADAPTER_DIM_HEAD, heads=max(inner // IP_ADAPTER_DIM_HEAD, 1),
        num_queries=latents.shape[1], embedding_dim=state_dict["image_proj.proj_in.weight"].shape[1],
        output_dim=state_dict["image_proj.proj_out.weight"].shape[0],
        ff_mult=state_dict["image_proj.layers.0.1.1.weight"].shape[0] // dim)
    _check_ip_layers_fit(state_dict, target, unet_config, source)
    return target


def _check_is_ip_adapter_plus(state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    keys = set(state_dict)
    if not any(k.startswith("ip_adapter.") for k in keys) or not any(k.startswith("image_proj.") for k in keys):
        sample = ", ".join(sorted(keys)[:4])
        raise WrongModelFile(f"DiffBody: {source} is not an IP-Adapter file (its keys start: {sample}). "
                             f"Expected {EXPECTED}.")
    if "image_proj.latents" not in keys:
        kind = ("the basic IP-Adapter (image_proj.proj / image_proj.norm), not IP-Adapter Plus"
                if "image_proj.proj.weight" in keys else "an IP-Adapter variant other than Plus")
        raise WrongModelFile(f"DiffBody: {source} is {kind}. Expected {EXPECTED}.")
    for needed in ("image_proj.proj_in.weight", "image_proj.proj_out.weight", "image_proj.layers.0.0.to_q.weight",
                   "image_proj.layers.0.1.1.weight"):
        if needed not in keys:
            raise WrongModelFile(f"DiffBody: {source} lacks '{needed}'. Expected {EXPECTED}.")


def _check_ip_layers_fit(state_dict, target: ColourAdapterConfig, unet_config, source: str) -> None:
    found = sorted({int(k.split(".")[1]) for k in state_dict if k.startswith("ip_adapter.")})
    expected = sorted(target.layer_indices)
    unet = "SDXL 1.0" if unet_config is None else "this UNet"
    width = cross_attention_dim(unet_config)
    if found != expected:
        hint = ""
        if target.output_dim != width:
            hint = f" Its width {target.output_dim} also does not match the UNet's cross-attention width."
        raise WrongModelFile(
            f"DiffBody: {source} has {len(found)} ip_adapter layers (indices {found[:3]}...{found[-3:]}), but "
            f"{unet} has {len(expected)} cross-attentions (indices {expected[:3]}...{expected[-3:]}): it was made for "
            f"another base model (an SD 1.5 IP-Adapter has 16 layers, an SDXL one 70).{hint} Expected {EXPECTED}.")
    if target.output_dim != width:
        raise WrongModelFile(f"DiffBody: {source} produces tokens of width {target.output_dim}, but the UNet's "
                             f"cross-attention width is {width}. "
                             f"Expected {EXPECTED}.")
    for k, size in zip(target.layer_indices, target.layer_hidden_sizes):
        for name in ("to_k_ip", "to_v_ip"):
            key = f"ip_adapter.{k}.{name}.weight"
            shape = tuple(state_dict[key].shape) if key in state_dict else None
            if shape != (size, target.output_dim):
                raise WrongModelFile(f"DiffBody: {source}: '{key}' has shape {shape}, expected "
                                     f"{(size, target.output_dim)} for that UNet layer. Expected {EXPECTED}.")


def read_ip_adapter_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The flat `image_proj.*` / `ip_adapter.*` state dict of an IP-Adapter file: .safetensors (flat keys),
    or the .bin layout {"image_proj": {...}, "ip_adapter": {...}} read with weights_only=True."""
    if not os.path.isfile(path):
        raise MissingModelFile(f"DiffBody: colour adapter file '{path}' does not exist.")
    loaded = read_weights(path, expected=EXPECTED)
    if set(loaded) >= {"image_proj", "ip_adapter"}:
        return {f"{part}.{k}": v for part in ("image_proj", "ip_adapter") for k, v in loaded[part].items()}
    if all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return dict(loaded)
    raise WrongModelFile(f"DiffBody: '{os.path.basename(path)}' does not hold an IP-Adapter state dict. "
                         f"Expected {EXPECTED}.")


def load_colour_adapter(path: str, unet_config: Mapping[str, Any] | None = None,
                        dtype: torch.dtype | None = torch.float32) -> ColourAdapter:
    """Load the public ip-adapter-plus_sdxl_vit-h file as it is, or DiffBody's fine-tuned file in the same
    layout, strictly (every key, every shape); CPU, eval mode, `dtype` (None: the file's own dtype).
    `unet_config` describes the UNet it will patch (default SDXL 1.0; a tiny one in tests)."""
    state_dict = read_ip_adapter_state_dict(path)
    name = os.path.basename(path)
    config = infer_config(state_dict, unet_config, source=f"'{name}'")
    adapter = ColourAdapter(config)
    check_state_dict(adapter.state_dict(), state_dict, name=name, expected=EXPECTED, path=path)
    if dtype is None:
        dtype = next(iter(state_dict.values())).dtype
    adapter = adapter.to(dtype)
    adapter.load_state_dict(state_dict, strict=True)
    return adapter.eval()


def check_ip_adapter_layout(path: str) -> None:
    """Cheap early check (no tensor is read) that `path` is in IP-Adapter's layout: `image_proj.*` and
    `ip_adapter.*` keys. The strict shape check happens in `load_colour_adapter` against the UNet."""
    name = os.path.basename(path)
    if not path.endswith(SAFETENSORS_EXTENSIONS):
        return  # .bin files: load_colour_adapter reads them safely and checks everything
    _, keys = read_safetensors_header(path)
    if not any(k.startswith("image_proj.") for k in keys) or not any(k.startswith("ip_adapter.") for k in keys):
        sample = ", ".join(keys[:3])
        raise WrongModelFile(
            f"DiffBody: '{name}' is not a colour adapter: expected IP-Adapter Plus XL's layout (keys "
            f"'image_proj.latents', 'image_proj.layers.N...', 'ip_adapter.K.to_k_ip.weight'), found keys like "
            f"{sample}.")
