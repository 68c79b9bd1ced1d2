"""The colour adapter inside ComfyUI's own sampler: an attn2 patch on the SDXL MODEL (the multi-prior
ControlNet is nodes/multiprior_native.py).

It imports ComfyUI at module level; the node definitions (nodes/stage2.py) import it only when a node runs.
"""

from __future__ import annotations

import copy

import torch
from comfy.ldm.modules.attention import optimized_attention


class ColourAttention:
    """attn2 replacement for one cross-attention layer: text attention plus `weight` times the
    attention over the colour adapter's image tokens (IP-Adapter's decoupled cross-attention).

    cond chunks use the tokens of I_res, uncond chunks those of a zeroed image, as IP-Adapter was
    trained; outside [sigma_end, sigma_start] the layer is plain text attention."""

    def __init__(self, adapter, layer_index: int, cond_tokens, uncond_tokens, weight: float,
                 sigma_start: float, sigma_end: float):
        self.adapter, self.layer_index = adapter, layer_index
        self.cond_tokens, self.uncond_tokens = cond_tokens, uncond_tokens
        self.weight, self.sigma_start, self.sigma_end = weight, sigma_start, sigma_end

    def __deepcopy__(self, memo):
        """ComfyUI 0.3.75's ModelPatcher.clone() deep-copies model_options, patches included: every later clone
        of the MODEL would copy the whole adapter (0.85 GB at real size). Patches are never changed in place, so
        a copy shares the adapter and the image tokens."""
        return copy.copy(self)

    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]
        out = optimized_attention(q, k, v, heads)
        sigma = float(extra_options["sigmas"].max()) if "sigmas" in extra_options else None
        if sigma is not None and not (self.sigma_end <= sigma <= self.sigma_start):
            return out
        tokens = self._tokens_for(extra_options.get("cond_or_uncond", [0]), q.shape[0]).to(q.device, q.dtype)
        return out + self.weight * self.adapter.ip_attention(self.layer_index, q, tokens, heads)

    def _tokens_for(self, cond_or_uncond, batch: int):
        per_chunk = batch // len(cond_or_uncond)
        chunks = [_repeat_to(self.uncond_tokens if c == 1 else self.cond_tokens, per_chunk) for c in cond_or_uncond]
        return torch.cat(chunks)


def _repeat_to(tokens, n: int):
    if tokens.shape[0] == n:
        return tokens
    return tokens.repeat((n + tokens.shape[0] - 1) // tokens.shape[0], 1, 1)[:n]


def patch_colour_adapter(model, adapter, adapter_patcher, cond_tokens, uncond_tokens, weight: float,
                         start_percent: float, end_percent: float):
    """A clone of MODEL with the adapter on every SDXL cross-attention layer (ComfyUI's attn2 replace
    patches), the adapter's weights registered so ComfyUI loads them with the UNet."""
    from ..models.unet_layout import comfy_attn2_locations

    patched = model.clone()
    sampling = patched.get_model_object("model_sampling")
    sigma_start = float(sampling.percent_to_sigma(start_percent))
    sigma_end = float(sampling.percent_to_sigma(end_percent))
    locations = comfy_attn2_locations(patched.model.model_config.unet_config)
    for index, (block, number, transformer_index) in enumerate(locations):
        patched.set_model_attn2_replace(
            ColourAttention(adapter, index, cond_tokens, uncond_tokens, weight, sigma_start, sigma_end),
            block, number, transformer_index)
    patched.set_additional_models("diffbody_colour_adapter", [adapter_patcher])
    return patched
