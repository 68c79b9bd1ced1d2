"""DiffBody's multi-prior ControlNet as ComfyUI's own ControlNet: the encoder is core's `cldm.ControlNet`
built with core's ops, and the control is a subclass of core's `comfy.controlnet.ControlNet`, so it samples,
casts, offloads and loads partially exactly as a stock SDXL ControlNet does (fp8 storage, --lowvram,
manual casting on the CPU: bf16 weights, float32 compute).

Only the conditioning embedding is ours. Core's ControlNet runs `input_hint_block` on its hint at every
step; here that block is empty and the hint is c_g itself (the fused priors at latent size, computed once
per latent size by the same MultiPriorConditioningEmbedding the diffusers network uses, built with core's
ops). The diffusers `MultiPriorControlNet` (models/) stays the command line's and training's network;
tests/test_stage2_native.py checks that both give the same residuals.

This module imports ComfyUI at module level (it subclasses core's classes); nodes/stage2.py imports it only
when a node runs.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import comfy.cldm.cldm
import comfy.controlnet
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.utils
import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import TimestepEmbedSequential

from ..models.multiprior_controlnet import (PRIORS, VAE_SCALE, MultiPriorConditioningEmbedding,
                                            MultiPriorControlNet, MultiPriorControlNetConfig)
from ..models.stage2_weights import read_multiprior
from ..models.unet_layout import diffusers_unet_to_ldm
from . import glue

HEAD_CHANNELS = 64  # SDXL's attention head width; core's ControlNet takes one width for every level
PRIOR_EMBEDDING = "prior_embedding"  # where the c_g module sits in the native network


def cldm_config(config: MultiPriorControlNetConfig) -> dict[str, Any]:
    """Core's `cldm.ControlNet` arguments for our encoder sizes (what core's model detection gives for an
    SDXL ControlNet, from our config instead of the file, so tiny test networks build too)."""
    channels = config.block_out_channels
    widths = {c // h for c, h, kind in zip(channels, config.num_attention_heads, config.down_block_types)
              if "CrossAttn" in kind}
    if widths != {HEAD_CHANNELS}:
        raise ValueError(f"the native ControlNet needs {HEAD_CHANNELS}-channel attention heads, got {sorted(widths)}")
    depth = []
    for level, kind in enumerate(config.down_block_types):
        depth += [config.transformer_layers_per_block[level] if "CrossAttn" in kind else 0] * config.layers_per_block
    return {
        "image_size": 32, "in_channels": config.in_channels, "model_channels": channels[0], "hint_channels": 3,
        "num_res_blocks": [config.layers_per_block] * len(channels),
        "channel_mult": [c // channels[0] for c in channels], "transformer_depth": depth,
        "transformer_depth_middle": config.transformer_layers_per_block[-1],
        "context_dim": config.cross_attention_dim, "num_heads": -1, "num_head_channels": HEAD_CHANNELS,
        "use_spatial_transformer": True, "use_linear_in_transformer": config.use_linear_projection,
        "legacy": False, "num_classes": "sequential", "adm_in_channels": config.projection_class_embeddings_input_dim,
    }


def native_state_dict(config: MultiPriorControlNetConfig,
                      state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our file's diffusers keys -> the native network's: the encoder as core's SDXL layout (our
    diffusers->LDM map), the zero convolutions as core's diffusers-ControlNet loader names them, and c_g's
    module under `prior_embedding.`."""
    renamed, encoder = {}, {}
    for key, value in state_dict.items():
        head, _, rest = key.partition(".")
        if head == "controlnet_cond_embedding":
            renamed[f"{PRIOR_EMBEDDING}.{rest}"] = value
        elif head == "controlnet_down_blocks":
            index, _, param = rest.partition(".")
            renamed[f"zero_convs.{index}.0.{param}"] = value
        elif head == "controlnet_mid_block":
            renamed[f"middle_block_out.0.{rest}"] = value
        else:
            encoder[key] = value
    layout = {"layers_per_block": config.layers_per_block, "up_block_types": []}
    renamed.update(diffusers_unet_to_ldm(encoder, layout))
    return renamed


def build_native_network(config: MultiPriorControlNetConfig, dtype: torch.dtype, operations,
                         device: torch.device | None = None):
    """Core's ControlNet network with an empty hint block and our c_g module, weights uninitialised."""
    network = comfy.cldm.cldm.ControlNet(**cldm_config(config), dtype=dtype, device=device, operations=operations)
    network.input_hint_block = TimestepEmbedSequential()  # the hint IS c_g: nothing to run per step
    conv = _ops_conv(operations, dtype, device)
    setattr(network, PRIOR_EMBEDDING, MultiPriorConditioningEmbedding(
        config.block_out_channels[0], config.priors, config.conditioning_channels,
        config.conditioning_embedding_out_channels, conv=conv))
    return network


def _ops_conv(operations, dtype, device):
    def conv(*args, **kwargs):
        return operations.Conv2d(*args, dtype=dtype, device=device, **kwargs)
    return conv


def load_multiprior_control(path: str, dtype: torch.dtype | None = None) -> "MultiPriorControl":
    """CONTROL_NET from our ControlNet file: weights in `dtype` (None: what ComfyUI picks for its SDXL UNet,
    its --bf16-unet etc. flags included), compute in ComfyUI's manual-cast dtype where it casts."""
    config, state_dict = read_multiprior(path)
    return multiprior_control(config, state_dict, dtype)


def multiprior_control(config: MultiPriorControlNetConfig, state_dict: Mapping[str, torch.Tensor],
                       dtype: torch.dtype | None = None) -> "MultiPriorControl":
    """CONTROL_NET from our ControlNet's config and (diffusers-key) weights, as `load_multiprior_control`."""
    if dtype is None:
        dtype = glue.preferred_dtype("auto")
    load_device = comfy.model_management.get_torch_device()
    manual_cast_dtype = comfy.model_management.unet_manual_cast(dtype, load_device)
    operations = comfy.ops.pick_operations(dtype, manual_cast_dtype, disable_fast_fp8=True)
    network = build_native_network(config, dtype, operations, comfy.model_management.unet_offload_device())
    network.load_state_dict(native_state_dict(config, state_dict), strict=True)
    return MultiPriorControl(network, config, load_device=load_device, manual_cast_dtype=manual_cast_dtype)


class MultiPriorControl(comfy.controlnet.ControlNet):
    """CONTROL_NET for DiffBody's multi-prior ControlNet: core's ControlNet with c_g as its hint.

    Priors come as IMAGEs (B,H,W,C in 0..1), converted once through the glue. It stacks with other
    ControlNets and follows strength and start/end percent as core's does. With every prior strength (or
    the strength) at 0 it adds nothing and runs nothing, so sampling is that of the unconditioned model."""

    def __init__(self, network=None, config: MultiPriorControlNetConfig | None = None, **kwargs):
        super().__init__(network, compression_ratio=1, **kwargs)  # the hint is at latent size
        self.config = config
        self.priors: dict[str, torch.Tensor] = {}
        self.prior_strengths: dict[str, float] = {}
        if not hasattr(self, "multigpu_clones"):  # core sets it from the version that clones per GPU
            self.multigpu_clones = {}

    def set_priors(self, priors: dict, strengths: dict, strength: float, percent_range: tuple[float, float]):
        unknown = set(priors) - set(PRIORS)
        if unknown:
            raise ValueError(f"DiffBody: unknown priors {sorted(unknown)}; expected {PRIORS}")
        self.priors = {name: glue.comfy_to_bchw(image) for name, image in priors.items() if image is not None}
        self.prior_strengths = {name: float(strengths.get(name, 0.0)) for name in self.priors}
        self.strength = strength
        self.timestep_percent_range = percent_range
        self.cond_hint = None
        return self

    def set_cond_hint(self, cond_hint, strength=1.0, timestep_percent_range=(0.0, 1.0), vae=None, extra_concat=[]):
        # Core's stock "Apply ControlNet" hands one image as (B,3,H,W): back to IMAGE, the cleaned-image prior.
        super().set_cond_hint(cond_hint, strength, timestep_percent_range, vae, extra_concat)
        return self.set_priors({"image": cond_hint.movedim(1, -1)}, {"image": 1.0}, strength, timestep_percent_range)

    def active(self) -> bool:
        return MultiPriorControlNet.is_active(self.prior_strengths, self.strength)

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        if not self.active():
            if self.previous_controlnet is None:
                return None
            return self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        if self.cond_hint is None or self.cond_hint.shape[-2:] != x_noisy.shape[-2:]:
            self.cond_hint = self._prior_embedding(x_noisy)
        return super().get_control(x_noisy, t, cond, batched_number, transformer_options)

    def _prior_embedding(self, x_noisy: torch.Tensor) -> torch.Tensor:
        """c_g at the latent's size, once per latent size: priors resized to latent*8 as core resizes hints."""
        height, width = x_noisy.shape[-2] * VAE_SCALE, x_noisy.shape[-1] * VAE_SCALE
        dtype = self.manual_cast_dtype or self.control_model.dtype
        resized = {name: comfy.utils.common_upscale(image, width, height, "bilinear", "center")
                   .to(x_noisy.device, dtype) for name, image in self.priors.items()}
        with torch.no_grad():
            return getattr(self.control_model, PRIOR_EMBEDDING)(resized, self.prior_strengths, dtype=dtype,
                                                                device=x_noisy.device)

    def copy(self):
        c = MultiPriorControl(None, self.config, load_device=self.load_device, manual_cast_dtype=self.manual_cast_dtype)
        c.control_model = self.control_model
        c.control_model_wrapped = self.control_model_wrapped
        self.copy_to(c)
        c.priors, c.prior_strengths = dict(self.priors), dict(self.prior_strengths)
        return c

    def deepclone_multigpu(self, load_device, autoregister: bool = False):
        """A copy with its own network and patcher for another GPU (core's multi-GPU sampling clones each
        control per device; core's own ControlNet does the same)."""
        c = self.copy()
        c.control_model = copy.deepcopy(self.control_model)
        c.control_model_wrapped = comfy.model_patcher.ModelPatcher(
            c.control_model, load_device=load_device, offload_device=comfy.model_management.unet_offload_device())
        c.load_device = load_device
        if autoregister:
            self.multigpu_clones[load_device] = c
        return c
